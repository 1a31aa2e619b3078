"""Webinars end to end: reserve, confirmation with a calendar invite, reminders at
the right moment in every zone, waitlist and promotion, reschedule, cancel, follow-up."""
from __future__ import annotations

import datetime as dt
import threading

import icalendar
import pytest
import sqlalchemy as sa

from mailer.campaigns import webinars
from mailer.audience.consent import RequestContext
from mailer.db import session_scope
from mailer.models import Delivery, Registration
from tests.conftest import links_in

UTC = dt.timezone.utc
JOIN = "https://meet.example.com/spine-health-room"
START_LOCAL = dt.datetime(2027, 3, 25, 18, 0)  # Thursday, London still on GMT: 18:00 UTC
START = dt.datetime(2027, 3, 25, 18, 0, tzinfo=UTC)
BEFORE = dt.datetime(2027, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def webinar(mailer):
    with session_scope(mailer.sessions) as session:
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health", starts_local=START_LOCAL,
                                  timezone="Europe/London", duration_minutes=45, capacity=None,
                                  description_md="Five exercises **for your desk**.", join_url=JOIN,
                                  replay_url="", reminder_offsets="1440,60", now=BEFORE)
        webinars.publish(session, w.id)
        return w.id


def at(when):
    return lambda: when


def register(client, email, name="Ann", zone="America/New_York", when=BEFORE, **extra):
    import time_machine

    with time_machine.travel(when, tick=False):
        return client.post("/webinars/spine-health/register",
                           data={"email": email, "name": name, "timezone": zone, **extra})


def view(client, path, when=BEFORE):
    """A page as a visitor sees it at `when`: the public pages read the clock, and on the real one
    the webinar was over from START on (2027-03-25 18:00 UTC), its seats no longer offered."""
    import time_machine

    with time_machine.travel(when, tick=False):
        return client.get(path)


def mails_to(smtp_server, address):
    return [r.message for r in smtp_server.received if r.rcpt_tos == [address]]


def invite(message) -> icalendar.Calendar:
    part = [p for p in message.iter_attachments() if p.get_filename() == "invite.ics"][0]
    assert part.get_content_type() == "text/calendar"
    return icalendar.Calendar.from_ical(part.get_payload(decode=True))


def event(cal):
    return [c for c in cal.walk("VEVENT")][0]


def test_register_confirmation_with_invite_reminders_and_follow_up(client, mailer, smtp_server, webinar, db):
    page = view(client, "/webinars/spine-health")
    assert page.status_code == 200 and "Spine Health" in page.text and JOIN not in page.text
    assert JOIN not in view(client, "/webinars").text and "Spine Health" in view(client, "/webinars").text
    assert "Thursday 25 March 2027, 18:00 GMT" in page.text
    answer = register(client, "ann@example.com")
    assert answer.status_code == 200 and "Check your inbox" in answer.text

    mailer.drain(clock=at(BEFORE))
    [confirmation] = mails_to(smtp_server, "ann@example.com")
    assert confirmation["Subject"] == "Your seat: Spine Health, Thursday 25 March 2027, 14:00 EDT"
    text = confirmation.get_body(("plain",)).get_content()
    assert "Thursday 25 March 2027, 14:00 EDT (Thursday 25 March 2027, 18:00 GMT for the organiser)" in text
    assert f"Join: {JOIN}" in text and "calendar.google.com" in text
    cancel = [l for l in links_in(text) if "/cancel/" in l][0]
    assert confirmation["List-Unsubscribe"] == f"<{cancel.replace('/cancel/', '/stop-mail/')}>"
    cal = invite(confirmation)
    assert cal["METHOD"] == "REQUEST"
    vevent = event(cal)
    assert vevent.decoded("DTSTART").astimezone(UTC) == START
    assert vevent.decoded("DTEND").astimezone(UTC) == START + dt.timedelta(minutes=45)
    assert str(vevent["DTSTART"].params["TZID"]) == "Europe/London"
    assert str(vevent["URL"]) == JOIN and str(vevent["LOCATION"]) == JOIN
    assert str(vevent["ORGANIZER"]) == "mailto:news@clinic.example"
    assert vevent["SEQUENCE"] == 0
    assert [a for a in vevent.walk("VALARM")]
    uid = str(vevent["UID"])

    # Reminders: the worker's jobs (reminders every 30 s, sending every 5 s) under an injected clock.
    latencies = []
    for offset in (1440, 60):
        due = START - dt.timedelta(minutes=offset)
        clock = due - dt.timedelta(minutes=2, seconds=3)  # the worker's ticks do not line up with the due time
        sent_before = len(mails_to(smtp_server, "ann@example.com"))
        while len(mails_to(smtp_server, "ann@example.com")) == sent_before:
            with session_scope(mailer.sessions) as session:
                if clock.second % 30 < 5:
                    webinars.materialise(session, clock)
            mailer.drain(clock=at(clock))
            clock += dt.timedelta(seconds=5)
            assert clock < due + dt.timedelta(minutes=5), "reminder never went out"
        latencies.append((clock - dt.timedelta(seconds=5) - due).total_seconds())
    print(f"\nreminder latency after due time (injected clock, 5 s sender / 30 s materialiser): {latencies} s")
    assert all(0 <= latency <= 60 for latency in latencies)
    reminders = mails_to(smtp_server, "ann@example.com")[1:]
    assert [m["Subject"] for m in reminders] == ["Starting in 24 hours: Spine Health",
                                                  "Starting in 60 minutes: Spine Health"]
    assert JOIN in reminders[1].get_body(("plain",)).get_content()

    # Follow-up after the end, once a replay is set: wording for those who came and those who did not.
    register(client, "bob@example.com", "Bob")
    with session_scope(mailer.sessions) as session:
        w = webinars.get_webinar(session, webinar)
        w.replay_url = "https://videos.example.com/spine-replay"
        assert webinars.import_attendance(session, webinar, "Name,Email\nAnn,ANN@example.com\nX,nobody@example.com\n") \
            == (1, ["nobody@example.com"])
    after = START + dt.timedelta(hours=2)
    mailer.drain(clock=at(after))
    assert mails_to(smtp_server, "ann@example.com")[-1]["Subject"] == "Thank you for joining: Spine Health"
    # Bob's confirmation and follow-up leave in the same batch, over parallel connections: any order.
    [follow_up] = [m for m in mails_to(smtp_server, "bob@example.com") if m["Subject"].startswith("Sorry")]
    assert follow_up["Subject"] == "Sorry we missed you: Spine Health"
    assert "https://videos.example.com/spine-replay" in follow_up.get_body(("plain",)).get_content()
    # Bob registered too late for his reminders: skipped, and recorded as such.
    skipped = db.scalars(sa.select(Delivery.last_error).where(Delivery.kind == "webinar_reminder",
                                                              Delivery.status == "cancelled"))
    assert skipped and set(skipped) == {"skipped: the webinar had started"}
    assert uid.endswith("@clinic.example")


def test_capacity_one_waitlist_then_promotion(client, mailer, smtp_server, webinar, db):
    with session_scope(mailer.sessions) as session:
        webinars.get_webinar(session, webinar).capacity = 1
    register(client, "first@example.com")
    second = register(client, "second@example.com")
    assert second.text == register(client, "first@example.com").text  # the answer tells nobody anything
    mailer.drain(clock=at(BEFORE))
    [waitlisted] = mails_to(smtp_server, "second@example.com")
    assert waitlisted["Subject"] == "You're on the waitlist: Spine Health"
    assert JOIN not in waitlisted.as_string() and not list(waitlisted.iter_attachments())
    assert "Full — join the waitlist" in view(client, "/webinars/spine-health").text

    [confirmed] = mails_to(smtp_server, "first@example.com")
    cancel = [l for l in links_in(confirmed.get_body(("plain",)).get_content()) if "/cancel/" in l][0]
    path = cancel.removeprefix("https://news.example.org")
    assert "Cancel my seat" in view(client, path).text
    import time_machine
    with time_machine.travel(BEFORE + dt.timedelta(days=1), tick=True):
        assert "is released" in client.post(path).text
    mailer.drain(clock=at(BEFORE + dt.timedelta(days=1)))
    promoted = mails_to(smtp_server, "second@example.com")[-1]
    assert promoted["Subject"] == "A seat is yours: Spine Health, Thursday 25 March 2027, 14:00 EDT"
    assert JOIN in promoted.get_body(("plain",)).get_content()
    statuses = dict(db.execute(sa.select(Registration.status, sa.func.count()).group_by(Registration.status)))
    assert statuses == {"cancelled": 1, "confirmed": 1}


def test_reschedule_across_dst_moves_reminders_and_sends_an_update(client, mailer, smtp_server, webinar, db):
    register(client, "ny@example.com", "Nia", "America/New_York")
    register(client, "syd@example.com", "Sam", "Australia/Sydney")
    mailer.drain(clock=at(BEFORE))
    day_before = START - dt.timedelta(hours=24)
    with session_scope(mailer.sessions) as session:
        webinars.materialise(session, day_before)
    mailer.drain(clock=at(day_before))  # the 24-hour reminders went out
    assert len(smtp_server.received) == 4

    # Moved a week later, to 18:00 in London: now British Summer Time, so 17:00 UTC.
    with session_scope(mailer.sessions) as session:
        w = webinars.get_webinar(session, webinar)
        webinars.save_webinar(session, w, slug=w.slug, title=w.title, starts_local=dt.datetime(2027, 4, 1, 18, 0),
                              timezone=w.timezone, duration_minutes=45, capacity=None, description_md=w.description_md,
                              join_url=JOIN, reminder_offsets="1440,60", now=day_before)
    mailer.drain(clock=at(day_before))
    new_start = dt.datetime(2027, 4, 1, 17, 0, tzinfo=UTC)
    ny, syd = mails_to(smtp_server, "ny@example.com")[-1], mails_to(smtp_server, "syd@example.com")[-1]
    assert ny["Subject"] == "New time: Spine Health, Thursday 1 April 2027, 13:00 EDT"
    assert syd["Subject"] == "New time: Spine Health, Friday 2 April 2027, 04:00 AEDT"
    first_uid = str(event(invite(mails_to(smtp_server, "ny@example.com")[0]))["UID"])
    update = event(invite(ny))
    assert str(update["UID"]) == first_uid and update["SEQUENCE"] == 1
    assert update.decoded("DTSTART").astimezone(UTC) == new_start

    # The reminder already sent is not repeated; the one-hour reminder comes at the new time.
    for clock in (new_start - dt.timedelta(hours=24), new_start - dt.timedelta(hours=1)):
        with session_scope(mailer.sessions) as session:
            webinars.materialise(session, clock)
        mailer.drain(clock=at(clock))
    subjects = [m["Subject"] for m in mails_to(smtp_server, "syd@example.com")]
    assert subjects.count("Starting in 24 hours: Spine Health") == 1
    assert subjects[-1] == "Starting in 60 minutes: Spine Health"
    sent_at = db.scalar(sa.select(Delivery.sent_at).where(Delivery.kind == "webinar_reminder",
                                                        Delivery.variant == "60").limit(1))
    assert sent_at == new_start - dt.timedelta(hours=1)


def test_cancelling_the_webinar_sends_a_calendar_cancellation(client, mailer, smtp_server, webinar):
    register(client, "ann@example.com")
    mailer.drain(clock=at(BEFORE))
    with session_scope(mailer.sessions) as session:
        webinars.cancel_webinar(session, webinar, now=BEFORE)
    mailer.drain(clock=at(BEFORE))
    cancelled = mails_to(smtp_server, "ann@example.com")[-1]
    assert cancelled["Subject"] == "Cancelled: Spine Health, Thursday 25 March 2027, 14:00 EDT"
    cal = invite(cancelled)
    assert cal["METHOD"] == "CANCEL" and event(cal)["SEQUENCE"] == 1 and str(event(cal)["STATUS"]) == "CANCELLED"
    assert JOIN not in cancelled.get_body(("plain",)).get_content()
    gone = client.get("/webinars/spine-health")
    assert gone.status_code == 410 and "This webinar was cancelled" in gone.text and JOIN not in gone.text
    assert client.post("/webinars/spine-health/register", data={"email": "late@example.com"}).status_code == 410
    assert client.get("/webinars/never-was").status_code == 404


def test_registering_twice_books_once_and_resends_at_most_hourly(client, mailer, smtp_server, webinar, db):
    for _ in range(3):
        assert register(client, "ann@example.com").status_code == 200
    mailer.process_signups()  # the worker registers what the form stored
    assert db.scalar(sa.select(sa.func.count()).select_from(Registration)) == 1
    mailer.drain(clock=at(BEFORE))
    assert len(mails_to(smtp_server, "ann@example.com")) == 1


def test_bad_input_and_newsletter_opt_in(client, mailer, smtp_server, webinar, db):
    bad = register(client, "not-an-address")
    assert bad.status_code == 400 and "That email address is not valid" in bad.text
    assert client.post("/webinars/nope/register", data={"email": "a@example.com"}).status_code == 404
    page = view(client, "/webinars/spine-health").text
    assert 'name="newsletter" value="yes" id="newsletter">' in page  # present and unticked
    register(client, "news@example.com", newsletter="yes", newsletter_version="1")
    mailer.drain(clock=at(BEFORE))
    subjects = sorted(m["Subject"] for m in mails_to(smtp_server, "news@example.com"))
    assert subjects == ["Please confirm your subscription to Monthly newsletter",
                        "Your seat: Spine Health, Thursday 25 March 2027, 14:00 EDT"]


def test_concurrent_registrations_never_overbook(app, mailer, webinar, db):
    with session_scope(mailer.sessions) as session:
        webinars.get_webinar(session, webinar).capacity = 5
    barrier = threading.Barrier(16)
    codes = []

    def visitor(n):
        client = app.test_client()
        barrier.wait()
        codes.append(register(client, f"v{n}@example.com").status_code)

    threads = [threading.Thread(target=visitor, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert codes == [200] * 16
    # The form only stores requests; the seats are counted by workers, here four at once.
    def worker():
        while True:
            with session_scope(mailer.sessions) as session:
                if not webinars.process_registration_requests(session, mailer.settings, limit=3):
                    return

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    statuses = dict(db.execute(sa.select(Registration.status, sa.func.count()).group_by(Registration.status)))
    assert statuses == {"confirmed": 5, "waitlisted": 11}


def test_cli_create_reschedule_attendance_cancel(database_url, tmp_path, mailer, db):
    from click.testing import CliRunner

    from mailer.cli import main
    from tests.conftest import SECRET

    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "i"), "MAILER_TIMEZONE": "Europe/London",
           "MAILER_BASE_URL": "https://news.example.org"}
    run = lambda *args, **kw: CliRunner().invoke(main, list(args), env=env, **kw)  # noqa: E731
    created = run("webinar", "create", "--slug", "back-care", "--title", "Back care", "--start", "2030-03-26 18:00",
                  "--capacity", "20", "--join-url", "https://meet.example.com/b", "--publish")
    assert created.exit_code == 0, created.output
    assert created.output.strip() == "created webinar 1 (published): https://news.example.org/webinars/back-care"
    draft = run("webinar", "create", "--slug", "draft-one", "--title", "Draft", "--start", "2030-05-01 18:00",
                "--join-url", "https://meet.example.com/d")
    assert draft.output.strip() == "created webinar 2 (draft): https://news.example.org/webinars/draft-one"
    assert run("webinar", "publish", "2").output.strip() == \
        "webinar 2 published: https://news.example.org/webinars/draft-one"
    assert run("webinar", "list").output.splitlines()[1].startswith("2\tpublished\tWednesday 1 May 2030, 18:00 BST\t0")
    bad = run("webinar", "create", "--slug", "Bad Slug", "--title", "x", "--start", "2030-03-26 18:00")
    assert bad.exit_code == 1 and "lower-case letters" in bad.output
    moved = run("webinar", "reschedule", "1", "--start", "2030-04-02 18:00")
    assert moved.output.strip() == "webinar 1 now starts Tuesday 2 April 2030, 18:00 BST"
    with session_scope(mailer.sessions) as session:
        webinars.register(session, mailer.settings, "back-care", email="ann@example.com",
                          context=RequestContext(),
                          now=dt.datetime(2030, 3, 1, tzinfo=UTC))
    attended = run("webinar", "attendance", "1", "-", input="email\nann@example.com\nzed@example.com\n")
    assert attended.output.splitlines() == ["marked 1 as attended; not registered or not valid: 1",
                                            "  zed@example.com"]
    assert run("webinar", "cancel", "1").output.strip() == "webinar 1 cancelled"


def test_cancelling_one_seat_keeps_the_mail_about_another_webinar(client, mailer, smtp_server, webinar, db):
    with session_scope(mailer.sessions) as session:
        other = webinars.save_webinar(session, slug="knee-care", title="Knee Care", starts_local=START_LOCAL,
                                      timezone="Europe/London", join_url=JOIN, now=BEFORE)
        webinars.publish(session, other.id)
    register(client, "ann@example.com")
    import time_machine
    with time_machine.travel(BEFORE, tick=False):
        client.post("/webinars/knee-care/register", data={"email": "ann@example.com", "name": "Ann"})
    mailer.process_signups()
    with session_scope(mailer.sessions) as session:  # both confirmations still queued
        spine = session.scalar(sa.select(Registration).where(Registration.webinar_id == webinar))
        webinars.cancel_registration(session, spine.token, now=BEFORE)
    rows = db.execute(sa.select(Delivery.ref_id, Delivery.kind, Delivery.status).order_by(Delivery.id))
    assert rows == [(1, "webinar_confirmation", "cancelled"), (2, "webinar_confirmation", "queued"),
                    (1, "webinar_seat_cancelled", "queued")]  # the acknowledgement of the cancel


def test_a_late_registrant_gets_only_true_reminders(client, mailer, smtp_server, webinar):
    """Reminders whose time had passed when someone registered are not theirs (the
    confirmation serves); a reminder's subject says the time actually left when it leaves."""
    register(client, "early@example.com", "Eve")
    mailer.drain(clock=at(BEFORE))
    two_hours_before = START - dt.timedelta(hours=2)
    register(client, "late@example.com", "Lee", when=two_hours_before)
    mailer.drain(clock=at(two_hours_before))  # no worker ran since BEFORE: the 24-hour reminder is overdue
    assert [m["Subject"] for m in mails_to(smtp_server, "late@example.com")] == [
        "Your seat: Spine Health, Thursday 25 March 2027, 14:00 EDT"]
    assert [m["Subject"] for m in mails_to(smtp_server, "early@example.com")][1:] == [
        "Starting in 2 hours: Spine Health"]  # late, and it says so

    # The worker is down over the one-hour mark and back 45 minutes before the start.
    mailer.drain(clock=at(START - dt.timedelta(minutes=45)))
    for address in ("early@example.com", "late@example.com"):
        subject = mails_to(smtp_server, address)[-1]["Subject"]
        assert subject == "Starting in 45 minutes: Spine Health"
        assert "A reminder: starting in 45 minutes." in mails_to(smtp_server, address)[-1].get_body(
            ("plain",)).get_content()

    # Registering half an hour before: the confirmation, and no reminder about a time gone by.
    register(client, "last@example.com", "Lou", when=START - dt.timedelta(minutes=30))
    for clock in (START - dt.timedelta(minutes=30), START - dt.timedelta(minutes=5)):
        mailer.drain(clock=at(clock))
    assert [m["Subject"].split(":")[0] for m in mails_to(smtp_server, "last@example.com")] == ["Your seat"]
    assert len(mails_to(smtp_server, "early@example.com")) == 3 and len(mails_to(smtp_server, "late@example.com")) == 2


@pytest.mark.parametrize("minutes, text", [(0, "Starting now"), (1, "Starting in 1 minute"),
                                           (45, "Starting in 45 minutes"), (60, "Starting in 60 minutes"),
                                           (119, "Starting in 119 minutes"), (120, "Starting in 2 hours"),
                                           (1440, "Starting in 24 hours"), (2880, "Starting in 48 hours"),
                                           (7 * 1440, "Starting in 7 days")])
def test_a_reminder_says_the_time_left(minutes, text):
    assert webinars.starts_in(minutes) == text
    assert webinars.minutes_left(START, START - dt.timedelta(minutes=minutes, seconds=-25)) == minutes


def test_calendar_updates_keep_their_uid_and_organiser_after_the_sender_changes(
        database_url, smtp_server, tmp_path, monkeypatch):
    """Staff change the From address on the settings page; the reschedule and the
    cancellation still carry the UID and ORGANIZER of the invite in the calendar."""
    from mailer import create_app
    from mailer.staff import site_settings
    from tests.conftest import SECRET

    for field in site_settings.FIELDS:
        monkeypatch.delenv(site_settings.env_name(field.key), raising=False)
    app = create_app(dict(database_url=database_url, instance_path=str(tmp_path / "instance"), secret_key=SECRET,
                          base_url="https://news.example.org", signup_rate_limit=1000, smtp_url=smtp_server.url))
    m = app.extensions["mailer"]
    try:
        with session_scope(m.sessions) as session:
            w = webinars.save_webinar(session, slug="spine-health", title="Spine Health", starts_local=START_LOCAL,
                                      timezone="Europe/London", join_url=JOIN, now=BEFORE)
            webinars.publish(session, w.id)
            webinar_id = w.id
        register(app.test_client(), "ann@example.com")
        m.drain(clock=at(BEFORE))
        [first] = mails_to(smtp_server, "ann@example.com")
        original = event(invite(first))
        assert str(original["ORGANIZER"]) == f"mailto:{m.settings.from_email}"

        with session_scope(m.sessions) as session:
            site_settings.save(session, {"from_addr": "Spine Clinic <hello@spine.example>"}, base=m.base_settings,
                               actor_id=None, now=BEFORE)
        with session_scope(m.sessions) as session:
            w = webinars.get_webinar(session, webinar_id)
            webinars.save_webinar(session, w, slug=w.slug, title=w.title, starts_local=dt.datetime(2027, 4, 1, 18),
                                  timezone=w.timezone, join_url=JOIN, now=BEFORE)
        m.drain(clock=at(BEFORE))
        update = mails_to(smtp_server, "ann@example.com")[-1]
        assert update["From"] == "Spine Clinic <hello@spine.example>"  # the new sender sends it…
        moved = event(invite(update))
        assert str(moved["UID"]) == str(original["UID"])  # …about the same event
        assert str(moved["ORGANIZER"]) == str(original["ORGANIZER"]) and moved["SEQUENCE"] == 1

        with session_scope(m.sessions) as session:
            webinars.cancel_webinar(session, webinar_id, now=BEFORE)
        m.drain(clock=at(BEFORE))
        gone = event(invite(mails_to(smtp_server, "ann@example.com")[-1]))
        assert (str(gone["UID"]), str(gone["ORGANIZER"]), gone["SEQUENCE"]) == (
            str(original["UID"]), str(original["ORGANIZER"]), 2)
    finally:
        m.engine.dispose()


def test_cancelling_a_seat_is_acknowledged_with_a_calendar_cancellation(client, mailer, smtp_server, webinar, db):
    with session_scope(mailer.sessions) as session:
        webinars.get_webinar(session, webinar).capacity = 1
    register(client, "ann@example.com")
    register(client, "bob@example.com", "Bob")
    mailer.drain(clock=at(BEFORE))
    [confirmation] = mails_to(smtp_server, "ann@example.com")
    text = confirmation.get_body(("plain",)).get_content()
    cancel = [l for l in links_in(text) if "/cancel/" in l][0]
    assert f"Can't come? Give your seat to someone else: {cancel}" in text  # the seat's own, labelled link
    import time_machine
    with time_machine.travel(BEFORE + dt.timedelta(hours=1), tick=False):
        assert "is released" in client.post(cancel.removeprefix("https://news.example.org")).text
    mailer.drain(clock=at(BEFORE + dt.timedelta(hours=1)))
    ack = mails_to(smtp_server, "ann@example.com")[-1]
    assert ack["Subject"] == "Your seat is released: Spine Health"
    assert "List-Unsubscribe" not in ack and JOIN not in ack.as_string()
    assert "The attached invite removes the webinar from your calendar." in ack.get_body(("plain",)).get_content()
    cal, original = invite(ack), event(invite(confirmation))
    assert cal["METHOD"] == "CANCEL" and str(event(cal)["STATUS"]) == "CANCELLED"
    assert str(event(cal)["UID"]) == str(original["UID"]) and event(cal)["SEQUENCE"] > original["SEQUENCE"]
    assert mails_to(smtp_server, "bob@example.com")[-1]["Subject"].startswith("A seat is yours")

    # Bob leaves the waitlist's seat too: acknowledged; Ann, who comes back, is a new calendar event.
    bob_cancel = [l for l in links_in(mails_to(smtp_server, "bob@example.com")[-1].get_body(("plain",)).get_content())
                  if "/cancel/" in l][0]
    with time_machine.travel(BEFORE + dt.timedelta(hours=2), tick=False):
        client.post(bob_cancel.removeprefix("https://news.example.org"))
    register(client, "ann@example.com", when=BEFORE + dt.timedelta(hours=3))
    mailer.drain(clock=at(BEFORE + dt.timedelta(hours=3)))
    again = mails_to(smtp_server, "ann@example.com")[-1]
    assert again["Subject"].startswith("Your seat:") and str(event(invite(again))["UID"]) != str(original["UID"])


def test_list_unsubscribe_stops_reminders_and_keeps_the_seat(client, mailer, smtp_server, webinar, db):
    register(client, "ann@example.com")
    register(client, "bob@example.com", "Bob")
    mailer.drain(clock=at(BEFORE))
    [confirmation] = mails_to(smtp_server, "ann@example.com")
    target = confirmation["List-Unsubscribe"].strip("<>")
    assert confirmation["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    path = target.removeprefix("https://news.example.org")
    page = client.get(path)  # a mail scanner following the link changes nothing
    assert page.status_code == 200 and "Stop reminders" in page.text and "Your seat is kept" in page.text
    import time_machine
    with time_machine.travel(BEFORE, tick=False):
        done = client.post(path, data={"List-Unsubscribe": "One-Click"})  # what a mail client sends (RFC 8058)
    assert done.status_code == 200 and "no more reminders or follow-ups about Spine Health" in done.text
    assert set(db.scalars(sa.select(Registration.status))) == {"confirmed"}  # the seat is not given away

    for clock in (START - dt.timedelta(hours=24), START - dt.timedelta(hours=1)):
        mailer.drain(clock=at(clock))
    assert len(mails_to(smtp_server, "ann@example.com")) == 1  # no reminders for Ann…
    assert [m["Subject"].split(":")[0] for m in mails_to(smtp_server, "bob@example.com")] == [
        "Your seat", "Starting in 24 hours", "Starting in 60 minutes"]  # …Bob still gets his
    with session_scope(mailer.sessions) as session:  # a new time still reaches her: the seat is hers
        w = webinars.get_webinar(session, webinar)
        webinars.save_webinar(session, w, slug=w.slug, title=w.title, starts_local=dt.datetime(2027, 3, 26, 18),
                              timezone=w.timezone, join_url=JOIN, now=BEFORE)
    mailer.drain(clock=at(START))
    assert mails_to(smtp_server, "ann@example.com")[-1]["Subject"].startswith("New time")


def test_registering_again_resends_the_details_at_most_hourly_with_the_same_answer(
        client, mailer, smtp_server, webinar, db):
    """Someone who lost the join link registers again: the details come again (not more
    than once an hour), and the page answers exactly as it does to a new address."""
    with session_scope(mailer.sessions) as session:
        webinars.get_webinar(session, webinar).capacity = 1
    first = register(client, "ann@example.com").text
    register(client, "wait@example.com", "Walt")
    mailer.drain(clock=at(BEFORE))
    later = BEFORE + dt.timedelta(hours=2)
    again = register(client, "ann@example.com", when=later).text
    stranger = register(client, "new@example.com", "Neo", when=later).text
    assert first == again == stranger
    register(client, "wait@example.com", "Walt", when=later)
    register(client, "ann@example.com", when=later + dt.timedelta(minutes=30))  # within the hour: nothing more
    mailer.drain(clock=at(later + dt.timedelta(minutes=30)))
    ann = mails_to(smtp_server, "ann@example.com")
    assert [m["Subject"] for m in ann] == ["Your seat: Spine Health, Thursday 25 March 2027, 14:00 EDT"] * 2
    assert "Here are the details of your seat again." in ann[1].get_body(("plain",)).get_content()
    assert f"Join: {JOIN}" in ann[1].get_body(("plain",)).get_content()
    assert str(event(invite(ann[1]))["UID"]) == str(event(invite(ann[0]))["UID"])  # the same calendar event
    assert [m["Subject"] for m in mails_to(smtp_server, "wait@example.com")] == [
        "You're on the waitlist: Spine Health"] * 2  # a waitlisted person is told where they stand
    assert "You are still on the waitlist" in mails_to(smtp_server, "wait@example.com")[1].get_body(
        ("plain",)).get_content()
    assert db.scalar(sa.select(sa.func.count()).select_from(Registration)) == 3


def test_raising_capacity_promotes_the_waitlist_in_order(client, mailer, smtp_server, webinar, db):
    with session_scope(mailer.sessions) as session:
        webinars.get_webinar(session, webinar).capacity = 1
    for n, address in enumerate(("a@example.com", "b@example.com", "c@example.com", "d@example.com")):
        register(client, address, when=BEFORE + dt.timedelta(minutes=n))
    mailer.drain(clock=at(BEFORE + dt.timedelta(minutes=5)))
    listing = view(client, "/webinars", BEFORE + dt.timedelta(minutes=5)).text
    assert "Waitlist" in listing and "0 seats" not in listing
    page = view(client, "/webinars/spine-health", BEFORE + dt.timedelta(minutes=5)).text
    assert "Join the waitlist</button>" in page and "All seats are taken." in page
    later = BEFORE + dt.timedelta(days=1)
    with session_scope(mailer.sessions) as session:
        w = webinars.get_webinar(session, webinar)
        webinars.save_webinar(session, w, slug=w.slug, title=w.title, starts_local=START_LOCAL, timezone=w.timezone,
                              capacity=3, join_url=JOIN, now=later)
    mailer.drain(clock=at(later))
    for address in ("b@example.com", "c@example.com"):
        assert mails_to(smtp_server, address)[-1]["Subject"].startswith("A seat is yours: Spine Health")
    assert [m["Subject"] for m in mails_to(smtp_server, "d@example.com")] == ["You're on the waitlist: Spine Health"]
    statuses = dict(db.execute(sa.select(Registration.status, sa.func.count()).group_by(Registration.status)))
    assert statuses == {"confirmed": 3, "waitlisted": 1}
    assert "Reserve my seat</button>" not in view(client, "/webinars/spine-health", later).text
