"""Real-browser tests (Chromium through Playwright) of the staff console: find a contact
by address and read their record, erase them (owner); an owner's API token, shown once,
works on the API until it is revoked; why a message failed, on the deliveries page; a
CSV import uploaded in the browser, its progress while the worker runs, its report; an
owner adds a user (password shown once) and disables them; a setting reaches the next mail.
Selectors are roles and labels (the console's markup and stylesheet change); texts are
asserted as staff read them.

Set up as tests/test_browser.py: skipped without /usr/bin/chromium, except in CI
(CI=true), where that is a failure. Screenshots go to the artifacts directory."""
from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
from email import message_from_bytes, policy

import pytest
import sqlalchemy as sa

from mailer.audience import imports
from mailer.staff import jobs, users
from mailer.db import session_scope, utcnow
from mailer.models import Contact, DevMessage
from tests import browser_support
from tests.browser_support import TIMEOUT_MS, action, expect, live_app, nav_link, serving, shot
from tests.conftest import signup

browser = browser_support.browser  # the shared Chromium (a pytest fixture)
PASSWORD = "correct horse battery staple"
POLLED_MS = 15000  # what the import page learns from its poller (every 1.5 s), on a busy machine


@pytest.fixture
def live(database_url, tmp_path):
    """(app, base URL): served over real HTTP with mail kept in the dev mailbox, and one
    staff user of each role."""
    app, port = live_app(database_url, tmp_path)
    with session_scope(app.extensions["mailer"].sessions) as session:
        for role in ("owner", "editor", "viewer"):
            users.create_user(session, f"{role}@clinic.example", PASSWORD, role)
    with serving(app, port) as base:
        yield app, base
    app.extensions["mailer"].engine.dispose()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(locale="en-GB", timezone_id="Europe/London", viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx.new_page()
    ctx.close()


def log_in(page, base: str, role: str, path: str = "/admin/") -> None:
    page.goto(f"{base}{path}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Staff login")
    page.get_by_label("Email").fill(f"{role}@clinic.example")
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()


def cells(row) -> list[str]:
    return [text.strip() for text in row.get_by_role("cell").all_inner_texts()]


def assert_search_form_laid_out(page, field, button: str) -> None:
    """The filter form is a search landmark laid out as a plain form: its button is a button,
    not stretched into one pill-shaped group with every field (Pico's style for role=search)."""
    expect(page.get_by_role("search")).to_have_count(1)
    field_box = field.bounding_box()
    button_box = page.get_by_role("search").get_by_role("button", name=button).bounding_box()
    assert button_box["height"] <= 1.5 * field_box["height"], (button_box, field_box)


def confirm_from_mailbox(app, page, email: str) -> None:
    """Follow the confirmation link in the person's mail, as they would."""
    with app.extensions["mailer"].read_sessions() as session:
        raw = session.scalar(sa.select(DevMessage.raw).where(DevMessage.rcpt_to == email))
    text = message_from_bytes(raw, policy=policy.default).get_body(preferencelist=("plain",)).get_content()
    page.goto(re.search(r"\S+/confirm/\S+", text).group(0))
    expect(page.get_by_role("heading", level=1)).to_have_text("Subscription confirmed")


@pytest.fixture
def people(live):
    """Three who signed up on the form; Ada has confirmed, the others have not yet."""
    app, _ = live
    client = app.test_client()
    for email, name in [("ada@example.com", "Ada Lovelace"), ("adam@example.com", "Adam Smith"),
                        ("grace@example.com", "Grace Hopper")]:
        signup(client, email, name, source_url="https://clinic.example/blog/posture")
    app.extensions["mailer"].drain()
    return app


def test_staff_find_a_contact_by_address_and_read_the_record(live, people, page):
    app, base = live
    confirm_from_mailbox(app, page, "ada@example.com")
    log_in(page, base, "editor")
    nav_link(page, "Contacts").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Contacts")
    expect(page.get_by_text("3 contacts match these filters.")).to_be_visible()
    expect(page.get_by_role("row")).to_have_count(4)  # the header and three people
    assert_search_form_laid_out(page, page.get_by_label("Email address or name, or part of one"), "Search")
    shot(page, "contacts-1-list")

    page.get_by_label("Email address or name, or part of one").fill("ADA@example.com")
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    rows = page.get_by_role("row")
    expect(rows).to_have_count(2)
    assert cells(rows.nth(1))[:3] == ["ada@example.com", "Ada Lovelace", "Monthly newsletter: active"]
    shot(page, "contacts-2-search")

    # A name prefix finds Ada and Adam, not Grace.
    page.get_by_label("Email address or name, or part of one").fill("Ada")
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("row")).to_have_count(3)
    expect(page.get_by_role("link", name="grace@example.com")).to_have_count(0)
    page.get_by_label("Subscription status").select_option("pending")
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("row")).to_have_count(2)
    expect(page.get_by_role("link", name="adam@example.com")).to_be_visible()
    page.get_by_label("Subscription status").select_option("")

    page.get_by_label("Email address or name, or part of one").fill("ada@example.com")
    with page.expect_navigation():
        page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name="ada@example.com").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("ada@example.com")
    expect(page.get_by_role("definition").first).to_have_text("Ada Lovelace")
    subscriptions = page.get_by_role("row", name=re.compile("^Monthly newsletter"))
    assert cells(subscriptions)[:2] == ["Monthly newsletter", "active"]
    mail = page.get_by_role("row", name=re.compile("^Subscription confirmation"))
    assert cells(mail)[:2] == ["Subscription confirmation", "sent"]
    consent = [cells(row)[1:5] for row in page.get_by_role("row").filter(has_text="list:newsletter").all()]
    assert consent[0] == ["list:newsletter", "requested", "v1", "https://clinic.example/blog/posture"]
    assert consent[1][:3] == ["list:newsletter", "confirmed", "v1"]
    assert consent[1][3].startswith(f"{base}/confirm/")  # where she confirmed: the link in her mail
    assert len(consent) == 2
    # An editor reads, but neither downloads nor erases.
    expect(action(page, "Erase")).to_have_count(0)
    expect(action(page, "Download data (JSON)")).to_have_count(0)
    shot(page, "contacts-3-detail")


def test_an_owner_erases_a_contact_after_typing_the_address(live, people, page):
    app, base = live
    with app.extensions["mailer"].read_sessions() as session:
        grace = session.scalar(sa.select(Contact.id).where(Contact.email == "grace@example.com"))
    log_in(page, base, "owner", f"/admin/contacts/{grace}")
    expect(page.get_by_role("heading", level=1)).to_have_text("grace@example.com")
    action(page, "Erase").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Erase this person's data")
    shot(page, "contacts-4-erase-form")

    field = page.get_by_label("Type the address grace@example.com to confirm")
    field.fill("ada@example.com")
    with page.expect_navigation():
        page.get_by_role("button", name="Erase").click()
    expect(page.get_by_role("alert")).to_have_text(
        "To confirm, type the person's email address exactly as shown. Nothing was erased.")

    page.get_by_label("Type the address grace@example.com to confirm").fill("grace@example.com")
    with page.expect_navigation():
        page.get_by_role("button", name="Erase").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Contact erased")
    expect(page.get_by_role("status")).to_have_text(f"The personal data of contact {grace} has been erased.")
    expect(page.get_by_role("listitem").filter(has_text="subscription")).to_have_text("1 subscription ended.")
    shot(page, "contacts-5-erased")

    page.get_by_role("link", name="View what remains").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Erased contact")
    expect(action(page, "Erase")).to_have_count(0)
    with app.extensions["mailer"].read_sessions() as session:
        assert session.scalar(sa.select(Contact.email).where(Contact.id == grace)) is None


def api_status(base: str, token: str) -> int:
    """A program's request to the JSON API with this bearer token."""
    request = urllib.request.Request(f"{base}/api/v1/webinars", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_an_owner_creates_an_api_token_shown_once_and_revokes_it(live, page):
    app, base = live
    log_in(page, base, "owner")
    nav_link(page, "API tokens").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("API tokens")
    expect(page.get_by_text("No tokens yet.")).to_be_visible()

    page.get_by_label("Name (what it is for, e.g. “website”)").fill("website")
    page.get_by_label("write").check()
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Create token").click()
    assert navigation.value.headers["cache-control"] == "no-store"  # the secret stays out of caches
    expect(page.get_by_role("status")).to_have_text("Token created. Copy it now: it is shown only this once.")
    token = page.get_by_text(re.compile(r"^mlr_[\w-]{43}$")).inner_text()
    row = page.get_by_role("row", name=re.compile("^website"))
    assert cells(row)[:5] == ["website", "write", "owner@clinic.example", cells(row)[3], "never"]
    shot(page, "tokens-1-created")

    assert api_status(base, token) == 200
    page.goto(f"{base}/admin/tokens")
    expect(page.get_by_role("heading", level=1)).to_have_text("API tokens")
    assert token not in page.content(), "the token is shown only once"
    expect(page.get_by_role("status")).to_have_count(0)
    row = page.get_by_role("row", name=re.compile("^website"))
    assert cells(row)[4] != "never"  # last used: just now, by the request above

    with page.expect_navigation():
        row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_have_text("Token 'website' is revoked.")
    row = page.get_by_role("row", name=re.compile("^website"))
    expect(row.get_by_role("button", name="Revoke")).to_have_count(0)
    assert re.fullmatch(r"\w+day \d+ \w+ \d{4}, \d\d:\d\d \w+", cells(row)[5])  # when it was revoked
    shot(page, "tokens-2-revoked")
    assert api_status(base, token) == 401

    # Both changes of access are in the audit log, newest first, without the secret.
    nav_link(page, "Audit log").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Audit log")
    rows = page.get_by_role("row").filter(has_text="token")
    assert token not in page.content()
    shot(page, "tokens-3-audit-log")
    # Each with the address the browser came from (here the loopback).
    assert [cells(r)[1:4] for r in rows.all()][:2] == [["owner@clinic.example", "127.0.0.1", "revoke_token"],
                                                         ["owner@clinic.example", "127.0.0.1", "create_token"]]


@pytest.fixture
def live_smtp(database_url, smtp_server, tmp_path):
    """(app, base URL) sending through the recording SMTP server; one editor."""
    app, port = live_app(database_url, tmp_path, smtp_url=smtp_server.url)
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "editor@clinic.example", PASSWORD, "editor")
    with serving(app, port) as base:
        yield app, base
    app.extensions["mailer"].engine.dispose()


def test_staff_find_why_a_message_failed_on_the_deliveries_page(live_smtp, smtp_server, page):
    app, base = live_smtp
    smtp_server.handler.rcpt_reply = lambda address: (
        "550 5.1.1 <gone@example.com>: mailbox unavailable" if address == "gone@example.com" else None)
    client = app.test_client()
    for email, name in [("ada@example.com", "Ada"), ("gone@example.com", "Gone"), ("grace@example.com", "Grace")]:
        signup(client, email, name)
    app.extensions["mailer"].drain()
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == ["ada@example.com", "grace@example.com"]

    log_in(page, base, "editor", "/admin/deliveries")
    expect(page.get_by_role("heading", level=1)).to_have_text("Deliveries")
    expect(page.get_by_role("row")).to_have_count(4)
    assert_search_form_laid_out(page, page.get_by_label("Error text contains"), "Filter")
    shot(page, "deliveries-1-all")

    page.get_by_label("Status").select_option("failed")
    with page.expect_navigation():
        page.get_by_role("button", name="Filter").click()
    rows = page.get_by_role("row")
    expect(rows).to_have_count(2)
    failed = cells(rows.nth(1))
    assert failed[1:5] == ["gone@example.com", "Subscription confirmation", "failed", "1"]
    assert "550 5.1.1 <gone@example.com>: mailbox unavailable" in failed[6]
    shot(page, "deliveries-2-failed")

    page.get_by_label("Status").select_option("")
    page.get_by_label("Error text contains").fill("mailbox unavailable")
    with page.expect_navigation():
        page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("row")).to_have_count(2)
    page.get_by_role("link", name="gone@example.com").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("gone@example.com")
    mail = page.get_by_role("row", name=re.compile("^Subscription confirmation"))
    assert cells(mail)[:2] == ["Subscription confirmation", "failed"]



class PausedLines:
    """The uploaded file as the import job reads it, holding back the line after the first
    `pause_after` until `resume` is set: the job waits between two chunks, its progress committed."""

    def __init__(self, lines, pause_after: int, paused: threading.Event, resume: threading.Event):
        self.lines, self.pause_after, self.read = iter(lines), pause_after, 0
        self.paused, self.resume = paused, resume

    def __iter__(self):
        return self

    def __next__(self):
        if self.read == self.pause_after:
            self.paused.set()
            self.resume.wait(30)
        self.read += 1
        return next(self.lines)


def test_an_import_uploaded_in_the_browser_shows_its_progress_then_its_report(live, page, tmp_path, monkeypatch):
    app, base = live
    m = app.extensions["mailer"]
    rows = [f"reader{n}@example.com,Reader {n}" for n in range(1, 10)] + [
        "not-an-address,Nobody", "READER1@example.com,Reader again", "ada@example.com,Ada"]
    upload = tmp_path / "desk-signups.csv"
    upload.write_text("Email,Name\n" + "\n".join(rows) + "\n", encoding="utf-8")
    # Chunks of 4 rows; the worker is held after the first chunk (the header and 4 rows read)
    # until the page has shown that progress.
    monkeypatch.setattr(imports, "CHUNK", 4)
    paused, resume = threading.Event(), threading.Event()
    real_import = imports.import_csv
    monkeypatch.setattr(imports, "import_csv", lambda session_factory, settings, lines, **options: real_import(
        session_factory, settings, PausedLines(lines, 5, paused, resume), **options))

    log_in(page, base, "editor")
    nav_link(page, "Import").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Import subscribers")
    expect(page.get_by_text("No imports yet.")).to_be_visible()
    page.get_by_label("CSV file").set_input_files(str(upload))
    expect(page.get_by_label("Into the list")).to_have_value("newsletter")
    page.get_by_label("How did these people give their consent?").fill("Paper sign-up sheet at the clinic desk, 2026")
    shot(page, "import-1-form")
    with page.expect_navigation():
        page.get_by_role("button", name="Import").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Import of desk-signups.csv")
    bar = page.get_by_role("progressbar", name="Rows read")
    expect(bar).to_have_js_property("max", 12)
    expect(bar).to_have_js_property("value", 0)
    expect(page.get_by_text("0 of 12 rows read; waiting for the worker.")).to_be_visible()

    worker = threading.Thread(target=jobs.run_due, args=(m.sessions, m.settings),
                              kwargs={"owner": "browser-test", "clock": utcnow})
    worker.start()
    try:
        assert paused.wait(10), "the worker did not start the import"
        # The page, left open, follows the job: a third of the way, four imported so far.
        expect(bar).to_have_js_property("value", 4, timeout=POLLED_MS)
        expect(page.get_by_text(re.compile(r"^4 of 12 rows read"))).to_be_visible()
        expect(page.get_by_text("waiting for the worker")).to_have_count(0)
        expect(page.locator("[data-status]")).to_have_text("running")
        assert cells(page.get_by_role("row", name=re.compile("^Imported")))[0] == "4"
        shot(page, "import-2-progress")
        resume.set()
        worker.join(30)
    finally:
        resume.set()
        worker.join(30)

    # Finished: the poller reloads the page once, and the report says what was skipped and why.
    expect(page.get_by_role("status")).to_have_text(
        re.compile(r"^Finished \w+day \d+ \w+ \d{4}, \d\d:\d\d [A-Z]+: 12 rows read\.$"), timeout=POLLED_MS)
    expect(bar).to_have_count(0)
    report = {row.get_by_role("rowheader").inner_text(): cells(row)[0]
              for row in page.get_by_role("table").get_by_role("row").all()}
    assert report == {"Imported": "10", "Already on the list": "1", "Invalid": "1", "Suppressed": "0"}
    expect(page.get_by_role("heading", name="Invalid rows")).to_be_visible()
    expect(page.get_by_role("listitem").filter(has_text="not-an-address")).to_have_text(
        "row 11: 'not-an-address' (An email address must have an @-sign.)")
    shot(page, "import-3-report")

    page.get_by_role("link", name="← Imports").click()
    row = page.get_by_role("row", name=re.compile("desk-signups.csv"))
    assert cells(row)[1:] == ["desk-signups.csv", "Monthly newsletter", "done", "12", "10", "2"]
    with m.read_sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Contact)) == 10


def test_an_owner_adds_a_user_who_logs_in_with_the_password_shown_once_then_disables_them(live, page, browser):
    app, base = live
    log_in(page, base, "owner")
    nav_link(page, "Users").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Users")
    page.get_by_label("Email", exact=True).fill("new.editor@clinic.example")
    page.get_by_label("Role", exact=True).select_option("editor")
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Add user").click()
    assert navigation.value.headers["cache-control"] == "no-store"
    expect(page.get_by_role("status")).to_have_text("Added new.editor@clinic.example.")
    password = page.get_by_role("paragraph").filter(has_text="shown only this once").get_by_role("code").inner_text()
    assert len(password) >= 12
    row = page.get_by_role("row", name=re.compile("^new.editor@clinic.example"))
    expect(row.get_by_label("Role of new.editor@clinic.example")).to_have_value("editor")
    assert cells(row)[2:4] == ["never", "active"]
    shot(page, "users-1-added")

    # The new editor, in their own browser, logs in with it.
    ctx = browser.new_context(locale="en-GB", viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    try:
        theirs = ctx.new_page()
        theirs.goto(f"{base}/admin/")
        theirs.get_by_label("Email").fill("new.editor@clinic.example")
        theirs.get_by_label("Password").fill(password)
        with theirs.expect_navigation():
            theirs.get_by_role("button", name="Log in").click()
        expect(theirs.get_by_role("heading", level=1)).to_have_text("Dashboard")
        expect(nav_link(theirs, "Settings")).to_be_visible()  # the Admin group, opened
        expect(nav_link(theirs, "Users")).to_have_count(0)  # owners only

        page.reload()
        assert page.content().count(password) == 0, "the password is shown only once"
        row = page.get_by_role("row", name=re.compile("^new.editor@clinic.example"))
        assert cells(row)[3] == "active" and cells(row)[2] != "never"
        with page.expect_navigation():
            row.get_by_role("button", name="Disable").click()
        expect(page.get_by_role("status")).to_have_text(
            "new.editor@clinic.example is disabled: no login, sessions or API tokens.")
        expect(page.get_by_role("row", name=re.compile("^new.editor@clinic.example"))
               .get_by_role("button", name="Enable")).to_be_visible()
        shot(page, "users-2-disabled")

        theirs.reload()  # their session ended with the account
        expect(theirs.get_by_role("heading", level=1)).to_have_text("Staff login")
    finally:
        ctx.close()


def test_an_owner_changes_a_setting_and_the_next_mail_carries_it(live, page):
    app, base = live
    log_in(page, base, "owner")
    nav_link(page, "Settings").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Settings")
    postal = page.get_by_role("group", name="Postal address").get_by_role("textbox")
    zone = page.get_by_role("group", name="Time zone").get_by_role("textbox")
    expect(postal).to_have_value("1 Example Street, London, UK")
    postal.fill("2 Harbour Road, Leeds, UK")
    zone.fill("Mars/Olympus_Mons")
    with page.expect_navigation():
        page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("alert")).to_have_text("Nothing was saved: please correct the fields marked below.")
    expect(page.get_by_role("group", name="Time zone").get_by_text(re.compile("not a time zone"))).to_have_text(
        "'Mars/Olympus_Mons' is not a time zone name; use an IANA name such as Europe/London.")
    expect(postal).to_have_value("2 Harbour Road, Leeds, UK")  # the typing is kept
    shot(page, "settings-1-error")

    zone.fill("Europe/London")
    with page.expect_navigation():
        page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status")).to_have_text("Saved: Postal address.")
    expect(page.get_by_role("group", name="Postal address")).to_contain_text("Set here (")
    shot(page, "settings-2-saved")

    signup(app.test_client(), "ada@example.com", "Ada")
    app.extensions["mailer"].drain()
    with app.extensions["mailer"].read_sessions() as session:
        raw = session.scalar(sa.select(DevMessage.raw).where(DevMessage.rcpt_to == "ada@example.com"))
    text = message_from_bytes(raw, policy=policy.default).get_body(preferencelist=("plain",)).get_content()
    assert "2 Harbour Road, Leeds, UK" in text and "1 Example Street" not in text
