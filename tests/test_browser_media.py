"""Real-browser test (Chromium through Playwright) of the media library, on a desktop and
at a phone's 390 px: an editor uploads an image with alt text, sees it in the library,
inserts it into a newsletter from the editor's "Insert image", and sees it in the preview,
loaded from our own origin. Screenshots go to test-artifacts/screenshots/."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from mailer.staff import users
from mailer.db import session_scope
from tests import browser_support
from tests.browser_support import PHONE, TIMEOUT_MS, expect, live_app, serving, shot

browser = browser_support.browser  # the shared Chromium (a pytest fixture)
PASSWORD = "correct horse battery staple"
VIEWPORTS = {"desktop": {"width": 1400, "height": 900}, "phone": PHONE}


@pytest.fixture
def live(database_url, smtp_server, tmp_path):
    app, port = live_app(database_url, tmp_path, smtp_url=smtp_server.url)
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "editor@clinic.example", PASSWORD, "editor")
    with serving(app, port) as base:
        yield app, base
    app.extensions["mailer"].engine.dispose()


def photo_png() -> bytes:
    image = Image.new("RGB", (1800, 600), (20, 110, 80))
    for x in range(0, 1800, 60):  # stripes, so the screenshot shows it is a real picture
        for y in range(600):
            image.putpixel((x, y), (250, 250, 250))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def loaded(locator) -> bool:
    return locator.evaluate("img => img.complete && img.naturalWidth > 0")


def no_sideways_scroll(page) -> None:
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


@pytest.mark.parametrize("screen", VIEWPORTS)
def test_upload_then_insert_into_a_newsletter_and_preview(live, browser, screen):
    app, base = live
    ctx = browser.new_context(locale="en-GB", viewport=VIEWPORTS[screen])
    ctx.set_default_timeout(TIMEOUT_MS)
    page = ctx.new_page()
    try:
        page.goto(f"{base}/admin/media")
        page.get_by_label("Email").fill("editor@clinic.example")
        page.get_by_label("Password").fill(PASSWORD)
        with page.expect_navigation():
            page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Media")
        expect(page.get_by_text("No images yet.")).to_be_visible()

        # Not an image: refused, saying why; nothing stored.
        page.locator("#file").set_input_files({"name": "notes.png", "mimeType": "image/png",
                                                    "buffer": b"<html>hello</html>"})
        with page.expect_navigation():
            page.get_by_role("button", name="Upload").click()
        expect(page.get_by_role("alert")).to_contain_text("Not uploaded: This file is not an image mailer can read")
        expect(page.get_by_text("No images yet.")).to_be_visible()

        page.locator("#file").set_input_files({"name": "room.png", "mimeType": "image/png",
                                                    "buffer": photo_png()})
        page.locator("#alt").fill("Our new treatment room")
        with page.expect_navigation():
            page.get_by_role("button", name="Upload").click()
        expect(page.locator("p.flash")).to_have_text("Uploaded: 1200 × 400 pixels.")
        picture = page.locator("li.media-item img")
        expect(picture).to_have_attribute("alt", "Our new treatment room")
        page.wait_for_function("() => document.querySelector('li.media-item img').naturalWidth > 0")
        assert picture.evaluate("img => new URL(img.src).origin") == base
        snippet = page.locator("li.media-item input.snippet").input_value()
        assert snippet.startswith(f"![Our new treatment room]({base}/media/") and snippet.endswith(".png)")
        expect(page.locator("li.media-item")).to_contain_text("1200 × 400 px")
        ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
        page.get_by_role("button", name="Copy").click()  # shown by JavaScript
        expect(page.get_by_role("button", name="Copied")).to_be_visible()
        assert page.evaluate("navigator.clipboard.readText()") == snippet
        no_sideways_scroll(page)
        shot(page, f"media-1-library-{screen}")

        page.goto(f"{base}/admin/newsletters/new")
        page.get_by_label("Subject", exact=True).fill("A new room")
        page.get_by_label("Body").fill("Hello {{ contact.first_name }},\n\nSee where we treat you now.")
        page.get_by_label("Body").press("End")
        page.get_by_text("Insert image").click()
        expect(page.locator("#insert-image img")).to_be_visible()
        page.get_by_role("button", name="Insert").click()
        assert page.get_by_label("Body").input_value() == (
            f"Hello {{{{ contact.first_name }}}},\n\nSee where we treat you now.\n\n{snippet}")
        frame = page.frame_locator("#preview-holder iframe:not([hidden])")
        shown = frame.locator("img[alt='Our new treatment room']")
        expect(shown).to_be_visible()
        page.wait_for_timeout(50)
        for _ in range(40):  # loaded from our origin through the preview's sandbox policy
            if loaded(shown):
                break
            page.wait_for_timeout(100)
        assert loaded(shown)
        assert shown.evaluate("img => img.getBoundingClientRect().width") <= 600
        no_sideways_scroll(page)
        page.locator("#preview-holder").scroll_into_view_if_needed()
        shot(page, f"media-2-editor-preview-{screen}")
    finally:
        ctx.close()
