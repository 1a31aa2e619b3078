"""Real-browser test (Chromium through Playwright) of the Deliverability page: an owner
opens it from the menu, sees the three records to publish, checks the DNS (a real DNS
server on 127.0.0.1 holding a good SPF record, the wrong DKIM key and no DMARC record) and
reads what is wrong, at desktop width and on a 390 px phone without sideways scrolling.
Set up as tests/test_browser.py: skipped without /usr/bin/chromium, except in CI (CI=true)."""
from __future__ import annotations

import pytest

from mailer.db import session_scope
from mailer.staff import users
from tests import browser_support
from tests.browser_support import TIMEOUT_MS, expect, live_app, nav_link, serving, shot
from tests.dns_server import DNSServer
from tests.test_deliverability import SELECTOR, settings_with_key

browser = browser_support.browser  # the shared Chromium (a pytest fixture)
PASSWORD = "correct horse battery staple"
OTHER_KEY = ("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0"
             "gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyeh")


@pytest.fixture
def live(database_url, smtp_server, tmp_path):
    settings_with_key(tmp_path, "clinic.example")  # writes the DKIM key the app reads
    records = {"clinic.example": ["v=spf1 ip4:192.0.2.10 ~all"], f"{SELECTOR}._domainkey.clinic.example": [OTHER_KEY]}
    with DNSServer(records) as dns:
        app, port = live_app(database_url, tmp_path, smtp_url=smtp_server.url, dkim_selector=SELECTOR,
                             dns_resolver=dns.address)
        m = app.extensions["mailer"]
        with session_scope(m.sessions) as session:
            users.create_user(session, "owner@clinic.example", PASSWORD, "owner")
        with serving(app, port) as base:
            yield base
        m.engine.dispose()


def fits(page, width) -> None:
    assert page.evaluate("document.documentElement.scrollWidth") <= width


@pytest.mark.parametrize("width", [1400, 390])
def test_an_owner_sees_what_to_publish_and_what_is_wrong(live, browser, width):
    ctx = browser.new_context(locale="en-GB", viewport={"width": width, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    try:
        page.goto(f"{live}/admin/")
        page.get_by_label("Email").fill("owner@clinic.example")
        page.get_by_label("Password").fill(PASSWORD)
        with page.expect_navigation():
            page.get_by_role("button", name="Log in").click()
        with page.expect_navigation():
            nav_link(page, "Deliverability").click()  # in the nav's Admin group
        expect(page.get_by_role("heading", level=1)).to_have_text("Deliverability")
        for kind in ("SPF", "DKIM", "DMARC"):
            expect(page.get_by_role("heading", name=kind, exact=True)).to_be_visible()
        expect(page.locator("#record-dkim")).to_contain_text(f"{SELECTOR}._domainkey.clinic.example")
        expect(page.locator("#record-dkim")).to_contain_text("v=DKIM1; k=rsa; p=MIIB")
        expect(page.locator("#record-dmarc")).to_contain_text("v=DMARC1; p=none; rua=mailto:dmarc-reports@clinic.example")
        fits(page, width)
        shot(page, f"deliverability-{width}", phone=width < 500)
        with page.expect_navigation():
            page.get_by_role("button", name="Check the DNS now").click()
        expect(page.locator("#record-spf .dns-status")).to_have_text("ok")
        expect(page.locator("#record-dkim .dns-status")).to_have_text("wrong")
        expect(page.locator("#record-dkim")).to_contain_text("The published key is not the one mailer signs with")
        expect(page.locator("#record-dmarc .dns-status")).to_have_text("missing")
        expect(page.locator("#record-dmarc")).to_contain_text("No DMARC record at _dmarc.clinic.example.")
        fits(page, width)
        shot(page, f"deliverability-checked-{width}", phone=width < 500)
    finally:
        ctx.close()
