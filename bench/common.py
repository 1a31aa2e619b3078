"""What the benchmarks share: running under the project's virtualenv, with the project
importable, and a free port on 127.0.0.1. Standard library only, so it works before
the re-exec."""
from __future__ import annotations

import os
import shlex
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
# mailer refuses keys shorter than 32 characters.
BENCH_SECRET_KEY = "bench-secret-key-not-for-production-use"


def use_project_python() -> None:
    """Run again under .venv/bin/python when started with another interpreter (keeping
    the command as typed in BENCH_COMMAND, for the report), and make `mailer` importable."""
    if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve():
        os.environ.setdefault("BENCH_COMMAND", shlex.join(sys.orig_argv))
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), *sys.argv])
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def load_average() -> str:
    """The machine's 1, 5 and 15 minute load averages, for the report."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def git_state() -> str:
    """The commit measured, and whether the code it runs (mailer/, templates/, config/) had
    uncommitted changes."""
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "mailer", "templates", "config")
    return f"{head}{' + uncommitted changes in mailer/, templates/ or config/' if dirty else ''}"


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


PG_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432"


def on_scratch_postgres(prefix: str, measure):
    """measure(database_url) on a fresh PostgreSQL database <prefix>_<random>, dropped after;
    a sentence instead of figures when no server answers."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(f"{PG_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        try:
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # no server here: say so instead of a figure
            return f"PostgreSQL at {PG_SERVER_URL} is not reachable ({type(exc).__name__})"
        try:
            return measure(f"{PG_SERVER_URL}/{name}")
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            print(f"  dropped database {name}", flush=True)
    finally:
        admin.dispose()
