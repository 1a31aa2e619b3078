"""API models for sequences (automations): the sequence with its trigger and list, its
steps (mail with a delay, a send window and a condition), enrolling a person, and the
per-step report."""
from __future__ import annotations

from typing import Annotated, List, Literal

from pydantic import Field, StrictBool

from mailer.campaigns import sequences
from mailer.models import SequenceStatus, SequenceTrigger, StepCondition
from mailer.web.api.api_schemas import (BodyMarkdown, Layout, Preheader, Request, Response, Subject, Text,
                                        UtcDatetime, omittable)
from mailer.web.api.api_schemas_people import Email, Id, ListSlug

Trigger = Annotated[Literal[tuple(SequenceTrigger)], Field(
    description="Who it starts for: `confirmed` a subscription to `trigger_list` (double opt-in; never an "
                "import); `imported`: added to `trigger_list` by a CSV import (active subscribers only; only "
                "sequences with this trigger enrol imported people); `registered` at, `attended` or `missed` the "
                "webinar `trigger_webinar_id` (or any webinar when null); `manual`: enrolled by staff only. Only "
                "what happens after the first activation enrols anyone.", examples=["confirmed"])]
SequenceName = Annotated[Text(1, 200), Field(examples=["Welcome series"])]
SequenceList = Annotated[ListSlug, Field(description="The list its mail is sent as: only its subscribers get it, "
                                                     "and unsubscribing leaves it.")]
TriggerList = Annotated[ListSlug | None, Field(description="For `confirmed` and `imported`: the list whose "
                                                           "confirmations, or imports, enrol people.")]
TriggerWebinar = Annotated[Id | None, Field(description="For the webinar triggers: the webinar, or null for any.")]
Delay = Annotated[int, Field(ge=0, le=366 * 24 * 60, examples=[3],
                             description="After the previous step was queued (after enrolment for the first), in "
                                         "`delay_unit`s; at most a year.")]
DelayUnit = Annotated[Literal[tuple(sequences.DELAY_UNITS)], Field(examples=["days"])]
Window = Annotated[Text(0, 100), Field(
    description="A send window in the reader's own zone, e.g. `weekdays 09:00-11:00` or `mon,wed 18:00-20:00`; "
                "empty for none.", examples=["weekdays 09:00-11:00"])]
Condition = Annotated[Literal[tuple(StepCondition)] | None, Field(
    description="Sent only if the reader is still `on_list` (the list `condition_ref_id`) or `attended` (the "
                "webinar `condition_ref_id`); otherwise skipped and counted.")]
ConditionRef = Annotated[Id | None, Field(description="The list's or webinar's id the condition is about.")]


# Requests -----------------------------------------------------------------------------

class StepCreate(Request):
    subject: Subject
    preheader: Preheader = ""
    body_md: BodyMarkdown
    layout: Layout = "default"
    delay: Delay = 0
    delay_unit: DelayUnit = "minutes"
    window: Window = ""
    condition: Condition = None
    condition_ref_id: ConditionRef = None


class StepPatch(Request):
    """Only the fields given change. A `delay` without `delay_unit` keeps the unit shown."""

    subject: Subject = omittable()
    preheader: Preheader = omittable()
    body_md: BodyMarkdown = omittable()
    layout: Layout = omittable()
    delay: Delay = omittable()
    delay_unit: DelayUnit = omittable()
    window: Window = omittable()
    condition: Condition = omittable()
    condition_ref_id: ConditionRef = omittable()


class SequenceCreate(Request):
    name: SequenceName
    trigger: Trigger
    list: SequenceList
    trigger_list: TriggerList = None
    trigger_webinar_id: TriggerWebinar = None
    steps: Annotated[List[StepCreate], Field(max_length=50, description="Its first steps, in order; more can be "
                                                                        "added later.")] = []


class SequencePatch(Request):
    """Only the fields given change; the others keep their values."""

    name: SequenceName = omittable()
    trigger: Trigger = omittable()
    list: SequenceList = omittable()
    trigger_list: TriggerList = omittable()
    trigger_webinar_id: TriggerWebinar = omittable()


class EnrolRequest(Request):
    """Exactly one of `contact_id` and `email`."""

    contact_id: Id | None = None
    email: Email | None = None
    restart: Annotated[StrictBool, Field(description="Someone already in the sequence starts again from the first "
                                                     "step (otherwise 409).")] = False


# Up to 2,000 addresses a request, so the largest valid body stays under the 1 MB request limit.
BULK_ENROL_MAX = 2000


class BulkEnrolRequest(Request):
    emails: Annotated[List[Annotated[str, Field(max_length=320)]], Field(
        min_length=1, max_length=BULK_ENROL_MAX,
        description="Addresses to enrol (up to 2,000 a request). Only active subscribers of the sequence's list are "
                    "enrolled, each once; the rest are counted in the answer, not refused one by one.")]


class StateChange(Request):
    """No fields; the body may be left out."""


# Responses ----------------------------------------------------------------------------

class Step(Response):
    id: int
    position: int = Field(description="Order within the sequence; a deleted step's position is not reused.")
    subject: str
    preheader: str
    body_md: str
    layout: str
    delay: int
    delay_unit: str
    delay_minutes: int
    window: str = Field(description="Empty when the step has no send window.")
    condition: str | None
    condition_ref_id: int | None
    created_at: UtcDatetime
    deleted_at: UtcDatetime | None

    @classmethod
    def of(cls, step) -> "Step":
        delay, unit = sequences.delay_parts(step.delay_minutes)
        return cls(id=step.id, position=step.position, subject=step.subject, preheader=step.preheader,
                   body_md=step.body_md, layout=step.layout, delay=delay, delay_unit=unit,
                   delay_minutes=step.delay_minutes, window=sequences.window_text(step), condition=step.condition,
                   condition_ref_id=step.condition_ref_id, created_at=step.created_at, deleted_at=step.deleted_at)


class EnrolmentCounts(Response):
    enrolled: int = Field(description="Everyone in it now: active, completed and exited.")
    active: int
    completed: int
    exited: int = Field(description="Left its list or suppressed.")

    @classmethod
    def of(cls, counts: dict[str, int]) -> "EnrolmentCounts":
        active, completed, exited = (counts.get(s, 0) for s in ("active", "completed", "exited"))
        return cls(enrolled=active + completed + exited, active=active, completed=completed, exited=exited)


class SequenceSummary(Response):
    id: int
    name: str
    trigger: str
    list: str
    trigger_list: str | None
    trigger_webinar_id: int | None
    status: SequenceStatus
    created_at: UtcDatetime
    activated_at: UtcDatetime | None = Field(description="First activation; triggers from before it enrol nobody.")
    enrolments: EnrolmentCounts

    @classmethod
    def fields_of(cls, sequence, slugs: dict[int, str], counts: dict[str, int]) -> dict:
        return dict(id=sequence.id, name=sequence.name, trigger=sequence.trigger, list=slugs[sequence.list_id],
                    trigger_list=slugs.get(sequence.trigger_list_id), trigger_webinar_id=sequence.trigger_webinar_id,
                    status=sequence.status, created_at=sequence.created_at, activated_at=sequence.activated_at,
                    enrolments=EnrolmentCounts.of(counts))


class Sequence(SequenceSummary):
    steps: List[Step] = Field(description="Its live steps, in order.")


class SequencePage(Response):
    items: list[SequenceSummary]


class Enrolled(Response):
    contact_id: int
    restarted: bool = Field(description="True when `restart` was asked for: anyone already in it starts again.")


class BulkEnrolled(Response):
    enrolled: int = Field(description="Added to the sequence now.")
    already: int = Field(description="In it already, left as they are.")
    not_subscribed: int = Field(description="Contacts who are not active subscribers of the sequence's list.")
    unknown: int = Field(description="Addresses no contact has.")
    invalid: int = Field(description="Not email addresses.")
    duplicate: int = Field(description="Given more than once.")


class StepReport(Response):
    step_id: int
    position: int
    subject: str
    deleted: bool
    deliveries: dict[str, int] = Field(description="Its mail by delivery status (queued, sent, held, deferred, "
                                                   "failed, cancelled, …).")
    skipped: int = Field(description="Readers whose condition failed.")
    unsubscribes: int = Field(description="Readers who left the sequence's list after this step was the last of "
                                          "its mail they were sent.")


class SequenceReport(Response):
    id: int
    name: str
    status: SequenceStatus
    enrolments: EnrolmentCounts
    steps: list[StepReport] = Field(description="Every step ever made, deleted ones too, in order.")
