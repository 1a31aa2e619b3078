"""CSV import speed: `python bench/import_contacts.py [ROWS]` (default 1,000,000) imports a
generated CSV into a fresh SQLite database and prints rows/s (target: 1,000,000 rows in
under 2 minutes)."""
from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCH_SECRET_KEY, use_project_python  # noqa: E402

use_project_python()

from mailer import build  # noqa: E402
from mailer.audience import imports  # noqa: E402
from mailer.db import migrate, session_scope, utcnow  # noqa: E402
from mailer.demo import ensure_default_list  # noqa: E402
from mailer.settings import load_settings  # noqa: E402


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as workdir:
        url = f"sqlite:///{workdir}/import.db"
        migrate(url)
        mailer = build(load_settings({"database_url": url, "secret_key": BENCH_SECRET_KEY, "instance_path": workdir}))
        with session_scope(mailer.sessions) as session:
            ensure_default_list(session)
        text = "email,name\n" + "".join(f"person{i}@example{i % 50}.com,Person {i}\n" for i in range(rows))
        started = time.perf_counter()
        report = imports.import_csv(mailer.sessions, mailer.settings, io.StringIO(text), list_slug="newsletter",
                                    consent_note="Paper signup forms at the clinic desk", source="bench",
                                    now=utcnow())
        seconds = time.perf_counter() - started
        mailer.engine.dispose()
    print(f"nproc {os.cpu_count()}; command: .venv/bin/python bench/import_contacts.py {rows}")
    print(f"{report.line()}")
    print(f"{seconds:.1f} s, {rows / seconds:,.0f} rows/s (target: 1,000,000 rows in under 120 s)")


if __name__ == "__main__":
    main()
