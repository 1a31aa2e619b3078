"""Staff pages for custom fields: the list with a form to add one, a field's page (label,
choices, archive), and one contact's values (/admin/contacts/<id>/fields, audited old →
new by field key). Viewers may look; owners and editors change. Every action calls
mailer.audience.fields."""
from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, request, url_for

from mailer.audience import fields
from mailer.audience.directory import get_contact
from mailer.db import utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.models import Role
from mailer.web import db_reader, db_session
from mailer.web.admin.auth import audit, login_required
from mailer.web.admin.newsletters_admin import can_change

bp = Blueprint("fields_admin", __name__, url_prefix="/admin")


@bp.errorhandler(NotFound)
def _not_found(exc):
    return render_template("admin/message.html", title="Not found", message=str(exc)), 404


def _changes_allowed() -> bool:
    return g.user.role in (Role.OWNER, Role.EDITOR)


# Fields -------------------------------------------------------------------------------------

def _render_index(form: dict | None = None, error: InvalidInput | None = None, status: int = 200):
    with db_reader() as s:
        rows = [{"field": f, "choices": fields.choices_of(f)} for f in fields.list_fields(s, archived=True)]
    return render_template("admin/fields/index.html", rows=rows, types=fields.TYPE_LABELS,
                           form=form or {"key": "", "label": "", "type": "text", "choices": ""},
                           error=error), status


@bp.get("/fields")
@login_required
def index():
    return _render_index()


@bp.post("/fields")
@can_change
def create():
    form = {k: request.form.get(k, "") for k in ("key", "label", "type", "choices")}
    try:
        with db_session() as s:
            field = fields.create_field(s, key=form["key"], label=form["label"], type=form["type"],
                                        choices=form["choices"] if form["type"] == "choice" else (), now=utcnow())
            key = field.key
    except InvalidInput as exc:
        return _render_index(form, exc, 400)
    audit("field.create", f"field {key}")
    flash(f"Field added: use it in mail as {{{{ contact.fields.{key} }}}}.")
    return redirect(url_for(".index"))


def _render_field(field_id: int, form: dict | None = None, error: InvalidInput | None = None, status: int = 200):
    with db_reader() as s:
        field = fields.get_field(s, field_id)
        choices = fields.choices_of(field)
        page = render_template("admin/fields/edit.html", field=field, types=fields.TYPE_LABELS,
                               form=form or {"label": field.label, "choices": "\n".join(choices)}, error=error)
    return page, status


@bp.get("/fields/<int:field_id>")
@login_required
def edit(field_id: int):
    return _render_field(field_id)


@bp.post("/fields/<int:field_id>")
@can_change
def update(field_id: int):
    form = {k: request.form.get(k, "") for k in ("label", "choices")}
    try:
        with db_session() as s:
            field = fields.get_field(s, field_id)
            fields.update_field(s, field_id, label=form["label"],
                                choices=form["choices"] if field.type == "choice" else None, now=utcnow())
            key = field.key
    except InvalidInput as exc:
        return _render_field(field_id, form, exc, 400)
    audit("field.update", f"field {key}")
    flash("Field saved.")
    return redirect(url_for(".edit", field_id=field_id))


@bp.post("/fields/<int:field_id>/archive")
@can_change
def archive(field_id: int):
    with db_session() as s:
        key = fields.archive_field(s, field_id, now=utcnow()).key
    audit("field.archive", f"field {key}")
    flash("Archived: no longer offered on contacts' pages or in imports; the values stay, and mail already "
          "written with it still shows them.")
    return redirect(url_for(".index"))


# One contact's values -------------------------------------------------------------------------

def _render_contact(contact_id: int, typed: dict | None = None, error: InvalidInput | None = None, status: int = 200):
    with db_reader() as s:
        contact = get_contact(s, contact_id)
        held = fields.values_of(s, contact_id)
        rows = [{"field": f, "choices": fields.choices_of(f), "value": (typed or held).get(f.key, "")}
                for f in fields.list_fields(s)]
        archived = [(f, held[f.key]) for f in fields.list_fields(s, archived=True)
                    if f.archived_at is not None and f.key in held]
        page = render_template("admin/fields/contact.html", contact=contact, rows=rows, archived=archived,
                               error=error, can_change=_changes_allowed() and contact.email is not None)
    return page, status


@bp.get("/contacts/<int:contact_id>/fields")
@login_required
def contact_fields(contact_id: int):
    page = _render_contact(contact_id)
    audit("contact.fields.view", f"contact {contact_id}")
    return page


@bp.post("/contacts/<int:contact_id>/fields")
@can_change
def save_contact_fields(contact_id: int):
    with db_reader() as s:
        keys = [f.key for f in fields.list_fields(s)]
    typed = {key: request.form.get(f"field-{key}", "") for key in keys}
    try:
        with db_session() as s:
            changes = fields.set_values(s, contact_id, typed)
    except InvalidInput as exc:
        return _render_contact(contact_id, typed, exc, 400)
    if changes:
        audit("contact.fields", f"contact {contact_id}: {fields.change_text(changes)}")
    flash(f"Saved: {len(changes)} field{'' if len(changes) == 1 else 's'} changed." if changes else "Nothing changed.")
    return redirect(url_for(".contact_fields", contact_id=contact_id))


@bp.app_template_global()
def custom_field_values(contact_id: int) -> list[tuple[str, str, str]]:
    """(label, key, value) of a contact's values, for the contact's page (one query each way)."""
    with db_reader() as s:
        held = fields.values_of(s, contact_id)
        return [(f.label, f.key, held[f.key]) for f in fields.list_fields(s, archived=True) if f.key in held]
