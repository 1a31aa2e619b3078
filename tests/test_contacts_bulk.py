"""Bulk actions on a contacts search result: the same unsubscribe, add-to-automation and
erase as on a segment, on everyone the search found (not only the page shown), confirmed
with the count, run as a background job with a progress page, and audited without the
searched text. Someone added after the count is not touched."""
from __future__ import annotations

import json

import sqlalchemy as sa

from mailer.audience import segments
from mailer.db import session_scope, utcnow
from mailer.models import AuditLog, ConsentEvent, Contact, Enrolment, Job, Subscription
from tests.test_api_newsletters import Api
from tests.test_automations_admin import seen
from tests.test_lists import api_tokens  # noqa: F401  (fixture)
from tests.test_newsletter_admin import log_in
from tests.test_sequences import default_list, manual_sequence, subscriber


def people(mailer) -> dict[str, int]:
    return {name: subscriber(mailer, address, name.title())
            for name, address in (("ann", "ann@north.example"), ("bo", "bo@north.example"),
                                  ("cy", "cy@south.example"))}


def statuses(mailer) -> dict[int, str]:
    with mailer.read_sessions() as session:
        return dict(session.execute(sa.select(Subscription.contact_id, Subscription.status)).all())


def test_unsubscribe_everyone_a_search_found_from_a_list(app, mailer):
    ids = people(mailer)
    list_id = default_list(mailer)
    editor = log_in(app, "editor@clinic.example")
    results = seen(editor.get("/admin/contacts?q=north.example").text)
    assert "Do something with everyone this search found" in results
    search = {"q": "north.example", "filter_list": "", "filter_status": ""}
    page = editor.post("/admin/contacts/bulk", {**search, "action": "unsubscribe", "list": str(list_id)})
    assert "This unsubscribes 2 contacts found by your search from Monthly newsletter" in seen(page.text)
    up_to = page.text.split('name="up_to" value="')[1].split('"')[0]

    # Someone who joins after the count is not part of it, and the count still holds.
    late = subscriber(mailer, "dee@north.example", "Dee")
    done = editor.post("/admin/contacts/bulk/run", {**search, "action": "unsubscribe", "list": str(list_id),
                                                    "count": "2", "up_to": up_to}, follow_redirects=True)
    assert "Queued: it runs in the background" in seen(done.text)
    assert "Bulk job" in seen(done.text) and "unsubscribe from Monthly newsletter" in seen(done.text)
    mailer.drain()
    assert statuses(mailer) == {ids["ann"]: "unsubscribed", ids["bo"]: "unsubscribed", ids["cy"]: "active",
                                late: "active"}
    with mailer.read_sessions() as session:
        sources = session.scalars(sa.select(ConsentEvent.source_url).where(ConsentEvent.action == "withdrawn")).all()
        job = session.scalar(sa.select(Job))
        audit = session.scalars(sa.select(AuditLog.detail).where(AuditLog.action == "contacts.bulk_unsubscribe")).all()
    assert sources == ["staff:editor@clinic.example"] * 2
    assert (job.status, job.done, job.total) == ("done", 2, 2)
    # The audit log says what kind of search it was, never the text (which can be an address).
    assert audit == [f"search=text list=any status=any: 2 contacts, list {list_id} (job {job.id})"]
    finished = seen(editor.get(f"/admin/contacts/jobs/{job.id}").text)
    assert "done" in finished and "2 of 2" in finished


def test_a_search_result_joins_an_automation_and_a_changed_count_is_asked_again(app, mailer):
    ids = people(mailer)
    sequence_id, _ = manual_sequence(mailer, ("Lesson one", 0, {}), name="Back care course")
    editor = log_in(app, "editor@clinic.example")
    search = {"q": "example", "filter_list": str(default_list(mailer)), "filter_status": "active"}
    page = editor.post("/admin/contacts/bulk", {**search, "action": "enrol", "sequence": str(sequence_id)})
    assert "This adds 3 contacts found by your search to the automation Back care course" in seen(page.text)
    up_to = page.text.split('name="up_to" value="')[1].split('"')[0]
    with session_scope(mailer.sessions) as session:  # Cy leaves meanwhile: the count is now 2
        session.execute(sa.update(Subscription).where(Subscription.contact_id == ids["cy"]).values(
            status="unsubscribed"))
    stale = editor.post("/admin/contacts/bulk/run", {**search, "action": "enrol", "sequence": str(sequence_id),
                                                     "count": "3", "up_to": up_to})
    assert stale.status_code == 400 and "There are 2 contacts now, not 3" in seen(stale.text)
    editor.post("/admin/contacts/bulk/run", {**search, "action": "enrol", "sequence": str(sequence_id),
                                             "count": "2", "up_to": up_to})
    mailer.drain()
    with mailer.read_sessions() as session:
        enrolled = sorted(session.scalars(sa.select(Enrolment.contact_id)))
        report = json.loads(session.scalar(sa.select(Job.report)))
    assert enrolled == sorted([ids["ann"], ids["bo"]]) and report["changed"] == 2


def test_only_owners_erase_a_search_result_and_a_bare_list_of_everyone_is_refused(app, mailer):
    ids = people(mailer)
    editor = log_in(app, "editor@clinic.example")
    search = {"q": "south.example", "filter_list": "", "filter_status": ""}
    assert editor.post("/admin/contacts/bulk", {**search, "action": "erase"}).status_code == 403
    assert "Erase them" not in seen(editor.get("/admin/contacts?q=south.example").text)
    viewer = log_in(app, "viewer@clinic.example", role="viewer")
    assert viewer.post("/admin/contacts/bulk", {**search, "action": "erase"}).status_code == 403
    assert "Do something with everyone" not in seen(viewer.get("/admin/contacts?q=south.example").text)

    owner = log_in(app, "owner@clinic.example", role="owner")
    everyone = owner.post("/admin/contacts/bulk", {"q": "", "filter_list": "", "filter_status": "",
                                                   "action": "erase"}, follow_redirects=True)
    assert "Nothing done: Search first" in seen(everyone.text)
    page = owner.post("/admin/contacts/bulk", {**search, "action": "erase"})
    assert "This erases 1 contact found by your search for good" in seen(page.text)
    up_to = page.text.split('name="up_to" value="')[1].split('"')[0]
    wrong = owner.post("/admin/contacts/bulk/run", {**search, "action": "erase", "count": "1", "confirm": "yes",
                                                    "up_to": up_to})
    assert wrong.status_code == 400 and "type “erase 1”" in seen(wrong.text)
    owner.post("/admin/contacts/bulk/run", {**search, "action": "erase", "count": "1", "confirm": "erase 1",
                                            "up_to": up_to})
    mailer.drain()
    with mailer.read_sessions() as session:
        left = sorted(session.scalars(sa.select(Contact.email).where(Contact.email.is_not(None))))
        erased = session.get(Contact, ids["cy"])
    assert left == ["ann@north.example", "bo@north.example"] and erased.erased_at is not None


def test_the_api_counts_first_then_queues_with_the_count_and_reports_progress(client, mailer, api_tokens):
    ids = people(mailer)
    list_id = default_list(mailer)
    sequence_id, _ = manual_sequence(mailer, ("Lesson one", 0, {}), name="Back care course")
    editor, owner = Api(client, api_tokens.editor), Api(client, api_tokens.owner)
    ask = {"action": "unsubscribe", "list_id": list_id, "search": {"q": "north.example"}}
    counted = editor.post("/contacts/bulk", ask)
    assert counted.status_code == 200, counted.json
    assert counted.json["count"] == 2 and counted.json["job_id"] is None
    with mailer.read_sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0  # counting changes nothing
    wrong = editor.post("/contacts/bulk", {**ask, "expected_count": 3, "up_to_id": counted.json["up_to_id"]})
    assert wrong.status_code == 409 and "2 contacts now, not 3" in wrong.json["error"]["message"]
    queued = editor.post("/contacts/bulk", {**ask, "expected_count": 2, "up_to_id": counted.json["up_to_id"]})
    assert queued.status_code == 200 and queued.json["job_id"]
    mailer.drain()
    job = editor.get(f"/bulk-jobs/{queued.json['job_id']}").json
    assert (job["status"], job["done"], job["changed"], job["what"]) == (
        "done", 2, 2, "unsubscribe from Monthly newsletter")
    assert statuses(mailer)[ids["ann"]] == "unsubscribed" and statuses(mailer)[ids["cy"]] == "active"

    # A segment's members into an automation; erasing needs an owner's token.
    with session_scope(mailer.sessions) as session:
        segment_id = segments.create_segment(session, name="Still subscribed", now=utcnow(), rules={
            "groups": [{"rules": [{"kind": "list", "op": "active", "ref_id": list_id}]}]}).id
    enrol = editor.post(f"/segments/{segment_id}/bulk", {"action": "enrol", "sequence_id": sequence_id,
                                                         "expected_count": 1})
    assert enrol.status_code == 200 and enrol.json["count"] == 1
    assert editor.post(f"/segments/{segment_id}/bulk", {"action": "erase"}).status_code == 403
    assert owner.post(f"/segments/{segment_id}/bulk", {"action": "erase"}).json["count"] == 1
    assert editor.post("/contacts/bulk", {"action": "unsubscribe", "list_id": list_id}).status_code == 422
    assert editor.post("/contacts/bulk", {"action": "unsubscribe", "list_id": list_id,
                                          "search": {}}).status_code == 422
    mailer.drain()
    with mailer.read_sessions() as session:
        assert session.scalars(sa.select(Enrolment.contact_id)).all() == [ids["cy"]]
        audit = session.scalars(sa.select(AuditLog.detail).where(AuditLog.action.like("api_bulk_%"))
                                .order_by(AuditLog.id)).all()
    assert audit == [f"search=text list=any status=any: 2 contacts, list {list_id} (job {queued.json['job_id']})",
                     f"segment {segment_id}: 1 contacts, automation {sequence_id} (job {enrol.json['job_id']})"]
