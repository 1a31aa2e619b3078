"""Real-browser tests (Chromium through Playwright) of the blog feed: an owner types the
feed's address on the settings page, checks it (the posts, then a refused address's
clear error) and saves it; an editor reads a digest drafted from the blog and approves
it. At desktop width and 390 px wide, with no sideways scrolling on the phone. Set up as
tests/test_browser_lists.py: skipped without /usr/bin/chromium, except in CI (CI=true)."""
from __future__ import annotations

import datetime as dt

import pytest

from mailer.campaigns import blog, newsletters
from mailer.db import session_scope, utcnow
from mailer.models import NewsletterStatus
from mailer.staff import users
from tests import browser_support
from tests.browser_support import PHONE, TIMEOUT_MS, expect, live_app, serving, shot
from tests.feed_server import FeedServer, rss
from tests.test_blog import POSTS, PREVIOUS_ISSUE

browser = browser_support.browser  # the shared Chromium (a pytest fixture)
PASSWORD = "correct horse battery staple"


@pytest.fixture
def feed_server():
    server = FeedServer().start()
    server.serve("/rss", rss(POSTS))
    yield server
    server.stop()


def _live(database_url, tmp_path, **overrides):
    app, port = live_app(database_url, tmp_path, feed_allow_private="127.0.0.1", feed_timeout_seconds=2,
                         **overrides)
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "owner@clinic.example", PASSWORD, "owner")
        users.create_user(session, "editor@clinic.example", PASSWORD, "editor")
    return app, port


def fits(page, width: int) -> None:
    if width == PHONE["width"]:
        assert page.evaluate("document.documentElement.scrollWidth") <= width, page.url


def _page(browser, base, width, who):
    ctx = browser.new_context(locale="en-GB", timezone_id="Europe/London", viewport={"width": width, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    page.goto(f"{base}/admin/")
    page.get_by_label("Email").fill(who)
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()
    return ctx, page


@pytest.mark.parametrize("width", [1280, PHONE["width"]])
def test_an_owner_checks_the_blog_feed_then_saves_it(database_url, tmp_path, feed_server, browser, width):
    app, port = _live(database_url, tmp_path)
    with serving(app, port) as base:
        ctx, page = _page(browser, base, width, "owner@clinic.example")
        try:
            page.goto(f"{base}/admin/settings")
            field = page.locator("#blog_feed_url")
            expect(page.locator("#field-blog_feed_url legend")).to_have_text("Blog feed")
            field.fill(feed_server.url("/rss"))
            with page.expect_navigation():
                page.get_by_role("button", name="Check the feed now").click()
            status = page.locator("#feed-check [role=status]")
            expect(status).to_contain_text("The feed has 3 post(s); the newest:")
            expect(status.get_by_role("link", name="Desk stretches that work")).to_have_attribute(
                "href", "https://clinic.example/blog/desk-stretches")
            expect(status).to_contain_text("Sleep & your spine")
            expect(page.locator("#blog_feed_url")).to_have_value(feed_server.url("/rss"))  # still typed, not saved
            fits(page, width)
            shot(page, "feed-checked", phone=width == PHONE["width"])

            page.locator("#blog_feed_url").fill(f"http://127.0.0.2:{feed_server.port}/rss")
            with page.expect_navigation():
                page.get_by_role("button", name="Check the feed now").click()
            expect(page.locator("#feed-check [role=alert]")).to_have_text(
                "The feed could not be used: The feed is not read from 127.0.0.2: 127.0.0.2 is a loopback address. "
                "Feeds are read only from public addresses (MAILER_FEED_ALLOW_PRIVATE allows private ones: 1 for "
                "any, or the addresses allowed).")
            fits(page, width)
            shot(page, "feed-refused", phone=width == PHONE["width"])

            page.locator("#blog_feed_url").fill("gopher://clinic.example/feed")
            with page.expect_navigation():
                page.get_by_role("button", name="Save settings").click()
            expect(page.locator("#error-blog_feed_url")).to_have_text(
                "The feed's address must start with https:// (or http://).")

            page.locator("#blog_feed_url").fill(feed_server.url("/rss"))
            with page.expect_navigation():
                page.get_by_role("button", name="Save settings").click()
            expect(page.get_by_role("status").first).to_contain_text("Saved: Blog feed.")
            expect(page.locator("#blog_feed_url")).to_have_value(feed_server.url("/rss"))
            assert app.extensions["mailer"].refresh_settings().blog_feed_url == feed_server.url("/rss")
        finally:
            ctx.close()
    app.extensions["mailer"].engine.dispose()


@pytest.mark.parametrize("width", [1280, PHONE["width"]])
def test_an_editor_reads_a_digest_drafted_from_the_blog_and_approves_it(database_url, tmp_path, feed_server, browser,
                                                                       width):
    app, port = _live(database_url, tmp_path, blog_feed_url=feed_server.url("/rss"))
    mailer = app.extensions["mailer"]
    blog.refresh(mailer.sessions, mailer.settings, now=utcnow(), force=True)
    with session_scope(mailer.sessions) as session:
        rhythm = newsletters.create_rhythm(session, name="Monthly news", day="1st tue", hour=9,
                                           timezone="Europe/London", fill_from_blog=True)
        when, rhythm_id = newsletters.next_occurrence(rhythm, utcnow()), rhythm.id
        previous = newsletters.create_newsletter(session, subject="November", body_md="Hello", lists=["newsletter"])
        previous.status, previous.started_at, previous.finished_at = NewsletterStatus.SENT, PREVIOUS_ISSUE, PREVIOUS_ISSUE
        previous.rhythm_id, previous.rhythm_month = rhythm_id, "2026-11"
    with session_scope(mailer.sessions) as session:
        assert newsletters.warn_unready(session, mailer.settings, when - dt.timedelta(hours=23))
        digest = session.scalars(newsletters.sa.select(newsletters.Newsletter).where(
            newsletters.Newsletter.status == NewsletterStatus.DRAFT)).one()
        digest_id, month = digest.id, digest.rhythm_month
    with serving(app, port) as base:
        ctx, page = _page(browser, base, width, "editor@clinic.example")
        try:
            page.goto(f"{base}/admin/newsletters/{digest_id}")
            expect(page.get_by_role("heading", level=1)).to_have_text(
                "New on our blog: Desk stretches that work and 1 more")
            expect(page.locator("#digest-note")).to_contain_text(
                f"Drafted from the blog for the {month} issue of “Monthly news”. It is sent only once you approve it")
            preview = page.frame_locator("iframe[name=issue-preview]")
            expect(preview.get_by_role("link", name="Desk stretches that work").first).to_be_visible()
            expect(preview.get_by_text("Old news")).to_have_count(0)
            fits(page, width)
            shot(page, "digest-draft", phone=width == PHONE["width"])

            ready = page.locator("form[action$='/ready']")
            expect(ready.get_by_label("Rhythm")).to_have_value(str(rhythm_id))
            expect(ready.get_by_label("Month", exact=True)).to_have_value(month)
            with page.expect_navigation():
                ready.get_by_role("button", name="Make this the issue for that month").click()
            expect(page.locator(".page-head .status")).to_have_text("scheduled")
            expect(page.locator("#digest-note")).to_have_count(0)
            fits(page, width)
            shot(page, "digest-approved", phone=width == PHONE["width"])
        finally:
            ctx.close()
    with mailer.read_sessions() as session:
        approved = session.get(newsletters.Newsletter, digest_id)
        assert approved.status == NewsletterStatus.SCHEDULED and approved.send_at == when
    mailer.engine.dispose()
