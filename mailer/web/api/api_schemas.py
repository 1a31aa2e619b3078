"""The JSON API's request and response bodies as pydantic models, and the OpenAPI 3.1
document built from those same models: what validates a request is what describes it."""
from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import re
import urllib.parse
from typing import Annotated, Any, Literal, Union
from zoneinfo import ZoneInfo

from pydantic import (AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field,
                      RootModel, StrictBool, StringConstraints, Tag, WithJsonSchema)
from pydantic.json_schema import models_json_schema

from mailer.models import NewsletterStatus, RegistrationStatus, WebinarStatus

UTC = dt.timezone.utc
API_VERSION = "1.0.0"
MAX_ID = 2**31 - 1  # ids are 32-bit integers on PostgreSQL
# PostgreSQL cannot store NUL in text, so no string the API accepts may hold one.
NO_NUL = r"^[^\x00]*$"
EARLIEST, LATEST = dt.datetime(2000, 1, 1, tzinfo=UTC), dt.datetime(2999, 12, 31, tzinfo=UTC)


def Text(min_length: int = 0, max_length: int | None = None, description: str | None = None) -> Any:
    return Annotated[str, StringConstraints(min_length=min_length, max_length=max_length, pattern=NO_NUL),
                     Field(description=description)]


# Checks that need more than a JSON Schema can say. Each raises ValueError, which the
# API answers as 422 naming the field.

def _known_layout(name: str) -> str:
    from mailer.campaigns.newsletters import layouts

    if name not in layouts():
        raise ValueError(f"Unknown layout '{name}'; choose one of: {', '.join(layouts())}.")
    return name


def _known_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        raise ValueError(f"Unknown time zone '{name}'; use an IANA name such as Europe/London.") from None
    return name


def _in_range(value: dt.datetime) -> dt.datetime:
    if not EARLIEST <= value <= LATEST:
        raise ValueError("The time must be between the years 2000 and 2999.")
    return value.astimezone(UTC)


def _wall_clock(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text)
    if not EARLIEST.replace(tzinfo=None) <= value <= LATEST.replace(tzinfo=None):
        raise ValueError("The time must be between the years 2000 and 2999.")
    return value


def _https_url(url: str) -> str:
    """Empty, or a full https:// address (what the webinar rules accept)."""
    text = url.strip()
    if not text:
        return url
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:
        parts = None
    if parts is None or parts.scheme != "https" or not parts.netloc:
        raise ValueError("Give a full https:// address.")
    return url


def _must_be_true(value: bool) -> bool:
    if value is not True:
        raise ValueError("Use true to send now, or give send_at or local_time instead.")
    return value


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def _decode_cursor(text: Any) -> int:
    if not isinstance(text, str) or len(text) > 100:
        raise ValueError("Not a cursor from this API: pass next_cursor from the previous page unchanged.")
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        decoded = ""
    if not re.fullmatch(r"id:[1-9][0-9]{0,9}", decoded) or int(decoded[3:]) > MAX_ID:
        raise ValueError("Not a cursor from this API: pass next_cursor from the previous page unchanged.")
    return int(decoded[3:])


# Field types shared by requests -------------------------------------------------------

Subject = Annotated[Text(1, 300, "Subject line; may use the template names listed in the API description."),
                    Field(examples=["Spine Health, {{ contact.first_name }}"])]
Preheader = Text(0, 300, "Preview text shown after the subject in most inboxes.")
BodyMarkdown = Annotated[Text(0, 100_000, "Markdown with Jinja template names, e.g. {{ contact.first_name }}."),
                         Field(examples=["Hello {{ contact.first_name or 'there' }},\n\nThis month: three habits."])]
Layout = Annotated[Text(1, 100, "An email layout, from templates/email/layouts."), AfterValidator(_known_layout),
                   Field(examples=["default"])]
ListSlugs = Annotated[list[Text(1, 64)], Field(min_length=1, max_length=50, examples=[["newsletter"]],
                                               description="Slugs of the mailing lists that receive it.")]
Public = Annotated[StrictBool, Field(description="Shown in the public archive once sent.")]
SegmentId = Annotated[int | None, Field(ge=1, le=MAX_ID, description="Only the readers of its lists who are in this "
                                        "segment (GET /segments); null: all of them. A segment never adds anyone.")]
Zone = Annotated[Text(1, 64, "An IANA time zone name."), AfterValidator(_known_zone),
                 Field(examples=["Europe/London"])]
SendAt = Annotated[AwareDatetime, AfterValidator(_in_range),
                   Field(description="RFC 3339 date-time with an offset.", examples=["2027-03-02T09:00:00Z"])]
LocalTime = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2})?$"),
                      AfterValidator(_wall_clock),
                      Field(description="A wall-clock time without offset, read in `timezone`.",
                            examples=["2027-03-02T09:00"])]
WebinarSlug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,98}[a-z0-9]$"),
                        Field(description="The public address /webinars/<slug>: 3–100 lower-case letters, digits "
                                          "and dashes.", examples=["spine-health"])]
WebinarTitle = Annotated[Text(1, 300, "Shown on the page and in every mail."), Field(examples=["Spine Health"])]
DurationMinutes = Annotated[int, Field(ge=5, le=24 * 60, description="Minutes, 5 to a day.", examples=[45])]
Capacity = Annotated[int | None, Field(ge=1, le=MAX_ID, examples=[100],
                                       description="Seats; null for no limit. Later registrants go on a waitlist.")]
DescriptionMarkdown = Text(0, 100_000, "Markdown, shown on the page and in the mails.")
WebinarUrl = Annotated[Text(0, 2000), AfterValidator(_https_url)]
JoinUrl = Annotated[WebinarUrl, Field(description="https:// link to the room; sent to confirmed registrants only. "
                                                  "Needed before publishing.",
                                      examples=["https://meet.example.com/spine-health"])]
ReplayUrl = Annotated[WebinarUrl, Field(description="https:// link to the recording; when set, a follow-up goes "
                                                    "out after the webinar. Empty for none.")]
ReminderOffsets = Annotated[Text(0, 200, "Minutes before the start, comma-separated (0: \"starting now\"); "
                                         "empty for no reminders."), Field(examples=["1440,60"])]
StartsLocal = Annotated[LocalTime, Field(description="The start as a wall-clock time without offset, read in "
                                                     "`timezone`.", examples=["2027-03-25T18:00"])]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(lambda v: v.astimezone(UTC)),
                        Field(description="RFC 3339, in UTC.")]


def _no_default(schema: dict) -> None:
    schema.pop("default", None)


def omittable() -> Any:
    """The default of a field that may be left out but not sent as null: in a PATCH, left
    out means unchanged. (None stands for "left out" and is kept out of the schema.)"""
    return Field(default=None, json_schema_extra=_no_default)


class Request(BaseModel):
    """Request bodies: no unknown fields, no type coercion ("1" is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Requests -----------------------------------------------------------------------------

class NewsletterCreate(Request):
    subject: Subject
    preheader: Preheader = ""
    body_md: BodyMarkdown
    layout: Layout = "default"
    lists: ListSlugs
    public: Public = False
    segment_id: SegmentId = None


class NewsletterPatch(Request):
    """Only the fields given change; the others keep their current values."""

    subject: Subject = omittable()
    preheader: Preheader = omittable()
    body_md: BodyMarkdown = omittable()
    layout: Layout = omittable()
    lists: ListSlugs = omittable()
    public: Public = omittable()
    segment_id: SegmentId = omittable()


class PreviewRequest(Request):
    subject: Subject
    preheader: Preheader = ""
    body_md: BodyMarkdown
    layout: Layout = "default"


class WebinarCreate(Request):
    slug: WebinarSlug
    title: WebinarTitle
    starts_local: StartsLocal
    timezone: Zone
    duration_minutes: DurationMinutes = 60
    capacity: Capacity = None
    description_md: DescriptionMarkdown = ""
    join_url: JoinUrl = ""
    replay_url: ReplayUrl = ""
    reminder_offsets: ReminderOffsets = "1440,60"


class WebinarPatch(Request):
    """Only the fields given change; the others keep their current values. A new
    start (`starts_local`, or `timezone`, which is where the wall-clock time is read)
    is a reschedule: registrants get an updated invitation."""

    slug: WebinarSlug = omittable()
    title: WebinarTitle = omittable()
    starts_local: StartsLocal = omittable()
    timezone: Zone = omittable()
    duration_minutes: DurationMinutes = omittable()
    capacity: Capacity = omittable()  # null here means no limit
    description_md: DescriptionMarkdown = omittable()
    join_url: JoinUrl = omittable()
    replay_url: ReplayUrl = omittable()
    reminder_offsets: ReminderOffsets = omittable()


class PublishRequest(Request):
    """No fields; the body may be left out."""


class AttendanceRequest(Request):
    emails: Annotated[list[Text(1, 320)], Field(min_length=1, max_length=1000, examples=[["ann@example.com"]],
                                                 description="Registrants' addresses; others are ignored.")]
    attended: Annotated[StrictBool, Field(description="false takes a mark back.")] = True


class ScheduleAt(Request):
    """At an instant."""

    send_at: SendAt


class ScheduleLocal(Request):
    """At a wall-clock time in a time zone (a time the clocks skip is refused)."""

    local_time: LocalTime
    timezone: Zone


class ScheduleReaderLocal(Request):
    """At a wall-clock time in each reader's own time zone (readers without one: the
    organisation's); sending starts when the first of them reaches it and ends with the last."""

    reader_local_time: Annotated[LocalTime, Field(description="A wall-clock time without offset, read in each "
                                                              "reader's own zone.", examples=["2027-03-10T09:00"])]


class ScheduleNow(Request):
    """As soon as the worker next looks (within seconds)."""

    now: Annotated[StrictBool, AfterValidator(_must_be_true), Field(json_schema_extra={"const": True})]


SCHEDULE_SHAPES = {"send_at": {"send_at"}, "local_time": {"local_time", "timezone"}, "now": {"now"},
                   "reader_local_time": {"reader_local_time"}}


def _schedule_shape(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    shapes = [name for name, keys in SCHEDULE_SHAPES.items() if value.keys() & keys]
    return shapes[0] if len(shapes) == 1 else None


class ScheduleRequest(RootModel):
    """Exactly one of: `send_at`; `local_time` with `timezone`; `reader_local_time`; `now: true`."""

    root: Annotated[Union[Annotated[ScheduleAt, Tag("send_at")], Annotated[ScheduleLocal, Tag("local_time")],
                          Annotated[ScheduleNow, Tag("now")],
                          Annotated[ScheduleReaderLocal, Tag("reader_local_time")]],
                    Discriminator(_schedule_shape, custom_error_type="invalid",
                                  custom_error_message="Give exactly one of: send_at; local_time with timezone; "
                                                       "reader_local_time; now: true.")]


class RhythmCreate(Request):
    """A monthly send time, e.g. the first Tuesday at 09:00 in Europe/London."""

    name: Annotated[Text(1, 200), Field(examples=["Monthly newsletter"])]
    day: Annotated[Text(1, 20), Field(examples=["1st tue"],
                                      description="A cron day expression: '1st tue', 'last fri', '15'.")]
    hour: Annotated[int, Field(ge=0, le=23)]
    minute: Annotated[int, Field(ge=0, le=59)] = 0
    timezone: Zone
    fill_from_blog: bool = Field(False, description="24 hours before a send time with no issue ready and new blog "
                                                    "posts, draft a digest for staff to approve (never sent unapproved).")


class ReadyRequest(Request):
    """Make this issue the one for a month of a rhythm: it goes out at that month's send time."""

    rhythm_id: Annotated[int, Field(ge=1, le=2**31 - 1)]
    month: Annotated[str, Field(pattern=r"^2[0-9]{3}-(0[1-9]|1[0-2])$", examples=["2027-03"])]


class TestSendRequest(Request):
    __test__ = False  # not a pytest test class

    addresses: Annotated[list[Text(1, 320)], Field(min_length=1, max_length=10, examples=[["editor@example.org"]],
                                                    description="Up to 10 addresses; each gets a copy marked [TEST].")]


class CancelRequest(Request):
    """No fields; the body may be left out."""


class ListQuery(BaseModel):
    """Query parameters: strings from the URL, converted; unknown ones are refused."""

    model_config = ConfigDict(extra="forbid")

    limit: Annotated[int, Field(ge=1, le=100, description="Items per page.")] = 20
    # The URL carries the opaque string; the view gets the id it stands for.
    cursor: Annotated[int, BeforeValidator(_decode_cursor), WithJsonSchema({
        "type": "string", "maxLength": 100,
        "description": "`next_cursor` from the previous page; leave out for the first page."})] = omittable()


# Responses ----------------------------------------------------------------------------

class Newsletter(Response):
    id: int
    subject: str
    preheader: str
    body_md: str
    layout: str
    lists: list[str]
    public: bool
    status: NewsletterStatus
    send_at: UtcDatetime | None = Field(description="When it goes (or went) out; null for a draft. For an issue "
                                                    "sent in its readers' own zones: when the first of them is due.")
    reader_local_time: str | None = Field(description="Set when the issue goes out at this wall-clock time in each "
                                                      "reader's own zone (readers without one: the organisation's).",
                                          examples=["2027-03-10T09:00"])
    audience_count: int | None = Field(description="Recipients queued when sending started.")
    segment_id: int | None = Field(description="Only the readers of its lists in this segment (none: all of them).")
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None

    @classmethod
    def of(cls, row) -> "Newsletter":
        return cls(id=row.id, subject=row.subject, preheader=row.preheader, body_md=row.body_md, layout=row.layout,
                   lists=sorted(ml.slug for ml in row.lists), public=row.public, status=row.status,
                   send_at=row.send_at, reader_local_time=row.send_local_time, audience_count=row.audience_count,
                   segment_id=row.segment_id, created_at=row.created_at,
                   started_at=row.started_at, finished_at=row.finished_at)


class NewsletterPage(Response):
    items: list[Newsletter]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class Webinar(Response):
    id: int
    slug: str
    title: str
    status: WebinarStatus
    starts_at: UtcDatetime
    starts_local: str = Field(description="The start as a wall-clock time in `timezone`.")
    timezone: str
    duration_minutes: int
    capacity: int | None
    seats_taken: int = Field(description="Confirmed registrations (the waitlist is not counted).")
    description_md: str
    join_url: str
    replay_url: str
    reminder_offsets: str
    sequence: int = Field(description="Calendar SEQUENCE: goes up with every reschedule and with cancelling.")
    created_at: UtcDatetime

    @classmethod
    def of(cls, row, seats_taken: int) -> "Webinar":
        local = row.starts_at.astimezone(ZoneInfo(row.timezone))
        return cls(id=row.id, slug=row.slug, title=row.title, status=row.status, starts_at=row.starts_at,
                   starts_local=local.strftime("%Y-%m-%dT%H:%M"), timezone=row.timezone,
                   duration_minutes=row.duration_minutes, capacity=row.capacity, seats_taken=seats_taken,
                   description_md=row.description_md, join_url=row.join_url, replay_url=row.replay_url,
                   reminder_offsets=row.reminder_offsets, sequence=row.sequence, created_at=row.created_at)


class WebinarPage(Response):
    items: list[Webinar]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class WebinarRegistration(Response):
    id: int
    email: str | None = Field(description="Null once the contact has been erased.")
    name: str
    status: RegistrationStatus
    attended: bool | None = Field(description="Null until attendance is marked.")
    timezone: str | None = Field(description="The registrant's zone, for their mails.")
    created_at: UtcDatetime

    @classmethod
    def of(cls, row, email: str | None, name: str) -> "WebinarRegistration":
        return cls(id=row.id, email=email, name=name, status=row.status, attended=row.attended,
                   timezone=row.timezone, created_at=row.created_at)


class RegistrationPage(Response):
    items: list[WebinarRegistration]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class AttendanceResult(Response):
    marked: int = Field(description="Registrations found among the addresses and marked.")


class MinuteCount(Response):
    minute: UtcDatetime
    count: int


class LinkClicks(Response):
    url: str
    clicks: int


class Report(Response):
    """Test copies are not counted."""

    id: int
    subject: str
    status: NewsletterStatus
    audience: int | None
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    sent: int
    queued: int
    held: int = Field(description="Kept while the issue is paused.")
    waiting: int = Field(description="Of `queued`: copies not due yet, for readers whose own clock has not reached "
                                     "the time of an issue sent in each reader's zone.")
    deferred: int
    failed: int
    suppressed: int
    cancelled: int
    unsubscribes: int = Field(description="Recipients who unsubscribed within 30 days of the start.")
    sent_per_minute: list[MinuteCount]
    opens: int = Field(description="Opens counted while open tracking is on (a total, never per person).")
    clicks: list[LinkClicks] = Field(description="Clicks per link while click tracking is on, most first.")


class Deleted(Response):
    id: int
    subject: str = Field(description="The deleted draft's subject, as it was written.")


class Preflight(Response):
    problems: list[str] = Field(description="What to fix before scheduling, in plain words; empty when ready.")


class Preview(Response):
    subject: str
    html: str
    text: str


class Rhythm(Response):
    id: int
    name: str
    day: str
    hour: int
    minute: int
    timezone: str
    fill_from_blog: bool
    next_send_at: UtcDatetime = Field(description="The next send time.")

    @classmethod
    def of(cls, rhythm, next_send_at) -> "Rhythm":
        return cls(id=rhythm.id, name=rhythm.name, day=rhythm.day, hour=rhythm.hour, minute=rhythm.minute,
                   timezone=rhythm.timezone, fill_from_blog=rhythm.fill_from_blog, next_send_at=next_send_at)


class RhythmList(Response):
    items: list[Rhythm]


class TestSendResult(Response):
    __test__ = False

    queued: int = Field(description="Copies queued (after removing duplicate addresses).")


class ErrorDetail(Response):
    code: str = Field(examples=["invalid"])
    message: str
    field: str | None = Field(description="The request field to correct, if one is to blame.")


class Error(Response):
    error: ErrorDetail


# The OpenAPI document -----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Operation:
    method: str
    path: str  # OpenAPI form, e.g. /newsletters/{id}
    operation_id: str
    summary: str
    response: type[BaseModel]
    status: int = 200
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    scope: Literal["read", "write"] = "read"
    description: str = ""
    answer: str = "Success."  # what the success response is, in a few words
    response_headers: dict[str, str] = dataclasses.field(default_factory=dict)
    errors: tuple[int, ...] = ()  # answers beyond the ones _error_codes derives
    content: dict[str, dict] = dataclasses.field(default_factory=dict)  # other media types: their schemas
    form: type[BaseModel] | None = None  # a multipart/form-data body (an upload) instead of JSON

    @property
    def path_params(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


ERROR_DESCRIPTIONS = {
    400: "The body is not JSON.",
    401: "No token, or not a valid one.",
    403: "The token's scope, or its user's role, does not allow this.",
    404: "No such resource.",
    413: "The body is larger than 1 MiB (an upload: MAILER_MEDIA_MAX_BYTES and a little more).",
    409: "It clashes with what exists (a slug taken); `field` names it.",
    422: "A field is missing, of the wrong type, out of range or not acceptable; `field` names it.",
}


def _error_codes(op: Operation) -> list[int]:
    codes = [401]
    if op.scope == "write":
        codes.append(403)
    if op.path_params:
        codes.append(404)
    if op.body is not None:
        codes += [400, 413, 422]
    elif op.form is not None:
        codes += [413, 422]
    elif op.query is not None:
        codes.append(422)
    return sorted(set(codes) | set(op.errors))


def _query_parameters(model: type[BaseModel]) -> list[dict]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", None)
        prop.pop("title", None)
        param = {"name": name, "in": "query", "required": name in required, "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return params


def openapi_document(operations: list[Operation], *, base_path: str, description: str = "") -> dict:
    """OpenAPI 3.1 for `operations`, every schema generated from the pydantic models."""
    models = {(Error, "serialization")}
    for op in operations:
        models.add((op.response, "serialization"))
        if op.body is not None:
            models.add((op.body, "validation"))
        if op.form is not None:
            models.add((op.form, "validation"))
    keys, defs = models_json_schema(sorted(models, key=lambda m: (m[0].__name__, m[1])),
                                    ref_template="#/components/schemas/{model}")

    def ref(model: type[BaseModel], mode: str) -> dict:
        return keys[(model, mode)]

    error_content = {"application/json": {"schema": ref(Error, "serialization")}}
    paths: dict[str, dict] = {}
    for op in operations:
        needs = "`write`" if op.scope == "write" else "`read` or `write`"
        spec: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary,
                                "description": (op.description + "\n\n" if op.description else "")
                                + f"Needs a token with scope {needs}.",
                                "tags": [op.path.split("/")[1]]}
        parameters = [{"name": name, "in": "path", "required": True,
                       "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}} for name in op.path_params]
        if op.query is not None:
            parameters += _query_parameters(op.query)
        if parameters:
            spec["parameters"] = parameters
        if op.body is not None:
            spec["requestBody"] = {"required": op.body_required,
                                   "content": {"application/json": {"schema": ref(op.body, "validation")}}}
        if op.form is not None:
            spec["requestBody"] = {"required": True,
                                   "content": {"multipart/form-data": {"schema": ref(op.form, "validation")}}}
        success: dict[str, Any] = {"description": op.answer,
                                   "content": {"application/json": {"schema": ref(op.response, "serialization")},
                                               **{media: {"schema": schema} for media, schema in op.content.items()}}}
        if op.response_headers:
            success["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                                  for name, text in op.response_headers.items()}
        spec["responses"] = {str(op.status): success, **{
            str(code): {"description": ERROR_DESCRIPTIONS[code], "content": error_content}
            for code in _error_codes(op)}}
        paths.setdefault(op.path, {})[op.method.lower()] = spec
    paths["/openapi.json"] = {"get": {
        "operationId": "openapi", "summary": "This document.", "security": [], "tags": ["meta"],
        "responses": {"200": {"description": "OpenAPI 3.1 document.",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "mailer API", "version": API_VERSION, "description": description},
        "servers": [{"url": base_path}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "An API token: `python -m mailer create-token EMAIL "
                                                          "--name NAME --scope read|write`."}},
        },
    }
