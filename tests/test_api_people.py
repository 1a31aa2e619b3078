"""The JSON API's people: mailing lists, subscriptions (double opt-in with a real
confirmation mail, unsubscribe), the consent ledger (personal fields for owners only),
webinar registrations made and cancelled for a visitor, and contacts (search, detail,
Art. 15 export and Art. 17 erasure for owners). Every read of personal data is audited."""
from __future__ import annotations

import datetime as dt
import types

import pytest
import sqlalchemy as sa

from mailer.campaigns import webinars
from mailer.delivery import suppression
from mailer.staff import users
from mailer.db import session_scope, utcnow
from mailer.demo import NEWSLETTER_WORDING
from mailer.models import AuditLog, ConsentEvent, Delivery, Registration, Subscription, User
from tests.conftest import links_in
from tests.test_api_newsletters import Api, error_of

PASSWORD = "correct horse battery staple"
SOURCE = "https://clinic.example/blog/back-pain"
ACCEPTED = {"status": "pending_confirmation",
            "message": "If the address can be mailed, a confirmation request is on its way; the subscription "
                       "starts when the person clicks its link."}


@pytest.fixture
def staff(mailer):
    """Write and read tokens of an owner and an editor, a read token of a viewer."""
    made = {}
    with session_scope(mailer.sessions) as session:
        for role in ("owner", "editor", "viewer"):
            user = users.create_user(session, f"{role}@clinic.example", PASSWORD, role)
            if role != "viewer":  # a viewer may hold read tokens only
                made[role] = users.create_token(session, user, f"{role}-cms", "write")
            made[f"{role}_read"] = users.create_token(session, user, f"{role}-dashboard", "read")
    return types.SimpleNamespace(**made)


@pytest.fixture
def api(client, staff):
    return Api(client, staff.owner)


def user_id(db, role: str) -> int:
    return db.scalar(sa.select(User.id).where(User.email == f"{role}@clinic.example"))


def audit_rows(db) -> list[tuple]:
    return db.execute(sa.select(AuditLog.user_id, AuditLog.action, AuditLog.detail).order_by(AuditLog.id))


def subscribe(api, email, **fields):
    answer = api.post("/subscriptions", {"email": email, "list": "newsletter", "consent": True, **fields})
    assert (answer.status_code, answer.json) == (202, ACCEPTED)


def iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


# Lists ----------------------------------------------------------------------------------

def test_lists_are_listed_with_counts_and_created_with_their_wording(api, client, staff, db):
    listed = api.get("/lists")
    assert listed.status_code == 200
    created_at = listed.json["items"][0]["created_at"]
    assert listed.json == {"items": [{
        "id": 1, "slug": "newsletter", "name": "Monthly newsletter",
        "description": "Exercises, clinic news and the next free webinar, once a month.", "public": True,
        "consent_wording": NEWSLETTER_WORDING, "consent_version": 1,
        "subscribers": {"pending": 0, "active": 0, "unsubscribed": 0}, "created_at": created_at,
        "archived_at": None}]}

    body = {"slug": "practice-news", "name": "  Practice   news ", "description": "Opening hours.",
            "consent_wording": "Yes, tell me when the practice changes its hours.", "public": False}
    response = api.post("/lists", body)
    assert response.status_code == 201, response.json
    assert response.headers["Location"] == "/api/v1/lists/2"
    made = response.json
    assert made == {"id": 2, "slug": "practice-news", "name": "Practice news", "description": "Opening hours.",
                    "public": False, "consent_wording": "Yes, tell me when the practice changes its hours.",
                    "consent_version": 1, "subscribers": {"pending": 0, "active": 0, "unsubscribed": 0},
                    "created_at": made["created_at"], "archived_at": None}
    assert api.get("/lists/2", token=staff.viewer_read).json == made

    subscribe(api, "ann@example.com")
    subscribe(api, "bob@example.com")
    api("DELETE", "/subscriptions/2")
    assert api.get("/lists/1").json["subscribers"] == {"pending": 1, "active": 0, "unsubscribed": 1}


@pytest.mark.parametrize("change, status, field, code", [
    ({"slug": "newsletter"}, 409, "slug", "conflict"),
    ({"slug": "Practice News"}, 422, "slug", "invalid"),
    ({"slug": "x"}, 422, "slug", "invalid"),
    ({"slug": None}, 422, "slug", "invalid"),
    ({"name": ""}, 422, "name", "invalid"),
    ({"name": "   "}, 422, "name", "invalid"),
    ({"consent_wording": ""}, 422, "consent_wording", "invalid"),
    ({"consent_wording": "  \n "}, 422, "consent_wording", "invalid"),
    ({"public": "yes"}, 422, "public", "invalid"),
    ({"colour": "red"}, 422, "colour", "invalid"),
])
def test_a_list_that_cannot_be_created_is_refused_with_the_field(api, change, status, field, code):
    body = {"slug": "practice-news", "name": "Practice news", "consent_wording": "Yes, please.", **change}
    problem = error_of(api.post("/lists", body), status)
    assert (problem["code"], problem["field"]) == (code, field)
    assert [item["slug"] for item in api.get("/lists").json["items"]] == ["newsletter"]


def test_list_writes_need_a_write_token_and_unknown_lists_are_404(api, staff):
    body = {"slug": "practice-news", "name": "Practice news", "consent_wording": "Yes, please."}
    assert error_of(api.post("/lists", body, token=staff.owner_read), 403)["code"] == "forbidden"
    assert error_of(api.post("/lists", body, token=None), 401)["code"] == "unauthorized"
    assert error_of(api.get("/lists/7"), 404) == {"code": "not_found", "message": "No mailing list 7.", "field": None}
    assert error_of(api.post("/lists", raw="{not json"), 400)["code"] == "malformed_json"


# Subscriptions --------------------------------------------------------------------------

def test_a_subscription_through_the_api_sends_a_real_confirmation_and_records_the_token(
        api, client, mailer, smtp_server, db):
    subscribe(api, "Ann@Example.com", name="Ann Smith", source_url=SOURCE, timezone="Europe/Berlin")
    mailer.drain()
    [received] = smtp_server.received
    message = received.message
    assert received.rcpt_tos == ["ann@example.com"]
    assert message["To"] == "Ann Smith <ann@example.com>"
    assert message["Subject"] == "Please confirm your subscription to Monthly newsletter"
    confirm = next(link for link in links_in(message.get_body(("plain",)).get_content()) if "/confirm/" in link)
    assert client.get(confirm.removeprefix("https://news.example.org")).status_code == 200

    events = db.execute(sa.select(ConsentEvent.action, ConsentEvent.source_url, ConsentEvent.ip,
                                  ConsentEvent.user_agent, ConsentEvent.note, ConsentEvent.wording_id)
                        .order_by(ConsentEvent.id))
    assert events[0] == ("requested", SOURCE, None, None, "api: token 'owner-cms'", 1)
    assert events[1][0] == "confirmed"
    sub = api.get("/subscriptions/1").json
    stored = db.scalar(sa.select(Subscription))
    assert sub == {"id": 1, "contact_id": 1, "email": "ann@example.com", "list": "newsletter", "status": "active",
                   "pending_since": iso(stored.pending_since), "confirmed_at": iso(stored.confirmed_at),
                   "unsubscribed_at": None, "created_at": iso(stored.created_at)}


def test_the_answer_is_the_same_for_new_known_and_suppressed_addresses(api, mailer, smtp_server, db):
    subscribe(api, "ann@example.com")
    mailer.drain()
    with session_scope(mailer.sessions) as session:
        suppression.suppress_address(session, mailer.settings, "gone@example.com", reason="hard_bounce", now=utcnow())
    subscribe(api, "ann@example.com")  # pending: not re-sent within the hour
    subscribe(api, "gone@example.com")  # suppressed: nothing stored, nothing sent
    mailer.drain()
    assert [r.rcpt_tos for r in smtp_server.received] == [["ann@example.com"]]
    assert db.scalar(sa.select(sa.func.count()).select_from(Subscription)) == 1


@pytest.mark.parametrize("change, field", [
    ({"consent": False}, "consent"), ({"consent": None}, "consent"), ({"consent": "true"}, "consent"),
    ({"email": "not an address"}, "email"), ({"email": ""}, "email"), ({"list": "unknown-list"}, "list"),
    ({"list": "Newsletter"}, "list"), ({"timezone": "Mars/Olympus"}, "timezone"), ({"name": "x" * 101}, "name"),
    ({"source_url": "a\u0000b"}, "source_url"), ({"lists": ["newsletter"]}, "lists"),
])
def test_a_signup_that_cannot_be_taken_is_refused_with_the_field(api, mailer, smtp_server, db, change, field):
    body = {"email": "ann@example.com", "list": "newsletter", "consent": True, **change}
    problem = error_of(api.post("/subscriptions", {k: v for k, v in body.items() if v is not None}), 422)
    assert (problem["code"], problem["field"]) == ("invalid", field)
    mailer.drain()
    assert smtp_server.received == [] and db.scalar(sa.select(sa.func.count()).select_from(ConsentEvent)) == 0


def test_a_non_public_list_is_not_offered_to_signups(api):
    assert api.post("/lists", {"slug": "staff-only", "name": "Staff", "consent_wording": "Yes.",
                               "public": False}).status_code == 201
    problem = error_of(api.post("/subscriptions", {"email": "a@example.com", "list": "staff-only", "consent": True}),
                       422)
    assert (problem["field"], problem["message"]) == ("list", "Unknown mailing list.")


def test_unsubscribe_through_the_api_withdraws_and_cancels_queued_mail(api, staff, db):
    subscribe(api, "ann@example.com")  # its confirmation is still queued
    assert error_of(api("DELETE", "/subscriptions/1", token=staff.owner_read), 403)["code"] == "forbidden"
    gone = api("DELETE", "/subscriptions/1", token=staff.editor)
    assert gone.status_code == 200, gone.json
    stored = db.scalar(sa.select(Subscription))
    assert gone.json["status"] == "unsubscribed" and gone.json["unsubscribed_at"] == iso(stored.unsubscribed_at)
    assert db.execute(sa.select(Delivery.status, Delivery.last_error)) == [("cancelled", "unsubscribed")]
    assert db.execute(sa.select(ConsentEvent.action, ConsentEvent.note).order_by(ConsentEvent.id)) == [
        ("requested", "api: token 'owner-cms'"), ("withdrawn", "api: token 'editor-cms'")]
    again = api("DELETE", "/subscriptions/1")
    assert (again.status_code, again.json) == (200, gone.json)  # nothing more happens
    assert db.scalar(sa.select(sa.func.count()).select_from(ConsentEvent)) == 2
    assert error_of(api("DELETE", "/subscriptions/5"), 404)["message"] == "No subscription 5."
    assert ("api_unsubscribe", "subscription 1") in [(a, d) for _, a, d in audit_rows(db)]


def test_subscriptions_are_filtered_paged_and_audited(api, staff, db):
    for email in ("a@example.com", "b@example.com", "c@example.com", "d@example.com", "e@example.com"):
        subscribe(api, email)
    api("DELETE", "/subscriptions/2")
    seen, cursor = [], None
    while True:
        page = api.get("/subscriptions?limit=2" + (f"&cursor={cursor}" if cursor else ""), token=staff.viewer_read)
        assert page.status_code == 200, page.json
        seen += [(s["id"], s["email"], s["status"]) for s in page.json["items"]]
        if (cursor := page.json["next_cursor"]) is None:
            break
    assert seen == [(5, "e@example.com", "pending"), (4, "d@example.com", "pending"), (3, "c@example.com", "pending"),
                    (2, "b@example.com", "unsubscribed"), (1, "a@example.com", "pending")]
    assert audit_rows(db)[-3:] == [(user_id(db, "viewer"), "api_view_subscriptions", "all")] * 3
    assert [s["id"] for s in api.get("/subscriptions?status=unsubscribed&list=newsletter").json["items"]] == [2]
    assert [s["id"] for s in api.get("/subscriptions?contact_id=3").json["items"]] == [3]
    assert api.get("/subscriptions?contact_id=3&status=active").json == {"items": [], "next_cursor": None}
    assert audit_rows(db)[-1] == (user_id(db, "owner"), "api_view_subscriptions", "contact=3, status=active")
    for query, field in (("list=nope", "list"), ("status=gone", "status"), ("contact_id=-1", "contact_id"),
                         ("cursor=abc", "cursor"), ("limit=500", "limit"), ("email=a@example.com", "email")):
        problem = error_of(api.get(f"/subscriptions?{query}"), 422)
        assert problem["field"] == field, query
    assert error_of(api.get("/subscriptions/9"), 404)["code"] == "not_found"


# Consent events -------------------------------------------------------------------------

def test_consent_events_show_personal_fields_to_owners_only_and_every_read_is_audited(api, staff, db):
    subscribe(api, "ann@example.com", source_url=SOURCE)
    subscribe(api, "bob@example.com")
    api("DELETE", "/subscriptions/2")
    owner_view = api.get("/consent-events", token=staff.owner_read)
    assert owner_view.status_code == 200, owner_view.json
    stored = {e.id: e for e in db.scalars(sa.select(ConsentEvent))}

    def expected(event_id, contact_id, action, *, personal, source=None, note="api: token 'owner-cms'"):
        e = stored[event_id]
        return {"id": event_id, "contact_id": contact_id, "list": "newsletter", "purpose": "list:newsletter",
                "action": action, "wording_version": 1 if action == "requested" else None,
                "created_at": iso(e.created_at), "source_url": source if personal else None, "ip": None,
                "user_agent": None, "note": note if personal else None, "redacted": False, "hash": e.hash,
                "prev_hash": e.prev_hash}

    assert owner_view.json == {"items": [
        expected(3, 2, "withdrawn", personal=True), expected(2, 2, "requested", personal=True),
        expected(1, 1, "requested", personal=True, source=SOURCE)], "next_cursor": None}
    editor_view = api.get("/consent-events", token=staff.editor_read).json
    assert editor_view["items"] == [expected(3, 2, "withdrawn", personal=False),
                                    expected(2, 2, "requested", personal=False),
                                    expected(1, 1, "requested", personal=False)]
    assert [e["id"] for e in api.get("/consent-events?contact_id=2&action=requested").json["items"]] == [2]
    assert [e["id"] for e in api.get("/consent-events?list=newsletter&limit=1").json["items"]] == [3]
    assert audit_rows(db)[-4:] == [
        (user_id(db, "owner"), "api_view_consent_events", "all; with personal fields"),
        (user_id(db, "editor"), "api_view_consent_events", "all"),
        (user_id(db, "owner"), "api_view_consent_events", "contact=2, action=requested; with personal fields"),
        (user_id(db, "owner"), "api_view_consent_events", "list=newsletter; with personal fields")]
    for query, field in (("action=deleted", "action"), ("list=nope", "list"), ("contact_id=abc", "contact_id")):
        assert error_of(api.get(f"/consent-events?{query}"), 422)["field"] == field
    for method in ("POST", "DELETE", "PATCH"):
        assert error_of(api(method, "/consent-events", {}), 405)["code"] == "method_not_allowed"


# Webinar registrations ------------------------------------------------------------------

@pytest.fixture
def webinar_id(mailer):
    with session_scope(mailer.sessions) as session:
        webinar = webinars.save_webinar(session, slug="spine-health", title="Spine Health", capacity=1,
                                        starts_local=dt.datetime(utcnow().year + 1, 3, 26, 18, 0),
                                        timezone="Europe/London", join_url="https://meet.example.com/s", now=utcnow())
        webinars.publish(session, webinar.id)
        return webinar.id


REGISTERED = {"status": "registered_or_waitlisted",
              "message": "The seat is reserved, or a place on the waitlist when the webinar is full; the person "
                         "gets the details by mail."}


def test_a_seat_reserved_through_the_api_gets_its_invitation_and_cancelling_promotes_the_waitlist(
        api, mailer, smtp_server, db, webinar_id, staff):
    path = f"/webinars/{webinar_id}/registrations"
    first = api.post(path, {"email": "ann@example.com", "name": "Ann", "timezone": "America/New_York",
                            "source_url": SOURCE})
    assert (first.status_code, first.json) == (202, REGISTERED)
    second = api.post(path, {"email": "bob@example.com", "name": "Bob", "newsletter": True})
    assert (second.status_code, second.json) == (202, REGISTERED)  # full: the waitlist, same answer
    mailer.drain()
    mails = {r.rcpt_tos[0]: r.message for r in smtp_server.received}
    assert set(mails) == {"ann@example.com", "bob@example.com"}
    invite = [part for part in mails["ann@example.com"].iter_attachments() if part.get_filename() == "invite.ics"]
    calendar = invite[0].get_content()
    assert "SUMMARY:Spine Health" in calendar and "https://meet.example.com/s" in calendar
    assert db.execute(sa.select(ConsentEvent.action, ConsentEvent.note)) == [  # Bob's newsletter box
        ("requested", "api: token 'owner-cms'")]

    assert error_of(api("DELETE", "/registrations/1", token=staff.owner_read), 403)["code"] == "forbidden"
    cancelled = api("DELETE", "/registrations/1")
    assert cancelled.status_code == 200, cancelled.json
    stored = db.scalar(sa.select(Registration).where(Registration.id == 1))
    assert cancelled.json == {"id": 1, "email": "ann@example.com", "name": "Ann", "status": "cancelled",
                              "attended": None, "timezone": "America/New_York", "created_at": iso(stored.created_at)}
    assert db.execute(sa.select(Registration.id, Registration.status).order_by(Registration.id)) == [
        (1, "cancelled"), (2, "confirmed")]
    smtp_server.handler.received.clear()
    mailer.drain()
    # Ann's seat is given up (her calendar gets METHOD:CANCEL); Bob, next in line, gets it.
    by_recipient = {r.rcpt_tos[0]: r for r in smtp_server.received}
    assert sorted(by_recipient) == ["ann@example.com", "bob@example.com"]
    assert by_recipient["bob@example.com"].message["Subject"].startswith("A seat is yours: Spine Health, ")
    [invite] = [part for part in by_recipient["ann@example.com"].message.walk()
                if part.get_content_type() in ("text/calendar", "application/ics")]
    assert "METHOD:CANCEL" in invite.get_payload(decode=True).decode()
    assert api("DELETE", "/registrations/1").json == cancelled.json  # again: nothing changes
    assert error_of(api("DELETE", "/registrations/9"), 404)["message"] == "No registration 9."
    assert ("api_cancel_registration", "registration 1") in [(a, d) for _, a, d in audit_rows(db)]


def test_registrations_the_webinar_cannot_take_are_refused(api, mailer, webinar_id):
    body = {"email": "ann@example.com"}
    assert error_of(api.post("/webinars/99/registrations", body), 404)["message"] == "No webinar 99."
    with session_scope(mailer.sessions) as session:
        draft = webinars.save_webinar(session, slug="later", title="Later", timezone="Europe/London",
                                      starts_local=dt.datetime(utcnow().year + 1, 5, 1, 18, 0), now=utcnow())
    problem = error_of(api.post(f"/webinars/{draft.id}/registrations", body), 422)
    assert problem["code"] == "not_open"
    for change, field in (({"email": "nope"}, "email"), ({"timezone": "Nowhere/City"}, "timezone"),
                          ({"newsletter": 1}, "newsletter"), ({"seat": 2}, "seat")):
        problem = error_of(api.post(f"/webinars/{webinar_id}/registrations", {**body, **change}), 422)
        assert problem["field"] == field, change


# Contacts -------------------------------------------------------------------------------

@pytest.fixture
def people(api, mailer, smtp_server):
    """ann (pending), bob (active), cat (unsubscribed), in that order (contact ids 1–3)."""
    subscribe(api, "ann@example.com", name="Ann Smith", source_url=SOURCE)
    subscribe(api, "bob@example.com", name="Bob Jones")
    subscribe(api, "cat@example.com", name="Cat Annan")
    api("DELETE", "/subscriptions/3")
    mailer.drain()
    bob = next(r for r in smtp_server.received if r.rcpt_tos == ["bob@example.com"])
    confirm = next(link for link in links_in(bob.message.get_body(("plain",)).get_content()) if "/confirm/" in link)
    assert api.client.get(confirm.removeprefix("https://news.example.org")).status_code == 200


def test_contacts_are_searched_paged_and_audited_without_the_search_text(api, staff, people, db):
    page = api.get("/contacts?limit=2", token=staff.viewer_read)
    assert page.status_code == 200, page.json
    created = {c["id"]: c["created_at"] for c in page.json["items"]}
    assert page.json["items"] == [
        {"id": 3, "email": "cat@example.com", "name": "Cat Annan", "created_at": created[3],
         "subscriptions": [{"list": "newsletter", "status": "unsubscribed"}]},
        {"id": 2, "email": "bob@example.com", "name": "Bob Jones", "created_at": created[2],
         "subscriptions": [{"list": "newsletter", "status": "active"}]}]
    rest = api.get(f"/contacts?limit=2&cursor={page.json['next_cursor']}").json
    assert [c["id"] for c in rest["items"]] == [1] and rest["next_cursor"] is None
    assert [c["id"] for c in api.get("/contacts?q=BOB@example.com").json["items"]] == [2]
    assert [c["id"] for c in api.get("/contacts?q=an").json["items"]] == [1]  # a name prefix, not "Cat Annan"
    assert [c["id"] for c in api.get("/contacts?status=active&list=newsletter").json["items"]] == [2]
    assert [c["id"] for c in api.get("/contacts?status=pending").json["items"]] == [1]
    assert [(a, d) for _, a, d in audit_rows(db) if a == "api_view_contacts"] == [
        ("api_view_contacts", "search=none"), ("api_view_contacts", "search=none"),
        ("api_view_contacts", "search=address"), ("api_view_contacts", "search=name"),
        ("api_view_contacts", "search=none, list=newsletter, status=active"),
        ("api_view_contacts", "search=none, status=pending")]
    assert [c["id"] for c in api.get("/contacts?q=cat@").json["items"]] == [3]  # part of an address
    assert [c["id"] for c in api.get("/contacts?q=nan").json["items"]] == [3]  # part of a name
    assert [d for _, a, d in audit_rows(db) if a == "api_view_contacts"][-2:] == ["search=text", "search=text"]
    for query, field in (("list=nope", "list"), ("status=gone", "status"),
                         ("cursor=zz", "cursor"), ("limit=0", "limit"), ("sort=name", "sort")):
        assert error_of(api.get(f"/contacts?{query}"), 422)["field"] == field, query


def test_a_contact_in_detail(api, staff, people, db):
    detail = api.get("/contacts/1", token=staff.viewer_read)
    assert detail.status_code == 200, detail.json
    body = detail.json
    sub = db.scalar(sa.select(Subscription).where(Subscription.id == 1))
    delivery = db.scalar(sa.select(Delivery).where(Delivery.contact_id == 1))
    event = db.scalar(sa.select(ConsentEvent).where(ConsentEvent.contact_id == 1))
    assert body == {
        "id": 1, "email": "ann@example.com", "name": "Ann Smith", "timezone": None,
        "created_at": body["created_at"], "erased_at": None,
        "subscriptions": [{"id": 1, "list": "newsletter", "status": "pending", "confirmed_at": None,
                           "unsubscribed_at": None, "created_at": iso(sub.created_at)}],
        "registrations": [],
        "recent_deliveries": [{"id": delivery.id, "kind": "confirmation", "status": "sent",
                               "created_at": iso(delivery.created_at), "sent_at": iso(delivery.sent_at)}],
        "consent_events": [{"id": event.id, "purpose": "list:newsletter", "action": "requested",
                            "wording_version": 1, "created_at": iso(event.created_at)}]}
    assert error_of(api.get("/contacts/99"), 404) == {"code": "not_found", "message": "No contact 99.", "field": None}
    assert audit_rows(db)[-1] == (user_id(db, "viewer"), "api_view_contact", "contact 1")


def test_the_art_15_export_is_for_owners_and_audited(api, staff, people, db):
    for token in (staff.editor, staff.editor_read, staff.viewer_read):
        problem = error_of(api.get("/contacts/1/export", token=token), 403)
        assert problem == {"code": "forbidden", "message": "Only a token of an owner may do this.", "field": None}
    assert not any(a == "api_export_contact" for _, a, _ in audit_rows(db))
    exported = api.get("/contacts/1/export", token=staff.owner_read)
    assert exported.status_code == 200, exported.json
    body = exported.json
    assert body["contact"] == {"id": 1, "email": "ann@example.com", "name": "Ann Smith", "timezone": None,
                               "created_at": body["contact"]["created_at"], "erased_at": None}
    assert [(s["list"], s["status"]) for s in body["subscriptions"]] == [("newsletter", "pending")]
    assert [(d["kind"], d["status"]) for d in body["deliveries"]] == [("confirmation", "sent")]
    [event] = body["consent_events"]
    assert (event["action"], event["wording"], event["source_url"], event["note"]) == (
        "requested", NEWSLETTER_WORDING, SOURCE, "api: token 'owner-cms'")
    assert audit_rows(db)[-1] == (user_id(db, "owner"), "api_export_contact", "contact 1")
    assert error_of(api.get("/contacts/99/export"), 404)["message"] == "No contact 99."


def test_erasure_needs_an_owners_write_token_and_is_audited(api, staff, people, db, mailer, smtp_server):
    assert error_of(api("DELETE", "/contacts/2", token=staff.owner_read), 403)["message"] == (
        "This token's scope (read) does not allow this.")
    assert error_of(api("DELETE", "/contacts/2", token=staff.editor), 403)["message"] == (
        "Only a token of an owner may do this.")
    erased = api("DELETE", "/contacts/2")
    assert (erased.status_code, erased.json) == (200, {
        "contact_id": 2, "already_erased": False, "deliveries_cancelled": 0, "subscriptions_ended": 1,
        "registrations_cancelled": 0, "signup_requests_deleted": 0, "dev_messages_deleted": 0})
    assert api.get("/contacts/2").json["email"] is None
    assert [c["id"] for c in api.get("/contacts").json["items"]] == [3, 1]
    again = api("DELETE", "/contacts/2")
    assert again.json == {"contact_id": 2, "already_erased": True, "deliveries_cancelled": 0,
                          "subscriptions_ended": 0, "registrations_cancelled": 0, "signup_requests_deleted": 0,
                          "dev_messages_deleted": 0}
    assert [d for _, a, d in audit_rows(db) if a == "api_erase_contact"] == ["contact 2", "contact 2"]
    assert error_of(api("DELETE", "/contacts/99"), 404)["code"] == "not_found"
    # The address is suppressed: the same answer to a new signup, and no mail.
    smtp_server.handler.received.clear()
    subscribe(api, "bob@example.com")
    mailer.drain()
    assert smtp_server.received == []


def test_the_bulk_export_streams_csv_or_json_for_owners(api, staff, people, db):
    for token in (staff.editor_read, staff.viewer_read):
        assert error_of(api.get("/contacts/export", token=token), 403)["code"] == "forbidden"
    csv_answer = api.get("/contacts/export?format=csv", token=staff.owner_read)
    assert csv_answer.status_code == 200 and csv_answer.mimetype == "text/csv"
    assert csv_answer.headers["Content-Disposition"] == 'attachment; filename="contacts.csv"'
    lines = csv_answer.text.splitlines()
    assert lines[0] == "id,email,name,timezone,created_at,subscriptions"
    assert [line.split(",")[:3] + [line.split(",")[-1]] for line in lines[1:]] == [
        ["1", "ann@example.com", "Ann Smith", "newsletter:pending"],
        ["2", "bob@example.com", "Bob Jones", "newsletter:active"],
        ["3", "cat@example.com", "Cat Annan", "newsletter:unsubscribed"]]
    as_json = api.get("/contacts/export?format=json&list=newsletter&status=active")
    assert as_json.status_code == 200 and as_json.mimetype == "application/json"
    assert [(c["id"], c["email"], c["subscriptions"]) for c in as_json.json] == [
        (2, "bob@example.com", [{"list": "newsletter", "status": "active"}])]
    assert [d for _, a, d in audit_rows(db) if a == "api_export_contacts"] == [
        "format=csv all", "format=json list=newsletter, status=active"]
    for query, field in (("format=xlsx", "format"), ("list=nope", "list"), ("status=gone", "status"),
                         ("limit=5", "limit")):
        assert error_of(api.get(f"/contacts/export?{query}"), 422)["field"] == field, query
