"""Relay benchmark: newsletter throughput to an SMTP server 25 ms away (50 ms round trip), at
4, 16 and 64 connections, against Postfix's smtp-source with the same sessions over the same link.

Run from the repository root, as root (it may install Debian's postfix for smtp-sink/smtp-source):

    .venv/bin/python bench/relay.py            # 100 messages per connection, 3 runs a side: about 7 min
    .venv/bin/python bench/relay.py --quick    # 25 messages per connection, 1 run a side: about 1 min
    .venv/bin/python bench/relay.py --connections 64 --batch-size 100   # one count, the default batch
    .venv/bin/python bench/relay.py --quick --postgres   # the worker on a fresh PostgreSQL database per run

Most installs hand their mail to a provider tens of milliseconds away, where round trips, not
CPU, set the rate; bench/delivery.py measures on loopback, where they cost nothing.

The link: one smtp-sink on 127.0.0.1 behind bench/delay_link.py, a user-space TCP forwarder
that holds every chunk 25 ms in each direction (order kept, no bandwidth cap; the greeting of a
new connection comes 4 x 25 ms after connect(), as over a real link). The kernel's netem would
be the usual tool, but this machine's kernel has none ("Error: Specified qdisc kind is
unknown."; see bench/delay_link.py). smtp-source and the worker both go through the very same
forwarder process to the very same smtp-sink; its CPU time is reported per run, so one can see
it is not what limits.

Each side, for each connection count C, sends 100 x C messages of the same size (the bench
newsletter, ~43 KB, from bench/delivery.py's size_newsletter) over C sessions kept open:
- smtp-source -s C -d -m N -l SIZE. It has no pipelining (its manual, BUGS: "No SMTP command
  pipelining support"), so each message costs it 4 round trips (MAIL, RCPT, DATA, the final dot).
- one `python -m mailer worker --drain` on a fresh SQLite database with N queued deliveries
  (spread over bench/delivery.py's 4 recipient domains), with MAILER_SMTP_CONNECTIONS=C,
  MAILER_PER_DOMAIN_CONCURRENCY=ceil(C / 4) (the least that lets every connection carry mail: the
  recipients are spread over 4 domains), and MAILER_SEND_BATCH_SIZE=max(100, 10 x C) unless
  --batch-size says otherwise: a batch is claimed only once the previous one is all answered, so
  with the default 100 and 64 connections every batch ends in a round trip with most connections
  idle (measured below).
Start-up is excluded on both sides in the same way: the rate is (N - 1) / (time smtp-sink counted
the Nth message - time it counted the first), timed by following smtp-sink's running counter (-c).
Process start, imports, the claim of the first batch, opening the connections before the first
message goes, and the QUITs at the end are outside that window; the time from process start to
the first message is reported beside it. The figure is the median of 3 runs for both sides
(runs interleaved: smtp-source, worker, smtp-source, ...); all runs are listed. After every worker
run the deliveries table must hold N rows, all 'sent', and smtp-sink must have counted N more
messages (exit code 1 otherwise). Target: ours >= 0.8 x smtp-source at equal sessions.

Also reported: smtp-source's bound C / (4 x RTT) and ours C / RTT (one round trip a message with
pipelining) and how close we come to it; CPU per message of the worker, the link and smtp-sink in
the steady window (and the machine's busy cores, everyone's); "pauses", gaps of 1.5 round trips or
more with no message counted, i.e. every connection idle (smtp-source has one every round by
design: its sessions move in step, 4 round trips a message); and, at the largest count, one worker
run each with MAILER_SEND_BATCH_SIZE=100 and = N (the whole run in one batch).

Figures, `.venv/bin/python bench/relay.py` at c80a855 (before the machine-busy column was added),
2 cores shared with another session's benchmarks, load average 3.42 before, 2.65 at the end; SQLite,
43,502-byte messages, 100 per connection, median of 3 a side, start-up excluded (387 s in all):

| Connections | smtp-source | ours | ours / smtp-source | ours / C / RTT | first message after (source, ours) | worker CPU, steady | link CPU, steady |
|---:|---:|---:|---:|---:|---:|---:|---:|
| 4 (batch 100) | 19 msg/s | 69 msg/s | 3.58 (target 0.8: met) | 86% | 0.35 s, 2.07 s | 1.34 ms/msg | 0.48 ms/msg, 0.02 cores |
| 16 (batch 160) | 76 msg/s | 235 msg/s | 3.10 (met) | 73% | 0.34 s, 4.16 s | 0.95 ms/msg | 0.31 ms/msg, 0.05 cores |
| 64 (batch 640) | 299 msg/s | 685 msg/s | 2.29 (met) | 54% | 0.35 s, 10.99 s | 0.79 ms/msg | 0.23 ms/msg, 0.11 cores |

64 connections by batch size (one run each, except 640: the median above): 100 -> 352 msg/s with
65 pauses (11.9 s of the window idle); 640 -> 685 msg/s, 10 pauses (2.1 s); 6,400 -> 613 msg/s,
11 pauses (1.2 s; the machine's busy cores were not recorded yet, load average ~2.5). A later single
run, 50 per connection, 3,200 in one batch: 897 msg/s, no pause, the worker at 0.66 cores, the
machine 1.68 of 2 cores busy (other sessions' load: the rate moves with it).

What limited us over this link, and what was done (mailer/delivery/smtp_client.py, sender.py):
- Connection set-up was serial and blocked the loop (Wire.open: smtplib connect, greeting, EHLO,
  153 ms here; the first message came 11.0 s after start at 64 connections). Now set-up runs in
  a thread pool: one connection first, then the others side by side.
- Batch boundaries idled every connection (the next claim and plan ran with all of them idle).
  Now drain plans the next batch ahead while one is on the wire, and the default batch is 500.
After both (`--quick` at 4cf88d4, load average 1.9): 75, 296 and 1,201 msg/s at 4, 16 and 64
connections, 94 %, 92 % and 94 % of one message per round trip per connection (smtp-source:
19, 76, 302), the first message 1.1-1.4 s after start (the worker's own start-up, mostly).
The comparison with smtp-source is easy to win at equal sessions because it does not pipeline
(4 round trips a message against our 1); how close we come to C / RTT is the harder measure.

How many connections for a provider: one pipelining connection carries about one message per
round trip (plus the time to push the message through the link and the provider's own time per
message): ~20 msg/s in theory at 50 ms, 11-17 measured here; a server without PIPELINING costs 4
round trips a message (~5 msg/s at 50 ms). So MAILER_SMTP_CONNECTIONS ~ the rate you want x the
round trip (time `EHLO` to the provider) x 1.3 for headroom, then lowered to what the provider
allows: its limit on simultaneous connections (beyond it, it answers 421 and the worker defers
those messages), and its rate limit per second: connections beyond rate x round trip only wait
at the provider; set that limit as MAILER_RATE_PER_SECOND too. Every worker process opens its own
connections: the provider sees workers x connections. MAILER_PER_DOMAIN_CONCURRENCY (default 2)
caps the connections carrying one recipient domain, also through a relay: raise it to at least
connections x the largest domain's share of the list (or to the number of connections; the relay
paces each domain itself). Keep MAILER_SEND_BATCH_SIZE (default 500) at 10 x connections or more.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PG_SERVER_URL, git_state, load_average, on_scratch_postgres, use_project_python, verdict  # noqa: E402,E501

use_project_python()
from delivery import (DOMAINS, Sink, deliveries_by_status, ensure_postfix_tools, format_count,  # noqa: E402
                      format_statuses, machine_ticks, postfix_tool, prepare, print_worker, proc_cpu_seconds,
                      run_workers, size_newsletter, worker_env)

DELAY = 0.025  # one way
TARGET_RATIO = 0.8
RUNS = 3
# A gap this long with no message counted is idle connections: in steady flow each connection
# ends a message every round trip (smtp-source: every 4), so shorter gaps are normal.
PAUSE_ROUND_TRIPS = 1.5
LINK_SCRIPT = Path(__file__).resolve().parent / "delay_link.py"


class Link:
    """bench/delay_link.py in its own process, forwarding to `port` with `delay` each way."""

    def __init__(self, port: int, delay: float):
        self.delay = delay
        self.proc = subprocess.Popen([sys.executable, str(LINK_SCRIPT), "--to", f"127.0.0.1:{port}",
                                      "--delay", str(delay)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"delay_link.py did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        return proc_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


class Arrivals(threading.Thread):
    """When smtp-sink's running counter (-c: "sess=.. quit=.. mesg=N\\r" on every message)
    first showed each count: follows its output file every 2 ms."""

    def __init__(self, sink: Sink, link: "Link"):
        super().__init__(daemon=True)
        self.path = sink.out_path
        self.sink = sink
        self.link = link
        self.count = 0
        self.seen: dict[int, float] = {}
        # At these counts, the CPU seconds of (client, link, smtp-sink): the steady window's CPU.
        self.marks: list[int] = []
        self.cpu_at: dict[int, tuple[float, float, float]] = {}
        self.client_pid: int | None = None
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def watch(self, *counts: int) -> None:
        with self.lock:
            self.marks = sorted(counts)
            self.cpu_at.clear()
            self.client_pid = None

    def _client(self) -> int | None:
        """The benchmark's child that is neither smtp-sink nor the link: smtp-source or the worker."""
        mine, others = os.getpid(), {self.sink.proc.pid, self.link.proc.pid}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) not in others:
                try:
                    if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == mine:
                        return int(entry.name)
                except (OSError, ValueError, IndexError):
                    continue
        return None

    def _sample_marks(self) -> None:
        while self.marks and self.count >= self.marks[0]:
            mark = self.marks.pop(0)
            if self.client_pid is None:
                self.client_pid = self._client()
            alive = self.client_pid is not None and Path(f"/proc/{self.client_pid}").exists()
            client = proc_cpu_seconds(self.client_pid) if alive else float("nan")
            self.cpu_at[mark] = (client, self.link.cpu_seconds(), proc_cpu_seconds(self.sink.proc.pid),
                                 *machine_ticks())

    def run(self) -> None:
        offset = 0
        partial = b""
        while not self.stopping.is_set():
            with open(self.path, "rb") as f:
                f.seek(offset)
                new = f.read()
            now = time.perf_counter()
            if new:
                offset += len(new)
                text = partial + new
                complete, _, partial = text.rpartition(b"\r")
                found = re.findall(rb"mesg=(\d+)", complete)
                if found:
                    count = int(found[-1])
                    with self.lock:
                        for n in range(self.count + 1, count + 1):
                            self.seen[n] = now
                        self.count = max(self.count, count)
                        self._sample_marks()
            time.sleep(0.002)

    def pauses(self, start: int, end: int) -> list[float]:
        """The gaps of PAUSE_ROUND_TRIPS round trips or more in which smtp-sink counted nothing,
        between two counts."""
        with self.lock:
            times = [self.seen[n] for n in range(start, end + 1) if n in self.seen]
        return [b - a for a, b in zip(times, times[1:]) if b - a >= PAUSE_ROUND_TRIPS * 2 * self.link.delay]

    def time_of(self, count: int) -> float | None:
        with self.lock:
            return self.seen.get(count)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


@dataclasses.dataclass
class Run:
    """One run of one side: N messages over C connections, between process start and exit."""
    messages: int
    connections: int
    started: float
    ended: float
    first: float | None  # smtp-sink counted the run's first message
    steady: float | None  # ... its C-th: every connection has carried one (start-up is over)
    last: float | None  # ... its N-th
    # CPU seconds of (client, link, smtp-sink), then the machine's (busy, total) ticks, at the C-th message
    cpu_steady: tuple | None
    cpu_last: tuple | None  # ... and at the N-th
    received: int  # counted by smtp-sink during the run
    pauses: list[float]  # gaps of PAUSE_ROUND_TRIPS or more between two counts in the steady window
    link_cpu: float  # the whole run
    sink_cpu: float
    client_cpu: float
    check: str = "ok"

    @property
    def rate(self) -> float:
        """Messages/s from the C-th message to the N-th: the first message of each connection
        is start-up (set-up of the connections and of the process), on both sides alike."""
        if self.steady is None or self.last is None or self.last <= self.steady:
            return 0.0
        return (self.messages - self.connections) / (self.last - self.steady)

    def steady_cpu(self, which: int) -> float:
        """CPU ms per message in the steady window: 0 client, 1 link, 2 smtp-sink."""
        if not self.cpu_steady or not self.cpu_last:
            return float("nan")
        return (self.cpu_last[which] - self.cpu_steady[which]) / (self.messages - self.connections) * 1000

    def steady_cores(self, which: int) -> float:
        """Cores used in the steady window: 0 client, 1 link, 2 smtp-sink."""
        return self.steady_cpu(which) / 1000 * self.rate

    @property
    def machine_cores(self) -> float:
        """Busy cores of the whole machine (everyone's processes) in the steady window."""
        if not self.cpu_steady or not self.cpu_last:
            return float("nan")
        busy = self.cpu_last[3] - self.cpu_steady[3]
        total = self.cpu_last[4] - self.cpu_steady[4]
        return busy / max(total, 1) * (os.cpu_count() or 1)

    @property
    def to_first(self) -> float:
        return (self.first - self.started) if self.first is not None else float("nan")

    @property
    def wall(self) -> float:
        return self.ended - self.started

    @property
    def ok(self) -> bool:
        return self.check == "ok"


@dataclasses.dataclass
class Side:
    name: str
    connections: int
    runs: list[Run] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(r.rate for r in self.runs) if self.runs else 0.0

    def median(self, attribute) -> float:
        return statistics.median(attribute(r) for r in self.runs) if self.runs else float("nan")


class Bench:
    """One smtp-sink behind one delay link, for every run of both sides."""

    def __init__(self, workdir: Path, delay: float, postgres: bool):
        self.workdir = workdir
        self.postgres = postgres
        self.sink = Sink(workdir, "relay")
        self.link = Link(self.sink.port, delay)
        self.arrivals = Arrivals(self.sink, self.link)
        self.arrivals.start()
        self.counter = 0  # databases made

    def close(self) -> None:
        self.arrivals.stop()
        self.link.stop()
        self.sink.stop()

    def _measure(self, connections: int, messages: int, run_client) -> Run:
        time.sleep(0.2)  # the previous run's last counter update is in
        base = self.arrivals.count
        self.arrivals.watch(base + connections, base + messages)
        link0, sink0 = self.link.cpu_seconds(), self.sink.cpu_seconds()
        started = time.perf_counter()
        client_cpu, check = run_client()
        ended = time.perf_counter()
        deadline = time.monotonic() + 5
        while self.arrivals.count < base + messages and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        received = self.arrivals.count - base
        if check == "ok" and received != messages:
            check = f"FAILED: smtp-sink counted {received:,} of {messages:,}"
        at = self.arrivals.time_of
        cpu = self.arrivals.cpu_at
        return Run(messages, connections, started, ended, at(base + 1), at(base + connections), at(base + messages),
                   cpu.get(base + connections), cpu.get(base + messages), received,
                   self.arrivals.pauses(base + connections, base + messages),
                   self.link.cpu_seconds() - link0, self.sink.cpu_seconds() - sink0, client_cpu, check)

    def smtp_source(self, connections: int, messages: int, size: int) -> tuple[Run, str]:
        cmd = [postfix_tool("smtp-source"), "-s", str(connections), "-d", "-m", str(messages), "-l", str(size),
               "-f", "newsletter@example.com", "-t", "reader@example.net", f"127.0.0.1:{self.link.port}"]

        def client():
            before = os.times()
            done = subprocess.run(cmd, capture_output=True, text=True)
            after = os.times()
            cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
            return cpu, "ok" if done.returncode == 0 else f"FAILED: smtp-source exit {done.returncode}: {done.stderr[-300:]}"
        return self._measure(connections, messages, client), shlex.join(cmd).replace(str(self.link.port), "LINK_PORT")

    def worker(self, connections: int, messages: int, body: str, batch_size: int) -> Run:
        self.counter += 1
        if self.postgres:
            result = on_scratch_postgres("bench_relay", lambda url: self._worker(url, connections, messages, body,
                                                                                  batch_size))
            if isinstance(result, str):
                raise RuntimeError(result)
            return result
        try:
            return self._worker(f"sqlite:///{self.workdir / f'relay-{self.counter}.db'}", connections, messages,
                                body, batch_size)
        finally:
            for path in self.workdir.glob(f"relay-{self.counter}.db*"):
                path.unlink()

    def _worker(self, url: str, connections: int, messages: int, body: str, batch_size: int) -> Run:
        prepared = prepare(url, self.workdir, messages, body, label="    ")
        env = worker_env(url, self.link.url, self.workdir)
        env.update(MAILER_SMTP_CONNECTIONS=str(connections),
                   MAILER_PER_DOMAIN_CONCURRENCY=str(math.ceil(connections / len(DOMAINS))),
                   MAILER_SEND_BATCH_SIZE=str(batch_size))
        holder = {}

        def client():
            (holder["run"],) = run_workers(env, self.workdir, f"relay-{self.counter}")
            return holder["run"].cpu_seconds, "ok"
        run = self._measure(connections, messages, client)
        worker_run = holder["run"]
        statuses = deliveries_by_status(url)
        if worker_run.returncode != 0 or statuses != {"sent": prepared.queued} or prepared.queued != messages:
            run.check = (f"FAILED: worker exit {worker_run.returncode}, deliveries {format_statuses(statuses)} "
                         f"of {prepared.queued:,} queued, smtp-sink counted {format_count(run.received)}")
        if not run.ok:
            print_worker(worker_run)
        return run


def describe(run: Run) -> str:
    return (f"{run.rate:,.1f} msg/s from message {run.connections:,} to {run.messages:,} (first message "
            f"{run.to_first:.2f} s after start, wall {run.wall:.1f} s incl. start-up); CPU per message in that "
            f"window: client {run.steady_cpu(0):.2f} ms, link {run.steady_cpu(1):.2f} ms, smtp-sink "
            f"{run.steady_cpu(2):.2f} ms (cores: {run.steady_cores(0):.2f}, {run.steady_cores(1):.2f}, "
            f"{run.steady_cores(2):.2f}; the machine: {run.machine_cores:.2f} of {os.cpu_count()} busy); whole run: client {run.client_cpu:.1f} s, link {run.link_cpu:.2f} s, "
            f"smtp-sink {run.sink_cpu:.2f} s; {len(run.pauses)} pauses of {PAUSE_ROUND_TRIPS} round trips or more "
            f"with no message, {sum(run.pauses):.2f} s in all (longest {max(run.pauses, default=0) * 1000:.0f} ms); {run.check}")


def batch_size_for(connections: int, requested: int | None) -> int:
    return requested or max(100, 10 * connections)


def markdown_table(results: list[tuple[Side, Side, int]], rtt: float) -> str:
    lines = ["| Connections | smtp-source | ours | ours / smtp-source | Target | | Latency bounds (source, ours) | "
             "Ours / its bound | First message after (source, ours) | CPU per message, steady (worker; link) | "
             "Machine busy, steady (source; ours) | Runs (source; ours) |",
             "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for source, ours, batch in results:
        c = source.connections
        ratio = ours.rate / source.rate if source.rate else float("nan")
        worker_ms = ours.median(lambda r: r.steady_cpu(0))
        link_ms = statistics.median([r.steady_cpu(1) for r in source.runs + ours.runs])
        link_cores = max(r.steady_cores(1) for r in source.runs + ours.runs)
        lines.append(
            f"| {c} (batch {batch}) | {source.rate:,.0f} msg/s | {ours.rate:,.0f} msg/s | {ratio:.2f} | ≥ {TARGET_RATIO} | "
            f"{verdict(ratio >= TARGET_RATIO)} | {c / (4 * rtt):,.0f}, {c / rtt:,.0f} msg/s | {ours.rate * rtt / c:.0%} | "
            f"{source.median(lambda r: r.to_first):.2f} s, {ours.median(lambda r: r.to_first):.2f} s | "
            f"{worker_ms:.2f} ms; {link_ms:.2f} ms ({link_cores:.2f} cores at most) | "
            f"{source.median(lambda r: r.machine_cores):.1f}; {ours.median(lambda r: r.machine_cores):.1f} "
            f"of {os.cpu_count()} cores | "
            f"{', '.join(f'{r.rate:,.0f}' for r in source.runs)}; {', '.join(f'{r.rate:,.0f}' for r in ours.runs)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="25 messages per connection, 1 run a side")
    parser.add_argument("--connections", help="comma-separated connection counts (default 4,16,64)")
    parser.add_argument("--per-connection", type=int, help="messages per connection (default 100; --quick 25)")
    parser.add_argument("--runs", type=int, help=f"runs a side (default {RUNS}; --quick 1); the median counts")
    parser.add_argument("--batch-size", type=int, help="MAILER_SEND_BATCH_SIZE (default max(100, 10 x connections))")
    parser.add_argument("--delay", type=float, default=DELAY, help=f"one-way delay in seconds (default {DELAY})")
    parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=None,
                        help="also run one worker at the largest count with batch sizes 100 and all messages "
                             "(default: on, off with --quick or --batch-size)")
    parser.add_argument("--postgres", action="store_true",
                        help=f"the worker's database is a fresh PostgreSQL database at {PG_SERVER_URL} per run "
                             "(default: a fresh SQLite file)")
    parser.add_argument("--workdir", help="where the databases go (default: a temporary directory, removed)")
    args = parser.parse_args()
    counts = [int(c) for c in (args.connections or "4,16,64").split(",")]
    per_connection = args.per_connection or (25 if args.quick else 100)
    runs = args.runs or (1 if args.quick else RUNS)
    if args.sweep is None:
        args.sweep = not args.quick and not args.batch_size
    rtt = 2 * args.delay
    command = os.environ.get("BENCH_COMMAND") or shlex.join(sys.orig_argv)

    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    print(f"Command: {command}")
    print(f"nproc: {nproc} (the worker, smtp-sink and the link share these cores); load average before: "
          f"{load_average()}; code: {git_state()}")
    print(f"Link: {args.delay * 1000:.0f} ms each way ({rtt * 1000:.0f} ms round trip), bench/delay_link.py; "
          f"{per_connection} messages per connection, {runs} run(s) a side, the median counts; one worker on "
          f"{'PostgreSQL' if args.postgres else 'SQLite'}", flush=True)
    ensure_postfix_tools()

    started = time.monotonic()
    results: list[tuple[Side, Side, int]] = []
    sweep: list[tuple[int, Run]] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench_relay_", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        sample = size_newsletter(workdir)
        size = len(sample.message)
        print(f"Newsletter: one message is {size:,} bytes; smtp-source sends payloads of the same length", flush=True)
        bench = Bench(workdir, args.delay, args.postgres)
        try:
            for c in counts:
                n = per_connection * c
                batch = batch_size_for(c, args.batch_size)
                print(f"\n=== {c} connections, {n:,} messages a run; worker: MAILER_SEND_BATCH_SIZE={batch}, "
                      f"MAILER_PER_DOMAIN_CONCURRENCY={math.ceil(c / len(DOMAINS))} ===", flush=True)
                source, ours = Side("smtp-source", c), Side("ours", c)
                for i in range(runs):
                    run, cmd = bench.smtp_source(c, n, size)
                    source.runs.append(run)
                    print(f"  smtp-source run {i + 1}: {describe(run)}\n    {cmd}", flush=True)
                    run = bench.worker(c, n, sample.body, batch)
                    ours.runs.append(run)
                    print(f"  worker run {i + 1}: {describe(run)}", flush=True)
                failed |= not all(r.ok for r in source.runs + ours.runs)
                ratio = ours.rate / source.rate if source.rate else float("nan")
                print(f"  median: smtp-source {source.rate:,.1f} msg/s (bound {c / (4 * rtt):,.0f}: "
                      f"4 round trips a message), ours {ours.rate:,.1f} msg/s (bound {c / rtt:,.0f}: one round "
                      f"trip a message); ratio {ratio:.2f} (target >= {TARGET_RATIO}: {verdict(ratio >= TARGET_RATIO)})",
                      flush=True)
                results.append((source, ours, batch))
            if args.sweep:
                c = counts[-1]
                n = per_connection * c
                print(f"\n=== Batch size, {c} connections, {n:,} messages: one worker run each ===", flush=True)
                for batch in sorted({100, n} - {batch_size_for(c, None)}):
                    run = bench.worker(c, n, sample.body, batch)
                    failed |= not run.ok
                    print(f"  MAILER_SEND_BATCH_SIZE={batch}: {describe(run)}", flush=True)
                    sweep.append((batch, run))
        finally:
            bench.close()

    print(f"\n## Relay benchmark ({args.delay * 1000:.0f} ms each way)\n\nnproc: {nproc}; load average at the end: "
          f"{load_average()}; code: {git_state()}  ")
    print(f"Command: `{command}` (total {time.monotonic() - started:.0f} s); {size:,}-byte messages, "
          f"{per_connection} per connection, median of {runs} run(s) a side, start-up excluded; one worker on "
          f"{'PostgreSQL' if args.postgres else 'SQLite'}\n")
    print(markdown_table(results, rtt))
    if sweep:
        c = counts[-1]
        ours = results[-1][1]
        print(f"\nOne worker, {c} connections, by MAILER_SEND_BATCH_SIZE (pauses: {PAUSE_ROUND_TRIPS} round trips or "
              "more with no message counted, in the steady window):\n")
        print("| Batch size | ours | Pauses | Worker CPU (steady) | Machine busy (steady) | Runs |\n"
              "|---:|---:|---:|---:|---:|---|")
        rows = [(b, [r]) for b, r in sweep] + [(results[-1][2], ours.runs)]
        for batch, runs_ in sorted(rows, key=lambda row: row[0]):
            middle = sorted(runs_, key=lambda r: r.rate)[len(runs_) // 2]
            print(f"| {batch:,} | {middle.rate:,.0f} msg/s | {len(middle.pauses)}, {sum(middle.pauses):.2f} s | "
                  f"{middle.steady_cpu(0):.2f} ms/msg, {middle.steady_cores(0):.2f} cores | "
                  f"{middle.machine_cores:.1f} of {os.cpu_count()} cores | "
                  f"{'median of ' + str(len(runs_)) if len(runs_) > 1 else 'one run'} |")
    print(f"\nResult: {'FAILED' if failed else 'ok'}: every run must deliver each message exactly once "
          "(the target is reported above; it does not change the exit code)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
