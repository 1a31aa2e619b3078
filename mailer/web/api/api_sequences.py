"""API routes for sequences (automations): create and change a sequence and its steps,
start, pause, resume and archive it, enrol a person by hand, and the per-step report.
Each view calls the functions of mailer.campaigns.sequences; they register on
mailer.web.api.api's blueprint."""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import sqlalchemy as sa
from flask import url_for

from mailer.audience import directory, lists
from mailer.campaigns import sequences
from mailer.db import utcnow
from mailer.errors import Conflict, InvalidInput
from mailer.models import MailingList
from mailer.web import db_reader, db_session
from mailer.web.api import api_schemas_sequences as schemas
from mailer.web.api.api import ApiError, field_renamed, operation
from mailer.web.api.api_people import audit

SEQUENCE = "/sequences/<int:id>"
STEP = SEQUENCE + "/steps/<int:step_id>"
# The domain names lists by id; the API by slug.
LIST_FIELDS = {"list_id": "list", "trigger_list_id": "trigger_list"}


def _slugs(session) -> dict[int, str]:
    return dict(session.execute(sa.select(MailingList.id, MailingList.slug)).all())


def _sequence(session, sequence) -> schemas.Sequence:
    counts = sequences.enrolment_counts(session, [sequence.id])[sequence.id]
    return schemas.Sequence(**schemas.SequenceSummary.fields_of(sequence, _slugs(session), counts),
                            steps=[schemas.Step.of(s) for s in sequences.live_steps(session, sequence.id)])


def _sequence_args(session, fields: dict) -> dict:
    """The domain's arguments from the API's fields (list slugs → ids)."""
    return dict(name=fields["name"], trigger=fields["trigger"],
                list_id=lists.list_id_for(session, fields["list"], "list"),
                trigger_list_id=(lists.list_id_for(session, fields["trigger_list"], "trigger_list")
                                 if fields.get("trigger_list") else None),
                trigger_webinar_id=fields.get("trigger_webinar_id"))


def _step_args(fields: dict) -> dict:
    return dict(subject=fields["subject"], preheader=fields["preheader"], body_md=fields["body_md"],
                layout=fields["layout"], delay=(fields["delay"], fields["delay_unit"]), window=fields["window"],
                condition=fields["condition"], condition_ref_id=fields["condition_ref_id"])


@contextmanager
def _within(prefix: str):
    """Name a domain error's field inside a list of the request, e.g. steps.1.window."""
    try:
        yield
    except InvalidInput as exc:
        raise InvalidInput(f"{prefix}.{exc.field}", exc.message) from None


# Sequences ----------------------------------------------------------------------------

@operation("GET", "/sequences", summary="Sequences, newest first, with their enrolment counts",
           response=schemas.SequencePage, answer="Every sequence.")
def list_sequences():
    with db_reader() as session:
        rows = sequences.list_sequences(session)
        counts = sequences.enrolment_counts(session, [s.id for s in rows])
        slugs = _slugs(session)
        return schemas.SequencePage(items=[schemas.SequenceSummary(**schemas.SequenceSummary.fields_of(
            s, slugs, counts[s.id])) for s in rows])


@operation("POST", "/sequences", summary="Create a draft sequence", body=schemas.SequenceCreate,
           response=schemas.Sequence, status=201, answer="The draft, with its steps.",
           headers={"Location": "The new sequence's URL."},
           description="Its steps may come with it (`steps`) or be added later; activate it to start. Steps are "
                       "templates, checked like a newsletter's; a problem names the step, e.g. `steps.1.window`.")
def create_sequence(body: schemas.SequenceCreate):
    with db_session() as session:
        with field_renamed(**LIST_FIELDS):
            sequence = sequences.create_sequence(session, **_sequence_args(session, body.model_dump()))
        for index, step in enumerate(body.steps):
            with _within(f"steps.{index}"):
                sequences.add_step(session, sequence.id, **_step_args(step.model_dump()))
        created = _sequence(session, sequence)
    return created, {"Location": url_for("api.get_sequence", id=created.id)}


@operation("GET", SEQUENCE, summary="One sequence with its steps", response=schemas.Sequence)
def get_sequence(id: int):
    with db_reader() as session:
        return _sequence(session, sequences.get_sequence(session, id))


@operation("PATCH", SEQUENCE, summary="Change a sequence", body=schemas.SequencePatch, response=schemas.Sequence,
           answer="The sequence as changed.",
           description="Fields left out keep their values. An archived sequence cannot be changed (422, field "
                       "`status`).")
def update_sequence(id: int, body: schemas.SequencePatch):
    with db_session() as session, field_renamed(**LIST_FIELDS):
        current = _sequence(session, sequences.get_sequence(session, id))
        merged = {**current.model_dump(include={"name", "trigger", "list", "trigger_list", "trigger_webinar_id"}),
                  **body.model_dump(exclude_unset=True)}
        return _sequence(session, sequences.update_sequence(session, id, **_sequence_args(session, merged)))


@operation("POST", SEQUENCE + "/activate", summary="Start a draft sequence", body=schemas.StateChange,
           body_required=False, response=schemas.Sequence, answer="The sequence, active.",
           description="From now on its trigger enrols people (nobody from before). It needs a step.")
def activate_sequence(id: int, body: schemas.StateChange | None):
    with db_session() as session:
        return _sequence(session, sequences.activate(session, id, now=utcnow()))


@operation("POST", SEQUENCE + "/pause", summary="Pause an active sequence", body=schemas.StateChange,
           body_required=False, response=schemas.Sequence, answer="The sequence, paused.",
           description="Nothing more is queued and what is queued is held; triggers go on enrolling people.")
def pause_sequence(id: int, body: schemas.StateChange | None):
    with db_session() as session:
        return _sequence(session, sequences.pause(session, id))


@operation("POST", SEQUENCE + "/resume", summary="Resume a paused sequence", body=schemas.StateChange,
           body_required=False, response=schemas.Sequence, answer="The sequence, active again.",
           description="Held mail goes out, and steps that came due meanwhile are queued once.")
def resume_sequence(id: int, body: schemas.StateChange | None):
    with db_session() as session:
        return _sequence(session, sequences.resume(session, id))


@operation("POST", SEQUENCE + "/archive", summary="Archive a sequence", body=schemas.StateChange,
           body_required=False, response=schemas.Sequence, answer="The sequence, archived.",
           description="For good: mail not yet sent is cancelled and nothing more goes out.")
def archive_sequence(id: int, body: schemas.StateChange | None):
    with db_session() as session:
        return _sequence(session, sequences.archive(session, id))


# Steps --------------------------------------------------------------------------------

@operation("POST", SEQUENCE + "/steps", summary="Add a last step", body=schemas.StepCreate, response=schemas.Step,
           status=201, answer="The step.",
           description="Enrolments already past the previous last step get it too, when it is due.")
def add_step(id: int, body: schemas.StepCreate):
    with db_session() as session:
        return schemas.Step.of(sequences.add_step(session, id, **_step_args(body.model_dump())))


@operation("PATCH", STEP, summary="Change a step", body=schemas.StepPatch, response=schemas.Step,
           answer="The step as changed.",
           description="Fields left out keep their values. Mail not yet sent carries the new text; the delay, "
                       "window and condition apply to readers not yet past the step.")
def update_step(id: int, step_id: int, body: schemas.StepPatch):
    with db_session() as session:
        current = schemas.Step.of(sequences.get_step(session, id, step_id)).model_dump()
        merged = {**current, **body.model_dump(exclude_unset=True)}
        return schemas.Step.of(sequences.update_step(session, step_id, **_step_args(merged)))


@operation("DELETE", STEP, summary="Delete a step", response=schemas.Step, answer="The step, deleted.",
           description="Nobody gets it from now on; its queued copies are cancelled, what was sent stays sent, "
                       "and no earlier step is sent again.")
def delete_step(id: int, step_id: int):
    with db_session() as session:
        sequences.get_step(session, id, step_id)
        return schemas.Step.of(sequences.delete_step(session, step_id, now=utcnow()))


# Enrolment and report -----------------------------------------------------------------

@operation("POST", SEQUENCE + "/enrolments", summary="Enrol a person by hand", body=schemas.EnrolRequest,
           response=schemas.Enrolled, answer="The person is in the sequence.", errors=(409,),
           description="By `contact_id` or `email`. The person must be subscribed to the sequence's list (its "
                       "mail is list mail of it). Someone already in it is 409, unless `restart` starts them "
                       "again from the first step. Recorded in the audit log.")
def enrol(id: int, body: schemas.EnrolRequest):
    if (body.contact_id is None) == (body.email is None):
        raise ApiError(422, "invalid", "Give exactly one of contact_id and email.", "contact_id")
    with db_session() as session:
        contact_id = body.contact_id or directory.contact_id_for_email(session, body.email)
        if body.restart:
            sequences.re_enrol(session, id, contact_id, utcnow())
        elif not sequences.enrol(session, id, contact_id, utcnow()):
            raise Conflict("contact_id", "This person is in the sequence already; send restart: true to start "
                                         "them again from the first step.")
        audit(session, "api_enrol", f"sequence {id}, contact {contact_id}" + (" (restart)" if body.restart else ""))
    return schemas.Enrolled(contact_id=contact_id, restarted=body.restart)


@operation("POST", SEQUENCE + "/enrolments/bulk", summary="Enrol many people by address", body=schemas.BulkEnrolRequest,
           response=schemas.BulkEnrolled, answer="How many were enrolled, and why the others were not.",
           description="Up to 10,000 addresses. Only active subscribers of the sequence's list are enrolled; nobody "
                       "already in it starts again. Recorded in the audit log (counts only).")
def enrol_many(id: int, body: schemas.BulkEnrolRequest):
    with db_session() as session:
        report = sequences.enrol_addresses(session, id, body.emails, utcnow())
        audit(session, "api_enrol_many", f"sequence {id}: {report.line()}")
    return schemas.BulkEnrolled(**dataclasses.asdict(report))


@operation("GET", SEQUENCE + "/report", summary="Enrolments and each step's outcomes", response=schemas.SequenceReport)
def sequence_report(id: int):
    with db_reader() as session:
        sequence = sequences.get_sequence(session, id)
        counts = sequences.enrolment_counts(session, [id])[id]
        return schemas.SequenceReport(id=id, name=sequence.name, status=sequence.status,
                                      enrolments=schemas.EnrolmentCounts.of(counts),
                                      steps=[schemas.StepReport(**row) for row in sequences.report(session, id)])
