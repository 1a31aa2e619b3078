"""The JSON API's webinars: create, publish, registrations (audited), attendance,
reschedule and cancel through bearer tokens, with error objects for what is refused."""
from __future__ import annotations

import sqlalchemy as sa

from mailer.campaigns import webinars
from mailer.audience.consent import RequestContext
from mailer.db import session_scope, utcnow
from mailer.models import AuditLog, Delivery, Registration, User, Webinar
from tests.test_api_newsletters import Api, error_of, last_sunday_of_march

NEXT_YEAR = utcnow().year + 1
DRAFT = {"slug": "spine-health", "title": "Spine Health", "starts_local": f"{NEXT_YEAR}-11-25T18:00",
         "timezone": "Europe/London", "duration_minutes": 45, "capacity": 2, "description_md": "Five exercises.",
         "join_url": "https://meet.example.com/spine", "replay_url": "", "reminder_offsets": "60, 1440"}


class WebinarApi(Api):
    def create(self, **fields) -> dict:
        response = self.post("/webinars", dict(DRAFT, **fields))
        assert response.status_code == 201, response.json
        return response.json


def make_api(client, token):
    return WebinarApi(client, token)


def register(mailer, email, slug="spine-health", name="Ann"):
    with session_scope(mailer.sessions) as session:
        webinars.register(session, mailer.settings, slug, email=email, name=name, timezone="America/New_York",
                          context=RequestContext(), now=utcnow())


def test_tokens_are_needed_and_changes_need_a_write_token(client, tokens, db):
    api = make_api(client, tokens.write)
    for token in (None, "mlr_not-a-token", tokens.revoked):
        assert error_of(api.get("/webinars", token=token), 401)["code"] == "unauthorized"
        assert error_of(api.post("/webinars", DRAFT, token=token), 401)["code"] == "unauthorized"
        assert error_of(api.get("/webinars/1/registrations", token=token), 401)["code"] == "unauthorized"
    assert error_of(api.post("/webinars", DRAFT, token=tokens.read), 403)["code"] == "forbidden"
    created = api.create()
    path = f"/webinars/{created['id']}"
    for method, suffix, body in (("PATCH", "", {"title": "Changed"}), ("POST", "/publish", None),
                                 ("POST", "/cancel", None),
                                 ("POST", "/attendance", {"emails": ["a@example.com"], "attended": True})):
        assert error_of(api(method, path + suffix, body, token=tokens.read), 403)["code"] == "forbidden", suffix
    assert api.get(path, token=tokens.read).json == created  # nothing changed
    # Reading registrations is personal data, but a read token may: it is audited.
    assert api.get(path + "/registrations", token=tokens.read).status_code == 200
    assert db.scalar(sa.select(sa.func.count()).select_from(AuditLog)
                     .where(AuditLog.action == "api_view_registrants")) == 1


def test_a_webinar_from_draft_to_cancelled(client, tokens, mailer, db):
    api = make_api(client, tokens.write)
    response = api.post("/webinars", DRAFT)
    assert response.status_code == 201, response.json
    created = response.json
    webinar_id = created["id"]
    assert response.headers["Location"] == f"/api/v1/webinars/{webinar_id}"
    assert {k: v for k, v in created.items() if k not in ("id", "created_at")} == {
        "slug": "spine-health", "title": "Spine Health", "status": "draft",
        "starts_at": f"{NEXT_YEAR}-11-25T18:00:00Z", "starts_local": f"{NEXT_YEAR}-11-25T18:00",
        "timezone": "Europe/London", "duration_minutes": 45, "capacity": 2, "seats_taken": 0,
        "description_md": "Five exercises.", "join_url": "https://meet.example.com/spine", "replay_url": "",
        "reminder_offsets": "1440,60", "sequence": 0}
    assert created["created_at"].endswith("Z")
    assert api.get(f"/webinars/{webinar_id}").json == created

    published = api.post(f"/webinars/{webinar_id}/publish")
    assert published.status_code == 200 and published.json["status"] == "published"
    register(mailer, "ann@example.com")
    register(mailer, "bob@example.com", name="Bob")
    register(mailer, "cat@example.com", name="Cat")  # capacity 2: waitlisted
    got = api.get(f"/webinars/{webinar_id}").json
    assert got["seats_taken"] == 2 and got["join_url"] == "https://meet.example.com/spine"

    # Registrations, newest first, in pages; every call is audited with the token's user.
    first = api.get(f"/webinars/{webinar_id}/registrations?limit=2")
    assert first.status_code == 200, first.json
    assert [(r["email"], r["name"], r["status"], r["attended"], r["timezone"]) for r in first.json["items"]] == [
        ("cat@example.com", "Cat", "waitlisted", None, "America/New_York"),
        ("bob@example.com", "Bob", "confirmed", None, "America/New_York")]
    assert first.json["items"][0]["created_at"].endswith("Z")
    rest = api.get(f"/webinars/{webinar_id}/registrations?limit=2&cursor={first.json['next_cursor']}").json
    assert [r["email"] for r in rest["items"]] == ["ann@example.com"] and rest["next_cursor"] is None
    editor_id = db.scalar(sa.select(User.id).where(User.email == "editor@clinic.example"))
    assert db.execute(sa.select(AuditLog.user_id, AuditLog.action, AuditLog.detail)) == [
        (editor_id, "api_view_registrants", f"webinar {webinar_id}")] * 2

    marked = api.post(f"/webinars/{webinar_id}/attendance",
                      {"emails": ["Ann@Example.com", "nobody@example.com"], "attended": True})
    assert marked.status_code == 200 and marked.json == {"marked": 1}
    assert api.post(f"/webinars/{webinar_id}/attendance", {"emails": ["bob@example.com"], "attended": False}
                    ).json == {"marked": 1}
    attended = dict(db.execute(sa.select(Registration.id, Registration.attended).order_by(Registration.id)))
    assert list(attended.values()) == [True, False, None]

    # A new start is a reschedule: sequence goes up, confirmed registrants get an update.
    moved = api.patch(f"/webinars/{webinar_id}", {"starts_local": f"{NEXT_YEAR}-12-02T19:30"})
    assert moved.status_code == 200, moved.json
    assert moved.json["starts_at"] == f"{NEXT_YEAR}-12-02T19:30:00Z" and moved.json["sequence"] == 1
    assert moved.json["title"] == "Spine Health" and moved.json["capacity"] == 2  # the rest kept
    assert db.scalar(sa.select(sa.func.count()).select_from(Delivery)
                     .where(Delivery.kind == webinars.UPDATED)) == 2
    # A change that keeps the start is not a reschedule; capacity null means no limit.
    renamed = api.patch(f"/webinars/{webinar_id}", {"title": "Spine Health, live", "capacity": None}).json
    assert renamed["sequence"] == 1 and renamed["capacity"] is None and renamed["title"] == "Spine Health, live"

    listed = api.get("/webinars").json
    # No limit any more: Cat, who was waiting, has a seat now (and is told).
    assert [w["id"] for w in listed["items"]] == [webinar_id] and listed["items"][0]["seats_taken"] == 3
    assert db.scalar(sa.select(sa.func.count()).select_from(Delivery).where(Delivery.kind == webinars.PROMOTED)) == 1

    cancelled = api.post(f"/webinars/{webinar_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json["status"] == "cancelled"
    assert cancelled.json["sequence"] == 2
    assert db.scalar(sa.select(Webinar.status)) == "cancelled"
    again = error_of(api.post(f"/webinars/{webinar_id}/cancel"), 422)
    assert again["field"] == "status"
    assert error_of(api.patch(f"/webinars/{webinar_id}", {"title": "Back"}), 422)["field"] == "status"


def test_list_webinars_in_pages(client, tokens):
    api = make_api(client, tokens.write)
    ids = [api.create(slug=f"talk-{n}")["id"] for n in range(3)]
    first = api.get("/webinars?limit=2").json
    assert [w["id"] for w in first["items"]] == ids[:0:-1]
    rest = api.get(f"/webinars?limit=2&cursor={first['next_cursor']}").json
    assert [w["id"] for w in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    assert error_of(api.get("/webinars?cursor=nonsense"), 422)["field"] == "cursor"


def test_refusals_name_the_field(client, tokens):
    api = make_api(client, tokens.write)
    for fields, field in (({"slug": "Not A Slug!"}, "slug"), ({"join_url": "http://meet.example.com/x"}, "join_url"),
                          ({"join_url": "https://[::1"}, "join_url"), ({"replay_url": "ftp://x"}, "replay_url"),
                          ({"timezone": "Mars/Olympus"}, "timezone"), ({"duration_minutes": 2}, "duration_minutes"),
                          ({"capacity": 0}, "capacity"), ({"starts_local": "2001-01-01T10:00"}, "starts_local"),
                          ({"starts_local": "next Tuesday"}, "starts_local"),
                          ({"reminder_offsets": "soon"}, "reminder_offsets"), ({"title": "   "}, "title"),
                          ({"surprise": 1}, "surprise")):
        error = error_of(api.post("/webinars", dict(DRAFT, **fields)), 422)
        assert error["field"] == field, (fields, error)
    # A local time the clocks skip (London, last Sunday of March, 01:30).
    skipped = f"{last_sunday_of_march(NEXT_YEAR).isoformat()}T01:30"
    assert error_of(api.post("/webinars", dict(DRAFT, starts_local=skipped)), 422)["field"] == "starts_local"

    created = api.create()
    assert error_of(api.post("/webinars", DRAFT), 422)["field"] == "slug"  # taken
    path = f"/webinars/{created['id']}"
    assert error_of(api.patch(path, {"timezone": "Nowhere/Land"}), 422)["field"] == "timezone"
    assert error_of(api.patch(path, {"join_url": "http://meet.example.com"}), 422)["field"] == "join_url"
    assert error_of(api.patch(path, {"title": None}), 422)["field"] == "title"
    assert error_of(api.post(path + "/attendance", {"emails": ["not an address"]}), 422)["field"] == "emails"
    assert error_of(api.post(path + "/attendance", {"emails": []}), 422)["field"] == "emails"
    # Publishing needs a join link.
    bare = api.create(slug="no-room", join_url="")
    assert error_of(api.post(f"/webinars/{bare['id']}/publish"), 422)["field"] == "join_url"
    assert api.get(path).json == created


def test_unknown_webinars_are_404(client, tokens, db):
    api = make_api(client, tokens.write)
    for method, path, body in (("GET", "/webinars/99", None), ("PATCH", "/webinars/99", {"title": "x"}),
                               ("POST", "/webinars/99/publish", None), ("POST", "/webinars/99/cancel", None),
                               ("GET", "/webinars/99/registrations", None),
                               ("POST", "/webinars/99/attendance", {"emails": ["a@example.com"]}),
                               ("GET", "/webinars/0", None), ("PATCH", "/webinars/99999999999", {"title": "x"})):
        assert error_of(api(method, path, body), 404)["code"] == "not_found", path
    assert db.scalar(sa.select(sa.func.count()).select_from(AuditLog)) == 0  # nothing was shown


def test_the_document_lists_the_webinar_operations(client):
    paths = client.get("/api/v1/openapi.json").json["paths"]
    assert set(paths["/webinars"]) == {"get", "post"}
    assert set(paths["/webinars/{id}"]) == {"get", "patch"}
    for suffix, method in (("publish", "post"), ("cancel", "post"), ("registrations", "get"),
                           ("attendance", "post")):
        assert method in paths[f"/webinars/{{id}}/{suffix}"]
