"""The front desk: staff add a person with a note of how consent was obtained, correct their
name and zone, unsubscribe them from one list when they phone, and invite them again only by
double opt-in; the same domain functions through the console, the API and the CLI. Real
database, real SMTP server (tests/smtp_server.py): the ledger names the staff member as the
source of each event, and a newsletter sent after the phone call does not reach them."""
from __future__ import annotations

import re

import sqlalchemy as sa
from click.testing import CliRunner

from mailer.audience import consent, contacts
from mailer.campaigns import newsletters
from mailer.cli import main
from mailer.db import session_scope, utcnow
from mailer.models import AuditLog, ConsentEvent, Contact, Delivery, Subscription
from tests.conftest import links_in

CONSENT_NOTE = "signed the paper form at the desk on 3 March"


def _clinic_news(mailer):
    with session_scope(mailer.sessions) as session:
        contacts.ensure_list(session, "clinic-news", "Clinic news", "Yes, send me clinic news.")


def _send_newsletter(mailer, slug: str, subject: str) -> None:
    with session_scope(mailer.sessions) as session:
        issue = newsletters.create_newsletter(session, subject=subject, body_md="Hello {{ contact.first_name }}.",
                                              lists=[slug])
        newsletters.schedule(session, issue.id, utcnow(), now=utcnow())
    mailer.drain()


def _ledger(db, contact_id):
    return [tuple(row) for row in db.execute(
        sa.select(ConsentEvent.purpose, ConsentEvent.action, ConsentEvent.source_url, ConsentEvent.note)
        .where(ConsentEvent.contact_id == contact_id).order_by(ConsentEvent.id))]


def test_front_desk_adds_fixes_and_unsubscribes_by_phone(staff, mailer, smtp_server, db):
    _clinic_news(mailer)
    editor, csrf = staff("editor")
    form = editor.get("/admin/contacts/new")
    assert form.status_code == 200 and "Send a confirmation mail instead" in form.text
    # No list without a consent note (or a confirmation mail).
    refused = editor.post("/admin/contacts/new", data={
        "csrf_token": csrf, "email": "maria@example.org", "name": "Maria Gonzales", "lists": ["newsletter"],
        "consent": "given", "consent_note": ""})
    assert refused.status_code == 400 and "Say how these people gave their consent" in refused.text
    assert db.scalar(sa.select(Contact.id).where(Contact.email == "maria@example.org")) is None
    added = editor.post("/admin/contacts/new", data={
        "csrf_token": csrf, "email": "Maria@Example.org", "name": "Maria Gonzales", "timezone": "Europe/Madrid",
        "lists": ["newsletter", "clinic-news"], "consent": "given", "consent_note": CONSENT_NOTE})
    assert added.status_code == 302, added.text
    maria = int(added.headers["Location"].rsplit("/", 1)[1])
    page = editor.get(f"/admin/contacts/{maria}").text
    assert "Contact added, on newsletter, clinic-news with the consent you noted." in page
    # Found by a part of her name or of her address, not only by the whole address.
    editor.post("/admin/contacts/new", data={"csrf_token": csrf, "email": "rosa@example.com", "name": "Rosa Mariani"})
    for text, found in (("maria", ["rosa@example.com", "maria@example.org"]), ("MARIA", None),
                        ("example.org", ["maria@example.org"]), ("@example.", ["rosa@example.com", "maria@example.org"]),
                        ("gonzales", ["maria@example.org"]), ("maria@example.org", ["maria@example.org"]),
                        ("ma", ["maria@example.org"]), ("zzz", [])):
        listed = re.findall(r'/admin/contacts/\d+">([^<]+)</a>', editor.get(f"/admin/contacts?q={text}").text)
        assert listed == (found if found is not None else ["rosa@example.com", "maria@example.org"]), text
    again = editor.post("/admin/contacts/new", data={"csrf_token": csrf, "email": "maria@example.org"})
    assert again.status_code == 400 and f"exists already (contact {maria})" in again.text

    # She spelled her name differently, and lives in Lisbon.
    bad_zone = editor.post(f"/admin/contacts/{maria}/edit", data={"csrf_token": csrf, "name": "María González",
                                                                  "timezone": "Europe/Atlantis"})
    assert bad_zone.status_code == 400 and "Unknown time zone" in bad_zone.text
    fixed = editor.post(f"/admin/contacts/{maria}/edit", data={"csrf_token": csrf, "name": "María González",
                                                               "timezone": "Europe/Lisbon"})
    assert fixed.status_code == 302
    assert [tuple(r) for r in db.execute(sa.select(Contact.name, Contact.timezone).where(Contact.id == maria))] == [
        ("María González", "Europe/Lisbon")]

    # She phones: no more newsletter, please (the clinic news may stay).
    assert "Monthly newsletter (active)" in editor.get(f"/admin/contacts/{maria}/unsubscribe").text
    gone = editor.post(f"/admin/contacts/{maria}/unsubscribe", data={"csrf_token": csrf, "list": "newsletter",
                                                                     "note": "phoned the desk"})
    assert gone.status_code == 302
    assert "Unsubscribed from newsletter" in editor.get(f"/admin/contacts/{maria}").text

    source = "staff: editor@clinic.example (console)"
    assert _ledger(db, maria) == [
        ("list:newsletter", "recorded", source, CONSENT_NOTE),
        ("list:clinic-news", "recorded", source, CONSENT_NOTE),
        ("list:newsletter", "withdrawn", source, "unsubscribed by staff: phoned the desk")]
    with mailer.read_sessions() as session:
        assert consent.verify_chain(session).intact

    # A newsletter sent afterwards does not reach her; the clinic news does.
    _send_newsletter(mailer, "newsletter", "April news")
    _send_newsletter(mailer, "clinic-news", "Clinic news for April")
    to_her = [r.message["Subject"] for r in smtp_server.received if r.rcpt_tos == ["maria@example.org"]]
    assert to_her == ["Clinic news for April"]

    # The audit log has old → new for name and zone, and never an address.
    details = dict(db.execute(sa.select(AuditLog.action, AuditLog.detail).where(
        AuditLog.action.in_(["contact.add", "contact.edit", "contact.unsubscribe"]),
        AuditLog.detail.like(f"contact {maria}: %"))))
    assert details == {
        "contact.add": f"contact {maria}: added, lists newsletter, clinic-news [console]",
        "contact.edit": f'contact {maria}: name: "Maria Gonzales" → "María González"; '
                        f'timezone: "Europe/Madrid" → "Europe/Lisbon" [console]',
        "contact.unsubscribe": f"contact {maria}: newsletter [console]"}
    assert not [d for (d,) in db.execute(sa.select(AuditLog.detail)) if "@" in d]


def test_queued_mail_is_cancelled_and_rejoining_needs_a_confirmation(staff, mailer, smtp_server, db):
    editor, csrf = staff("editor")
    added = editor.post("/admin/contacts/new", data={
        "csrf_token": csrf, "email": "ben@example.com", "name": "Ben", "lists": ["newsletter"],
        "consent": "given", "consent_note": "ticked the box on the clinic's paper form"})
    ben = int(added.headers["Location"].rsplit("/", 1)[1])
    with session_scope(mailer.sessions) as session:  # an issue queued for him, not yet sent
        issue = newsletters.create_newsletter(session, subject="Queued", body_md="Hi.", lists=["newsletter"])
        newsletters.schedule(session, issue.id, utcnow(), now=utcnow())
    mailer.queue_due(utcnow())
    assert db.scalar(sa.select(Delivery.status).where(Delivery.contact_id == ben)) == "queued"
    editor.post(f"/admin/contacts/{ben}/unsubscribe", data={"csrf_token": csrf, "list": "*"})
    assert db.scalar(sa.select(Delivery.status).where(Delivery.contact_id == ben)) == "cancelled"

    # Back on the list only by his own click.
    page = editor.get(f"/admin/contacts/{ben}").text
    assert "Send confirmation mail" in page and "(unsubscribed)" in page
    editor.post(f"/admin/contacts/{ben}/invite", data={"csrf_token": csrf, "list": "newsletter"})
    assert db.scalar(sa.select(Subscription.status).where(Subscription.contact_id == ben)) == "pending"
    assert "A confirmation mail is on its way" in editor.get(f"/admin/contacts/{ben}").text
    editor.post(f"/admin/contacts/{ben}/invite", data={"csrf_token": csrf, "list": "newsletter"})
    assert "went out recently" in editor.get(f"/admin/contacts/{ben}").text  # resent at most once an hour
    mailer.drain()
    [mail] = [r.message for r in smtp_server.received if r.rcpt_tos == ["ben@example.com"]]
    confirm = next(link for link in links_in(mail.get_body(("plain",)).get_content()) if "/confirm/" in link)
    assert editor.get(confirm.removeprefix("https://news.example.org")).status_code == 200
    assert db.scalar(sa.select(Subscription.status).where(Subscription.contact_id == ben)) == "active"
    assert [a for _, a, _, _ in _ledger(db, ben)] == ["recorded", "withdrawn", "requested", "confirmed"]

    # A contact added with "send a confirmation mail instead" is pending until they click.
    invited = editor.post("/admin/contacts/new", data={
        "csrf_token": csrf, "email": "cleo@example.com", "lists": ["newsletter"], "consent": "confirm"})
    cleo = int(invited.headers["Location"].rsplit("/", 1)[1])
    assert db.scalar(sa.select(Subscription.status).where(Subscription.contact_id == cleo)) == "pending"
    viewer, _ = staff("viewer")
    assert viewer.get("/admin/contacts/new").status_code == 403
    assert "Add a contact" not in viewer.get("/admin/contacts").text


def test_the_api_and_the_cli_do_the_same(client, mailer, db, monkeypatch):
    from mailer.staff import users
    from tests.test_api_newsletters import Api

    with session_scope(mailer.sessions) as session:
        user = users.create_user(session, "desk@clinic.example", "correct horse battery staple", "editor")
        token = users.create_token(session, user, "reception-pc", "write")
    api = Api(client, token)
    made = api.post("/contacts", {"email": "nadia@example.net", "name": "Nadia", "lists": ["newsletter"]})
    assert made.status_code == 422 and made.json["error"]["field"] == "consent_note"
    made = api.post("/contacts", {"email": "nadia@example.net", "name": "Nadia", "timezone": "Asia/Dubai",
                                  "lists": ["newsletter"], "consent_note": CONSENT_NOTE})
    assert made.status_code == 201, made.json
    nadia = made.json["id"]
    assert made.json["subscriptions"][0]["status"] == "active"
    assert api.post("/contacts", {"email": "NADIA@example.net"}).status_code == 409
    patched = api.patch(f"/contacts/{nadia}", {"name": "Nadia Haddad", "timezone": ""})
    assert patched.status_code == 200 and (patched.json["name"], patched.json["timezone"]) == ("Nadia Haddad", None)
    assert api.post(f"/contacts/{nadia}/unsubscribe", {}).status_code == 422
    gone = api.post(f"/contacts/{nadia}/unsubscribe", {"list": "newsletter", "note": "phoned"})
    assert gone.json == {"withdrawn": ["newsletter"]}
    assert api.post(f"/contacts/{nadia}/invite", {"list": "newsletter"}).json == {"outcome": "sent"}
    assert api.post("/contacts/99999/invite", {"list": "newsletter"}).status_code == 404
    source = "staff: desk@clinic.example (api token 'reception-pc')"
    assert {s for _, _, s, _ in _ledger(db, nadia)} == {source}

    monkeypatch.setenv("MAILER_DATABASE_URL", mailer.settings.database_url)
    monkeypatch.setenv("MAILER_SECRET_KEY", mailer.settings.secret_key)
    runner = CliRunner()
    out = runner.invoke(main, ["contact", "add", "omar@example.net", "--name", "Omar", "--list", "newsletter",
                               "--consent-note", CONSENT_NOTE, "--by", "desk@clinic.example"])
    assert out.exit_code == 0, out.output
    omar = int(re.search(r"added contact (\d+)", out.output).group(1))
    out = runner.invoke(main, ["contact", "edit", "omar@example.net", "--timezone", "Africa/Cairo",
                               "--by", "desk@clinic.example"])
    assert out.output.strip() == 'timezone: (none) → "Africa/Cairo"'
    out = runner.invoke(main, ["contact", "unsubscribe", str(omar), "--all", "--by", "desk@clinic.example"])
    assert out.output.strip() == "unsubscribed from newsletter"
    out = runner.invoke(main, ["contact", "invite", str(omar), "--list", "newsletter", "--by", "nobody@x.org"])
    assert out.exit_code != 0 and "No staff user" in out.output
    assert {s for _, _, s, _ in _ledger(db, omar)} == {"staff: desk@clinic.example (command line)"}


def test_erasure_blanks_edited_names_in_the_audit_log_and_test_copy_addresses(staff, mailer, db):
    from mailer import privacy
    from mailer.audience import frontdesk

    with session_scope(mailer.sessions) as session:  # a test copy to her address before she was a contact
        issue = newsletters.create_newsletter(session, subject="Draft", body_md="Hi.", lists=["newsletter"])
        newsletters.send_test(session, mailer.settings, issue.id, ["zoe@example.com"], now=utcnow())
    editor, csrf = staff("editor")
    added = editor.post("/admin/contacts/new", data={"csrf_token": csrf, "email": "zoe@example.com", "name": "Zoe"})
    zoe = int(added.headers["Location"].rsplit("/", 1)[1])
    editor.post(f"/admin/contacts/{zoe}/edit", data={"csrf_token": csrf, "name": "Zoë Adams", "timezone": ""})
    assert db.scalar(sa.select(Delivery.to_email).where(Delivery.contact_id.is_(None))) == "zoe@example.com"
    with session_scope(mailer.sessions) as session:
        privacy.erase_contact(session, mailer.settings, zoe, now=utcnow())
    [detail] = db.scalars(sa.select(AuditLog.detail).where(AuditLog.action == frontdesk.EDIT_ACTION))
    assert detail == f"contact {zoe}: edited (values removed at erasure)"
    assert db.scalar(sa.select(Delivery.to_email).where(Delivery.contact_id.is_(None))) is None
    with session_scope(mailer.sessions) as session:
        try:
            frontdesk.edit_contact(session, frontdesk.Staff(None, "command line", "command line"), zoe, name="X",
                                   now=utcnow())
        except frontdesk.Conflict as exc:
            assert exc.field == "contact"
        else:
            raise AssertionError("an erased contact was edited")
