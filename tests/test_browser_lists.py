"""Real-browser test (Chromium through Playwright) of the lists page: an editor creates a
list, changes its consent wording to version 2 and sees both versions with the events
that used them, then archives it; at desktop width and 390 px wide, with no sideways
scrolling on the phone. Set up as tests/test_browser_console.py: skipped without
/usr/bin/chromium, except in CI (CI=true), where that is a failure."""
from __future__ import annotations

import re

import pytest

from mailer.db import session_scope
from mailer.staff import users
from tests import browser_support
from tests.browser_support import PHONE, TIMEOUT_MS, expect, live_app, nav_link, serving, shot

browser = browser_support.browser  # the shared Chromium (a pytest fixture)
PASSWORD = "correct horse battery staple"
V1 = "Yes, tell me when the clinic changes its opening hours."
V2 = "Yes, tell me when the clinic changes its opening hours or holiday closures. I can unsubscribe at any time."


@pytest.fixture
def live(database_url, tmp_path):
    app, port = live_app(database_url, tmp_path)
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "editor@clinic.example", PASSWORD, "editor")
    with serving(app, port) as base:
        yield app, base
    app.extensions["mailer"].engine.dispose()


def fits(page, width: int) -> None:
    if width == PHONE["width"]:
        assert page.evaluate("document.documentElement.scrollWidth") <= width, page.url


@pytest.mark.parametrize("width", [1280, PHONE["width"]])
def test_an_editor_creates_a_list_changes_its_wording_and_archives_it(live, browser, width):
    app, base = live
    ctx = browser.new_context(locale="en-GB", timezone_id="Europe/London", viewport={"width": width, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    try:
        page.goto(f"{base}/admin/")
        page.get_by_label("Email").fill("editor@clinic.example")
        page.get_by_label("Password").fill(PASSWORD)
        with page.expect_navigation():
            page.get_by_role("button", name="Log in").click()
        nav_link(page, "Lists").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Lists")
        fits(page, width)

        page.get_by_label("Name", exact=True).fill("Opening hours")
        page.get_by_label("Slug").fill("opening-hours")
        page.get_by_label("Description").fill("When the clinic is open.")
        page.get_by_label("Consent wording").fill(V1)
        with page.expect_navigation():
            page.get_by_role("button", name="Create list").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Opening hours")
        expect(page.get_by_role("status")).to_contain_text("created with its consent wording as version 1")
        expect(page.get_by_role("article", name="Version 1")).to_contain_text(V1)
        fits(page, width)

        # A visitor signs up under version 1 (the public form, then the worker).
        visitor = ctx.new_page()
        visitor.goto(f"{base}/subscribe?lists=opening-hours")
        visitor.get_by_label("Email address").fill("ada@example.com")
        visitor.get_by_role("button", name="Next").click()
        expect(visitor.get_by_text(V1)).to_be_visible()
        visitor.get_by_text(V1).click()
        visitor.get_by_role("button", name="Subscribe").click()
        expect(visitor.get_by_role("heading", level=1)).to_have_text("Check your inbox")
        visitor.close()
        app.extensions["mailer"].process_signups()

        wording = page.get_by_label("New wording (shown to new signups from now on)")
        expect(wording).to_have_value(V1)
        wording.fill(V2)
        with page.expect_navigation():
            page.get_by_role("button", name="Save as a new version").click()
        expect(page.get_by_role("status")).to_contain_text("Consent wording version 2 saved")
        current, first = page.get_by_role("article", name="Version 2"), page.get_by_role("article", name="Version 1")
        expect(current.get_by_role("heading")).to_have_text("Version 2 (current)")
        expect(current).to_contain_text(V2)
        expect(current).to_contain_text("used by 0 consent events")
        expect(first.get_by_role("heading")).to_have_text("Version 1")
        expect(first).to_contain_text(V1)
        expect(first).to_contain_text("used by 1 consent event")  # Ada's request
        expect(page.get_by_role("table", name="Subscribers")).to_contain_text("pending")
        shot(page, f"list-versions-{width}")
        fits(page, width)

        with page.expect_navigation():
            page.get_by_role("button", name="Archive list").click()
        expect(page.get_by_role("status")).to_contain_text("Archived: the list takes no new signups")
        expect(page.get_by_text(re.compile("archived .*: takes no new signups"))).to_be_visible()
        expect(page.get_by_role("button", name="Save as a new version")).to_have_count(0)
        expect(page.get_by_role("article", name="Version 1")).to_contain_text(V1)
        shot(page, f"list-archived-{width}")
        fits(page, width)

        page.get_by_role("link", name="← Lists").click()
        row = page.get_by_role("row", name=re.compile("^Opening hours"))
        expect(row).to_contain_text("archived")
        expect(row).to_contain_text("version 2")
        fits(page, width)

        visitor = ctx.new_page()
        visitor.goto(f"{base}/subscribe?lists=opening-hours")
        expect(visitor.get_by_role("alert")).to_have_text(
            "The list 'Opening hours' is closed: it takes no new signups.")
        visitor.close()
    finally:
        ctx.close()
