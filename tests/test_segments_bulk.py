"""Bulk actions on a segment: unsubscribe everyone in it from a list and erase them, each
confirmed with the count and run as a background job (progress, resumable, audited); the
segment's CSV export; editors may not erase; a count that changed is asked again."""
from __future__ import annotations

import json

import sqlalchemy as sa

from mailer.audience import segments
from mailer.campaigns import sequences
from mailer.db import session_scope, utcnow
from mailer.delivery import outbox
from mailer.models import AuditLog, ConsentEvent, Contact, Delivery, Enrolment, Job, Subscription
from tests.test_automations_admin import seen
from tests.test_newsletter_admin import log_in
from tests.test_sequences import default_list, manual_sequence, subscriber

LONDON = {"groups": [{"rules": [{"kind": "timezone", "op": "is", "value": "Europe/London"}]}]}


def setup(mailer) -> tuple[int, dict]:
    ids = {name: subscriber(mailer, f"{name}@example.com", name.title(), zone)
           for name, zone in (("bob", "Europe/London"), ("cy", "Europe/Berlin"), ("dee", "Europe/London"))}
    with session_scope(mailer.sessions) as session:
        segment_id = segments.create_segment(session, name="Londoners", rules=LONDON, now=utcnow()).id
        outbox.enqueue(session, contact_id=ids["bob"], kind="newsletter", ref_id=1, list_id=default_list(mailer),
                       dedupe_key="issue:bob", now=utcnow())
    return segment_id, ids


def test_unsubscribe_a_segment_from_a_list_in_the_background(app, mailer, smtp_server):
    segment_id, ids = setup(mailer)
    editor = log_in(app, "editor@clinic.example")
    list_id = default_list(mailer)
    page = editor.post(f"/admin/segments/{segment_id}/bulk", {"action": "unsubscribe", "list": str(list_id)})
    assert "This unsubscribes 2 contacts in “Londoners” from Monthly newsletter" in seen(page.text)

    # A count that is no longer right is asked again; nothing is queued.
    stale = editor.post(f"/admin/segments/{segment_id}/bulk/run", {"action": "unsubscribe", "list": str(list_id),
                                                                    "count": "5"})
    assert stale.status_code == 400 and "There are 2 contacts now, not 5" in seen(stale.text)
    with mailer.read_sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0

    done = editor.post(f"/admin/segments/{segment_id}/bulk/run", {"action": "unsubscribe", "list": str(list_id),
                                                                   "count": "2"}, follow_redirects=True)
    assert "Queued: it runs in the background" in seen(done.text)
    mailer.drain()  # the worker's console-jobs job
    with mailer.read_sessions() as session:
        statuses = dict(session.execute(sa.select(Subscription.contact_id, Subscription.status)).all())
        assert statuses == {ids["bob"]: "unsubscribed", ids["cy"]: "active", ids["dee"]: "unsubscribed"}
        sources = session.scalars(sa.select(ConsentEvent.source_url).where(ConsentEvent.action == "withdrawn")).all()
        assert sources == ["staff:editor@clinic.example"] * 2
        assert session.scalar(sa.select(Delivery.status).where(Delivery.dedupe_key == "issue:bob")) == "cancelled"
        job = session.scalar(sa.select(Job))
        assert (job.status, job.done, job.total) == ("done", 2, 2)
        audit = session.scalars(sa.select(AuditLog.detail).where(AuditLog.action == "segment.bulk_unsubscribe")).all()
    assert audit == [f"segment {segment_id}: 2 contacts, list {list_id} (job {job.id})"]
    assert not smtp_server.received or all("issue" not in r.message["Subject"] for r in smtp_server.received)
    progress = editor.get(f"/admin/segments/jobs/{job.id}/progress").json
    assert progress["finished"] and progress["figures"] == {"done": 2, "changed": 2}
    assert "unsubscribe from Monthly newsletter" in seen(editor.get(f"/admin/segments/{segment_id}").text)


def test_only_owners_erase_and_export_and_they_confirm_by_typing(app, mailer):
    segment_id, ids = setup(mailer)
    editor = log_in(app, "editor@clinic.example")
    assert editor.post(f"/admin/segments/{segment_id}/bulk", {"action": "erase"}).status_code == 403
    assert editor.get(f"/admin/segments/{segment_id}/export.csv").status_code == 403
    owner = log_in(app, "owner@clinic.example", role="owner")
    exported = owner.get(f"/admin/segments/{segment_id}/export.csv")
    assert exported.status_code == 200
    assert "bob@example.com" in exported.text and "dee@example.com" in exported.text
    assert "cy@example.com" not in exported.text

    page = owner.post(f"/admin/segments/{segment_id}/bulk", {"action": "erase"})
    assert "This erases 2 contacts in “Londoners” for good" in seen(page.text)
    wrong = owner.post(f"/admin/segments/{segment_id}/bulk/run", {"action": "erase", "count": "2", "confirm": "yes"})
    assert wrong.status_code == 400 and "type “erase 2”" in seen(wrong.text)
    owner.post(f"/admin/segments/{segment_id}/bulk/run", {"action": "erase", "count": "2", "confirm": "erase 2"})
    mailer.drain()
    with mailer.read_sessions() as session:
        left = session.scalars(sa.select(Contact.email).where(Contact.email.is_not(None))).all()
    assert left == ["cy@example.com"]


def test_add_a_segment_to_an_automation_in_the_background(app, mailer):
    segment_id, ids = setup(mailer)
    sequence_id, _ = manual_sequence(mailer, ("Lesson one", 0, {}), name="Back care course")
    with session_scope(mailer.sessions) as session:  # Dee leaves the newsletter: she cannot get its mail
        session.execute(sa.update(Subscription).where(Subscription.contact_id == ids["dee"]).values(
            status="unsubscribed"))
    editor = log_in(app, "editor@clinic.example")
    assert "Back care course" in seen(editor.get(f"/admin/segments/{segment_id}").text)
    page = editor.post(f"/admin/segments/{segment_id}/bulk", {"action": "enrol", "sequence": str(sequence_id)})
    assert "This adds 2 contacts in “Londoners” to the automation Back care course" in seen(page.text)
    editor.post(f"/admin/segments/{segment_id}/bulk/run", {"action": "enrol", "sequence": str(sequence_id),
                                                            "count": "2"})
    mailer.drain()
    with mailer.read_sessions() as session:
        enrolled = session.scalars(sa.select(Enrolment.contact_id).where(Enrolment.sequence_id == sequence_id)).all()
        job = session.scalar(sa.select(Job))
        audit = session.scalars(sa.select(AuditLog.detail).where(AuditLog.action == "segment.bulk_enrol")).all()
    assert enrolled == [ids["bob"]]  # Dee is in the segment but not on the automation's list
    assert (job.status, job.done, json.loads(job.report)["changed"]) == ("done", 2, 1)
    assert audit == [f"segment {segment_id}: 2 contacts, automation {sequence_id} (job {job.id})"]
    assert "add to automation Back care course" in seen(editor.get(f"/admin/segments/{segment_id}").text)
    # An archived automation cannot be chosen.
    with session_scope(mailer.sessions) as session:
        sequences.archive(session, sequence_id)
    refused = editor.post(f"/admin/segments/{segment_id}/bulk", {"action": "enrol", "sequence": str(sequence_id)},
                          follow_redirects=True)
    assert "Nothing done: Choose the automation to add them to." in seen(refused.text)
