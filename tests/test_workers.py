"""Several workers at once: every worker runs every scheduled job, and each job's effect
happens once (db.take_singleton, row claims, compare-and-set, dedupe keys)."""
from __future__ import annotations

import collections
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from mailer.audience import checkpoints, contacts
from mailer.campaigns import newsletters, sequences, webinars
from mailer.staff import users
from mailer.audience.consent import RequestContext
from mailer.db import session_scope, take_singleton, utcnow
from mailer.models import (ConsentEvent, Delivery, Newsletter, Registration, Rhythm, SignupRequest, Subscription,
                           Webinar)
from tests.audience import address, make_audience, make_newsletter
from tests.conftest import BACKEND, SECRET, signup

ROOT = Path(__file__).resolve().parent.parent
EXPIRED = 60  # unconfirmed signups past the window
READERS = 20  # subscribers of a due newsletter
REGISTRANTS = 3  # per webinar
SIGNUPS = 5  # accepted on the form, waiting for a worker
SEQUENCE_READERS = 4  # readers enrolled in a sequence whose first step is due


def test_take_singleton_admits_one_transaction_at_a_time(mailer):
    with mailer.sessions() as first, first.begin():
        assert take_singleton(first, "purge-expired-pending")
        if BACKEND == "postgres":
            with mailer.sessions() as second, second.begin():
                assert not take_singleton(second, "purge-expired-pending")  # taken: skip this run
                assert take_singleton(second, "webinar-mail")  # another job's lock is free
    with mailer.sessions() as third, third.begin():
        assert take_singleton(third, "purge-expired-pending")  # released at commit


def expired_signups(mailer, count: int, prefix: str = "late") -> None:
    """`count` signups never confirmed, past the window (their confirmation long sent)."""
    when = utcnow() - dt.timedelta(days=mailer.settings.pending_expiry_days + 1)
    with session_scope(mailer.sessions) as session:
        for i in range(count):
            contacts.subscribe(session, mailer.settings, email=f"{prefix}{i}@example.com", consent_given=True,
                               context=RequestContext(ip="192.0.2.1"), now=when)
        session.execute(sa.update(Delivery).values(status="cancelled"))


def expired_events(db) -> list[int]:
    return db.scalars(sa.select(ConsentEvent.contact_id).where(ConsentEvent.action == "expired"))


def test_two_workers_purging_at_once_record_each_expiry_once(mailer, db):
    expired_signups(mailer, EXPIRED)
    start = threading.Barrier(2)
    purged = []

    def worker():
        start.wait()
        with session_scope(mailer.sessions) as session:
            purged.append(contacts.purge_expired_pending(session, mailer.settings, utcnow()))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(purged) == [0, EXPIRED]
    events = expired_events(db)
    assert len(events) == len(set(events)) == EXPIRED
    assert db.scalar(sa.select(sa.func.count()).select_from(Subscription)) == 0


def due_work_for_every_job(mailer, client) -> dict[str, int]:
    """Something due for each periodic job; returns the mails each address should get."""
    now = utcnow()
    expected: dict[str, int] = {}
    expired_signups(mailer, EXPIRED)  # purge-expired-signups
    make_audience(mailer, READERS)  # start-newsletters: an issue due now
    newsletter_id = make_newsletter(mailer, enqueue=False)
    with session_scope(mailer.sessions) as session:
        session.execute(sa.update(Newsletter).where(Newsletter.id == newsletter_id).values(
            status="scheduled", send_at=now - dt.timedelta(minutes=1)))
        expected.update({address(i): 1 for i in range(READERS)})
        # start-newsletters: a monthly rhythm sending in two hours with no issue ready warns the staff
        for role in ("owner", "editor"):
            users.create_user(session, f"{role}@clinic.example", "correct horse battery staple", role)
            expected[f"{role}@clinic.example"] = 1
        expected["owner@clinic.example"] += 1  # consent-checkpoint: the week's signed checkpoint, owners only
        soon = now + dt.timedelta(hours=2)
        newsletters.create_rhythm(session, name="Monthly", day="*", hour=soon.hour, minute=soon.minute,
                                  timezone="UTC")
        # webinar-mail: a webinar starting in 30 minutes (its 60-minute reminder is due) and one
        # that ended with a replay (its follow-up is due); each registrant also got a confirmation
        for slug in ("reminder-due", "follow-up-due"):
            webinar = webinars.save_webinar(session, slug=slug, title=slug, starts_local=now + dt.timedelta(days=1),
                                            timezone="UTC", join_url="https://meet.example/x",
                                            replay_url="https://video.example/replay", reminder_offsets="60",
                                            now=now)
            webinars.publish(session, webinar.id)
            for i in range(REGISTRANTS):
                # Registered two hours ago: a reminder whose time passed before someone registered
                # is not sent to them, and this one's time (30 minutes ago) came after.
                webinars.register(session, mailer.settings, slug, email=f"{slug}{i}@example.com",
                                  context=RequestContext(), now=now - dt.timedelta(hours=2))
                expected[f"{slug}{i}@example.com"] = 2
        session.execute(sa.update(Webinar).where(Webinar.slug == "reminder-due").values(
            starts_at=now + dt.timedelta(minutes=30), replay_url=""))
        session.execute(sa.update(Webinar).where(Webinar.slug == "follow-up-due").values(
            starts_at=now - dt.timedelta(hours=3), reminder_offsets=""))
        # sequence-mail: an active sequence whose first step is due for some of the readers
        list_id = session.scalar(sa.select(Subscription.list_id).where(Subscription.status == "active").limit(1))
        sequence = sequences.create_sequence(session, name="Welcome", trigger="manual", list_id=list_id)
        sequences.add_step(session, sequence.id, subject="Welcome", body_md="Hello {{ contact.first_name }}")
        sequences.activate(session, sequence.id, now=now)
        for contact_id in session.scalars(sa.select(Subscription.contact_id).where(Subscription.status == "active")
                                          .order_by(Subscription.contact_id).limit(SEQUENCE_READERS)):
            sequences.enrol(session, sequence.id, contact_id, now)
        for i in range(SEQUENCE_READERS):
            expected[address(i)] += 1
    for i in range(SIGNUPS):  # process-signups: accepted on the form, not processed yet
        signup(client, f"new{i}@example.com", process=False)
        expected[f"new{i}@example.com"] = 1
    return expected


def worker_process(database_url, smtp_server, tmp_path, n: int) -> tuple[subprocess.Popen, Path]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_DATABASE_URL=database_url, MAILER_SMTP_URL=smtp_server.url, MAILER_SECRET_KEY=SECRET,
               MAILER_INSTANCE_PATH=str(tmp_path / f"host-{n}"), MAILER_FROM="Clinic <news@clinic.example>",
               MAILER_BASE_URL="https://news.example.org", MAILER_SEND_INTERVAL_SECONDS="1")
    log = tmp_path / f"worker-{n}.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "mailer", "worker"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    return process, log


def test_three_workers_run_every_job_and_each_effect_happens_once(app, client, mailer, db, smtp_server,
                                                                  database_url, tmp_path):
    expected = due_work_for_every_job(mailer, client)
    workers = [worker_process(database_url, smtp_server, tmp_path, n) for n in range(3)]
    try:
        deadline = time.monotonic() + 90
        while len(smtp_server.received) < sum(expected.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)  # any second copy would arrive by now (the workers send every second)
    finally:
        for process, _log in workers:
            process.send_signal(signal.SIGTERM)
        for process, log in workers:
            process.wait(timeout=30)
    logs = "\n".join(log.read_text() for _process, log in workers)
    assert "Traceback" not in logs, logs

    received = collections.Counter(message.rcpt_tos[0] for message in smtp_server.received)
    assert received == expected
    events = expired_events(db)
    assert len(events) == len(set(events)) == EXPIRED  # one `expired` event per signup
    requested = db.scalars(sa.select(ConsentEvent.contact_id).where(ConsentEvent.action == "requested"))
    assert len(requested) == len(set(requested)) == EXPIRED + SIGNUPS
    assert db.scalar(sa.select(sa.func.count()).select_from(SignupRequest)) == 0
    assert db.scalar(sa.select(sa.func.count()).select_from(Subscription).where(Subscription.status == "pending")) \
        == SIGNUPS
    kinds = collections.Counter(db.scalars(sa.select(Delivery.kind).where(Delivery.status == "sent")))
    assert (kinds[newsletters.RHYTHM_WARNING], kinds[webinars.REMINDER], kinds[webinars.FOLLOW_UP],
            kinds["newsletter"], kinds[contacts.CONFIRMATION], kinds[checkpoints.CHECKPOINT_MAIL],
            kinds[sequences.STEP]) == (2, REGISTRANTS, REGISTRANTS, READERS, SIGNUPS, 1, SEQUENCE_READERS)
    assert db.scalar(sa.select(Newsletter.audience_count)) == READERS
    assert db.scalar(sa.select(Rhythm.warned_month)) is not None
    assert db.scalar(sa.select(sa.func.count()).select_from(Registration)) == 2 * REGISTRANTS
