"""Public webinar pages: the list, a reservation page, registering, cancelling a seat.
Seats are shown as a band (webinars.SeatBand), never a number, and registering only
stores the request for the worker: neither tells a visitor whether an address is known."""
from __future__ import annotations

import datetime as dt

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request

from mailer.audience import contacts
from mailer.campaigns import webinars
from mailer.db import utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.clock import format_local
from mailer.delivery.rendering import markdown_to_html
from mailer.web import db_reader, db_session, error_json, mailer, request_context, wants_json
from mailer.web import ratelimit

bp = Blueprint("webinars", __name__)

HONEYPOT_FIELD = "website"
REGISTERED = ("Thank you! Please check your email: we are sending you the details, with your seat and the join "
              "link, or your place on the waitlist if the webinar is full.")
SEATS = {
    webinars.SeatBand.OPEN: "Free, open to all",
    webinars.SeatBand.AVAILABLE: "Seats available",
    webinars.SeatBand.FEW: "A few seats left",
    webinars.SeatBand.FULL: "Full — join the waitlist",
}
# The list of webinars says it in one word.
LISTED_SEATS = dict(SEATS, **{webinars.SeatBand.FULL: "Waitlist"})
WAITLIST_NOTE = ("All seats are taken. Join the waitlist and you are in line for the next free seat: if someone "
                 "gives theirs back, it is yours and we email you the join link at once. Until then you do not get "
                 "the join link.")


@bp.get("/webinars")
def listing():
    with db_reader() as session:
        items = [(w, LISTED_SEATS[webinars.public_seats(session, w)]) for w in webinars.upcoming(session, utcnow())]
    return render_template("public/webinars.html", items=items, title="Free webinars")


def _not_here(session, slug: str):
    """410 with a page of its own for a cancelled webinar (its address is in mails and
    calendars), with the webinars to come; 404 for anything else."""
    cancelled = webinars.cancelled_by_slug(session, slug)
    if cancelled is None:
        abort(404)
    page = render_template("public/webinar_cancelled.html", webinar=cancelled, items=[
        (w, LISTED_SEATS[webinars.public_seats(session, w)]) for w in webinars.upcoming(session, utcnow())],
        title=f"Cancelled: {cancelled.title}")
    abort(Response(page, 410, mimetype="text/html"))


def _page(slug: str, values: dict, error: InvalidInput | None = None, status: int = 200):
    with db_reader() as session:
        webinar = webinars.published_by_slug(session, slug)
        if webinar is None:
            _not_here(session, slug)
        wording = contacts.newsletter_wording(session)
        band = webinars.public_seats(session, webinar)
        page = render_template(
            "public/webinar.html", webinar=webinar, values=values, error=error, wording=wording,
            honeypot=HONEYPOT_FIELD, seats=SEATS[band], full=band == webinars.SeatBand.FULL,
            waitlist_note=WAITLIST_NOTE,
            description=markdown_to_html(webinar.description_md),
            starts_organiser=format_local(webinar.starts_at, webinar.timezone), starts_iso=_iso(webinar.starts_at),
            started=webinar.starts_at <= utcnow(), title=webinar.title)
    return page, status


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


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
    failure: Exception | None = None
    try:
        version = int(values["newsletter_version"]) if values["newsletter_version"] else None
    except ValueError:
        failure = InvalidInput("newsletter_version", "Reload the page and try again.")
    now = utcnow()
    # The rate-limit count and the registration share one transaction, as a signup's do
    # (public.subscribe): one commit, and a request that keeps nothing does not wait for
    # a durable one (ratelimit.count_only). One insert, no read about the address: the
    # worker registers (process-signups job).
    with mailer().engine.begin() as connection:
        retry_after = ratelimit.exceeded("webinar", connection)
        stored = False
        if not retry_after and failure is None:
            try:
                webinar = webinars.open_for_registration(connection, slug, now)
                if not values[HONEYPOT_FIELD]:  # a bot filled the hidden field: answer as usual, keep nothing
                    webinars.accept_registration(
                        connection, current_app.extensions["public_lists"], webinar.id, email=values["email"],
                        name=values["name"], timezone=values["timezone"], newsletter=newsletter,
                        newsletter_version=version, context=request_context(values["source_url"]), now=now)
                    stored = True
            except (NotFound, InvalidInput) as exc:  # nothing was written but the count
                failure = exc
        if not stored:
            ratelimit.count_only(connection)
    if retry_after:
        return ratelimit.with_retry_after(_answer_error(slug, InvalidInput(
            "rate", "Too many requests from your network. Please try again in a minute."), values, 429), retry_after)
    if isinstance(failure, NotFound):
        if wants_json():
            abort(404)
        with db_reader() as session:
            _not_here(session, slug)
    if failure is not None:
        return _answer_error(slug, failure, values)
    return _registered(webinar)


def _registered(webinar):
    """The same answer for every address: what happens next, and when the webinar is."""
    if wants_json():
        return jsonify(status="check_your_email", message=REGISTERED, webinar=webinar.title,
                       starts_at=_iso(webinar.starts_at)), 200
    return render_template("public/webinar_registered.html", title="Check your inbox", message=REGISTERED,
                           webinar=webinar, starts_iso=_iso(webinar.starts_at),
                           starts_organiser=format_local(webinar.starts_at, webinar.timezone)), 200


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
    message = (f"Your place for {title} is released. Thank you for letting us know. We are emailing you a"
               " confirmation (it takes the webinar out of your calendar).")
    if wants_json():
        return jsonify(status="cancelled", message=message), 200
    return render_template("public/message.html", title="Seat released", message=message), 200


@bp.get("/webinars/<slug>/stop-mail/<token>")
def stop_mail_page(slug: str, token: str):
    """Where the List-Unsubscribe link of webinar mail leads: a button, not an action on
    GET (mail scanners follow links). It stops reminders; the seat is kept."""
    with db_reader() as session:
        registration = webinars.registration_by_token(session, token)
        if registration is None or registration.webinar.slug != slug:
            abort(404)
        return render_template("public/webinar_stop_mail.html", registration=registration,
                               webinar=registration.webinar, token=token,
                               title="Reminders stopped" if registration.mail_stopped_at else "Stop reminders")


@bp.post("/webinars/<slug>/stop-mail/<token>")
def stop_mail(slug: str, token: str):
    """The button above, and the RFC 8058 one-click target of webinar mail."""
    with db_session() as session:
        registration = webinars.registration_by_token(session, token)
        if registration is None or registration.webinar.slug != slug:
            abort(404)
        webinars.stop_mail(session, token, now=utcnow())
        if wants_json():
            return jsonify(status="stopped", message="No more reminders about this webinar; the seat is kept."), 200
        return render_template("public/webinar_stop_mail.html", registration=registration,
                               webinar=registration.webinar, token=token, title="Reminders stopped")
