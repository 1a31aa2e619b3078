"""The sender never loses a message: SMTP down, 4xx, 5xx, a dropped connection,
and a worker that dies between claiming and recording."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from mailer import create_app
from mailer.db import utcnow
from mailer.models import Delivery
from mailer.delivery.sender import Sender
from tests.conftest import settings_for, signup
from tests.smtp_server import SMTPServer, free_port


def _rows(db):
    return db.execute(sa.select(Delivery.status, Delivery.attempts, Delivery.last_error, Delivery.next_attempt_at,
                                Delivery.message_id).order_by(Delivery.id))


def _later(minutes):
    return lambda: utcnow() + dt.timedelta(minutes=minutes)


def test_smtp_server_down_defers_then_sends_when_it_is_back(database_url, tmp_path, db):
    port = free_port()
    app = create_app(settings_for(database_url, tmp_path, smtp_url=f"smtp://127.0.0.1:{port}"))
    mailer = app.extensions["mailer"]
    client = app.test_client()
    signup(client, "a@example.com")
    signup(client, "b@example.com")

    result = mailer.drain()
    assert (result.sent, result.deferred) == (0, 2)
    rows = _rows(db)
    assert [r.status for r in rows] == ["deferred", "deferred"]
    assert all("cannot reach SMTP server" in r.last_error for r in rows)
    assert all(r.next_attempt_at > utcnow() for r in rows)
    first_ids = [r.message_id for r in rows]

    server = SMTPServer(port).start()
    try:
        assert mailer.drain().sent == 0  # not due yet: backing off
        assert mailer.drain(clock=_later(5)).sent == 2
    finally:
        server.stop()
    assert sorted(r.rcpt_tos[0] for r in server.received) == ["a@example.com", "b@example.com"]
    # The Message-ID fixed at the first attempt is the one that went out.
    assert sorted(r.message["Message-ID"] for r in server.received) == sorted(first_ids)
    mailer.engine.dispose()


def test_4xx_is_retried_with_backoff_and_5xx_fails(client, mailer, smtp_server, db):
    replies = {"soft@example.com": "451 4.3.0 Try again later", "hard@example.com": "550 5.1.1 No such user"}
    smtp_server.handler.rcpt_reply = lambda address: replies.get(address)
    for address in ("ok@example.com", "soft@example.com", "hard@example.com"):
        signup(client, address)
    result = mailer.drain()
    assert (result.sent, result.deferred, result.failed) == (1, 1, 1)
    rows = {r.last_error: r for r in _rows(db) if r.last_error}
    assert rows["451 4.3.0 Try again later"].status == "deferred"
    assert rows["550 5.1.1 No such user"].status == "failed"
    assert [r.rcpt_tos for r in smtp_server.received] == [["ok@example.com"]]

    # Backoff grows: the second deferral waits longer than the first.
    first_wait = rows["451 4.3.0 Try again later"].next_attempt_at - utcnow()
    mailer.drain(clock=_later(2))
    second = [r for r in _rows(db) if r.status == "deferred"][0]
    assert second.attempts == 2
    assert second.next_attempt_at - (utcnow() + dt.timedelta(minutes=2)) > first_wait

    smtp_server.handler.rcpt_reply = lambda address: None
    assert mailer.drain(clock=_later(10)).sent == 1
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == ["ok@example.com", "soft@example.com"]


def test_gives_up_after_the_deadline(client, mailer, smtp_server, db):
    smtp_server.handler.rcpt_reply = lambda address: "452 4.2.2 Mailbox full"
    signup(client, "full@example.com")
    mailer.drain()
    mailer.drain(clock=lambda: utcnow() + dt.timedelta(hours=49))
    row = _rows(db)[0]
    assert row.status == "failed"
    assert row.last_error == "gave up after 2 attempts: 452 4.2.2 Mailbox full"


def test_connection_dropped_mid_data_is_retried_not_lost(client, mailer, smtp_server, db):
    drops = {"count": 0}

    def drop_first(data):
        if drops["count"] == 0:
            drops["count"] += 1
            return "421 4.4.2 Connection dropped"
        return None

    smtp_server.handler.data_reply = drop_first
    signup(client, "a@example.com")
    signup(client, "b@example.com")
    result = mailer.drain()
    assert result.deferred == 1 and result.sent == 1
    assert mailer.drain(clock=_later(5)).sent == 1
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == ["a@example.com", "b@example.com"]


def test_worker_killed_after_claiming_leaves_rows_that_a_new_worker_sends_once(client, mailer, smtp_server, db):
    from mailer.delivery import outbox
    from mailer.db import session_scope

    signup(client, "a@example.com")
    signup(client, "b@example.com")
    with session_scope(mailer.sessions) as session:  # the dead worker claimed, then vanished
        claimed = outbox.claim_due(session, worker_id="dead", now=utcnow(), limit=10, lease_seconds=300,
                                   message_domain="clinic.example")
    assert len(claimed) == 2
    assert mailer.drain().claimed == 0  # still leased to the dead worker

    after_lease = _later(6)
    with Sender(mailer.settings, mailer.sessions, mailer.transport, mailer.renderer, clock=after_lease) as fresh:
        assert fresh.drain().sent == 2
        assert fresh.drain().sent == 0
    assert len(smtp_server.received) == 2

    # The dead worker's late report, if it ever came, changes nothing.
    with session_scope(mailer.sessions) as session:
        outbox.record_outcomes(session, outbox.Outcomes(failed={claimed[0]: ("temporary", "late")}), worker_id="dead",
                               now=utcnow(), base_seconds=60, cap_seconds=3600, deadline=dt.timedelta(hours=48))
    assert [r.status for r in _rows(db)] == ["sent", "sent"]


def test_a_running_worker_takes_a_dead_workers_rows_within_a_tenth_of_a_lease(client, mailer, smtp_server, db):
    """A worker looks for rows whose lease ran out at its first claim and then once every
    tenth of a lease (Sender._claim), not at every claim: a dead worker's rows go out at
    most a tenth of a lease after their lease ran out, once."""
    from mailer.delivery import outbox
    from mailer.db import session_scope

    lease = dt.timedelta(seconds=mailer.settings.lease_seconds)
    clock = [utcnow() + lease + dt.timedelta(seconds=1)]
    with Sender(mailer.settings, mailer.sessions, mailer.transport, mailer.renderer, clock=lambda: clock[0]) as live:
        assert live.drain().claimed == 0  # its first claim looked, and found nothing
        signup(client, "a@example.com")
        with session_scope(mailer.sessions) as session:  # the dead worker claimed, then vanished
            claimed = outbox.claim_due(session, worker_id="dead", now=utcnow(), limit=10,
                                       lease_seconds=mailer.settings.lease_seconds, message_domain="clinic.example")
        assert len(claimed) == 1
        clock[0] += lease / 10 - dt.timedelta(seconds=2)  # run out, but looked for a moment ago
        assert live.drain().claimed == 0
        clock[0] += dt.timedelta(seconds=2)
        assert live.drain().sent == 1
        clock[0] += lease
        assert live.drain().claimed == 0
    assert [r.rcpt_tos for r in smtp_server.received] == [["a@example.com"]]
    assert [r.status for r in _rows(db)] == ["sent"]


def test_restarted_worker_sends_exactly_once(database_url, tmp_path, smtp_server, db):
    overrides = settings_for(database_url, tmp_path, smtp_url=smtp_server.url)
    first = create_app(overrides)
    signup(first.test_client(), "a@example.com")
    first.extensions["mailer"].engine.dispose()  # the process that enqueued is gone

    for _ in range(2):  # a new worker process, started twice
        worker = create_app(overrides).extensions["mailer"]
        worker.drain()
        worker.engine.dispose()
    assert [r.rcpt_tos for r in smtp_server.received] == [["a@example.com"]]
