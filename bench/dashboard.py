"""Dashboard speed at scale: `python bench/dashboard.py [CONTACTS]` (default 1,000,000) fills a
fresh SQLite database with that many contacts, each with a newsletter subscription confirmed at a
random time over the last 700 days (80% active, 10% unsubscribed ten days later, 10% pending),
then times the staff dashboard page (GET /admin/ through the app, logged in) and its queries."""
from __future__ import annotations

import datetime as dt
import os
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_SECRET_KEY, use_project_python  # noqa: E402

use_project_python()

from mailer import create_app  # noqa: E402
from mailer.staff import dashboard, users  # noqa: E402
from mailer.db import migrate, session_scope, utcnow  # noqa: E402

RUNS = 7


def seed(path: str, contacts: int) -> None:
    """Raw executemany: the fastest way to a big table, not the code path under test."""
    rnd = random.Random(1)
    now = utcnow().replace(tzinfo=None)
    con = sqlite3.connect(path)
    con.execute("INSERT INTO mailing_lists (id, slug, name, description, public, created_at) "
                "VALUES (1, 'newsletter', 'Newsletter', '', 1, '2025-01-01 00:00:00')")
    con.executemany("INSERT INTO contacts (id, email, name, name_key, created_at) VALUES (?, ?, ?, ?, ?)",
                    ((i, f"reader{i}@example.com", f"Reader {i}", f"reader {i}", "2025-01-01 00:00:00")
                     for i in range(1, contacts + 1)))

    def subscriptions():
        for i in range(1, contacts + 1):
            confirmed = now - dt.timedelta(seconds=rnd.randrange(0, 700 * 86400))
            roll = rnd.random()
            if roll < 0.8:
                yield i, "active", confirmed, None
            elif roll < 0.9:
                yield i, "unsubscribed", confirmed, min(confirmed + dt.timedelta(days=10), now)
            else:
                yield i, "pending", None, None

    con.executemany(
        "INSERT INTO subscriptions (contact_id, list_id, status, confirmed_at, unsubscribed_at, created_at) "
        "VALUES (?, 1, ?, ?, ?, '2025-01-01 00:00:00')",
        ((i, status, c.isoformat(" ") if c else None, u.isoformat(" ") if u else None)
         for i, status, c, u in subscriptions()))
    con.commit()  # no ANALYZE: SQLite plans without statistics, as on a fresh install
    con.close()


def timed(call) -> list[float]:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    contacts = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as workdir:
        path = f"{workdir}/dashboard.db"
        url = f"sqlite:///{path}"
        migrate(url)
        started = time.perf_counter()
        seed(path, contacts)
        print(f"seeded {contacts:,} contacts and subscriptions in {time.perf_counter() - started:.0f} s")
        app = create_app({"database_url": url, "secret_key": BENCH_SECRET_KEY, "instance_path": workdir})
        m = app.extensions["mailer"]
        with session_scope(m.sessions) as session:
            users.create_user(session, "bench@example.com", "bench password 123", "viewer")
        client = app.test_client()
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/login").text).group(1)
        client.post("/admin/login", data={"email": "bench@example.com", "password": "bench password 123",
                                          "csrf_token": token})

        def page():
            assert client.get("/admin/").status_code == 200

        def figures():
            with m.read_sessions() as s:
                dashboard.subscriber_figures(s, now=utcnow(), zone=m.settings.timezone)

        def lists():
            with m.read_sessions() as s:
                dashboard.list_counts(s)

        print(f"nproc {os.cpu_count()}; command: {os.environ.get('BENCH_COMMAND', 'python bench/dashboard.py')}")
        print(f"{'what':<40} {'median ms':>10} {'max ms':>8}")
        for name, call in (("GET /admin/ (whole page)", page), ("subscriber history + this month", figures),
                           ("list counts", lists)):
            times = timed(call)
            print(f"{name:<40} {statistics.median(times):>10.0f} {max(times):>8.0f}")
        m.engine.dispose()


if __name__ == "__main__":
    main()
