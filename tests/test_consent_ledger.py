"""The keyed consent ledger against someone with database access: each of the four
attacks of issue 10 is detected on the real database, a legitimate erasure still
verifies, signed checkpoints catch removed events, the owners get one every week, and an
install from before the keyed chain is re-anchored exactly once."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import subprocess
import sys
import types
import uuid

import pytest
import sqlalchemy as sa

from mailer import privacy
from mailer.audience import checkpoints, consent
from mailer.staff import users
from mailer.db import ROOT, UTCDateTime, make_engine, migrate, session_scope, utcnow
from mailer.demo import NEWSLETTER_WORDING
from mailer.models import ConsentEvent, ConsentWording, Contact, Delivery, MailingList, Subscription
from mailer.scheduler import mail_consent_checkpoint
from tests.conftest import BACKEND, POSTGRES_ADMIN_URL, SECRET, signup
from tests.test_consent import _cli, _cycle


def _verify(database_url, tmp_path, *extra):
    return _cli(database_url, tmp_path, "consent", "verify", *extra)


def _ids(db) -> list[int]:
    return db.scalars(sa.select(ConsentEvent.id).order_by(ConsentEvent.id))


def test_a_editing_the_wording_text_is_detected(client, mailer, smtp_server, db, database_url, tmp_path):
    _cycle(client, mailer, smtp_server)
    first_shown = db.scalar(sa.select(ConsentEvent.id).where(ConsentEvent.wording_id.is_not(None))
                            .order_by(ConsentEvent.id).limit(1))
    wording_id = db.scalar(sa.select(ConsentEvent.wording_id).where(ConsentEvent.id == first_shown))
    original = db.scalar(sa.select(ConsentWording.text).where(ConsentWording.id == wording_id))
    db.write(sa.update(ConsentWording).where(ConsentWording.id == wording_id)
             .values(text=original.replace("newsletter", "newsletter and offers from partners")))
    result = _verify(database_url, tmp_path)
    assert result.exit_code == 1
    assert f"consent ledger BROKEN at event {first_shown}: its recorded fields or the wording text" in result.output
    db.write(sa.update(ConsentWording).where(ConsentWording.id == wording_id).values(text=original))
    assert _verify(database_url, tmp_path).exit_code == 0


def test_b_deleting_the_newest_events_is_detected_against_a_checkpoint(client, mailer, smtp_server, db,
                                                                        database_url, tmp_path):
    _cycle(client, mailer, smtp_server)
    printed = _cli(database_url, tmp_path, "consent", "checkpoint")
    assert printed.exit_code == 0, printed.output
    checkpoint = printed.output.strip()
    assert re.fullmatch(r"mailer-consent-checkpoint events=5 head=[0-9a-f]{64} at=\S+Z sig=[0-9a-f]{64}", checkpoint)
    held = _verify(database_url, tmp_path, "--checkpoint", checkpoint)
    assert held.exit_code == 0 and "consent ledger intact: 5 events verified; it holds the checkpoint" in held.output

    ids = _ids(db)
    db.write(sa.delete(ConsentEvent).where(ConsentEvent.id.in_(ids[-2:])))
    removed = _verify(database_url, tmp_path, "--checkpoint", checkpoint)
    assert removed.exit_code == 1
    assert "consent ledger BROKEN: the checkpoint of" in removed.output
    assert "counted 5 events, only 3 remain: events were removed" in removed.output

    # New events fill the count again: the event at the checkpoint's count is not its head.
    signup(client, "cyd@example.com", "Cyd")
    signup(client, "dee@example.com", "Dee")
    fifth = _ids(db)[4]
    refilled = _verify(database_url, tmp_path, "--checkpoint", checkpoint)
    assert refilled.exit_code == 1
    assert f"BROKEN at event {fifth}: it is not the event the checkpoint of" in refilled.output

    # A checkpoint with a changed count does not pass as one of ours.
    forged = checkpoint.replace("events=5", "events=3")
    refused = _verify(database_url, tmp_path, "--checkpoint", forged)
    assert refused.exit_code == 1 and "signature does not match" in refused.output
    garbage = _verify(database_url, tmp_path, "--checkpoint", "hello")
    assert garbage.exit_code == 1 and "This is not a consent checkpoint" in garbage.output


def test_c_marking_an_event_redacted_and_rewriting_its_ip_is_detected(client, mailer, smtp_server, db,
                                                                       database_url, tmp_path):
    _cycle(client, mailer, smtp_server)
    ids = _ids(db)
    target = ids[1]
    original = db.execute(sa.select(ConsentEvent.source_url, ConsentEvent.ip, ConsentEvent.user_agent,
                                    ConsentEvent.note).where(ConsentEvent.id == target))[0]
    forgeries = [
        # Marked redacted, the IP rewritten.
        dict(redacted_at=utcnow(), ip="10.9.9.9"),
        # Marked redacted with every personal field blanked, as an erasure would, but none was recorded.
        dict(redacted_at=utcnow(), source_url=None, ip=None, user_agent=None, note=None),
    ]
    for forgery in forgeries:
        db.write(sa.update(ConsentEvent).where(ConsentEvent.id == target).values(**forgery))
        result = _verify(database_url, tmp_path)
        assert result.exit_code == 1
        assert f"consent ledger BROKEN at event {target}: it is marked redacted" in result.output
        db.write(sa.update(ConsentEvent).where(ConsentEvent.id == target)
                 .values(redacted_at=None, **original._asdict()))
    assert _verify(database_url, tmp_path).exit_code == 0

    # Borrowing the moment of a real erasure of someone else does not help either.
    ada = db.scalar(sa.select(Contact.id).where(Contact.email == "ada@example.com"))
    with session_scope(mailer.sessions) as session:
        privacy.erase_contact(session, mailer.settings, ada, now=utcnow())
    erased_at = db.scalar(sa.select(ConsentEvent.created_at).where(ConsentEvent.action == "redacted"))
    bob_event = db.scalar(sa.select(ConsentEvent.id).join(Contact).where(Contact.email == "bob@example.com")
                          .order_by(ConsentEvent.id).limit(1))
    db.write(sa.update(ConsentEvent).where(ConsentEvent.id == bob_event)
             .values(redacted_at=erased_at, source_url=None, ip=None, user_agent=None, note=None))
    result = _verify(database_url, tmp_path)
    assert result.exit_code == 1
    assert f"BROKEN at event {bob_event}: it is marked redacted, but the ledger records no redaction" in result.output


def test_d_recomputed_plain_sha256_hashes_are_detected(client, mailer, smtp_server, db, database_url, tmp_path):
    """The old, unkeyed formula: whoever can write the database could recompute every hash."""
    _cycle(client, mailer, smtp_server)
    ids = _ids(db)
    target = ids[1]
    db.write(sa.update(ConsentEvent).where(ConsentEvent.id == target).values(ip="10.9.9.9"))
    with session_scope(mailer.sessions) as session:
        prev = session.scalar(sa.select(ConsentEvent.hash).where(ConsentEvent.id == ids[0]))
        for event in session.scalars(sa.select(ConsentEvent).where(ConsentEvent.id >= target)
                                     .order_by(ConsentEvent.id)):
            event.personal_digest = consent._personal_digest(event.source_url, event.ip, event.user_agent,
                                                             event.note)
            event.prev_hash = prev
            event.hash = prev = hashlib.sha256(_legacy_payload(event)).hexdigest()
    result = _verify(database_url, tmp_path)
    assert result.exit_code == 1
    assert f"consent ledger BROKEN at event {target}: its recorded fields" in result.output


def _legacy_payload(event) -> bytes:
    """The pre-keyed chain's payload, written out here so the test does not trust the code under test."""
    created = event.created_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps([event.prev_hash, event.contact_id, event.list_id, event.purpose, event.action,
                       event.wording_id, created, event.personal_digest], ensure_ascii=False).encode()


def test_a_legitimate_erasure_and_a_purge_still_verify(client, mailer, smtp_server, db, database_url, tmp_path):
    _cycle(client, mailer, smtp_server)
    erased = _cli(database_url, tmp_path, "erase", "bob@example.com", "--yes")
    assert erased.exit_code == 0, erased.output
    # An unconfirmed signup from long ago is purged: the person is forgotten, events redacted.
    signup(client, "old@example.com", "Old")
    db.write(sa.update(Subscription).where(Subscription.contact_id == sa.select(Contact.id).where(
        Contact.email == "old@example.com").scalar_subquery()).values(pending_since=utcnow() - dt.timedelta(days=30)))
    purged = _cli(database_url, tmp_path, "purge")
    assert purged.exit_code == 0 and "purged 1 unconfirmed signups" in purged.output
    redacted = db.scalars(sa.select(ConsentEvent.note).where(ConsentEvent.action == "redacted"))
    assert redacted == ["personal fields of 2 earlier events redacted", "personal fields of 2 earlier events redacted"]
    result = _verify(database_url, tmp_path)
    assert result.exit_code == 0, result.output
    total = len(_ids(db))
    assert result.output.strip() == f"consent ledger intact: {total} events verified"


def test_the_owners_get_a_signed_checkpoint_once_a_week(client, mailer, smtp_server, db, database_url, tmp_path):
    _cycle(client, mailer, smtp_server)
    with session_scope(mailer.sessions) as session:
        users.create_user(session, "owner@clinic.example", "correct horse battery staple", "owner")
        users.create_user(session, "editor@clinic.example", "correct horse battery staple", "editor")
    before = len(smtp_server.received)
    mail_consent_checkpoint(mailer)
    mail_consent_checkpoint(mailer)  # the worker runs it every few hours: still one mail a week
    mailer.drain()
    mails = smtp_server.received[before:]
    assert [m.rcpt_tos for m in mails] == [["owner@clinic.example"]]
    assert mails[0].message["Subject"] == "Consent ledger checkpoint: 5 events"
    text = mails[0].message.get_body(preferencelist=("plain",)).get_content()
    checkpoint = re.search(r"mailer-consent-checkpoint \S+ \S+ \S+ \S+", text).group(0)
    result = _verify(database_url, tmp_path, "--checkpoint", checkpoint)
    assert result.exit_code == 0, result.output
    with session_scope(mailer.sessions) as session:
        assert checkpoints.queue_checkpoint_mail(session, mailer.settings, utcnow() + dt.timedelta(days=7)) == 1
    assert db.scalar(sa.select(sa.func.count()).select_from(Delivery).where(Delivery.kind == "consent_checkpoint")) == 2


# An install from before the keyed chain ------------------------------------------------------

LEGACY_EVENTS = 6


@pytest.fixture
def legacy_database_url(tmp_path):
    """A database at the revision before the keyed chain, holding unkeyed events as the
    old code wrote them (one contact erased back then: its events redacted)."""
    if BACKEND == "sqlite":
        url = f"sqlite:///{tmp_path / 'legacy.db'}"
        admin = name = None
    else:
        name = f"mailer_legacy_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate(url, "0007")
    engine = make_engine(url)
    with engine.begin() as conn:  # the default list as that release made it (Core: the columns of its schema)
        list_id = conn.execute(sa.insert(MailingList.__table__).values(
            slug="newsletter", name="Monthly newsletter", description="").returning(MailingList.id)).scalar_one()
        conn.execute(sa.insert(ConsentWording.__table__).values(list_id=list_id, version=1, text=NEWSLETTER_WORDING))
    _write_legacy_events(engine)
    engine.dispose()
    yield url
    if admin is not None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()


def _write_legacy_events(engine) -> None:
    when = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.timezone.utc)
    contacts_table = sa.table("contacts", sa.column("id"), sa.column("email"), sa.column("email_hash"),
                              sa.column("name"), sa.column("name_key"), sa.column("created_at", UTCDateTime()))
    events_table = sa.table("consent_events", *[sa.column(c) for c in (
        "contact_id", "list_id", "purpose", "action", "wording_id", "source_url", "ip", "user_agent", "note",
        "personal_digest", "prev_hash", "hash")], sa.column("created_at", UTCDateTime()),
        sa.column("redacted_at", UTCDateTime()))
    with engine.begin() as conn:
        list_id, wording_id = conn.execute(sa.text("SELECT list_id, id FROM consent_wordings")).first()
        prev = "0" * 64
        for n in range(LEGACY_EVENTS // 2):
            contact_id = conn.execute(sa.insert(contacts_table).values(
                email=f"old{n}@example.com", email_hash=f"{n:064d}", name="", name_key="", created_at=when,
            ).returning(contacts_table.c.id)).scalar_one()
            for action in ("requested", "confirmed"):
                personal = ("https://clinic.example/blog", f"198.51.100.{n}", "Firefox", None)
                row = _legacy_row(contact_id, list_id, action, wording_id, personal, prev, when)
                redacted = n == 0  # this person was erased before the upgrade
                if redacted:
                    row.update(source_url=None, ip=None, user_agent=None, note=None)
                conn.execute(sa.insert(events_table).values(**row, redacted_at=when if redacted else None))
                prev = row["hash"]
                when += dt.timedelta(minutes=1)


def _legacy_row(contact_id, list_id, action, wording_id, personal, prev, when) -> dict:
    row = dict(contact_id=contact_id, list_id=list_id, purpose="list:newsletter", action=action,
               wording_id=wording_id, source_url=personal[0], ip=personal[1], user_agent=personal[2],
               note=personal[3], created_at=when, personal_digest=consent._personal_digest(*personal),
               prev_hash=prev)
    row["hash"] = hashlib.sha256(_legacy_payload(types.SimpleNamespace(**row))).hexdigest()
    return row


def test_an_old_install_is_re_anchored_once_and_then_verifies(legacy_database_url, tmp_path):
    url = legacy_database_url
    first = _cli(url, tmp_path, "migrate")
    assert first.exit_code == 0, first.output
    assert "consent ledger re-anchored under the keyed chain" in first.output
    result = _verify(url, tmp_path)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"consent ledger intact: {LEGACY_EVENTS + 1} events verified"
    again = _cli(url, tmp_path, "migrate")
    assert again.exit_code == 0 and "re-anchored" not in again.output
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            anchors = conn.execute(sa.text("SELECT contact_id, purpose, note FROM consent_events "
                                           "WHERE action = 'reanchored'")).all()
            assert len(anchors) == 1
            assert anchors[0][:2] == (None, "ledger")
            assert f"{LEGACY_EVENTS} earlier unkeyed events sealed" in anchors[0][2]
            anchor_id = conn.execute(sa.text("SELECT id FROM consent_events WHERE action = 'reanchored'")).scalar()
        # New events join the keyed chain after the anchor, and the old events are sealed by it:
        # editing their wording text, or forging a redaction there, is now detected.
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE consent_wordings SET text = text || ' (edited)'"))
        edited = _verify(url, tmp_path)
        assert edited.exit_code == 1
        assert f"BROKEN at event {anchor_id}: an event from before the re-anchoring" in edited.output
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE consent_wordings SET text = replace(text, ' (edited)', '')"))
            conn.execute(sa.text("UPDATE consent_events SET redacted_at = created_at, source_url = NULL, ip = NULL, "
                                 "user_agent = NULL WHERE id = (SELECT max(id) FROM consent_events "
                                 "WHERE action = 'confirmed')"))
        forged = _verify(url, tmp_path)
        assert forged.exit_code == 1
        assert f"BROKEN at event {anchor_id}: an event from before the re-anchoring" in forged.output
    finally:
        engine.dispose()


def test_an_old_install_erased_after_the_upgrade_still_verifies(legacy_database_url, tmp_path):
    url = legacy_database_url
    assert _cli(url, tmp_path, "migrate").exit_code == 0
    erased = _cli(url, tmp_path, "erase", "old2@example.com", "--yes")
    assert erased.exit_code == 0, erased.output
    result = _verify(url, tmp_path)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"consent ledger intact: {LEGACY_EVENTS + 3} events verified"


def test_processes_starting_together_re_anchor_once(legacy_database_url, tmp_path):
    env = {"MAILER_DATABASE_URL": legacy_database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance"), "PATH": "/usr/bin:/bin"}
    migrate(legacy_database_url)  # the schema first; the anchor is left to the processes
    starts = [subprocess.Popen([sys.executable, "-m", "mailer", "consent", "verify"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=120)[0] for p in starts]
    assert all(p.returncode == 0 for p in starts), outputs
    assert all(f"intact: {LEGACY_EVENTS + 1} events verified" in out for out in outputs), outputs
    engine = make_engine(legacy_database_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM consent_events WHERE action = 'reanchored'")).scalar() == 1
    engine.dispose()
