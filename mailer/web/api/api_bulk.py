"""API routes for bulk actions on a segment or a contacts search: count first, then queue
with the count (the console's confirmation, for programs), and follow the job. Each calls
mailer.audience.bulk and mailer.staff.jobs, as the console does; they register on
mailer.web.api.api's blueprint."""
from __future__ import annotations

import sqlalchemy as sa
from flask import g

from mailer.audience import bulk, directory, lists
from mailer.db import utcnow
from mailer.errors import Conflict
from mailer.models import User
from mailer.staff import jobs, users
from mailer.web import db_reader, db_session
from mailer.web.api import api_schemas_segments as schemas
from mailer.web.api.api import ApiError, operation
from mailer.web.api.api_people import require_owner

ABOUT = ("Without `expected_count` nothing is done and the answer is the count. With it, the action is queued as "
         "a background job (500 contacts a transaction, resumable) when the count is still right, 409 "
         "otherwise. `unsubscribe` writes a withdrawal with the token's user as its source and cancels unsent "
         "mail of the list; `enrol` adds only active subscribers of the automation's list, each once; `erase` "
         "needs a write token of an owner. Recorded in the audit log.")


def _plan_and_maybe_queue(body: schemas.BulkActionRequest, *, segment_id: int | None) -> schemas.BulkPlan:
    with db_session() as session:
        if body.action == bulk.ERASE:
            require_owner(session)
        search = None
        if segment_id is None:
            if body.search is None:
                raise ApiError(422, "invalid_input", "Give the search to act on.", "search")
            search = {"q": body.search.q or "", "status": body.search.status,
                      "list_id": lists.list_id_for(session, body.search.list, "search.list") if body.search.list
                      else None}
        planned = bulk.plan(session, body.action, segment_id=segment_id, search=search, up_to_id=body.up_to_id,
                            list_id=body.list_id, sequence_id=body.sequence_id, now=utcnow())
        job_id = None
        if body.expected_count is not None:
            if body.expected_count != planned.count:
                raise Conflict("expected_count", f"It acts on {planned.count:,} contacts now, not "
                                                 f"{body.expected_count:,}: check again.")
            email = session.scalar(sa.select(User.email).where(User.id == g.api_user_id))
            job_id = jobs.create_bulk(session, planned, user_id=g.api_user_id, user_email=email, now=utcnow()).id
            subject = f"segment {segment_id}" if search is None else directory.describe_search(**search)
            users.record(session, g.api_user_id, f"api_bulk_{planned.action}",
                         f"{subject}: {planned.summary()} (job {job_id})")
    return schemas.BulkPlan(action=planned.action, count=planned.count, up_to_id=planned.up_to_id, job_id=job_id)


@operation("POST", "/segments/<int:id>/bulk", summary="Act on everyone in a segment", body=schemas.BulkActionRequest,
           response=schemas.BulkPlan, errors=(403, 409), answer="The count, and the job when queued.",
           description=ABOUT + " The segment's rules are frozen when the job is queued.")
def bulk_on_segment(id: int, body: schemas.BulkActionRequest):
    return _plan_and_maybe_queue(body, segment_id=id)


@operation("POST", "/contacts/bulk", summary="Act on everyone a contacts search finds",
           body=schemas.BulkActionRequest, response=schemas.BulkPlan, errors=(403, 409),
           answer="The count, and the job when queued.",
           description=ABOUT + " `search` takes the filters of GET /contacts (at least one); every contact it "
                               "finds, up to `up_to_id`, not one page.")
def bulk_on_search(body: schemas.BulkActionRequest):
    return _plan_and_maybe_queue(body, segment_id=None)


@operation("GET", "/bulk-jobs/<int:id>", summary="A bulk action's progress", response=schemas.BulkJob)
def get_bulk_job(id: int):
    with db_reader() as session:
        return schemas.BulkJob.of(jobs.describe_bulk(jobs.get_bulk_job(session, id)))
