"""Staff page for the outbox: deliveries filtered by status, kind and error text, newest
first, a page at a time. It shows addresses, so every view is audited."""
from __future__ import annotations

from flask import Blueprint, render_template, request, url_for

from mailer.delivery import outbox, sender
from mailer.delivery.registry import kind_label
from mailer.errors import InvalidInput
from mailer.models import DeliveryStatus
from mailer.web import db_reader
from mailer.web.admin.auth import audit, login_required

bp = Blueprint("deliveries_admin", __name__, url_prefix="/admin/deliveries")
PAGE = 50
ERROR_MAX = 200


def _filters() -> dict:
    """status, kind and error text from the query string; InvalidInput for what no menu offers."""
    status = request.args.get("status", "").strip() or None
    kind = request.args.get("kind", "").strip() or None
    error = request.args.get("error", "").strip() or None
    if status is not None and status not in set(DeliveryStatus):
        raise InvalidInput("status", "Choose a status from the menu.")
    if kind is not None and kind not in sender.BUILDERS:
        raise InvalidInput("kind", "Choose a kind of mail from the menu.")
    if error is not None and (len(error) > ERROR_MAX or "\x00" in error):
        raise InvalidInput("error", f"Search for at most {ERROR_MAX} characters of error text.")
    return {"status": status, "kind": kind, "error": error}


def _before_id() -> int | None:
    raw = request.args.get("before", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise InvalidInput("before", "That page link is not valid; start again from the first page.")
    return int(raw)


def _describe(filters: dict) -> str:
    """Audit detail: which filters, never the error text searched for (it may be an address)."""
    return (f"status={filters.get('status') or 'any'} kind={filters.get('kind') or 'any'} "
            f"error={'text' if filters.get('error') else 'none'}")


@bp.get("")
@login_required
def index():
    filters = {"status": None, "kind": None, "error": request.args.get("error", "")[:ERROR_MAX]}
    rows, error = [], None
    try:
        filters = _filters()
        with db_reader() as s:
            rows = outbox.search_deliveries(s, **filters, before_id=_before_id(), limit=PAGE)
    except InvalidInput as exc:
        error = exc
    audit("deliveries.view", _describe(filters))
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    page_args = {key: value for key, value in filters.items() if value}
    return render_template(
        "admin/deliveries/index.html", rows=rows, filters=filters, error=error, statuses=list(DeliveryStatus),
        kinds=sorted(sender.BUILDERS, key=kind_label), page_args=page_args, first_page=request.args.get("before") is None,
        next_url=url_for(".index", **page_args, before=rows[-1][0].id) if more else None), 400 if error else 200
