"""Delivery search on a big outbox: `python bench/deliveries_search.py [ROWS] [--postgres] [--no-analyze]`
(default 1,000,000 rows, SQLite) fills a fresh database with deliveries in realistic
proportions and times outbox.search_deliveries for each filter the staff page and the
API offer: the first page, and a page deep in the table (median of 5 runs)."""
from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import use_project_python  # noqa: E402

use_project_python()

import sqlalchemy as sa  # noqa: E402

from mailer.delivery import outbox  # noqa: E402
from mailer.db import make_engine, make_session_factory, migrate, utcnow  # noqa: E402
from mailer.models import Contact, Delivery  # noqa: E402

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
CONTACTS = 100_000
# status, share, error class, error text
MIX = [("sent", 0.90, None, None), ("queued", 0.04, None, None),
       ("deferred", 0.03, "temporary", "451 4.7.1 Greylisted, try again in 5 minutes"),
       ("failed", 0.01, "permanent", "550 5.1.1 <{email}>: Recipient address rejected: User unknown"),
       ("cancelled", 0.015, None, "unsubscribed"), ("suppressed", 0.005, None, "suppressed: hard_bounce")]
KINDS = [("newsletter", 0.95), ("confirmation", 0.03), ("webinar_reminder", 0.02)]


def fill(sessions, rows: int) -> None:
    rng = random.Random(7)
    now = utcnow()
    with sessions() as session, session.begin():
        session.execute(sa.insert(Contact.__table__), [
            {"email": f"reader{i}@example.com", "name": f"Reader {i}", "created_at": now}
            for i in range(1, CONTACTS + 1)])
    statuses = rng.choices(MIX, weights=[m[1] for m in MIX], k=rows)
    kinds = rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS], k=rows)
    for first in range(0, rows, 50_000):
        batch = []
        for i in range(first, min(first + 50_000, rows)):
            status, _, error_class, error = statuses[i]
            contact = i % CONTACTS + 1
            batch.append({"contact_id": contact, "kind": kinds[i], "ref_id": i // 10_000 + 1, "dedupe_key": f"k{i}",
                          "status": status, "attempts": 1, "next_attempt_at": now, "created_at": now,
                          "error_class": error_class,
                          "last_error": error.format(email=f"reader{contact}@example.com") if error else None,
                          "sent_at": now if status == "sent" else None})
        with sessions() as session, session.begin():
            session.execute(sa.insert(Delivery.__table__), batch)


def timed(sessions, **filters) -> tuple[float, int]:
    runs = []
    for _ in range(5):
        with sessions() as session:
            started = time.perf_counter()
            found = outbox.search_deliveries(session, limit=50, **filters)
            runs.append(time.perf_counter() - started)
    return statistics.median(runs) * 1000, len(found)


def main() -> None:
    rows = int(next((a for a in sys.argv[1:] if a.isdigit()), 1_000_000))
    postgres = "--postgres" in sys.argv
    with tempfile.TemporaryDirectory() as workdir:
        if postgres:
            name = f"bench_deliveries_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            url = POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        else:
            url = f"sqlite:///{workdir}/deliveries.db"
        try:
            migrate(url)
            engine = make_engine(url)
            sessions = make_session_factory(engine, read_only=True)
            started = time.perf_counter()
            fill(make_session_factory(engine), rows)
            if "--no-analyze" not in sys.argv:  # PostgreSQL's autovacuum would; SQLite needs asking
                with engine.begin() as conn:
                    conn.exec_driver_sql("ANALYZE")
            print(f"nproc {os.cpu_count()}; {'PostgreSQL' if postgres else 'SQLite'}; {rows:,} deliveries "
                  f"filled in {time.perf_counter() - started:.0f} s; command: .venv/bin/python "
                  f"bench/deliveries_search.py {' '.join(sys.argv[1:])}")
            deep = rows // 2
            print("| filter | first page ms | page at id < rows/2 ms |\n|---|---|---|")
            for label, filters in [
                ("none", {}), ("status=sent", {"status": "sent"}), ("status=failed", {"status": "failed"}), ("status=sending (no rows)", {"status": "sending"}),
                ("kind=newsletter", {"kind": "newsletter"}), ("kind=webinar_reminder", {"kind": "webinar_reminder"}),
                ("status=failed, kind=webinar_reminder", {"status": "failed", "kind": "webinar_reminder"}),
                ("error='greylisted'", {"error": "greylisted"}), ("error='user unknown'", {"error": "user unknown"}),
                ("error matching nothing", {"error": "no such text"}),
                ("status=failed, error='user unknown'", {"status": "failed", "error": "user unknown"}),
                ("contact_id", {"contact_id": 4242}), ("ref_id", {"ref_id": 7}),
            ]:
                first_ms, _ = timed(sessions, **filters)
                deep_ms, _ = timed(sessions, before_id=deep, **filters)
                print(f"| {label} | {first_ms:.1f} | {deep_ms:.1f} |")
            engine.dispose()
        finally:
            if postgres:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
                admin.dispose()


if __name__ == "__main__":
    main()
