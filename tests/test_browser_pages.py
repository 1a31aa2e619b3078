"""Real-browser tests (Chromium through Playwright) of the pages around the work: styled
404, 410 and 500 pages in the visitor's or the staff layout; staff tables and the nav that
fit a 1280 px screen; the home page's links; the signup form's step 1 checking the address
by the server's rules; the consent history's source pages without tokens; a favicon.
Desktop (1280 px) and phone (390 px). Set up as tests/test_browser.py: skipped without
/usr/bin/chromium, except in CI (CI=true), where that is a failure."""
from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from mailer.campaigns import newsletters
from mailer.db import session_scope, utcnow
from mailer.models import Contact
from mailer.staff import users
from tests import browser_support
from tests.audience import make_audience
from tests.browser_support import PHONE, TIMEOUT_MS, expect, live_app, nav_link, serving, shot
from tests.conftest import signup

browser = browser_support.browser  # the shared Chromium (a pytest fixture)
PASSWORD = "correct horse battery staple"
DESKTOP = {"width": 1280, "height": 900}
SECRET_DETAIL = "database password is hunter2"
# A refusal as some providers word it: a long link with no space to break at.
LONG_ERROR = ("550 5.7.1 Message rejected as spam by the content filter; see https://postmaster.example.net/"
              "troubleshooting/rejections?code=CF-7731&reference=AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMn")


@pytest.fixture
def live(database_url, smtp_server, tmp_path):
    """(app, base URL): served over real HTTP, sending through the recording SMTP server;
    staff of each role and two more users with long addresses; a route that fails (500)."""
    app, port = live_app(database_url, tmp_path, smtp_url=smtp_server.url)

    def fails():
        raise RuntimeError(SECRET_DETAIL)

    app.add_url_rule("/admin/fails-for-the-test", "fails_admin", fails)
    app.add_url_rule("/fails-for-the-test", "fails_public", fails)
    with session_scope(app.extensions["mailer"].sessions) as session:
        for role in ("owner", "editor", "viewer"):
            users.create_user(session, f"{role}@clinic.example", PASSWORD, role)
        users.create_user(session, "front.desk.reception.north.branch@spine-and-motion-clinic.example",
                          PASSWORD, "editor")
        users.disable_user(session, users.create_user(
            session, "former.physiotherapist.on.leave@spine-and-motion-clinic.example", PASSWORD, "viewer"),
            actor_id=None, now=utcnow())
    with serving(app, port) as base:
        yield app, base
    app.extensions["mailer"].engine.dispose()


@pytest.fixture
def context(browser):
    ctx = browser.new_context(locale="en-GB", timezone_id="Europe/London", viewport=DESKTOP)
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    return context.new_page()


def log_in(page, base: str, role: str = "owner", path: str = "/admin/") -> None:
    page.goto(f"{base}{path}")
    page.get_by_label("Email").fill(f"{role}@clinic.example")
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()


def tables_overflow(page) -> list[dict]:
    """Every table wider than the box it sits in (which would scroll sideways)."""
    return page.evaluate("""() => [...document.querySelectorAll('main table')].map(t => {
        const box = t.parentElement;
        return {cls: t.className, table: t.scrollWidth, box: box.clientWidth};
    }).filter(x => x.table > x.box)""")


def nav_spread(page) -> dict:
    return page.evaluate("""() => {
        const tops = [...document.querySelectorAll('nav.top > ul > li')].map(li => li.getBoundingClientRect().top);
        return {spread: Math.max(...tops) - Math.min(...tops),
                height: document.querySelector('nav.top').getBoundingClientRect().height};
    }""")


def assert_fits(page, width: int, where: str) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= width, where
    if width >= 1280:
        assert tables_overflow(page) == [], where
    if width >= 1280 and page.locator("nav.top").count():
        nav = nav_spread(page)
        assert nav["spread"] < 10 and nav["height"] < 80, (where, nav)


# Staff tables and nav at 1280 px ----------------------------------------------------------

def test_staff_tables_and_nav_fit_1280_px_users_report_and_deliveries(live, smtp_server, page):
    app, base = live
    m = app.extensions["mailer"]
    smtp_server.handler.rcpt_reply = lambda address: LONG_ERROR if address == "blocked@example.com" else None
    make_audience(m, 3)
    client = app.test_client()
    signup(client, "blocked@example.com", "Blocked")
    with session_scope(m.sessions) as session:
        n = newsletters.create_newsletter(session, subject="Five desk exercises", body_md="Hello,\n\nFive exercises.",
                                          lists=["newsletter"])
        newsletters.schedule(session, n.id, utcnow(), now=utcnow())
        newsletter_id = n.id
    m.drain()

    log_in(page, base)
    for width in (1280, PHONE["width"]):
        page.set_viewport_size({"width": width, "height": 900})
        suffix = "" if width >= 1280 else "-phone"
        page.goto(f"{base}/admin/users")
        expect(page.get_by_role("heading", level=1)).to_have_text("Users")
        expect(page.get_by_role("row")).to_have_count(6)
        assert_fits(page, width, f"users at {width}")
        shot(page, f"users{suffix}")

        page.goto(f"{base}/admin/newsletters/{newsletter_id}")
        expect(page.locator("td[data-figure=sent]")).to_have_text("3")
        assert_fits(page, width, f"report at {width}")
        shot(page, f"report{suffix}")

        page.goto(f"{base}/admin/deliveries")
        failed = page.get_by_role("row").filter(has_text="blocked@example.com")
        expect(failed).to_contain_text("Subscription confirmation")  # the kind in words
        expect(failed).to_contain_text("content filter")
        assert_fits(page, width, f"deliveries at {width}")
        shot(page, f"deliveries{suffix}")
    # Kinds in words in the filter menu too; the key stays what is sent.
    page.set_viewport_size(DESKTOP)
    page.get_by_label("Kind").select_option(label="Newsletter")
    with page.expect_navigation():
        page.get_by_role("button", name="Filter").click()
    assert "kind=newsletter" in page.url
    expect(page.get_by_role("row")).to_have_count(4)  # the three readers; not the blocked confirmation
    # Dates in the tables are compact and on one line.
    date = page.get_by_role("row").nth(1).get_by_role("cell").nth(5)
    assert re.fullmatch(r"sent \w{3} \d+ \w{3} \d{4} \d\d:\d\d (GMT|BST)", date.inner_text().replace("\xa0", " "))
    lines = date.evaluate("""td => { const r = document.createRange(); r.selectNodeContents(td);
        return new Set([...r.getClientRects()].map(b => Math.round(b.top))).size; }""")
    assert lines == 1


def test_the_nav_groups_open_by_keyboard_and_mark_where_you_are(live, page):
    app, base = live
    log_in(page, base, path="/admin/lists")
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.locator("summary.current")).to_have_text("Audience")
    expect(nav.get_by_role("link", name="Lists", exact=True)).to_be_hidden()  # in its closed group
    summary = nav.locator("summary", has_text="Admin")
    summary.focus()
    page.keyboard.press("Enter")
    expect(nav.get_by_role("link", name="Audit log")).to_be_visible()
    page.keyboard.press("Escape")
    expect(nav.get_by_role("link", name="Audit log")).to_be_hidden()
    nav_link(page, "Segments").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Segments")
    nav_link(page, "Segments")
    expect(nav.get_by_role("link", name="Segments", exact=True)).to_have_attribute("aria-current", "page")
    shot(page, "nav-open")
    shot(page, "nav-open", phone=True)


# Error pages -------------------------------------------------------------------------------

@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_error_pages_in_the_visitors_and_the_staff_layout(live, browser, viewport):
    app, base = live
    ctx = browser.new_context(locale="en-GB", viewport=viewport)
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    width = viewport["width"]
    try:
        answer = page.goto(f"{base}/no-such-page")
        assert answer.status == 404
        expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")
        expect(page.get_by_role("link", name="Free webinars")).to_be_visible()
        expect(page.get_by_role("link", name="Newsletter archive")).to_be_visible()
        assert page.evaluate("getComputedStyle(document.querySelector('main.card')).borderRadius") != "0px"
        assert_fits(page, width, "public 404")
        shot(page, "public-404")

        answer = page.goto(f"{base}/fails-for-the-test")
        assert answer.status == 500
        expect(page.get_by_role("heading", level=1)).to_have_text("Something went wrong")
        assert SECRET_DETAIL not in page.content() and "RuntimeError" not in page.content()
        shot(page, "public-500")

        # Staff not logged in: the console's layout, a way to the login.
        answer = page.goto(f"{base}/admin/no-such-page")
        assert answer.status == 404
        expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")
        expect(page.get_by_role("link", name="Staff login")).to_be_visible()
        expect(page.get_by_role("navigation", name="Main").get_by_role("link")).to_have_count(0)

        log_in(page, base)
        answer = page.goto(f"{base}/admin/no-such-page")
        assert answer.status == 404
        expect(page.get_by_role("heading", level=1)).to_have_text("Page not found")
        expect(nav_link(page, "Dashboard")).to_be_visible()  # the staff nav, for a way on
        expect(page.get_by_role("link", name="Back to the dashboard")).to_be_visible()
        assert_fits(page, width, "admin 404")
        shot(page, "admin-404")

        answer = page.goto(f"{base}/admin/fails-for-the-test")
        assert answer.status == 500
        expect(page.get_by_role("heading", level=1)).to_have_text("Something went wrong")
        assert SECRET_DETAIL not in page.content()
        expect(nav_link(page, "Dashboard")).to_be_visible()
        shot(page, "admin-500")

        # The favicon, on both sites.
        icon = page.locator("link[rel=icon]").get_attribute("href")
        assert page.request.get(base + icon).headers["content-type"].startswith("image/svg+xml")
        page.goto(f"{base}/")
        assert page.locator("link[rel=icon]").get_attribute("href") == icon
    finally:
        ctx.close()


def test_error_answers_for_programs_stay_json_and_the_favicon_is_found_at_the_root(live):
    app, _ = live
    client = app.test_client()
    api = client.get("/api/v1/no-such-thing")
    assert api.status_code == 404 and api.json["error"]["code"] == "not_found"
    asked = client.get("/no-such-page", headers={"Accept": "application/json"})
    assert asked.status_code == 404 and asked.json["error"]["code"] == "not_found"
    failed = client.get("/fails-for-the-test", headers={"Accept": "application/json"})
    assert failed.status_code == 500 and failed.json["error"]["code"] == "internal_error"
    assert SECRET_DETAIL not in failed.text
    icon = client.get("/favicon.ico")
    assert icon.status_code == 301 and icon.headers["Location"].endswith("/static/favicon.svg")


# Public pages ------------------------------------------------------------------------------

@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_home_page_leads_to_the_webinars_and_the_archive(live, browser, viewport):
    app, base = live
    ctx = browser.new_context(locale="en-GB", viewport=viewport)
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    try:
        page.goto(f"{base}/")
        expect(page.get_by_role("link", name="Subscribe")).to_be_visible()
        shot(page, "home")
        page.get_by_role("link", name="See the upcoming webinars").click()
        expect(page).to_have_url(f"{base}/webinars")
        page.go_back()
        page.get_by_role("link", name="Read the newsletter archive").click()
        expect(page).to_have_url(re.compile(rf"^{re.escape(base)}/archive"))
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    finally:
        ctx.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_signup_step_1_refuses_an_address_the_server_would_refuse(live, browser, viewport):
    """"ann@clinic" passes the browser's own check but not the server's: step 1 says so,
    and step 2 (name, consent) is not reached until the address is right; the success
    page then offers a next step."""
    app, base = live
    ctx = browser.new_context(locale="en-GB", viewport=viewport)
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    try:
        page.goto(f"{base}/subscribe")
        page.get_by_label("Email address").fill("ann@clinic")
        assert page.get_by_label("Email address").evaluate("e => e.checkValidity()")  # the browser would let it by
        page.get_by_role("button", name="Next").click()
        expect(page.get_by_role("alert")).to_contain_text("That email address is not valid")
        expect(page.locator("#progress")).to_have_text("Step 1 of 2")
        expect(page.get_by_label("First name")).to_be_hidden()
        shot(page, "signup-step1-refused")

        page.get_by_label("Email address").fill("Ann@Clinic.example")
        page.get_by_role("button", name="Next").click()
        expect(page.locator("#progress")).to_have_text("Step 2 of 2")
        expect(page.get_by_role("alert")).to_have_count(0)
        expect(page.locator("#email-shown")).to_have_text("ann@clinic.example")
        page.get_by_label("First name").fill("Ann")
        page.get_by_role("checkbox").check()
        with page.expect_navigation():
            page.get_by_role("button", name="Subscribe").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
        expect(page.get_by_role("link", name="Free webinars")).to_be_visible()  # a next step
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        shot(page, "signup-done")
    finally:
        ctx.close()


def test_the_address_check_answers_alike_for_known_and_unknown_addresses(live):
    app, _ = live
    client = app.test_client()
    signup(client, "known@example.com", "Known")
    known = client.post("/subscribe/check", data={"email": "Known@Example.com"})
    unknown = client.post("/subscribe/check", data={"email": "Nobody@Example.com"})
    assert (known.status_code, known.json) == (200, {"email": "known@example.com"})
    assert (unknown.status_code, unknown.json) == (200, {"email": "nobody@example.com"})
    bad = client.post("/subscribe/check", data={"email": "ann@clinic"})
    assert bad.status_code == 400 and bad.json["error"]["field"] == "email"
    assert client.post("/subscribe/check", data={}).json["error"]["message"] == "Please enter your email address."


def test_the_webinar_form_shows_the_newsletter_wording_once(live, page):
    app, base = live
    from mailer.campaigns import webinars
    import datetime as dt

    with session_scope(app.extensions["mailer"].sessions) as session:
        # 18:00 London time 9 days on: a time that always exists there (the UTC time of day, taken
        # as London's, was 01:30 on 28 March 2027, the hour the clocks skip, for a run on the 19th).
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health",
                                  starts_local=dt.datetime.combine(utcnow().date() + dt.timedelta(days=9),
                                                                   dt.time(18, 0)),
                                  timezone="Europe/London", capacity=30, join_url="https://meet.example.org/s",
                                  now=utcnow())
        session.flush()
        webinars.publish(session, w.id)
    page.goto(f"{base}/webinars/spine-health")
    label = page.locator("label.consent").inner_text()
    assert label.lower().count("monthly newsletter") == 1, label
    assert not label.startswith("Also send me")


def test_the_consent_history_shows_source_pages_without_tokens(live, smtp_server, page):
    app, base = live
    client = app.test_client()
    signup(client, "ada@example.com", "Ada", source_url="https://clinic.example/blog/posture?utm_source=mail")
    app.extensions["mailer"].drain()
    text = smtp_server.received[-1].message.get_body(preferencelist=("plain",)).get_content()
    confirm = re.search(rf"{re.escape(base)}/confirm/\S+", text).group(0)
    token = confirm.rsplit("/", 1)[1]
    page.goto(confirm)
    expect(page.get_by_role("heading", level=1)).to_have_text("Subscription confirmed")
    with app.extensions["mailer"].read_sessions() as session:
        contact_id = session.scalar(sa.select(Contact.id).where(Contact.email == "ada@example.com"))

    log_in(page, base, path=f"/admin/contacts/{contact_id}")
    expect(page.get_by_role("heading", level=1)).to_have_text("ada@example.com")
    sources = page.locator("td.source").all_inner_texts()
    assert "https://clinic.example/blog/posture" in sources  # the page, without its query
    assert f"{base}/confirm/…" in sources
    assert token not in page.content() and "utm_source" not in page.content()
    shot(page, "consent-history")
    shot(page, "consent-history", phone=True)
