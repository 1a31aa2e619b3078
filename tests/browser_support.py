"""What the real-browser tests share: Debian's Chromium driven by Playwright, a skip
(locally) or a failure (CI=true) when it is missing, screenshots, and the app served
over real HTTP on 127.0.0.1."""
from __future__ import annotations

import contextlib
import os
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
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
TIMEOUT_MS = 5000

__all__ = ["browser", "expect", "live_app", "serving", "shot", "TIMEOUT_MS"]


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


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


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
