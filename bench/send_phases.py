"""Where the send loop's CPU goes: one Sender in this process, against smtp-sink, timed by phase.

Run from the repository root:

    .venv/bin/python bench/send_phases.py                  # SQLite, 10,000 messages
    .venv/bin/python bench/send_phases.py --postgres       # a scratch PostgreSQL database
    .venv/bin/python bench/send_phases.py --messages 20000 --batch 100

It queues bench/delivery.py's newsletter (~20 KB of personalised HTML) to N subscribers, then
drains them with one Sender in this process (the worker's own code: mailer.build(...).drain())
to Postfix's smtp-sink on 127.0.0.1, and prints messages/s (wall), the process's CPU per
message (every thread, start-up excluded) and each phase's CPU per message, measured with
time.thread_time() around the functions named below (nested phases are included in their
callers: compose holds render and build; the send loop's thread holds what the planner and
outcome threads do not):

    send loop thread   Sender.send_batch, of it Pipeline.run (the SMTP loop, composing included)
    compose            Sender._compose: the context, tokens, render, build
    render / build     CompiledNewsletter.render / MessageBuilder.build
    plan / claim       Sender._plan / outbox.claim_due (on the planner thread when planned ahead)
    record             Sender._record (the outcome writer thread)

Unlike bench/delivery.py (a separate worker process against smtp-source's floor), this is
for finding what to make cheaper; the machine's other load moves the wall rate, the CPU per
message much less. The rate printed is no target.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import delivery as bench  # noqa: E402  (bench/delivery.py: the newsletter, prepare, Sink)
from common import on_scratch_postgres  # noqa: E402

from mailer import build  # noqa: E402
from mailer.delivery import outbox, rendering, sender as sender_module, smtp_client  # noqa: E402

PHASES = {
    "send loop thread": (sender_module.Sender, "send_batch"),
    "  SMTP loop (with compose)": (smtp_client.Pipeline, "run"),
    "  compose": (sender_module.Sender, "_compose"),
    "    render": (rendering.CompiledNewsletter, "render"),
    "    build": (rendering.MessageBuilder, "build"),
    "plan": (sender_module.Sender, "_plan"),
    "claim": (outbox, "claim_due"),
    "record (outcome writer)": (sender_module.Sender, "_record"),
}


def timed(spent: collections.Counter, label: str, owner, name: str) -> None:
    function = getattr(owner, name)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label] += time.thread_time() - started

    setattr(owner, name, wrapper)


def run(database_url: str, workdir: Path, messages: int, batch: int | None) -> None:
    sample = bench.size_newsletter(workdir)
    bench.prepare(database_url, workdir, messages, sample.body)
    spent: collections.Counter = collections.Counter()
    for label, (owner, name) in PHASES.items():
        timed(spent, label, owner, name)
    sink = bench.Sink(workdir, "phases")
    try:
        settings = bench.worker_settings(database_url, workdir, sink.url)
        if batch:
            settings = dataclasses.replace(settings, send_batch_size=batch)
        mailer = build(settings)
        cpu, wall = time.process_time(), time.perf_counter()
        result = mailer.drain()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        mailer.engine.dispose()
        received = sink.messages()
    finally:
        sink.stop()
    print(f"\n{result.sent:,} sent ({received:,} received by smtp-sink), batch {settings.send_batch_size}, "
          f"{len(sample.message):,}-byte messages: {result.sent / wall:,.0f} messages/s, "
          f"{cpu / result.sent * 1e3:.3f} ms of CPU per message (all threads); load average {bench.load_average()}")
    for label in PHASES:
        print(f"  {label:28s} {spent[label] / result.sent * 1e6:7.1f} µs/message")
    if result.sent != messages or received != messages:
        raise SystemExit(f"expected {messages:,} sent and received once each")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch", type=int, help="MAILER_SEND_BATCH_SIZE (default: the configured one)")
    parser.add_argument("--postgres", action="store_true", help="a scratch PostgreSQL database instead of SQLite")
    args = parser.parse_args()
    bench.ensure_postfix_tools()
    workdir = Path(tempfile.mkdtemp(prefix="send-phases-"))
    try:
        if args.postgres:
            said = on_scratch_postgres("bench_phases", lambda url: run(url, workdir, args.messages, args.batch))
            if said:
                print(said)
        else:
            run(f"sqlite:///{workdir / 'phases.db'}", workdir, args.messages, args.batch)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
