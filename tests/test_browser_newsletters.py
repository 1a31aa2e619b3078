"""Real-browser test (Chromium through Playwright) of composing a newsletter: the live
preview follows the typing, the preview narrows to a phone's width, the issue is scheduled
in the organisation's zone and the list shows when it goes out; the public archive shows a
sent issue. Screenshots go to test-artifacts/screenshots/. Set up as tests/test_browser.py:
skipped without /usr/bin/chromium, except in CI (CI=true), where that is a failure."""
from __future__ import annotations

import datetime as dt
import re

import pytest
import sqlalchemy as sa

from mailer.campaigns import newsletters
from mailer.staff import users
from mailer.db import session_scope, utcnow
from mailer.models import Newsletter
from tests.audience import address, make_audience

from tests import browser_support
from tests.browser_support import TIMEOUT_MS, action, expect, live_app, nav_link, serving, shot

browser = browser_support.browser  # the shared Chromium (a pytest fixture)
PASSWORD = "correct horse battery staple"
UTC = dt.timezone.utc


@pytest.fixture
def page(browser):
    ctx = browser.new_context(locale="en-GB", viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx.new_page()
    ctx.close()


@pytest.fixture
def live(database_url, smtp_server, tmp_path):
    """(app, base URL): the app served over real HTTP, sending through the recording SMTP
    server, with one editor and three subscribers."""
    app, port = live_app(database_url, tmp_path, smtp_url=smtp_server.url)
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "editor@clinic.example", PASSWORD, "editor")
    make_audience(app.extensions["mailer"], 3)
    with serving(app, port) as base:
        yield app, base
    app.extensions["mailer"].engine.dispose()


def preview_frame(page):
    """The preview frame on show (the editor swaps in a new frame for each refresh)."""
    return page.frame_locator("#preview-holder iframe:not([hidden])")


def test_compose_with_live_preview_then_schedule(live, page):
    app, base = live
    page.goto(f"{base}/admin/newsletters")
    page.get_by_label("Email").fill("editor@clinic.example")
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Newsletters")
    expect(page.get_by_text("No newsletters yet.")).to_be_visible()

    action(page, "New newsletter").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New newsletter")
    page.get_by_label("Subject", exact=True).fill("Spine Health in July")
    page.get_by_label("Preheader").fill("Three habits for a happier back")
    page.get_by_label("Body").fill("Hello {{ contact.first_name }},\n\nThis month: **three habits**.")
    # The preview follows the typing: the sample reader is greeted by name.
    expect(preview_frame(page).get_by_text("Hello Alex,")).to_be_visible()
    expect(preview_frame(page).locator("strong")).to_have_text("three habits")
    expect(page.locator("#preview-subject")).to_have_text("Spine Health in July")
    expect(page.locator("#preview-text")).to_contain_text("This month: **three habits**.")
    # Its inline styles apply inside the sandboxed frame: the email's card is white on grey.
    background = preview_frame(page).locator("body").evaluate("b => getComputedStyle(b).backgroundColor")
    assert background == "rgb(243, 245, 247)"

    page.get_by_label("Body").press("End")
    page.get_by_label("Body").type("\n\nSee you at the webinar, {{ contact.first_name }}!")
    expect(preview_frame(page).get_by_text("See you at the webinar, Alex!")).to_be_visible()
    expect(page.locator("#preview-holder iframe")).to_have_count(1)
    assert page.locator("#preview-holder iframe").evaluate("f => f.getBoundingClientRect().width") == 600
    shot(page, "newsletter-1-editor-desktop")

    # A template mistake is shown at once, with its line.
    page.get_by_label("Body").type("\n{{ coupon }}")
    expect(page.locator("#preview-error")).to_have_text("body, line 6: unknown name 'coupon'")
    page.get_by_label("Body").press("Backspace")
    for _ in range(len("{{ coupon }}")):
        page.get_by_label("Body").press("Backspace")
    expect(page.locator("#preview-error")).to_be_hidden()

    page.get_by_text("Mobile (375px)").click()
    expect(page.locator("#preview-holder iframe")).to_have_count(1)
    assert page.locator("#preview-holder iframe").evaluate("f => f.getBoundingClientRect().width") == 375
    expect(preview_frame(page).get_by_text("See you at the webinar, Alex!")).to_be_visible()
    shot(page, "newsletter-2-editor-mobile")
    # The back button leaves the editor: previews do not pile up in the history.
    assert page.evaluate("history.length") <= 4

    with page.expect_navigation():
        page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Spine Health in July")
    expect(page.locator("p.flash")).to_have_text("Draft saved.")
    # (Served over http, the pre-flight check flags the organisation's own unsubscribe link.)
    expect(page.get_by_role("heading", name="Pre-flight check")).to_be_visible()
    expect(page.frame_locator("iframe[name=issue-preview]").get_by_text("Hello Alex,")).to_be_visible()

    year = utcnow().year + 1
    page.get_by_label("Date", exact=True).fill(f"{year}-07-15")
    page.get_by_label("Time", exact=True).fill("09:00")
    with page.expect_navigation():
        page.get_by_role("button", name="Schedule").click()
    local = f"{dt.date(year, 7, 15):%A} 15 July {year}, 09:00 BST"
    # Asked first, saying when and to how many.
    expect(page.locator("p.question")).to_have_text(
        f"Schedule “Spine Health in July” for {local} to 3 subscribers of Monthly newsletter (counted now; "
        "counted again when it starts)?")
    shot(page, "newsletter-3a-confirm-schedule")
    with page.expect_navigation():
        page.get_by_role("button", name="Schedule").click()
    expect(page.locator("p.flash")).to_have_text(f"Scheduled for {local}.")
    expect(page.frame_locator("iframe[name=issue-preview]").get_by_text("Hello Alex,")).to_be_visible()
    page.locator("iframe[name=issue-preview]").scroll_into_view_if_needed()  # frames off screen are not painted
    shot(page, "newsletter-3-issue-scheduled")
    with app.extensions["mailer"].read_sessions() as session:
        assert session.scalar(sa.select(Newsletter.send_at)) == dt.datetime(year, 7, 15, 8, tzinfo=UTC)

    nav_link(page, "Newsletters").click()
    row = page.get_by_role("row", name=re.compile("Spine Health in July"))
    compact = f"{dt.date(year, 7, 15):%a} 15 Jul {year} 09:00 BST"  # one line in the table (no-break spaces)
    expect(row.get_by_role("cell")).to_have_text(["Spine Health in July", "scheduled", compact, "— / 0"])
    shot(page, "newsletter-4-list")


def test_a_sent_issue_in_the_report_and_the_public_archive(live, page):
    app, base = live
    m = app.extensions["mailer"]
    with session_scope(m.sessions) as session:
        n = newsletters.create_newsletter(session, subject="Five desk exercises",
                                          body_md="Hello {{ contact.first_name or 'friend' }},\n\n"
                                                  "Five **exercises** for your desk.\n\n"
                                                  "[Our blog](https://clinic.example/blog)", lists=["newsletter"])
        newsletters.update_newsletter(session, n.id, subject=n.subject, body_md=n.body_md, lists=["newsletter"],
                                      public=True)
        newsletters.schedule(session, n.id, utcnow(), now=utcnow())
        newsletter_id = n.id
    m.drain()

    page.goto(f"{base}/admin/newsletters/{newsletter_id}")
    page.get_by_label("Email").fill("editor@clinic.example")
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()
    expect(page.locator(".page-head .status")).to_have_text("sent")
    expect(page.locator("td[data-figure=sent]")).to_have_text("3")
    expect(page.locator("svg.chart rect.bar")).to_have_count(1)
    expect(page.frame_locator("iframe[name=issue-preview]").get_by_text("Hello Alex,")).to_be_visible()
    page.locator("iframe[name=issue-preview]").scroll_into_view_if_needed()
    shot(page, "newsletter-5-report")

    # Preview as one of the recipients: their name, loaded into the same frame.
    page.get_by_label("Preview as").fill(address(1))
    page.get_by_role("button", name="Show HTML").click()
    expect(page.frame_locator("iframe[name=issue-preview]").get_by_text("Hello Reader1,")).to_be_visible()
    page.get_by_label("Preview as").fill("nobody@example.com")
    page.get_by_role("button", name="Show HTML").click()
    expect(page.frame_locator("iframe[name=issue-preview]").get_by_text(
        "No contact has the address nobody@example.com.")).to_be_visible()

    page.goto(f"{base}/archive")
    link = page.get_by_role("link", name="Five desk exercises")
    expect(link).to_be_visible()
    shot(page, "archive-1-list")
    link.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Five desk exercises")
    issue = page.frame_locator("iframe.archive-issue")
    expect(issue.get_by_text("Hello friend,")).to_be_visible()
    expect(issue.locator("strong")).to_have_text("exercises")
    shot(page, "archive-2-issue")


def test_the_preview_works_without_javascript(live, browser):
    app, base = live
    ctx = browser.new_context(java_script_enabled=False, viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    try:
        page.goto(f"{base}/admin/newsletters/new")
        page.get_by_label("Email").fill("editor@clinic.example")
        page.get_by_label("Password").fill(PASSWORD)
        with page.expect_navigation():
            page.get_by_role("button", name="Log in").click()
        page.get_by_label("Subject", exact=True).fill("No script needed")
        page.get_by_label("Body").fill("Hello {{ contact.first_name }}, **welcome**.")
        page.get_by_role("button", name="Preview").click()
        frame = page.frame_locator("#preview-holder iframe")
        expect(frame.get_by_text("Hello Alex, welcome.")).to_be_visible()
        expect(frame.locator("pre")).to_contain_text("Hello Alex, **welcome**.")  # the text part under it
        assert page.url == f"{base}/admin/newsletters/new"  # the editor stayed, with the typing in it
        expect(page.get_by_label("Body")).to_have_value("Hello {{ contact.first_name }}, **welcome**.")
        page.get_by_text("Mobile (375px)").click()  # the width toggle is CSS alone
        assert page.locator("#preview-holder iframe").evaluate("f => f.getBoundingClientRect().width") == 375
        shot(page, "newsletter-6-editor-without-javascript")
    finally:
        ctx.close()


def test_schedule_at_nine_in_each_readers_own_time_zone(live, page):
    from mailer.models import Contact

    app, base = live
    m = app.extensions["mailer"]
    with session_scope(m.sessions) as session:
        session.execute(sa.update(Contact).where(Contact.email == address(0)).values(timezone="Pacific/Auckland"))
        session.execute(sa.update(Contact).where(Contact.email == address(1)).values(timezone="America/Los_Angeles"))
        newsletter_id = newsletters.create_newsletter(session, subject="Spine Health around the world",
                                                      body_md="Hello {{ contact.first_name }}!",
                                                      lists=["newsletter"]).id
    page.goto(f"{base}/admin/newsletters/{newsletter_id}")
    page.get_by_label("Email").fill("editor@clinic.example")
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()

    year = utcnow().year + 1
    page.get_by_label("Date", exact=True).fill(f"{year}-07-15")
    page.get_by_label("Time", exact=True).fill("09:00")
    expect(page.get_by_label("In the organisation's time zone, Europe/London")).to_be_checked()
    page.get_by_label("At this time in each reader's own time zone").check()
    with page.expect_navigation():
        page.get_by_role("button", name="Schedule").click()
    expect(page.locator("p.question")).to_contain_text("09:00 in each reader's own time zone")
    with page.expect_navigation():
        page.get_by_role("button", name="Schedule").click()
    # Auckland (NZST, UTC+12) reaches 09:00 first, Los Angeles (PDT, UTC-7) last; reader 2 has no zone: London.
    said = (f"09:00 in each reader's time zone on {dt.date(year, 7, 15):%A} 15 July {year} "
            "(from 21:00 UTC on 14 July to 16:00 UTC on 15 July)")
    expect(page.locator("p.flash")).to_have_text(f"Scheduled for {said}.")
    expect(page.locator("td.when")).to_contain_text(said)
    expect(page.locator("td.when")).to_contain_text("Readers without a time zone: Europe/London.")
    expect(page.get_by_label("At this time in each reader's own time zone")).to_be_checked()
    shot(page, "newsletter-7-scheduled-in-reader-zones")
    with m.read_sessions() as session:
        assert session.execute(sa.select(Newsletter.send_at, Newsletter.send_local_time)).one() == \
            (dt.datetime(year, 7, 14, 21, tzinfo=UTC), f"{year}-07-15T09:00")

    nav_link(page, "Newsletters").click()
    row = page.get_by_role("row", name=re.compile("Spine Health around the world"))
    expect(row.get_by_role("cell").nth(2)).to_have_text(f"{year}-07-15, 09:00 in each reader's time zone")
