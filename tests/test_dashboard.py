"""The staff dashboard: subscribers over time (DST-correct days), this month, what is next, the queue."""
from __future__ import annotations

import datetime as dt
import re

import pytest
import sqlalchemy as sa
import time_machine

from mailer import create_app
from mailer.campaigns import webinars
from mailer.staff import dashboard, users
from mailer.audience.consent import RequestContext
from mailer.db import session_scope, utcnow
from mailer.models import Contact, Delivery, MailingList, Newsletter, Subscription
from tests.conftest import STAFF_PASSWORD, settings_for

UTC = dt.timezone.utc


def _utc(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def _add(mailer, rows) -> None:
    """rows: (confirmed_at, unsubscribed_at or None, status)"""
    with session_scope(mailer.sessions) as s:
        list_id = s.scalar(sa.select(MailingList.id).where(MailingList.slug == "newsletter"))
        for i, (confirmed, unsubscribed, status) in enumerate(rows):
            contact = Contact(email=f"reader{i}-{id(rows)}@example.com", name=f"Reader {i}")
            s.add(contact)
            s.flush()
            s.add(Subscription(contact_id=contact.id, list_id=list_id, status=status, confirmed_at=confirmed,
                               unsubscribed_at=unsubscribed))


def test_history_counts_each_local_day_across_the_autumn_dst_change(mailer):
    # Europe/London leaves BST at 2026-10-25 01:00 UTC. 23:30 UTC on the 24th is already the 25th
    # locally (00:30 BST); 23:30 UTC on the 25th is still the 25th (23:30 GMT).
    _add(mailer, [
        (_utc(2026, 9, 1, 12), None, "active"),                    # before the window
        (_utc(2026, 10, 24, 22, 30), None, "active"),              # 23:30 BST on the 24th
        (_utc(2026, 10, 24, 23, 30), None, "active"),              # 00:30 BST on the 25th
        (_utc(2026, 10, 25, 23, 30), _utc(2026, 10, 27, 9), "unsubscribed"),
        (None, None, "pending"),                                   # never counted
        (None, _utc(2026, 10, 26, 9), "unsubscribed"),             # left while pending: not a loss
    ])
    now = _utc(2026, 10, 28, 12)
    with mailer.read_sessions() as s:
        history, _ = dashboard.subscriber_figures(s, now=now, zone="Europe/London", days=7)
    assert [(d.date.isoformat(), d.active, d.gained, d.lost) for d in history] == [
        ("2026-10-22", 1, 0, 0),
        ("2026-10-23", 1, 0, 0),
        ("2026-10-24", 2, 1, 0),
        ("2026-10-25", 4, 2, 0),
        ("2026-10-26", 4, 0, 0),
        ("2026-10-27", 3, 0, 1),
        ("2026-10-28", 3, 0, 0),
    ]


def test_this_month_starts_at_local_midnight(mailer):
    # 1 November 00:30 GMT is in November; 31 October 23:30 GMT is not.
    _add(mailer, [
        (_utc(2026, 10, 31, 23, 30), None, "active"),
        (_utc(2026, 11, 1, 0, 30), None, "active"),
        (_utc(2026, 10, 2), _utc(2026, 11, 3), "unsubscribed"),
        (_utc(2026, 11, 2), _utc(2026, 11, 4), "unsubscribed"),
    ])
    with mailer.read_sessions() as s:
        _, month = dashboard.subscriber_figures(s, now=_utc(2026, 11, 20), zone="Europe/London", days=3)
    assert month == {"gained": 2, "lost": 2, "net": 0}


def test_days_and_month_are_exact_in_a_half_hour_zone(mailer):
    # Asia/Kolkata is UTC+05:30: its days start at 18:30 UTC. Counted per UTC hour, a change in
    # the first half hour of a local day fell on the day before (and out of "this month").
    _add(mailer, [
        (_utc(2026, 11, 30, 18, 20), None, "active"),              # 23:50 on 30 November: last month
        (_utc(2026, 11, 30, 18, 40), None, "active"),              # 00:10 on 1 December: this month
        (_utc(2026, 12, 1, 18, 20), None, "active"),               # 23:50 on 1 December
        (_utc(2026, 12, 1, 18, 40), _utc(2026, 12, 2, 18, 35), "unsubscribed"),  # 00:10 on the 2nd; left 00:05, 3rd
    ])
    with mailer.read_sessions() as s:
        history, month = dashboard.subscriber_figures(s, now=_utc(2026, 12, 3, 6, 30), zone="Asia/Kolkata", days=5)
    assert [(d.date.isoformat(), d.active, d.gained, d.lost) for d in history] == [
        ("2026-11-29", 0, 0, 0),
        ("2026-11-30", 1, 1, 0),
        ("2026-12-01", 3, 2, 0),
        ("2026-12-02", 4, 1, 0),
        ("2026-12-03", 3, 0, 1),
    ]
    assert month == {"gained": 3, "lost": 1, "net": 2}


def test_days_are_exact_in_a_quarter_hour_zone(mailer):
    # Asia/Kathmandu is UTC+05:45: 18:20 UTC is 00:05 on the next local day, 18:10 UTC 23:55.
    _add(mailer, [(_utc(2026, 12, 1, 18, 10), None, "active"), (_utc(2026, 12, 1, 18, 20), None, "active")])
    with mailer.read_sessions() as s:
        history, month = dashboard.subscriber_figures(s, now=_utc(2026, 12, 2, 6), zone="Asia/Kathmandu", days=2)
    assert [(d.date.isoformat(), d.gained) for d in history] == [("2026-12-01", 1), ("2026-12-02", 1)]
    assert month["gained"] == 2


@pytest.fixture
def kolkata(database_url, smtp_server, tmp_path):
    """The app of an organisation in Asia/Kolkata (MAILER_TIMEZONE) and a viewer's login."""
    app = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url, timezone="Asia/Kolkata"))
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "viewer@clinic.example", STAFF_PASSWORD, "viewer")

    def login():
        client = app.test_client()
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/login").text).group(1)
        assert client.post("/admin/login", data={"email": "viewer@clinic.example", "password": STAFF_PASSWORD,
                                                 "csrf_token": token}).status_code == 302
        return client

    yield app.extensions["mailer"], login
    app.extensions["mailer"].engine.dispose()


# 12:00 on 2 December in Kolkata.
@time_machine.travel(_utc(2026, 12, 2, 6, 30), tick=True)
def test_dashboard_page_counts_this_month_from_local_midnight_in_a_half_hour_zone(kolkata):
    mailer, login = kolkata
    client = login()  # on the pinned clock: a staff session lasts 12 hours
    _add(mailer, [
        (_utc(2026, 11, 30, 18, 20), None, "active"),  # 23:50 on 30 November: last month
        (_utc(2026, 11, 30, 18, 40), None, "active"),  # 00:10 on 1 December
        (_utc(2026, 12, 1, 18, 40), None, "active"),   # 00:10 on 2 December: today
    ])
    page = client.get("/admin/")
    assert page.status_code == 200
    assert "This month: +2 new, −0 unsubscribed (net +2)." in _text(page.text)
    assert re.findall(r"<rect[^>]*><title>([^<]+)</title>", page.text) == [
        "2026-11-30: +1", "2026-12-01: +1", "2026-12-02: +1"]


@pytest.fixture
def owner(staff):
    return staff("viewer")[0]  # the dashboard is for every role


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# The page reads the real clock. Its "today" and "this month" must hold changes made minutes
# before: pinned to a midday in mid-month (a run at 00:02 London time put them on yesterday).
@time_machine.travel(_utc(2026, 12, 9, 12, 0), tick=True)
def test_dashboard_shows_growth_next_mailings_and_queue(staff, mailer):
    owner = staff("viewer")[0]  # logged in on the pinned clock: a staff session lasts 12 hours
    now = utcnow()
    _add(mailer, [(now - dt.timedelta(minutes=5), None, "active"),
                  (now - dt.timedelta(minutes=4), None, "active"),
                  (now - dt.timedelta(minutes=3), now - dt.timedelta(minutes=1), "unsubscribed")])
    with session_scope(mailer.sessions) as s:
        s.add(Newsletter(subject="December: posture at the desk", status="scheduled",
                         send_at=now + dt.timedelta(days=3)))
        w = webinars.save_webinar(s, slug="spine-health", title="Spine Health",
                                  starts_local=(now + dt.timedelta(days=5)).replace(tzinfo=None, microsecond=0),
                                  timezone="UTC", capacity=30, join_url="https://meet.example.org/spine", now=now)
        s.flush()
        webinars.publish(s, w.id)
        contact_id = s.scalar(sa.select(Contact.id).limit(1))
        s.add(Delivery(contact_id=contact_id, kind="newsletter", dedupe_key="d1", status="queued",
                       next_attempt_at=now - dt.timedelta(seconds=30)))
    with session_scope(mailer.sessions) as s:
        webinars.register(s, mailer.settings, "spine-health", email="ann@example.com", name="Ann",
                          context=RequestContext(source_url="https://clinic.example/", ip="127.0.0.1", user_agent="t"),
                          now=now)

    page = owner.get("/admin/")
    assert page.status_code == 200
    text = _text(page.text)
    assert "2 active subscriptions" in text
    assert "This month: +3 new, −1 unsubscribed (net +2)." in text
    assert "December: posture at the desk" in text
    assert "Spine Health" in text and "1 seat taken of 30" in text
    assert re.search(r"\d+ due now, oldest waiting \d+ s", text)
    assert re.search(r"\d+ due now, oldest waiting \d+ s Sending 0\.0 messages/s \(last full minute\) "
                     r"0 deferred ?, 0 failed ?, 0 held", text)
    points = re.search(r'<polyline class="line" points="([^"]+)"', page.text).group(1).split()
    assert len(points) == 90  # one per day
    assert re.findall(r"<rect[^>]*><title>([^<]+)</title>", page.text) == [
        f"{now.astimezone(mailer.settings.zone).date().isoformat()}: +3",
        f"{now.astimezone(mailer.settings.zone).date().isoformat()}: -1"]
    assert 'aria-label="Active subscriptions from' in page.text


def test_one_active_subscription_is_said_in_the_singular(owner, mailer):
    _add(mailer, [(utcnow() - dt.timedelta(minutes=5), None, "active")])
    text = _text(owner.get("/admin/").text)
    assert "1 active subscription " in text + " " and "1 active subscriptions" not in text


def test_dashboard_of_a_new_install(owner):
    text = _text(owner.get("/admin/").text)
    assert "0 active subscriptions" in text
    assert "Nothing scheduled." in text
    assert "No published webinar ahead." in text
    assert "0 due now" in text
