"""A sequence step under a killed worker, with real worker processes and a real SMTP
server: SIGKILL while the step goes out to a few thousand enrolments, then a new worker
finishes it; nobody is missed, nobody is moved back, and duplicates are bounded as for
a newsletter (tests/test_delivery_engine.py)."""
from __future__ import annotations

import datetime as dt
import signal
import time

import sqlalchemy as sa

from mailer.campaigns import sequences
from mailer.db import session_scope, utcnow
from mailer.models import Contact, Delivery, Enrolment
from tests.audience import address, make_audience
from tests.test_delivery_engine import received_counts, wait_until, worker_process


def test_sigkill_while_a_step_goes_out_then_a_new_worker_reaches_every_enrolment(mailer, smtp_server, database_url,
                                                                                tmp_path, db):
    total = 3000
    list_id = make_audience(mailer, total)
    started = utcnow() - dt.timedelta(minutes=5)
    with session_scope(mailer.sessions) as session:
        sequence = sequences.create_sequence(session, name="Course", trigger="manual", list_id=list_id)
        one = sequences.add_step(session, sequence.id, subject="Lesson one for {{ contact.first_name }}",
                                 body_md="Stand up every 30 minutes.")
        sequences.add_step(session, sequence.id, subject="Lesson two", body_md="Walk after lunch.", delay=(1, "days"))
        sequences.activate(session, sequence.id, now=started)
        # Everyone enrolled a minute after the start: step one is due for all of them.
        enrolled = sa.literal(started + dt.timedelta(minutes=1), Enrolment.enrolled_at.type)
        session.execute(sa.insert(Enrolment).from_select(
            ["sequence_id", "contact_id", "enrolled_at", "last_position", "last_at", "status"],
            sa.select(sa.literal(sequence.id), Contact.id, enrolled, sa.literal(0), enrolled, sa.literal("active"))))
        sequence_id, step_one = sequence.id, one.id

    first = worker_process(database_url, smtp_server, tmp_path, "--drain", lease_seconds=2)
    wait_until(lambda: len(smtp_server.received) >= total // 3)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    in_flight = db.scalar(sa.select(sa.func.count()).select_from(Delivery).where(Delivery.status == "sending"))
    received_at_kill = len(smtp_server.received)
    assert received_at_kill < total

    time.sleep(2.2)  # the dead worker's lease runs out
    second = worker_process(database_url, smtp_server, tmp_path, "--drain", lease_seconds=2)
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 0, output

    counts = received_counts(smtp_server)
    duplicates = sum(n - 1 for n in counts.values())
    print(f"\nSIGKILL after {received_at_kill} of {total} step mails received: {in_flight} in flight at the kill, "
          f"{duplicates} duplicates")
    assert set(counts) == {address(i) for i in range(total)}  # every enrolled reader got step one
    assert duplicates <= in_flight
    subjects = {r.message["Subject"] for r in list(smtp_server.received)}
    assert subjects == {f"Lesson one for Reader{i}" for i in range(total)}  # and nothing of step two
    # One mail per enrolment (the dedupe key), all sent; every enrolment past step one, none further.
    step_mail = db.execute(sa.select(Delivery.ref_id, Delivery.status, sa.func.count())
                           .where(Delivery.kind == sequences.STEP).group_by(Delivery.ref_id, Delivery.status))
    assert step_mail == [(step_one, "sent", total)]
    positions = db.execute(sa.select(Enrolment.last_position, Enrolment.status, sa.func.count())
                           .where(Enrolment.sequence_id == sequence_id)
                           .group_by(Enrolment.last_position, Enrolment.status))
    assert positions == [(1, "active", total)]
