"""API models for segments: saved rules in one level of groups, and their count."""
from __future__ import annotations

import json
from typing import Annotated, List, Literal

from pydantic import Field

from mailer.audience import bulk, segments
from mailer.models import SubscriptionStatus
from mailer.web.api.api_schemas import Request, Response, Text, UtcDatetime, omittable
from mailer.web.api.api_schemas_people import MAX_ID, Id, ListSlug, SearchText

Match = Annotated[Literal[segments.MATCHES], Field(description="`all`: every one; `any`: at least one.")]
SegmentName = Annotated[Text(1, 200), Field(examples=["Came to Spine Health"])]


class RuleIn(Request):
    kind: Literal[segments.KINDS] = Field(description="`list` (status on a list), `subscribed` / `confirmed` (when), "
                                                      "`source` (the signup page contains a text), `timezone`, "
                                                      "`webinar`, `automation`, `field` (a custom field's value; "
                                                      "`ref_id` is the field).")
    op: Literal[tuple(sorted({op for ops in segments.OPS.values() for op in ops}))] = Field(
        description="Per kind: list: a subscription status; subscribed / confirmed: before, after (a date), "
                    "within_days (a number); source: contains; timezone: is, is_not, is_empty; webinar: "
                    "registered, attended, missed; automation: enrolled, completed; field: eq, ne, contains "
                    "(text, choice), lt, gt (number, date), is_empty.")
    value: Annotated[str, Field(max_length=200)] | Annotated[int, Field(ge=1, le=36600)] | None = Field(
        None, description="A date (YYYY-MM-DD), a number of days, a time zone or a text, as the op needs; "
                          "for a field, a value of its type (numbers as text, e.g. \"12.5\").")
    ref_id: Id | None = Field(None, description="The list, webinar, automation or field it is about (none: any "
                                                           "webinar).")


class GroupIn(Request):
    match: Match = "all"
    rules: Annotated[List[RuleIn], Field(min_length=1, max_length=segments.MAX_RULES)]


class RulesIn(Request):
    match: Match = "all"
    groups: Annotated[List[GroupIn], Field(min_length=1, max_length=segments.MAX_GROUPS)]


class SegmentCreate(Request):
    name: SegmentName
    rules: RulesIn


class SegmentPatch(Request):
    """Only the fields given change."""

    name: SegmentName = omittable()
    rules: RulesIn = omittable()


class Segment(Response):
    id: int
    name: str
    rules: dict = Field(description="As given, checked (the shape of `rules` in a create).")
    description: str = Field(description="The rules in words.")
    created_at: UtcDatetime
    updated_at: UtcDatetime
    archived_at: UtcDatetime | None = Field(description="Set once archived: no longer offered for new issues.")

    @classmethod
    def of(cls, session, row) -> "Segment":
        return cls(id=row.id, name=row.name, rules=json.loads(row.rules),
                   description=segments.describe(session, segments.rules_of(row)), created_at=row.created_at,
                   updated_at=row.updated_at, archived_at=row.archived_at)


class SegmentPage(Response):
    items: list[Segment]


class SegmentCount(Response):
    count: int = Field(description="Contacts with an address the rules pick now (on any list or none).")
    description: str


# Bulk actions on a segment or a contacts search ---------------------------------------------

class BulkSearch(Request):
    """The contacts search to act on, as GET /contacts takes it (at least one filter)."""

    q: SearchText = omittable()
    list: ListSlug = omittable()
    status: Annotated[SubscriptionStatus, Field(description="On `list`, or on any list.")] = omittable()


class BulkActionRequest(Request):
    """Without `expected_count` nothing is done: the answer is how many contacts the action
    would touch now. Send that count back as `expected_count` (and, for a search, the
    `up_to_id` you were given) to queue it; 409 if the count is no longer right."""

    action: Literal[bulk.ACTIONS] = Field(description="`unsubscribe` from `list_id`, `enrol` in the automation "
                                                      "`sequence_id`, or `erase` (a write token of an owner).")
    list_id: Id = omittable()
    sequence_id: Id = omittable()
    search: BulkSearch = omittable()
    up_to_id: Annotated[int, Field(ge=0, le=MAX_ID)] = omittable()
    expected_count: Annotated[int, Field(ge=0, le=MAX_ID)] = omittable()


class BulkPlan(Response):
    action: str
    count: int = Field(description="Contacts it acts on: those found now (nobody added after `up_to_id`).")
    up_to_id: int | None = Field(description="For a search: the newest contact it may reach; send it back.")
    job_id: int | None = Field(description="Set when queued: follow it at /bulk-jobs/{job_id}.")


class BulkJob(Response):
    id: int
    action: str
    what: str = Field(description="The action in words, e.g. \"unsubscribe from Monthly newsletter\".")
    status: str = Field(description="queued, running, done or failed.")
    done: int = Field(description="Contacts gone through so far.")
    total: int | None
    changed: int = Field(description="Contacts it acted on (not those already unsubscribed, in the automation "
                                     "or off its list).")
    error: str | None
    created_at: UtcDatetime
    finished_at: UtcDatetime | None

    @classmethod
    def of(cls, job: dict) -> "BulkJob":
        return cls(**{key: job[key] for key in cls.model_fields})
