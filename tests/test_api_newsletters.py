"""The JSON API's newsletters, as another program uses them: bearer tokens, validation
answered with error objects, cursor pages, scheduling across DST, sending through the
real SMTP server, and an OpenAPI document that lists what is served."""
from __future__ import annotations

import datetime as dt
import json
import re

import pytest
import sqlalchemy as sa

from mailer.campaigns import newsletters
from mailer.db import session_scope, utcnow
from mailer.models import ApiToken
from tests.audience import BODY, make_audience

API = "/api/v1"
UTC = dt.timezone.utc
NEXT_YEAR = utcnow().year + 1
DRAFT = {"subject": "Spine Health for {{ contact.first_name }}", "preheader": "Three habits", "body_md": BODY,
         "lists": ["newsletter"]}




class Api:
    """The test client speaking JSON with a bearer token."""

    def __init__(self, client, token):
        self.client, self.token = client, token

    def __call__(self, method, path, body=None, *, raw=None, token=..., **kwargs):
        token = self.token if token is ... else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        return self.client.open(API + path, method=method, data=data, headers=headers,
                                content_type="application/json", **kwargs)

    def get(self, path, **kw):
        return self("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self("POST", path, body, **kw)

    def patch(self, path, body=None, **kw):
        return self("PATCH", path, body, **kw)

    def create(self, **fields) -> dict:
        response = self.post("/newsletters", dict(DRAFT, **fields))
        assert response.status_code == 201, response.json
        return response.json


@pytest.fixture
def api(client, tokens):
    return Api(client, tokens.write)


def error_of(response, status: int) -> dict:
    """The error object of a response that must have `status`."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.content_type == "application/json"
    body = response.json
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    return body["error"]


def last_sunday_of_march(year: int) -> dt.date:
    day = dt.date(year, 3, 31)
    return day - dt.timedelta(days=(day.weekday() + 1) % 7)


# Authentication ---------------------------------------------------------------------------

def test_requests_need_a_valid_token_and_changes_need_a_write_token(api, tokens, db):
    for token in (None, "mlr_not-a-token", tokens.revoked):
        response = api.get("/newsletters", token=token)
        assert error_of(response, 401)["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="mailer"'
        assert error_of(api.post("/newsletters", DRAFT, token=token), 401)["code"] == "unauthorized"
    # The token must come in the header; ?token= is for the bounce webhook only.
    assert api.get(f"/newsletters?token={tokens.read}", token=None).status_code == 401

    assert api.get("/newsletters", token=tokens.read).status_code == 200
    refused = error_of(api.post("/newsletters", DRAFT, token=tokens.read), 403)
    assert refused["code"] == "forbidden" and "read" in refused["message"]
    created = api.create()
    for method, path, body in (("PATCH", f"/newsletters/{created['id']}", {"subject": "Changed"}),
                               ("POST", f"/newsletters/{created['id']}/schedule", {"now": True}),
                               ("POST", f"/newsletters/{created['id']}/cancel", None),
                               ("POST", f"/newsletters/{created['id']}/test", {"addresses": ["a@example.com"]}),
                               ("POST", "/newsletters/preview", DRAFT)):
        assert error_of(api(method, path, body, token=tokens.read), 403)["code"] == "forbidden", path
    # A refused request changed nothing, and the read token can still look.
    assert api.get(f"/newsletters/{created['id']}", token=tokens.read).json == created
    assert db.scalar(sa.select(ApiToken.last_used_at).where(ApiToken.name == "dashboard")) is not None


# Create, read, change, list -------------------------------------------------------------------

def test_create_get_and_patch_a_newsletter(api, client):
    response = api.post("/newsletters", dict(DRAFT, public=True))
    assert response.status_code == 201
    created = response.json
    assert response.headers["Location"] == f"{API}/newsletters/{created['id']}"
    assert {k: created[k] for k in ("subject", "preheader", "body_md", "layout", "lists", "public", "status",
                                    "send_at", "audience_count", "started_at", "finished_at")} == {
        **DRAFT, "layout": "default", "public": True, "status": "draft", "send_at": None, "audience_count": None,
        "started_at": None, "finished_at": None}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", created["created_at"])
    assert api.get(response.headers["Location"].removeprefix(API)).json == created

    path = f"/newsletters/{created['id']}"
    changed = api.patch(path, {"subject": "  March   news  ", "public": False})
    assert changed.status_code == 200
    assert changed.json == dict(created, subject="March news", public=False)
    assert api.patch(path, {}).json == changed.json  # nothing given, nothing changed
    assert api.get(path).json == changed.json

    for body, field in (({"subject": None}, "subject"), ({"public": "yes"}, "public"), ({"lists": []}, "lists"),
                        ({"lists": "newsletter"}, "lists"), ({"colour": "red"}, "colour"),
                        ({"subject": "x" * 301}, "subject"), ({"layout": "fancy"}, "layout"),
                        ({"lists": ["newsletter", "no-such-list"]}, "lists"), ({"subject": "   "}, "subject")):
        error = error_of(api.patch(path, body), 422)
        assert (error["code"], error["field"]) == ("invalid", field), (body, error)
    assert api.get(path).json == changed.json


def test_a_template_error_is_answered_with_the_field_and_line_and_nothing_is_stored(api):
    body = "Hello {{ contact.first_name }},\n\nNews.\n{{ coupon }}\n"
    error = error_of(api.post("/newsletters", dict(DRAFT, body_md=body)), 422)
    assert error["field"] == "body"
    assert error["message"] == "body, line 4: unknown name 'coupon'"
    error = error_of(api.post("/newsletters", dict(DRAFT, subject="Hi {{ contact.first_name")), 422)
    assert error["field"] == "subject" and "line 1" in error["message"]
    assert api.get("/newsletters").json == {"items": [], "next_cursor": None}


def test_list_pages_through_every_newsletter_once_newest_first(api):
    ids = [api.create(subject=f"Issue {i}")["id"] for i in range(7)]
    seen, cursor, pages = [], None, 0
    while True:
        response = api.get("/newsletters?limit=3" + (f"&cursor={cursor}" if cursor else ""))
        assert response.status_code == 200
        page = response.json
        pages += 1
        assert len(page["items"]) <= 3
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == sorted(ids, reverse=True)
    newest_first = [f"Issue {i}" for i in range(6, -1, -1)]
    assert [item["subject"] for item in api.get("/newsletters").json["items"]] == newest_first
    assert api.get("/newsletters?limit=7").json["next_cursor"] is None

    for query, field in (("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"),
                         ("cursor=bm9wZQ", "cursor"), ("cursor=%00", "cursor"), ("cursor=aWQ6LTE", "cursor"),
                         ("page=2", "page")):
        error = error_of(api.get(f"/newsletters?{query}"), 422)
        assert error["field"] == field, query


def test_malformed_and_mistyped_bodies_are_refused_with_an_error_object(api, client):
    for raw in ("{", "not json", '{"subject": "Hi",}', "\xff", ""):
        error = error_of(api.post("/newsletters", raw=raw), 400)
        assert error["code"] == "malformed_json", raw
    for body, field in (([], None), ("a string", None), ({}, "subject"), (dict(DRAFT, subject=7), "subject"),
                        (dict(DRAFT, lists=[1]), "lists.0"), (dict(DRAFT, public=1), "public"),
                        (dict(DRAFT, subject="Hi\x00there"), "subject"), (dict(DRAFT, extra=True), "extra"),
                        (dict(DRAFT, lists=["x"] * 51), "lists"), (dict(DRAFT, body_md="x" * 100_001), "body_md")):
        error = error_of(api.post("/newsletters", body), 422)
        assert (error["code"], error["field"]) == ("invalid", field), (body if len(str(body)) < 200 else field, error)
    error = error_of(api.post("/newsletters", dict(DRAFT, colour="red", subject=None)), 422)
    assert "colour: Unknown field." in error["message"] and "subject:" in error["message"]
    big = error_of(api.post("/newsletters", raw=json.dumps(dict(DRAFT, body_md="x" * 1_100_000))), 413)
    assert big["code"] == "request_entity_too_large"
    assert api.get("/newsletters").json["items"] == []


# Scheduling and sending -----------------------------------------------------------------------

def test_a_local_time_is_scheduled_in_its_zone_across_the_clock_change(api):
    path = f"/newsletters/{api.create()['id']}/schedule"
    summer = api.post(path, {"local_time": f"{NEXT_YEAR}-07-06T09:00", "timezone": "Europe/London"})
    assert summer.status_code == 200
    assert (summer.json["status"], summer.json["send_at"]) == ("scheduled", f"{NEXT_YEAR}-07-06T08:00:00Z")
    winter = api.post(path, {"local_time": f"{NEXT_YEAR}-01-05T09:00:00", "timezone": "Europe/London"})
    assert winter.json["send_at"] == f"{NEXT_YEAR}-01-05T09:00:00Z"
    offset = api.post(path, {"send_at": f"{NEXT_YEAR}-03-02T09:00:00+02:00"})
    assert offset.json["send_at"] == f"{NEXT_YEAR}-03-02T07:00:00Z"

    skipped = f"{last_sunday_of_march(NEXT_YEAR)}T01:30"
    error = error_of(api.post(path, {"local_time": skipped, "timezone": "Europe/London"}), 422)
    assert error["field"] == "local_time" and "clocks go forward" in error["message"]
    for body, field in (({"send_at": f"{NEXT_YEAR}-03-02T09:00:00"}, "send_at"),
                        ({"send_at": "2001-03-02T09:00:00Z"}, "send_at"),
                        ({"send_at": "0001-01-01T00:00:00+05:00"}, "send_at"),
                        ({"send_at": 1893488400}, "send_at"),
                        ({"local_time": f"{NEXT_YEAR}-07-06T09:00", "timezone": "Mars/Olympus"}, "timezone"),
                        ({"local_time": f"{NEXT_YEAR}-07-06T09:00+01:00", "timezone": "Europe/London"}, "local_time"),
                        ({"local_time": f"{NEXT_YEAR}-07-06T09:00"}, "timezone"),
                        ({"now": False}, "now"), ({"now": 1}, "now"),
                        ({"now": True, "send_at": f"{NEXT_YEAR}-03-02T09:00:00Z"}, None), ({}, None)):
        error = error_of(api.post(path, body), 422)
        assert (error["code"], error["field"]) == ("invalid", field), (body, error)
    assert api.get(path.removesuffix("/schedule")).json["send_at"] == f"{NEXT_YEAR}-03-02T07:00:00Z"


def test_schedule_in_each_readers_own_zone_and_read_it_back(api, mailer, db):
    from mailer.models import Contact
    from tests.audience import address

    make_audience(mailer, 3)
    for i, zone in ((0, "Pacific/Auckland"), (1, "America/Los_Angeles")):  # reader 2: the organisation's (London)
        db.write(sa.update(Contact).where(Contact.email == address(i)).values(timezone=zone))
    path = f"/newsletters/{api.create()['id']}"
    scheduled = api.post(f"{path}/schedule", {"reader_local_time": f"{NEXT_YEAR}-07-06T09:00"})
    assert scheduled.status_code == 200, scheduled.json
    # 09:00 NZST on 6 July is 21:00 UTC on the 5th: sending starts there.
    expected = {"status": "scheduled", "send_at": f"{NEXT_YEAR}-07-05T21:00:00Z",
                "reader_local_time": f"{NEXT_YEAR}-07-06T09:00"}
    assert {key: scheduled.json[key] for key in expected} == expected
    assert {key: api.get(path).json[key] for key in expected} == expected
    report = api.get(f"{path}/report").json
    assert (report["queued"], report["waiting"]) == (0, 0)

    # Scheduling in one zone again is an ordinary send time.
    again = api.post(f"{path}/schedule", {"local_time": f"{NEXT_YEAR}-07-06T09:00", "timezone": "Europe/London"})
    assert (again.json["send_at"], again.json["reader_local_time"]) == (f"{NEXT_YEAR}-07-06T08:00:00Z", None)
    for body, field in (({"reader_local_time": f"{NEXT_YEAR}-07-06T09:00+01:00"}, "reader_local_time"),
                        ({"reader_local_time": "2001-07-06T09:00"}, "reader_local_time"),
                        ({"reader_local_time": f"{NEXT_YEAR}-07-06T09:00", "timezone": "Europe/London"}, None)):
        error = error_of(api.post(f"{path}/schedule", body), 422)
        assert (error["code"], error["field"]) == ("invalid", field), (body, error)
    document = api.get("/openapi.json").json
    assert "ScheduleReaderLocal" in json.dumps(document)


def test_send_now_goes_out_through_smtp_and_the_report_counts_it(api, mailer, smtp_server):
    make_audience(mailer, 3)
    newsletter = api.create()
    path = f"/newsletters/{newsletter['id']}"
    scheduled = api.post(f"{path}/schedule", {"now": True})
    assert scheduled.json["status"] == "scheduled"
    assert abs(dt.datetime.fromisoformat(scheduled.json["send_at"]) - utcnow()) < dt.timedelta(minutes=1)

    assert mailer.drain().sent == 3
    assert sorted(r.message["Subject"] for r in smtp_server.received) == [
        f"Spine Health for Reader{i}" for i in range(3)]
    report = api.get(f"{path}/report")
    assert report.status_code == 200
    figures = report.json
    assert {k: figures[k] for k in ("status", "audience", "sent", "queued", "failed", "cancelled")} == {
        "status": "sent", "audience": 3, "sent": 3, "queued": 0, "failed": 0, "cancelled": 0}
    assert sum(minute["count"] for minute in figures["sent_per_minute"]) == 3
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00Z", minute["minute"])
               for minute in figures["sent_per_minute"])
    assert figures["started_at"].endswith("Z") and figures["finished_at"].endswith("Z")
    assert api.get(path).json["status"] == "sent"

    # A sent issue can no longer be changed, scheduled or cancelled.
    for method, sub, body in (("PATCH", "", {"subject": "Too late"}), ("POST", "/schedule", {"now": True}),
                              ("POST", "/cancel", None)):
        assert error_of(api(method, path + sub, body), 422)["field"] == "status"


def test_test_copies_are_sent_marked_and_not_counted(api, mailer, smtp_server):
    make_audience(mailer, 1)
    path = f"/newsletters/{api.create(subject='March news')['id']}"
    addresses = ["Boss@Clinic.example", "boss@clinic.example", "ed@clinic.example"]
    response = api.post(f"{path}/test", {"addresses": addresses})
    assert (response.status_code, response.json) == (202, {"queued": 2})
    mailer.drain()
    assert sorted((r.rcpt_tos[0], r.message["Subject"]) for r in smtp_server.received) == [
        ("boss@clinic.example", "[TEST] March news"), ("ed@clinic.example", "[TEST] March news")]
    assert api.get(f"{path}/report").json["sent"] == 0
    assert api.get(path).json["status"] == "draft"

    for addresses in ([], [f"p{i}@example.com" for i in range(11)], ["not an address"], "boss@clinic.example", None):
        body = {} if addresses is None else {"addresses": addresses}
        assert error_of(api.post(f"{path}/test", body), 422)["field"] == "addresses", body


def test_cancel_a_scheduled_newsletter(api, mailer, smtp_server):
    make_audience(mailer, 2)
    path = f"/newsletters/{api.create()['id']}"
    api.post(f"{path}/schedule", {"send_at": f"{NEXT_YEAR}-03-02T09:00:00Z"})
    assert error_of(api.post(f"{path}/cancel", {"reason": "typo"}), 422)["field"] == "reason"
    cancelled = api.post(f"{path}/cancel")
    assert (cancelled.status_code, cancelled.json["status"]) == (200, "cancelled")
    assert error_of(api.post(f"{path}/cancel", {}), 422)["field"] == "status"
    assert error_of(api.patch(path, {"subject": "Again"}), 422)["field"] == "status"
    mailer.drain(clock=lambda: dt.datetime(NEXT_YEAR, 3, 2, 9, 1, tzinfo=UTC))
    assert smtp_server.received == []


# Checking and previewing ---------------------------------------------------------------------

def test_preflight_lists_problems_and_none_when_ready(api, mailer):
    body = "See [our site](http://clinic.example).\n\n<img src=\"https://clinic.example/a.png\">\n"
    risky = api.create(body_md=body)
    problems = api.get(f"/newsletters/{risky['id']}/preflight")
    assert problems.status_code == 200
    assert problems.json == {"problems": [
        "Link 'http://clinic.example' is not an absolute https:// address.",
        "1 image(s) have no alt text.",
        "No one would receive it: its lists have no active subscribers."]}
    make_audience(mailer, 1)
    assert api.get(f"/newsletters/{api.create()['id']}/preflight").json == {"problems": []}
    # A template that passes the checks but fails when it runs is a problem, not a server error.
    broken = api.create(body_md="Today: {{ 1/0 }}")
    [problem] = api.get(f"/newsletters/{broken['id']}/preflight").json["problems"]
    assert "division by zero" in problem


def test_preview_renders_for_a_sample_reader_and_stores_nothing(api):
    response = api.post("/newsletters/preview", {"subject": "Hello {{ contact.first_name }}", "body_md": BODY})
    assert response.status_code == 200
    preview = response.json
    assert set(preview) == {"subject", "html", "text"}
    assert preview["subject"] == "Hello Alex"
    assert "<strong>three habits</strong>" in preview["html"] and "Hello Alex," in preview["text"]
    assert api.get("/newsletters").json["items"] == []

    error = error_of(api.post("/newsletters/preview", {"subject": "Hi", "body_md": "{{ contact.nickname }}"}), 422)
    assert error["field"] == "body" and "line 1" in error["message"]
    error = error_of(api.post("/newsletters/preview", {"subject": "Hi", "body_md": "{{ 1/0 }}"}), 422)
    assert error["field"] == "body" and "division by zero" in error["message"]
    error = error_of(api.post("/newsletters/preview", {"subject": "Hi", "body_md": "x", "layout": "../base"}), 422)
    assert error["field"] == "layout"
    assert error_of(api.post("/newsletters/preview", {"subject": "Hi"}), 422)["field"] == "body_md"


# Not found, not allowed --------------------------------------------------------------------

def test_unknown_newsletters_paths_and_methods_answer_error_objects(api):
    for method, sub, body in (("GET", "", None), ("PATCH", "", {"subject": "x"}), ("GET", "/report", None),
                              ("GET", "/preflight", None), ("POST", "/schedule", {"now": True}),
                              ("POST", "/cancel", None), ("POST", "/test", {"addresses": ["a@example.com"]})):
        error = error_of(api(method, "/newsletters/999" + sub, body), 404)
        assert error == {"code": "not_found", "message": "No newsletter 999.", "field": None}, (method, sub)
    for path in ("/newsletters/0", "/newsletters/abc", "/newsletters/99999999999", "/nothing", "/"):
        assert error_of(api.get(path), 404)["code"] == "not_found", path
    response = api("DELETE", "/newsletters")
    assert error_of(response, 405)["code"] == "method_not_allowed"
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}
    # Outside /api/ the site's own pages still answer in HTML.
    assert api.client.get("/no-such-page").content_type.startswith("text/html")


def test_an_unexpected_failure_is_answered_as_a_json_500_and_logged(app, api, monkeypatch, caplog):
    app.config.update(TESTING=False, PROPAGATE_EXCEPTIONS=False)

    def broken(session, newsletter_id):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(newsletters, "get_newsletter", broken)
    error = error_of(api.get("/newsletters/1"), 500)
    assert error == {"code": "internal_error", "message": "Something went wrong on our side; it has been logged.",
                     "field": None}
    assert "disk on fire" in caplog.text


# The OpenAPI document -------------------------------------------------------------------------

def test_openapi_document_describes_every_route_from_the_models(client, app):
    response = client.get(f"{API}/openapi.json")  # no token needed
    assert response.status_code == 200
    doc = response.json
    assert doc["openapi"] == "3.1.0"
    bearer = doc["components"]["securitySchemes"]["bearer"]
    assert (bearer["type"], bearer["scheme"]) == ("http", "bearer")
    assert doc["security"] == [{"bearer": []}]

    served = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(API + "/"):
            path = re.sub(r"<(?:[^:<>]+:)?(\w+)>", r"{\1}", rule.rule.removeprefix(API))
            served |= {(path, method.lower()) for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(path, method) for path, methods in doc["paths"].items() for method in methods}
    assert documented == served

    schemas = doc["components"]["schemas"]
    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            if path == "/openapi.json":
                continue
            responses = op["responses"]
            expected = {"401"} | ({"403"} if method != "get" else set()) | ({"404"} if "{id}" in path else set()) \
                | ({"413", "422"} if "requestBody" in op else set()) \
                | ({"400"} if "application/json" in op.get("requestBody", {}).get("content", {}) else set())
            assert expected <= set(responses), (path, method)
            for code in expected:
                assert responses[code]["content"]["application/json"]["schema"] == error_ref
            if "{id}" in path:
                assert op["parameters"][0] == {"name": "id", "in": "path", "required": True,
                                               "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}}
    create = doc["paths"]["/newsletters"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NewsletterCreate"}
    assert create["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Newsletter"}
    assert schemas["NewsletterCreate"]["additionalProperties"] is False
    assert set(schemas["NewsletterCreate"]["required"]) == {"subject", "body_md", "lists"}
    assert "required" not in schemas["NewsletterPatch"]
    assert schemas["Newsletter"]["properties"]["send_at"]["anyOf"][0]["format"] == "date-time"
    assert [s["$ref"].rsplit("/", 1)[1] for s in schemas["ScheduleRequest"]["oneOf"]] == [
        "ScheduleAt", "ScheduleLocal", "ScheduleNow", "ScheduleReaderLocal"]
    assert schemas["ErrorDetail"]["required"] == ["code", "message", "field"]
    assert [p["name"] for p in doc["paths"]["/newsletters"]["get"]["parameters"]] == ["limit", "cursor"]


def test_pause_and_resume(client, mailer, smtp_server, tokens):
    api = Api(client, tokens.write)
    make_audience(mailer, 3)
    created = api.post("/newsletters", DRAFT).json
    assert api.post(f"/newsletters/{created['id']}/pause").status_code == 422  # not sending yet
    api.post(f"/newsletters/{created['id']}/schedule", {"now": True})
    with session_scope(mailer.sessions) as session:
        newsletters.start_due(session, utcnow())
    paused = api.post(f"/newsletters/{created['id']}/pause")
    assert paused.status_code == 200 and paused.json["status"] == "paused"
    assert mailer.drain().sent == 0
    assert api.get(f"/newsletters/{created['id']}/report").json["held"] == 3
    assert api.post(f"/newsletters/{created['id']}/resume").json["status"] == "sending"
    assert mailer.drain().sent == 3


def test_rhythms_and_ready(client, mailer, tokens):
    api = Api(client, tokens.write)
    made = api.post("/rhythms", {"name": "Monthly", "day": "1st tue", "hour": 9, "timezone": "Europe/London"})
    assert made.status_code == 201 and made.json["day"] == "1st tue"
    assert api.post("/rhythms", {"name": "x", "day": "1st xyz", "hour": 9, "timezone": "Europe/London"}
                    ).json["error"]["field"] == "day"
    assert [r["id"] for r in Api(client, tokens.read).get("/rhythms").json["items"]] == [made.json["id"]]
    created = api.post("/newsletters", DRAFT).json
    ready = api.post(f"/newsletters/{created['id']}/ready", {"rhythm_id": made.json["id"], "month": "2099-04"})
    assert ready.status_code == 200, ready.json
    assert ready.json["status"] == "scheduled" and ready.json["send_at"] == "2099-04-07T08:00:00Z"  # 09:00 BST
    other = api.post("/newsletters", DRAFT).json
    clash = api.post(f"/newsletters/{other['id']}/ready", {"rhythm_id": made.json["id"], "month": "2099-04"})
    assert clash.status_code == 422 and clash.json["error"]["field"] == "month"


def test_duplicate_and_delete_a_draft(api):
    draft = api.create(subject="May news")
    copied = api.post(f"/newsletters/{draft['id']}/duplicate")
    assert copied.status_code == 201 and copied.json["subject"] == "May news" and copied.json["status"] == "draft"
    assert copied.headers["Location"].endswith(f"/newsletters/{copied.json['id']}")
    gone = api("DELETE", f"/newsletters/{copied.json['id']}")
    assert gone.status_code == 200 and gone.json == {"id": copied.json["id"], "subject": "May news"}
    assert api.get(f"/newsletters/{copied.json['id']}").status_code == 404
    api.post(f"/newsletters/{draft['id']}/cancel")
    refused = api("DELETE", f"/newsletters/{draft['id']}")
    assert error_of(refused, 422)["field"] == "status"


def test_rhythms_are_changed_and_stopped(api):
    made = api.post("/rhythms", {"name": "Monthly", "day": "1st tue", "hour": 9, "timezone": "Europe/London"})
    assert made.status_code == 201
    rhythm_id = made.json["id"]
    changed = api("PUT", f"/rhythms/{rhythm_id}", {"name": "Mid-month", "day": "15", "hour": 10, "minute": 30,
                                                   "timezone": "Europe/London"})
    assert changed.status_code == 200 and changed.json["name"] == "Mid-month"
    bad = api("PUT", f"/rhythms/{rhythm_id}", {"name": "x", "day": "someday", "hour": 9, "timezone": "Europe/London"})
    assert error_of(bad, 422)["field"] == "day"
    assert api("DELETE", f"/rhythms/{rhythm_id}").status_code == 200
    assert api.get("/rhythms").json["items"] == []
    assert api("DELETE", f"/rhythms/{rhythm_id}").status_code == 404
