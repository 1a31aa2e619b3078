"""Public webinar pages: the list, a reservation page, registering, cancelling a seat."""
from __future__ import annotations

import datetime as dt

from flask import Blueprint, abort, current_app, jsonify, render_template, request

from mailer import contacts, webinars
from mailer.db import utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.rendering import format_local, markdown_to_html
from mailer.web import db_reader, db_session, error_json, mailer, request_context, wants_json

bp = Blueprint("webinars", __name__)

HONEYPOT_FIELD = "website"
REGISTERED = ("Thank you! We have emailed you the details: your seat and the join link, "
              "or your place on the waitlist if the webinar is full.")


@bp.get("/webinars")
def listing():
    with db_reader() as session:
        items = [(w, webinars.seats_left(session, w)) for w in webinars.upcoming(session, utcnow())]
    return render_template("public/webinars.html", items=items, title="Free webinars")


def _page(slug: str, values: dict, error: InvalidInput | None = None, status: int = 200):
    with db_reader() as session:
        webinar = webinars.published_by_slug(session, slug)
        if webinar is None:
            abort(404)
        wording = contacts.newsletter_wording(session)
        page = render_template(
            "public/webinar.html", webinar=webinar, values=values, error=error, wording=wording,
            honeypot=HONEYPOT_FIELD, seats_left=webinars.seats_left(session, webinar),
            description=markdown_to_html(webinar.description_md),
            starts_organiser=format_local(webinar.starts_at, webinar.timezone),
            starts_iso=webinar.starts_at.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z"),
            started=webinar.starts_at <= utcnow(), title=webinar.title)
    return page, status


@bp.get("/webinars/<slug>")
def page(slug: str):
    return _page(slug, {})


@bp.post("/webinars/<slug>/register")
def register(slug: str):
    data = request.get_json(silent=True) if request.is_json else request.form
    if not hasattr(data, "get"):
        return _answer_error(slug, InvalidInput("body", "Send a JSON object."), {})
    values = {k: data.get(k) if isinstance(data.get(k), str) else "" for k in
              ("email", "name", "timezone", "newsletter_version", HONEYPOT_FIELD, "source_url")}
    newsletter = data.get("newsletter") in (True, "yes", "on", "1", "true")
    if not current_app.extensions["signup_limiter"].allow(request.remote_addr or "?"):
        return _answer_error(slug, InvalidInput("rate", "Too many requests from your network. Please try again in a "
                                                        "minute."), values, 429)
    if values[HONEYPOT_FIELD]:
        return _registered()
    try:
        version = int(values["newsletter_version"]) if values["newsletter_version"] else None
        with db_session() as session:
            webinars.register(session, mailer().settings, slug, email=values["email"], name=values["name"],
                              timezone=values["timezone"], newsletter=newsletter, newsletter_version=version,
                              context=request_context(values["source_url"]), now=utcnow())
    except ValueError:
        return _answer_error(slug, InvalidInput("newsletter_version", "Reload the page and try again."), values)
    except NotFound:
        abort(404)
    except InvalidInput as exc:
        return _answer_error(slug, exc, values)
    return _registered()


def _registered():
    if wants_json():
        return jsonify(status="registered_or_waitlisted", message=REGISTERED), 200
    return render_template("public/message.html", title="Check your inbox", message=REGISTERED), 200


def _answer_error(slug: str, exc: InvalidInput, values: dict, status: int = 400):
    if wants_json():
        return error_json(exc.code, exc.message, exc.field, status)
    return _page(slug, values, exc, status)


@bp.get("/webinars/<slug>/cancel/<token>")
def cancel_page(slug: str, token: str):
    with db_reader() as session:
        registration = webinars.registration_by_token(session, token)
        if registration is None or registration.webinar.slug != slug:
            abort(404)
        return render_template("public/webinar_cancel.html", registration=registration,
                               webinar=registration.webinar, token=token, title="Cancel your seat")


@bp.post("/webinars/<slug>/cancel/<token>")
def cancel(slug: str, token: str):
    """The button on the page above, and the RFC 8058 one-click target of these mails."""
    with db_session() as session:
        registration = webinars.registration_by_token(session, token)
        if registration is None or registration.webinar.slug != slug:
            abort(404)
        webinars.cancel_registration(session, token, now=utcnow())
        title = registration.webinar.title
    message = f"Your place for {title} is released. Thank you for letting us know."
    if wants_json():
        return jsonify(status="cancelled", message=message), 200
    return render_template("public/message.html", title="Seat released", message=message), 200
