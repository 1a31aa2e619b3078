"""Erasure (GDPR Art. 17): the address is nowhere afterwards, the ledger still verifies,
the seat goes to the waitlist, and the address is never mailed again by a signup or an import."""
from __future__ import annotations

import datetime as dt
import re

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from mailer import privacy
from mailer.delivery import suppression
from mailer.audience import consent, imports
from mailer.campaigns import webinars
from mailer.cli import main
from mailer.audience.consent import RequestContext
from mailer.db import Base, session_scope, utcnow
from mailer.models import (ConsentEvent, Contact, Delivery, DevMessage, Registration, SignupRequest, Subscription,
                           Suppression, Webinar)
from tests.conftest import SECRET, links_in, signup

ADDRESS = "erin.doe@example.com"
TYPED = "Erin.Doe@Example.COM"


def scan_for(db, needles) -> list[str]:
    """Every text column of every table that still holds one of `needles`, as table.column."""
    found = []
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            if not isinstance(column.type, (sa.String, sa.Text)):
                continue
            for needle in needles:
                hits = db.scalar(sa.select(sa.func.count()).select_from(table).where(
                    sa.func.lower(column).contains(needle.lower(), autoescape=True)))
                if hits:
                    found.append(f"{table.name}.{column.name}")
    raw = [m for (m,) in db.execute(sa.select(DevMessage.raw)) if any(n.lower().encode() in m.lower() for n in needles)]
    return found + ["dev_messages.raw"] * bool(raw)


@pytest.fixture
def erin(client, mailer, smtp_server, db):
    """Erin: confirmed newsletter subscriber, the one seat of a webinar (Fred waits), a
    registration mail not yet sent, an SMTP error quoting her address, an unprocessed
    signup and a dev-mailbox copy."""
    signup(client, TYPED, "Erin Doe")
    mailer.drain()
    text = smtp_server.received[-1].message.get_body(preferencelist=("plain",)).get_content()
    client.get([link for link in links_in(text) if "/confirm/" in link][0].removeprefix("https://news.example.org"))
    now = utcnow()
    with session_scope(mailer.sessions) as session:
        webinar = webinars.save_webinar(session, slug="spine-health", title="Spine Health",
                                        starts_local=dt.datetime(2030, 3, 26, 18), timezone="Europe/London",
                                        capacity=1, join_url="https://meet.example.com/r", now=now)
        webinars.publish(session, webinar.id)
        for address, name, zone, ip in ((ADDRESS, "Erin Doe", "Pacific/Chatham", "203.0.113.9"),
                                        ("fred@example.com", "Fred", "Europe/Paris", "198.51.100.1")):
            webinars.register(session, mailer.settings, "spine-health", email=address, name=name, newsletter=True,
                              timezone=zone, context=RequestContext(ip=ip, user_agent="UA"), now=now)
    contact_id = db.scalar(sa.select(Contact.id).where(Contact.email == ADDRESS))
    db.write(sa.update(Delivery).where(Delivery.contact_id == contact_id, Delivery.sent_at.is_not(None))
             .values(last_error=f"452 4.2.2 <{ADDRESS}>: mailbox full, retried"))
    signup(client, TYPED, "Erin Doe", process=False)
    db.write(sa.insert(DevMessage).values(mail_from="news@clinic.example", rcpt_to=ADDRESS, subject="Hello Erin Doe",
                                          raw=f"To: {ADDRESS}\r\n\r\nHi".encode(), created_at=now))
    assert scan_for(db, [ADDRESS, "Erin Doe"])  # the scan does find her before
    return contact_id


def test_erasure_from_the_console_leaves_no_trace(staff, erin, db, mailer):
    owner, token = staff("owner")
    page = owner.get(f"/admin/contacts/{erin}/erase")
    assert f"Type the address <strong>{ADDRESS}</strong> to confirm" in page.text
    done = owner.post(f"/admin/contacts/{erin}/erase", data={"csrf_token": token, "confirm_email": TYPED})
    assert done.status_code == 200
    assert f"The personal data of contact {erin} has been erased." in done.text
    assert "1 subscription ended." in done.text
    assert "1 webinar registration cancelled (seats given to the waitlist)." in done.text
    assert "1 unprocessed signup and 1 dev-mailbox message deleted" in done.text

    assert scan_for(db, [ADDRESS, "Erin Doe", "203.0.113.9", "Pacific/Chatham"]) == []
    assert db.scalar(sa.select(Suppression.reason)) == "erased"
    assert db.scalar(sa.select(sa.func.count()).select_from(SignupRequest)) == 0
    # Her seat went to Fred, who is told; nothing for her is still waiting to go out.
    statuses = dict(db.execute(sa.select(Contact.email, Registration.status).join(Registration)))
    assert statuses == {None: "cancelled", "fred@example.com": "confirmed"}
    assert db.scalar(sa.select(Delivery.kind).join(Contact).where(Contact.email == "fred@example.com")
                     .order_by(Delivery.id.desc()).limit(1)) == "webinar_promoted"
    assert db.scalars(sa.select(Delivery.status).where(Delivery.contact_id == erin,
                                                       Delivery.status.in_(["queued", "deferred", "held"]))) == []
    assert db.scalars(sa.select(Subscription.status).where(Subscription.contact_id == erin)) == ["unsubscribed"]
    # The ledger: her events are redacted, the erasure is recorded without the address, the chain holds.
    last = db.execute(sa.select(ConsentEvent.contact_id, ConsentEvent.action, ConsentEvent.note)
                      .order_by(ConsentEvent.id.desc()).limit(1))[0]
    assert last == (erin, "erased", privacy.ERASURE_NOTE)
    # Her 2 events, the ledger's record of their redaction, and the erasure.
    assert db.scalars(sa.select(ConsentEvent.ip).where(ConsentEvent.contact_id == erin)) == [None] * 4
    assert db.scalars(sa.select(ConsentEvent.action).where(ConsentEvent.contact_id == erin)
                      .order_by(ConsentEvent.id))[-2:] == ["redacted", "erased"]
    with mailer.read_sessions() as session:
        assert consent.verify_chain(session).intact
    # The console says what remains; the audit has the id only.
    remains = owner.get(f"/admin/contacts/{erin}")
    assert "Erased contact" in remains.text and "Erin" not in remains.text
    assert db.scalars(sa.select(sa.text("detail")).select_from(sa.table("audit_log"))
                      .where(sa.text("action = 'contact.erase'"))) == [f"contact {erin}"]


def test_an_erased_address_is_not_mailed_again(client, erin, mailer, smtp_server, db):
    with session_scope(mailer.sessions) as session:
        privacy.erase_contact(session, mailer.settings, erin, now=utcnow())
    sent_before = len(smtp_server.received)
    # A signup on the form: answered as always, but no contact and no mail.
    answer = signup(client, TYPED, "Erin Again")
    assert answer.status_code in (200, 302)
    # A webinar registration: the same.
    with session_scope(mailer.sessions) as session:
        webinars.register(session, mailer.settings, "spine-health", email=ADDRESS, context=RequestContext(),
                          now=utcnow())
    # An import of a list with her on it: counted as suppressed.
    report = imports.import_csv(mailer.sessions, mailer.settings, ["email,name", f"{TYPED},Erin", "gus@example.com,Gus"],
                                list_slug="newsletter", consent_note="Paper form at the clinic desk, 2026",
                                source="test", now=utcnow())
    assert (report.imported, report.suppressed) == (1, 1)
    mailer.drain()
    assert all(ADDRESS not in m.rcpt_tos for m in smtp_server.received[sent_before:])
    assert db.scalar(sa.select(Contact.id).where(Contact.email == ADDRESS)) is None
    assert scan_for(db, [ADDRESS]) == []


def test_erasure_needs_the_typed_address(staff, erin, db):
    owner, token = staff("owner")
    for typed in ("", "someone@example.com", "not an address"):
        refused = owner.post(f"/admin/contacts/{erin}/erase", data={"csrf_token": token, "confirm_email": typed})
        assert refused.status_code == 400
        assert "To confirm, type the person&#39;s email address exactly as shown. Nothing was erased." in refused.text
    assert db.scalar(sa.select(Contact.email).where(Contact.id == erin)) == ADDRESS
    assert db.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 0


def test_erasing_an_unknown_contact_is_404_and_others_may_not_erase(staff, erin):
    owner, token = staff("owner")
    assert owner.post("/admin/contacts/99999/erase", data={"csrf_token": token, "confirm_email": ADDRESS}
                      ).status_code == 404
    assert owner.get("/admin/contacts/99999/erase").status_code == 404
    editor, token = staff("editor")
    assert editor.post(f"/admin/contacts/{erin}/erase", data={"csrf_token": token, "confirm_email": ADDRESS}
                       ).status_code == 403


def test_erasing_twice_changes_nothing(mailer, erin, db):
    with session_scope(mailer.sessions) as session:
        first = privacy.erase_contact(session, mailer.settings, erin, now=utcnow())
    events = db.scalar(sa.select(sa.func.count()).select_from(ConsentEvent))
    with session_scope(mailer.sessions) as session:
        again = privacy.erase_contact(session, mailer.settings, erin, now=utcnow())
    assert not first.already_erased and again.already_erased
    assert db.scalar(sa.select(sa.func.count()).select_from(ConsentEvent)) == events


def test_a_bounce_detail_quoting_the_address_is_scrubbed(mailer, erin, db):
    with session_scope(mailer.sessions) as session:
        suppression.suppress_address(session, mailer.settings, ADDRESS, reason="hard_bounce",
                                     detail=f"550 5.1.1 <{ADDRESS}>: no such user", now=utcnow())
        privacy.erase_contact(session, mailer.settings, erin, now=utcnow())
    assert db.execute(sa.select(Suppression.reason, Suppression.detail)) == [("hard_bounce", "detail removed at erasure")]
    assert scan_for(db, [ADDRESS]) == []


def test_cli_erase(erin, database_url, tmp_path, db):
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance")}
    declined = CliRunner().invoke(main, ["erase", TYPED], input="n\n", env=env)
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert db.scalar(sa.select(Contact.email).where(Contact.id == erin)) == ADDRESS
    done = CliRunner().invoke(main, ["erase", TYPED, "--yes"], env=env)
    assert done.exit_code == 0, done.output
    assert re.search(rf"erased contact {erin}: \d+ unsent messages cancelled, 1 subscriptions ended", done.output)
    missing = CliRunner().invoke(main, ["erase", ADDRESS, "--yes"], env=env)
    assert missing.exit_code == 1 and f"no contact with the address {ADDRESS}" in missing.output


def test_a_past_webinar_keeps_its_registration_without_personal_data(mailer, erin, db):
    db.write(sa.update(Webinar).values(starts_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)))
    with session_scope(mailer.sessions) as session:
        report = privacy.erase_contact(session, mailer.settings, erin, now=utcnow())
    assert report.registrations_cancelled == 0
    assert db.execute(sa.select(Registration.status, Registration.timezone).where(Registration.contact_id == erin)) == [
        ("confirmed", None)]
    assert scan_for(db, [ADDRESS, "Pacific/Chatham"]) == []
