"""Staff pages for automations (sequences in the code): the list with enrolment counts,
the settings form, one automation's page (its steps as a timeline with their pre-flight
problems, the per-step report, what one reader gets and when, enrolling someone by hand),
and the step composer with the newsletter editor's live preview, saved previews as a
sample or a real reader, and test sends. Viewers may look; owners and editors change.
Every action calls mailer.campaigns.sequences, as the API and the CLI do."""
from __future__ import annotations

import re

import sqlalchemy as sa
from flask import Blueprint, Response, flash, redirect, render_template, request, url_for

from mailer.audience import contacts, directory, fields, imports, segments
from mailer.campaigns import blog, newsletters, sequences
from mailer.db import utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.models import Contact, MailingList, SequenceTrigger, StepCondition, Webinar
from mailer.web import db_reader, db_session, mailer
from mailer.web.admin.auth import audit, login_required
from mailer.web.admin.newsletters_admin import can_change, sandboxed

bp = Blueprint("automations_admin", __name__, url_prefix="/admin/automations")
WEBINAR_TRIGGERS = (SequenceTrigger.REGISTERED, SequenceTrigger.ATTENDED, SequenceTrigger.MISSED)
LIST_TRIGGERS = ("confirmed", "imported")


@bp.errorhandler(NotFound)
def _not_found(exc):
    return render_template("admin/message.html", title="Not found", message=str(exc)), 404


@bp.context_processor
def _names() -> dict:
    names = newsletters.TEMPLATE_NAMES
    return {"template_names": [f"{name}.{attr}" for name, attrs in names.items() if attrs for attr in sorted(attrs)]
            + [name for name, attrs in names.items() if not attrs]}


def _choices(session) -> dict:
    """The lists and webinars a form offers."""
    return {"mailing_lists": session.execute(sa.select(MailingList.id, MailingList.name).order_by(MailingList.name)).all(),
            "webinar_choices": session.execute(sa.select(Webinar.id, Webinar.title).order_by(Webinar.starts_at.desc())
                                               ).all(),
            "triggers": list(SequenceTrigger),
            "segment_choices": segments.choices(session)}


def _int(value: str | None, field: str) -> int | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidInput(field, "Choose one from the menu.") from None


# The list -----------------------------------------------------------------------------------

@bp.get("")
@login_required
def index():
    with db_reader() as s:
        rows = sequences.list_sequences(s)
        counts = sequences.enrolment_counts(s, [r.id for r in rows])
        listed = [{"sequence": r, "trigger": sequences.trigger_text(s, r), "counts": counts[r.id],
                   "steps": len(sequences.live_steps(s, r.id))} for r in rows]
    return render_template("admin/automations/index.html", rows=listed)


# Settings: name, trigger, list -------------------------------------------------------------

def _settings_input() -> dict:
    form = request.form
    return {"name": form.get("name", ""), "trigger": form.get("trigger", ""), "list_id": form.get("list_id", ""),
            "trigger_list_id": form.get("trigger_list_id", ""), "trigger_webinar_id": form.get("trigger_webinar_id", "")}


def _settings_args(values: dict) -> dict:
    trigger = values["trigger"]
    list_id = _int(values["list_id"], "list_id")
    if list_id is None:
        raise InvalidInput("list_id", "Choose the list its mail is sent as (unsubscribing leaves that list).")
    return dict(name=values["name"], trigger=trigger, list_id=list_id,
                trigger_list_id=_int(values["trigger_list_id"], "trigger_list_id") if trigger in LIST_TRIGGERS else None,
                trigger_webinar_id=(_int(values["trigger_webinar_id"], "trigger_webinar_id")
                                    if trigger in WEBINAR_TRIGGERS else None))


def _render_settings(values: dict, sequence_id: int | None = None, error: InvalidInput | None = None,
                     status: int = 200):
    with db_reader() as s:
        choices = _choices(s)
    return render_template("admin/automations/settings.html", values=values, sequence_id=sequence_id,
                           error=error, **choices), status


@bp.get("/new")
@can_change
def new():
    with db_reader() as s:
        default = s.scalar(sa.select(MailingList.id).where(MailingList.slug == contacts.DEFAULT_LIST))
    return _render_settings({"name": "", "trigger": SequenceTrigger.CONFIRMED, "list_id": str(default or ""),
                             "trigger_list_id": str(default or ""), "trigger_webinar_id": ""})


@bp.post("/new")
@can_change
def create():
    values = _settings_input()
    try:
        with db_session() as s:
            sequence_id = sequences.create_sequence(s, **_settings_args(values)).id
    except InvalidInput as exc:
        return _render_settings(values, error=exc, status=400)
    flash("Automation created as a draft. Add its steps, then start it.")
    return redirect(url_for(".detail", sequence_id=sequence_id))


@bp.get("/<int:sequence_id>/edit")
@can_change
def edit(sequence_id: int):
    with db_reader() as s:
        q = sequences.get_sequence(s, sequence_id)
        values = {"name": q.name, "trigger": q.trigger, "list_id": str(q.list_id),
                  "trigger_list_id": str(q.trigger_list_id or ""), "trigger_webinar_id": str(q.trigger_webinar_id or "")}
    return _render_settings(values, sequence_id)


@bp.post("/<int:sequence_id>/edit")
@can_change
def update(sequence_id: int):
    values = _settings_input()
    try:
        with db_session() as s:
            sequences.update_sequence(s, sequence_id, **_settings_args(values))
    except InvalidInput as exc:
        return _render_settings(values, sequence_id, error=exc, status=400)
    flash("Settings saved.")
    return redirect(url_for(".detail", sequence_id=sequence_id))


# One automation -----------------------------------------------------------------------------

def _reader(session, address: str) -> Contact | None:
    try:
        return session.scalar(sa.select(Contact).where(Contact.email == contacts.normalise_email(address)))
    except InvalidInput:
        return None


def _render_detail(sequence_id: int, *, error: InvalidInput | None = None, form: dict | None = None,
                   status: int = 200):
    m, now = mailer(), utcnow()
    address = request.args.get("contact", "").strip()
    plan, plan_problem = None, None
    with db_reader() as s:
        sequence = sequences.get_sequence(s, sequence_id)
        steps = sequences.live_steps(s, sequence_id)
        upcoming = newsletters.upcoming_for_issue(s, m.settings, now)
        timeline = [{"step": step, "delay": sequences.delay_text(step, i == 0), "window": sequences.window_text(step),
                     "condition": sequences.condition_text(s, step),
                     "problems": sequences.step_problems(m.renderer, m.settings, step, upcoming)}
                    for i, step in enumerate(steps)]
        if address:
            reader = _reader(s, address)
            if reader is None:
                plan_problem = f"No contact has the address {address}."
            else:
                plan = sequences.plan_for_contact(s, m.settings, sequence_id, reader.id, now)
        page = render_template(
            "admin/automations/detail.html", sequence=sequence, timeline=timeline,
            trigger=sequences.trigger_text(s, sequence), list_name=s.get(MailingList, sequence.list_id).name,
            counts=sequences.enrolment_counts(s, [sequence_id])[sequence_id], report=sequences.report(s, sequence_id),
            plan=plan, plan_problem=plan_problem, address=address, error=error, form=form or {},
            segment_choices=segments.choices(s))
    if plan is not None:
        audit("sequence.plan", f"sequence {sequence_id} for contact {plan.contact.id}")
    return page, status


@bp.get("/<int:sequence_id>")
@login_required
def detail(sequence_id: int):
    return _render_detail(sequence_id)


def _action(sequence_id: int, action, done: str, form: dict | None = None):
    """One domain call; success → back to the automation's page, a refusal → the page with it."""
    try:
        with db_session() as s:
            result = action(s)
    except InvalidInput as exc:
        return _render_detail(sequence_id, error=exc, form=form, status=400)
    flash(done.format(result=result))
    return redirect(url_for(".detail", sequence_id=sequence_id))


@bp.post("/<int:sequence_id>/activate")
@can_change
def activate(sequence_id: int):
    return _action(sequence_id, lambda s: sequences.activate(s, sequence_id, now=utcnow()),
                   "Started: from now on its trigger enrols people.")


@bp.post("/<int:sequence_id>/pause")
@can_change
def pause(sequence_id: int):
    return _action(sequence_id, lambda s: sequences.pause(s, sequence_id),
                   "Paused: nothing more goes out until you resume; enrolments keep their place.")


@bp.post("/<int:sequence_id>/resume")
@can_change
def resume(sequence_id: int):
    return _action(sequence_id, lambda s: sequences.resume(s, sequence_id), "Resumed.")


@bp.post("/<int:sequence_id>/archive")
@can_change
def archive(sequence_id: int):
    return _action(sequence_id, lambda s: sequences.archive(s, sequence_id),
                   "Archived: nothing more of it goes out.")


@bp.post("/enrol")
@can_change
def enrol():
    """Enrol one person by hand: by address from the automation's page, or by id from their
    contact page (which names the automation in the form)."""
    address, restart = request.form.get("email", "").strip(), request.form.get("restart") == "yes"
    back_to_contact = request.form.get("from") == "contact"
    try:
        sequence_id = int(request.form.get("sequence", ""))
    except ValueError:
        raise NotFound("no such automation") from None
    try:
        with db_session() as s:
            contact_id = _int(request.form.get("contact_id"), "contact_id")
            if contact_id is None:
                try:
                    contact_id = directory.contact_id_for_email(s, address)
                except NotFound:
                    raise InvalidInput("email", f"No contact has the address {address}.") from None
            name = sequences.get_sequence(s, sequence_id).name
            if restart:
                sequences.re_enrol(s, sequence_id, contact_id, utcnow())
            elif not sequences.enrol(s, sequence_id, contact_id, utcnow()):
                raise InvalidInput("email", "This person is in the automation already; tick “start again” to "
                                            "restart them from the first step.")
    except InvalidInput as exc:
        if back_to_contact:
            return render_template("admin/message.html", title="Not enrolled", message=exc.message), 400
        return _render_detail(sequence_id, error=exc, form={"email": address}, status=400)
    audit("sequence.enrol", f"sequence {sequence_id}, contact {contact_id}" + (" (restart)" if restart else ""))
    flash(f"Enrolled in {name}" + (", from the first step." if restart else "."))
    if back_to_contact:
        return redirect(url_for("contacts_admin.detail", contact_id=contact_id))
    return redirect(url_for(".detail", sequence_id=sequence_id, contact=address or None))


@bp.post("/<int:sequence_id>/enrol-many")
@can_change
def enrol_many(sequence_id: int):
    """Enrol the subscribers on an uploaded CSV (an email column) or pasted addresses."""
    upload = request.files.get("file")
    text = upload.read().decode("utf-8-sig", errors="replace") if upload and upload.filename else ""
    text = text or request.form.get("addresses", "")
    if not text.strip():
        return _render_detail(sequence_id, status=400, error=InvalidInput(
            "addresses", "Choose a CSV file with an email column, or paste addresses one per line."))
    try:
        with db_session() as s:
            report = sequences.enrol_addresses(s, sequence_id, imports.read_addresses(text.splitlines()), utcnow())
    except InvalidInput as exc:
        return _render_detail(sequence_id, error=exc, status=400)
    audit("sequence.enrol_many", f"sequence {sequence_id}: {report.line()}")
    flash(f"Enrolled: {report.line()}.")
    return redirect(url_for(".detail", sequence_id=sequence_id))


@bp.post("/<int:sequence_id>/enrol-segment")
@can_change
def enrol_segment(sequence_id: int):
    """Enrol everyone in a segment who is subscribed to the automation's list."""
    try:
        segment_id = _int(request.form.get("segment"), "segment")
        if segment_id is None:
            raise InvalidInput("segment", "Choose a segment.")
        with db_session() as s:
            added = sequences.enrol_segment(s, sequence_id, segment_id, utcnow())
    except (InvalidInput, NotFound) as exc:
        return _render_detail(sequence_id, status=400, error=exc if isinstance(exc, InvalidInput)
                              else InvalidInput("segment", str(exc)))
    audit("sequence.enrol_segment", f"sequence {sequence_id}, segment {segment_id}: {added} enrolled")
    flash(f"Enrolled {added} from the segment (subscribers of the list who were not in it yet).")
    return redirect(url_for(".detail", sequence_id=sequence_id))


# Steps ----------------------------------------------------------------------------------------

def _step_input() -> dict:
    form = request.form
    return {key: form.get(key, default) for key, default in (
        ("subject", ""), ("preheader", ""), ("body_md", ""), ("layout", "default"), ("delay", "0"),
        ("delay_unit", "days"), ("window", ""), ("condition", ""), ("condition_list", ""),
        ("condition_webinar", ""), ("condition_segment", ""))}


def _step_args(values: dict) -> dict:
    try:
        delay = int(values["delay"] or 0)
    except ValueError:
        raise InvalidInput("delay", "The delay is a whole number.") from None
    condition = values["condition"] or None
    ref = None
    if condition == StepCondition.ON_LIST:
        ref = _int(values["condition_list"], "condition_ref_id")
    elif condition == StepCondition.ATTENDED:
        ref = _int(values["condition_webinar"], "condition_ref_id")
    elif condition == StepCondition.IN_SEGMENT:
        ref = _int(values["condition_segment"], "condition_ref_id")
    return dict(subject=values["subject"], preheader=values["preheader"], body_md=values["body_md"],
                layout=values["layout"], delay=(delay, values["delay_unit"]), window=values["window"],
                condition=condition, condition_ref_id=ref)


def _step_values(step) -> dict:
    delay, unit = sequences.delay_parts(step.delay_minutes)
    return {"subject": step.subject, "preheader": step.preheader, "body_md": step.body_md, "layout": step.layout,
            "delay": str(delay), "delay_unit": unit, "window": sequences.window_text(step),
            "condition": step.condition or "",
            "condition_list": str(step.condition_ref_id or "") if step.condition == StepCondition.ON_LIST else "",
            "condition_webinar": str(step.condition_ref_id or "") if step.condition == StepCondition.ATTENDED else "",
            "condition_segment": str(step.condition_ref_id or "") if step.condition == StepCondition.IN_SEGMENT else ""}


def _render_step(sequence_id: int, values: dict, step_id: int | None = None, error: InvalidInput | None = None,
                 status: int = 200, test_form: dict | None = None):
    m = mailer()
    with db_reader() as s:
        sequence = sequences.get_sequence(s, sequence_id)
        problems = (sequences.step_problems(m.renderer, m.settings, sequences.get_step(s, sequence_id, step_id),
                                            newsletters.upcoming_for_issue(s, m.settings, utcnow()))
                    if step_id else [])
        page = render_template("admin/automations/step.html", sequence=sequence, values=values, step_id=step_id,
                               layouts=newsletters.layouts(), error=error, problems=problems,
                               units=list(sequences.DELAY_UNITS), test_form=test_form or {}, **_choices(s))
    return page, status


@bp.get("/<int:sequence_id>/steps/new")
@can_change
def new_step(sequence_id: int):
    with db_reader() as s:
        first = not sequences.live_steps(s, sequence_id)
    return _render_step(sequence_id, {"subject": "", "preheader": "", "body_md": "", "layout": "default",
                                      "delay": "0" if first else "3", "delay_unit": "days", "window": "",
                                      "condition": "", "condition_list": "", "condition_webinar": "",
                                      "condition_segment": ""})


@bp.post("/<int:sequence_id>/steps/new")
@can_change
def create_step(sequence_id: int):
    values = _step_input()
    try:
        with db_session() as s:
            step_id = sequences.add_step(s, sequence_id, **_step_args(values)).id
    except InvalidInput as exc:
        return _render_step(sequence_id, values, error=exc, status=400)
    flash("Step added.")
    return redirect(url_for(".edit_step", sequence_id=sequence_id, step_id=step_id))


@bp.get("/<int:sequence_id>/steps/<int:step_id>")
@can_change
def edit_step(sequence_id: int, step_id: int):
    with db_reader() as s:
        values = _step_values(sequences.get_step(s, sequence_id, step_id))
    return _render_step(sequence_id, values, step_id)


@bp.post("/<int:sequence_id>/steps/<int:step_id>")
@can_change
def update_step(sequence_id: int, step_id: int):
    values = _step_input()
    try:
        with db_session() as s:
            sequences.get_step(s, sequence_id, step_id)
            sequences.update_step(s, step_id, **_step_args(values))
    except InvalidInput as exc:
        return _render_step(sequence_id, values, step_id, error=exc, status=400)
    flash("Step saved. Mail not yet sent carries the new text.")
    return redirect(url_for(".edit_step", sequence_id=sequence_id, step_id=step_id))


@bp.post("/<int:sequence_id>/steps/<int:step_id>/delete")
@can_change
def delete_step(sequence_id: int, step_id: int):
    def remove(s):
        sequences.get_step(s, sequence_id, step_id)
        return sequences.delete_step(s, step_id, now=utcnow()).subject

    return _action(sequence_id, remove, "Step “{result}” deleted: nobody gets it from now on.")


@bp.post("/<int:sequence_id>/steps/<int:step_id>/test")
@can_change
def send_test(sequence_id: int, step_id: int):
    raw = request.form.get("addresses", "")
    try:
        with db_session() as s:
            n = sequences.send_test(s, mailer().settings, sequence_id, step_id,
                                    [a for a in re.split(r"[,;\s]+", raw) if a], now=utcnow())
    except InvalidInput as exc:
        with db_reader() as s:
            values = _step_values(sequences.get_step(s, sequence_id, step_id))
        return _render_step(sequence_id, values, step_id, error=exc, status=400, test_form={"addresses": raw})
    flash(f"A [TEST] copy is on its way to {n} address(es).")
    return redirect(url_for(".edit_step", sequence_id=sequence_id, step_id=step_id))


def _step_preview(sequence_id: int, step_id: int):
    """The saved step as the sample reader, or as ?contact=<email> gets it (audited)."""
    m = mailer()
    address = request.args.get("contact", "").strip()
    with db_reader() as s:
        step = sequences.get_step(s, sequence_id, step_id)
        reader = _reader(s, address) if address else None
        if address and reader is None:
            return sandboxed(render_template("admin/newsletters/preview_problem.html",
                                             message=f"No contact has the address {address}."), status=404)
        upcoming = newsletters.upcoming_for_issue(s, m.settings, utcnow())
        if reader is not None:
            audit("preview_as_contact", f"sequence {sequence_id} step {step_id} as contact {reader.id}")
        try:
            return newsletters.preview(
                m.renderer, m.settings, subject=step.subject, preheader=step.preheader, body_md=step.body_md,
                layout=step.layout, upcoming=upcoming, why=sequences.footer_note(s, step.sequence),
                posts=blog.posts_for_issue(s, m.settings, now=utcnow()),
                contact={"first_name": reader.first_name, "name": reader.name, "email": reader.email,
                         "timezone": reader.timezone, "fields": fields.template_values(s, reader.id)}
                if reader else None, field_samples=fields.sample_values(s))
        except InvalidInput as exc:
            return sandboxed(render_template("admin/newsletters/preview_problem.html", message=exc.message),
                             status=400)


@bp.get("/<int:sequence_id>/steps/<int:step_id>/preview.html")
@login_required
def step_preview_html(sequence_id: int, step_id: int):
    rendered = _step_preview(sequence_id, step_id)
    return rendered if isinstance(rendered, Response) else sandboxed(rendered.html)


@bp.get("/<int:sequence_id>/steps/<int:step_id>/preview.txt")
@login_required
def step_preview_text(sequence_id: int, step_id: int):
    rendered = _step_preview(sequence_id, step_id)
    if isinstance(rendered, Response):
        return rendered
    return sandboxed(f"Subject: {rendered.subject}\n\n{rendered.text}", mimetype="text/plain")

