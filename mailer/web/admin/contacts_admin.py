"""Staff pages for contacts: search, detail, the front desk (add a contact with how their
consent was obtained, correct name and zone, unsubscribe, invite again by double opt-in),
per-person data export (Art. 15) and erasure (Art. 17), and the streamed bulk export.
Exports and erasure are for owners; the front desk for owners and editors."""
from __future__ import annotations

import json

import sqlalchemy as sa
from flask import Blueprint, Response, flash, g, redirect, render_template, request, stream_with_context, url_for

from mailer import privacy
from mailer.audience import bulk, contacts, directory, frontdesk
from mailer.campaigns import sequences
from mailer.db import utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.models import MailingList, Role, SequenceStatus, Subscription, SubscriptionStatus
from mailer.web import db_reader, db_session, mailer
from mailer.staff import jobs
from mailer.web.admin import bulk_views
from mailer.web.admin.auth import audit, login_required, role_required

bp = Blueprint("contacts_admin", __name__, url_prefix="/admin/contacts")
PAGE = 50


@bp.errorhandler(NotFound)
def _not_found(exc):
    return render_template("admin/message.html", title="Not found", message=str(exc)), 404


def _filters() -> dict:
    """q, list_id and status from the query string; a malformed list id is InvalidInput."""
    raw_list = request.args.get("list", "").strip()
    try:
        list_id = int(raw_list) if raw_list else None
    except ValueError:
        raise InvalidInput("list_id", "Choose a list from the menu.") from None
    return {"q": request.args.get("q", "").strip(), "list_id": list_id,
            "status": request.args.get("status", "").strip() or None}


def _before_id() -> int | None:
    raw = request.args.get("before", "").strip()
    try:
        return int(raw) if raw else None
    except ValueError:
        raise InvalidInput("before", "That page link is not valid; start again from the first page.") from None


def _describe(filters: dict) -> str:
    return directory.describe_search(**filters)


@bp.get("")
@login_required
def index():
    filters, rows, total, error = {"q": request.args.get("q", ""), "list_id": None, "status": None}, [], None, None
    with db_reader() as s:
        lists = s.execute(sa.select(MailingList.id, MailingList.name).order_by(MailingList.id)).all()
        automations = bulk_views.open_sequences(s)
        try:
            filters = _filters()
            rows = directory.search_contacts(s, **filters, before_id=_before_id(), limit=PAGE)
            if not filters["q"]:
                total = directory.count_contacts(s, list_id=filters["list_id"], status=filters["status"])
        except InvalidInput as exc:
            error = exc
    audit("contacts.search", _describe(filters))
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    next_url = url_for(".index", **_query(filters), before=rows[-1].id) if more else None
    return render_template("admin/contacts/index.html", rows=rows, filters=filters, lists=lists, total=total,
                           statuses=list(SubscriptionStatus), next_url=next_url, error=error,
                           first_page=request.args.get("before") is None, automations=automations,
                           page_args=_query(filters)), 400 if error else 200


def _query(filters: dict) -> dict:
    args = {"q": filters.get("q"), "list": filters.get("list_id"), "status": filters.get("status")}
    return {key: value for key, value in args.items() if value}


@bp.get("/<int:contact_id>")
@login_required
def detail(contact_id: int):
    with db_reader() as s:
        info = directory.contact_detail(s, contact_id)
        plans = sequences.contact_enrolments(s, mailer().settings, contact_id, utcnow())
        enrolled = {plan.sequence.id for plan in plans}
        open_sequences = [q for q in sequences.list_sequences(s)
                          if q.status != SequenceStatus.ARCHIVED and q.id not in enrolled]
        all_lists = _all_lists(s)
    audit("contact.view", f"contact {contact_id}")
    on = {ml.id: sub.status for sub, ml in info.subscriptions}
    # Lists the person can be asked (again) to join, or whose confirmation can be resent.
    invitable = [(ml, on.get(ml.id)) for ml in all_lists if on.get(ml.id) != SubscriptionStatus.ACTIVE]
    return render_template("admin/contacts/detail.html", info=info, contact=info.contact, plans=plans,
                           open_sequences=open_sequences, invitable=invitable,
                           can_unsubscribe=any(st in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PENDING)
                                               for st in on.values()))


@bp.get("/<int:contact_id>/data.json")
@login_required
@role_required(Role.OWNER)
def personal_data(contact_id: int):
    """Everything held about the person (GDPR Art. 15), as a file to hand over."""
    with db_reader() as s:
        data = privacy.export_contact_by_id(s, contact_id)
    audit("contact.export", f"contact {contact_id}")
    headers = {"Content-Disposition": f'attachment; filename="contact-{contact_id}.json"'}
    return Response(json.dumps(data, indent=2, ensure_ascii=False), mimetype="application/json", headers=headers)


@bp.get("/<int:contact_id>/erase")
@login_required
@role_required(Role.OWNER)
def erase_form(contact_id: int):
    with db_reader() as s:
        contact = directory.get_contact(s, contact_id)
    return render_template("admin/contacts/erase.html", contact=contact, error=None)


@bp.post("/<int:contact_id>/erase")
@login_required
@role_required(Role.OWNER)
def erase(contact_id: int):
    with db_session() as s:
        contact = directory.get_contact(s, contact_id)
        if contact.email is not None and not _same_address(request.form.get("confirm_email"), contact.email):
            error = "To confirm, type the person's email address exactly as shown. Nothing was erased."
            return render_template("admin/contacts/erase.html", contact=contact, error=error), 400
        report = privacy.erase_contact(s, mailer().settings, contact_id, now=utcnow())
    audit("contact.erase", f"contact {contact_id}")
    return render_template("admin/contacts/erased.html", report=report)


def _same_address(typed: str | None, address: str) -> bool:
    try:
        return contacts.normalise_email(typed) == address
    except InvalidInput:
        return False


@bp.get("/export.<any(csv, json):fmt>")
@login_required
@role_required(Role.OWNER)
def export(fmt: str):
    """Every contact matching the list/status filters, streamed from the database."""
    try:
        filters = _filters()
        with db_reader() as s:
            # Bad input is answered before the stream starts (a started stream cannot be a 400).
            directory.search_contacts(s, **filters, limit=1)
    except InvalidInput as exc:
        return render_template("admin/message.html", title="Export", message=exc.message), 400
    audit("contacts.export", f"format={fmt} " + _describe(filters))
    session_factory = mailer().read_sessions

    def chunks():
        with session_factory() as s:
            rows = directory.export_contacts(s, **filters)
            yield from (directory.contacts_csv(rows) if fmt == "csv" else directory.contacts_json(rows))

    headers = {"Content-Disposition": f'attachment; filename="contacts.{fmt}"'}
    mimetype = "text/csv" if fmt == "csv" else "application/json"
    return Response(stream_with_context(chunks()), mimetype=mimetype, headers=headers)


# The front desk -------------------------------------------------------------------------

FRONT_DESK = (Role.OWNER, Role.EDITOR)
ZONES = sorted(contacts.ZONES)


def _staff() -> frontdesk.Staff:
    return frontdesk.Staff(g.user.id, g.user.email, "console")


def _all_lists(s):
    return s.scalars(sa.select(MailingList).order_by(MailingList.id)).all()


@bp.route("/new", methods=["GET", "POST"])
@login_required
@role_required(*FRONT_DESK)
def add():
    """Add one person: on lists at once with a note of how consent was obtained, or by a confirmation mail."""
    form, error = request.form, None
    if request.method == "POST":
        try:
            with db_session() as s:
                added = frontdesk.add_contact(
                    s, mailer().settings, _staff(), email=form.get("email", ""), name=form.get("name", ""),
                    timezone=form.get("timezone", ""), lists=form.getlist("lists"),
                    consent_note=form.get("consent_note", ""), send_confirmation=form.get("consent") == "confirm",
                    now=utcnow())
        except InvalidInput as exc:
            error = exc
        else:
            if added.joined:
                flash(f"Contact added, on {', '.join(added.joined)} with the consent you noted.")
            elif added.invited:
                flash("Contact added. A confirmation mail is on its way; they join when they click its link."
                      if added.confirmation_queued else
                      "Contact added. No confirmation mail went out: the daily limit for this address is reached.")
            else:
                flash("Contact added, on no list.")
            return redirect(url_for(".detail", contact_id=added.contact_id))
    with db_reader() as s:
        lists = _all_lists(s)
    existing = getattr(error, "contact_id", None)
    return render_template("admin/contacts/new.html", lists=lists, form=form, error=error, existing=existing,
                           zones=ZONES), 400 if error else 200


@bp.route("/<int:contact_id>/edit", methods=["GET", "POST"])
@login_required
@role_required(*FRONT_DESK)
def edit(contact_id: int):
    error = None
    if request.method == "POST":
        try:
            with db_session() as s:
                changes = frontdesk.edit_contact(s, _staff(), contact_id, name=request.form.get("name", ""),
                                                 timezone=request.form.get("timezone", ""), now=utcnow())
        except InvalidInput as exc:
            error = exc
        else:
            flash("Saved: " + "; ".join(changes) + "." if changes else "Nothing changed.")
            return redirect(url_for(".detail", contact_id=contact_id))
    with db_reader() as s:
        contact = directory.get_contact(s, contact_id)
    values = request.form if error else {"name": contact.name, "timezone": contact.timezone or ""}
    return render_template("admin/contacts/edit.html", contact=contact, values=values, error=error,
                           zones=ZONES), 400 if error else 200


def _subscribed_lists(s, contact_id: int):
    return s.execute(sa.select(MailingList.slug, MailingList.name, Subscription.status)
                     .join(Subscription, Subscription.list_id == MailingList.id)
                     .where(Subscription.contact_id == contact_id).order_by(MailingList.id)).all()


@bp.route("/<int:contact_id>/unsubscribe", methods=["GET", "POST"])
@login_required
@role_required(*FRONT_DESK)
def unsubscribe(contact_id: int):
    """For a person who asks staff (a phone call): from one list, or from all."""
    error = None
    if request.method == "POST":
        which = request.form.get("list", "")
        try:
            with db_session() as s:
                withdrawn = frontdesk.unsubscribe_contact(
                    s, mailer().settings, _staff(), contact_id, list_slug=None if which == "*" else which,
                    note=request.form.get("note", ""), now=utcnow())
        except InvalidInput as exc:
            error = exc
        else:
            flash(f"Unsubscribed from {', '.join(withdrawn)}; mail for it not yet sent is cancelled."
                  if withdrawn else "There was nothing to unsubscribe from.")
            return redirect(url_for(".detail", contact_id=contact_id))
    with db_reader() as s:
        contact = directory.get_contact(s, contact_id)
        subscribed = [row for row in _subscribed_lists(s, contact_id)
                      if row.status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PENDING)]
    return render_template("admin/contacts/unsubscribe.html", contact=contact, subscribed=subscribed,
                           error=error, form=request.form), 400 if error else 200


INVITED = {
    frontdesk.Invitation.SENT: "A confirmation mail is on its way to {email}; they join {list} when they click it.",
    frontdesk.Invitation.ALREADY_ACTIVE: "{email} is on {list} already.",
    frontdesk.Invitation.TOO_SOON: "A confirmation mail for {list} went out recently; try again later.",
    frontdesk.Invitation.CAPPED: "No mail sent: the daily limit of confirmation mails to {email} is reached.",
}


@bp.post("/<int:contact_id>/invite")
@login_required
@role_required(*FRONT_DESK)
def invite(contact_id: int):
    """(Re)join a list only by double opt-in; also resends a pending confirmation."""
    slug = request.form.get("list", "")
    try:
        with db_session() as s:
            outcome = frontdesk.invite(s, mailer().settings, _staff(), contact_id, list_slug=slug, now=utcnow())
            email = directory.get_contact(s, contact_id).email
    except InvalidInput as exc:
        flash(exc.message, "error")
    else:
        flash(INVITED[outcome].format(email=email, list=slug),
              "error" if outcome == frontdesk.Invitation.CAPPED else "message")
    return redirect(url_for(".detail", contact_id=contact_id))


# Bulk actions on a search result ----------------------------------------------------------

def _search_from_form() -> dict:
    """The search a bulk action acts on, as the results page posted it back."""
    raw_list = request.form.get("filter_list", "").strip()
    return {"q": request.form.get("q", "").strip(), "list_id": int(raw_list) if raw_list.isdigit() else None,
            "status": request.form.get("filter_status", "").strip() or None}


def _bulk_page_args(search: dict, up_to_id: int | None) -> dict:
    return {"about": "found by your search", "run_url": url_for(".bulk_run"),
            "back_url": url_for(".index", **_query(search)),
            "hidden": {"q": search["q"], "filter_list": search["list_id"], "filter_status": search["status"],
                       "up_to": up_to_id}}


@bp.post("/bulk")
@login_required
@role_required(*FRONT_DESK)
def bulk_confirm():
    """The confirmation page for an action on everyone a search found, with their count now."""
    asked, search = bulk_views.requested(), _search_from_form()
    try:
        with db_reader() as s:
            planned = bulk.plan(s, **asked, search=search, now=utcnow())
    except InvalidInput as exc:
        return bulk_views.refused(exc.message, url_for(".index", **_query(search)))
    return bulk_views.confirm_page(planned, **_bulk_page_args(search, planned.up_to_id))


@bp.post("/bulk/run")
@login_required
@role_required(*FRONT_DESK)
def bulk_run():
    """Queue the confirmed action on the same search (no one added since it was counted)."""
    asked, search = bulk_views.requested(), _search_from_form()
    raw_up_to = request.form.get("up_to", "").strip()
    with db_session() as s:
        try:
            planned = bulk.plan(s, **asked, search=search, up_to_id=int(raw_up_to) if raw_up_to.isdigit() else None,
                                now=utcnow())
        except InvalidInput as exc:
            return bulk_views.refused(exc.message, url_for(".index", **_query(search)))
        job_id, page = bulk_views.queue(s, planned, **_bulk_page_args(search, planned.up_to_id))
    if page:
        return page
    bulk_views.audited(planned, job_id, action=f"contacts.bulk_{planned.action}", subject=_describe(search))
    flash(f"Queued: it runs in the background; its progress is below (job {job_id}).")
    return redirect(url_for(".bulk_job", job_id=job_id))


@bp.get("/jobs/<int:job_id>")
@login_required
def bulk_job(job_id: int):
    """A bulk job's progress and outcome."""
    with db_reader() as s:
        job = jobs.describe_bulk(jobs.get_bulk_job(s, job_id))
    return render_template("admin/contacts/bulk_job.html", job=job, bulk_jobs=[job])
