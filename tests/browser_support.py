"""What the real-browser tests share: Debian's Chromium driven by Playwright, a skip
(locally) or a failure (CI=true) when it is missing, screenshots (full page, desktop and
phone width) in one artifacts directory, and the app served over real HTTP on 127.0.0.1."""
from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from mailer import create_app
from tests.conftest import settings_for
from tests.smtp_server import free_port

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # reported by the `browser` fixture: a skip locally, a failure in CI
    expect = sync_playwright = None

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IN_CI = os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}
# Every screenshot lands here, named "<test>--<page>.png" and overwritten by the next run.
SCREENSHOTS = Path(os.environ.get("MAILER_TEST_ARTIFACTS")
                   or Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots")
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 5000

__all__ = ["action", "browser", "nav_link", "expect", "live_app", "serving", "shot", "shoot_open_pages", "PHONE", "SCREENSHOTS",
           "TIMEOUT_MS"]


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"{reason}; CI must run the browser tests (.ci/run installs chromium)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        _unavailable(f"{CHROMIUM} is not installed (apt-get install chromium)")
    if sync_playwright is None:
        _unavailable("playwright is not installed (pip install -r requirements-dev.txt)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _file_name(test: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", test).strip("_") or "test"


def _current_test() -> str:
    """The running test's function name (with its parameters), from what pytest sets."""
    return _file_name(os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0].rsplit("::", 1)[-1])


def shot(page, name: str, *, phone: bool = False) -> Path:
    """A full-page PNG of what the page shows now; phone=True lays it out 390 px wide first
    (and puts the page's own size back afterwards)."""
    path = SCREENSHOTS / f"{_current_test()}--{name}{'-phone' if phone else ''}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not phone:
        page.screenshot(path=str(path), full_page=True)
        return path
    size = page.viewport_size
    page.set_viewport_size(PHONE)
    try:
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(size)
    return path


def shoot_open_pages(item, failed: bool, backend: str) -> None:
    """After a failed browser test (called from tests/conftest.py): every page it still has
    open, so CI's artifacts show what the browser showed when the assertion failed. After a
    pass: the test's failure pictures of an earlier run on this backend are removed."""
    prefix = f"{_file_name(item.name)}--FAILED-{backend}-"
    for old in SCREENSHOTS.glob(f"{prefix}*.png"):
        old.unlink(missing_ok=True)
    chromium = item.funcargs.get("browser")
    if not failed or chromium is None or not chromium.is_connected():
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    pages = [p for ctx in chromium.contexts for p in ctx.pages if not p.is_closed()]
    for number, page in enumerate(pages, 1):
        path = SCREENSHOTS / f"{prefix}{number}.png"
        try:
            page.screenshot(path=str(path), full_page=True, timeout=TIMEOUT_MS)
        except Exception as exc:  # the test's own failure is what matters; say why there is no picture
            print(f"no failure screenshot of {page.url}: {exc}")


def action(page, name: str):
    """A link styled as a button, or a button: the staff pages' restyling may make it either."""
    return page.get_by_role("link", name=name, exact=True).or_(page.get_by_role("button", name=name, exact=True))


def nav_link(page, name: str):
    """A link of the staff nav by its name, as a person reaches it: a link inside one of the
    nav's groups (Mail, Audience, Admin) is shown by opening its group first."""
    nav = page.get_by_role("navigation", name="Main")
    inside = page.locator("a", has_text=re.compile(rf"^{re.escape(name)}$"))
    for other in nav.locator("details[open]").filter(has_not=inside).all():  # its menu may cover the group
        other.locator("summary").click()
    group = nav.locator("details").filter(has=inside)
    if group.count() and group.first.get_attribute("open") is None:
        group.first.locator("summary").click()
    return nav.get_by_role("link", name=name, exact=True)


@contextlib.contextmanager
def serving(wsgi_app, port: int):
    """Serve a WSGI app on 127.0.0.1:port over real HTTP until the block ends."""
    server = make_server("127.0.0.1", port, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def live_app(database_url, tmp_path, **overrides):
    """The app with base_url pointing at the port it is about to be served on, so mailed links work."""
    port = free_port()
    settings = settings_for(database_url, tmp_path, **overrides)
    settings["base_url"] = f"http://127.0.0.1:{port}"
    return create_app(settings), port
