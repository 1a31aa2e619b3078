"""Delivery benchmark: newsletter throughput against Postfix's smtp-sink, worker memory, audience materialisation.

Run from the repository root, as root (it may install Debian's postfix package for smtp-sink/smtp-source):

    .venv/bin/python bench/delivery.py            # 100,000 recipients, 1,000,000 for memory: about 6 min
    .venv/bin/python bench/delivery.py --quick    # 10,000 recipients, 100,000 for memory: about 1 min
    .venv/bin/python bench/delivery.py --only memory --sqlite-only   # phases: throughput, profile, memory

(`python bench/delivery.py` with another interpreter re-runs itself under .venv/bin/python.)

What it measures:

1. Throughput. smtp-sink (Postfix's test server that accepts and discards mail) listens on a
   free port on 127.0.0.1.
   - The floor: smtp-source with as many parallel sessions as the worker has SMTP connections
     (MAILER_SMTP_CONNECTIONS, default 4), connections kept open (-d, as the worker does), and a
     payload of the same size as one of our messages, sending as many messages as we do; best
     of 3 runs.
   - Ours: a personalised newsletter (Markdown long enough that the HTML part is ~20 KB,
     {{ contact.first_name }} in subject and body) to N active subscribers (spread over a few
     recipient domains, so the per-domain cap does not leave connections idle):
     (a) SQLite, one `python -m mailer worker --drain` process;
     (b) PostgreSQL (fresh database bench_delivery_<random>, dropped at the end), two worker
         processes started together, sharing the floor's sessions (MAILER_SMTP_CONNECTIONS
         halved for each).
     Messages/s, on both sides, is counted by smtp-sink as the messages arrive (its counter
     polled every 10 ms: from the first message seen to the last), so neither side's start-up
     is in it; best of 3 runs on both sides (each of ours on a fresh database); the ratio to
     smtp-source's rate is reported (target >= 0.6). Afterwards the deliveries table must hold exactly N rows,
     all 'sent', and smtp-sink must have received N messages.
   - What limits us: CPU time of the worker(s) (per thread: main vs SMTP pool), smtp-sink and
     PostgreSQL and the machine's busy cores during each run; the time one claim of a batch
     (outbox.claim_due, rolled back) takes with the queue as it is, and the plan of its SELECT;
     a cProfile of one worker (main thread: claim, render, record) and, when py-spy is
     installed in .venv (`pip install py-spy`, not a project requirement), a py-spy sample of
     all its threads.
2. Peak RSS of the worker process (its VmHWM, polled from /proc) with 10,000 and with
   1,000,000 queued recipients on SQLite (target < 150 MB, not growing with the list). The large
   run is time-bounded: the worker gets SIGTERM after --bounded-seconds (it finishes the messages
   in flight, gives back its claims and exits); messages sent in that time are reported.
3. Materialisation: `enqueue_audience` for a newsletter whose list has 1,000,000 active
   subscribers on SQLite (target < 30 s). The same database then serves the bounded RSS run.

The worker, smtp-sink and the database share the machine (`nproc` is printed; the project's
machine has 2 cores), so the worker never has a core to itself; compare the ratio to smtp-source.
Exit code 1 when a run lost, duplicated or failed a delivery (the deliveries table and smtp-sink's
count are checked after every worker run), 0 otherwise; the performance targets are reported
(met / MISSED) but do not change the exit code. Run it on a checkout nobody is editing: the
worker processes import mailer/ afresh, so a model changed mid-run breaks them.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import pstats
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

PG_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432"
SECRET_KEY = "bench-delivery-secret-key-not-for-production"
HTML_TARGET_BYTES = 20_000  # the HTML part of the newsletter, decoded
DOMAINS = ("example.com", "example.net", "example.org", "example.edu")
TARGET_RATIO = 0.6
TARGET_RSS_MB = 150
TARGET_MATERIALISE_S = 30.0
PG_WORKERS = 2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, VENV_PYTHON, free_port, git_state, load_average, use_project_python, verdict  # noqa: E402

use_project_python()
import sqlalchemy as sa  # noqa: E402
from mailer import build  # noqa: E402
from mailer.campaigns import newsletters  # noqa: E402
from mailer.db import make_engine, migrate, session_scope, utcnow  # noqa: E402
from mailer.demo import ensure_default_list  # noqa: E402
from mailer.settings import load_settings  # noqa: E402
from mailer.delivery.transports import MemoryTransport  # noqa: E402
from tests.audience import make_audience, make_newsletter  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


# The newsletter ------------------------------------------------------------------------------

TOPICS = ("Posture at the desk", "Walking after lunch", "Stretching before bed", "Lifting with your legs",
          "Sleep and your spine", "Core strength without a gym", "Driving without back ache", "Gardening season")
SUBJECT = "Spine Health monthly for {{ contact.first_name }}: keep your back happy"


def newsletter_body(sections: int) -> str:
    """A Markdown issue of `sections` short pieces, personalised in several places."""
    parts = ["Hello {{ contact.first_name }},", "",
             f"This month: **{sections} short pieces** on keeping your back happy, and the date of our next "
             "free webinar.", ""]
    for i in range(sections):
        topic = TOPICS[i % len(TOPICS)]
        slug = topic.lower().replace(" ", "-")
        parts += [
            f"## {i + 1}. {topic}", "",
            "{{ contact.first_name }}, most of the back pain we see in the clinic starts with small habits "
            "repeated thousands of times. Here is what our physiotherapists suggest, in plain words, with no "
            "equipment needed. Try it for two weeks and notice the difference at the end of the day.", "",
            "- Stand up and move for two minutes every half hour.",
            "- Keep your screen at eye level and your feet flat on the floor.",
            "- *Breathe out* slowly as you stretch; never bounce.", "",
            f"[Read the full article on our blog](https://clinic.example/blog/{i + 1}-{slug})", "",
        ]
    parts += ["See you soon,", "", "The team at the clinic"]
    return "\n".join(parts)


@dataclasses.dataclass
class Sample:
    body: str
    sections: int
    message: bytes
    html_bytes: int
    text_bytes: int


def size_newsletter(workdir: Path) -> Sample:
    """Grow the issue until its HTML part is ~20 KB: each try is sent for real by the worker's own
    code (one subscriber, in-memory transport), so the size is that of the messages we benchmark."""
    from email import message_from_bytes, policy

    url = f"sqlite:///{workdir / 'probe.db'}"
    migrate(url)
    transport = MemoryTransport()
    mailer = build(worker_settings(url, workdir), transport=transport)
    try:
        with session_scope(mailer.sessions) as session:
            ensure_default_list(session)
        make_audience(mailer, 1, domains=DOMAINS)
        sections = 16
        while True:
            body = newsletter_body(sections)
            make_newsletter(mailer, subject=SUBJECT, body=body)
            mailer.drain()
            data = transport.messages[-1][2]
            message = message_from_bytes(data, policy=policy.default)
            html = message.get_body(("html",)).get_content().encode()
            text = message.get_body(("plain",)).get_content().encode()
            if len(html) >= HTML_TARGET_BYTES or sections >= 200:
                if b"Reader0" not in data:
                    raise RuntimeError("the probe message is not personalised (no first name in it)")
                return Sample(body, sections, data, len(html), len(text))
            sections += max(1, int(sections * (HTML_TARGET_BYTES / len(html) - 1)))
    finally:
        mailer.engine.dispose()


def worker_settings(database_url: str, workdir: Path, smtp_url: str = ""):
    return load_settings({"database_url": database_url, "secret_key": SECRET_KEY, "smtp_url": smtp_url,
                          "instance_path": str(workdir / "instance")})


# Postfix's smtp-sink and smtp-source --------------------------------------------------------

def postfix_tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def ensure_postfix_tools() -> None:
    """Install Debian's postfix for smtp-sink/smtp-source, and leave no postfix daemon running."""
    if Path(postfix_tool("smtp-sink")).exists() and Path(postfix_tool("smtp-source")).exists():
        return
    print("smtp-sink missing: installing Debian's postfix package ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "postfix"]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    if subprocess.run(["postfix", "status"], capture_output=True).returncode == 0:
        print("the package started the postfix daemon: stopping it", flush=True)
        subprocess.run(["postfix", "stop"], capture_output=True)
    if not Path(postfix_tool("smtp-sink")).exists():
        raise RuntimeError("smtp-sink still missing after installing postfix")


class Sink:
    """smtp-sink on a free port, counting messages (-c) into a file."""

    def __init__(self, workdir: Path, label: str):
        self.port = free_port()
        self.out_path = workdir / f"sink-{label}.out"
        self.command = [postfix_tool("smtp-sink"), "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "256"]
        self.out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(self.command, stdout=self.out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"smtp-sink did not start: {self.out_path.read_bytes()[-500:]!r}")
                time.sleep(0.05)
        self.cpu_start = proc_cpu_seconds(self.proc.pid)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def messages(self) -> int | None:
        """Messages received so far: the last `mesg=N` counter smtp-sink wrote."""
        self.out.flush()
        with open(self.out_path, "rb") as f:
            f.seek(max(0, os.path.getsize(self.out_path) - 400))
            found = re.findall(rb"mesg=(\d+)", f.read())
        return int(found[-1]) if found else 0

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid) - self.cpu_start

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


class SinkClock:
    """When the sink's messages arrived: smtp-sink's counter polled every 10 ms by a thread.
    A rate is the messages that arrived after the first one seen, over the time from then
    to the last: neither sender's start-up (the worker's imports, connecting) is in it, and
    both sides are timed the same way, by the same sink."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.base = sink.messages()
        self.first: tuple[float, int] | None = None  # (when, count) of the first message seen
        self.last: tuple[float, int] | None = None  # of the last change seen
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        seen = self.base
        while not self.done.is_set():
            count = self.sink.messages()
            if count is not None and count != seen:
                now = time.perf_counter()
                if self.first is None:
                    self.first = (now, count)
                self.last, seen = (now, count), count
            time.sleep(0.01)

    def stop(self) -> "SinkClock":
        time.sleep(0.05)  # the counter's last update
        self.done.set()
        self.thread.join()
        return self

    @property
    def seconds(self) -> float:
        return self.last[0] - self.first[0] if self.first and self.last else 0.0

    @property
    def rate(self) -> float:
        return (self.last[1] - self.first[1]) / self.seconds if self.seconds else 0.0


@dataclasses.dataclass
class FloorResult:
    command: str
    messages: int
    rate: float  # the fastest of the runs, as the sink saw it (SinkClock): what the machine can do at best
    received: int | None  # by smtp-sink, over all runs
    all_rates: list[float] = dataclasses.field(default_factory=list)


FLOOR_RUNS = 3


def smtp_source_floor(workdir: Path, sessions: int, count: int, size: int) -> FloorResult:
    """smtp-source FLOOR_RUNS times against one smtp-sink; the fastest run counts (other load on the
    shared machine only ever slows it down, and a higher floor makes our ratio harder, not easier)."""
    sink = Sink(workdir, "floor")
    try:
        cmd = [postfix_tool("smtp-source"), "-s", str(sessions), "-d", "-m", str(count), "-l", str(size),
               "-f", "newsletter@example.com", "-t", "reader@example.net", f"127.0.0.1:{sink.port}"]
        rates = []
        for _ in range(FLOOR_RUNS):
            clock = SinkClock(sink)
            subprocess.run(cmd, check=True, capture_output=True)
            rates.append(clock.stop().rate)
        time.sleep(0.3)
        return FloorResult(shlex.join(cmd).replace(str(sink.port), "PORT"), count, max(rates), sink.messages(), rates)
    finally:
        sink.stop()


# CPU accounting -----------------------------------------------------------------------------

def proc_cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of one process (+ its reaped children's), from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / CLK_TCK


def postgres_cpu_seconds() -> float:
    """All local postgres processes, including exited backends (counted in the postmaster's children)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += proc_cpu_seconds(int(entry.name), children=True)
            except OSError:
                continue
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


class CpuWindow:
    """Machine busy cores and postgres CPU between start and stop."""

    def __init__(self, postgres: bool = False):
        self.postgres = postgres
        self.busy0, self.total0 = machine_ticks()
        self.pg0 = postgres_cpu_seconds() if postgres else 0.0
        self.started = time.perf_counter()

    def stop(self) -> None:
        busy, total = machine_ticks()
        self.seconds = time.perf_counter() - self.started
        self.busy_cores = (busy - self.busy0) / max(total - self.total0, 1) * (os.cpu_count() or 1)
        self.pg_seconds = (postgres_cpu_seconds() - self.pg0) if self.postgres else None


# Worker processes ---------------------------------------------------------------------------

WORKER_COMMAND = [str(VENV_PYTHON), "-m", "mailer", "worker", "--drain"]


@dataclasses.dataclass
class WorkerRun:
    pid: int
    seconds: float
    cpu_seconds: float  # user + system, from wait4()
    sys_seconds: float  # the system (kernel) part of it
    max_rss_mb: float  # the highest VmHWM read from /proc/PID/status while it ran
    returncode: int
    stdout: str
    stderr: str
    rss_samples: list[tuple[float, float]]  # (seconds since start, VmRSS MB)
    main_thread_cpu: float = 0.0  # last reading of /proc/PID/task/PID/stat
    other_threads_cpu: float = 0.0  # the SMTP pool threads (the worker starts no others)
    terminated: bool = False

    @property
    def reported(self) -> dict[str, int]:
        found = re.search(r"sent (\d+), deferred (\d+), failed (\d+), skipped (\d+), released (\d+)", self.stdout)
        names = ("sent", "deferred", "failed", "skipped", "released")
        return dict(zip(names, map(int, found.groups()))) if found else {}


def worker_env(database_url: str, smtp_url: str, workdir: Path) -> dict[str, str]:
    return dict(os.environ, MAILER_DATABASE_URL=database_url, MAILER_SMTP_URL=smtp_url,
                MAILER_SECRET_KEY=SECRET_KEY, MAILER_INSTANCE_PATH=str(workdir / "instance"),
                PYTHONUNBUFFERED="1")


def memory_status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM (peak RSS), RssAnon... of a live process, in MB."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in lines
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:", "RssShmem:"))}


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a live process."""
    result = {}
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return result
    for tid in tids:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rpartition(")")[2].split()
            result[tid] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        except OSError:
            continue
    return result


def run_workers(env: dict[str, str], workdir: Path, label: str, count: int = 1, command=None,
                stop_after: float | None = None, sample_every: float = 5.0) -> list[WorkerRun]:
    """Start `count` workers together; wait for all (SIGTERM each after `stop_after` seconds).
    CPU comes from wait4(). Peak RSS is the process's own VmHWM, polled every 50 ms: wait4's
    ru_maxrss would also count the benchmark's own memory, which the child shares between
    fork and exec. Per-thread CPU is polled every 250 ms (threads end just before the process)."""
    command = command or WORKER_COMMAND
    procs = []
    for i in range(count):
        out, err = workdir / f"{label}-{i}.out", workdir / f"{label}-{i}.err"
        procs.append((subprocess.Popen(command, cwd=ROOT, env=env, stdout=open(out, "wb"), stderr=open(err, "wb")),
                      out, err, time.perf_counter()))
    results: dict[int, WorkerRun] = {}
    samples: dict[int, list] = {p.pid: [] for p, *_ in procs}
    peak: dict[int, float] = {p.pid: 0.0 for p, *_ in procs}
    threads: dict[int, dict[int, float]] = {p.pid: {} for p, *_ in procs}
    last_sample: dict[int, float] = {p.pid: float("-inf") for p, *_ in procs}
    last_threads: dict[int, float] = {p.pid: float("-inf") for p, *_ in procs}
    terminated: set[int] = set()
    while len(results) < len(procs):
        for proc, out, err, started in procs:
            if proc.pid in results:
                continue
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            now = time.perf_counter()
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                cpu = usage.ru_utime + usage.ru_stime
                main = threads[pid].get(pid, 0.0)
                others = sum(v for tid, v in threads[pid].items() if tid != pid)
                results[pid] = WorkerRun(
                    pid=pid, seconds=now - started, cpu_seconds=cpu, sys_seconds=usage.ru_stime,
                    max_rss_mb=peak[pid],
                    returncode=proc.returncode, stdout=out.read_text(errors="replace"),
                    stderr=err.read_text(errors="replace"), rss_samples=samples[pid],
                    main_thread_cpu=main, other_threads_cpu=others, terminated=pid in terminated)
                continue
            memory = memory_status(proc.pid)
            if memory.get("VmHWM"):
                peak[proc.pid] = max(peak[proc.pid], memory["VmHWM"])
            if memory.get("VmRSS", 0) > 1 and now - last_sample[proc.pid] >= sample_every:
                samples[proc.pid].append((now - started, memory["VmRSS"]))
                last_sample[proc.pid] = now
            if now - last_threads[proc.pid] >= 0.25:
                threads[proc.pid].update(thread_cpu(proc.pid))
                last_threads[proc.pid] = now
            if stop_after is not None and now - started >= stop_after and proc.pid not in terminated:
                proc.send_signal(signal.SIGTERM)
                terminated.add(proc.pid)
        time.sleep(0.05)
    return [results[p.pid] for p, *_ in procs]


def print_worker(run: WorkerRun, indent: str = "    ") -> None:
    last_progress = [ln for ln in run.stderr.splitlines() if ln.startswith("progress:")][-1:]
    print(f"{indent}pid {run.pid}: exit {run.returncode}{' (after SIGTERM)' if run.terminated else ''}, "
          f"{run.seconds:.1f} s wall, {run.cpu_seconds:.1f} s CPU ({run.sys_seconds:.1f} s of it in the kernel; "
          f"{run.cpu_seconds / run.seconds:.0%} of one core), "
          f"peak RSS {run.max_rss_mb:.1f} MB", flush=True)
    if run.main_thread_cpu:
        print(f"{indent}  CPU by thread: main {run.main_thread_cpu:.1f} s (claim, render, record), SMTP pool threads "
              f"{run.other_threads_cpu:.1f} s (sendall/replies), of {run.cpu_seconds:.1f} s", flush=True)
    print(f"{indent}  stdout: {run.stdout.strip() or '(nothing)'}")
    if last_progress:
        print(f"{indent}  last progress line: {last_progress[0]}")
    errors = [ln for ln in run.stderr.splitlines() if "Traceback" in ln or " ERROR " in ln]
    if errors or run.returncode not in (0, -signal.SIGTERM):
        print(f"{indent}  stderr tail:\n" + "\n".join(run.stderr.splitlines()[-20:]))


# Databases ----------------------------------------------------------------------------------

def deliveries_by_status(database_url: str) -> dict[str, int]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT status, count(*) FROM deliveries GROUP BY status")).all())
    finally:
        engine.dispose()


@dataclasses.dataclass
class Prepared:
    audience_seconds: float
    enqueue_seconds: float
    queued: int


def prepare(database_url: str, workdir: Path, recipients: int, body: str, *, enqueue: bool = True,
            label: str = "") -> Prepared:
    """Migrate, default list, `recipients` active subscribers, the newsletter (queued when enqueue)."""
    migrate(database_url)
    mailer = build(worker_settings(database_url, workdir))
    try:
        with session_scope(mailer.sessions) as session:
            ensure_default_list(session)
        started = time.perf_counter()
        make_audience(mailer, recipients, domains=DOMAINS)
        audience_seconds = time.perf_counter() - started
        print(f"  {label}make_audience({recipients:,}): {audience_seconds:.1f} s "
              f"({recipients / audience_seconds:,.0f} contacts/s)", flush=True)
        started = time.perf_counter()
        make_newsletter(mailer, subject=SUBJECT, body=body, enqueue=enqueue)
        enqueue_seconds = time.perf_counter() - started
    finally:
        mailer.engine.dispose()
    queued = deliveries_by_status(database_url).get("queued", 0)
    if enqueue:
        print(f"  {label}make_newsletter + enqueue_audience: {enqueue_seconds:.1f} s, {queued:,} queued", flush=True)
        print_claim_cost(database_url, workdir)
    return Prepared(audience_seconds, enqueue_seconds, queued)


def print_claim_cost(database_url: str, workdir: Path) -> None:
    try:
        print(f"  {claim_cost(database_url, workdir)}", flush=True)
    except Exception as exc:  # the probe must not stop the benchmark
        print(f"  claim probe failed: {exc!r}", flush=True)


def claim_cost(database_url: str, workdir: Path, repeat: int = 3) -> str:
    """How long the worker's claim of one batch (outbox.claim_due) takes with the queue as it is,
    rolled back each time, and the plan of its SELECT: this is per batch, whatever the batch holds."""
    from mailer.delivery import outbox

    settings = worker_settings(database_url, workdir)
    mailer = build(settings)
    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("SELECT") and "deliveries" in statement:
            statements.append((statement, parameters))

    sa.event.listen(mailer.engine, "before_cursor_execute", capture)
    timings = []
    try:
        for _ in range(repeat):
            session = mailer.sessions()
            try:
                session.begin()
                started = time.perf_counter()
                ids = outbox.claim_due(session, worker_id="bench-probe", now=utcnow(), limit=settings.send_batch_size,
                                       lease_seconds=settings.lease_seconds, message_domain=settings.from_domain)
                timings.append(time.perf_counter() - started)
                session.rollback()
            finally:
                session.close()
        sa.event.remove(mailer.engine, "before_cursor_execute", capture)
        plan = ""
        if statements:
            statement, parameters = statements[0]
            with mailer.engine.connect() as conn:
                if mailer.engine.dialect.name == "sqlite":
                    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
                    plan = "; ".join(row[-1] for row in rows)
                else:
                    rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters).all()
                    plan = "; ".join(row[0].strip().lstrip("-> ").split("  (")[0] for row in rows
                                     if not row[0].strip().startswith(("Filter", "Index Cond", "Recheck", "Sort Key")))
                conn.rollback()
    finally:
        mailer.engine.dispose()
    best = sorted(timings)[len(timings) // 2]
    return (f"claim of one batch ({len(ids)} rows) with the queue as it is: {best * 1000:.1f} ms "
            f"(median of {repeat}; {best * 1000 / max(len(ids), 1):.2f} ms per message); plan of its SELECT: {plan}")


def postgres_admin():
    engine = sa.create_engine(f"{PG_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return engine
    except Exception:
        engine.dispose()
        return None


# Phase 1: throughput ------------------------------------------------------------------------

@dataclasses.dataclass
class ThroughputResult:
    backend: str
    workers: int
    recipients: int
    seconds: float = 0.0
    runs: list[WorkerRun] = dataclasses.field(default_factory=list)
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    sink_received: int | None = None
    sink_cpu: float = 0.0
    busy_cores: float = 0.0
    other_cores: float = 0.0
    pg_cpu: float | None = None
    skipped: str = ""
    error: str = ""

    sink_rate: float = 0.0  # as the sink saw the messages arrive (SinkClock): start-up excluded
    all_rates: list[float] = dataclasses.field(default_factory=list)  # of every run (the best is reported)

    @property
    def rate(self) -> float:
        return self.sink_rate

    @property
    def ok(self) -> bool:
        return (not self.error and self.statuses == {"sent": self.recipients}
                and self.sink_received in (None, self.recipients))

    @property
    def check(self) -> str:
        if self.skipped:
            return f"skipped: {self.skipped}"
        if self.error:
            return f"error: {self.error}"
        return (f"{'ok' if self.ok else 'FAILED'}: deliveries {format_statuses(self.statuses)}, "
                f"smtp-sink received {format_count(self.sink_received)}")


def format_count(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def format_statuses(statuses: dict[str, int]) -> str:
    return "{" + ", ".join(f"{k}: {v:,}" for k, v in sorted(statuses.items())) + "}"


def measure_throughput(backend: str, database_url: str, workdir: Path, recipients: int, body: str,
                       workers: int) -> ThroughputResult:
    result = ThroughputResult(backend, workers, recipients)
    print(f"\n=== Throughput: {backend}, {workers} worker process{'es' if workers > 1 else ''}, "
          f"{recipients:,} recipients ===", flush=True)
    prepare(database_url, workdir, recipients, body)
    sink = Sink(workdir, backend.lower())
    try:
        env = worker_env(database_url, sink.url, workdir)
        if workers > 1:  # the workers share the floor's sessions between them
            sessions = int(env.get("MAILER_SMTP_CONNECTIONS") or load_settings({}).smtp_connections)
            env["MAILER_SMTP_CONNECTIONS"] = str(max(1, sessions // workers))
            print(f"  {workers} workers with MAILER_SMTP_CONNECTIONS={env['MAILER_SMTP_CONNECTIONS']} each "
                  f"({sessions} sessions in all, as the floor)", flush=True)
        print(f"  load average before: {load_average()}", flush=True)
        window = CpuWindow(postgres=backend == "PostgreSQL")
        clock = SinkClock(sink)
        result.runs = run_workers(env, workdir, f"throughput-{backend.lower()}", count=workers)
        window.stop()
        result.sink_rate = clock.stop().rate
        result.seconds = window.seconds
        result.busy_cores, result.pg_cpu = window.busy_cores, window.pg_seconds
        time.sleep(0.3)
        result.sink_received = sink.messages()
        result.sink_cpu = sink.cpu_seconds()
    finally:
        sink.stop()
    result.statuses = deliveries_by_status(database_url)
    for run in result.runs:
        print_worker(run)
    sent = result.statuses.get("sent", 0)
    print(f"  wall time (first start to last exit): {result.seconds:.1f} s -> {sent / result.seconds:,.0f} messages/s "
          f"with start-up; as smtp-sink saw them arrive: {result.rate:,.0f} messages/s", flush=True)
    worker_cpu = sum(r.cpu_seconds for r in result.runs)
    print(f"  CPU during the run: worker(s) {worker_cpu:.1f} s, smtp-sink {result.sink_cpu:.1f} s"
          + (f", postgres {result.pg_cpu:.1f} s" if result.pg_cpu is not None else "")
          + f"; machine busy {result.busy_cores:.2f} of {os.cpu_count()} cores", flush=True)
    ours = worker_cpu + result.sink_cpu + (result.pg_cpu or 0.0)
    result.other_cores = max(result.busy_cores * result.seconds - ours, 0.0) / result.seconds
    print(f"  everything else on the machine (this script's polling, other users' processes): "
          f"{result.other_cores:.2f} cores on average", flush=True)
    print(f"  worker CPU per message: {worker_cpu / max(recipients, 1) * 1000:.2f} ms", flush=True)
    print(f"  check: {result.check}", flush=True)
    return result


def throughput_sqlite(workdir: Path, recipients: int, body: str, run: int = 0) -> ThroughputResult:
    return measure_throughput("SQLite", f"sqlite:///{workdir / f'throughput-{run}.db'}", workdir, recipients, body, 1)


def throughput_postgres(workdir: Path, recipients: int, body: str, skip: bool, run: int = 0) -> ThroughputResult:
    if skip:
        return ThroughputResult("PostgreSQL", PG_WORKERS, recipients, skipped="--sqlite-only")
    admin = postgres_admin()
    if admin is None:
        return ThroughputResult("PostgreSQL", PG_WORKERS, recipients, skipped=f"{PG_SERVER_URL} unreachable")
    name = f"bench_delivery_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            return measure_throughput("PostgreSQL", f"{PG_SERVER_URL}/{name}", workdir, recipients, body, PG_WORKERS)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            print(f"  dropped database {name}", flush=True)
    finally:
        admin.dispose()


# Profile ------------------------------------------------------------------------------------

@dataclasses.dataclass
class ProfileResult:
    messages: int
    cprofile_lines: list[str]
    pyspy_lines: list[str]


def profile_worker(workdir: Path, messages: int, body: str, top: int) -> ProfileResult:
    """One worker on SQLite, under cProfile (main thread only) and then py-spy (all threads)."""
    print(f"\n=== Profile: one worker, {messages:,} messages (SQLite) ===", flush=True)
    url = f"sqlite:///{workdir / 'profile.db'}"
    prepare(url, workdir, messages, body)
    sink = Sink(workdir, "profile")
    try:
        env = worker_env(url, sink.url, workdir)
        stats_path = workdir / "worker.prof"
        command = [str(VENV_PYTHON), "-m", "cProfile", "-o", str(stats_path), "-m", "mailer", "worker", "--drain"]
        print(f"  cProfile: {shlex.join(command).replace(str(workdir), '$TMP')}", flush=True)
        (run,) = run_workers(env, workdir, "profile-cprofile", command=command)
        print_worker(run)
        cprofile_lines = cprofile_top(stats_path, top, run.reported.get("sent", messages))

        pyspy_lines = []
        py_spy = VENV_PYTHON.parent / "py-spy"
        if py_spy.exists():
            mailer = build(worker_settings(url, workdir))  # a second issue to the same audience
            try:
                make_newsletter(mailer, subject=SUBJECT, body=body)
            finally:
                mailer.engine.dispose()
            raw = workdir / "pyspy.txt"
            command = [str(py_spy), "record", "--threads", "-r", "250", "--format", "raw", "-o", str(raw),
                       "--", *WORKER_COMMAND]
            print(f"  py-spy: {shlex.join(command).replace(str(workdir), '$TMP')}", flush=True)
            (run,) = run_workers(env, workdir, "profile-pyspy", command=command)
            said = [ln for ln in run.stdout.splitlines() if ln.startswith("sent ")]
            print(f"    {run.seconds:.1f} s wall; worker: {said[-1] if said else '(no summary line)'}", flush=True)
            pyspy_lines = pyspy_summary(raw, run.seconds, top)
        else:
            print("  py-spy not installed in .venv (pip install py-spy): SMTP threads not sampled", flush=True)
    finally:
        sink.stop()
    return ProfileResult(messages, cprofile_lines, pyspy_lines)


WRAPPERS = ("<frozen ", "runpy", "click/", "cProfile", "profile.py")
WAITING = ("acquire' of '_thread.lock", "acquire' of '_thread.RLock", "method 'recv_into'", "sendall")


def cprofile_top(path: Path, top: int, messages: int) -> list[str]:
    """The send loop's functions (Sender.drain and below) by cumulative and by own time."""
    stats = pstats.Stats(str(path))
    rows = []
    drain = 0.0
    for (filename, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():
        if func == "drain" and filename.endswith("mailer/delivery/sender.py"):
            drain = ct
        rows.append((ct, tt, nc, short_location(filename, line, func), filename, func))
    drain = drain or stats.total_tt
    loop = [r for r in rows if r[0] <= drain * 1.0001 and not any(w in r[4] for w in WRAPPERS)
            and r[5] not in ("<module>", "<built-in method builtins.exec>", "<built-in method builtins.__import__>")]
    per = 1000 / max(messages, 1)
    lines = [f"cProfile of one worker, main thread only (claim, render, record; the SMTP pool threads are not "
             f"profiled), {messages:,} messages: {stats.total_tt:.2f} s in all, of which Sender.drain "
             f"{drain:.2f} s = {drain * per:.3f} ms/message and start-up (imports, settings, engine) "
             f"{stats.total_tt - drain:.2f} s.",
             f"Top {top} by cumulative time (% of Sender.drain; times include waiting: a lock acquire is the main "
             f"thread waiting for the SMTP threads):",
             f"  {'cum s':>7} {'%':>4} {'ms/msg':>7} {'own s':>6} {'calls':>8}  function"]
    for ct, tt, nc, where, *_ in sorted(loop, key=lambda r: r[0], reverse=True)[:top]:
        lines.append(f"  {ct:7.2f} {ct / drain:4.0%} {ct * per:7.3f} {tt:6.2f} {nc:8d}  {where}")
    lines.append(f"Top {top} by own time:")
    for ct, tt, nc, where, *_ in sorted(loop, key=lambda r: r[1], reverse=True)[:top]:
        note = "  (waiting)" if any(w in where for w in WAITING) else ""
        lines.append(f"  {tt:7.2f} {tt / drain:4.0%} {tt * per:7.3f} {nc:8d}  {where}{note}")
    return lines


def short_location(filename: str, line: int, func: str) -> str:
    if filename == "~":
        return func  # a built-in
    if "/site-packages/" in filename:
        filename = filename.split("/site-packages/", 1)[1]
    elif str(ROOT) + "/" in filename:
        filename = filename.split(str(ROOT) + "/", 1)[1]
    elif re.search(r"/lib/python3\.\d+/", filename):
        filename = "stdlib/" + re.split(r"/lib/python3\.\d+/", filename, 1)[1]
    return f"{func} ({filename}:{line})"


def pyspy_frame(frame: str) -> str:
    frame = re.sub(r"\(\S*/site-packages/", "(", frame)
    frame = frame.replace(str(ROOT) + "/", "")
    return re.sub(r"\(/\S*/lib/python3\.\d+/", "(stdlib/", frame)


def pyspy_summary(raw: Path, seconds: float, top: int) -> list[str]:
    """py-spy's collapsed stacks ("thread (TID): NAME;frame;...;frame N"): samples per thread
    group, and per group the innermost frames (where the samples landed) and the mailer/
    functions on the stack."""
    groups: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    main_tids = set()
    lines_in = [ln for ln in raw.read_text(errors="replace").splitlines() if ln.rpartition(" ")[2].isdigit()]
    for line in lines_in:
        head = line.split(";", 1)[0]
        if "MainThread" in head:
            main_tids.add(head.split(")")[0])
    for line in lines_in:
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        head = frames[0]
        group = ("SMTP pool threads" if "smtp" in head else
                 "main thread" if "MainThread" in head or head.split(")")[0] in main_tids else
                 "threads py-spy found no name for (the worker starts only the SMTP pool)")
        totals[group] += n
        if len(frames) > 1:
            groups[group][pyspy_frame(frames[-1])] += n
        for frame in {pyspy_frame(f) for f in frames[1:] if "mailer/" in f}:
            inclusive[group][frame] += n
    total = sum(totals.values())
    if not total:
        return ["py-spy collected no samples"]
    out = [f"py-spy (all threads, 250 Hz, {seconds:.1f} s): {total:,} samples of a thread not idle "
           "(py-spy counts a thread blocked in a socket read as active, so this is not CPU time):"]
    for group, n in totals.most_common():
        out.append(f"  {group}: {n:,} samples ({n / 250 / seconds:.0%} of the wall time, summed over its threads)")
        out.append("    innermost frames: " + "; ".join(
            f"{name} {c / n:.0%}" for name, c in groups[group].most_common(max(4, top // 3))))
        out.append("    mailer/ functions on the stack: " + "; ".join(
            f"{name} {c / n:.0%}" for name, c in inclusive[group].most_common(max(4, top // 3))))
    return out


# Phases 2 and 3: memory and materialisation --------------------------------------------------

@dataclasses.dataclass
class MemoryResult:
    queued: int
    run: WorkerRun | None = None
    sent: int = 0
    bounded: float | None = None
    audience_seconds: float | None = None
    materialise_seconds: float | None = None
    materialised: int | None = None
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    sink_received: int | None = None

    @property
    def ok(self) -> bool:
        """Full drain: every row sent once. Bounded run: some sent, the rest queued, none lost."""
        if self.run is None:
            return False
        if self.bounded is None:
            return self.statuses == {"sent": self.queued} and self.sink_received in (None, self.queued)
        return (self.sent > 0 and set(self.statuses) <= {"sent", "queued"}
                and sum(self.statuses.values()) == self.queued and self.sink_received in (None, self.sent))

    @property
    def check(self) -> str:
        return (f"{'ok' if self.ok else 'FAILED'}: deliveries {format_statuses(self.statuses)}, "
                f"smtp-sink received {format_count(self.sink_received)}")


def memory_small(workdir: Path, recipients: int, body: str) -> MemoryResult:
    print(f"\n=== Peak RSS: one worker, {recipients:,} queued recipients (SQLite), full drain ===", flush=True)
    url = f"sqlite:///{workdir / 'rss-small.db'}"
    prepared = prepare(url, workdir, recipients, body)
    result = MemoryResult(prepared.queued)
    sink = Sink(workdir, "rss-small")
    try:
        (result.run,) = run_workers(worker_env(url, sink.url, workdir), workdir, "rss-small", sample_every=1.0)
        time.sleep(0.3)
        result.sink_received = sink.messages()
    finally:
        sink.stop()
    result.statuses = deliveries_by_status(url)
    result.sent = result.statuses.get("sent", 0)
    print_worker(result.run)
    print_rss_samples(result.run)
    print(f"  check: {result.check}", flush=True)
    return result


def memory_large(workdir: Path, recipients: int, body: str, bounded: float) -> MemoryResult:
    print(f"\n=== Materialisation and peak RSS: {recipients:,} subscribers (SQLite) ===", flush=True)
    url = f"sqlite:///{workdir / 'rss-large.db'}"
    prepared = prepare(url, workdir, recipients, body, enqueue=False, label="")
    result = MemoryResult(0, audience_seconds=prepared.audience_seconds, bounded=bounded)
    mailer = build(worker_settings(url, workdir))
    try:
        with mailer.sessions() as session:
            newsletter_id = session.scalar(sa.text("SELECT max(id) FROM newsletters"))
        started = time.perf_counter()
        with session_scope(mailer.sessions) as session:
            result.materialised = newsletters.enqueue_audience(session, newsletter_id, now=utcnow())
        result.materialise_seconds = time.perf_counter() - started
    finally:
        mailer.engine.dispose()
    result.queued = deliveries_by_status(url).get("queued", 0)
    met = result.materialise_seconds < TARGET_MATERIALISE_S
    print(f"  enqueue_audience (one INSERT ... SELECT, committed): {result.materialise_seconds:.1f} s for "
          f"{result.materialised:,} rows, {result.queued:,} queued "
          f"(target < {TARGET_MATERIALISE_S:.0f} s: {'met' if met else 'MISSED'})", flush=True)
    print(f"  database file: {sum(p.stat().st_size for p in workdir.glob('rss-large.db*')) / 2**20:,.0f} MB",
          flush=True)
    print_claim_cost(url, workdir)

    print(f"  worker run, bounded: SIGTERM after {bounded:.0f} s", flush=True)
    sink = Sink(workdir, "rss-large")
    try:
        (result.run,) = run_workers(worker_env(url, sink.url, workdir), workdir, "rss-large", stop_after=bounded)
        time.sleep(0.3)
        result.sink_received = sink.messages()
    finally:
        sink.stop()
    result.statuses = deliveries_by_status(url)
    result.sent = result.statuses.get("sent", 0)
    print_worker(result.run)
    rates = re.findall(r"\| (\d+)/s \|", result.run.stderr)
    if rates:
        print(f"    the worker's running average rate, every 5 s: {' '.join(rates)} messages/s")
    print(f"  sent in the bounded run: {result.sent:,} in {result.run.seconds:.0f} s "
          f"({result.sent / result.run.seconds:,.0f} messages/s incl. start-up)", flush=True)
    print_rss_samples(result.run)
    print(f"  check: {result.check}", flush=True)
    return result


def print_rss_samples(run: WorkerRun) -> None:
    if run.rss_samples:
        shown = run.rss_samples if len(run.rss_samples) <= 12 else run.rss_samples[::max(1, len(run.rss_samples) // 10)]
        print("    VmRSS over time: " + ", ".join(f"{t:.0f}s {mb:.0f} MB" for t, mb in shown), flush=True)


# Whole run ----------------------------------------------------------------------------------

def markdown_table(args, sample: Sample, floor: FloorResult | None, throughput: list[ThroughputResult],
                   small: MemoryResult | None, large: MemoryResult | None) -> str:
    kb = len(sample.message) / 1024
    lines = ["| What | Result | Target | | Notes |", "|---|---:|---:|---|---|"]
    if floor:
        lines.append(f"| smtp-source floor, {args.connections} sessions, {kb:.1f} KB | {floor.rate:,.0f} msg/s | | | "
                     f"best of {FLOOR_RUNS} runs of {floor.messages:,} messages (" + ", ".join(f"{r:,.0f}" for r in floor.all_rates)
                     + f" msg/s); sink received {format_count(floor.received)} |")
    for t in throughput:
        label = f"{t.backend}, {t.workers} worker{'s' if t.workers > 1 else ''}, {t.recipients:,} recipients"
        if t.skipped or t.error or not t.runs:
            lines.append(f"| {label} | {t.check} | | | |")
            continue
        ratio = t.rate / floor.rate if floor else float("nan")
        worker_cpu = sum(r.cpu_seconds for r in t.runs)
        lines.append(
            f"| {label} | {t.rate:,.0f} msg/s = {ratio:.3f} × floor | ≥ {TARGET_RATIO} × floor | "
            f"{verdict(ratio >= TARGET_RATIO)} | best of {len(t.all_rates)} runs ("
            + ", ".join(f"{r:,.0f}" for r in t.all_rates) + f" msg/s); {t.seconds:.0f} s; worker CPU {worker_cpu / t.recipients * 1000:.2f} ms/msg; "
            f"machine {t.busy_cores:.1f}/{os.cpu_count()} cores busy ({t.other_cores:.1f} by other processes); "
            f"{t.check} |")
    for result in (small, large):
        if result is None or result.run is None:
            continue
        if result.bounded is None:
            label = f"Worker peak RSS, {result.queued:,} queued"
            note = f"full drain, {result.sent:,} sent in {result.run.seconds:.0f} s"
        else:
            label = f"Worker peak RSS, {result.queued:,} queued"
            note = (f"**time-bounded**: SIGTERM after {result.bounded:.0f} s, {result.sent:,} sent "
                    f"({result.sent / result.run.seconds:,.0f} msg/s)")
        lines.append(f"| {label} | {result.run.max_rss_mb:.0f} MB | < {TARGET_RSS_MB} MB | "
                     f"{verdict(result.run.max_rss_mb < TARGET_RSS_MB)} | {note}; {result.check} |")
    if large and large.materialise_seconds is not None:
        lines.append(f"| enqueue_audience, {large.materialised:,} subscribers | {large.materialise_seconds:.1f} s | "
                     f"< {TARGET_MATERIALISE_S:.0f} s | {verdict(large.materialise_seconds < TARGET_MATERIALISE_S)} | "
                     f"SQLite, one INSERT … SELECT |")
        lines.append(f"| make_audience({large.materialised:,}) (set-up) | {large.audience_seconds:.0f} s | | | "
                     f"tests/audience.py, SQLite |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="10,000 recipients, 100,000 for memory and materialisation, 20 s bounded run")
    parser.add_argument("--recipients", type=int, help="throughput run size (default 100,000; --quick 10,000)")
    parser.add_argument("--large", type=int, help="list size for materialisation and the bounded RSS run "
                                                  "(default 1,000,000; --quick 100,000)")
    parser.add_argument("--bounded-seconds", type=float, help="SIGTERM the large RSS run after this "
                                                              "(default 75; --quick 20)")
    parser.add_argument("--profile-messages", type=int, help="messages in each profiled run (default 3,000; "
                                                             "--quick 1,000)")
    parser.add_argument("--top", type=int, default=20, help="functions listed from each profile (default 20)")
    parser.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--workdir", help="where the databases go (default: a temporary directory, removed)")
    parser.add_argument("--only", default="throughput,profile,memory",
                        help="comma-separated phases to run: throughput (smtp-source floor, SQLite, PostgreSQL), "
                             "profile, memory (peak RSS and materialisation); default all")
    parser.add_argument("--dkim", action="store_true",
                        help="the workers sign every message with a new 2048-bit DKIM key (README \"Deliverability\")")
    args = parser.parse_args()
    args.only = {name.strip() for name in args.only.split(",")}
    unknown = args.only - {"throughput", "profile", "memory"}
    if unknown:
        parser.error(f"unknown phase(s) for --only: {', '.join(sorted(unknown))}")
    args.recipients = args.recipients or (10_000 if args.quick else 100_000)
    args.large = args.large or (100_000 if args.quick else 1_000_000)
    args.bounded_seconds = args.bounded_seconds or (20.0 if args.quick else 75.0)
    args.profile_messages = args.profile_messages or (1_000 if args.quick else 3_000)
    small_size = 10_000
    command = os.environ.get("BENCH_COMMAND") or shlex.join(sys.orig_argv)
    settings = load_settings({"secret_key": SECRET_KEY, "instance_path": tempfile.gettempdir()})
    args.connections = settings.smtp_connections

    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    print(f"Command: {command}")
    print(f"nproc: {nproc} (the worker(s), smtp-sink and the database all share these cores); "
          f"load average before: {load_average()}; code: {git_state()}")
    print(f"Settings: MAILER_SMTP_CONNECTIONS={settings.smtp_connections}, "
          f"MAILER_SEND_BATCH_SIZE={settings.send_batch_size}, "
          f"per_domain_concurrency={settings.per_domain_concurrency}, recipients spread over "
          f"{len(DOMAINS)} domains ({', '.join(DOMAINS)})", flush=True)
    ensure_postfix_tools()

    started = time.monotonic()
    floor = None
    throughput: list[ThroughputResult] = []  # the best run of each backend
    checked: list[ThroughputResult] = []  # every run: each must have sent every message once
    profile = small = large = None
    with tempfile.TemporaryDirectory(prefix="bench_delivery_", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        if args.dkim:  # every worker process inherits these (worker_env copies os.environ)
            from mailer.delivery import dkim

            dkim.generate_key(workdir / "dkim.pem")
            os.environ.update(MAILER_DKIM_SELECTOR="bench", MAILER_DKIM_DOMAIN="example.com",
                              MAILER_DKIM_KEY_FILE=str(workdir / "dkim.pem"))
            print("DKIM: every message signed (rsa-sha256, 2048-bit key, relaxed/relaxed)", flush=True)
        sample = size_newsletter(workdir)
        print(f"\nNewsletter: {sample.sections} Markdown sections, {len(sample.body):,} characters of Markdown; "
              f"one message is {len(sample.message):,} bytes (HTML part {sample.html_bytes:,} bytes, "
              f"text part {sample.text_bytes:,} bytes, quoted-printable in the message)", flush=True)

        if "throughput" in args.only:
            print(f"\n=== Floor: smtp-source, {args.connections} sessions, {args.recipients:,} messages of "
                  f"{len(sample.message):,} bytes ===", flush=True)
            floor = smtp_source_floor(workdir, args.connections, args.recipients, len(sample.message))
            print(f"  {floor.command}")
            print(f"  {FLOOR_RUNS} runs: " + ", ".join(f"{r:,.0f}" for r in floor.all_rates)
                  + f" messages/s as smtp-sink saw them arrive; the fastest counts: {floor.rate:,.0f} messages/s; "
                  f"smtp-sink received {format_count(floor.received)} "
                  f"(expected {FLOOR_RUNS * floor.messages:,})", flush=True)
            for label, workers, runner in (
                    ("SQLite", 1, lambda run: throughput_sqlite(workdir, args.recipients, sample.body, run)),
                    ("PostgreSQL", PG_WORKERS,
                     lambda run: throughput_postgres(workdir, args.recipients, sample.body, args.sqlite_only, run))):
                # Best of FLOOR_RUNS, as the floor: each run on a fresh database.
                results = []
                for run in range(FLOOR_RUNS):
                    try:
                        result = runner(run)
                    except Exception as exc:
                        traceback.print_exc()
                        result = ThroughputResult(label, workers, args.recipients, error=repr(exc))
                    results.append(result)
                    if result.skipped or result.error:
                        break
                if result.skipped:
                    print(f"\n=== Throughput: {result.backend} === skipped: {result.skipped}")
                checked.extend(results)
                result = max((r for r in results if r.ok), key=lambda r: r.rate, default=result)
                result.all_rates = [r.rate for r in results if r.runs]
                if result.runs and floor:
                    ratio = result.rate / floor.rate
                    print(f"  {label}: runs " + ", ".join(f"{r:,.0f}" for r in result.all_rates)
                          + f" msg/s; the best counts: ratio to smtp-source {ratio:.3f} (target >= {TARGET_RATIO}: "
                          f"{verdict(ratio >= TARGET_RATIO)})", flush=True)
                throughput.append(result)

        if "profile" in args.only:
            try:
                profile = profile_worker(workdir, args.profile_messages, sample.body, args.top)
            except Exception:
                traceback.print_exc()

        if "memory" in args.only:
            try:
                reuse = next((t for t in throughput if t.backend == "SQLite" and t.recipients == small_size
                              and t.runs), None)
                if reuse:
                    print(f"\n=== Peak RSS, {small_size:,} queued: the SQLite throughput run above ===")
                    small = MemoryResult(small_size, reuse.runs[0], reuse.statuses.get("sent", 0),
                                         statuses=reuse.statuses, sink_received=reuse.sink_received)
                else:
                    small = memory_small(workdir, small_size, sample.body)
                for t in throughput:
                    if t.backend == "SQLite" and t.runs and t.recipients != small_size:
                        print(f"  (for comparison: the SQLite throughput run with {t.recipients:,} queued peaked at "
                              f"{t.runs[0].max_rss_mb:.0f} MB)")
            except Exception:
                traceback.print_exc()
            try:
                large = memory_large(workdir, args.large, sample.body, args.bounded_seconds)
            except Exception:
                traceback.print_exc()

    if profile:
        print("\n=== Where the time goes ===")
        print("\n".join(profile.cprofile_lines))
        if profile.pyspy_lines:
            print()
            print("\n".join(profile.pyspy_lines))

    print(f"\n## Delivery benchmark\n\nnproc: {nproc} (shared by the worker(s), smtp-sink and the database); "
          f"load average at the end: {load_average()}; code: {git_state()}  ")
    print(f"Command: `{command}` (total {time.monotonic() - started:.0f} s)\n")
    print(markdown_table(args, sample, floor, throughput, small, large))
    checks = [(f"throughput {t.backend}", t.ok) for t in checked if not t.skipped]
    checks += [(f"RSS {m.queued:,}", m.ok) for m in (small, large) if m is not None]
    if "memory" in args.only and large is None:
        checks.append(("materialisation", False))
    failed = [name for name, ok in checks if not ok]
    print(f"\nResult: {'FAILED (' + ', '.join(failed) + ')' if failed else 'ok'}: "
          "every run must send each queued delivery at most once and lose none "
          "(the performance targets are reported above, they do not change the exit code)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
