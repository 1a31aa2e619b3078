"""Real-browser tests (Chromium through Playwright) of the pages visitors and staff use:
the two-step signup with JavaScript, the form embedded in another site's page, the
confirm and unsubscribe links from a real email, and the staff dev mailbox.

The app is served over real HTTP (werkzeug in a thread). Screenshots of the key pages
go to the artifacts directory (tests/browser_support.py). Without /usr/bin/chromium these tests are skipped,
except in CI (CI=true), where a missing browser is a failure."""
from __future__ import annotations

import http.server
import re
import threading
from email import message_from_bytes

import pytest
import sqlalchemy as sa

from mailer.staff import users
from mailer.db import session_scope
from mailer.models import ConsentEvent, Contact, DevMessage, Subscription
from tests.conftest import signup
from tests.smtp_server import free_port

from tests import browser_support
from tests.browser_support import TIMEOUT_MS, expect, live_app, serving, shot

browser = browser_support.browser  # the shared Chromium (a pytest fixture)
CONSENT_LABEL = "Yes, send me the free monthly newsletter by email"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def context(browser):
    """A fresh browser profile in New York, so the signup form picks up that time zone."""
    ctx = browser.new_context(timezone_id="America/New_York", locale="en-US", viewport={"width": 900, "height": 800})
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    return context.new_page()


@pytest.fixture
def live(database_url, smtp_server, tmp_path):
    """(app, base URL) for the app sending through the recording SMTP server."""
    app, port = live_app(database_url, tmp_path, smtp_url=smtp_server.url)
    with serving(app, port) as base:
        yield app, base
    app.extensions["mailer"].engine.dispose()


def links_to(base: str, text: str) -> list[str]:
    return re.findall(re.escape(base) + r"/\S+", text)


def stored_contact(app, email: str) -> Contact | None:
    """What the database holds once the worker has processed accepted signups."""
    app.extensions["mailer"].process_signups()
    with app.extensions["mailer"].read_sessions() as session:
        return session.scalar(sa.select(Contact).where(Contact.email == email))


def subscription_statuses(app) -> list[str]:
    with app.extensions["mailer"].read_sessions() as session:
        return list(session.scalars(sa.select(Subscription.status)))


def test_two_step_signup_with_javascript_confirm_and_unsubscribe(live, page, smtp_server):
    app, base = live
    requests = []  # what the page asks the server for (the browser's own favicon fetch aside)
    page.on("request", lambda r: None if r.url.endswith(("/favicon.ico", "/favicon.svg"))
            else requests.append((r.method, r.url, r.resource_type)))

    page.goto(f"{base}/subscribe")
    expect(page).to_have_title(re.compile(r"^Subscribe · "))
    expect(page.locator("#progress")).to_have_text("Step 1 of 2")
    expect(page.get_by_label("Email address")).to_be_visible()
    expect(page.locator("#step2")).to_be_hidden()
    # The stylesheet really applied: the primary button is the brand green.
    assert page.get_by_role("button", name="Next").evaluate("b => getComputedStyle(b).backgroundColor") \
        == "rgb(11, 110, 79)"
    # The script ran on load and filled the hidden time zone field from the browser.
    expect(page.locator("#timezone")).to_have_value("America/New_York")
    shot(page, "signup-1-step1")
    shot(page, "signup-1-step1", phone=True)

    # A marker that survives only as long as no new document is loaded.
    page.evaluate("window.__sameDocument = 'still here'")
    requests.clear()

    page.get_by_label("Email address").fill("not-an-email")
    page.get_by_role("button", name="Next").click()
    expect(page.locator("#progress")).to_have_text("Step 1 of 2")
    expect(page.get_by_label("Email address")).to_be_visible()
    expect(page.locator("#step2")).to_be_hidden()
    assert page.get_by_label("Email address").evaluate("e => e.validity.valid") is False
    assert page.evaluate("window.__sameDocument") == "still here"
    assert requests == []

    page.get_by_label("Email address").fill("ada.lovelace@example.com")
    page.get_by_role("button", name="Next").click()
    expect(page.locator("#progress")).to_have_text("Step 2 of 2")
    expect(page.locator("#step1")).to_be_hidden()
    expect(page.locator("#step2")).to_be_visible()
    expect(page.locator("p.as")).to_contain_text("Signing up as ada.lovelace@example.com")
    expect(page.get_by_label("First name")).to_be_focused()
    assert page.url == f"{base}/subscribe"
    assert page.evaluate("window.__sameDocument") == "still here", "step 2 came from a page load, not the script"
    # Next asks only the address check (the server's own rules; no page load, no lookup).
    assert requests == [("POST", f"{base}/subscribe/check", "fetch")], "step 2 must come without a page load"
    requests.clear()
    shot(page, "signup-2-step2")

    # Without the consent box ticked the form is not sent.
    page.get_by_label("First name").fill("Ada")
    page.get_by_role("button", name="Subscribe").click()
    expect(page.locator("#step2")).to_be_visible()
    assert page.get_by_label(CONSENT_LABEL).is_checked() is False
    assert page.evaluate("window.__sameDocument") == "still here"
    assert requests == []
    assert stored_contact(app, "ada.lovelace@example.com") is None

    consent = page.get_by_label(CONSENT_LABEL)
    expect(consent).to_be_visible()
    consent.check()
    with page.expect_navigation():
        page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    expect(page.locator("p.message")).to_have_text(
        "Almost done: we have sent you an email. Click the link in it to confirm your subscription.")
    assert [(m, u) for m, u, kind in requests if kind == "document"] == [("POST", f"{base}/subscribe")]
    shot(page, "signup-3-check-inbox")

    contact = stored_contact(app, "ada.lovelace@example.com")
    assert contact is not None
    assert contact.name == "Ada"
    assert contact.timezone == "America/New_York"
    assert subscription_statuses(app) == ["pending"]

    app.extensions["mailer"].drain()
    assert len(smtp_server.received) == 1
    mail = smtp_server.received[0].message
    assert mail["To"].addresses[0].addr_spec == "ada.lovelace@example.com"
    assert mail["Subject"] == "Please confirm your subscription to Monthly newsletter"
    text = mail.get_body(preferencelist=("plain",)).get_content()
    assert text.startswith("Hello Ada,")
    confirm_links = [u for u in links_to(base, text) if "/confirm/" in u]
    assert len(confirm_links) == 1

    page.goto(confirm_links[0])
    expect(page.get_by_role("heading", level=1)).to_have_text("Subscription confirmed")
    expect(page.locator("p.message")).to_have_text("Thank you! You are now subscribed to Monthly newsletter.")
    shot(page, "signup-4-confirmed")
    assert subscription_statuses(app) == ["active"]

    # The header as a mail client reads it: raw and unfolded, no RFC 2047 decoding.
    raw_header = message_from_bytes(smtp_server.received[0].data)["List-Unsubscribe"]
    unsubscribe_url = re.match(r"\s*<(" + re.escape(base) + r"/unsubscribe/[^>\s]+)>,", raw_header).group(1)
    page.goto(unsubscribe_url)
    expect(page.get_by_role("heading", level=1)).to_have_text("Unsubscribe")
    expect(page.locator("main")).to_contain_text("Stop receiving Monthly newsletter?")
    buttons = page.get_by_role("button")
    expect(buttons).to_have_count(1)
    expect(buttons).to_have_text("Unsubscribe")
    shot(page, "unsubscribe-1-page")
    with page.expect_navigation():
        buttons.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Unsubscribed")
    expect(page.locator("p.message")).to_have_text("You will receive no more email from Monthly newsletter.")
    shot(page, "unsubscribe-2-done")
    assert subscription_statuses(app) == ["unsubscribed"]


class _HostPage(http.server.BaseHTTPRequestHandler):
    """The organisation's own site, on another origin, with the form in an iframe."""

    body = b""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def host_site(live):
    _, base = live
    handler = type("HostPage", (_HostPage,), {"body": (
        "<!doctype html><html><head><meta charset='utf-8'><title>Spine Clinic</title></head>"
        "<body style='font-family:sans-serif;background:#e8f0ea'><h1>Welcome to the clinic</h1>"
        "<p>Sign up for our newsletter:</p>"
        f"<iframe id='signup' title='Newsletter signup' src='{base}/subscribe?embed=1'"
        " style='width:100%;height:560px;border:0'></iframe></body></html>").encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # "localhost", not 127.0.0.1: another site altogether, as for a real clinic website.
    yield f"http://localhost:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_signup_form_embedded_in_another_site(live, host_site, page):
    app, base = live
    blocked = []
    page.on("console", lambda m: blocked.append(m.text) if "frame" in m.text.lower() else None)

    page.goto(host_site)
    expect(page.get_by_role("heading", name="Welcome to the clinic")).to_be_visible()
    frame = page.frame_locator("#signup")
    expect(frame.locator("#progress")).to_have_text("Step 1 of 2")
    assert blocked == [], f"the browser refused to show the form in a frame: {blocked}"
    # Embedded: no site header or footer around the card.
    expect(frame.locator("header.site")).to_have_count(0)
    expect(frame.locator("body")).to_have_class("embed")

    frame.get_by_label("Email address").fill("grace@example.com")
    frame.get_by_role("button", name="Next").click()
    expect(frame.locator("#progress")).to_have_text("Step 2 of 2")
    expect(frame.locator("p.as")).to_contain_text("Signing up as grace@example.com")
    frame.get_by_label("First name").fill("Grace")
    frame.get_by_label(CONSENT_LABEL).check()
    shot(page, "embed-1-step2")
    frame.get_by_role("button", name="Subscribe").click()

    expect(frame.get_by_role("heading", level=1)).to_have_text("Check your inbox")
    expect(frame.locator("header.site")).to_have_count(0)  # still embedded after the post
    expect(page.get_by_role("heading", name="Welcome to the clinic")).to_be_visible()  # the host page stayed
    assert page.url == host_site
    shot(page, "embed-2-check-inbox")

    contact = stored_contact(app, "grace@example.com")
    assert contact is not None and contact.timezone == "America/New_York"
    assert subscription_statuses(app) == ["pending"]
    with app.extensions["mailer"].read_sessions() as session:
        event = session.scalar(sa.select(ConsentEvent).where(ConsentEvent.contact_id == contact.id))
    # The consent evidence names the site the visitor was on, not the form's own address.
    assert event.source_url.startswith(host_site.rstrip("/")), event.source_url


@pytest.fixture
def dev_live(database_url, tmp_path):
    """The app as a newcomer runs it: no SMTP, mail kept in the dev mailbox; one staff user."""
    app, port = live_app(database_url, tmp_path)
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "staff@clinic.example", PASSWORD)
    with serving(app, port) as base:
        yield app, base
    app.extensions["mailer"].engine.dispose()


def test_staff_log_in_and_read_the_confirmation_in_the_dev_mailbox(dev_live, page):
    app, base = dev_live
    signup(app.test_client(), "grace.hopper@example.com", "Grace Hopper")
    app.extensions["mailer"].drain()
    with app.extensions["mailer"].read_sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(DevMessage)) == 1

    page.goto(f"{base}/admin/")
    assert page.url.startswith(f"{base}/admin/login?next=")
    expect(page.get_by_role("heading", level=1)).to_have_text("Staff login")
    page.get_by_label("Email").fill("staff@clinic.example")
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()

    assert page.url == f"{base}/admin/"
    expect(page.get_by_role("heading", level=1)).to_have_text("Dashboard")
    expect(page.get_by_role("navigation").get_by_text("staff@clinic.example", exact=True)).to_be_visible()
    row = page.get_by_role("row", name="Monthly newsletter")
    expect(row.get_by_role("cell")).to_have_text(["Monthly newsletter", "0", "1", "0"])
    # The one signup is pending: no active subscription yet, and its confirmation left the queue.
    expect(page.get_by_text(re.compile(r"^0 active subscriptions$"))).to_be_visible()
    expect(page.get_by_text("0 due now", exact=True)).to_be_visible()
    expect(page.get_by_text("No published webinar ahead.")).to_be_visible()
    shot(page, "staff-1-dashboard")
    shot(page, "staff-1-dashboard", phone=True)

    page.get_by_role("link", name="Mailbox").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Dev mailbox")
    expect(page.locator("table.mailbox")).to_contain_text("grace.hopper@example.com")
    shot(page, "staff-2-mailbox")
    page.get_by_role("link", name="Please confirm your subscription to Monthly newsletter").click()

    assert re.fullmatch(re.escape(base) + r"/admin/mailbox/\d+", page.url)
    expect(page.get_by_role("heading", level=1)).to_have_text("Please confirm your subscription to Monthly newsletter")
    mail_frame = page.frame_locator("iframe.mail")
    expect(mail_frame.get_by_role("link", name="Yes, subscribe me")).to_be_visible()
    expect(mail_frame.get_by_text("Hello Grace,")).to_be_visible()
    confirm_href = mail_frame.get_by_role("link", name="Yes, subscribe me").get_attribute("href")
    assert confirm_href.startswith(f"{base}/confirm/")
    text_part = page.locator("pre.text")
    expect(text_part).to_be_visible()
    assert text_part.inner_text().startswith("Hello Grace,")
    assert confirm_href in text_part.inner_text()
    expect(page.locator("table.headers")).to_contain_text("List-Unsubscribe-Post")
    shot(page, "staff-3-mailbox-message")
