"""Outbox rules: a dedupe key is queued once; suppressed and erased people get nothing."""
from __future__ import annotations

import sqlalchemy as sa

from mailer.audience import contacts
from mailer.delivery import outbox
from mailer.db import session_scope, utcnow
from mailer.models import Contact, Delivery, Suppression
from tests.conftest import signup


def _contact(mailer, address="a@example.com"):
    with session_scope(mailer.sessions) as session:
        return contacts.get_or_create_contact(session, mailer.settings, address, now=utcnow()).id


def test_same_dedupe_key_is_queued_once(mailer, db):
    contact_id = _contact(mailer)
    with session_scope(mailer.sessions) as session:
        first = outbox.enqueue(session, contact_id=contact_id, kind="confirmation", dedupe_key="k1", now=utcnow())
        again = outbox.enqueue(session, contact_id=contact_id, kind="confirmation", dedupe_key="k1", now=utcnow())
    assert (first, again) == (True, False)
    assert db.scalar(sa.select(sa.func.count()).select_from(Delivery)) == 1


def test_suppressed_address_is_not_queued(mailer, db):
    contact_id = _contact(mailer)
    db.write(sa.insert(Suppression).values(email_hash=contacts.email_hash(mailer.settings, "a@example.com"),
                                           reason="complaint", detail="", created_at=utcnow()))
    with session_scope(mailer.sessions) as session:
        assert not outbox.enqueue(session, contact_id=contact_id, kind="confirmation", dedupe_key="k", now=utcnow())


def test_address_suppressed_after_queueing_is_skipped_at_send(client, mailer, smtp_server, db):
    signup(client, "a@example.com")
    signup(client, "b@example.com")
    db.write(sa.insert(Suppression).values(email_hash=contacts.email_hash(mailer.settings, "a@example.com"),
                                           reason="hard_bounce", detail="550", created_at=utcnow()))
    result = mailer.drain()
    assert (result.sent, result.skipped) == (1, 1)
    assert [r.rcpt_tos for r in smtp_server.received] == [["b@example.com"]]
    statuses = dict(db.execute(sa.select(Contact.email, Delivery.status).join(Contact)))
    assert statuses == {"a@example.com": "suppressed", "b@example.com": "sent"}


def test_erased_contact_gets_nothing(client, mailer, smtp_server, db):
    signup(client, "a@example.com")
    contact_id = db.scalar(sa.select(Contact.id))
    db.write(sa.update(Contact).where(Contact.id == contact_id).values(email=None))  # erased after queueing
    assert mailer.drain().skipped == 1
    assert smtp_server.received == []


def test_unknown_kind_fails_that_row_and_sends_the_rest(client, mailer, smtp_server, db):
    signup(client, "a@example.com")
    contact_id = _contact(mailer, "b@example.com")
    with session_scope(mailer.sessions) as session:
        outbox.enqueue(session, contact_id=contact_id, kind="mystery", dedupe_key="m", now=utcnow())
    result = mailer.drain()
    assert (result.sent, result.failed) == (1, 1)
    assert db.scalar(sa.select(Delivery.last_error).where(Delivery.kind == "mystery")) == "unknown kind of mail: mystery"


def test_public_lists_are_reread_after_their_ttl(mailer):
    from mailer.audience.contacts import PublicLists, ensure_list
    from mailer.errors import InvalidInput

    now = [0.0]
    catalog = PublicLists(ttl=10, clock=lambda: now[0])
    with mailer.engine.connect() as conn:
        catalog.check(conn, ["newsletter"], 1)
    with session_scope(mailer.sessions) as session:
        ensure_list(session, "events", "Events", "Yes, tell me about events.")
    with mailer.engine.connect() as conn:
        try:
            catalog.check(conn, ["events"], 1)
            raise AssertionError("a list created after the last read was accepted before the TTL")
        except InvalidInput as exc:
            assert exc.field == "lists"
        now[0] = 11
        catalog.check(conn, ["events"], 1)  # seen once the TTL has passed


def test_a_database_error_while_building_gives_the_batch_back_untried(client, mailer, smtp_server, db, monkeypatch):
    import pytest
    import sqlalchemy.exc

    from mailer.delivery import sender as sender_module

    signup(client, "a@example.com")

    def broken(batch, delivery):
        raise sqlalchemy.exc.OperationalError("SELECT …", {}, Exception("no such column: newsletters.x"))

    monkeypatch.setitem(sender_module.BUILDERS, "confirmation", broken)
    with pytest.raises(sqlalchemy.exc.OperationalError):
        mailer.drain()
    row = db.execute(sa.select(Delivery.status, Delivery.attempts, Delivery.lease_owner))[0]
    assert tuple(row) == ("queued", 0, None)  # not failed: a later, healthy worker sends it
    assert smtp_server.received == []
