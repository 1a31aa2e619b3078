"""Many signups at once, then several workers processing them at once: none lost,
no 'database is locked', no confirmation twice, the consent chain stays one chain."""
from __future__ import annotations

import threading

import sqlalchemy as sa

from mailer.audience import consent, contacts
from mailer.db import session_scope
from mailer.models import ConsentEvent, Delivery, SignupRequest, Subscription
from tests.conftest import signup

THREADS = 12
PER_THREAD = 5


def test_concurrent_signups_lose_nothing_and_keep_the_chain_intact(app, mailer, db):
    barrier = threading.Barrier(THREADS)
    answers: list[int] = []
    lock = threading.Lock()

    def visitor(n: int) -> None:
        client = app.test_client()
        barrier.wait()
        for i in range(PER_THREAD):
            # Every visitor also signs up one shared address: a duplicate race.
            address = "shared@example.com" if i == 0 else f"v{n}-{i}@example.com"
            code = signup(client, address, process=False).status_code
            with lock:
                answers.append(code)

    threads = [threading.Thread(target=visitor, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert answers == [200] * (THREADS * PER_THREAD)
    assert db.scalar(sa.select(sa.func.count()).select_from(SignupRequest)) == THREADS * PER_THREAD

    def worker() -> None:
        while True:
            with session_scope(mailer.sessions) as session:
                if not contacts.process_signups(session, mailer.settings, limit=3):
                    return

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert db.scalar(sa.select(sa.func.count()).select_from(SignupRequest)) == 0
    unique = THREADS * (PER_THREAD - 1) + 1
    assert db.scalar(sa.select(sa.func.count()).select_from(Subscription)) == unique
    assert db.scalar(sa.select(sa.func.count()).select_from(Delivery)) == unique  # one confirmation each
    assert db.scalar(sa.select(sa.func.count()).select_from(ConsentEvent)) == unique
    with mailer.read_sessions() as session:
        report = consent.verify_chain(session)
    assert report.intact, report
    assert report.events == unique
