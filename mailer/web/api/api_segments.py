"""API routes for segments: list, create, read, change, archive and count. Each view
calls mailer.audience.segments; they register on mailer.web.api.api's blueprint."""
from __future__ import annotations

from flask import url_for

from mailer.audience import segments
from mailer.db import utcnow
from mailer.web import db_reader, db_session
from mailer.web.api import api_schemas_segments as schemas
from mailer.web.api.api import operation

SEGMENT = "/segments/<int:id>"


@operation("GET", "/segments", summary="Segments by name, archived ones too", response=schemas.SegmentPage)
def list_segments():
    with db_reader() as session:
        return schemas.SegmentPage(items=[schemas.Segment.of(session, row)
                                          for row in segments.list_segments(session, archived=True)])


@operation("POST", "/segments", summary="Create a segment", body=schemas.SegmentCreate, response=schemas.Segment,
           status=201, answer="The segment.", headers={"Location": "The new segment's URL."},
           description="The rules are checked; a problem names its place, e.g. `groups.0.rules.1.ref_id`.")
def create_segment(body: schemas.SegmentCreate):
    with db_session() as session:
        row = segments.create_segment(session, name=body.name, rules=body.rules.model_dump(), now=utcnow())
        created = schemas.Segment.of(session, row)
    return created, {"Location": url_for("api.get_segment", id=created.id)}


@operation("GET", SEGMENT, summary="One segment", response=schemas.Segment)
def get_segment(id: int):
    with db_reader() as session:
        return schemas.Segment.of(session, segments.get_segment(session, id))


@operation("PATCH", SEGMENT, summary="Change a segment", body=schemas.SegmentPatch, response=schemas.Segment,
           answer="The segment as changed.",
           description="An issue already sending keeps the rules it started with.")
def update_segment(id: int, body: schemas.SegmentPatch):
    changes = body.model_dump(exclude_unset=True)
    with db_session() as session:
        current = segments.get_segment(session, id)
        row = segments.update_segment(session, id, name=changes.get("name", current.name),
                                      rules=changes.get("rules", current.rules), now=utcnow())
        return schemas.Segment.of(session, row)


@operation("POST", SEGMENT + "/archive", summary="Archive a segment", response=schemas.Segment,
           answer="The segment, archived.", description="It is no longer offered for new issues.")
def archive_segment(id: int):
    with db_session() as session:
        return schemas.Segment.of(session, segments.archive_segment(session, id, now=utcnow()))


@operation("GET", SEGMENT + "/count", summary="How many contacts a segment picks now", response=schemas.SegmentCount)
def count_segment(id: int):
    with db_reader() as session:
        rules = segments.rules_of(segments.get_segment(session, id))
        return schemas.SegmentCount(count=segments.count(session, rules, utcnow()),
                                    description=segments.describe(session, rules))
