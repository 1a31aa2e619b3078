"""API routes for the media library (upload, list, read, change alt text, delete). Each view
calls mailer.campaigns.media; they register on mailer.web.api.api's blueprint."""
from __future__ import annotations

from flask import g, request, url_for

from mailer.campaigns import media
from mailer.db import utcnow
from mailer.staff import users
from mailer.web import db_reader, db_session, mailer
from mailer.web.admin.media_admin import upload_limit
from mailer.web.api import api_schemas_media as schemas
from mailer.web.api.api import bp, operation

IMAGE = "/media/<int:id>"


@bp.url_value_preprocessor
def _upload_limit(endpoint, _values):
    # Only an upload may be larger than the app-wide 1 MiB; read only after the token is checked.
    if endpoint == "api.upload_image":
        request.max_content_length = upload_limit()


def _image(row) -> schemas.MediaImage:
    return schemas.MediaImage.of(row, mailer().settings.base_url)


@operation("POST", "/media", summary="Upload an image to the media library", form=schemas.ImageUpload,
           response=schemas.MediaImage, status=201, answer="The image as stored.",
           headers={"Location": "The image's URL in the API."},
           description="A multipart/form-data body with `file` and optionally `alt`. The same image uploaded "
                       "again answers with the stored one (its alt text filled in if it had none). A file that "
                       "is not a PNG, JPEG, GIF or WebP, larger than MAILER_MEDIA_MAX_BYTES (then 413 or 422) or "
                       "of more than MAILER_MEDIA_MAX_PIXELS pixels is refused (422, field `file`).")
def upload_image(form: schemas.ImageUpload):
    settings = mailer().settings
    with db_session() as session:
        row, created = media.add_image(session, form.file, alt=form.alt, filename=_uploaded_name(),
                                       user_id=g.api_user_id, max_bytes=settings.media_max_bytes,
                                       max_pixels=settings.media_max_pixels, now=utcnow())
        if created:
            users.record(session, g.api_user_id, "media.upload", f"image {row.id} ({row.width} × {row.height})")
        answer = _image(row)
    return answer, {"Location": url_for("api.get_image", id=answer.id)}


def _uploaded_name() -> str:
    upload = request.files.get("file")
    return upload.filename or "" if upload is not None else ""


@operation("GET", "/media", summary="The media library, newest first", response=schemas.MediaPage)
def list_images():
    with db_reader() as session:
        return schemas.MediaPage(items=[_image(row) for row in media.list_images(session)])


@operation("GET", IMAGE, summary="One image of the media library", response=schemas.MediaImage)
def get_image(id: int):
    with db_reader() as session:
        return _image(media.get_image(session, id))


@operation("PATCH", IMAGE, summary="Change an image's alt text", body=schemas.ImagePatch,
           response=schemas.MediaImage, answer="The image as changed.",
           description="Newsletters already written keep the alt text they were written with.")
def update_image(id: int, body: schemas.ImagePatch):
    with db_session() as session:
        row = media.set_alt(session, id, body.alt)
        users.record(session, g.api_user_id, "media.alt", f"image {id}")
        return _image(row)


@operation("DELETE", IMAGE, summary="Delete an image", response=schemas.MediaDeleted, errors=(409,),
           answer="The image is gone; `sent_issues` no longer show it.",
           description="Refused (409, naming them) while a newsletter not yet sent or an automation step uses it.")
def delete_image(id: int):
    with db_session() as session:
        _, sent = media.delete_image(session, id)
        users.record(session, g.api_user_id, "media.delete", f"image {id}")
    return schemas.MediaDeleted(id=id, sent_issues=sent)
