"""Error pages: 404, 410 and 500 in the layout of the site the person was on (the staff
console under /admin, the public pages elsewhere); JSON for the API and for clients that
ask for JSON. A 500 page says nothing of the exception (Flask has logged it)."""
from __future__ import annotations

import logging

from flask import Flask, g, render_template, request
from werkzeug.exceptions import HTTPException

from mailer.web import error_json, wants_json

log = logging.getLogger(__name__)

# status → (title, what the person reads, JSON code)
PAGES = {
    404: ("Page not found", "There is no page at this address. The link may be mistyped or out of date.",
          "not_found"),
    410: ("No longer here", "What was at this address has been taken down.", "gone"),
    500: ("Something went wrong", "Something went wrong on our side and it has been logged. Please try again "
          "in a moment.", "internal_error"),
}


def _staff_user():
    """The logged-in staff member, for the console's nav on an error page; None on any trouble
    (the 500 page must render even when the database is what failed)."""
    from mailer.web.admin.auth import session_user

    try:
        return session_user()
    except Exception:  # noqa: BLE001 - an error page never raises; the first error is logged already
        log.warning("error page without the staff nav: the session user could not be read")
        return None


def error_page(exc: HTTPException):
    from mailer.web.api.api import is_api_path, routing_error

    status = exc.code if exc.code in PAGES else 500
    if is_api_path():
        return routing_error(exc)  # the API's JSON error object
    title, message, code = PAGES[status]
    if status == 404 and exc.description and exc.description != type(exc).description:
        message = exc.description  # a view's own reason ("That list does not exist.")
    if wants_json():
        return error_json(code, message, status=status)
    if request.path == "/admin" or request.path.startswith("/admin/"):
        g.user = getattr(g, "user", None) or _staff_user()
        return render_template("admin/error.html", title=title, message=message, status=status), status
    return render_template("public/error.html", title=title, message=message, status=status), status


def register(app: Flask) -> None:
    for status in PAGES:
        app.register_error_handler(status, error_page)
