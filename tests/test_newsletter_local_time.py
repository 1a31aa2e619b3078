"""A newsletter sent at 09:00 in each reader's own zone: readers in Auckland, London and
Los Angeles (and without a zone: the organisation's) each get it at 09:00 on their clock,
under an injected clock, through the real SMTP server; pause, resume and cancel across
the span."""
from __future__ import annotations

import datetime as dt
import email.utils
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from mailer import clock, create_app
from mailer.campaigns import newsletters
from mailer.db import session_scope
from mailer.errors import InvalidInput
from mailer.models import Contact, Delivery, Newsletter
from tests.audience import address, make_audience, make_newsletter
from tests.conftest import settings_for

UTC = dt.timezone.utc
ORG_ZONE = "Asia/Kolkata"  # the organisation's zone here: readers without one (or with a bad one) follow it
# Wednesday 17 March 2027 is in the week between the US change (14 March) and the EU one
# (28 March): Los Angeles is on PDT (UTC-7), London still on GMT, Auckland on NZDT (UTC+13).
LOCAL = dt.datetime(2027, 3, 17, 9, 0)
READERS = {0: "Pacific/Auckland", 1: "Europe/London", 2: "America/Los_Angeles", 3: None, 4: "Mars/Olympus"}
DUE = {  # reader → the UTC instant their clock shows 09:00 on 17 March
    0: dt.datetime(2027, 3, 16, 20, 0, tzinfo=UTC),
    1: dt.datetime(2027, 3, 17, 9, 0, tzinfo=UTC),
    2: dt.datetime(2027, 3, 17, 16, 0, tzinfo=UTC),
    3: dt.datetime(2027, 3, 17, 3, 30, tzinfo=UTC),
    4: dt.datetime(2027, 3, 17, 3, 30, tzinfo=UTC),
}
SCHEDULED_ON = dt.datetime(2027, 3, 10, 12, 0, tzinfo=UTC)
MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def mailer(database_url, smtp_server, tmp_path):
    app = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url, timezone=ORG_ZONE))
    yield app.extensions["mailer"]
    app.extensions["mailer"].engine.dispose()


def make_readers(mailer, db) -> int:
    make_audience(mailer, len(READERS))
    for i, zone in READERS.items():
        db.write(sa.update(Contact).where(Contact.email == address(i)).values(timezone=zone))
    newsletter_id = make_newsletter(mailer, enqueue=False)
    db.write(sa.update(Newsletter).values(status="draft"))
    with session_scope(mailer.sessions) as session:
        newsletters.schedule_in_reader_zones(session, newsletter_id, LOCAL, fallback_zone=mailer.settings.timezone,
                                             now=SCHEDULED_ON)
    return newsletter_id


def received(smtp_server) -> dict[int, list[dt.datetime]]:
    """Reader number → the Date of each copy they received (parsed from the messages)."""
    got: dict[int, list[dt.datetime]] = {}
    for message in smtp_server.received:
        number = int(message.rcpt_tos[0].removeprefix("reader").split("@")[0])
        assert message.message["Subject"] == f"Spine Health monthly for Reader{number}"
        got.setdefault(number, []).append(email.utils.parsedate_to_datetime(message.message["Date"]))
    return got


def run_at(mailer, when: dt.datetime):
    """What the worker does at `when`: start what is due, send what is due, finish what is done."""
    return mailer.drain(clock=lambda: when)


def status(db, newsletter_id: int) -> str:
    return db.scalar(sa.select(Newsletter.status).where(Newsletter.id == newsletter_id))


def test_each_reader_gets_it_at_nine_on_their_own_clock(mailer, smtp_server, db):
    newsletter_id = make_readers(mailer, db)
    n = db.execute(sa.select(Newsletter.send_at, Newsletter.send_local_time, Newsletter.send_zone_fallback))[0]
    assert n == (DUE[0], "2027-03-17T09:00", ORG_ZONE)  # starts when Auckland reaches 09:00

    steps = [  # (time, who has it by then)
        (DUE[0] - MINUTE, set()),
        (DUE[0], {0}),
        (DUE[3] - MINUTE, {0}),
        (DUE[3], {0, 3, 4}),
        (DUE[1] - MINUTE, {0, 3, 4}),
        (DUE[1], {0, 1, 3, 4}),
        (DUE[2] - MINUTE, {0, 1, 3, 4}),
        (DUE[2], {0, 1, 2, 3, 4}),
        (DUE[2] + dt.timedelta(hours=2), {0, 1, 2, 3, 4}),
    ]
    for when, expected in steps:
        run_at(mailer, when)
        assert set(received(smtp_server)) == expected, when
        if DUE[0] <= when < DUE[2]:
            assert status(db, newsletter_id) == "sending", when
    assert status(db, newsletter_id) == "sent"

    for number, dates in received(smtp_server).items():
        assert len(dates) == 1  # one copy each
        zone = clock.zone_or(READERS[number], ORG_ZONE)
        local = dates[0].astimezone(ZoneInfo(zone))
        assert (local.date(), local.hour, local.minute) == (LOCAL.date(), 9, 0), (number, zone)
    # Each reader's row was queued for their own instant when the send started.
    due = dict(db.execute(sa.select(Contact.email, Delivery.next_attempt_at).join(Contact)))
    assert {i: due[address(i)] for i in READERS} == DUE


def test_queueing_is_one_insert_for_every_zone(mailer, db):
    newsletter_id = make_readers(mailer, db)
    statements = []
    sa.event.listen(mailer.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *args: statements.append(statement))
    with session_scope(mailer.sessions) as session:
        assert newsletters.start_due(session, DUE[0]) == [newsletter_id]
    inserts = [s for s in statements if s.lstrip().upper().startswith("INSERT INTO DELIVERIES")]
    # One pass over the audience, each row's time from its reader's zone (Auckland, London,
    # Los Angeles, and the organisation's for no zone and Mars/Olympus): the test above
    # checks each row's time.
    assert len(inserts) == 1 and "CASE contacts.timezone" in inserts[0]
    assert db.scalar(sa.select(Newsletter.audience_count)) == 5


def test_the_report_says_how_many_wait_for_their_time(mailer, smtp_server, db):
    newsletter_id = make_readers(mailer, db)
    run_at(mailer, DUE[3])
    with session_scope(mailer.sessions) as session:
        figures = newsletters.report(session, newsletter_id, now=DUE[3])
        span = newsletters.local_time_span(session, session.get(Newsletter, newsletter_id))
    assert (figures["sent"], figures["queued"], figures["waiting"], figures["local_time"]) == \
        (3, 2, 2, "2027-03-17T09:00")
    assert span == (DUE[0], DUE[2])


def test_pause_in_the_span_then_resume_keeps_each_readers_hour(mailer, smtp_server, db):
    newsletter_id = make_readers(mailer, db)
    run_at(mailer, DUE[0])
    assert set(received(smtp_server)) == {0}
    with session_scope(mailer.sessions) as session:
        newsletters.pause(session, newsletter_id)
    run_at(mailer, DUE[3])  # the organisation's zone reaches 09:00 while paused: held
    assert set(received(smtp_server)) == {0}
    assert status(db, newsletter_id) == "paused"

    resumed_at = DUE[3] + dt.timedelta(hours=2)
    with session_scope(mailer.sessions) as session:
        newsletters.resume(session, newsletter_id)
    run_at(mailer, resumed_at)  # those whose 09:00 passed during the pause get it now; London still waits
    assert set(received(smtp_server)) == {0, 3, 4}
    run_at(mailer, DUE[1] - MINUTE)
    assert set(received(smtp_server)) == {0, 3, 4}
    run_at(mailer, DUE[1])
    assert set(received(smtp_server)) == {0, 1, 3, 4}
    run_at(mailer, DUE[2] - MINUTE)
    assert set(received(smtp_server)) == {0, 1, 3, 4}
    run_at(mailer, DUE[2])
    got = received(smtp_server)
    assert {number: len(dates) for number, dates in got.items()} == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}  # nobody twice
    assert got[1] == [DUE[1]] and got[2] == [DUE[2]] and got[3] == [resumed_at]
    assert status(db, newsletter_id) == "sent"


def test_cancel_in_the_span_stops_the_rest(mailer, smtp_server, db):
    newsletter_id = make_readers(mailer, db)
    run_at(mailer, DUE[1])
    assert set(received(smtp_server)) == {0, 1, 3, 4}
    with session_scope(mailer.sessions) as session:
        newsletters.cancel(session, newsletter_id)
    run_at(mailer, DUE[2])
    run_at(mailer, DUE[2] + dt.timedelta(days=1))
    assert set(received(smtp_server)) == {0, 1, 3, 4}
    assert status(db, newsletter_id) == "cancelled"
    assert db.scalar(sa.select(Delivery.status).join(Contact).where(Contact.email == address(2))) == "cancelled"


def test_a_time_already_past_for_some_readers_is_refused(mailer, db):
    make_audience(mailer, 2)
    db.write(sa.update(Contact).where(Contact.email == address(0)).values(timezone="Pacific/Auckland"))
    newsletter_id = make_newsletter(mailer, enqueue=False)
    db.write(sa.update(Newsletter).values(status="draft"))
    with session_scope(mailer.sessions) as session, pytest.raises(InvalidInput) as refused:
        newsletters.schedule_in_reader_zones(session, newsletter_id, LOCAL, fallback_zone=ORG_ZONE,
                                             now=DUE[0] + MINUTE * 5)
    assert refused.value.message == "2027-03-17 09:00 has already passed for readers in Pacific/Auckland; " \
                                    "choose a later day."


def test_scheduling_in_organisation_time_again_clears_the_local_time(mailer, db):
    newsletter_id = make_readers(mailer, db)
    with session_scope(mailer.sessions) as session:
        newsletters.schedule(session, newsletter_id, DUE[1], now=SCHEDULED_ON)
    assert db.execute(sa.select(Newsletter.send_at, Newsletter.send_local_time, Newsletter.send_zone_fallback)) == \
        [(DUE[1], None, None)]


def test_reader_local_time_across_clock_changes():
    # London on the day the clocks go forward (28 March 2027): 09:00 is BST.
    assert clock.reader_local_to_utc(dt.datetime(2027, 3, 28, 9), "Europe/London") == \
        dt.datetime(2027, 3, 28, 8, tzinfo=UTC)
    # A time the clocks skip there goes out as they jump past it, not refused: 01:30 → 02:30 BST.
    assert clock.reader_local_to_utc(dt.datetime(2027, 3, 28, 1, 30), "Europe/London") == \
        dt.datetime(2027, 3, 28, 1, 30, tzinfo=UTC)
    # A repeated time is the first of the two (31 October 2027, 01:30 BST).
    assert clock.reader_local_to_utc(dt.datetime(2027, 10, 31, 1, 30), "Europe/London") == \
        dt.datetime(2027, 10, 31, 0, 30, tzinfo=UTC)
    # Los Angeles on its change day (14 March 2027): 09:00 is already PDT.
    assert clock.reader_local_to_utc(dt.datetime(2027, 3, 14, 9), "America/Los_Angeles") == \
        dt.datetime(2027, 3, 14, 16, tzinfo=UTC)
    assert clock.zone_or("Mars/Olympus", "Europe/London") == "Europe/London"
    assert clock.zone_or(None, "Europe/London") == "Europe/London"
    assert clock.zone_or("Pacific/Auckland", "Europe/London") == "Pacific/Auckland"


def test_cli_schedules_in_each_readers_zone_and_reports_who_waits(mailer, smtp_server, db, database_url, tmp_path):
    from tests.test_newsletters import cli, time_at

    make_audience(mailer, len(READERS))
    for i, zone in READERS.items():
        db.write(sa.update(Contact).where(Contact.email == address(i)).values(timezone=zone))
    newsletter_id = make_newsletter(mailer, enqueue=False)
    db.write(sa.update(Newsletter).values(status="draft"))
    with time_at(SCHEDULED_ON):
        # The CLI's organisation zone is London here: readers 3 and 4 follow it.
        done = cli(database_url, tmp_path, "newsletter", "schedule", str(newsletter_id), "--at", "2027-03-17 09:00",
                   "--each-reader")
    assert done.exit_code == 0, done.output
    assert done.output.strip() == (f"newsletter {newsletter_id} scheduled for 2027-03-17 09:00 in each reader's time "
                                   "zone: from 2027-03-16 20:00 UTC to 2027-03-17 16:00 UTC")
    assert db.scalar(sa.select(Newsletter.send_zone_fallback)) == "Europe/London"
    run_at(mailer, DUE[1])
    with time_at(DUE[1] + MINUTE):
        report = cli(database_url, tmp_path, "newsletter", "report", str(newsletter_id)).output
    assert "sent: 4" in report and "queued: 1" in report
    assert "waiting: 1 (queued, for 09:00 in their own time zone)" in report
    refused = cli(database_url, tmp_path, "newsletter", "schedule", str(newsletter_id), "--now", "--each-reader")
    assert refused.exit_code == 1


def test_the_issue_page_shows_sent_and_waiting(mailer, smtp_server, db, staff):
    newsletter_id = make_readers(mailer, db)
    from tests.test_newsletters import time_at

    run_at(mailer, DUE[3])  # Auckland and the organisation's zone have it; London and Los Angeles wait
    # The page counts as waiting what is due after its clock: it looks at DUE[3] too, not the real time
    # (from 2027-03-17 09:00 UTC on, London's 09:00 had passed). Logged in then: a session lasts 12 hours.
    with time_at(DUE[3] + MINUTE):
        client, _ = staff("viewer")
        progress = client.get(f"/admin/newsletters/{newsletter_id}/progress").json
        page = " ".join(client.get(f"/admin/newsletters/{newsletter_id}").text.replace("&#39;", "'").split())
    assert (progress["value"], progress["max"], progress["figures"]["waiting"]) == (3, 5, 2)
    assert ('<span data-figure="sent">3</span> of 5 sent so far, <span data-figure="waiting">2</span> waiting for '
            "09:00 in their own time zone.") in page
    assert ("09:00 in each reader's time zone on Wednesday 17 March 2027 "
            "(from 20:00 UTC on 16 March to 16:00 UTC on 17 March)") in page


def test_readers_without_zones_all_go_at_the_organisations_time(mailer, smtp_server, db):
    make_audience(mailer, 2)
    newsletter_id = make_newsletter(mailer, enqueue=False)
    db.write(sa.update(Newsletter).values(status="draft"))
    with session_scope(mailer.sessions) as session:
        newsletters.schedule_in_reader_zones(session, newsletter_id, LOCAL, fallback_zone=ORG_ZONE, now=SCHEDULED_ON)
    assert db.scalar(sa.select(Newsletter.send_at)) == DUE[3]
    run_at(mailer, DUE[3] - MINUTE)
    assert received(smtp_server) == {}
    run_at(mailer, DUE[3])
    assert set(received(smtp_server)) == {0, 1}
    assert status(db, newsletter_id) == "sent"
