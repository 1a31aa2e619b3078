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
