"""Real-browser tests (Chromium through Playwright) of webinars: staff create and publish
one in the admin form, visitors reserve seats on the public page, the confirmation with
its join link and calendar invite arrives over real SMTP, the third visitor of two seats
is waitlisted and gets the seat when the first cancels from the link in their mail.

Set up as tests/test_browser.py: skipped without /usr/bin/chromium, except in CI
(CI=true), where that is a failure. Screenshots go to the artifacts directory."""
from __future__ import annotations

import datetime as dt
import re

import icalendar
import pytest
import sqlalchemy as sa

from mailer.audience.consent import RequestContext
from mailer.campaigns import webinars
from mailer.staff import users
from mailer.db import session_scope, utcnow
from mailer.models import Registration, Webinar
from mailer.web.public.webinar_pages import REGISTERED

from tests import browser_support
from tests.browser_support import TIMEOUT_MS, action, expect, live_app, serving, shot

browser = browser_support.browser  # the shared Chromium (a pytest fixture)
PASSWORD = "correct horse battery staple"
JOIN = "https://meet.example.com/spine-health-room"
YEAR = utcnow().year + 1
# 18:00 in London in July is BST (UTC+1): 17:00 UTC, 13:00 in New York (EDT), 02:00 next day in Tokyo.
START_UTC = dt.datetime(YEAR, 7, 15, 17, 0, tzinfo=dt.timezone.utc)
DAY = f"{dt.date(YEAR, 7, 15):%A}"
ORGANISER_TIME = f"{DAY} 15 July {YEAR}, 18:00 BST"
NEW_YORK_TIME = f"{DAY} 15 July {YEAR}, 13:00 EDT"


@pytest.fixture
def live(database_url, smtp_server, tmp_path):
    """(app, base URL): served over real HTTP, sending through the recording SMTP server,
    with one editor. The organisation's zone is the default, Europe/London."""
    app, port = live_app(database_url, tmp_path, smtp_url=smtp_server.url)
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "editor@clinic.example", PASSWORD, "editor")
    with serving(app, port) as base:
        yield app, base
    app.extensions["mailer"].engine.dispose()


@pytest.fixture
def visitor(browser):
    """Opens a page in a fresh browser profile in the given zone (one person's browser)."""
    contexts = []

    def open_page(zone: str = "America/New_York", locale: str = "en-US", phone: bool = False):
        viewport = browser_support.PHONE if phone else {"width": 1000, "height": 800}
        ctx = browser.new_context(timezone_id=zone, locale=locale, viewport=viewport)
        ctx.set_default_timeout(TIMEOUT_MS)
        contexts.append(ctx)
        return ctx.new_page()

    yield open_page
    for ctx in contexts:
        ctx.close()


def log_in(page, base: str, path: str) -> None:
    page.goto(f"{base}{path}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Staff login")
    page.get_by_label("Email").fill("editor@clinic.example")
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()


def reserve(page, base: str, email: str, name: str, button: str = "Reserve my seat") -> None:
    page.goto(f"{base}/webinars/spine-health")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("First name").fill(name)
    with page.expect_navigation():
        page.get_by_role("button", name=button).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    expect(page.get_by_text(REGISTERED)).to_be_visible()


def mails_to(smtp_server, address: str) -> list:
    return [r.message for r in smtp_server.received if r.rcpt_tos == [address]]


def text_of(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")


def invite_event(message):
    [part] = [p for p in message.iter_attachments() if p.get_filename() == "invite.ics"]
    assert part.get_content_type() == "text/calendar"
    return icalendar.Calendar.from_ical(part.get_payload(decode=True)).walk("VEVENT")[0]


def seats_line(page):
    """The line under the time that says whether seats are left (a band, never a number)."""
    return page.get_by_text(re.compile(r"^(Seats available|A few seats left|Full — join the waitlist|Free, open to all)$"))


def png_width(path) -> int:
    with open(path, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big")


def test_staff_create_and_publish_a_webinar_then_a_visitor_reserves_a_seat(live, visitor, smtp_server):
    app, base = live
    staff = visitor("Europe/London", "en-GB")
    log_in(staff, base, "/admin/webinars")
    expect(staff.get_by_role("heading", level=1)).to_have_text("Webinars")
    expect(staff.get_by_text("No webinars yet.")).to_be_visible()

    action(staff, "New webinar").click()
    expect(staff.get_by_role("heading", level=1)).to_have_text("New webinar")
    expect(staff.get_by_label("Time zone")).to_have_value("Europe/London")  # the organisation's zone
    expect(staff.get_by_text("registrants get an update", exact=False)).to_have_count(0)
    staff.get_by_label("Title").press_sequentially("Spine Health")
    expect(staff.get_by_label("Address: /webinars/…")).to_have_value("spine-health")  # filled from the title
    expect(staff.get_by_role("checkbox", name="24 hours before")).to_be_checked()
    expect(staff.get_by_role("checkbox", name="1 hour before")).to_be_checked()
    staff.get_by_role("checkbox", name="10 minutes before").check()
    staff.get_by_label("Time zone").select_option("Europe/Paris")
    staff.get_by_label("Time zone").select_option("Europe/London")
    staff.get_by_label("Starts (local time)").fill(f"{YEAR}-07-15T18:00")
    staff.get_by_label("Capacity (empty: no limit)").fill("2")
    staff.get_by_label("Join link (sent only to confirmed registrants)").fill(JOIN)
    staff.get_by_label("Description (Markdown)").fill("Five exercises **for your desk**.")
    shot(staff, "webinar-1-editor")
    with staff.expect_navigation():
        staff.get_by_role("button", name="Create draft").click()

    expect(staff.get_by_role("heading", level=1)).to_have_text("Spine Health")
    expect(staff.get_by_role("status")).to_have_text("Created as a draft. Publish it to open registration.")
    expect(staff.get_by_text(f"draft · {ORGANISER_TIME} · 60 min")).to_be_visible()
    with staff.expect_navigation():
        staff.get_by_role("button", name="Publish").click()
    expect(staff.get_by_role("status")).to_have_text("Published: registration is open.")
    expect(staff.get_by_role("button", name="Publish")).to_have_count(0)
    expect(staff.get_by_text("Confirmed 0 of 2, waitlisted 0, cancelled 0.")).to_be_visible()
    with app.extensions["mailer"].read_sessions() as session:
        stored = session.scalar(sa.select(Webinar))
        assert (stored.status, stored.starts_at, stored.capacity) == ("published", START_UTC, 2)
        assert (stored.slug, stored.reminder_offsets) == ("spine-health", "1440,60,10")

    # The visitor, in New York, sees the time in their zone and the organiser's.
    ada = visitor("America/New_York")
    ada.goto(f"{base}/webinars/spine-health")
    expect(ada).to_have_title(re.compile(r"^Spine Health"))
    expect(ada.get_by_role("heading", level=1)).to_have_text("Spine Health")
    expect(ada.get_by_text(f"Organiser's time: {ORGANISER_TIME}")).to_be_visible()
    local = f"{DAY}, July 15, {YEAR} at 01:00 PM EDT (your time)"
    expect(ada.get_by_text(local)).to_be_visible()
    expect(seats_line(ada)).to_have_text("A few seats left")
    expect(ada.get_by_text("for your desk")).to_be_visible()
    assert JOIN not in ada.content()  # the join link only ever goes to registrants
    shot(ada, "webinar-2-public-page")
    assert png_width(shot(ada, "webinar-2-public-page", phone=True)) == 390

    ada.get_by_label("Email address").fill("ada@example.com")
    ada.get_by_label("First name").fill("Ada")
    with ada.expect_navigation():
        ada.get_by_role("button", name="Reserve my seat").click()
    expect(ada.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    expect(ada.get_by_text(REGISTERED)).to_be_visible()
    shot(ada, "webinar-3-reserved")

    app.extensions["mailer"].drain()
    [mail] = mails_to(smtp_server, "ada@example.com")
    assert mail["Subject"] == f"Your seat: Spine Health, {NEW_YORK_TIME}"
    text = text_of(mail)
    assert text.startswith("Hello Ada,\n\nYour seat is reserved.")
    assert f"{NEW_YORK_TIME} ({ORGANISER_TIME} for the organiser)" in text
    assert f"Join: {JOIN}\n" in text
    event = invite_event(mail)
    assert event.decoded("DTSTART") == START_UTC
    assert str(event["DTSTART"].params["TZID"]) == "Europe/London"
    assert event["DTSTART"].to_ical() == f"{YEAR}0715T180000".encode()
    assert str(event["URL"]) == JOIN and str(event["SUMMARY"]) == "Spine Health"

    ada.goto(f"{base}/webinars/spine-health")
    expect(seats_line(ada)).to_have_text("A few seats left")

    staff.reload()
    expect(staff.get_by_text("Confirmed 1 of 2, waitlisted 0, cancelled 0.")).to_be_visible()
    row = staff.get_by_role("row", name=re.compile("ada@example.com"))
    expect(row.get_by_role("cell").nth(0)).to_have_text(re.compile(r"^ada@example\.com\s*Send details again$"))
    expect(row.get_by_role("cell").nth(1)).to_have_text("Ada")
    expect(row.get_by_role("cell").nth(2)).to_have_text("confirmed")
    expect(row.get_by_role("checkbox", name="ada@example.com attended")).not_to_be_checked()
    shot(staff, "webinar-4-registrants")

    # Ada lost the join link: staff send it again. Bob phoned: staff register him, saying so.
    resend = row.get_by_role("button", name="Send the details again to ada@example.com")
    expect(resend).to_be_in_viewport()
    with staff.expect_navigation():
        resend.click()
    expect(staff.get_by_role("status")).to_have_text("Details sent again.")
    staff.get_by_label("Email address").fill("bob@example.com")
    staff.get_by_label("First name").fill("Bob")
    staff.get_by_label("How did they agree to be registered?").fill("Asked by phone to be registered")
    with staff.expect_navigation():
        staff.get_by_role("button", name="Register and send the details").click()
    expect(staff.get_by_role("status")).to_have_text("Registered: they get the confirmation with the join link.")
    expect(staff.get_by_text("Confirmed 2 of 2, waitlisted 0, cancelled 0.")).to_be_visible()
    shot(staff, "webinar-5-added-by-hand")
    app.extensions["mailer"].drain()
    assert "Here are the details of your seat again." in text_of(mails_to(smtp_server, "ada@example.com")[-1])
    assert mails_to(smtp_server, "bob@example.com")[0]["Subject"] == f"Your seat: Spine Health, {ORGANISER_TIME}"


def test_the_third_visitor_is_waitlisted_and_promoted_when_a_seat_is_cancelled(live, visitor, smtp_server):
    app, base = live
    m = app.extensions["mailer"]
    with session_scope(m.sessions) as session:
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health",
                                  starts_local=dt.datetime(YEAR, 7, 15, 18, 0), timezone="Europe/London",
                                  capacity=2, join_url=JOIN, now=utcnow())
        webinars.publish(session, w.id)

    ada, bob, chiyo = visitor("America/New_York"), visitor("Europe/London", "en-GB"), visitor("Asia/Tokyo")
    reserve(ada, base, "ada@example.com", "Ada")
    reserve(bob, base, "bob@example.com", "Bob")
    m.process_signups()  # the worker's step: the two requests become seats
    chiyo.goto(f"{base}/webinars/spine-health")
    expect(seats_line(chiyo)).to_have_text("Full — join the waitlist")
    expect(chiyo.get_by_role("button", name="Join the waitlist")).to_be_visible()
    shot(chiyo, "waitlist-1-full-page")
    reserve(chiyo, base, "chiyo@example.com", "Chiyo", "Join the waitlist")  # the same answer, seat or waitlist
    m.drain()

    [waitlisted] = mails_to(smtp_server, "chiyo@example.com")
    tokyo_time = f"{dt.date(YEAR, 7, 16):%A} 16 July {YEAR}, 02:00 JST"
    assert waitlisted["Subject"] == "You're on the waitlist: Spine Health"
    assert f"Spine Health ({tokyo_time}) is full, so you are on the waitlist." in text_of(waitlisted)
    assert JOIN not in waitlisted.as_string() and not list(waitlisted.iter_attachments())

    # Ada cannot come: she follows the link in her confirmation.
    [confirmation] = mails_to(smtp_server, "ada@example.com")
    cancel_url = re.search(r"Give your seat to someone else: (\S+)", text_of(confirmation)).group(1)
    assert cancel_url.startswith(f"{base}/webinars/spine-health/cancel/")
    ada.goto(cancel_url)
    expect(ada.get_by_role("heading", level=1)).to_have_text("Cancel your seat")
    expect(ada.get_by_text(f"Release your seat for Spine Health ({NEW_YORK_TIME})?")).to_be_visible()
    shot(ada, "waitlist-2-cancel-page")
    with ada.expect_navigation():
        ada.get_by_role("button", name="Cancel my seat").click()
    expect(ada.get_by_role("heading", level=1)).to_have_text("Seat released")
    expect(ada.get_by_text("Your place for Spine Health is released. Thank you for letting us know.")).to_be_visible()
    shot(ada, "waitlist-3-seat-released", phone=True)
    ada.goto(cancel_url)  # the link again: nothing more to do
    expect(ada.get_by_text("Your place for Spine Health is already released.")).to_be_visible()

    m.drain()
    [_, released] = mails_to(smtp_server, "ada@example.com")
    assert released["Subject"] == "Your seat is released: Spine Health"
    assert icalendar.Calendar.from_ical(
        [p for p in released.iter_attachments()][0].get_payload(decode=True))["METHOD"] == "CANCEL"
    assert str(invite_event(confirmation)["UID"]) == str(
        icalendar.Calendar.from_ical([p for p in released.iter_attachments()][0].get_payload(decode=True))
        .walk("VEVENT")[0]["UID"])
    [_, promoted] = mails_to(smtp_server, "chiyo@example.com")
    assert promoted["Subject"] == f"A seat is yours: Spine Health, {tokyo_time}"
    assert "Good news: a seat freed up and it is yours." in text_of(promoted)
    assert f"Join: {JOIN}\n" in text_of(promoted)
    assert invite_event(promoted).decoded("DTSTART") == START_UTC
    chiyo.goto(f"{base}/webinars/spine-health")
    expect(seats_line(chiyo)).to_have_text("Full — join the waitlist")

    with m.read_sessions() as session:
        statuses = dict(session.execute(sa.select(Registration.timezone, Registration.status)).all())
    assert statuses == {"America/New_York": "cancelled", "Europe/London": "confirmed", "Asia/Tokyo": "confirmed"}

    staff = visitor("Europe/London", "en-GB")
    log_in(staff, base, f"/admin/webinars/{w.id}")
    expect(staff.get_by_text("Confirmed 2 of 2, waitlisted 0, cancelled 1.")).to_be_visible()
    for email, status in [("ada@example.com", "cancelled"), ("bob@example.com", "confirmed"),
                          ("chiyo@example.com", "confirmed")]:
        expect(staff.get_by_role("row", name=re.compile(email)).get_by_role("cell").nth(2)).to_have_text(status)
    shot(staff, "waitlist-4-registrants")


def test_a_reserved_seat_is_mailed_by_the_running_worker_within_seconds(live, visitor, smtp_server):
    """The form only stores the request; the worker (its real scheduler: process-signups every
    second, then send-due at once) registers it and the mail reaches the SMTP server."""
    import time

    from mailer.scheduler import build_scheduler

    app, base = live
    m = app.extensions["mailer"]
    with session_scope(m.sessions) as session:
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health",
                                  starts_local=dt.datetime(YEAR, 7, 15, 18, 0), timezone="Europe/London",
                                  capacity=30, join_url=JOIN, now=utcnow())
        webinars.publish(session, w.id)
    sender = m.sender()
    scheduler = build_scheduler(m, sender, blocking=False)
    scheduler.start()
    try:
        ada = visitor("America/New_York")
        ada.goto(f"{base}/webinars/spine-health")
        expect(seats_line(ada)).to_have_text("Seats available")
        ada.get_by_label("Email address").fill("ada@example.com")
        ada.get_by_label("First name").fill("Ada")
        with ada.expect_navigation():
            ada.get_by_role("button", name="Reserve my seat").click()
        answered = time.monotonic()
        expect(ada.get_by_role("heading", level=1)).to_have_text("Check your inbox")
        expect(ada.get_by_text(REGISTERED)).to_be_visible()
        # The answer repeats when the webinar is, in the visitor's zone and the organiser's.
        expect(ada.get_by_text(f"{DAY}, July 15, {YEAR} at 01:00 PM EDT (your time)")).to_be_visible()
        expect(ada.get_by_text(f"Organiser's time: {ORGANISER_TIME}")).to_be_visible()
        shot(ada, "check-your-email")
        while not mails_to(smtp_server, "ada@example.com"):
            assert time.monotonic() - answered < 15, "the worker never mailed the confirmation"
            time.sleep(0.05)
        waited = time.monotonic() - answered
    finally:
        sender.request_stop()
        scheduler.shutdown(wait=True)
        sender.close()
    print(f"\nform answered -> confirmation received over SMTP, real worker: {waited:.2f} s")
    [mail] = mails_to(smtp_server, "ada@example.com")
    assert mail["Subject"] == f"Your seat: Spine Health, {NEW_YORK_TIME}"
    assert f"Join: {JOIN}\n" in text_of(mail)
    with m.read_sessions() as session:
        [(zone, status)] = session.execute(sa.select(Registration.timezone, Registration.status)).all()
    assert (zone, status) == ("America/New_York", "confirmed")  # the zone the browser sent with the form
    assert waited < 5  # about a second on an idle machine; generous for a busy one


def fits_width(page) -> bool:
    """Nothing sticks out sideways: the page scrolls only down."""
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.parametrize("phone", [False, True], ids=["desktop", "phone"])
def test_the_unsubscribe_link_of_webinar_mail_stops_reminders_and_keeps_the_seat(live, visitor, smtp_server, phone):
    app, base = live
    m = app.extensions["mailer"]
    with session_scope(m.sessions) as session:
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health",
                                  starts_local=dt.datetime(YEAR, 7, 15, 18, 0), timezone="Europe/London",
                                  capacity=2, join_url=JOIN, now=utcnow())
        webinars.publish(session, w.id)
    ada = visitor("America/New_York", phone=phone)
    reserve(ada, base, "ada@example.com", "Ada")
    m.drain()
    [mail] = mails_to(smtp_server, "ada@example.com")
    stop_url = mail["List-Unsubscribe"].strip("<>")
    assert f"No more reminders about this webinar (you keep your seat): {stop_url}" in text_of(mail)

    ada.goto(stop_url)  # where a mail client's "unsubscribe" leads
    expect(ada.get_by_role("heading", level=1)).to_have_text("Stop reminders")
    expect(ada.get_by_text(f"Stop the reminders and the follow-up about Spine Health ({NEW_YORK_TIME})?")).to_be_visible()
    expect(ada.get_by_text("Your seat is kept. To give it to someone else, use the cancel link instead.")).to_be_visible()
    expect(ada.get_by_role("link", name="Cancel my seat instead")).to_be_visible()
    assert fits_width(ada)
    shot(ada, "stop-mail-1-ask", phone=phone)
    with ada.expect_navigation():
        ada.get_by_role("button", name="Stop reminders").click()
    expect(ada.get_by_role("heading", level=1)).to_have_text("Reminders stopped")
    expect(ada.get_by_role("status")).to_have_text("You will get no more reminders or follow-ups about Spine Health.")
    expect(ada.get_by_text("Your seat is kept: we still write if the webinar moves")).to_be_visible()
    expect(ada.get_by_role("link", name="Give your seat to someone else")).to_be_visible()
    assert fits_width(ada)
    shot(ada, "stop-mail-2-done", phone=phone)
    with m.read_sessions() as session:
        registration = session.scalar(sa.select(Registration))
        assert registration.status == "confirmed" and registration.mail_stopped_at is not None


@pytest.mark.parametrize("phone", [False, True], ids=["desktop", "phone"])
def test_registering_again_gets_the_same_answer_and_the_details_again(live, visitor, smtp_server, phone):
    """Someone who lost the join link fills the form again: the page says what it says to
    anyone, and the details arrive again."""
    app, base = live
    m = app.extensions["mailer"]
    with session_scope(m.sessions) as session:
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health",
                                  starts_local=dt.datetime(YEAR, 7, 15, 18, 0), timezone="Europe/London",
                                  join_url=JOIN, now=utcnow())
        webinars.publish(session, w.id)
    ada = visitor("America/New_York", phone=phone)
    reserve(ada, base, "ada@example.com", "Ada")
    first_answer = ada.locator("main").inner_text() if ada.locator("main").count() else ada.content()
    m.drain()
    with session_scope(m.sessions) as session:  # the first mail went out over an hour ago
        session.execute(sa.update(Registration).values(confirmation_sent_at=utcnow() - dt.timedelta(hours=2)))
    reserve(ada, base, "ada@example.com", "Ada")  # same heading and message (asserted in reserve)
    assert (ada.locator("main").inner_text() if ada.locator("main").count() else ada.content()) == first_answer
    assert fits_width(ada)
    shot(ada, "registered-again", phone=phone)
    m.drain()
    first, again = mails_to(smtp_server, "ada@example.com")
    assert text_of(again).startswith("Hello Ada,\n\nHere are the details of your seat again.")
    assert f"Join: {JOIN}\n" in text_of(again)
    assert invite_event(again)["UID"] == invite_event(first)["UID"]


@pytest.mark.parametrize("phone", [False, True], ids=["desktop", "phone"])
def test_a_full_webinar_offers_the_waitlist_and_more_seats_promote_it(live, visitor, smtp_server, phone):
    app, base = live
    m = app.extensions["mailer"]
    with session_scope(m.sessions) as session:
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health",
                                  starts_local=dt.datetime(YEAR, 7, 15, 18, 0), timezone="Europe/London",
                                  capacity=1, join_url=JOIN, now=utcnow())
        webinars.publish(session, w.id)
        webinars.register(session, m.settings, "spine-health", email="bob@example.com", name="Bob",
                          context=RequestContext(), now=utcnow())
    chiyo = visitor("Asia/Tokyo", phone=phone)
    chiyo.goto(f"{base}/webinars")
    item = chiyo.get_by_role("listitem").filter(has_text="Spine Health")
    expect(item.locator(".seats")).to_have_text("Waitlist")
    assert fits_width(chiyo)
    shot(chiyo, "full-1-list", phone=phone)
    chiyo.get_by_role("link", name="Spine Health").click()
    expect(chiyo.get_by_role("heading", level=1)).to_have_text("Spine Health")
    expect(seats_line(chiyo)).to_have_text("Full — join the waitlist")
    expect(chiyo.get_by_text("All seats are taken. Join the waitlist and you are in line for the next free seat: "
                             "if someone gives theirs back, it is yours and we email you the join link at once."
                             )).to_be_visible()
    expect(chiyo.get_by_role("button", name="Reserve my seat")).to_have_count(0)
    assert fits_width(chiyo)
    shot(chiyo, "full-2-page", phone=phone)
    reserve(chiyo, base, "chiyo@example.com", "Chiyo", "Join the waitlist")
    m.drain()
    assert [mail["Subject"] for mail in mails_to(smtp_server, "chiyo@example.com")] == [
        "You're on the waitlist: Spine Health"]

    with session_scope(m.sessions) as session:  # staff make room for two more
        w = webinars.get_webinar(session, w.id)
        webinars.save_webinar(session, w, slug=w.slug, title=w.title, starts_local=dt.datetime(YEAR, 7, 15, 18, 0),
                              timezone=w.timezone, capacity=3, join_url=JOIN, now=utcnow())
    m.drain()
    promoted = mails_to(smtp_server, "chiyo@example.com")[-1]
    assert promoted["Subject"].startswith("A seat is yours: Spine Health")
    assert f"Join: {JOIN}\n" in text_of(promoted)
    chiyo.goto(f"{base}/webinars/spine-health")
    expect(seats_line(chiyo)).to_have_text("A few seats left")
    expect(chiyo.get_by_role("button", name="Reserve my seat")).to_be_visible()


@pytest.mark.parametrize("phone", [False, True], ids=["desktop", "phone"])
def test_a_cancelled_webinar_says_so_and_points_to_the_next_ones(live, visitor, phone):
    app, base = live
    m = app.extensions["mailer"]
    with session_scope(m.sessions) as session:
        for slug, title, month in (("spine-health", "Spine Health", 7), ("knee-care", "Knee Care", 8)):
            w = webinars.save_webinar(session, slug=slug, title=title, starts_local=dt.datetime(YEAR, month, 15, 18, 0),
                                      timezone="Europe/London", join_url=JOIN, now=utcnow())
            webinars.publish(session, w.id)
        webinars.cancel_webinar(session, webinars.published_by_slug(session, "spine-health").id, now=utcnow())
    ada = visitor("America/New_York", phone=phone)
    answer = ada.goto(f"{base}/webinars/spine-health")  # the address in her mail and calendar
    assert answer.status == 410
    expect(ada).to_have_title(re.compile(r"^Cancelled: Spine Health"))
    expect(ada.get_by_role("heading", level=1)).to_have_text("This webinar was cancelled")
    expect(ada.get_by_text("was cancelled. We are sorry.", exact=False)).to_be_visible()
    expect(ada.get_by_role("heading", name="Coming up")).to_be_visible()
    expect(ada.get_by_role("link", name="Knee Care")).to_be_visible()
    expect(ada.get_by_role("link", name="Spine Health")).to_have_count(0)
    assert JOIN not in ada.content()
    assert fits_width(ada)
    shot(ada, "cancelled-webinar", phone=phone)
    with ada.expect_navigation():
        ada.get_by_role("link", name="Knee Care").click()
    expect(ada.get_by_role("heading", level=1)).to_have_text("Knee Care")
