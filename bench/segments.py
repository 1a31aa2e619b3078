"""Segments benchmark: a segment of 4 rules over 1,000,000 contacts, counted and used as a newsletter's audience.

Run from the repository root:

    .venv/bin/python bench/segments.py                 # 1,000,000 contacts, SQLite and PostgreSQL
    .venv/bin/python bench/segments.py --quick         # 100,000 contacts
    .venv/bin/python bench/segments.py --sqlite-only --contacts 300000

Per backend (SQLite file in a temporary directory; PostgreSQL: a fresh database
bench_segments_<random> at postgresql+psycopg://postgres@127.0.0.1:5432, dropped at the end):

1. Set-up, not the code under test, each table in one INSERT … SELECT from a generated series:
   N contacts in 24 time zones, their subscriptions to the newsletter list (subscribed over the
   last 400 days; every 10th unsubscribed), a webinar that ended yesterday with a seat for
   every 5th contact, every 10th marked attended, and an automation with every 7th contact in it.
2. The segment "active on the newsletter list AND subscribed in the last 180 days AND
   time zone is not Europe/London AND (attended the webinar OR in the automation) AND the
   custom field clinic = North" (every contact has 3 custom fields: clinic, visits, last visit):
   `segments.count` (target: < 3 s on SQLite, < 1 s on PostgreSQL) and `segments.sample`.
3. A newsletter to the list narrowed by the segment: `count_audience` and `enqueue_audience`
   (the INSERT … SELECT that queues it; target < 30 s). The reference in the same run: the
   same calls for an issue to the whole list (no segment), treated the same way.

Each figure is the best of 3 runs of the same call (enqueue runs once: it writes). It ends
with a Markdown table preceded by `nproc`, the load average, the commit and the command.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_state, load_average, on_scratch_postgres, use_project_python, verdict  # noqa: E402

use_project_python()
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402
from mailer.audience import fields, segments  # noqa: E402
from mailer.campaigns import newsletters  # noqa: E402
from mailer.db import make_engine, migrate, session_scope, utcnow  # noqa: E402
from mailer.demo import ensure_default_list  # noqa: E402
from mailer.models import Contact, Newsletter, Sequence, Webinar  # noqa: E402

TARGET_COUNT_S = {"SQLite": 3.0, "PostgreSQL": 1.0}
TARGET_AUDIENCE_S = 30.0
ZONES = ("Pacific/Honolulu", "America/Los_Angeles", "America/Denver", "America/Chicago", "America/New_York",
         "America/Halifax", "America/Sao_Paulo", "Atlantic/Azores", "Europe/London", "Europe/Berlin",
         "Europe/Athens", "Europe/Moscow", "Asia/Dubai", "Asia/Karachi", "Asia/Dhaka", "Asia/Bangkok",
         "Asia/Shanghai", "Asia/Tokyo", "Australia/Brisbane", "Australia/Sydney", "Pacific/Noumea",
         "Pacific/Auckland", "America/Anchorage", "Africa/Lagos")


def build_data(database_url: str, contacts: int, now: dt.datetime) -> dict:
    migrate(database_url)
    engine = make_engine(database_url)
    try:
        factory = sessionmaker(bind=engine)
        with session_scope(factory) as session:
            list_id = ensure_default_list(session).id
            webinar = Webinar(slug="spine-health", title="Spine Health", description_md="", join_url="",
                              replay_url="", starts_at=now - dt.timedelta(days=1), timezone="Europe/London",
                              duration_minutes=60, status="published", reminder_offsets="", sequence=0,
                              created_at=now - dt.timedelta(days=30))
            sequence = Sequence(name="Welcome", trigger="manual", list_id=list_id, status="active",
                                activated_at=now - dt.timedelta(days=30), created_at=now - dt.timedelta(days=30))
            session.add_all([webinar, sequence])
            session.flush()
            webinar_id, sequence_id = webinar.id, sequence.id
            field_ids = {key: fields.create_field(session, key=key, label=label, type=kind, choices=choices,
                                                  now=now).id
                         for key, label, kind, choices in (("clinic", "Clinic", "choice", ["North", "South", "East"]),
                                                           ("visits", "Visits", "number", []),
                                                           ("last_visit", "Last visit", "date", []))}
        sqlite = database_url.startswith("sqlite")
        zone_case = "CASE (n % 24) " + " ".join(f"WHEN {i} THEN '{z}'" for i, z in enumerate(ZONES)) + " END"
        series = ("WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < :last) SELECT n, "
                  "'reader' || n || '@example.com' AS email, printf('%064x', n) AS hash FROM s" if sqlite else
                  "SELECT n, 'reader' || n || '@example.com' AS email, lpad(to_hex(n), 64, '0') AS hash "
                  "FROM generate_series(0, :last) AS n")
        # Subscribed n % 400 days ago: the date is computed here per bucket, not in SQL.
        day_case = "CASE (id % 400) " + " ".join(
            f"WHEN {d} THEN '{(now - dt.timedelta(days=d)).strftime('%Y-%m-%d %H:%M:%S')}'" for d in range(400)) + " END"
        if not sqlite:
            day_case = f"CAST({day_case} AS timestamp)"
        created = sa.bindparam("created", now - dt.timedelta(days=500), type_=Contact.created_at.type)
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(sa.text(
                f"INSERT INTO contacts (email, email_hash, name, name_key, timezone, created_at) "
                f"SELECT email, hash, 'Reader ' || n, 'reader ' || n, {zone_case}, :created FROM ({series}) AS g"
            ).bindparams(created), {"last": contacts - 1})
            conn.execute(sa.text(
                f"INSERT INTO subscriptions (contact_id, list_id, status, created_at, confirmed_at) "
                f"SELECT id, :list_id, CASE WHEN id % 10 = 0 THEN 'unsubscribed' ELSE 'active' END, {day_case}, "
                f"{day_case} FROM contacts"), {"list_id": list_id})
            conn.execute(sa.text(
                "INSERT INTO registrations (webinar_id, contact_id, status, attended, created_at, token) "
                "SELECT :webinar_id, id, 'confirmed', CASE WHEN id % 10 = 0 THEN :yes ELSE NULL END, :created, "
                "'t' || id FROM contacts WHERE id % 5 = 0").bindparams(created),
                {"webinar_id": webinar_id, "yes": True})
            conn.execute(sa.text(
                "INSERT INTO enrolments (sequence_id, contact_id, enrolled_at, last_position, last_at, status) "
                "SELECT :sequence_id, id, :created, 0, :created, 'active' FROM contacts WHERE id % 7 = 0"
            ).bindparams(created), {"sequence_id": sequence_id})
            # Three custom fields with a value for every contact: clinic (North / South / East),
            # visits (a number 0-19) and last visit (a date in the last 400 days).
            conn.execute(sa.text(
                "INSERT INTO contact_field_values (contact_id, field_id, value, number) "
                "SELECT id, :clinic, CASE id % 3 WHEN 0 THEN 'North' WHEN 1 THEN 'South' ELSE 'East' END, NULL "
                "FROM contacts"), {"clinic": field_ids["clinic"]})
            conn.execute(sa.text(
                "INSERT INTO contact_field_values (contact_id, field_id, value, number) "
                f"SELECT id, :visits, CAST(id % 20 AS {'TEXT' if sqlite else 'VARCHAR'}), id % 20 FROM contacts"),
                {"visits": field_ids["visits"]})
            conn.execute(sa.text(
                "INSERT INTO contact_field_values (contact_id, field_id, value, number) "
                f"SELECT id, :last_visit, substr({day_case}, 1, 10), NULL FROM contacts"
                if sqlite else
                "INSERT INTO contact_field_values (contact_id, field_id, value, number) "
                "SELECT id, :last_visit, to_char(CAST(:today AS date) - (id % 400) * INTERVAL '1 day', 'YYYY-MM-DD'), NULL "
                "FROM contacts"), {"last_visit": field_ids["last_visit"], "today": now.date()})
        data_s = time.perf_counter() - started
        if not sqlite:
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
        return {"data_s": data_s, "list_id": list_id, "webinar_id": webinar_id, "sequence_id": sequence_id,
                "field_ids": field_ids}
    finally:
        engine.dispose()


def best_of(runs: int, call) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        result = call()
        best = min(best, time.perf_counter() - started)
    return best, result


def measure(backend: str, database_url: str, contacts: int) -> dict:
    print(f"\n=== {backend}: {contacts:,} contacts ===", flush=True)
    now = utcnow().replace(microsecond=0)
    figures = {"backend": backend, "contacts": contacts, **build_data(database_url, contacts, now)}
    print(f"  set-up: {figures['data_s']:.1f} s", flush=True)
    engine = make_engine(database_url)
    factory = sessionmaker(bind=engine)
    try:
        rules = {"match": "all", "groups": [
            {"match": "all", "rules": [{"kind": "list", "op": "active", "ref_id": figures["list_id"]},
                                       {"kind": "subscribed", "op": "within_days", "value": 180},
                                       {"kind": "timezone", "op": "is_not", "value": "Europe/London"}]},
            {"match": "any", "rules": [{"kind": "webinar", "op": "attended", "ref_id": figures["webinar_id"]},
                                       {"kind": "automation", "op": "enrolled", "ref_id": figures["sequence_id"]}]},
            {"match": "all", "rules": [
                {"kind": "field", "op": "eq", "ref_id": figures["field_ids"]["clinic"], "value": "North"}]}]}
        with session_scope(factory) as session:
            segment = segments.create_segment(session, name="Bench", rules=rules, now=now)
            parsed = segments.rules_of(segment)
            segment_id = segment.id
            issues = []
            for segment_of in (segment_id, None):
                issue = newsletters.create_newsletter(session, subject="Hello", body_md="Hello.", lists=["newsletter"],
                                                      segment_id=segment_of)
                issues.append(issue.id)
        with factory() as session:
            figures["count_s"], figures["count"] = best_of(3, lambda: segments.count(session, parsed, now))
            figures["sample_s"], _ = best_of(3, lambda: segments.sample(session, parsed, now))
            figures["audience_count_s"], figures["audience"] = best_of(
                3, lambda: newsletters.count_audience(session, issues[0], now))
            figures["plain_count_s"], figures["plain_audience"] = best_of(
                3, lambda: newsletters.count_audience(session, issues[1], now))
        for key, issue_id in (("enqueue", issues[0]), ("plain_enqueue", issues[1])):
            started = time.perf_counter()
            with session_scope(factory) as session:
                session.get(Newsletter, issue_id).status = "sending"
                figures[key] = newsletters.enqueue_audience(session, issue_id, now=now)
            figures[f"{key}_s"] = time.perf_counter() - started
        print(f"  segment count {figures['count']:,} in {figures['count_s']:.2f} s; sample {figures['sample_s']:.2f} s;"
              f" issue audience {figures['audience']:,} counted in {figures['audience_count_s']:.2f} s, queued in "
              f"{figures['enqueue_s']:.1f} s; whole list {figures['plain_audience']:,} counted in "
              f"{figures['plain_count_s']:.2f} s, queued in {figures['plain_enqueue_s']:.1f} s", flush=True)
    finally:
        engine.dispose()
    return figures


def measure_postgres(contacts: int) -> dict | str:
    return on_scratch_postgres("bench_segments", lambda url: measure("PostgreSQL", url, contacts))


def markdown_table(results: list[dict]) -> str:
    lines = ["| Backend | What | Result | Target | |", "|---|---|---:|---:|---|"]
    for f in results:
        b, n = f["backend"], f["contacts"]
        target = TARGET_COUNT_S[b]
        lines += [
            f"| {b} | set-up: {n:,} contacts, subscriptions, seats, enrolments, 3 custom fields each | {f['data_s']:.1f} s | | |",
            f"| {b} | `segments.count` (5 rules, one on a custom field): {f['count']:,} contacts | {f['count_s']:.2f} s | < {target:.0f} s "
            f"| {verdict(f['count_s'] < target)} |",
            f"| {b} | `segments.sample` (ten of them) | {f['sample_s']:.2f} s | | |",
            f"| {b} | `count_audience`, issue narrowed by it: {f['audience']:,} | {f['audience_count_s']:.2f} s | | |",
            f"| {b} | `enqueue_audience`, issue narrowed by it: {f['enqueue']:,} queued | {f['enqueue_s']:.1f} s | "
            f"< {TARGET_AUDIENCE_S:.0f} s | {verdict(f['enqueue_s'] < TARGET_AUDIENCE_S)} |",
            f"| {b} | reference: `count_audience`, whole list: {f['plain_audience']:,} | {f['plain_count_s']:.2f} s "
            f"| | |",
            f"| {b} | reference: `enqueue_audience`, whole list: {f['plain_enqueue']:,} queued | "
            f"{f['plain_enqueue_s']:.1f} s | | |",
        ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 contacts instead of 1,000,000")
    parser.add_argument("--contacts", type=int)
    parser.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--workdir", help="where the SQLite database goes (default: a temporary directory)")
    args = parser.parse_args()
    contacts = args.contacts or (100_000 if args.quick else 1_000_000)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(sys.orig_argv)
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    print(f"Command: {command}\nnproc: {nproc}; load average before: {load_average()}; code: {git_state()}",
          flush=True)
    started = time.monotonic()
    results, notes, failed = [], [], False
    with tempfile.TemporaryDirectory(prefix="bench_segments_", dir=args.workdir) as tmp:
        try:
            results.append(measure("SQLite", f"sqlite:///{Path(tmp) / 'bench.db'}", contacts))
        except Exception:
            traceback.print_exc()
            failed = True
        if args.sqlite_only:
            notes.append("PostgreSQL skipped: --sqlite-only")
        else:
            try:
                outcome = measure_postgres(contacts)
                (results.append(outcome) if isinstance(outcome, dict) else notes.append(f"PostgreSQL skipped: {outcome}"))
            except Exception:
                traceback.print_exc()
                failed = True
    print(f"\n## Segments\n\nnproc: {nproc} (shared by the script and the database); load average at the end: "
          f"{load_average()}; code: {git_state()}  ")
    print(f"Command: `{command}` (total {time.monotonic() - started:.0f} s)\n")
    print(markdown_table(results))
    for note in notes:
        print(f"\n{note}")
    for f in results:
        if not (f["count"] and f["enqueue"] == f["audience"] <= f["count"] and f["plain_enqueue"] == f["plain_audience"]):
            failed = True
            print(f"\n{f['backend']}: counts do not agree: {f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
