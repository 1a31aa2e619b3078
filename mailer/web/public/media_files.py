"""The media library's images, served to anyone who has the address (mail already sent
shows them, so no login), from our own origin; the random key in the address keeps the
library from being walked. An image never changes at its address: cached for a year."""
from __future__ import annotations

from flask import Blueprint, Response, abort, request

from mailer.campaigns import media
from mailer.web import db_reader

bp = Blueprint("media_files", __name__)
# Opened on its own, an image is a document that may do nothing.
IMAGE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


@bp.get("/media/<key>.<any(png, jpg, gif):extension>")
def image(key: str, extension: str):
    if len(key) > 32:
        abort(404)
    with db_reader() as session:
        found = media.image_for_serving(session, key, extension)
        if found is None:
            abort(404)
        data, mime, digest, name = found.data, found.mime, found.sha256, media.download_name(found)
    response = Response(data, mimetype=mime)
    response.set_etag(digest)
    response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Disposition"] = f'inline; filename="{name}"'
    response.headers["Content-Security-Policy"] = IMAGE_CSP
    # Webmail shows mail on its own origin (or fetches through its image proxy).
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response.make_conditional(request)
