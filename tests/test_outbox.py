"""Outbox rules: a dedupe key is queued once; suppressed and erased people get nothing."""
from __future__ import annotations

import datetime as dt

import pytest
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


def test_rows_named_by_id_are_looked_up_by_primary_key_on_postgresql(mailer):
    """A claim's UPDATE and a group's outcomes name their rows by id. With the statistics of
    a table just filled (a newsletter's audience), PostgreSQL planned `id IN (...)` as a
    read of the whole table, and with the status's index as a read of every entry 'sending'
    ever had (db.one_of): the plans must go by primary key alone."""
    if mailer.engine.dialect.name != "postgresql":
        pytest.skip("the plans in question are PostgreSQL's")
    now = utcnow()
    with session_scope(mailer.sessions) as session:
        session.execute(sa.text(
            "INSERT INTO deliveries (to_email, kind, dedupe_key, status, priority, attempts, next_attempt_at, "
            "created_at) SELECT 'r' || n || '@example.com', 'newsletter', 'plan-' || n, 'queued', 1, 0, :now, :now "
            "FROM generate_series(1, 5000) AS n"), {"now": now})
    statements = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("UPDATE deliveries"):
            statements.append((statement, parameters))

    sa.event.listen(mailer.engine, "before_cursor_execute", capture)
    try:
        for _ in range(3):  # earlier groups sent, so 'sending' has had entries that are gone now
            with session_scope(mailer.sessions) as session:
                ids = outbox.claim_due(session, worker_id="w", now=now, limit=500, lease_seconds=300,
                                       message_domain="clinic.example")
            for start in range(0, len(ids), 50):
                with session_scope(mailer.sessions) as session:
                    outbox.record_outcomes(session, outbox.Outcomes(sent=ids[start:start + 50]), worker_id="w",
                                           now=now, base_seconds=60, cap_seconds=3600, deadline=dt.timedelta(days=3))
        with session_scope(mailer.sessions) as session:
            ids = outbox.claim_due(session, worker_id="w", now=now, limit=500, lease_seconds=300,
                                   message_domain="clinic.example")
            outbox.extend_leases(session, ids, worker_id="w", until=now + dt.timedelta(minutes=10))
    finally:
        sa.event.remove(mailer.engine, "before_cursor_execute", capture)
    claim, mark_sent, extend = ([s for s in statements if word in s[0]][-1]
                                for word in ("message_id", "sent_at", "SET lease_expires_at"))
    with mailer.engine.connect() as connection, connection.connection.driver_connection.cursor() as cursor:
        for statement, parameters in (claim, mark_sent, extend):
            cursor.execute("EXPLAIN " + statement, parameters)
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "pk_deliveries" in plan, plan
            assert "Seq Scan on deliveries" not in plan and "ix_deliveries" not in plan, plan
        connection.rollback()
