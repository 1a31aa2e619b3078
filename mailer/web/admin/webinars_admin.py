"""Staff pages for webinars: list, create and edit (a new start time is a reschedule),
publish, cancel, registrants with attendance, CSV export for owners."""
from __future__ import annotations

import csv
import datetime as dt
import io
from zoneinfo import ZoneInfo, available_timezones

import sqlalchemy as sa
from flask import Blueprint, Response, flash, g, redirect, render_template, request, stream_with_context, url_for

from mailer.campaigns import webinars
from mailer.audience.directory import spreadsheet_cell
from mailer.db import utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.models import Contact, Registration, Role, Webinar
from mailer.staff import users
from mailer.web import db_reader, db_session, mailer
from mailer.web.admin.auth import audit, login_required, role_required

bp = Blueprint("webinars_admin", __name__, url_prefix="/admin/webinars")
EDITORS = (Role.OWNER, Role.EDITOR)
FIELDS = ("slug", "title", "start", "timezone", "duration_minutes", "capacity", "description_md", "join_url",
          "replay_url", "reminder_custom", "reminder_text")
# The reminders offered as boxes (minutes before the start); anything else is "custom".
REMINDER_CHOICES = ((1440, "24 hours before"), (60, "1 hour before"), (10, "10 minutes before"))
ZONES = sorted(zone for zone in available_timezones() if "/" in zone and not zone.startswith(("Etc/", "SystemV/")))


@bp.errorhandler(NotFound)
def _not_found(exc):
    return render_template("admin/message.html", title="Not found", message=str(exc)), 404


@bp.get("")
@login_required
def index():
    with db_reader() as s:
        rows = webinars.webinars_by_start(s)
    return render_template("admin/webinars/index.html", rows=rows)


def _reminder_fields(offsets: str) -> dict:
    """The form's reminder boxes and custom field for a stored "1440,60,5"."""
    chosen = [int(o) for o in offsets.split(",") if o != ""]
    preset = {minutes for minutes, _ in REMINDER_CHOICES}
    return {"reminders": [str(o) for o in chosen if o in preset],
            "reminder_custom": ", ".join(str(o) for o in chosen if o not in preset)}


def _form_values(webinar: Webinar | None) -> dict:
    if webinar is None:
        return {"timezone": mailer().settings.timezone, "duration_minutes": "60", **_reminder_fields("1440,60")}
    local = webinar.starts_at.astimezone(ZoneInfo(webinar.timezone))
    return {"slug": webinar.slug, "title": webinar.title, "start": local.strftime("%Y-%m-%dT%H:%M"),
            "timezone": webinar.timezone, "duration_minutes": str(webinar.duration_minutes),
            "capacity": "" if webinar.capacity is None else str(webinar.capacity),
            "description_md": webinar.description_md, "join_url": webinar.join_url, "replay_url": webinar.replay_url,
            "reminder_text": webinar.reminder_text, **_reminder_fields(webinar.reminder_offsets)}


def _edit_page(values: dict, error, webinar_id: int | None, status: int = 200):
    return render_template("admin/webinars/edit.html", values=values, error=error, webinar_id=webinar_id,
                           zones=ZONES, reminder_choices=REMINDER_CHOICES), status


def _save(webinar_id: int | None):
    values = {name: request.form.get(name, "") for name in FIELDS}
    values["reminders"] = request.form.getlist("reminders")
    # The boxes and the custom minutes together are the webinar's reminders.
    values["reminder_offsets"] = ",".join(values["reminders"] + values["reminder_custom"].replace(" ", "").split(","))
    try:
        try:
            start = dt.datetime.fromisoformat(values["start"])
            duration = int(values["duration_minutes"] or 60)
            capacity = int(values["capacity"]) if values["capacity"].strip() else None
        except ValueError:
            raise InvalidInput("start", "Give the start as a date and time, and numbers for duration and capacity.")
        with db_session() as s:
            webinar = webinars.get_webinar(s, webinar_id) if webinar_id else None
            webinar = webinars.save_webinar(
                s, webinar, slug=values["slug"], title=values["title"], starts_local=start,
                timezone=values["timezone"], duration_minutes=duration, capacity=capacity,
                description_md=values["description_md"], join_url=values["join_url"],
                replay_url=values["replay_url"], reminder_offsets=values["reminder_offsets"],
                reminder_text=values["reminder_text"], now=utcnow())
            saved_id = webinar.id
    except InvalidInput as exc:
        return _edit_page(values, exc, webinar_id, 400)
    if webinar_id is None:
        flash("Created as a draft. Publish it to open registration.")
    else:
        flash("Saved. Registrants get an update if the start time changed.")
    return redirect(url_for(".detail", webinar_id=saved_id))


@bp.get("/new")
@login_required
@role_required(*EDITORS)
def new():
    return _edit_page(_form_values(None), None, None)


@bp.post("/new")
@login_required
@role_required(*EDITORS)
def create():
    return _save(None)


@bp.get("/<int:webinar_id>/edit")
@login_required
@role_required(*EDITORS)
def edit(webinar_id: int):
    with db_reader() as s:
        webinar = webinars.get_webinar(s, webinar_id)
        if webinar.status == "cancelled":
            flash("A cancelled webinar cannot be changed.", "error")
            return redirect(url_for(".detail", webinar_id=webinar_id))
        values = _form_values(webinar)
    return _edit_page(values, None, webinar_id)


@bp.post("/<int:webinar_id>/edit")
@login_required
@role_required(*EDITORS)
def update(webinar_id: int):
    return _save(webinar_id)


@bp.get("/<int:webinar_id>")
@login_required
def detail(webinar_id: int):
    with db_reader() as s:
        webinar = webinars.get_webinar(s, webinar_id)
        registrations = list(webinars.registrations_in_order(s, webinar_id))
        counts = {}
        for registration, _, _ in registrations:
            counts[registration.status] = counts.get(registration.status, 0) + 1
    audit("view_registrants", f"webinar {webinar_id}")
    editor = g.user.role in EDITORS
    return render_template("admin/webinars/detail.html", webinar=webinar, registrations=registrations, counts=counts,
                           can_resend=editor and webinar.status == "published",
                           can_add=editor and webinar.status == "published" and webinar.starts_at > utcnow())


def _action(webinar_id: int, action, done: str):
    try:
        with db_session() as s:
            action(s)
    except InvalidInput as exc:
        flash(exc.message, "error")
    else:
        flash(done)
    return redirect(url_for(".detail", webinar_id=webinar_id))


@bp.post("/<int:webinar_id>/publish")
@login_required
@role_required(*EDITORS)
def publish(webinar_id: int):
    return _action(webinar_id, lambda s: webinars.publish(s, webinar_id), "Published: registration is open.")


@bp.post("/<int:webinar_id>/cancel")
@login_required
@role_required(*EDITORS)
def cancel(webinar_id: int):
    return _action(webinar_id, lambda s: webinars.cancel_webinar(s, webinar_id, now=utcnow()),
                   "Cancelled: registrants get a calendar cancellation.")


@bp.post("/<int:webinar_id>/registrants")
@login_required
@role_required(*EDITORS)
def add_registrant(webinar_id: int):
    """Register someone by hand; how they agreed goes into the consent ledger."""
    email, name = request.form.get("email", ""), request.form.get("name", "")
    try:
        with db_session() as s:
            outcome = webinars.add_registrant(s, mailer().settings, webinar_id, email=email, name=name,
                                              consent_note=request.form.get("consent_note", ""),
                                              staff_email=g.user.email, now=utcnow())
            if outcome != "suppressed":
                users.record(s, g.user.id, "add_registrant", f"webinar {webinar_id}")
    except InvalidInput as exc:
        flash(exc.message, "error")
        return redirect(url_for(".detail", webinar_id=webinar_id))
    flash({"registered": "Registered: they get the confirmation with the join link.",
           "waitlisted": "The webinar is full: they are on the waitlist, and are told so.",
           "already": "Already registered: their details are sent again.",
           "suppressed": "Not registered: this address may not be mailed (bounced, complained or erased).",
           }[outcome], "error" if outcome == "suppressed" else "message")
    return redirect(url_for(".detail", webinar_id=webinar_id))


@bp.post("/<int:webinar_id>/registrants/<int:registration_id>/resend")
@login_required
@role_required(*EDITORS)
def resend(webinar_id: int, registration_id: int):
    with db_session() as s:
        registration = webinars.get_registration(s, registration_id)
        if registration.webinar_id != webinar_id:
            raise NotFound(f"no registration {registration_id} for webinar {webinar_id}")
        sent = webinars.send_details_again(s, registration, utcnow())
        users.record(s, g.user.id, "resend_webinar_details", f"registration {registration_id}")
    flash("Details sent again." if sent else "Nothing sent: the registration is cancelled.",
          "message" if sent else "error")
    return redirect(url_for(".detail", webinar_id=webinar_id))


@bp.post("/<int:webinar_id>/attendance")
@login_required
@role_required(*EDITORS)
def attendance(webinar_id: int):
    upload = request.files.get("file")
    if upload and upload.filename:
        def mark(s):
            marked, unknown = webinars.import_attendance(s, webinar_id, upload.read().decode("utf-8-sig", "replace"))
            # Counted, not listed: a flash travels in the session cookie.
            not_registered = (f" {len(unknown)} address in the file is not registered." if len(unknown) == 1 else
                              f" {len(unknown)} addresses in the file are not registered." if unknown else "")
            flash(f"Marked {marked} as attended.{not_registered}")
        try:
            with db_session() as s:
                mark(s)
        except InvalidInput as exc:
            flash(exc.message, "error")
        return redirect(url_for(".detail", webinar_id=webinar_id))
    attended = set(request.form.getlist("attended"))
    with db_session() as s:
        emails = s.scalars(sa.select(Contact.email).join(Registration).where(
            Registration.webinar_id == webinar_id, Contact.email.is_not(None))).all()
        webinars.mark_attendance(s, webinar_id, [e for e in emails if e in attended], attended=True)
        webinars.mark_attendance(s, webinar_id, [e for e in emails if e not in attended], attended=False)
    flash("Attendance saved.")
    return redirect(url_for(".detail", webinar_id=webinar_id))


@bp.get("/<int:webinar_id>/registrants.csv")
@login_required
@role_required(Role.OWNER)
def export(webinar_id: int):
    """Streamed, so a large webinar never sits in memory; every export is audited."""
    with db_reader() as s:
        slug = webinars.get_webinar(s, webinar_id).slug
    audit("export_registrants", f"webinar {webinar_id}")
    session_factory = mailer().read_sessions

    def rows():
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["email", "name", "status", "attended", "timezone", "registered_at"])
        with session_factory() as s:
            for registration, email, name in webinars.registrations_in_order(s, webinar_id):
                writer.writerow([spreadsheet_cell(cell) for cell in (
                    email or "", name, registration.status, {True: "yes", False: "no"}.get(registration.attended, ""),
                    registration.timezone or "", registration.created_at.isoformat())])
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    headers = {"Content-Disposition": f'attachment; filename="{slug}-registrants.csv"'}
    return Response(stream_with_context(rows()), mimetype="text/csv", headers=headers)
