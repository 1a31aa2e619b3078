"""Cost of one rate-limit check (mailer.web.ratelimit.Limiter.hit): the database counter on
SQLite and PostgreSQL, and the Redis counter.

    .venv/bin/python bench/ratelimit.py               # 3,000 checks per storage
    .venv/bin/python bench/ratelimit.py --checks 10000 --sqlite-only

Each storage gets a fresh store (a SQLite file in a temp dir, a database bench_ratelimit_<random>
on postgresql+psycopg://postgres@127.0.0.1:5432 dropped at the end, a key prefix of its own in
redis://127.0.0.1:6379/0 deleted at the end); an unreachable PostgreSQL or Redis is reported and
skipped. Checks are made one after another from one process, half from one client address
(one hot counter row, as when a single visitor or proxy sends everything) and half from a new
address each time (a new row per check). Reported: mean, p50 and p99 per check in microseconds.
"""
from __future__ import annotations

import argparse
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

from mailer.db import make_engine, migrate  # noqa: E402
from mailer.web.ratelimit import DatabaseStorage, Limit, Limiter, redis_storage  # noqa: E402

POSTGRES_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379/0"


def measure(limiter: Limiter, checks: int) -> dict[str, float]:
    limit = Limit("bench", 10**9, 60)
    timings = []
    for i in range(checks):
        client = "198.51.100.1" if i % 2 else f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        start = time.perf_counter()
        limiter.hit(limit, client)
        timings.append((time.perf_counter() - start) * 1e6)
    timings.sort()
    return {"mean": statistics.fmean(timings), "p50": timings[len(timings) // 2],
            "p99": timings[int(len(timings) * 0.99)]}


def report(name: str, figures: dict[str, float]) -> None:
    print(f"{name:<22} mean {figures['mean']:8.0f} µs   p50 {figures['p50']:8.0f} µs   p99 {figures['p99']:8.0f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checks", type=int, default=3000)
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        migrate(url)
        engine = make_engine(url)
        report("database (SQLite)", measure(Limiter(DatabaseStorage(engine)), args.checks))
        engine.dispose()

    if not args.sqlite_only:
        admin = sa.create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
        name = f"bench_ratelimit_{uuid.uuid4().hex[:10]}"
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        except sa.exc.OperationalError:
            print("database (PostgreSQL)  skipped: no server on 127.0.0.1:5432")
        else:
            url = POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/{name}"
            try:
                migrate(url)
                engine = make_engine(url)
                report("database (PostgreSQL)", measure(Limiter(DatabaseStorage(engine)), args.checks))
                engine.dispose()
            finally:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
        admin.dispose()

        import redis

        prefix = f"bench-ratelimit-{uuid.uuid4().hex}"
        client = redis.Redis.from_url(REDIS)
        try:
            client.ping()
        except redis.RedisError:
            print("redis                  skipped: no server on 127.0.0.1:6379")
        else:
            try:
                report("redis", measure(Limiter(redis_storage(REDIS, key_prefix=prefix)), args.checks))
            finally:
                for key in client.scan_iter(f"{prefix}:*", count=1000):
                    client.delete(key)


if __name__ == "__main__":
    main()
