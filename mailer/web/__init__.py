"""Web layer: blueprints translate HTTP to domain calls and back."""
from __future__ import annotations

import importlib
from contextlib import contextmanager

from flask import Flask, current_app, jsonify, request
from flask_wtf.csrf import CSRFProtect

from mailer.consent import RequestContext
from mailer.db import session_scope
from mailer.rendering import format_local

csrf = CSRFProtect()
SETTINGS_MAX_AGE = 5.0


def mailer():
    return current_app.extensions["mailer"]


@contextmanager
def db_session():
    """A unit of work for one request: committed on success, rolled back on error."""
    with session_scope(mailer().sessions) as session:
        yield session


@contextmanager
def db_reader():
    """A read-only session for pages that only look."""
    with mailer().read_sessions() as session:
        yield session


def request_context(source_url: str | None = None) -> RequestContext:
    """The evidence for the consent ledger: where the person was and with what."""
    return RequestContext(
        source_url=(source_url or request.referrer or request.url)[:2000],
        ip=request.remote_addr,
        user_agent=(request.user_agent.string or "")[:500],
    )


def presented_token(*, allow_query: bool) -> str | None:
    """The bearer token from the Authorization header, or (where allowed) from ?token=."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return (request.args.get("token") or None) if allow_query else None


def error_json(code: str, message: str, field: str | None = None, status: int = 400):
    """The error object every JSON answer uses: {"error": {"code", "message", "field"}}."""
    return jsonify(error={"code": code, "message": message, "field": field}), status


def wants_json() -> bool:
    if request.is_json:
        return True
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]


def _security_headers(response):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # Links carry tokens: never leak them to another site in a Referer.
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if request.path.startswith("/admin"):
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; frame-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
    else:
        # Public pages may be embedded in the organisation's own site (iframe).
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self' data:")
    return response


def _fresh_settings() -> None:
    """What owners change on the settings page reaches every web process within
    SETTINGS_MAX_AGE seconds, at one small query per process per interval."""
    mailer().refresh_settings(max_age=SETTINGS_MAX_AGE)


def register(app: Flask) -> None:
    from mailer.contacts import PublicLists
    from mailer.web import (admin, api, archive, auth, contacts_admin, hooks, newsletters_admin, public,
                            staff_admin, tracking, webinar_pages, webinars_admin)
    from mailer.web import deliveries_admin
    from mailer.web import import_admin
    from mailer.web.ratelimit import SlidingWindowLimiter

    for module in ("api_people", "api_outbox"):  # importing them adds their routes to api.bp
        importlib.import_module(f"mailer.web.{module}")
    settings = app.extensions["mailer"].settings
    app.extensions["signup_limiter"] = SlidingWindowLimiter(settings.signup_rate_limit,
                                                            settings.signup_rate_window_seconds)
    app.extensions["login_limiter"] = SlidingWindowLimiter(20, 300)
    app.extensions["public_lists"] = PublicLists()
    csrf.init_app(app)
    # Embeddable cross-site forms (honeypot, rate limit, double opt-in instead) and
    # token-authenticated machine endpoints; every staff form keeps its CSRF token.
    for blueprint in (public.bp, webinar_pages.bp, hooks.bp, api.bp):
        csrf.exempt(blueprint)
    for blueprint in (public.bp, webinar_pages.bp, archive.bp, tracking.bp, auth.bp, admin.bp,
                      newsletters_admin.bp, webinars_admin.bp, contacts_admin.bp, deliveries_admin.bp, hooks.bp, api.bp,
                      staff_admin.bp, import_admin.bp):
        app.register_blueprint(blueprint)
    app.after_request(_security_headers)
    app.before_request(_fresh_settings)
    app.context_processor(lambda: {"settings": mailer().settings})
    app.add_template_filter(format_local, "local_time")
