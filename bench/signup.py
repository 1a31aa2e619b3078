"""Signup throughput benchmark: POST /subscribe against GET /livez, on SQLite and PostgreSQL.

Run from the repository root, as root (it may install wrk with apt-get):

    .venv/bin/python bench/signup.py                 # both backends, 10 s per measured phase
    .venv/bin/python bench/signup.py --sqlite-only   # skip PostgreSQL
    .venv/bin/python bench/signup.py --postgres-only # skip SQLite
    .venv/bin/python bench/signup.py --duration 5 --connections 32
    .venv/bin/python bench/signup.py --ceiling       # also the most any storing route reaches

(`python bench/signup.py` with another interpreter re-runs itself under .venv/bin/python.)

For each backend the script:

1. makes a fresh database (a SQLite file in a temp dir; for PostgreSQL a database
   bench_signup_<random> on postgresql+psycopg://postgres@127.0.0.1:5432, dropped at the end;
   PostgreSQL is skipped with a message when the server is unreachable), migrates it and
   seeds the "newsletter" list;
2. starts `gunicorn -w 2 wsgi:app` on a free port (dev mailbox transport, rate limit off);
3. drives it with wrk (-t 2, -c N, --latency): GET /livez as the baseline, then POST /subscribe
   with a unique address per request, alternately, --runs times each (default 3); the run with
   the median rate of each route is reported;
4. sends POST /subscribe open-loop at a fixed 200 requests/s from a small Python load generator
   (latency counted from the moment each request was due, so queueing is not hidden);
5. fires 1,000 concurrent signups at once and checks in the database that every one answered
   2xx left a 'pending' subscription and a 'requested' consent event, and that gunicorn never
   logged "database is locked";
6. with --ceiling, starts another gunicorn serving bench/store_one_row.py (the same app plus a
   route that does nothing but store one row, the way a signup stores its own) and runs /livez
   and that route alternately like step 3: the ratio no route that writes to this database can
   beat on this machine, whatever else it does.

Each wrk phase also reports the CPU time (user + system) per answered request of gunicorn's
processes and, on PostgreSQL, of the server backends serving the benchmark's database: rates
move with whatever else runs on the machine, CPU per request much less.

Targets (reported, they do not change the exit code): subscribe/livez throughput ratio >= 0.5,
p99 at 200 req/s < 50 ms. Exit code 1 when a signup is lost, any 5xx or connection error
occurred, or "database is locked" appears in the gunicorn log; 0 otherwise.

The load generators run on the same machine as the server and the database, so the absolute
figures depend on `nproc` and on whatever else runs there (the load average before the run is
printed); the ratio to /livez is the figure to compare between machines. A whole run for both
backends takes about 6 minutes with the defaults.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

PG_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432"
WORKERS = 2
FIXED_RATE = 200
BURST_SIZE = 1000
TARGET_RATIO = 0.5
TARGET_P99_MS = 50.0
LOCKED = "database is locked"
PAUSE_SECONDS = 2  # between phases, so each one starts against an idle server

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_SECRET_KEY, ROOT, free_port, git_state, use_project_python  # noqa: E402

use_project_python()
import sqlalchemy as sa  # noqa: E402
from mailer import build  # noqa: E402
from mailer.db import make_engine, make_session_factory, migrate, session_scope  # noqa: E402
from mailer.settings import load_settings  # noqa: E402
from mailer.demo import ensure_default_list  # noqa: E402

# wrk script for POST /subscribe: one unique address per request, "<tag>-t<thread>-<counter>".
# done() prints one JSON line that signup.py reads back.
WRK_SUBSCRIBE_LUA = r"""
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
end

function init(args)
  tag = args[1]
  counter = 0
  codes = {}
end

function request()
  counter = counter + 1
  local body = string.format(
    "email=%s-t%d-%d%%40bench.example&name=Bench&consent=yes&consent_version=1&lists=newsletter",
    tag, tid, counter)
  return wrk.format("POST", "/subscribe", {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
"""

# Shared by both wrk runs: count answers by status code per thread, report as JSON.
WRK_REPORT_LUA = r"""
function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(all_threads) do
    for status, n in pairs(thread:get("codes")) do
      totals[tostring(status)] = (totals[tostring(status)] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(totals) do
    table.insert(parts, string.format('"%s": %d', status, n))
  end
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"non_2xx_3xx": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d, "codes": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, table.concat(parts, ", ")))
end
"""

# GET /livez needs no request() function; it only needs the thread list and counters.
WRK_THREADS_LUA = r"""
all_threads = {}
local setup_inner = setup
function setup(thread)
  if setup_inner then setup_inner(thread) end
  table.insert(all_threads, thread)
end
local init_inner = init
function init(args)
  if init_inner then init_inner(args) end
  codes = {}
end
"""


@dataclass
class LoadResult:
    """One measured phase: throughput, latency and answers by status code."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    codes: dict[str, int]
    errors: int = 0  # connection errors, timeouts: no HTTP answer at all
    # CPU (user + system) per answered request: gunicorn's processes, and on PostgreSQL the
    # server backends of the benchmark's database (None on SQLite, where it runs in gunicorn).
    app_cpu_ms: float | None = None
    db_cpu_ms: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def non_2xx(self) -> int:
        return sum(n for code, n in self.codes.items() if not code.startswith("2"))

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.codes.items() if code.startswith("5"))


@dataclass
class BurstResult:
    """The 1,000-at-once check and what the database holds afterwards."""

    codes: dict[str, int]
    no_answer: int
    accepted: int
    rows_found: int
    missing: list[str]
    locked_in_log: int
    tracebacks_in_log: int
    seconds: float
    worker_rate: float | None = None  # signups/s the worker turned into subscriptions and mail

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.codes.items() if code.startswith("5"))

    @property
    def ok(self) -> bool:
        return not self.missing and not self.server_errors and not self.no_answer and not self.locked_in_log


@dataclass
class BackendReport:
    name: str
    livez: LoadResult | None = None
    subscribe: LoadResult | None = None
    fixed: LoadResult | None = None
    burst: BurstResult | None = None
    skipped: str = ""
    runs: int = 1  # wrk runs of each route; livez and subscribe are the median ones
    # --ceiling: /livez and GET /bench/store-one-row (bench/store_one_row.py) on their own gunicorn.
    ceiling_livez: LoadResult | None = None
    ceiling: LoadResult | None = None
    ceiling_failed: bool = False

    @property
    def ceiling_ratio(self) -> float:
        return self.ceiling.rps / self.ceiling_livez.rps if self.ceiling and self.ceiling_livez.rps else 0.0

    @property
    def ratio(self) -> float:
        return self.subscribe.rps / self.livez.rps if self.livez and self.livez.rps else 0.0

    @property
    def failed(self) -> bool:
        if self.skipped:
            return False
        phases = [self.livez, self.subscribe, self.fixed] + [p for p in (self.ceiling_livez, self.ceiling) if p]
        return (self.burst is None or not self.burst.ok or self.ceiling_failed
                or any(p is None or p.server_errors or p.errors for p in phases))


# CPU accounting ------------------------------------------------------------------------
# Rates move with whatever else runs on the machine; CPU time per request does much less.

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc/PID/stat (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def postgres_backends(database_url: str) -> list[int]:
    """The server processes connected to this database (the gunicorn workers' pools); only
    when the server runs on this machine, as the benchmark's does."""
    if not database_url.startswith("postgresql"):
        return []
    engine = make_engine(database_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")))
    finally:
        engine.dispose()


class CpuMeter:
    """CPU used by gunicorn (master and workers) and by the database's backends during a phase."""

    def __init__(self, server: "Gunicorn", database_url: str):
        self.server, self.database_url = server, database_url
        self.app_pids = [server.process.pid, *children(server.process.pid)]
        self.db_pids = postgres_backends(database_url)
        self.app0 = sum(map(proc_cpu_seconds, self.app_pids))
        self.db0 = sum(map(proc_cpu_seconds, self.db_pids))

    def charge(self, result: "LoadResult") -> "LoadResult":
        """Put the CPU per answered request on `result` (call right after the phase)."""
        if result.requests:
            result.app_cpu_ms = (sum(map(proc_cpu_seconds, self.app_pids)) - self.app0) / result.requests * 1000
            if self.db_pids:
                result.db_cpu_ms = (sum(map(proc_cpu_seconds, self.db_pids)) - self.db0) / result.requests * 1000
        return result


# Setup -------------------------------------------------------------------------------

def ensure_wrk() -> str:
    """Path to wrk, installing the Debian package first if it is missing."""
    path = shutil.which("wrk")
    if path is None:
        print("wrk not found: installing it with apt-get (Debian package wrk) ...", flush=True)
        done = subprocess.run("apt-get update -qq && apt-get install -y -qq wrk", shell=True, text=True,
                              capture_output=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if done.returncode != 0:
            sys.exit(f"apt-get install wrk failed:\n{done.stdout}\n{done.stderr}")
        path = shutil.which("wrk")
        if path is None:
            sys.exit("wrk is still not on PATH after apt-get install")
    return path


def prepare_database(url: str) -> None:
    """Run the migrations and create the default "newsletter" list that /subscribe needs."""
    migrate(url)
    engine = make_engine(url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            ensure_default_list(session)
    finally:
        engine.dispose()


def postgres_admin_engine():
    """An AUTOCOMMIT engine on the `postgres` database, or None when the server is unreachable."""
    engine = sa.create_engine(f"{PG_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT",
                              connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        print(f"PostgreSQL at {PG_SERVER_URL} is unreachable, skipping it: {str(exc).splitlines()[0]}")
        return None
    return engine


class Gunicorn:
    """gunicorn -w N (sync workers) serving wsgi:app on a free port; output goes to a log file."""

    def __init__(self, database_url: str, workdir: Path, workers: int = WORKERS, app: str = "wsgi:app"):
        self.port = free_port()
        self.workers = workers
        name = app.partition(":")[0]
        self.log_path = workdir / f"gunicorn-{name}.log"
        self.instance = workdir / f"instance-{name}"
        self.instance.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}  # no SMTP URL, no stray settings
        env.update(MAILER_DATABASE_URL=database_url, MAILER_SECRET_KEY=BENCH_SECRET_KEY,
                   MAILER_INSTANCE_PATH=str(self.instance), MAILER_SIGNUP_RATE_LIMIT="100000000")
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{self.port}",
             *([] if app == "wsgi:app" else ["--pythonpath", str(Path(__file__).resolve().parent)]), app],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until GET /livez answers 200, then give the other workers a moment to boot."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log_text()}")
            try:
                if http_request(self.port, "GET", "/livez")[0] == 200:
                    time.sleep(0.5 * self.workers)
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not answer /livez within {timeout} s:\n{self.log_text()}")

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM (graceful shutdown), SIGKILL if it takes longer than 20 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


# Load ------------------------------------------------------------------------------------

def http_request(port: int, method: str, path: str, body: str | None = None, timeout: float = 60) -> tuple[int, bytes]:
    """One request on a fresh connection; returns (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def signup_body(address: str) -> str:
    """The form a browser would post for one signup to the newsletter."""
    return urllib.parse.urlencode({"email": address, "name": "Bench", "consent": "yes",
                                   "consent_version": "1", "lists": "newsletter"})


def run_wrk(wrk: str, url: str, script: str, args: argparse.Namespace, workdir: Path, *lua_args: str) -> LoadResult:
    """Run wrk with the given Lua script; read the JSON line that done() prints."""
    script_path = workdir / f"wrk-{uuid.uuid4().hex[:6]}.lua"
    script_path.write_text(script + WRK_THREADS_LUA + WRK_REPORT_LUA)
    cmd = [wrk, "-t", "2", "-c", str(args.connections), "-d", f"{args.duration}s", "--timeout", "10s",
           "--latency", "-s", str(script_path), url]
    if lua_args:
        cmd += ["--", *lua_args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"no summary from wrk:\n{out}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    return LoadResult(
        requests=data["requests"], seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000, codes=data["codes"],
        errors=data["connect"] + data["read"] + data["write"] + data["timeout"],
    )


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, round(pct / 100 * len(ordered) + 0.5))
    return ordered[min(rank, len(ordered)) - 1]


def fixed_rate_signups(port: int, rate: int, seconds: float, tag: str) -> LoadResult:
    """Open-loop load: request i is due at start + i/rate, whatever happened to earlier ones.
    Latency is measured from the due time, so time spent waiting for a free thread counts."""
    total = int(rate * seconds)
    latencies: list[float] = []
    codes: dict[str, int] = {}
    errors = 0
    lock = threading.Lock()

    def one(i: int, due: float) -> None:
        nonlocal errors
        try:
            status, _ = http_request(port, "POST", "/subscribe", signup_body(f"{tag}-{i}@bench.example"), timeout=30)
        except OSError:
            with lock:
                errors += 1
            return
        elapsed = time.perf_counter() - due
        with lock:
            latencies.append(elapsed)
            codes[str(status)] = codes.get(str(status), 0) + 1

    with ThreadPoolExecutor(max_workers=64) as pool:
        start = time.perf_counter() + 0.05
        for i in range(total):
            due = start + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            pool.submit(one, i, due)
    elapsed = time.perf_counter() - start
    return LoadResult(requests=len(latencies), seconds=elapsed, p50_ms=percentile(latencies, 50) * 1000,
                      p99_ms=percentile(latencies, 99) * 1000, codes=codes, errors=errors)


def burst_signups(port: int, count: int, tag: str) -> tuple[dict[str, int], int, list[str], float]:
    """`count` threads, each with its own address, released together by a Barrier.
    Returns (answers by status, requests with no answer, addresses answered 2xx, seconds)."""
    barrier = threading.Barrier(count + 1)
    statuses: list[int | None] = [None] * count
    addresses = [f"{tag}-{i}@bench.example" for i in range(count)]

    def one(i: int) -> None:
        body = signup_body(addresses[i])
        barrier.wait()
        try:
            statuses[i] = http_request(port, "POST", "/subscribe", body, timeout=120)[0]
        except OSError:
            statuses[i] = None

    threading.stack_size(512 * 1024)
    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    codes: dict[str, int] = {}
    for status in statuses:
        if status is not None:
            codes[str(status)] = codes.get(str(status), 0) + 1
    accepted = [a for a, s in zip(addresses, statuses) if s is not None and 200 <= s < 300]
    return codes, statuses.count(None), accepted, elapsed


def process_accepted_signups(database_url: str, workdir: Path) -> tuple[int, float]:
    """Do the worker's part: turn accepted signups into subscriptions, consent events and
    queued confirmations (what `python -m mailer worker` does every second)."""
    mailer = build(load_settings({"database_url": database_url, "secret_key": BENCH_SECRET_KEY,
                                  "instance_path": str(workdir / "worker-instance")}))
    started = time.perf_counter()
    try:
        count = mailer.process_signups()
    finally:
        mailer.engine.dispose()
    return count, time.perf_counter() - started


def rows_for(database_url: str, tag: str, workdir: Path) -> tuple[set[str], float | None]:
    """Addresses with this tag that, once the worker has processed the accepted signups,
    have a pending subscription and a 'requested' consent event; and the worker's rate
    (signups/s, None when it had at most one to do)."""
    count, seconds = process_accepted_signups(database_url, workdir)
    if count > 1:
        print(f"  worker processed {count} accepted signups in {seconds:.1f} s ({count / seconds:.0f}/s)", flush=True)
    engine = make_engine(database_url)
    query = sa.text("""
        SELECT c.email FROM contacts c
        WHERE c.email LIKE :pattern
          AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.contact_id = c.id AND s.status = 'pending')
          AND EXISTS (SELECT 1 FROM consent_events e WHERE e.contact_id = c.id AND e.action = 'requested')
    """)
    try:
        with engine.connect() as conn:
            return set(conn.scalars(query, {"pattern": f"{tag}-%"})), (count / seconds if count > 1 else None)
    finally:
        engine.dispose()


# One backend ------------------------------------------------------------------------------

def preflight(server: Gunicorn, database_url: str, run: str, workdir: Path) -> None:
    """One signup by hand: fail early, with the answer shown, if /subscribe does not work."""
    tag = f"pre-{run}"
    status, body = http_request(server.port, "POST", "/subscribe", signup_body(f"{tag}-0@bench.example"))
    if status != 200 or f"{tag}-0@bench.example" not in rows_for(database_url, tag, workdir)[0]:
        raise RuntimeError(f"preflight signup failed: HTTP {status}\n{body[:2000].decode(errors='replace')}\n"
                           f"{server.log_text()[-4000:]}")


def bench_backend(name: str, database_url: str, wrk: str, args: argparse.Namespace, workdir: Path) -> BackendReport:
    """All phases against one fresh database and one gunicorn."""
    report = BackendReport(name)
    run = uuid.uuid4().hex[:8]
    print(f"\n=== {name} ===", flush=True)
    prepare_database(database_url)
    server = Gunicorn(database_url, workdir, args.workers)
    try:
        server.wait_ready()
        preflight(server, database_url, run, workdir)
        print(f"gunicorn -w {args.workers} on {server.base_url}; wrk -t 2 -c {args.connections} -d {args.duration}s",
              flush=True)

        report.livez, report.subscribe = alternate_with_livez(
            server, database_url, wrk, args, workdir, "POST /subscribe", WRK_SUBSCRIBE_LUA, lambda i: (f"wrk-{run}-{i}",))
        report.runs = args.runs
        print(f"  medians of {args.runs}: /livez {report.livez.rps:.1f} req/s, /subscribe {report.subscribe.rps:.1f} "
              f"req/s; ratio subscribe/livez: {report.ratio:.2f} (target >= {TARGET_RATIO}: "
              f"{'met' if report.ratio >= TARGET_RATIO else 'MISSED'})", flush=True)

        meter = CpuMeter(server, database_url)
        report.fixed = meter.charge(fixed_rate_signups(server.port, FIXED_RATE, args.duration, f"rate-{run}"))
        print_load(f"POST /subscribe at {FIXED_RATE}/s (open loop)", report.fixed)
        print(f"  p99 at {FIXED_RATE}/s: {report.fixed.p99_ms:.1f} ms (target < {TARGET_P99_MS:.0f} ms: "
              f"{'met' if report.fixed.p99_ms < TARGET_P99_MS else 'MISSED'})", flush=True)

        time.sleep(PAUSE_SECONDS)
        tag = f"burst-{run}"
        codes, no_answer, accepted, seconds = burst_signups(server.port, BURST_SIZE, tag)
        found, worker_rate = rows_for(database_url, tag, workdir)
        log = server.log_text()
        report.burst = BurstResult(
            codes=codes, no_answer=no_answer, accepted=len(accepted), rows_found=len(found & set(accepted)),
            missing=sorted(set(accepted) - found), locked_in_log=log.count(LOCKED),
            tracebacks_in_log=log.count("Traceback"), seconds=seconds, worker_rate=worker_rate,
        )
        print_burst(report.burst)
    finally:
        server.stop()
    if args.ceiling:
        try:
            measure_ceiling(report, database_url, wrk, args, workdir)
        except Exception:  # keep the phases above
            print(f"{name}: the ceiling's phases failed:", file=sys.stderr)
            traceback.print_exc()
            report.ceiling_failed = True
    return report


def measure_ceiling(report: BackendReport, database_url: str, wrk: str, args: argparse.Namespace,
                    workdir: Path) -> None:
    """/livez against a route that only stores one row (bench/store_one_row.py), alternately
    like the main phases, on a gunicorn of their own: the most any route that writes to this
    database can reach next to /livez here, whatever it does besides."""
    from store_one_row import create_table

    engine = make_engine(database_url)
    try:
        create_table(engine)
    finally:
        engine.dispose()
    server = Gunicorn(database_url, workdir, args.workers, app="store_one_row:create()")
    try:
        server.wait_ready()
        status, body = http_request(server.port, "GET", "/bench/store-one-row")
        if status != 200:
            raise RuntimeError(f"GET /bench/store-one-row answered {status}: {body[:200]!r}\n{server.log_text()}")
        report.ceiling_livez, report.ceiling = alternate_with_livez(
            server, database_url, wrk, args, workdir, "GET /bench/store-one-row", prefix="ceiling: ")
        print(f"  ceiling, medians of {args.runs}: /livez {report.ceiling_livez.rps:.1f} req/s, one stored row "
              f"{report.ceiling.rps:.1f} req/s; ratio {report.ceiling_ratio:.2f}", flush=True)
    finally:
        server.stop()


def alternate_with_livez(server: Gunicorn, database_url: str, wrk: str, args: argparse.Namespace, workdir: Path,
                         route: str, script: str = "", lua_args=lambda i: (),
                         prefix: str = "") -> tuple[LoadResult, LoadResult]:
    """GET /livez and `route` ("METHOD /path", its requests made by the wrk `script`)
    alternately, `--runs` times each, each run charged with its CPU; the median run of
    each (a lone run of /livez moved between 2,400 and 5,000 req/s on a quiet machine)."""
    path = route.split()[1]
    livez, other = [], []
    for i in range(args.runs):
        livez.append(CpuMeter(server, database_url).charge(
            run_wrk(wrk, f"{server.base_url}/livez", "", args, workdir)))
        print_load(f"{prefix}GET /livez (wrk), run {i + 1}", livez[-1])
        time.sleep(PAUSE_SECONDS)
        # A new meter: the backends as they are now (the first requests opened them).
        other.append(CpuMeter(server, database_url).charge(
            run_wrk(wrk, f"{server.base_url}{path}", script, args, workdir, *lua_args(i))))
        print_load(f"{prefix}{route} (wrk), run {i + 1}", other[-1])
        time.sleep(PAUSE_SECONDS)
    return median_run(livez), median_run(other)


def median_run(results: list[LoadResult]) -> LoadResult:
    """The run with the median rate (of an odd number; the lower middle of an even one)."""
    return sorted(results, key=lambda r: r.rps)[(len(results) - 1) // 2]


def print_load(label: str, result: LoadResult) -> None:
    print(f"  {label}: {result.rps:.1f} req/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, "
          f"{result.requests} answers {format_codes(result.codes)}, non-2xx {result.non_2xx}, "
          f"no answer {result.errors}", flush=True)
    if result.app_cpu_ms is not None:
        print(f"    CPU per request: gunicorn {result.app_cpu_ms:.3f} ms"
              + (f", PostgreSQL backends {result.db_cpu_ms:.3f} ms" if result.db_cpu_ms is not None else ""),
              flush=True)


def print_burst(burst: BurstResult) -> None:
    print(f"  burst of {BURST_SIZE} concurrent signups in {burst.seconds:.1f} s:")
    print(f"    answers by status: {format_codes(burst.codes)}; no answer: {burst.no_answer}")
    print(f"    answered 2xx: {burst.accepted}; rows found (pending subscription + 'requested' consent event): "
          f"{burst.rows_found}; missing rows: {len(burst.missing)}"
          + (f" e.g. {burst.missing[:3]}" if burst.missing else ""))
    print(f"    \"{LOCKED}\" in gunicorn log: {burst.locked_in_log}; tracebacks in log: {burst.tracebacks_in_log}")
    print(f"    burst check: {'ok' if burst.ok else 'FAILED'}", flush=True)


def format_codes(codes: dict[str, int]) -> str:
    return "{" + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())) + "}"


# Whole run -----------------------------------------------------------------------------------

def run_sqlite(wrk: str, args: argparse.Namespace) -> BackendReport:
    if args.postgres_only:
        return BackendReport("SQLite", skipped="--postgres-only")
    with tempfile.TemporaryDirectory(prefix="bench_signup_") as tmp:
        return bench_backend("SQLite", f"sqlite:///{Path(tmp) / 'bench.db'}", wrk, args, Path(tmp))


def run_postgres(wrk: str, args: argparse.Namespace) -> BackendReport:
    """Create bench_signup_<random>, benchmark it, drop it (even after a failure)."""
    if args.sqlite_only:
        return BackendReport("PostgreSQL", skipped="--sqlite-only")
    admin = postgres_admin_engine()
    if admin is None:
        return BackendReport("PostgreSQL", skipped=f"server at {PG_SERVER_URL} unreachable")
    name = f"bench_signup_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            with tempfile.TemporaryDirectory(prefix="bench_signup_") as tmp:
                return bench_backend("PostgreSQL", f"{PG_SERVER_URL}/{name}", wrk, args, Path(tmp))
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def cpu_cell(result: LoadResult) -> str:
    if result.app_cpu_ms is None:
        return "–"
    if result.db_cpu_ms is None:
        return f"{result.app_cpu_ms:.2f}"
    return f"{result.app_cpu_ms:.2f} + {result.db_cpu_ms:.2f}"


def markdown_table(reports: list[BackendReport]) -> str:
    """The summary as a Markdown table for the README."""
    lines = [
        "| Backend | /livez req/s | /subscribe req/s | ratio (≥ 0.5) | /livez p50 / p99 ms "
        f"| /subscribe p50 / p99 ms | p99 at {FIXED_RATE}/s (< 50 ms) | non-2xx | burst {BURST_SIZE}: 2xx / lost / 5xx / locked "
        "| CPU ms per request, /livez / /subscribe (gunicorn + PostgreSQL) | worker signups/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        if r.skipped:
            lines.append(f"| {r.name} | skipped: {r.skipped} | | | | | | | | | |")
            continue
        if not (r.livez and r.subscribe and r.fixed and r.burst):
            lines.append(f"| {r.name} | did not finish | | | | | | | | | |")
            continue
        non_2xx = r.livez.non_2xx + r.subscribe.non_2xx + r.fixed.non_2xx + sum(
            n for c, n in r.burst.codes.items() if not c.startswith("2"))
        lines.append(
            f"| {r.name} | {r.livez.rps:.0f} | {r.subscribe.rps:.0f} | {r.ratio:.2f} "
            f"| {r.livez.p50_ms:.1f} / {r.livez.p99_ms:.1f} | {r.subscribe.p50_ms:.1f} / {r.subscribe.p99_ms:.1f} "
            f"| {r.fixed.p99_ms:.1f} | {non_2xx} "
            f"| {r.burst.accepted} / {len(r.burst.missing)} / {r.burst.server_errors} / {r.burst.locked_in_log} "
            f"| {cpu_cell(r.livez)} / {cpu_cell(r.subscribe)} "
            f"| {f'{r.burst.worker_rate:.0f}' if r.burst.worker_rate else '–'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured phase (default 10)")
    parser.add_argument("--connections", "-c", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--runs", type=int, default=3,
                        help="alternating wrk runs of each route, the median reported (default 3)")
    parser.add_argument("--workers", "-w", type=int, default=WORKERS,
                        help=f"gunicorn sync workers, the same for both routes (default {WORKERS})")
    parser.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--postgres-only", action="store_true", help="skip SQLite")
    parser.add_argument("--ceiling", action="store_true",
                        help="also measure /livez against a route that only stores one row (bench/store_one_row.py)")
    args = parser.parse_args()
    command = os.environ.get("BENCH_COMMAND") or shlex.join(sys.orig_argv)

    wrk = ensure_wrk()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())  # other work on the machine skews the figures
    started = time.monotonic()
    reports = []
    for runner, label in ((run_sqlite, "SQLite"), (run_postgres, "PostgreSQL")):
        try:
            reports.append(runner(wrk, args))
        except Exception:  # report the other backend anyway
            print(f"{label} run failed:", file=sys.stderr)
            traceback.print_exc()
            reports.append(BackendReport(label))
        if reports[-1].skipped:
            print(f"\n=== {label} === skipped: {reports[-1].skipped}")

    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    print(f"\n## Signup benchmark\n\nnproc: {nproc}; load average before the run: {load_before}; "
          f"commit {git_state()}  ")
    print(f"Command: `{command}` (wrk -t 2 -c {args.connections}, {args.duration} s per phase, "
          f"median of {args.runs} alternating runs per route, "
          f"gunicorn -w {args.workers} sync, total {time.monotonic() - started:.0f} s)\n")
    print(markdown_table(reports))
    for r in reports:
        if r.ceiling:
            print(f"\nCeiling on {r.name}: a route that only stores one row, {r.ceiling.rps:.0f} req/s against "
                  f"{r.ceiling_livez.rps:.0f} for /livez, ratio {r.ceiling_ratio:.2f}; CPU ms per request "
                  f"{cpu_cell(r.ceiling_livez)} / {cpu_cell(r.ceiling)}")
    failed = [r.name for r in reports if r.failed or (not r.skipped and r.burst is None)]
    print(f"\nResult: {'FAILED (' + ', '.join(failed) + ')' if failed else 'ok: no lost signups, no 5xx'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
