"""Staff pages for the media library: upload an image (with its alt text), see every image
with its size, change alt text, copy the Markdown that shows it in a newsletter, delete one
no unsent mail uses. Viewers may look; owners and editors change. Every action calls
mailer.campaigns.media and is recorded in the audit log."""
from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, request, session, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from mailer.campaigns import media
from mailer.db import utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.web import db_reader, db_session, mailer
from mailer.web.admin.auth import audit, login_required
from mailer.web.admin.newsletters_admin import can_change

bp = Blueprint("media_admin", __name__, url_prefix="/admin/media")
# Room for the form's other fields and the multipart framing around the file.
FORM_OVERHEAD = 64 * 1024


def upload_limit() -> int:
    """The largest request an upload may be: the file limit and the form around it."""
    return mailer().settings.media_max_bytes + FORM_OVERHEAD


@bp.url_value_preprocessor
def _upload_limit(endpoint, _values):
    # Before the CSRF check reads the form: only this form may exceed the app-wide limit,
    # and only for someone logged in.
    if endpoint == "media_admin.upload" and session.get("user_id") is not None:
        request.max_content_length = upload_limit()


@bp.errorhandler(NotFound)
def _not_found(exc):
    return render_template("admin/message.html", title="Not found", message=str(exc)), 404


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc):
    # Raised while the CSRF check reads the form, before the view: who is asking is checked here.
    limit = mailer().settings.media_max_bytes
    error = InvalidInput("file", f"The file is larger than {limit / (1024 * 1024):.1f} MB, the largest accepted. "
                                 "Save it smaller (e.g. 1200 px wide) and try again.")
    return can_change(lambda: _render_index(error, status=413))()


def _render_index(error: InvalidInput | None = None, form: dict | None = None, status: int = 200):
    base_url = mailer().settings.base_url
    with db_reader() as s:
        rows = [{"image": image, "url": url_for("media_files.image", key=image.key,
                                                 extension=media.EXTENSION[image.mime]),
                 "snippet": media.markdown_snippet(base_url, image), "used": media.users_of(s, image)}
                for image in media.list_images(s)]
    return render_template("admin/media/index.html", rows=rows, error=error, form=form or {"alt": ""},
                           max_mb=mailer().settings.media_max_bytes / (1024 * 1024), max_width=media.MAX_WIDTH,
                           email_width=media.EMAIL_WIDTH), status


@bp.get("")
@login_required
def index():
    return _render_index()


@bp.post("")
@can_change
def upload():
    form = {"alt": request.form.get("alt", "")}
    upload = request.files.get("file")
    settings = mailer().settings
    try:
        if upload is None or not upload.filename:
            raise InvalidInput("file", "Choose an image file to upload.")
        data = upload.stream.read(settings.media_max_bytes + 1)
        with db_session() as s:
            image, created = media.add_image(s, data, alt=form["alt"], filename=upload.filename, user_id=g.user.id,
                                             max_bytes=settings.media_max_bytes,
                                             max_pixels=settings.media_max_pixels, now=utcnow())
            image_id, width, height = image.id, image.width, image.height
    except InvalidInput as exc:
        return _render_index(exc, form, 400)
    if created:
        audit("media.upload", f"image {image_id} ({width} × {height})")
        flash(f"Uploaded: {width} × {height} pixels." + ("" if form["alt"].strip() else
                                                          " Add alt text: readers who cannot see it get that."))
    else:
        flash("This image is in the library already: it is the one marked below.")
    return redirect(url_for(".index", _anchor=f"image-{image_id}"))


@bp.post("/<int:image_id>/alt")
@can_change
def update_alt(image_id: int):
    try:
        with db_session() as s:
            media.set_alt(s, image_id, request.form.get("alt", ""))
    except InvalidInput as exc:
        flash(f"Alt text not saved: {exc.message}", "error")
        return redirect(url_for(".index", _anchor=f"image-{image_id}"))
    audit("media.alt", f"image {image_id}")
    flash("Alt text saved. Newsletters already written keep the alt text they were written with.")
    return redirect(url_for(".index", _anchor=f"image-{image_id}"))


@bp.post("/<int:image_id>/delete")
@can_change
def delete(image_id: int):
    try:
        with db_session() as s:
            _, sent = media.delete_image(s, image_id)
    except InvalidInput as exc:
        flash(f"Not deleted: {exc.message}", "error")
        return redirect(url_for(".index", _anchor=f"image-{image_id}"))
    audit("media.delete", f"image {image_id}")
    flash("Image deleted." + (f" It no longer shows in mail already sent: {'; '.join(sent)}." if sent else ""))
    return redirect(url_for(".index"))


@bp.app_template_global()
def media_library() -> list[dict]:
    """The library for the newsletter editor's "Insert image": alt text, size, Markdown."""
    base_url = mailer().settings.base_url
    with db_reader() as s:
        return [{"id": image.id, "alt": image.alt, "width": image.width, "height": image.height,
                 "url": url_for("media_files.image", key=image.key, extension=media.EXTENSION[image.mime]),
                 "snippet": media.markdown_snippet(base_url, image)} for image in media.list_images(s)]
