"""The consent ledger verifies after a full cycle and names any event that was edited."""
from __future__ import annotations

import json

import sqlalchemy as sa
from click.testing import CliRunner

from mailer.audience import consent
from mailer.cli import main
from mailer.models import ConsentEvent
from tests.conftest import SECRET, links_in, signup


def _cli(database_url, tmp_path, *args):
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance")}
    return CliRunner().invoke(main, list(args), env=env)


def _cycle(client, mailer, smtp_server):
    signup(client, "ada@example.com", "Ada")
    signup(client, "bob@example.com", "Bob")
    mailer.drain()
    for received in smtp_server.received:
        text = received.message.get_body(preferencelist=("plain",)).get_content()
        client.get([l for l in links_in(text) if "/confirm/" in l][0].removeprefix("https://news.example.org"))
    ada = [r for r in smtp_server.received if r.rcpt_tos == ["ada@example.com"]][0]
    first = ada.message["List-Unsubscribe"].split(",")[0].strip(" <>")
    client.post(first.removeprefix("https://news.example.org"))


def test_chain_verifies_after_signup_confirm_unsubscribe(client, mailer, smtp_server, database_url, tmp_path):
    _cycle(client, mailer, smtp_server)
    result = _cli(database_url, tmp_path, "consent", "verify")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "consent ledger intact: 5 events verified"


def test_editing_any_stored_field_breaks_the_chain_and_names_the_event(client, mailer, smtp_server, db,
                                                                        database_url, tmp_path):
    _cycle(client, mailer, smtp_server)
    ids = db.scalars(sa.select(ConsentEvent.id).order_by(ConsentEvent.id))
    edits = [
        {"action": "confirmed"},
        {"ip": "10.9.9.9"},
        {"user_agent": "forged"},
    ]
    for edit in edits:
        target = ids[1]
        original = db.execute(sa.select(ConsentEvent.action, ConsentEvent.ip, ConsentEvent.user_agent)
                              .where(ConsentEvent.id == target))[0]
        db.write(sa.update(ConsentEvent).where(ConsentEvent.id == target).values(**edit))
        result = _cli(database_url, tmp_path, "consent", "verify")
        assert result.exit_code == 1
        assert f"consent ledger BROKEN at event {target}:" in result.output
        db.write(sa.update(ConsentEvent).where(ConsentEvent.id == target)
                 .values(action=original.action, ip=original.ip, user_agent=original.user_agent))
    assert _cli(database_url, tmp_path, "consent", "verify").exit_code == 0


def test_deleting_an_event_breaks_the_chain_at_the_next_one(client, mailer, smtp_server, db, database_url, tmp_path):
    _cycle(client, mailer, smtp_server)
    ids = db.scalars(sa.select(ConsentEvent.id).order_by(ConsentEvent.id))
    db.write(sa.delete(ConsentEvent).where(ConsentEvent.id == ids[2]))
    result = _cli(database_url, tmp_path, "consent", "verify")
    assert result.exit_code == 1
    assert f"BROKEN at event {ids[3]}: does not link to the event before it" in result.output


def test_redacting_personal_fields_keeps_the_chain_verifiable(client, mailer, smtp_server, db):
    from mailer.db import session_scope, utcnow

    _cycle(client, mailer, smtp_server)
    contact_id = db.scalar(sa.select(ConsentEvent.contact_id).order_by(ConsentEvent.id))
    with session_scope(mailer.sessions) as session:
        consent.redact_contact_events(session, contact_id, utcnow())
    assert db.scalar(sa.select(ConsentEvent.ip).where(ConsentEvent.contact_id == contact_id)) is None
    with mailer.read_sessions() as session:
        assert consent.verify_chain(session).intact


def test_export_lists_the_persons_data_and_full_consent_history(client, mailer, smtp_server, database_url, tmp_path):
    _cycle(client, mailer, smtp_server)
    result = _cli(database_url, tmp_path, "export", "--contact", "ADA@example.com")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["contact"]["email"] == "ada@example.com"
    assert data["contact"]["name"] == "Ada"
    assert [e["action"] for e in data["consent_events"]] == ["requested", "confirmed", "withdrawn"]
    assert data["consent_events"][0]["wording"].startswith("Yes, send me the free monthly newsletter")
    assert data["consent_events"][0]["ip"] == "127.0.0.1"
    assert data["subscriptions"][0]["status"] == "unsubscribed"
    assert data["deliveries"][0]["kind"] == "confirmation"
    assert "bob@example.com" not in result.output

    missing = _cli(database_url, tmp_path, "export", "--contact", "nobody@example.com")
    assert missing.exit_code == 1
    assert "no contact with the address nobody@example.com" in missing.output
