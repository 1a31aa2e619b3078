"""Real-browser test (Chromium through Playwright) of the segment editor: a rule chosen in
the menus updates the live count and the sample; a wrong value says which rule; the page
fits a 390 px phone; the segment is then offered in the newsletter editor. Set up as
tests/test_browser.py: skipped without /usr/bin/chromium, except in CI (CI=true)."""
from __future__ import annotations

import pytest

from mailer.db import session_scope
from mailer.staff import users
from tests import browser_support
from tests.browser_support import TIMEOUT_MS, action, expect, live_app, serving, shot
from tests.test_sequences import subscriber

browser = browser_support.browser  # the shared Chromium (a pytest fixture)
PASSWORD = "correct horse battery staple"


@pytest.fixture
def live(database_url, smtp_server, tmp_path):
    app, port = live_app(database_url, tmp_path, smtp_url=smtp_server.url)
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "editor@clinic.example", PASSWORD, "editor")
    for name, zone in (("bob", "Europe/London"), ("cy", "Europe/Berlin"), ("dee", "Europe/London")):
        subscriber(app.extensions["mailer"], f"{name}@example.com", name.title(), zone)
    with serving(app, port) as base:
        yield app, base
    app.extensions["mailer"].engine.dispose()


@pytest.mark.parametrize("width", [1400, 390])
def test_segment_editor_counts_live_and_fits_a_phone(live, browser, width):
    app, base = live
    ctx = browser.new_context(locale="en-GB", viewport={"width": width, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    try:
        page.goto(f"{base}/admin/segments")
        page.get_by_label("Email").fill("editor@clinic.example")
        page.get_by_label("Password").fill(PASSWORD)
        with page.expect_navigation():
            page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Segments")
        action(page, "New segment").click()
        page.get_by_label("Name").fill("Londoners")
        page.get_by_label("Group 1, rule 1: condition").select_option("timezone:is")
        page.get_by_label("Group 1, rule 1: value").fill("Europe/Londn")
        expect(page.locator("#segment-problem")).to_have_text("Group 1, rule 1: Unknown time zone 'Europe/Londn'.")
        page.get_by_label("Group 1, rule 1: value").fill("Europe/London")
        expect(page.locator("#segment-count")).to_have_text("2")
        expect(page.locator("#segment-text")).to_have_text("time zone is Europe/London")
        expect(page.locator("#segment-sample li")).to_have_count(2)
        expect(page.locator("#segment-sample")).to_contain_text("dee@example.com")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        shot(page, f"segment-editor-{width}", phone=width < 500)
        with page.expect_navigation():
            page.get_by_role("button", name="Save segment").click()
        expect(page.get_by_text("Segment saved.")).to_be_visible()
        expect(page.get_by_label("Group 1, rule 1: value")).to_have_value("Europe/London")

        page.goto(f"{base}/admin/newsletters/new")
        page.get_by_label("Only readers in the segment").select_option(label="Londoners")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
    finally:
        ctx.close()
