"""A small step (a welcome after a confirmation) goes out with a confirmation's priority,
so it does not wait behind an issue being sent to the whole list; a big burst of a step is
bulk mail, so it cannot hold up confirmations. Checked on the real outbox's claim order."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from mailer.campaigns import sequences
from mailer.db import session_scope
from mailer.delivery import outbox
from mailer.models import Delivery, Priority
from tests.test_sequences import ENROL, manual_sequence, run, subscriber


def step_priorities(mailer, step_id) -> set[int]:
    with mailer.read_sessions() as session:
        return set(session.scalars(sa.select(Delivery.priority).where(Delivery.kind == "sequence_step",
                                                                      Delivery.ref_id == step_id)))


def test_a_welcome_step_is_claimed_before_an_issue_being_sent(mailer):
    readers = [subscriber(mailer, f"reader{i}@example.com", f"Reader {i}") for i in range(30)]
    with session_scope(mailer.sessions) as session:
        for contact_id in readers:  # an issue's copies, queued for everyone a moment before
            outbox.enqueue(session, contact_id=contact_id, kind="newsletter", ref_id=1, list_id=None,
                           dedupe_key=f"issue:{contact_id}", now=ENROL - dt.timedelta(minutes=1),
                           priority=Priority.BULK)
    sequence_id, [welcome] = manual_sequence(mailer, ("Welcome", 0, {}))
    with session_scope(mailer.sessions) as session:
        sequences.enrol(session, sequence_id, readers[7], ENROL)
    run(mailer, ENROL)
    assert step_priorities(mailer, welcome) == {Priority.TRANSACTIONAL}
    with session_scope(mailer.sessions) as session:
        claimed = outbox.claim_due(session, worker_id="w1", now=ENROL, limit=5, lease_seconds=60,
                                   message_domain="example.org")
        kinds = [session.get(Delivery, i).kind for i in claimed]
    assert kinds[0] == "sequence_step" and kinds.count("newsletter") == 4


def test_a_big_burst_of_a_step_is_bulk_mail(mailer, monkeypatch):
    monkeypatch.setattr(sequences, "SMALL_BATCH", 2)  # the threshold, not the database, is made small
    readers = [subscriber(mailer, f"reader{i}@example.com", f"Reader {i}") for i in range(3)]
    sequence_id, [lesson] = manual_sequence(mailer, ("Lesson", 0, {}))
    with session_scope(mailer.sessions) as session:
        for contact_id in readers:
            sequences.enrol(session, sequence_id, contact_id, ENROL)
    run(mailer, ENROL)
    assert step_priorities(mailer, lesson) == {Priority.BULK}
