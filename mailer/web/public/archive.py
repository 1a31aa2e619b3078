"""The public archive: past newsletters marked public, shown as a reader would see them
but with no reader in them (no name, no address, no working personal link)."""
from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, Response, abort, current_app, render_template

from mailer.campaigns import blog, newsletters
from mailer.models import Newsletter, NewsletterStatus
from mailer.delivery.rendering import RenderedEmail
from mailer.db import utcnow
from mailer.web import db_reader, mailer

bp = Blueprint("archive", __name__, url_prefix="/archive")

NOBODY = {"first_name": "", "name": "", "email": ""}
# The issue's HTML runs nothing and sends nothing anywhere; its images may load.
SANDBOX_CSP = ("sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; "
               "style-src 'unsafe-inline'; img-src https: data:; frame-ancestors 'self'")


def _published(session, newsletter_id: int) -> Newsletter:
    newsletter = session.get(Newsletter, newsletter_id)
    if newsletter is None or not newsletter.public or newsletter.status != NewsletterStatus.SENT:
        abort(404)
    return newsletter


def _rendered(newsletter: Newsletter, session) -> RenderedEmail:
    """The issue as nobody in particular gets it (the blog's posts it listed are those of
    its send). A sent issue never changes, so each is rendered once per process."""
    cache = current_app.extensions.setdefault("archive_renderings", {})
    if newsletter.id not in cache:
        m = mailer()
        cache[newsletter.id] = newsletters.preview(
            m.renderer, m.settings, subject=newsletter.subject, preheader=newsletter.preheader,
            body_md=newsletter.body_md, layout=newsletter.layout, contact=NOBODY,
            unsubscribe_url=f"{m.settings.base_url}/archive/{newsletter.id}", checked=False,
            posts=blog.posts_for_issue(session, m.settings, newsletter, now=utcnow()))
    return cache[newsletter.id]


@bp.get("")
def index():
    with db_reader() as s:
        issues = s.scalars(sa.select(Newsletter).where(
            Newsletter.public.is_(True), Newsletter.status == NewsletterStatus.SENT,
        ).order_by(Newsletter.started_at.desc(), Newsletter.id.desc())).all()
        listed = [(n, _rendered(n, s).subject) for n in issues]
    return render_template("public/archive.html", title="Newsletter archive", issues=listed)


@bp.get("/<int:newsletter_id>")
def issue(newsletter_id: int):
    with db_reader() as s:
        newsletter = _published(s, newsletter_id)
        rendered = _rendered(newsletter, s)
    return render_template("public/archive_issue.html", title=rendered.subject, n=newsletter)


@bp.get("/<int:newsletter_id>/email.html")
def issue_html(newsletter_id: int):
    with db_reader() as s:
        rendered = _rendered(_published(s, newsletter_id), s)
    response = Response(rendered.html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = SANDBOX_CSP
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response
