"""The console's bulk-action flow, shared by the segment page and the contacts search: the
form's request, the confirmation page that states the count, and queueing the confirmed
job (asked again if the count changed; erasing needs the owner and a typed "erase N").
The actions themselves are mailer.audience.bulk and mailer.staff.jobs."""
from __future__ import annotations

import sqlalchemy as sa
from flask import abort, flash, g, redirect, render_template, request

from mailer.audience import bulk
from mailer.db import utcnow
from mailer.models import Role, Sequence, SequenceStatus
from mailer.staff import jobs
from mailer.web.admin.auth import audit


def _form_id(name: str) -> int | None:
    raw = request.form.get(name, "").strip()
    return int(raw) if raw.isdigit() else None


def requested() -> dict:
    """The action and what it names (list, automation) from the posted form; 403 for an
    erasure asked by anyone but an owner."""
    action = request.form.get("action", "")
    if action == bulk.ERASE and g.user.role != Role.OWNER:
        abort(403)
    return {"action": action, "list_id": _form_id("list"), "sequence_id": _form_id("sequence")}


def open_sequences(session) -> list[tuple[int, str]]:
    """(id, name) of the automations people can be added to (not archived)."""
    return [tuple(row) for row in session.execute(sa.select(Sequence.id, Sequence.name).where(
        Sequence.status != SequenceStatus.ARCHIVED).order_by(Sequence.name))]


def confirm_page(planned: bulk.Plan, *, about: str, back_url: str, run_url: str, hidden: dict,
                 error: str | None = None, status: int = 200):
    """The page that says what would happen to how many contacts. `about` names who they
    are ("in “Londoners”", "found by your search"); `hidden` carries what picks them."""
    return render_template("admin/bulk_confirm.html", planned=planned, about=about, back_url=back_url,
                           run_url=run_url, hidden=hidden, error=error), status


def queue(session, planned: bulk.Plan, *, about: str, back_url: str, run_url: str, hidden: dict):
    """Queue a confirmed action, or the confirmation page again (400) when the posted count
    is not the count now or an erasure's typed confirmation does not match. Returns
    (job id or None, the page to show when None). Audit it (audited) once the session is over."""
    problem = None
    if str(planned.count) != request.form.get("count", ""):
        problem = (f"There {'is 1 contact' if planned.count == 1 else f'are {planned.count:,} contacts'} now, not "
                   f"{request.form.get('count')}: check again.")
    elif planned.action == bulk.ERASE and request.form.get("confirm", "").strip() != f"erase {planned.count}":
        problem = f"To confirm, type “erase {planned.count}”. Nothing was erased."
    if problem:
        return None, confirm_page(planned, about=about, back_url=back_url, run_url=run_url, hidden=hidden,
                                  error=problem, status=400)
    return jobs.create_bulk(session, planned, user_id=g.user.id, user_email=g.user.email, now=utcnow()).id, None


def audited(planned: bulk.Plan, job_id: int, *, action: str, subject: str) -> None:
    """The audit entry of a queued bulk job: who it is about (never a searched text), how many."""
    audit(action, f"{subject}: {planned.summary()} (job {job_id})")


def refused(message: str, back_url: str):
    flash(f"Nothing done: {message}", "error")
    return redirect(back_url)
