"""Staff contact pages at scale: `python bench/contacts_admin.py [CONTACTS]` (default 1,000,000)
fills a fresh SQLite database with that many contacts on two lists in the three statuses, then
times every /admin/contacts page variant through the app (logged in; target: no page over
300 ms) against GET /livez through the same client as the reference, and the streamed export
of every contact (rows/s and the exporting process's peak RSS). The search variants include
substrings of the address or name (SQLite: the FTS5 trigram table contacts_fts)."""
from __future__ import annotations

import os
import random
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_SECRET_KEY, ROOT, VENV_PYTHON, use_project_python  # noqa: E402

use_project_python()

from mailer import create_app  # noqa: E402
from mailer.staff import users  # noqa: E402
from mailer.db import migrate, session_scope  # noqa: E402
from mailer.models import name_search_key  # noqa: E402

RUNS = 7
TARGET_MS = 300
FIRST_NAMES = ["Ann", "Anna", "Annette", "Bob", "Carla", "Dmitri", "Émile", "Fatima", "Grete", "Hiroshi", "Ines",
               "Jürgen", "Kai", "Lena", "María", "Noor", "Örjan", "Paul", "Ravi", "Søren", "Tomás", "Zoë"]
LAST_NAMES = ["Smith", "Jones", "Müller", "García", "Kowalski", "Nguyen", "O'Brien", "Straße", "Rossi", "Khan"]


def seed(path: str, contacts: int) -> None:
    """Raw executemany: the fastest way to a big table, not the code path under test.
    List 1 ("newsletter"): 80% of contacts (85% active, 10% unsubscribed, 5% pending);
    list 2 ("clinic-news"): 30% (70% active, 20% unsubscribed, 10% pending)."""
    rnd = random.Random(1)
    con = sqlite3.connect(path)
    con.executemany("INSERT INTO mailing_lists (id, slug, name, description, public, created_at) "
                    "VALUES (?, ?, ?, '', 1, '2025-01-01 00:00:00')",
                    [(1, "newsletter", "Newsletter"), (2, "clinic-news", "Clinic news")])

    def people():
        for i in range(1, contacts + 1):
            name = f"{rnd.choice(FIRST_NAMES)} {rnd.choice(LAST_NAMES)} {i}"
            yield i, f"person{i}@example{i % 50}.com", name, name_search_key(name), "2025-01-01 00:00:00"

    con.executemany("INSERT INTO contacts (id, email, name, name_key, created_at) VALUES (?, ?, ?, ?, ?)", people())

    def status(roll, active, unsubscribed):
        return "active" if roll < active else "unsubscribed" if roll < active + unsubscribed else "pending"

    def subscriptions():
        for i in range(1, contacts + 1):
            if rnd.random() < 0.8:
                yield i, 1, status(rnd.random(), 0.85, 0.10)
            if rnd.random() < 0.3:
                yield i, 2, status(rnd.random(), 0.70, 0.20)

    con.executemany("INSERT INTO subscriptions (contact_id, list_id, status, created_at) "
                    "VALUES (?, ?, ?, '2025-01-01 00:00:00')", subscriptions())
    con.commit()
    con.close()


def timed(client, paths) -> list[float]:
    times = []
    for i in range(RUNS):
        path = paths[i % len(paths)]
        started = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (path, answer.status_code)
    return times


def deep_before(client, path: str, pages: int) -> int:
    """Follow the "Next page" link `pages` times; the id it then starts below."""
    for _ in range(pages):
        path = re.search(r'<a href="([^"]+)">Next page</a>', client.get(path).text).group(1).replace("&amp;", "&")
    return int(re.search(r"before=(\d+)", path).group(1))


def main() -> None:
    contacts = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as workdir:
        path = f"{workdir}/contacts.db"
        url = f"sqlite:///{path}"
        migrate(url)
        started = time.perf_counter()
        seed(path, contacts)
        print(f"seeded {contacts:,} contacts and their subscriptions in {time.perf_counter() - started:.0f} s "
              f"(no ANALYZE: SQLite plans without statistics, as a fresh install does)")
        app = create_app({"database_url": url, "secret_key": BENCH_SECRET_KEY, "instance_path": workdir})
        m = app.extensions["mailer"]
        with session_scope(m.sessions) as session:
            users.create_user(session, "bench@example.com", "bench password 123", "owner")
        client = app.test_client()
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/login").text).group(1)
        client.post("/admin/login", data={"email": "bench@example.com", "password": "bench password 123",
                                          "csrf_token": token})
        rnd = random.Random(2)
        some = [rnd.randrange(1, contacts + 1) for _ in range(RUNS)]
        deep = deep_before(client, "/admin/contacts", 100)
        deep_filtered = deep_before(client, "/admin/contacts?list=2&status=active", 100)
        variants = [
            ("first page (with total)", ["/admin/contacts"]),
            ("exact email", [f"/admin/contacts?q=Person{i}@Example{i % 50}.com" for i in some]),
            ("name, 3+ letters (found anywhere)", ["/admin/contacts?q=ann", "/admin/contacts?q=%C3%B6rjan",
                                         "/admin/contacts?q=tom%C3%A1s%20rossi", "/admin/contacts?q=ZO%C3%AB"]),
            ("name prefix, 1 letter", ["/admin/contacts?q=a", "/admin/contacts?q=k", "/admin/contacts?q=%C3%A9"]),
            ("name prefix (2 letters), no match", ["/admin/contacts?q=xy"]),
            ("substring, common (about 1 in 22)", ["/admin/contacts?q=maria", "/admin/contacts?q=rossi"]),
            ("substring of an address, 1 in 50", ["/admin/contacts?q=example7.com", "/admin/contacts?q=@example12."]),
            ("substring, rare", ["/admin/contacts?q=son4242", "/admin/contacts?q=%C3%B6rjan%20khan%2099"]),
            ("substring, no match", ["/admin/contacts?q=xyz", "/admin/contacts?q=zzzzz"]),
            ("substring + list + status", ["/admin/contacts?q=maria&list=2&status=pending",
                                           "/admin/contacts?q=example7.com&list=1&status=active"]),
            ("list filter (with total)", ["/admin/contacts?list=1", "/admin/contacts?list=2"]),
            ("list + status (with total)", ["/admin/contacts?list=1&status=pending",
                                            "/admin/contacts?list=2&status=unsubscribed",
                                            "/admin/contacts?list=1&status=active"]),
            ("status on any list (no total)", ["/admin/contacts?status=pending", "/admin/contacts?status=active"]),
            ("name + list + status", ["/admin/contacts?q=ann&list=2&status=pending"]),
            ("deep page (after 100 pages)", [f"/admin/contacts?before={deep}"]),
            ("deep page, list + status", [f"/admin/contacts?list=2&status=active&before={deep_filtered}"]),
            ("very deep page (before id 1000)", ["/admin/contacts?before=1000&list=1"]),
            ("contact detail", [f"/admin/contacts/{i}" for i in some]),
        ]
        print(f"nproc {os.cpu_count()}; command: "
              f"{os.environ.get('BENCH_COMMAND', 'python bench/contacts_admin.py')} ({contacts:,} contacts)")
        livez = statistics.median(timed(client, ["/livez"]) + timed(client, ["/livez"]))
        print(f"reference: GET /livez {livez:.1f} ms (median) through the same client")
        print("| page | median ms | max ms | median / livez |\n|---|---:|---:|---:|")
        worst = 0.0
        for name, paths in variants:
            times = timed(client, paths)
            worst = max(worst, max(times))
            print(f"| {name} | {statistics.median(times):.0f} | {max(times):.0f} | "
                  f"{statistics.median(times) / livez:.0f}x |")
        print(f"slowest page: {worst:.0f} ms (target: none over {TARGET_MS} ms) -> "
              f"{'met' if worst <= TARGET_MS else 'MISSED'}")

        started = time.perf_counter()
        answer = client.get("/admin/contacts/export.csv")
        size = sum(len(chunk) for chunk in answer.response)
        seconds = time.perf_counter() - started
        print(f"web export (CSV, all {contacts:,}): {size / 1e6:.0f} MB in {seconds:.1f} s, "
              f"{contacts / seconds:,.0f} rows/s")
        m.engine.dispose()

        env = dict(os.environ, MAILER_DATABASE_URL=url, MAILER_SECRET_KEY=BENCH_SECRET_KEY,
                   MAILER_INSTANCE_PATH=workdir)
        for fmt in ("csv", "json"):
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            started = time.perf_counter()
            with open(os.devnull, "wb") as sink:
                subprocess.run([str(VENV_PYTHON), "-m", "mailer", "export-contacts", "--format", fmt],
                               cwd=ROOT, env=env, stdout=sink, check=True)
            seconds = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            print(f"CLI export-contacts --format {fmt}: {seconds:.1f} s, {contacts / seconds:,.0f} rows/s, "
                  f"peak RSS {max(peak, before) / 1024:.0f} MB")


if __name__ == "__main__":
    main()
