"""The JSON API's deliveries: the outbox read through bearer tokens, with the same filters
as the staff page, cursor pages that see every row once, error objects for bad input,
and an audit row (never an address) for every read."""
from __future__ import annotations


import pytest
import sqlalchemy as sa

from mailer.models import AuditLog, Delivery, User
from tests.test_api_newsletters import Api, error_of

ADDRESSES = ("ann@example.com", "bounce@example.com", "grey@example.com", "bob@example.com")
REPLIES = {"bounce@example.com": "550 5.1.1 User unknown", "grey@example.com": "451 4.7.1 Greylisted, try later"}




@pytest.fixture
def api(client, tokens):
    return Api(client, tokens.write)


@pytest.fixture
def sent(api, mailer, smtp_server):
    """Four confirmation mails through the real SMTP server: two sent, one refused for
    good (failed), one greylisted (deferred). Delivery, contact and subscription ids 1–4."""
    smtp_server.handler.rcpt_reply = lambda address: REPLIES.get(address)
    for email in ADDRESSES:
        answer = api.post("/subscriptions", {"email": email, "list": "newsletter", "consent": True})
        assert answer.status_code == 202, answer.json
    mailer.drain()
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == ["ann@example.com", "bob@example.com"]


def stored(db, delivery_id: int) -> Delivery:
    return db.scalar(sa.select(Delivery).where(Delivery.id == delivery_id))


def iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def test_one_delivery_as_stored(api, sent, db):
    row = stored(db, 2)
    assert api.get("/deliveries/2").json == {
        "id": 2, "contact_id": 2, "email": "bounce@example.com", "kind": "confirmation", "list_id": 1, "ref_id": 2,
        "variant": None, "status": "failed", "attempts": 1, "next_attempt_at": iso(row.next_attempt_at),
        "sent_at": None, "error_class": "permanent", "last_error": row.last_error, "message_id": row.message_id,
        "created_at": iso(row.created_at)}
    assert "550 5.1.1 User unknown" in row.last_error and row.message_id.endswith(".2@clinic.example>")
    ann = api.get("/deliveries/1").json
    assert (ann["status"], ann["sent_at"], ann["error_class"], ann["last_error"]) == (
        "sent", iso(stored(db, 1).sent_at), None, None)
    assert error_of(api.get("/deliveries/99"), 404) == {"code": "not_found", "message": "No delivery 99.",
                                                        "field": None}


def ids(response) -> list[int]:
    assert response.status_code == 200, response.json
    return [item["id"] for item in response.json["items"]]


def test_filters(api, sent):
    assert ids(api.get("/deliveries")) == [4, 3, 2, 1]
    assert ids(api.get("/deliveries?status=sent")) == [4, 1]
    assert ids(api.get("/deliveries?status=deferred")) == [3]
    assert ids(api.get("/deliveries?status=queued")) == []
    assert ids(api.get("/deliveries?kind=confirmation&status=failed")) == [2]
    assert ids(api.get("/deliveries?kind=newsletter")) == []
    assert ids(api.get("/deliveries?error=GREYLISTED")) == [3]  # any case
    assert ids(api.get("/deliveries?error=5.1.1%20user")) == [2]
    assert ids(api.get("/deliveries?error=%25")) == []  # LIKE wildcards are plain text
    assert ids(api.get("/deliveries?error=_")) == []
    assert ids(api.get("/deliveries?contact_id=4")) == [4]
    assert ids(api.get("/deliveries?ref_id=3")) == [3]
    assert ids(api.get("/deliveries?contact_id=1&status=failed")) == []


def test_cursor_pages_walk_every_row_once(api, sent):
    seen, cursor, pages = [], None, 0
    while True:
        page = api.get("/deliveries?limit=3" + (f"&cursor={cursor}" if cursor else "")).json
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert (seen, pages) == ([4, 3, 2, 1], 2)
    first = api.get("/deliveries?limit=2&status=sent").json
    assert [i["id"] for i in first["items"]] == [4, 1] and first["next_cursor"] is None
    filtered = api.get("/deliveries?limit=1&error=5").json  # filters hold across pages
    assert [i["id"] for i in filtered["items"]] == [3]
    rest = api.get(f"/deliveries?limit=1&error=5&cursor={filtered['next_cursor']}").json
    assert [i["id"] for i in rest["items"]] == [2] and rest["next_cursor"] is None


@pytest.mark.parametrize("query, field", [
    ("status=lost", "status"), ("limit=0", "limit"), ("limit=101", "limit"), ("limit=ten", "limit"),
    ("cursor=not-a-cursor", "cursor"), ("contact_id=0", "contact_id"), ("contact_id=x", "contact_id"),
    ("ref_id=2147483648", "ref_id"), ("kind=", "kind"), ("error=" + "x" * 201, "error"), ("error=a%00b", "error"),
    ("colour=red", "colour"),
])
def test_bad_queries_are_answered_422_naming_the_parameter(api, query, field):
    problem = error_of(api.get(f"/deliveries?{query}"), 422)
    assert (problem["code"], problem["field"]) == ("invalid", field)


def test_tokens_and_audit(api, client, tokens, sent, db):
    for token in (None, "mlr_wrong", tokens.revoked):
        assert error_of(api.get("/deliveries", token=token), 401)["code"] == "unauthorized"
        assert error_of(api.get("/deliveries/1", token=token), 401)["code"] == "unauthorized"
    assert api.get("/deliveries?status=failed&error=bounce@example.com", token=tokens.read).status_code == 200
    assert api.get("/deliveries/2", token=tokens.read).status_code == 200
    assert error_of(api("DELETE", "/deliveries/2"), 405)["code"] == "method_not_allowed"
    user_id = db.scalar(sa.select(User.id).where(User.email == "editor@clinic.example"))
    assert db.execute(sa.select(AuditLog.user_id, AuditLog.action, AuditLog.detail).order_by(AuditLog.id)) == [
        (user_id, "api_view_deliveries", "status=failed, error=(text)"),
        (user_id, "api_view_deliveries", "delivery 2")]
