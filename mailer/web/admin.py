"""Staff pages: dashboard and the local dev mailbox."""
from __future__ import annotations

from email import message_from_bytes, policy

import sqlalchemy as sa
from flask import Blueprint, Response, abort, render_template

from mailer import outbox
from mailer.models import Contact, DevMessage, MailingList, Newsletter, Subscription, Webinar
from mailer.web import db_reader
from mailer.web.auth import login_required

bp = Blueprint("admin", __name__, url_prefix="/admin")
MAILBOX_PAGE = 50


@bp.get("/")
@login_required
def dashboard():
    with db_reader() as s:
        counts = s.execute(
            sa.select(MailingList.name, Subscription.status, sa.func.count())
            .join(Subscription, Subscription.list_id == MailingList.id)
            .group_by(MailingList.name, Subscription.status)
        ).all()
        lists = {}
        for name, status, count in counts:
            lists.setdefault(name, {})[status] = count
        for ml in s.scalars(sa.select(MailingList)):
            lists.setdefault(ml.name, {})
        return render_template(
            "admin/dashboard.html",
            lists=lists,
            contacts=s.scalar(sa.select(sa.func.count()).select_from(Contact).where(Contact.email.is_not(None))),
            queue=outbox.queue_counts(s),
            newsletters=s.scalars(sa.select(Newsletter).order_by(Newsletter.id.desc()).limit(10)).all(),
            webinars=s.scalars(sa.select(Webinar).order_by(Webinar.starts_at).limit(10)).all(),
        )


@bp.get("/mailbox")
@login_required
def mailbox():
    with db_reader() as s:
        messages = s.execute(
            sa.select(DevMessage.id, DevMessage.rcpt_to, DevMessage.subject, DevMessage.created_at)
            .order_by(DevMessage.id.desc()).limit(MAILBOX_PAGE)
        ).all()
    return render_template("admin/mailbox.html", messages=messages)


def _dev_message(message_id: int) -> DevMessage:
    with db_reader() as s:
        message = s.get(DevMessage, message_id)
    if message is None:
        abort(404)
    return message


@bp.get("/mailbox/<int:message_id>")
@login_required
def mailbox_message(message_id: int):
    message = _dev_message(message_id)
    parsed = message_from_bytes(message.raw, policy=policy.default)
    text = parsed.get_body(preferencelist=("plain",))
    return render_template("admin/mailbox_message.html", message=message, headers=list(parsed.items()),
                           text=text.get_content() if text else "", raw=message.raw.decode("utf-8", "replace"))


@bp.get("/mailbox/<int:message_id>/html")
@login_required
def mailbox_html(message_id: int):
    """The HTML part alone, for a sandboxed iframe: no scripts, no forms, no outside requests."""
    parsed = message_from_bytes(_dev_message(message_id).raw, policy=policy.default)
    html = parsed.get_body(preferencelist=("html",))
    response = Response(html.get_content() if html else "", mimetype="text/html")
    response.headers["Content-Security-Policy"] = "sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@bp.get("/mailbox/<int:message_id>/raw")
@login_required
def mailbox_raw(message_id: int):
    return Response(_dev_message(message_id).raw, mimetype="text/plain")
