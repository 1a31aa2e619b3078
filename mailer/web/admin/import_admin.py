"""Staff pages for importing subscribers from CSV: upload, progress while the worker runs
the job, and the report of what was skipped and why. Owners and editors."""
from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, g, jsonify, redirect, render_template, request, session, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from mailer.audience import imports
from mailer.staff import jobs
from mailer.db import utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.models import MailingList, Role
from mailer.web import db_reader, db_session, mailer
from mailer.web.admin.auth import audit, login_required, role_required

bp = Blueprint("import_admin", __name__, url_prefix="/admin/imports")
EDITORS = (Role.OWNER, Role.EDITOR)
MAX_UPLOAD_MB = 50  # ~1.5 million rows of "email,name"


@bp.url_value_preprocessor
def _upload_limit(endpoint, _values):
    # Runs before the app's before_request hooks, where the CSRF check reads the form:
    # only this form may be larger than the app-wide limit, and only for someone logged in.
    if endpoint == "import_admin.upload" and session.get("user_id") is not None:
        request.max_content_length = MAX_UPLOAD_MB * 1024 * 1024


@bp.errorhandler(NotFound)
def _not_found(exc):
    return render_template("admin/message.html", title="Not found", message=str(exc)), 404


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc):
    error = InvalidInput("file", f"The file is larger than {MAX_UPLOAD_MB} MB. Split it into smaller files "
                                 "and import them one after another.")
    return _render_index(error=error), 413


def _render_index(error: InvalidInput | None = None, form: dict | None = None):
    with db_reader() as s:
        lists = list(s.scalars(sa.select(MailingList).where(MailingList.archived_at.is_(None))
                               .order_by(MailingList.name)))
        recent = [jobs.describe(job) for job in jobs.recent_imports(s)]
    return render_template("admin/imports/index.html", lists=lists, recent=recent, error=error, form=form or {},
                           max_mb=MAX_UPLOAD_MB)


@bp.get("")
@login_required
@role_required(*EDITORS)
def index():
    return _render_index()


@bp.post("")
@login_required
@role_required(*EDITORS)
def upload():
    form = {"list": request.form.get("list", ""), "consent_note": request.form.get("consent_note", "")}
    upload = request.files.get("file")
    try:
        imports.consent_note_or_refuse(form["consent_note"])  # said first, even when the file is missing too
        if upload is None or not upload.filename:
            raise InvalidInput("file", "Choose a CSV file to import.")
        with db_session() as s:
            job = jobs.create_import(s, mailer().settings, upload.stream, filename=upload.filename,
                                     list_slug=form["list"], consent_note=form["consent_note"], user_id=g.user.id,
                                     now=utcnow())
            job_id = job.id
    except InvalidInput as exc:
        return _render_index(error=exc, form=form), 400
    audit("import", f"job {job_id}: {upload.filename[:200]} into {form['list']}")
    return redirect(url_for("import_admin.detail", job_id=job_id), 303)


@bp.get("/<int:job_id>")
@login_required
@role_required(*EDITORS)
def detail(job_id: int):
    with db_reader() as s:
        job = jobs.describe(jobs.get_job(s, job_id))
    return render_template("admin/imports/detail.html", job=job)


@bp.get("/<int:job_id>/progress")
@login_required
@role_required(*EDITORS)
def progress(job_id: int):
    """What the page's poller (static/progress.js) reads while the import runs."""
    with db_reader() as s:
        job = jobs.describe(jobs.get_job(s, job_id))
    return jsonify(status=job["status"], finished=job["finished"], value=job["done"], max=job["total"],
                   figures=job["figures"])
