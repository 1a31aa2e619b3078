"""The JSON API under /api/v1, behind bearer tokens. Each view validates its input with a
model from mailer.api_schemas, calls one domain function and returns a response model;
the `operation` decorator registers the route and its OpenAPI description together, so
/api/v1/openapi.json lists exactly what is served."""
from __future__ import annotations

import datetime as dt
import functools
import re
from contextlib import contextmanager
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, g, jsonify, request, url_for
from pydantic import BaseModel, RootModel, ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from mailer import clock
from mailer.web.api import api_schemas as schemas
from mailer.campaigns import blog, newsletters, webinars
from mailer.staff import users
from mailer.db import utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.web import db_reader, db_session, mailer, presented_token

PREFIX = "/api/v1"
bp = Blueprint("api", __name__, url_prefix=PREFIX)
SCOPES = {"read": frozenset({"read", "write"}), "write": frozenset({"write"})}
OPERATIONS: list[schemas.Operation] = []


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


def error_response(status: int, code: str, message: str, field: str | None = None):
    body = schemas.Error(error=schemas.ErrorDetail(code=code, message=message, field=field))
    response = Response(body.model_dump_json(), status=status, mimetype="application/json")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mailer"'
    return response


# Input --------------------------------------------------------------------------------

def _validation_error(exc: ValidationError, *, tagged: bool) -> ApiError:
    """The first problem names the field; the message lists them all."""
    problems = []
    for error in exc.errors(include_url=False):
        location = error["loc"][1:] if tagged else error["loc"]  # a tagged union's first step is the tag
        field = ".".join(str(part) for part in location) or None
        if error["type"] == "extra_forbidden":
            message = "Unknown field."
        elif error["type"] == "json_invalid":
            reason = error["msg"].removeprefix("Invalid JSON: ")
            return ApiError(400, "malformed_json", f"The body is not valid JSON: {reason}.")
        else:
            message = error["msg"].removeprefix("Value error, ")
        problems.append((field, message))
    field = problems[0][0] if problems else None
    return ApiError(422, "invalid", "; ".join(f"{f}: {m}" if f else m for f, m in problems), field)


def parse_body(model: type[BaseModel], *, required: bool):
    raw = request.get_data(cache=False)
    if not raw.strip():
        if not required:
            return None
        raise ApiError(400, "malformed_json", "A JSON body is required.")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _validation_error(exc, tagged=issubclass(model, RootModel)) from None


def parse_form(model: type[BaseModel]):
    """A multipart/form-data body: its fields as text, its files as bytes."""
    try:
        values: dict[str, object] = request.form.to_dict()
        values.update({name: upload.read() for name, upload in request.files.items()})
    except RequestEntityTooLarge:
        limit = request.max_content_length or 0
        raise ApiError(413, "too_large", f"The body is larger than {limit / (1024 * 1024):.1f} MB, the most "
                                         "this operation accepts.") from None
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _validation_error(exc, tagged=False) from None


def parse_query(model: type[BaseModel]):
    try:
        return model.model_validate(request.args.to_dict())
    except ValidationError as exc:
        raise _validation_error(exc, tagged=False) from None


@contextmanager
def field_renamed(**renames: str):
    """Domain errors name the domain's parameters; answer with the API's field names."""
    try:
        yield
    except InvalidInput as exc:
        if exc.field in renames:
            raise InvalidInput(renames[exc.field], exc.message) from None
        raise


# Routing ------------------------------------------------------------------------------

def operation(method: str, rule: str, *, summary: str, response: type[BaseModel], status: int = 200,
              body: type[BaseModel] | None = None, body_required: bool = True,
              query: type[BaseModel] | None = None, scope: str | None = None, description: str = "",
              answer: str = "Success.", headers: dict[str, str] | None = None, errors: tuple[int, ...] = (),
              content: dict[str, dict] | None = None, form: type[BaseModel] | None = None):
    """Register a view at `rule` (Flask syntax) and describe it in the OpenAPI document.
    The view gets `body` and `query` as validated models and returns a response model
    (or the model and extra headers); GET needs any token, everything else a write token.
    `errors` names answers beyond those every operation of its kind may give (403, 409);
    `content` documents other media types of the success answer, which the view then
    returns as a ready Response (e.g. a streamed CSV). `form` takes a multipart/form-data
    body (an upload) instead of JSON, given to the view as `form`."""
    scope = scope or ("read" if method == "GET" else "write")

    def register(view):
        OPERATIONS.append(schemas.Operation(
            method=method, path=re.sub(r"<(?:[^:<>]+:)?(\w+)>", r"{\1}", rule), operation_id=view.__name__,
            summary=summary, response=response, status=status, body=body, body_required=body_required,
            query=query, scope=scope, description=description or (view.__doc__ or "").strip(), answer=answer,
            response_headers=headers or {}, errors=errors, content=content or {}, form=form))

        @functools.wraps(view)
        def handle(**path):
            with db_session() as session:
                token = users.use_token(session, presented_token(allow_query=False), SCOPES[scope], now=utcnow())
                g.api_user_id = token.user_id  # for views that audit what they show
                g.api_token_name = token.name  # for the consent ledger: who acted, through what
            if any(isinstance(value, int) and value < 1 for value in path.values()):
                # No row has id 0; ids above MAX_ID never get here (mailer.web.IdConverter: 404).
                raise ApiError(404, "not_found", "No such resource.")
            kwargs = dict(path)
            if body is not None:
                kwargs["body"] = parse_body(body, required=body_required)
            if query is not None:
                kwargs["query"] = parse_query(query)
            if form is not None:
                kwargs["form"] = parse_form(form)
            result = view(**kwargs)
            if isinstance(result, Response):  # a streamed download (see `content`)
                return result
            result, extra_headers = result if isinstance(result, tuple) else (result, {})
            return Response(result.model_dump_json(), status=status, mimetype="application/json",
                            headers=extra_headers)

        bp.add_url_rule(rule, view.__name__, handle, methods=[method])
        return handle

    return register


@bp.get("/openapi.json")
def openapi():
    """Public: the document describes the API and holds no data."""
    return jsonify(openapi_document())


@functools.cache
def openapi_document() -> dict:
    return schemas.openapi_document(OPERATIONS, base_path=PREFIX, description=API_DESCRIPTION)


API_DESCRIPTION = (
    "mailer's JSON API. Authenticate with `Authorization: Bearer <token>`; reading needs a token "
    "of scope `read` or `write`, changing needs `write`.\n\n"
    "Errors are `{\"error\": {\"code\", \"message\", \"field\"}}`: 400 when the body is not JSON, 422 when "
    "it is JSON but not acceptable (unknown fields, wrong types, values out of range, or refused by "
    "mailer's rules), with `field` naming what to correct.\n\n"
    "Times are RFC 3339 with an offset, and come back in UTC (`Z`).\n\n"
    "Newsletter subjects and bodies are templates; they may use: "
    + ", ".join(f"`{name}`" + (f" ({', '.join(sorted(attrs))})" if attrs else "")
                for name, attrs in newsletters.TEMPLATE_NAMES.items()) + "."
)


# Errors: every answer from /api/ is a JSON error object ---------------------------------

@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return error_response(exc.status, exc.code, exc.message, exc.field)


@bp.errorhandler(users.AuthError)
def _auth_error(exc: users.AuthError):
    return error_response(exc.status, exc.code, exc.message)


@bp.errorhandler(InvalidInput)
def _invalid(exc: InvalidInput):
    return error_response(422, exc.code, exc.message, exc.field)


@bp.errorhandler(NotFound)
def _not_found(exc: NotFound):
    return error_response(404, exc.code, str(exc).capitalize() + ".")


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):  # e.g. 413 for a body over MAX_CONTENT_LENGTH
    if exc.code == 500:  # Flask has logged the exception already
        return error_response(500, "internal_error", "Something went wrong on our side; it has been logged.")
    response = error_response(exc.code or 500, _code(exc), exc.description or exc.name)
    if getattr(exc, "valid_methods", None):
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _code(exc: HTTPException) -> str:
    return re.sub(r"\W+", "_", exc.name.lower()).strip("_")


def is_api_path() -> bool:
    return request.path == "/api" or request.path.startswith("/api/")


# An unknown path or method fails in routing, before any blueprint is chosen, so those
# two are answered at the application level, for /api/ paths only (web/error_pages.py
# answers an unknown path elsewhere with a page, and hands /api/ ones to routing_error).
@bp.app_errorhandler(405)
def routing_error(exc: HTTPException):
    if is_api_path():
        return _http_error(exc)
    return exc


# Newsletters --------------------------------------------------------------------------

NEWSLETTER = "/newsletters/<int:id>"


@operation("GET", "/newsletters", summary="List newsletters, newest first", query=schemas.ListQuery,
           response=schemas.NewsletterPage, answer="One page of newsletters.")
def list_newsletters(query: schemas.ListQuery):
    with db_reader() as session:
        rows = newsletters.list_newsletters(session, before_id=query.cursor, limit=query.limit)
    more = len(rows) > query.limit
    rows = rows[:query.limit]
    return schemas.NewsletterPage(items=[schemas.Newsletter.of(row) for row in rows],
                                  next_cursor=schemas.encode_cursor(rows[-1].id) if more else None)


@operation("POST", "/newsletters", summary="Create a draft newsletter", body=schemas.NewsletterCreate,
           response=schemas.Newsletter, status=201, answer="The draft.",
           headers={"Location": "The new newsletter's URL."})
def create_newsletter(body: schemas.NewsletterCreate):
    with db_session() as session:
        newsletter = newsletters.create_newsletter(session, subject=body.subject, preheader=body.preheader,
                                                   body_md=body.body_md, layout=body.layout, lists=body.lists,
                                                   public=body.public, segment_id=body.segment_id)
        created = schemas.Newsletter.of(newsletter)
    return created, {"Location": url_for("api.get_newsletter", id=created.id)}


@operation("GET", NEWSLETTER, summary="One newsletter", response=schemas.Newsletter)
def get_newsletter(id: int):
    with db_reader() as session:
        return schemas.Newsletter.of(newsletters.get_newsletter(session, id))


@operation("PATCH", NEWSLETTER, summary="Change a draft or scheduled newsletter", body=schemas.NewsletterPatch,
           response=schemas.Newsletter, answer="The newsletter as changed.",
           description="Fields left out keep their values. A scheduled issue keeps its send time.")
def update_newsletter(id: int, body: schemas.NewsletterPatch):
    changes = body.model_dump(exclude_unset=True)
    with db_session() as session:
        current = newsletters.get_newsletter(session, id)
        merged = {"subject": current.subject, "preheader": current.preheader, "body_md": current.body_md,
                  "layout": current.layout, "lists": [ml.slug for ml in current.lists], "public": current.public,
                  "segment_id": current.segment_id, **changes}
        return schemas.Newsletter.of(newsletters.update_newsletter(session, id, **merged))


@operation("POST", NEWSLETTER + "/schedule", summary="Schedule a newsletter", body=schemas.ScheduleRequest,
           response=schemas.Newsletter, answer="The newsletter, scheduled.",
           description="Until sending starts it can be scheduled again or cancelled. A local time that the "
                       "clocks skip is refused; one they repeat is the first of the two. `reader_local_time` "
                       "sends at that wall-clock time in each reader's own zone (readers without one: the "
                       "organisation's): `send_at` becomes the first reader's instant, sending lasts until the "
                       "last one's, and a time already past for some of today's readers is refused.")
def schedule_newsletter(id: int, body: schemas.ScheduleRequest):
    now = utcnow()
    chosen = body.root
    with db_session() as session, field_renamed(send_at=_schedule_field(chosen)):
        if isinstance(chosen, schemas.ScheduleNow):
            send_at = now
        elif isinstance(chosen, schemas.ScheduleLocal):
            send_at = clock.local_to_utc(chosen.local_time, chosen.timezone)
        elif isinstance(chosen, schemas.ScheduleReaderLocal):
            return schemas.Newsletter.of(newsletters.schedule_in_reader_zones(
                session, id, chosen.reader_local_time, fallback_zone=mailer().settings.timezone, now=now))
        else:
            send_at = chosen.send_at
        return schemas.Newsletter.of(newsletters.schedule(session, id, send_at, now=now))


def _schedule_field(chosen) -> str:
    return {schemas.ScheduleLocal: "local_time", schemas.ScheduleNow: "now",
            schemas.ScheduleReaderLocal: "reader_local_time"}.get(type(chosen), "send_at")


@operation("POST", NEWSLETTER + "/cancel", summary="Cancel a newsletter", body=schemas.CancelRequest,
           body_required=False, response=schemas.Newsletter, answer="The newsletter, cancelled.",
           description="Before or while it goes out: whatever is still queued is not sent.")
def cancel_newsletter(id: int, body: schemas.CancelRequest | None):
    with db_session() as session:
        return schemas.Newsletter.of(newsletters.cancel(session, id))


@operation("POST", NEWSLETTER + "/duplicate", summary="Copy a newsletter as a new draft", body=schemas.CancelRequest,
           body_required=False, response=schemas.Newsletter, status=201, answer="The new draft.",
           headers={"Location": "The new draft's URL."},
           description="Its text, layout, lists and segment (an archived segment is left out); any issue may be copied.")
def duplicate_newsletter(id: int, body: schemas.CancelRequest | None):
    with db_session() as session:
        created = schemas.Newsletter.of(newsletters.duplicate_newsletter(session, id))
    return created, {"Location": url_for("api.get_newsletter", id=created.id)}


@operation("DELETE", NEWSLETTER, summary="Delete a draft newsletter", response=schemas.Deleted,
           answer="The draft is gone.", description="Only a draft (422, field `status`, otherwise: cancel it).")
def delete_newsletter(id: int):
    with db_session() as session:
        return schemas.Deleted(id=id, subject=newsletters.delete_newsletter(session, id))


@operation("POST", NEWSLETTER + "/pause", summary="Pause a newsletter that is sending", body=schemas.CancelRequest,
           body_required=False, response=schemas.Newsletter, answer="The newsletter, paused.",
           description="What is still queued is held, not dropped, until it is resumed.")
def pause_newsletter(id: int, body: schemas.CancelRequest | None):
    with db_session() as session:
        return schemas.Newsletter.of(newsletters.pause(session, id))


@operation("POST", NEWSLETTER + "/resume", summary="Resume a paused newsletter", body=schemas.CancelRequest,
           body_required=False, response=schemas.Newsletter, answer="The newsletter, sending again.")
def resume_newsletter(id: int, body: schemas.CancelRequest | None):
    with db_session() as session:
        return schemas.Newsletter.of(newsletters.resume(session, id))


@operation("POST", NEWSLETTER + "/ready", summary="Make this the issue for a month of a rhythm",
           body=schemas.ReadyRequest, response=schemas.Newsletter, answer="The newsletter, scheduled.",
           description="It goes out at that month's send time; one issue per rhythm and month.")
def ready_newsletter(id: int, body: schemas.ReadyRequest):
    with db_session() as session:
        return schemas.Newsletter.of(newsletters.mark_ready(session, id, body.rhythm_id, body.month, now=utcnow()))


@operation("GET", "/rhythms", summary="Monthly send times", response=schemas.RhythmList)
def list_rhythms():
    with db_reader() as session:
        now = utcnow()
        return schemas.RhythmList(items=[schemas.Rhythm.of(r, newsletters.next_occurrence(r, now))
                                         for r in newsletters.list_rhythms(session)])


@operation("POST", "/rhythms", summary="Create a monthly send time", body=schemas.RhythmCreate,
           response=schemas.Rhythm, status=201, answer="The rhythm.",
           description="Warns owners and editors 24 hours before a send time that has no ready issue.")
def create_rhythm(body: schemas.RhythmCreate):
    with db_session() as session:
        rhythm = newsletters.create_rhythm(session, name=body.name, day=body.day, hour=body.hour,
                                           minute=body.minute, timezone=body.timezone,
                                           fill_from_blog=body.fill_from_blog)
        return schemas.Rhythm.of(rhythm, newsletters.next_occurrence(rhythm, utcnow()))


@operation("PUT", "/rhythms/<int:id>", summary="Change a monthly send time", body=schemas.RhythmCreate,
           response=schemas.Rhythm, answer="The rhythm as changed.",
           description="Months already made ready keep the send time they were given; later months use the new one.")
def update_rhythm(id: int, body: schemas.RhythmCreate):
    with db_session() as session:
        rhythm = newsletters.update_rhythm(session, id, name=body.name, day=body.day, hour=body.hour,
                                           minute=body.minute, timezone=body.timezone,
                                           fill_from_blog=body.fill_from_blog)
        return schemas.Rhythm.of(rhythm, newsletters.next_occurrence(rhythm, utcnow()))


@operation("DELETE", "/rhythms/<int:id>", summary="Stop a monthly send time", response=schemas.Rhythm,
           answer="The rhythm, stopped.",
           description="No more warnings and no new months; issues it scheduled stay scheduled (cancel them to "
                       "stop them).")
def delete_rhythm(id: int):
    with db_session() as session:
        rhythm = newsletters.delete_rhythm(session, id)
        return schemas.Rhythm.of(rhythm, newsletters.next_occurrence(rhythm, utcnow()))


@operation("POST", NEWSLETTER + "/test", summary="Send test copies", body=schemas.TestSendRequest,
           response=schemas.TestSendResult, status=202, answer="The copies are queued.",
           description="Each address gets one copy with \"[TEST]\" in the subject and a dead unsubscribe "
                       "link. Test copies are never counted in the report.")
def send_test(id: int, body: schemas.TestSendRequest):
    with db_session() as session, field_renamed(email="addresses"):
        queued = newsletters.send_test(session, mailer().settings, id, body.addresses, now=utcnow())
    return schemas.TestSendResult(queued=queued)


@operation("GET", NEWSLETTER + "/report", summary="Audience and outcomes", response=schemas.Report)
def newsletter_report(id: int):
    with db_reader() as session:
        figures = newsletters.report(session, id, now=utcnow())
    plain = ("id", "subject", "status", "audience", "started_at", "finished_at", "sent", "queued", "held", "waiting",
             "deferred",
             "failed", "suppressed", "cancelled", "unsubscribes", "opens")
    return schemas.Report(
        **{key: figures[key] for key in plain},
        sent_per_minute=[schemas.MinuteCount(minute=_minute(bucket), count=count)
                         for bucket, count in figures["sent_per_minute"]],
        clicks=[schemas.LinkClicks(url=url, clicks=clicks) for url, clicks in figures["clicks"]])


def _minute(bucket: str) -> dt.datetime:
    """report() gives minutes as "YYYY-MM-DD HH:MM" in UTC."""
    return dt.datetime.fromisoformat(bucket.replace(" ", "T")).replace(tzinfo=dt.timezone.utc)


@operation("GET", NEWSLETTER + "/preflight", summary="Problems to fix before scheduling",
           response=schemas.Preflight, answer="The problems; none means ready.")
def newsletter_preflight(id: int):
    m = mailer()
    with db_reader() as session:
        problems = newsletters.preflight(session, m.renderer, m.settings, id)
    return schemas.Preflight(problems=problems)


@operation("POST", "/newsletters/preview", summary="Render a newsletter as a sample recipient gets it",
           body=schemas.PreviewRequest, response=schemas.Preview, answer="The rendered email.",
           description="Nothing is stored.")
def preview_newsletter(body: schemas.PreviewRequest):
    m = mailer()
    with db_reader() as session:  # the same webinars a mail sent now would list
        upcoming = newsletters.upcoming_for_issue(session, m.settings, utcnow())
        posts = blog.posts_for_issue(session, m.settings, now=utcnow())  # no issue: the newest posts
    rendered = newsletters.preview(m.renderer, m.settings, subject=body.subject, preheader=body.preheader,
                                   body_md=body.body_md, layout=body.layout, upcoming=upcoming, posts=posts)
    return schemas.Preview(subject=rendered.subject, html=rendered.html, text=rendered.text)


# Webinars -----------------------------------------------------------------------------

WEBINAR = "/webinars/<int:id>"
# save_webinar checks the start as a UTC instant; the API takes it as starts_local.
START_FIELDS = {"starts_at": "starts_local", "send_at": "starts_local"}


def _webinar(session, webinar) -> schemas.Webinar:
    return schemas.Webinar.of(webinar, webinars.seats_taken(session, webinar.id))


@operation("GET", "/webinars", summary="List webinars, newest first", query=schemas.ListQuery,
           response=schemas.WebinarPage, answer="One page of webinars.")
def list_webinars(query: schemas.ListQuery):
    with db_reader() as session:
        rows = webinars.list_webinars(session, before_id=query.cursor, limit=query.limit)
    more = len(rows) > query.limit
    rows = rows[:query.limit]
    return schemas.WebinarPage(items=[schemas.Webinar.of(row, taken) for row, taken in rows],
                               next_cursor=schemas.encode_cursor(rows[-1][0].id) if more else None)


@operation("POST", "/webinars", summary="Create a draft webinar", body=schemas.WebinarCreate,
           response=schemas.Webinar, status=201, answer="The draft.",
           headers={"Location": "The new webinar's URL."},
           description="The start must be in the future; a local time that the clocks skip is refused. "
                       "Publish it to open registration.")
def create_webinar(body: schemas.WebinarCreate):
    with db_session() as session, field_renamed(**START_FIELDS):
        webinar = webinars.save_webinar(session, None, **dict(body), now=utcnow())
        created = _webinar(session, webinar)
    return created, {"Location": url_for("api.get_webinar", id=created.id)}


@operation("GET", WEBINAR, summary="One webinar", response=schemas.Webinar)
def get_webinar(id: int):
    with db_reader() as session:
        return _webinar(session, webinars.get_webinar(session, id))


@operation("PATCH", WEBINAR, summary="Change a webinar", body=schemas.WebinarPatch, response=schemas.Webinar,
           answer="The webinar as changed.",
           description="Fields left out keep their values. A new start is a reschedule: unsent reminders move "
                       "with it and registrants get an updated invitation (`sequence` goes up). A cancelled "
                       "webinar cannot be changed.")
def update_webinar(id: int, body: schemas.WebinarPatch):
    changes = {name: getattr(body, name) for name in body.model_fields_set}  # starts_local stays a datetime
    with db_session() as session, field_renamed(**START_FIELDS):
        current = webinars.get_webinar(session, id)
        merged = {"slug": current.slug, "title": current.title, "timezone": current.timezone,
                  "starts_local": current.starts_at.astimezone(ZoneInfo(current.timezone)).replace(tzinfo=None),
                  "duration_minutes": current.duration_minutes, "capacity": current.capacity,
                  "description_md": current.description_md, "join_url": current.join_url,
                  "replay_url": current.replay_url, "reminder_offsets": current.reminder_offsets, **changes}
        return _webinar(session, webinars.save_webinar(session, current, **merged, now=utcnow()))


@operation("POST", WEBINAR + "/publish", summary="Publish a webinar", body=schemas.PublishRequest,
           body_required=False, response=schemas.Webinar, answer="The webinar, open for registration.",
           description="It needs a join link. Publishing a published webinar changes nothing.")
def publish_webinar(id: int, body: schemas.PublishRequest | None):
    with db_session() as session:
        return _webinar(session, webinars.publish(session, id))


@operation("POST", WEBINAR + "/cancel", summary="Cancel a webinar", body=schemas.CancelRequest,
           body_required=False, response=schemas.Webinar, answer="The webinar, cancelled.",
           description="Registrants of a published webinar get a calendar cancellation; nothing else goes out.")
def cancel_webinar(id: int, body: schemas.CancelRequest | None):
    with db_session() as session:
        return _webinar(session, webinars.cancel_webinar(session, id, now=utcnow()))


@operation("GET", WEBINAR + "/registrations", summary="A webinar's registrations, newest first",
           query=schemas.ListQuery, response=schemas.RegistrationPage, answer="One page of registrations.",
           description="Personal data: every call is recorded in the audit log.")
def list_registrations(id: int, query: schemas.ListQuery):
    with db_session() as session:
        rows = webinars.list_registrations(session, id, before_id=query.cursor, limit=query.limit)
        users.record(session, g.api_user_id, "api_view_registrants", f"webinar {id}")
    more = len(rows) > query.limit
    rows = rows[:query.limit]
    return schemas.RegistrationPage(items=[schemas.WebinarRegistration.of(*row) for row in rows],
                                    next_cursor=schemas.encode_cursor(rows[-1][0].id) if more else None)


@operation("POST", WEBINAR + "/attendance", summary="Mark attendance", body=schemas.AttendanceRequest,
           response=schemas.AttendanceResult, answer="How many registrations were marked.",
           description="Addresses that are not registered for this webinar are ignored.")
def mark_attendance(id: int, body: schemas.AttendanceRequest):
    with db_session() as session, field_renamed(email="emails"):
        webinars.get_webinar(session, id)
        marked = webinars.mark_attendance(session, id, body.emails, attended=body.attended)
    return schemas.AttendanceResult(marked=marked)
