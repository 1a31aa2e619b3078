"""Real-browser test (Chromium through Playwright) of the automations console: staff build a
three-step welcome series (the step composer's live preview follows the typing), preview a
saved step, start it, look up Anna's timeline in her own time zone, enrol her and watch the
first mail arrive at the SMTP server and in the report. Set up as tests/test_browser.py:
skipped without /usr/bin/chromium, except in CI (CI=true), where that is a failure."""
from __future__ import annotations

import re

import pytest

from mailer.db import session_scope
from mailer.staff import users
from tests import browser_support
from tests.browser_support import TIMEOUT_MS, action, expect, live_app, serving, shot
from tests.test_sequences import subscriber

browser = browser_support.browser  # the shared Chromium (a pytest fixture)
PASSWORD = "correct horse battery staple"


@pytest.fixture
def page(browser):
    ctx = browser.new_context(locale="en-GB", viewport={"width": 1400, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx.new_page()
    ctx.close()


@pytest.fixture
def live(database_url, smtp_server, tmp_path):
    app, port = live_app(database_url, tmp_path, smtp_url=smtp_server.url)
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "editor@clinic.example", PASSWORD, "editor")
    with serving(app, port) as base:
        yield app, base
    app.extensions["mailer"].engine.dispose()


def add_step(page, subject: str, body: str, delay: str, window: str = ""):
    action(page, "Add a step").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New step")
    page.get_by_label("Delay").fill(delay)
    page.get_by_label("Send window in the reader's own time zone").fill(window)
    page.get_by_label("Subject", exact=True).fill(subject)
    page.get_by_label("Body").fill(body)
    with page.expect_navigation():
        page.get_by_role("button", name="Add step").click()
    expect(page.get_by_text("Step added.")).to_be_visible()
    page.get_by_role("link", name="← Welcome series").click()


def test_build_a_welcome_series_see_annas_timeline_and_her_first_mail(live, page, smtp_server):
    app, base = live
    mailer = app.extensions["mailer"]
    page.goto(f"{base}/admin/automations")
    page.get_by_label("Email").fill("editor@clinic.example")
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Automations")
    expect(page.get_by_text("No automations yet.")).to_be_visible()

    action(page, "New automation").click()
    page.get_by_label("Name").fill("Welcome series")
    page.get_by_label("Starts for someone when").select_option("confirmed")
    with page.expect_navigation():
        page.get_by_role("button", name="Create draft").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome series")
    expect(page.get_by_text("No steps yet.")).to_be_visible()

    # The first step: the composer's preview follows the typing, as the newsletter editor's.
    action(page, "Add a step").click()
    page.get_by_label("Subject", exact=True).fill("Welcome, {{ contact.first_name }}")
    page.get_by_label("Body").fill("Hello {{ contact.first_name }},\n\nyour first exercise: **the psoas stretch**.")
    frame = page.frame_locator("#preview-holder iframe:not([hidden])")
    expect(frame.get_by_text("Hello Alex,")).to_be_visible()
    expect(frame.locator("strong")).to_have_text("the psoas stretch")
    expect(page.locator("#preview-subject")).to_have_text("Welcome, Alex")
    with page.expect_navigation():
        page.get_by_role("button", name="Add step").click()
    # The saved step's page: its saved preview, pre-flight and test send.
    expect(page.get_by_text("Ready to send")).to_be_visible()
    expect(page.frame_locator("#preview-holder iframe").get_by_text("Hello Alex,")).to_be_visible()
    page.get_by_role("link", name="← Welcome series").click()

    add_step(page, "The shoulder bridge", "Day 3: the shoulder bridge.", "3", "weekdays 09:00-11:00")
    add_step(page, "Join the Spine Health webinar", "Day 7: come and ask.", "4")
    steps = page.locator("ol.timeline > li")
    expect(steps).to_have_count(3)
    expect(steps.nth(0)).to_contain_text("At enrolment")
    expect(steps.nth(1)).to_contain_text("3 days after the previous step · sent weekdays 09:00-11:00 in the reader's zone")
    expect(steps.nth(2)).to_contain_text("Join the Spine Health webinar")

    with page.expect_navigation():
        page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator(".page-head .status")).to_have_text("active")

    # Anna, in Sydney: her timeline before and after she is enrolled.
    subscriber(mailer, "anna@example.com", "Anna Berg", "Australia/Sydney")
    page.get_by_label("A contact's address").fill("anna@example.com")
    with page.expect_navigation():
        page.get_by_role("button", name="Show their timeline").click()
    plan = page.locator("#plan")
    expect(plan).to_contain_text("Anna Berg's timeline (Australia/Sydney)")
    expect(plan).to_contain_text("Not in this automation: shown as if enrolled now.")
    expect(plan.locator("tbody tr")).to_have_count(3)
    # The second step's time is on a weekday in her 09:00–11:00 (AEDT or AEST by the season).
    expect(plan.locator("tbody tr").nth(1)).to_contain_text(
        re.compile(r"(Mon|Tue|Wed|Thu|Fri)\s\d+\s\w+\s\d{4}\s(09|10):\d\d\sAE[DS]T"))  # compact (no-break spaces)
    with page.expect_navigation():
        page.get_by_role("button", name="Enrol them now").click()
    expect(page.get_by_text("Enrolled in Welcome series.")).to_be_visible()

    # The worker's tick: the welcome arrives, greeting her by name.
    mailer.drain()
    [mail] = [r.message for r in smtp_server.received if r.rcpt_tos == ["anna@example.com"]]
    assert mail["Subject"] == "Welcome, Anna"
    assert "Hello Anna," in mail.get_body(("plain",)).get_content()
    page.reload()
    expect(plan.locator("tbody tr").nth(0)).to_contain_text("sent")
    expect(plan).to_contain_text("Enrolled")
    report = page.locator("table.report tbody tr")
    expect(report.nth(0)).to_contain_text("Welcome, {{ contact.first_name }}")
    expect(report.nth(0).locator("td").nth(2)).to_have_text("1")
    shot(page, "automation-timeline")

    # Her contact page shows the automation and her next step.
    page.goto(f"{base}/admin/contacts?q=anna@example.com")
    page.get_by_role("link", name="anna@example.com").click()
    expect(page.locator("table.enrolments")).to_contain_text("Welcome series")
    expect(page.locator("table.enrolments")).to_contain_text("The shoulder bridge")
