"""Console import, end to end: `python bench/console_import.py [ROWS]` (default 100,000) uploads a
generated CSV through the staff page (Flask test client, SQLite) and runs the job as the worker
does; prints the upload and the job time. `--upload-mb N` instead uploads an N MB file and prints
the web process's peak RSS (VmHWM) before and after the request."""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import use_project_python  # noqa: E402

use_project_python()

from mailer import create_app  # noqa: E402
from mailer.staff import jobs, users  # noqa: E402
from mailer.db import migrate, session_scope, utcnow  # noqa: E402
from mailer.demo import ensure_default_list  # noqa: E402

PASSWORD = "correct horse battery staple"


def rss_mb(field: str = "VmHWM") -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024


def reset_peak_rss() -> None:
    """From here on VmHWM is the peak since now (Linux: writing 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def staff_client(app):
    m = app.extensions["mailer"]
    with session_scope(m.sessions) as session:
        ensure_default_list(session)
        users.create_user(session, "editor@clinic.example", PASSWORD, "editor")
    client = app.test_client()
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/login").text).group(1)
    client.post("/admin/login", data={"email": "editor@clinic.example", "password": PASSWORD, "csrf_token": token})
    return client, re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/").text).group(1)


def write_csv(path: Path, *, rows: int | None = None, megabytes: int | None = None) -> int:
    written, size = 0, ((megabytes or 0) << 20) - 4096  # room for the form's other fields under the limit
    with path.open("w") as out:
        out.write("email,name\n")
        while (rows is not None and written < rows) or (megabytes is not None and out.tell() < size):
            out.write(f"person{written}@example{written % 50}.com,Person {written}\n")
            written += 1
    return written


def main() -> None:
    args = sys.argv[1:]
    upload_mb = int(args[args.index("--upload-mb") + 1]) if "--upload-mb" in args else None
    rows = int(args[0]) if args and not args[0].startswith("--") else 100_000
    with tempfile.TemporaryDirectory() as workdir:
        url = f"sqlite:///{workdir}/import.db"
        migrate(url)
        app = create_app({"database_url": url, "secret_key": "bench-secret-key-0123456789",
                          "instance_path": f"{workdir}/instance"})
        client, csrf = staff_client(app)
        csv_path = Path(workdir) / "people.csv"
        rows = write_csv(csv_path, megabytes=upload_mb) if upload_mb else write_csv(csv_path, rows=rows)
        reset_peak_rss()
        before = rss_mb("VmRSS")
        started = time.perf_counter()
        with csv_path.open("rb") as upload:
            answer = client.post("/admin/imports", data={"list": "newsletter", "csrf_token": csrf, "file": (
                upload, "people.csv"), "consent_note": "Paper signup forms at the clinic desk"},
                content_type="multipart/form-data")
        uploaded = time.perf_counter() - started
        assert answer.status_code == 303, answer.text[:2000]
        after = rss_mb("VmHWM")
        print(f"nproc {os.cpu_count()}; command: python bench/console_import.py {' '.join(args)}")
        if upload_mb:
            print(f"upload of {csv_path.stat().st_size / (1 << 20):.0f} MB ({rows:,} rows) in {uploaded:.1f} s; "
                  f"RSS {before:.0f} MB before the request, peak {after:.0f} MB during it (+{after - before:.0f} MB)")
        else:
            m = app.extensions["mailer"]
            started = time.perf_counter()
            jobs.run_due(m.sessions, m.settings, owner="bench", clock=utcnow)
            ran = time.perf_counter() - started
            with m.read_sessions() as session:
                job = jobs.describe(jobs.recent_imports(session)[0])
            print(f"{rows:,} rows: upload {uploaded:.1f} s, job {ran:.1f} s ({job['status']}, "
                  f"{job['figures']['imported']:,} imported), total {uploaded + ran:.1f} s")
        app.extensions["mailer"].engine.dispose()


if __name__ == "__main__":
    main()
