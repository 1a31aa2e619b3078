"""Aggregate open and click counting for newsletters, only when the organisation has
turned it on: an open adds one to the issue's total, a click to the link's total.
Nothing about who opened or clicked is stored. Only issues that have started sending
answer; for any other id both routes are 404 and count nothing."""
from __future__ import annotations

import base64

from flask import Blueprint, abort, redirect

from mailer.campaigns import newsletters
from mailer.web import db_session, mailer

bp = Blueprint("tracking", __name__)

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


@bp.get("/t/o/<int:newsletter_id>.gif")
def opened(newsletter_id: int):
    if not mailer().settings.track_opens:
        abort(404)
    with db_session() as session:
        counted = newsletters.count_open(session, newsletter_id)
    if not counted:
        abort(404)
    return PIXEL, 200, {"Content-Type": "image/gif", "Cache-Control": "no-store"}


@bp.get("/t/c/<int:newsletter_id>/<url_hash>")
def clicked(newsletter_id: int, url_hash: str):
    if not mailer().settings.track_clicks:
        abort(404)
    with db_session() as session:
        url = newsletters.count_click(session, newsletter_id, url_hash)
    if url is None:
        abort(404)
    return redirect(url, code=302)
