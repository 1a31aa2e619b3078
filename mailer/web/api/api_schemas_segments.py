"""API models for segments: saved rules in one level of groups, and their count."""
from __future__ import annotations

import json
from typing import Annotated, List, Literal

from pydantic import Field

from mailer.audience import segments
from mailer.web.api.api_schemas import Request, Response, Text, UtcDatetime, omittable
from mailer.web.api.api_schemas_people import Id

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
