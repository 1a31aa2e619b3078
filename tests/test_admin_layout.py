"""The staff console's look: vendored Pico CSS, nothing loaded from another site, a header
that fits a phone."""
from __future__ import annotations

from html.parser import HTMLParser

import pytest

from mailer.staff import users
from mailer.db import session_scope
from tests import browser_support, test_admin
from tests.browser_support import live_app, nav_link, serving
from tests.test_admin import PASSWORD, login

browser = browser_support.browser  # the shared Chromium (a pytest fixture)
dev_app = test_admin.dev_app  # the app with one owner and the dev mailbox (a pytest fixture)

PAGES = ("/admin/", "/admin/newsletters", "/admin/newsletters/new", "/admin/webinars", "/admin/webinars/new",
         "/admin/mailbox", "/admin/lists", "/admin/lists/1")


class _Resources(HTMLParser):
    """Every address the page makes the browser load, and any inline script or style."""

    def __init__(self):
        super().__init__()
        self.urls, self.inline = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "link":
            self.urls.append(attrs.get("href"))
        elif tag in ("script", "img", "iframe", "source", "audio", "video"):
            if attrs.get("src"):
                self.urls.append(attrs["src"])
            elif tag == "script":
                self.inline.append("<script> without src")
        elif tag == "style":
            self.inline.append("<style>")
        if "style" in attrs:
            self.inline.append(f"style attribute on <{tag}>")


def _same_origin(url: str) -> bool:
    return url.startswith("/") and not url.startswith("//")


def test_admin_pages_load_only_their_own_resources(dev_app):
    client = dev_app.test_client()
    login(client)
    for path in ("/admin/login", *PAGES):
        response = client.get(path)
        assert response.status_code == 200, path
        found = _Resources()
        found.feed(response.text)
        assert found.urls, path
        assert [u for u in found.urls if not _same_origin(u)] == [], path
        assert found.inline == [], path
        assert "/static/vendor/pico/pico.min.css" in found.urls, path
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]


def test_the_vendored_css_is_served(dev_app):
    client = dev_app.test_client()
    css = client.get("/static/vendor/pico/pico.min.css")
    assert css.status_code == 200
    assert css.mimetype == "text/css"
    assert b"Pico CSS" in css.data[:200]
    # It must not pull anything in from elsewhere (fonts, imports): only inline data: icons.
    assert b"@import" not in css.data
    assert css.data.count(b"url(") == css.data.count(b'url("data:')
    assert client.get("/static/admin.css").status_code == 200


@pytest.fixture
def console(database_url, tmp_path):
    app, port = live_app(database_url, tmp_path)
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "staff@clinic.example", PASSWORD)
    with serving(app, port) as base:
        yield base
    app.extensions["mailer"].engine.dispose()


@pytest.mark.parametrize("width", [1280, 390])
def test_header_and_pages_fit_the_screen(console, browser, width):
    context = browser.new_context(viewport={"width": width, "height": 800})
    page = context.new_page()
    elsewhere = []
    page.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith((console, "data:")) else None)
    page.goto(f"{console}/admin/login")
    page.get_by_label("Email").fill("staff@clinic.example")
    page.get_by_label("Password").fill(PASSWORD)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()
    for path in PAGES:
        page.goto(console + path)
        # No sideways scrolling: the nav wraps, tables scroll inside their own box.
        assert page.evaluate("document.documentElement.scrollWidth") <= width, path
        for name in ("Dashboard", "Newsletters", "Webinars", "Mailbox", "Audit log"):
            link = nav_link(page, name)  # opens its group (Mail, Admin) when it is in one
            box = link.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, (path, name)
            assert page.evaluate("document.documentElement.scrollWidth") <= width, (path, name)
        page.keyboard.press("Escape")  # closes the open group (admin_nav.js)
        assert page.locator("nav.top details[open]").count() == 0, path
        if width >= 1280:  # the nav's links and groups stay on one line (a second would start 30+ px lower)
            nav = page.evaluate("""() => {
                const items = [...document.querySelectorAll('nav.top > ul > li')].map(li => li.getBoundingClientRect());
                const tops = items.map(r => r.top);
                return {spread: Math.max(...tops) - Math.min(...tops), height: document.querySelector('nav.top').getBoundingClientRect().height};
            }""")
            assert nav["spread"] < 10 and nav["height"] < 80, (path, nav)
        logout = page.get_by_role("button", name="Log out").bounding_box()
        assert logout and logout["x"] + logout["width"] <= width, path
        # Pico is in force: its font stack, not the browser's default serif.
        assert "system-ui" in page.evaluate("getComputedStyle(document.body).fontFamily")
    assert elsewhere == []
    context.close()
