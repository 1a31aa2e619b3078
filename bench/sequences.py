"""Sequences and local-time newsletters benchmark: one step for 1,000,000 enrolments, one issue in 24 zones.

Run from the repository root:

    .venv/bin/python bench/sequences.py                 # 1,000,000 readers, SQLite and PostgreSQL
    .venv/bin/python bench/sequences.py --quick         # 100,000 readers
    .venv/bin/python bench/sequences.py --sqlite-only --readers 300000

(`python bench/sequences.py` with another interpreter re-runs itself under .venv/bin/python.)

Per backend (SQLite file in a temporary directory; PostgreSQL: a fresh database
bench_sequences_<random> at postgresql+psycopg://postgres@127.0.0.1:5432, dropped at the end):

1. Set-up, not the code under test: `mailer.db.migrate`, the default list, N contacts spread
   round-robin over 24 time zones (24 different UTC offsets) and their active subscriptions,
   each in one INSERT … SELECT from a generated series (a recursive CTE on SQLite,
   generate_series on PostgreSQL). A sequence "confirmed on the list" with 3 steps (at once;
   3 days later "weekdays 09:00-11:00"; 4 days after that), activated before the confirmations.
   `--pg-readers` runs PostgreSQL with another number of readers than SQLite.
2. Sequences, in a separate process (`--child`) so its peak RSS (VmHWM from /proc/self/status)
   is the materialising process's own: `enrol_triggered` (N enrolments, one INSERT … SELECT),
   `materialise_due` (step 1 for all N: N deliveries queued and N enrolments moved on), then
   `materialise_due` again a minute later (the worker's idle tick with N enrolments waiting for
   step 2). Targets: step 1 for 1,000,000 < 30 s on SQLite, peak RSS < 150 MB.
3. A newsletter to the same N readers at 09:00 in each reader's own zone, two days ahead:
   `schedule_in_reader_zones` (reads the audience's zones), then `start_due` at the first
   instant, which runs `enqueue_in_reader_zones`: one INSERT … SELECT whose due time is a
   CASE on each reader's zone (the statement is timed). For comparison, `enqueue_audience` of a second issue to the same
   readers (one INSERT … SELECT, no zones).

It ends with a Markdown table preceded by `nproc`, the load average, the commit and the command.
The database and the script share the machine's cores; other work on the machine slows every
figure (the load average is printed before and after).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BENCH_SECRET_KEY, ROOT, VENV_PYTHON, git_state, load_average, on_scratch_postgres,  # noqa: E402
                    use_project_python, verdict)

use_project_python()
import sqlalchemy as sa  # noqa: E402
from sqlalchemy.orm import sessionmaker  # noqa: E402
from mailer.campaigns import newsletters, sequences  # noqa: E402
from mailer.db import make_engine, migrate, session_scope, utcnow  # noqa: E402
from mailer.demo import ensure_default_list  # noqa: E402
from mailer.models import Contact, Delivery, MailingList, Newsletter, Subscription  # noqa: E402
from mailer.settings import load_settings  # noqa: E402

TARGET_STEP_S = 30.0
TARGET_RSS_MB = 150
# 24 zones with 24 different offsets from UTC (in winter and in summer).
ZONES = ("Pacific/Pago_Pago", "Pacific/Honolulu", "America/Anchorage", "America/Los_Angeles", "America/Denver",
         "America/Chicago", "America/New_York", "America/Halifax", "America/Sao_Paulo", "Atlantic/South_Georgia",
         "Atlantic/Azores", "Europe/London", "Europe/Berlin", "Europe/Athens", "Europe/Moscow", "Asia/Dubai",
         "Asia/Karachi", "Asia/Dhaka", "Asia/Bangkok", "Asia/Shanghai", "Asia/Tokyo", "Australia/Brisbane",
         "Pacific/Noumea", "Pacific/Auckland")
FALLBACK_ZONE = "Europe/Berlin"


def settings_for(database_url: str, workdir: Path):
    return load_settings({"database_url": database_url, "secret_key": BENCH_SECRET_KEY,
                          "instance_path": str(workdir / "instance"), "timezone": FALLBACK_ZONE})


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


# Set-up ---------------------------------------------------------------------------------------

def build_data(database_url: str, workdir: Path, readers: int, now: dt.datetime) -> dict:
    """Contacts, subscriptions and the activated 3-step sequence; returns the timings."""
    migrate(database_url)
    settings = settings_for(database_url, workdir)
    engine = make_engine(database_url)
    timings = {}
    try:
        factory = sessionmaker(bind=engine)
        with session_scope(factory) as session:
            list_id = ensure_default_list(session).id
        created = sa.bindparam("created", now - dt.timedelta(days=30), type_=Contact.created_at.type)
        confirmed = sa.bindparam("confirmed", now - dt.timedelta(minutes=30), type_=Subscription.confirmed_at.type)
        zone_case = "CASE (n % 24) " + " ".join(f"WHEN {i} THEN '{z}'" for i, z in enumerate(ZONES)) + " END"
        if database_url.startswith("sqlite"):
            series = ("WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < :last) "
                      "SELECT n, 'reader' || n || '@example.com' AS email, printf('%064x', n) AS hash, "
                      "'Reader' || n || ' Test' AS name FROM s")
        else:
            series = ("SELECT n, 'reader' || n || '@example.com' AS email, lpad(to_hex(n), 64, '0') AS hash, "
                      "'Reader' || n || ' Test' AS name FROM generate_series(0, :last) AS n")
        started = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(sa.text(
                f"INSERT INTO contacts (email, email_hash, name, name_key, timezone, created_at) "
                f"SELECT email, hash, name, lower(name), {zone_case}, :created FROM ({series}) AS g"
            ).bindparams(created), {"last": readers - 1})
            conn.execute(sa.text(
                "INSERT INTO subscriptions (contact_id, list_id, status, created_at, confirmed_at) "
                "SELECT id, :list_id, 'active', :confirmed, :confirmed FROM contacts"
            ).bindparams(confirmed), {"list_id": list_id})
        timings["data_s"] = time.perf_counter() - started
        if not database_url.startswith("sqlite"):
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
        with session_scope(factory) as session:
            sequence = sequences.create_sequence(session, name="Welcome series", trigger="confirmed",
                                                 list_id=list_id, trigger_list_id=list_id)
            sequences.add_step(session, sequence.id, subject="Welcome, {{ contact.first_name or 'there' }}",
                               body_md="Hello {{ contact.first_name or 'there' }},\n\nwelcome!\n")
            sequences.add_step(session, sequence.id, subject="Exercise 1: the desk stretch",
                               body_md="Stand up and stretch.\n", delay=(3, "days"), window="weekdays 09:00-11:00")
            sequences.add_step(session, sequence.id, subject="Exercise 2: walking after lunch",
                               body_md="Walk for ten minutes.\n", delay=(4, "days"), window="weekdays 09:00-11:00")
            sequences.activate(session, sequence.id, now=now - dt.timedelta(hours=1))
        timings["settings_zone"] = settings.timezone
    finally:
        engine.dispose()
    return timings


# The sequence run, in its own process ----------------------------------------------------------

def child(database_url: str, workdir: str, now_iso: str) -> None:
    """Enrol and materialise step 1 (what the worker's job does), print JSON figures."""
    from mailer import build
    now = dt.datetime.fromisoformat(now_iso)
    mailer = build(settings_for(database_url, Path(workdir)))
    result = {"start_rss_mb": vm_hwm_mb()}
    try:
        started = time.perf_counter()
        with session_scope(mailer.sessions) as session:
            result["enrolled"] = sequences.enrol_triggered(session, mailer.settings, now)
        result["enrol_s"] = time.perf_counter() - started
        result["enrol_rss_mb"] = vm_hwm_mb()
        started = time.perf_counter()
        with session_scope(mailer.sessions) as session:
            result["queued"] = sequences.materialise_due(session, mailer.settings, now)
        result["step_s"] = time.perf_counter() - started
        result["step_rss_mb"] = vm_hwm_mb()
        started = time.perf_counter()
        with session_scope(mailer.sessions) as session:
            result["idle_queued"] = sequences.run(session, mailer.settings, now + dt.timedelta(minutes=1))
        result["idle_s"] = time.perf_counter() - started
        result["peak_rss_mb"] = vm_hwm_mb()
    finally:
        mailer.engine.dispose()
    print("RESULT " + json.dumps(result), flush=True)


def run_child(database_url: str, workdir: Path, now: dt.datetime) -> dict:
    proc = subprocess.run([str(VENV_PYTHON), str(Path(__file__).resolve()), "--child", database_url,
                           str(workdir), now.isoformat()], cwd=ROOT, capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(line[len("RESULT "):])


# The local-time newsletter -------------------------------------------------------------------

class StatementTimer:
    """Wall time of each INSERT INTO deliveries while active (per-zone group statements)."""

    def __init__(self, engine: sa.Engine):
        self.engine, self.times = engine, []

    def before(self, conn, cursor, statement, parameters, context, executemany):
        conn.info["bench_started"] = time.perf_counter()

    def after(self, conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO DELIVERIES"):
            self.times.append(time.perf_counter() - conn.info.pop("bench_started"))

    def __enter__(self):
        sa.event.listen(self.engine, "before_cursor_execute", self.before)
        sa.event.listen(self.engine, "after_cursor_execute", self.after)
        return self

    def __exit__(self, *exc):
        sa.event.remove(self.engine, "before_cursor_execute", self.before)
        sa.event.remove(self.engine, "after_cursor_execute", self.after)


def local_time_newsletter(database_url: str, workdir: Path, now: dt.datetime) -> dict:
    engine = make_engine(database_url)
    factory = sessionmaker(bind=engine)
    result = {}
    try:
        with session_scope(factory) as session:
            lists = session.scalars(sa.select(MailingList)).all()
            ids = []
            for subject in ("In your own time zone", "Everyone at once"):
                issue = Newsletter(subject=subject, preheader="", body_md="Hello {{ contact.first_name }}\n",
                                   status="draft", lists=list(lists))
                session.add(issue)
                session.flush()
                ids.append(issue.id)
        local, plain = ids
        day = (now + dt.timedelta(days=2)).date()
        started = time.perf_counter()
        with session_scope(factory) as session:
            issue = newsletters.schedule_in_reader_zones(session, local, dt.datetime(day.year, day.month, day.day, 9),
                                                         fallback_zone=FALLBACK_ZONE, now=now)
            send_at = issue.send_at
        result["schedule_s"] = time.perf_counter() - started
        with StatementTimer(engine) as timer:
            started = time.perf_counter()
            with session_scope(factory) as session:
                result["started"] = newsletters.start_due(session, send_at)
            result["start_due_s"] = time.perf_counter() - started
        result["inserts"] = timer.times
        with session_scope(factory) as session:
            result["local_queued"], result["instants"] = session.execute(
                sa.select(sa.func.count(), sa.func.count(sa.distinct(Delivery.next_attempt_at))).where(
                    Delivery.kind == "newsletter", Delivery.ref_id == local)).one()
            # The plan of the audience's SELECT that the one INSERT reads.
            group = newsletters._audience_rows(session, local)
            compiled = group.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
            explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
            result["plan"] = [" ".join(str(c) for c in row[-1:])
                              for row in session.execute(sa.text(explain + str(compiled)))]
        with StatementTimer(engine) as timer:
            started = time.perf_counter()
            with session_scope(factory) as session:
                session.get(Newsletter, plain).status = "sending"
                result["plain_queued"] = newsletters.enqueue_audience(session, plain, now=now)
            result["plain_s"] = time.perf_counter() - started
    finally:
        engine.dispose()
    return result


# Per backend ---------------------------------------------------------------------------------

def measure(backend: str, database_url: str, workdir: Path, readers: int) -> dict:
    print(f"\n=== {backend}: {readers:,} readers ===", flush=True)
    now = utcnow().replace(microsecond=0)
    figures = {"backend": backend, "readers": readers}
    figures.update(build_data(database_url, workdir, readers, now))
    print(f"  set-up: {readers:,} contacts and subscriptions in {figures['data_s']:.1f} s", flush=True)
    figures["seq"] = run_child(database_url, workdir, now)
    s = figures["seq"]
    print(f"  enrol_triggered: {s['enrolled']:,} in {s['enrol_s']:.1f} s; materialise_due (step 1): "
          f"{s['queued']:,} queued in {s['step_s']:.1f} s; idle tick {s['idle_s']:.2f} s; "
          f"peak RSS {s['peak_rss_mb']:.0f} MB (after imports {s['start_rss_mb']:.0f} MB, after enrolling "
          f"{s['enrol_rss_mb']:.0f} MB, after step 1 {s['step_rss_mb']:.0f} MB)", flush=True)
    figures["nl"] = n = local_time_newsletter(database_url, workdir, now)
    print(f"  schedule_in_reader_zones: {n['schedule_s']:.2f} s; start_due: {n['local_queued']:,} queued at "
          f"{n['instants']} instants in {n['start_due_s']:.1f} s ({len(n['inserts'])} INSERT(s): "
          + ", ".join(f"{t:.2f}" for t in n["inserts"]) + " s)", flush=True)
    print(f"  enqueue_audience (no zones): {n['plain_queued']:,} in {n['plain_s']:.1f} s", flush=True)
    print("  plan of the audience's SELECT:\n    " + "\n    ".join(n["plan"]), flush=True)
    return figures


def measure_postgres(workdir: Path, readers: int) -> dict | str:
    return on_scratch_postgres("bench_sequences", lambda url: measure("PostgreSQL", url, workdir, readers))


def markdown_table(results: list[dict]) -> str:
    lines = ["| Backend | What | Result | Target | |", "|---|---|---:|---:|---|"]
    for f in results:
        b, n, s, nl = f["backend"], f["readers"], f["seq"], f["nl"]
        sqlite = b == "SQLite"
        lines += [
            f"| {b} | set-up: {n:,} contacts + subscriptions (INSERT … SELECT) | {f['data_s']:.1f} s | | |",
            f"| {b} | `enrol_triggered`: {s['enrolled']:,} enrolments | {s['enrol_s']:.1f} s | | |",
            f"| {b} | `materialise_due`, step 1 for {s['queued']:,} | {s['step_s']:.1f} s | "
            + (f"< {TARGET_STEP_S:.0f} s | {verdict(s['step_s'] < TARGET_STEP_S)} |" if sqlite else "| |"),
            f"| {b} | idle tick (`sequences.run`, {n:,} waiting for step 2) | {s['idle_s']:.2f} s | | |",
            f"| {b} | peak RSS of the materialising process (after imports) | {s['peak_rss_mb']:.0f} MB "
            f"({s['start_rss_mb']:.0f} MB) | < {TARGET_RSS_MB} MB | {verdict(s['peak_rss_mb'] < TARGET_RSS_MB)} |",
            f"| {b} | `schedule_in_reader_zones`, {n:,} readers in 24 zones | {nl['schedule_s']:.2f} s | | |",
            f"| {b} | `start_due` → `enqueue_in_reader_zones`: {nl['local_queued']:,} rows, {len(nl['inserts'])} "
            f"INSERT(s) (slowest {max(nl['inserts'], default=0):.2f} s) | {nl['start_due_s']:.1f} s | | |",
            f"| {b} | `enqueue_audience`, same readers, no zones (1 INSERT) | {nl['plain_s']:.1f} s | | |",
        ]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 readers instead of 1,000,000")
    parser.add_argument("--readers", type=int, help="subscribers enrolled and newsletter readers")
    parser.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--pg-readers", type=int, help="readers on PostgreSQL (default: --readers)")
    parser.add_argument("--workdir", help="where the SQLite database goes (default: a temporary directory)")
    args = parser.parse_args()
    readers = args.readers or (100_000 if args.quick else 1_000_000)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(sys.orig_argv)
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    print(f"Command: {command}\nnproc: {nproc}; load average before: {load_average()}; code: {git_state()}",
          flush=True)
    started = time.monotonic()
    results, notes, failed = [], [], False
    with tempfile.TemporaryDirectory(prefix="bench_sequences_", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        try:
            results.append(measure("SQLite", f"sqlite:///{workdir / 'bench.db'}", workdir, readers))
        except Exception:
            traceback.print_exc()
            failed = True
        if args.sqlite_only:
            notes.append("PostgreSQL skipped: --sqlite-only")
        else:
            try:
                pg_readers = args.pg_readers or readers
                if pg_readers != readers:
                    notes.append(f"PostgreSQL ran with {pg_readers:,} readers (--pg-readers)")
                outcome = measure_postgres(workdir, pg_readers)
                (results.append(outcome) if isinstance(outcome, dict) else notes.append(f"PostgreSQL skipped: {outcome}"))
            except Exception:
                traceback.print_exc()
                failed = True
    print(f"\n## Sequences and local-time newsletters\n\nnproc: {nproc} (shared by the script and the database); "
          f"load average at the end: {load_average()}; code: {git_state()}  ")
    print(f"Command: `{command}` (total {time.monotonic() - started:.0f} s)\n")
    print(markdown_table(results))
    for note in notes:
        print(f"\n{note}")
    for f in results:
        ok = f["seq"]["enrolled"] == f["readers"] == f["seq"]["queued"] == f["nl"]["local_queued"]
        failed |= not ok
        if not ok:
            print(f"\n{f['backend']}: counts differ from {f['readers']:,}: enrolled {f['seq']['enrolled']:,}, "
                  f"step 1 queued {f['seq']['queued']:,}, newsletter queued {f['nl']['local_queued']:,}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
