"""Staff pages for mailing lists: every list with its subscribers per status; create one;
a list's page to edit it, change its consent wording (each change a new version, the old
ones shown with the events that used them) and archive it. Owners and editors change;
viewers look."""
from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from mailer.audience import lists
from mailer.db import utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.models import Role
from mailer.web import db_reader, db_session
from mailer.web.admin.auth import audit, login_required, role_required

bp = Blueprint("lists_admin", __name__, url_prefix="/admin/lists")
EDITORS = (Role.OWNER, Role.EDITOR)


@bp.errorhandler(NotFound)
def _not_found(exc):
    return render_template("admin/message.html", title="Not found", message=str(exc)), 404


def _lists_changed() -> None:
    """The public form of this process sees the change at once (others within their cache's TTL)."""
    current_app.extensions["public_lists"].forget()


def _render_index(values: dict | None = None, error: InvalidInput | None = None, status: int = 200):
    with db_reader() as s:
        rows = lists.list_lists(s)
    return render_template("admin/lists/index.html", rows=rows, values=values or {"public": True}, error=error), status


@bp.get("")
@login_required
def index():
    return _render_index()


@bp.post("")
@login_required
@role_required(*EDITORS)
def create():
    form = request.form
    values = {"slug": form.get("slug", ""), "name": form.get("name", ""), "description": form.get("description", ""),
              "consent_wording": form.get("consent_wording", ""), "public": form.get("public") == "yes"}
    try:
        with db_session() as s:
            created = lists.create_list(s, slug=values["slug"], name=values["name"], wording=values["consent_wording"],
                                        description=values["description"], public=values["public"], now=utcnow())
            list_id, slug = created.mailing_list.id, created.mailing_list.slug
    except InvalidInput as exc:
        return _render_index(values, exc, 409 if exc.code == "conflict" else 400)
    _lists_changed()
    audit("list_create", f"list {slug}")
    flash(f"List '{slug}' created with its consent wording as version 1.")
    return redirect(url_for(".detail", list_id=list_id))


def _render_detail(list_id: int, *, edit_error: InvalidInput | None = None, wording_error: InvalidInput | None = None,
                   values: dict | None = None, status: int = 200):
    with db_reader() as s:
        summary = lists.get_list(s, list_id)
        versions = lists.wording_versions(s, list_id)
        blockers = lists.archive_blockers(s, list_id) if summary.mailing_list.archived_at is None else []
    return render_template("admin/lists/detail.html", summary=summary, ml=summary.mailing_list, versions=versions,
                           blockers=blockers, edit_error=edit_error, wording_error=wording_error,
                           values=values or {}), status


@bp.get("/<int:list_id>")
@login_required
def detail(list_id: int):
    return _render_detail(list_id)


@bp.post("/<int:list_id>/edit")
@login_required
@role_required(*EDITORS)
def edit(list_id: int):
    form = request.form
    values = {"name": form.get("name", ""), "description": form.get("description", ""),
              "public": form.get("public") == "yes"}
    try:
        with db_session() as s:
            slug = lists.update_list(s, list_id, **values).mailing_list.slug
    except InvalidInput as exc:
        return _render_detail(list_id, edit_error=exc, values=values, status=400)
    _lists_changed()
    audit("list_edit", f"list {slug}: name, description, public")
    flash("Saved.")
    return redirect(url_for(".detail", list_id=list_id))


@bp.post("/<int:list_id>/wording")
@login_required
@role_required(*EDITORS)
def wording(list_id: int):
    text = request.form.get("consent_wording", "")
    try:
        replaces = int(request.form.get("replaces_version", ""))
    except ValueError:
        replaces = None
    try:
        with db_session() as s:
            version = lists.add_wording(s, list_id, text, now=utcnow(), replaces_version=replaces).version
            slug = lists.get_list(s, list_id).mailing_list.slug
    except InvalidInput as exc:
        return _render_detail(list_id, wording_error=exc, values={"consent_wording": text},
                              status=409 if exc.code == "conflict" else 400)
    _lists_changed()
    audit("list_wording", f"list {slug}: consent wording version {version}")
    flash(f"Consent wording version {version} saved: new signups are shown it. Earlier versions stay as they were.")
    return redirect(url_for(".detail", list_id=list_id))


@bp.post("/<int:list_id>/archive")
@login_required
@role_required(*EDITORS)
def archive(list_id: int):
    try:
        with db_session() as s:
            slug = lists.archive_list(s, list_id, now=utcnow()).mailing_list.slug
    except InvalidInput as exc:
        flash(exc.message, "error")
    else:
        _lists_changed()
        audit("list_archive", f"list {slug}")
        flash("Archived: the list takes no new signups. Its subscribers and their consent history stay.")
    return redirect(url_for(".detail", list_id=list_id))
