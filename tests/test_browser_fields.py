"""Real-browser test (Chromium through Playwright) of custom fields: a field added on the
fields page, a contact's values edited (a wrong number is refused naming the field, a good
one saved and shown on the contact's page), at desktop width and on a 390 px phone without
sideways scrolling. Set up as tests/test_browser.py: skipped without /usr/bin/chromium,
except in CI (CI=true)."""
from __future__ import annotations

import pytest

from mailer.audience import fields
from mailer.db import session_scope, utcnow
from mailer.staff import users
from tests import browser_support
from tests.browser_support import TIMEOUT_MS, expect, live_app, serving, shot
from tests.test_sequences import subscriber

browser = browser_support.browser  # the shared Chromium (a pytest fixture)
PASSWORD = "correct horse battery staple"


@pytest.fixture
def live(database_url, smtp_server, tmp_path):
    app, port = live_app(database_url, tmp_path, smtp_url=smtp_server.url)
    m = app.extensions["mailer"]
    with session_scope(m.sessions) as session:
        users.create_user(session, "editor@clinic.example", PASSWORD, "editor")
        fields.create_field(session, key="clinic", label="Clinic", type="choice", choices=["North", "South"],
                            now=utcnow())
    ann = subscriber(m, "ann@example.com", "Ann")
    with serving(app, port) as base:
        yield app, base, ann
    m.engine.dispose()


def fits(page, width) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= width


@pytest.mark.parametrize("width", [1400, 390])
def test_fields_page_and_a_contacts_values_fit_a_phone(live, browser, width):
    app, base, ann = live
    ctx = browser.new_context(locale="en-GB", viewport={"width": width, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    try:
        page.goto(f"{base}/admin/fields")
        page.get_by_label("Email").fill("editor@clinic.example")
        page.get_by_label("Password").fill(PASSWORD)
        with page.expect_navigation():
            page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Custom fields")
        page.get_by_label("Label").fill("Visits")
        page.get_by_label("Key").fill("visits")
        page.get_by_label("Type").select_option("number")
        with page.expect_navigation():
            page.get_by_role("button", name="Add field").click()
        expect(page.get_by_text("Field added")).to_be_visible()
        expect(page.locator("table.fields")).to_contain_text("visits")
        fits(page, width)
        shot(page, f"fields-{width}", phone=width < 500)

        page.goto(f"{base}/admin/contacts/{ann}")
        with page.expect_navigation():
            page.get_by_role("link", name="Change custom fields").click()
        page.get_by_label("Visits").fill("lots")
        page.get_by_label("Clinic").select_option("North")
        with page.expect_navigation():
            page.get_by_role("button", name="Save fields").click()
        expect(page.get_by_role("alert")).to_have_text("Not saved: Visits (visits) is a number; 'lots' is not one.")
        expect(page.get_by_label("Visits")).to_have_attribute("aria-invalid", "true")
        fits(page, width)
        shot(page, f"contact-fields-{width}", phone=width < 500)
        page.get_by_label("Visits").fill("12")
        with page.expect_navigation():
            page.get_by_role("button", name="Save fields").click()
        expect(page.get_by_text("Saved: 2 fields changed.")).to_be_visible()
        expect(page.get_by_label("Visits")).to_have_value("12")
        page.goto(f"{base}/admin/contacts/{ann}")
        expect(page.locator("section.contact-fields")).to_contain_text("North")
        expect(page.locator("section.contact-fields")).to_contain_text("12")
        fits(page, width)
    finally:
        ctx.close()
