"""Public pages: signup (two steps, embeddable), confirm, unsubscribe, liveness."""
from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify, redirect, render_template, request, url_for

from mailer.audience import contacts
from mailer.db import utcnow
from mailer.errors import InvalidInput
from mailer.models import MailingList, SignupRequest
from mailer.web import db_reader, db_session, error_json, mailer, ratelimit, request_context, wants_json

bp = Blueprint("public", __name__)


def _embedded() -> bool:
    """?embed=1: the page sits in an iframe on the organisation's site, so no site chrome.
    Without a query string there is nothing to parse (request.args: 3.6 µs)."""
    return bool(request.query_string) and request.args.get("embed") == "1"


@bp.context_processor
def _embed_mode():
    return {"embed": _embedded()}

HONEYPOT_FIELD = "website"
SIGNUP_DONE = "Almost done: we have sent you an email. Click the link in it to confirm your subscription."


def _form_lists(session, slugs):
    mailing_lists = contacts.public_lists(session, slugs)
    return [(ml, contacts.current_wording(session, ml.id)) for ml in mailing_lists]


def _signup_input() -> dict:
    if request.is_json:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            raise InvalidInput("body", "Send a JSON object.")
        lists = data.get("lists")
        consent_version = data.get("consent_version")
        consent_given = data.get("consent") is True
    else:
        form = request.form
        lists = form.getlist("lists")
        data = form.to_dict()  # the first value of each field; missing ones cost no KeyError inside MultiDict.get
        consent_version = data.get("consent_version")
        consent_given = data.get("consent") in {"yes", "on", "1", "true"}
    if isinstance(lists, str):
        lists = [lists]
    if lists is not None and (not isinstance(lists, list) or not all(isinstance(x, str) for x in lists)):
        raise InvalidInput("lists", "lists must be a list of list names.")
    try:
        consent_version = int(consent_version) if consent_version not in (None, "") else None
    except (TypeError, ValueError):
        raise InvalidInput("consent_version", "consent_version must be a number.") from None
    fields = {}
    for name in ("email", "name", "timezone", "source_url", HONEYPOT_FIELD, "step"):
        value = data.get(name)
        fields[name] = value if isinstance(value, str) else ""
    return dict(fields, lists=lists or None, consent_version=consent_version, consent_given=consent_given)


def _render_form(step: int, values: dict, error: InvalidInput | None = None, status: int = 200):
    # Only reads: a read-only session, so showing the form (or an error on it) never takes
    # SQLite's write lock that the signups queue for.
    with db_reader() as session:
        try:
            choices = _form_lists(session, values.get("lists"))
        except InvalidInput as exc:
            if isinstance(exc, contacts.ListClosed):  # say so, rather than offer another list silently
                error = error or exc
            try:
                choices = _form_lists(session, None)
            except contacts.ListClosed as closed:  # the default list is archived too: nothing to offer
                return render_template("public/message.html", title="Signups closed", message=closed.message), 410
        page = render_template("public/subscribe.html", step=step, values=values, choices=choices, error=error,
                               honeypot=HONEYPOT_FIELD)
    return page, status


def _done():
    if wants_json():
        return jsonify(status="pending_confirmation", message=SIGNUP_DONE), 200
    # The same page for everyone, so render it once per process (and embed mode).
    pages = current_app.extensions.setdefault("signup_done_pages", {})
    embed = _embedded()
    if embed not in pages:
        pages[embed] = render_template("public/message.html", title="Check your inbox", message=SIGNUP_DONE)
    return pages[embed], 200


def _error(exc: InvalidInput, values: dict, step: int, status: int = 400):
    if wants_json():
        return error_json(exc.code, exc.message, exc.field, status)
    return _render_form(step, values, exc, status)


@bp.get("/subscribe")
def subscribe_form():
    return _render_form(1, {"lists": request.args.getlist("lists") or None})


@bp.post("/subscribe")
def subscribe():
    try:
        values = _signup_input()
    except InvalidInput as exc:
        return _error(exc, {}, 1)
    # Everything that reads only the form is done before the transaction, so the write lock
    # (SQLite: BEGIN IMMEDIATE) is held for two statements. The rate-limit counter (in the
    # database by default) and the signup then share that one transaction: one pool
    # checkout and one commit per signup, not two; on PostgreSQL one statement. A refused
    # answer commits its count too, without waiting for a durable commit (count_only).
    signup = error = address = None
    step_one = values["step"] == "1" and not wants_json()
    if values[HONEYPOT_FIELD]:
        pass  # a bot filled the hidden field: answer as usual, do nothing
    elif step_one:
        try:
            address = contacts.normalise_email(values["email"])
        except InvalidInput as exc:
            error = exc
    else:
        try:
            signup = contacts.signup_request(
                email=values["email"], name=values["name"], lists=values["lists"],
                consent_given=values["consent_given"], consent_version=values["consent_version"],
                timezone=values["timezone"], context=request_context(values["source_url"]), now=utcnow())
        except InvalidInput as exc:
            error = exc
    retry_after, counted = None, False
    public_lists = current_app.extensions["public_lists"]
    if signup is not None and ratelimit.keeps_in_one_statement("signup"):
        # PostgreSQL: count and keep in one statement on a connection in autocommit, one
        # round trip instead of BEGIN, two statements and COMMIT (increment_and_insert).
        with mailer().engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            try:
                contacts.check_signup(connection, public_lists, signup)
            except InvalidInput as exc:
                error = exc
            else:
                retry_after, counted = ratelimit.exceeded(
                    "signup", connection, keep=(SignupRequest.__table__, signup)), True
    if not counted:
        with mailer().engine.begin() as connection:
            retry_after = ratelimit.exceeded("signup", connection)
            stored = False
            if signup is not None and error is None and not retry_after:
                try:
                    contacts.accept_signup(connection, public_lists, signup)
                    stored = True
                except InvalidInput as exc:
                    error = exc
            if not stored:
                ratelimit.count_only(connection)
    if retry_after:
        return ratelimit.with_retry_after(_error(InvalidInput(
            "rate", "Too many signups from your network. Please try again in a minute."), values, 1, 429), retry_after)
    if values[HONEYPOT_FIELD]:
        return _done()
    if error:
        return _error(error, values, 1 if step_one or error.field == "email" else 2)
    if step_one:
        return _render_form(2, dict(values, email=address))
    return _done()


@bp.post("/subscribe/check")
def check_address():
    """Step 1 of the form asks here before step 2 (subscribe.js), so a visitor hears of a
    mistyped address before typing a name and ticking consent. The same rules as /subscribe
    (contacts.normalise_email) and nothing else: no lookup, so the answer is the same whether
    or not the address is known."""
    raw = request.form.get("email")
    try:
        return jsonify(email=contacts.normalise_email(raw if isinstance(raw, str) else "")), 200
    except InvalidInput as exc:
        return error_json(exc.code, exc.message, exc.field, 400)


def _link_page(result, status_for_invalid=404):
    titles = {
        contacts.LinkOutcome.CONFIRMED: ("Subscription confirmed", "Thank you! You are now subscribed to {list}."),
        contacts.LinkOutcome.ALREADY_CONFIRMED: ("Already confirmed", "You are already subscribed to {list}."),
        contacts.LinkOutcome.UNSUBSCRIBED: ("Unsubscribed", "You will receive no more email from {list}."),
        contacts.LinkOutcome.ALREADY_UNSUBSCRIBED: ("Unsubscribed", "You are not subscribed to {list}."),
        contacts.LinkOutcome.EXPIRED: ("Link expired", "This link has expired. Please sign up again."),
        contacts.LinkOutcome.INVALID: ("Link not valid", "This link is not valid. Please copy the whole link from the email."),
    }
    title, message = titles[result.outcome]
    status = status_for_invalid if result.outcome in (contacts.LinkOutcome.INVALID, contacts.LinkOutcome.EXPIRED) else 200
    if wants_json():
        return jsonify(status=result.outcome.value, message=message.format(list=result.list_name)), status
    return render_template("public/message.html", title=title, message=message.format(list=result.list_name)), status


@bp.get("/confirm/<token>")
def confirm(token: str):
    with db_session() as session:
        result = contacts.confirm(session, mailer().settings, token, context=request_context(), now=utcnow())
    return _link_page(result)


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str):
    with db_session() as session:
        sub = contacts.subscription_for_unsubscribe(session, mailer().settings, token)
        if sub is None:
            return _link_page(contacts.LinkResult(contacts.LinkOutcome.INVALID))
        return render_template("public/unsubscribe.html", token=token, list_name=sub.mailing_list.name,
                               subscribed=sub.status != "unsubscribed")


@bp.post("/unsubscribe/<token>")
def unsubscribe(token: str):
    """RFC 8058 one-click target, and the button on the page above."""
    with db_session() as session:
        result = contacts.unsubscribe(session, mailer().settings, token, context=request_context(), now=utcnow())
    return _link_page(result)


@bp.route("/preferences/<token>", methods=["GET", "POST"])
def preferences(token: str):
    """What this person gets: their name, and each list (ticking one starts double opt-in,
    unticking one unsubscribes at once). The signed link is the credential."""
    settings = mailer().settings
    change = None
    with db_session() as session:
        contact = contacts.contact_for_preferences(session, settings, token)
        if contact is None:
            return _link_page(contacts.LinkResult(contacts.LinkOutcome.INVALID))
        if request.method == "POST":
            change = contacts.update_preferences(session, settings, contact, name=request.form.get("name", ""),
                                                 wanted=set(request.form.getlist("lists")),
                                                 context=request_context(), now=utcnow())
        choices = contacts.preferences(session, contact)
        page = render_template("public/preferences.html", contact=contact, choices=choices, change=change,
                               title="Your preferences")
    return page


@bp.get("/favicon.ico")
def favicon():
    """For browsers and feed readers that ask at the root rather than read <link rel=icon>."""
    return redirect(url_for("static", filename="favicon.svg"), 301)


@bp.get("/livez")
def livez():
    """Liveness: the process answers. Touches nothing else (also the benchmark's baseline route)."""
    return "ok\n", 200, {"Content-Type": "text/plain"}


@bp.get("/")
def index():
    with db_session() as session:
        lists = session.scalars(sa.select(MailingList).where(MailingList.public, MailingList.archived_at.is_(None))
                                .order_by(MailingList.id)).all()
    return render_template("public/index.html", lists=lists)
