"""Prometheus metrics and the queue figures in /healthz, over a seeded outbox at a fixed time."""
from __future__ import annotations

import datetime as dt
import types

import pytest
import sqlalchemy as sa
import time_machine

from mailer.staff import metrics, users
from mailer.db import session_scope
from mailer.models import ApiToken, Contact, Delivery, SendWindow
from tests.conftest import signup

NOW = dt.datetime(2030, 5, 6, 12, 0, 30, tzinfo=dt.timezone.utc)
MINUTE = dt.datetime(2030, 5, 6, 12, 0, tzinfo=dt.timezone.utc)  # the minute NOW is in

# (status, error_class, next_attempt_at relative to NOW in seconds, how many)
SEED = [
    ("queued", None, -90, 1),  # the oldest due row
    ("queued", None, -10, 1),
    ("queued", None, 3600, 1),  # not due yet
    ("deferred", "temporary", -30, 1),
    ("deferred", "connection", 600, 1),
    ("sending", None, -5, 1),
    ("sent", None, -500, 3),
    ("failed", "permanent", -500, 2),
    ("failed", "expired", -500, 1),
    ("failed", "rendering", -500, 1),
    ("failed", None, -500, 1),  # failed before error classes were recorded
    ("suppressed", None, -500, 1),
    ("cancelled", None, -500, 2),
]

EXPECTED = """\
# HELP mailer_queue_depth Deliveries waiting or in flight, by status.
# TYPE mailer_queue_depth gauge
mailer_queue_depth{status="queued"} 3
mailer_queue_depth{status="deferred"} 2
mailer_queue_depth{status="sending"} 1
# HELP mailer_deliveries_total Deliveries that reached a final status (rows in the outbox, never deleted).
# TYPE mailer_deliveries_total counter
mailer_deliveries_total{status="sent"} 3
mailer_deliveries_total{status="failed"} 5
mailer_deliveries_total{status="suppressed"} 1
mailer_deliveries_total{status="cancelled"} 2
# HELP mailer_failures Deliveries currently failed or deferred, by error class.
# TYPE mailer_failures gauge
mailer_failures{class="temporary"} 1
mailer_failures{class="permanent"} 2
mailer_failures{class="connection"} 1
mailer_failures{class="rendering"} 1
mailer_failures{class="expired"} 1
mailer_failures{class="policy"} 0
mailer_failures{class="rejected"} 0
mailer_failures{class="address"} 0
mailer_failures{class="unknown"} 1
# HELP mailer_oldest_due_seconds Age of the oldest queued or deferred delivery that is due (0 when none).
# TYPE mailer_oldest_due_seconds gauge
mailer_oldest_due_seconds 90
# HELP mailer_send_rate_per_second Messages sent in the last full minute, per second.
# TYPE mailer_send_rate_per_second gauge
mailer_send_rate_per_second 1.5
"""


@pytest.fixture
def tokens(mailer):
    with session_scope(mailer.sessions) as session:
        user = users.create_user(session, "ops@clinic.example", "correct horse battery staple")
        made = types.SimpleNamespace(read=users.create_token(session, user, "prometheus", "read"),
                                     write=users.create_token(session, user, "ses", "write"),
                                     revoked=users.create_token(session, user, "old", "read"))
        session.execute(sa.update(ApiToken).where(ApiToken.token_hash == users.hash_token(made.revoked))
                        .values(revoked_at=NOW))
    return made


@pytest.fixture
def seeded(mailer):
    """The outbox above, and per-minute send windows around NOW."""
    with session_scope(mailer.sessions) as session:
        contact_id = session.execute(sa.insert(Contact).values(email="ada@example.com", name="Ada", created_at=NOW)
                                     .returning(Contact.id)).scalar_one()
        rows = [dict(status=status, error_class=error_class, next_attempt_at=NOW + dt.timedelta(seconds=offset))
                for status, error_class, offset, count in SEED for _ in range(count)]
        session.execute(sa.insert(Delivery), [
            dict(row, contact_id=contact_id, kind="newsletter", dedupe_key=f"seed:{i}", created_at=NOW)
            for i, row in enumerate(rows)])
        session.execute(sa.insert(SendWindow), [
            dict(granularity="m", start=MINUTE - dt.timedelta(minutes=2), count=1000),
            dict(granularity="m", start=MINUTE - dt.timedelta(minutes=1), count=90),  # the last full minute
            dict(granularity="m", start=MINUTE, count=500),  # still running: not counted
            dict(granularity="s", start=MINUTE - dt.timedelta(seconds=30), count=7),
        ])


def scrape(client, token, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with time_machine.travel(NOW, tick=False):
        return client.get("/metrics", headers=headers, **kwargs)


def test_metrics_expose_every_figure(client, tokens, seeded):
    answer = scrape(client, tokens.read)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert answer.text == EXPECTED
    assert scrape(client, tokens.write).text == EXPECTED


def test_metrics_of_an_empty_outbox_are_zero(client, tokens):
    lines = [line for line in scrape(client, tokens.read).text.splitlines() if not line.startswith("#")]
    assert lines == [
        'mailer_queue_depth{status="queued"} 0', 'mailer_queue_depth{status="deferred"} 0',
        'mailer_queue_depth{status="sending"} 0',
        'mailer_deliveries_total{status="sent"} 0', 'mailer_deliveries_total{status="failed"} 0',
        'mailer_deliveries_total{status="suppressed"} 0', 'mailer_deliveries_total{status="cancelled"} 0',
        'mailer_failures{class="temporary"} 0', 'mailer_failures{class="permanent"} 0',
        'mailer_failures{class="connection"} 0', 'mailer_failures{class="rendering"} 0',
        'mailer_failures{class="expired"} 0', 'mailer_failures{class="policy"} 0',
        'mailer_failures{class="rejected"} 0', 'mailer_failures{class="address"} 0',
        "mailer_oldest_due_seconds 0", "mailer_send_rate_per_second 0",
    ]


def test_metrics_need_a_live_token_in_the_header(client, tokens, db):
    for token in (None, "mlr_wrong", tokens.revoked):
        answer = scrape(client, token)
        assert answer.status_code == 401
        assert answer.json["error"]["code"] == "unauthorized"
    # Only the bounce webhook takes ?token= (for SNS); a scraper can send a header.
    assert scrape(client, None, query_string={"token": tokens.read}).status_code == 401
    assert db.scalar(sa.select(ApiToken.last_used_at).where(ApiToken.scope == "write")) is None
    scrape(client, tokens.read)
    assert db.scalar(sa.select(ApiToken.last_used_at).where(ApiToken.name == "prometheus")) == NOW


def test_oldest_due_age_moves_with_now(mailer, seeded):
    with mailer.read_sessions() as session:
        assert metrics.due_summary(session, NOW) == metrics.DueSummary(due=3, oldest_due_seconds=90)
        later = NOW + dt.timedelta(minutes=10, seconds=1)  # the deferred row at +600 s is due too
        assert metrics.due_summary(session, later) == metrics.DueSummary(due=4, oldest_due_seconds=691)
        earlier = NOW - dt.timedelta(seconds=91)
        assert metrics.due_summary(session, earlier) == metrics.DueSummary(due=0, oldest_due_seconds=0)
        assert metrics.send_rate_per_second(session, MINUTE + dt.timedelta(minutes=1)) == 500 / 60
        assert metrics.send_rate_per_second(session, MINUTE + dt.timedelta(minutes=5)) == 0


def test_healthz_reports_the_due_queue(client, tokens, seeded):
    with time_machine.travel(NOW, tick=False):
        answer = client.get("/healthz", headers={"Authorization": f"Bearer {tokens.read}"})
    assert answer.status_code == 200
    assert answer.json["queue"] == {"due": 3, "oldest_due_seconds": 90}
    assert answer.json["checks"]["database"] == "ok"


def test_exposition_format_escapes_labels_and_formats_numbers():
    text = metrics.render([metrics.Metric("m", "gauge", "Help.", {'a"b\\c\nd': 0.25}, label="x"),
                           metrics.Metric("n", "gauge", "Help.", {None: 2.0})])
    assert text.splitlines()[2] == 'm{x="a\\"b\\\\c\\nd"} 0.25'
    assert text.splitlines()[-1] == "n 2"


def test_send_rate_counts_what_the_sender_sent_in_the_last_minute(client, mailer, tokens, smtp_server):
    with time_machine.travel(MINUTE - dt.timedelta(seconds=50)):
        for address in ("ada@example.com", "bob@example.com", "cy@example.com"):
            signup(client, address)
        mailer.drain()
    assert len(smtp_server.received) == 3
    text = scrape(client, tokens.read).text
    assert 'mailer_deliveries_total{status="sent"} 3' in text.splitlines()
    assert "mailer_send_rate_per_second 0.05" in text.splitlines()
