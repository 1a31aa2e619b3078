"""Staff pages: the dashboard and the local dev mailbox."""
from __future__ import annotations

from email import message_from_bytes, policy

import sqlalchemy as sa
from flask import Blueprint, Response, abort, render_template

from mailer.staff import dashboard as dashboard_figures
from mailer.db import utcnow
from mailer.models import DevMessage
from mailer.web import db_reader, mailer
from mailer.web.admin.auth import login_required

bp = Blueprint("admin", __name__, url_prefix="/admin")
MAILBOX_PAGE = 50
CHART_WIDTH, CHART_HEIGHT = 720, 200


@bp.get("/")
@login_required
def dashboard():
    m, now = mailer(), utcnow()
    zone = m.settings.timezone
    with db_reader() as s:
        lists = dashboard_figures.list_counts(s)
        history, month = dashboard_figures.subscriber_figures(
            s, now=now, zone=zone, active_now=sum(counts["active"] for _, counts in lists))
        return render_template(
            "admin/dashboard.html",
            history=history,
            chart=_history_chart(history),
            month=month,
            lists=lists,
            next_newsletter=dashboard_figures.next_newsletter(s, now),
            latest=dashboard_figures.latest_newsletters(s),
            next_webinar=dashboard_figures.next_webinar(s, now),
            queue=dashboard_figures.queue(s, now),
            zone=zone,
        )


def _history_chart(history: list[dashboard_figures.Day]) -> dict:
    """Points of an inline SVG line (active subscribers) over bars of each day's gains and losses."""
    width, height, bars_height = CHART_WIDTH, CHART_HEIGHT, 40
    top, bottom = max(d.active for d in history), min(d.active for d in history)
    span = max(top - bottom, 1)
    step = width / max(len(history) - 1, 1)
    line_top = 20  # room for the highest figure's label above the line
    line_height = height - bars_height - 24 - line_top
    points = " ".join(f"{i * step:.1f},{line_top + line_height - (d.active - bottom) * line_height / span:.1f}"
                      for i, d in enumerate(history))
    peak_change = max(max(d.gained, d.lost) for d in history) or 1
    middle = height - 16 - bars_height / 2
    bars = []
    for i, d in enumerate(history):
        x = i * step - step * 0.35
        if d.gained:
            h = max(1.0, d.gained * bars_height / 2 / peak_change)
            bars.append({"x": round(x, 1), "y": round(middle - h, 1), "height": round(h, 1), "kind": "gained",
                         "label": f"{d.date.isoformat()}: +{d.gained}"})
        if d.lost:
            h = max(1.0, d.lost * bars_height / 2 / peak_change)
            bars.append({"x": round(x, 1), "y": round(middle, 1), "height": round(h, 1), "kind": "lost",
                         "label": f"{d.date.isoformat()}: -{d.lost}"})
    return {"width": width, "height": height, "points": points, "bars": bars, "bar_width": round(step * 0.7, 1),
            "middle": middle, "top": top, "bottom": bottom, "first": history[0].date, "last": history[-1].date}


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
