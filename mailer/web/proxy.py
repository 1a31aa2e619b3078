"""Running behind reverse proxies: trust the forwarded client address, scheme and host
from exactly MAILER_PROXY_COUNT proxies, and mark cookies Secure on https requests.
Also where the session cookie is made: renewed on page loads only."""
from __future__ import annotations

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix


class _SessionCookies(SecureCookieSessionInterface):
    """The session cookie is Secure when the base URL is https, and also whenever the
    request came over https (as the trusted proxy reports it).

    A request renews the session's expiry only when the browser navigates to a page (or the
    request changed the session). A background request (the editor's live preview, a preview
    frame) answers without the cookie: it carries the session as it was when the request
    started, and a flash message the next page already showed would come back on the page
    after it. Browsers that send no Sec-Fetch-Dest keep Flask's renewal on every request."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return super().get_cookie_secure(app) or request.is_secure

    def should_set_cookie(self, app: Flask, session) -> bool:
        return session.modified or (super().should_set_cookie(app, session)
                                    and request.headers.get("Sec-Fetch-Dest", "document") == "document")


def trust_proxies(app: Flask, proxy_count: int) -> None:
    """With proxy_count 0 the forwarded headers are ignored: the client address is the
    connecting peer, so nobody can claim another address by sending X-Forwarded-For.
    With n, werkzeug's ProxyFix takes the n-th address from the right of each header,
    the one the outermost trusted proxy saw."""
    if proxy_count < 0:
        raise ValueError("MAILER_PROXY_COUNT must be 0 or more")
    app.session_interface = _SessionCookies()
    if proxy_count:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxy_count, x_proto=proxy_count, x_host=proxy_count)
