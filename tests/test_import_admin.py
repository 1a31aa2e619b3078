"""Importing subscribers from the staff pages: upload, the worker's job, progress, the
report of skipped rows and why, refusals, a worker killed mid-job, roles; and the
sending progress of a newsletter."""
from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailer import scheduler
from mailer.delivery import suppression
from mailer.audience import imports
from mailer.campaigns import newsletters
from mailer.staff import jobs, users
from mailer.db import session_scope, utcnow
from mailer.models import AuditLog, ConsentEvent, Contact, Job, JobUpload, Subscription
from tests import browser_support
from tests.browser_support import TIMEOUT_MS, expect, live_app, nav_link, serving, shot
from tests.conftest import SECRET, signup
from tests.test_newsletter_admin import PASSWORD, compose, log_in, make_audience, text_of

ROOT = Path(__file__).resolve().parent.parent

NOTE = "Paper sign-up sheet at the clinic desk, 2024-2026"
CSV = b"""Email,Name
ann@example.com,Ann
bob@example.com,Bob
not-an-address,Nobody
ANN@example.com,Ann again
,Empty
carl@example.com,Carl
dora@example.com,Dora
"""


@pytest.fixture
def editor(app):
    return log_in(app, "editor@clinic.example", "editor")


def upload(staff, content: bytes = CSV, note: str = NOTE, filename: str = "people.csv", **extra):
    data = {"list": "newsletter", "consent_note": note, **extra}
    if content is not None:
        data["file"] = (io.BytesIO(content), filename)
    return staff.post("/admin/imports", data, content_type="multipart/form-data")


def figure(page: str, name: str) -> int:
    return int(re.search(rf'<td data-figure="{name}">(\d+)</td>', page).group(1))


def work(mailer, owner="worker-1", clock=utcnow) -> int:
    """What the worker's scheduler job does every 2 s."""
    return jobs.run_due(mailer.sessions, mailer.settings, owner=owner, clock=clock)


def uploads(mailer) -> list:
    """What is kept of uploads: (job, piece) rows in the database, and any file under the
    instance folder (there should be none: uploads live in the database)."""
    folder = jobs.uploads_dir(mailer.settings)
    with mailer.read_sessions() as session:
        pieces = [tuple(row) for row in session.execute(sa.select(JobUpload.job_id, JobUpload.seq))]
    return (sorted(folder.iterdir()) if folder.exists() else []) + pieces


def test_upload_then_the_worker_imports_and_the_report_says_what_was_skipped_and_why(app, editor, mailer, db, client):
    with session_scope(mailer.sessions) as session:
        suppression.suppress_address(session, mailer.settings, "carl@example.com", reason="hard_bounce", now=utcnow())
    signup(client, "dora@example.com")
    db.write(sa.update(Subscription).values(status="unsubscribed"))

    answer = upload(editor)
    assert answer.status_code == 303
    job_id = db.scalar(sa.select(Job.id))
    assert answer.headers["Location"] == f"/admin/imports/{job_id}"
    waiting = editor.get(f"/admin/imports/{job_id}").text
    # (text_of puts a space where a tag was: the note is in its own element for the page's poller)
    assert re.search(r"0 of 7 rows read ?; waiting for the worker ?\.", text_of(waiting))
    assert '<progress value="0" max="7"' in waiting
    assert 'src="/static/progress.js"' in waiting and '<meta http-equiv="refresh" content="3">' in waiting
    assert editor.get(f"/admin/imports/{job_id}/progress").json == {
        "status": "queued", "finished": False, "value": 0, "max": 7,
        "figures": {"rows": 0, "imported": 0, "duplicate": 0, "invalid": 0, "suppressed": 0}}
    assert uploads(mailer) == [(job_id, 0)]  # in the database, not under the instance folder

    scheduler.run_console_jobs(mailer, "worker-1")

    page = editor.get(f"/admin/imports/{job_id}").text
    assert '<span class="status status-done" data-status>done</span>' in page
    assert (figure(page, "imported"), figure(page, "duplicate"), figure(page, "invalid"), figure(page, "suppressed")) \
        == (2, 2, 2, 1)
    shown = text_of(page)
    assert "7 rows read." in shown
    assert "row 4: 'not-an-address' (An email address must have an @-sign.)" in shown
    assert "row 6: '' (no address)" in shown
    assert "someone who unsubscribed stays unsubscribed" in shown and "never added again" in shown
    assert "<progress" not in page and "progress.js" not in page and "refresh" not in page
    assert editor.get(f"/admin/imports/{job_id}/progress").json["finished"] is True
    # Suppressed never added, unsubscribed not re-activated, the new ones with the consent note.
    statuses = dict(db.execute(sa.select(Contact.email, Subscription.status).join(Subscription)))
    assert statuses == {"ann@example.com": "active", "bob@example.com": "active", "dora@example.com": "unsubscribed"}
    events = db.scalars(sa.select(ConsentEvent).where(ConsentEvent.action == "imported"))
    assert [e.note for e in events] == [NOTE, NOTE]
    assert {e.source_url for e in events} == {f"import:job-{job_id}:people.csv"}
    assert uploads(mailer) == []  # the upload is removed once done
    listing = text_of(editor.get("/admin/imports").text)
    assert "people.csv Monthly newsletter done 7 2 5" in listing
    assert db.scalar(sa.select(AuditLog.detail).where(AuditLog.action == "import")) \
        == f"job {job_id}: people.csv into newsletter"


def test_an_import_without_a_consent_note_is_refused(editor, mailer, db):
    for note in ("", "   ", "ok"):
        answer = upload(editor, note=note)
        assert answer.status_code == 400
        assert "Say how these people gave their consent" in text_of(answer.text)
    assert upload(editor, content=None, note="").status_code == 400  # said first, even with no file
    assert db.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
    assert uploads(mailer) == []


@pytest.mark.parametrize("content, message", [
    (None, "Choose a CSV file to import."),
    (b"", "The file is empty."),
    ("email\nj\u00e9r\u00f4me@example.com\n".encode("latin-1"), "The file is not UTF-8 text."),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "That is not a CSV file (it holds binary data)."),
    (b"who,when\nx@example.com,today\n", "The CSV needs an 'email' column."),
])
def test_a_file_that_is_not_a_usable_csv_is_refused_clearly(editor, mailer, db, content, message):
    answer = upload(editor, content=content)
    assert answer.status_code == 400
    assert message in text_of(answer.text)
    assert NOTE in answer.text  # what was typed is kept
    assert db.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
    assert uploads(mailer) == []


def test_an_unknown_list_is_refused(editor, db):
    answer = upload(editor, list="nope")
    assert answer.status_code == 400 and "Choose a list to import into." in answer.text


def test_a_large_file_is_accepted_and_one_over_the_limit_refused(editor, mailer, db, monkeypatch):
    big = b"email\n" + b"".join(b"person%07d@example.com\n" % i for i in range(80_000))  # ~2 MB, over the app's 1 MB
    assert upload(editor, content=big).status_code == 303
    assert db.scalar(sa.select(Job.total)) == 80_000
    from mailer.web.admin import import_admin
    monkeypatch.setattr(import_admin, "MAX_UPLOAD_MB", 1)
    refused = upload(editor, content=big)
    assert refused.status_code == 413
    assert "The file is larger than 1 MB." in text_of(refused.text)


def test_a_worker_killed_mid_import_is_replaced_and_the_result_is_the_same(editor, mailer, db, monkeypatch):
    monkeypatch.setattr(imports, "CHUNK", 2)
    monkeypatch.setattr(jobs, "UPLOAD_PIECE", 16)  # the resumed job reads from the start, piece by piece
    rows = [f"p{i}@example.com" for i in range(9)] + ["bad-1", "p0@example.com", "bad-2"]
    upload(editor, content=("email\n" + "\n".join(rows) + "\n").encode())
    job_id = db.scalar(sa.select(Job.id))

    class Killed(BaseException):
        """The process ends here: nothing after it runs (kill -9)."""

    progress: list[int] = []
    real_chunk = imports._import_chunk

    def chunk_then_maybe_die(*args, **kwargs):
        real_chunk(*args, **kwargs)
        progress.append(db.scalar(sa.select(Job.done)))
        if len(progress) == 3:
            raise Killed

    monkeypatch.setattr(imports, "_import_chunk", chunk_then_maybe_die)
    started = utcnow()
    with pytest.raises(Killed):
        work(mailer, "worker-1", clock=lambda: started)
    job = db.scalar(sa.select(Job))
    assert (job.status, job.lease_owner, job.done) == ("running", "worker-1", 6)
    assert editor.get(f"/admin/imports/{job_id}/progress").json["value"] == 6

    # While the lease runs, no other worker takes the job; once it has run out, one does.
    assert work(mailer, "worker-2", clock=lambda: started + jobs.LEASE / 2) == 0
    assert work(mailer, "worker-2", clock=lambda: started + jobs.LEASE * 2) == 1

    page = editor.get(f"/admin/imports/{job_id}").text
    assert (figure(page, "imported"), figure(page, "duplicate"), figure(page, "invalid"), figure(page, "suppressed")) \
        == (9, 1, 2, 0)
    assert "12 rows read." in text_of(page)
    # Saved after each chunk, and resumed from there: never back to the start. The trailing
    # invalid row is counted when the job finishes.
    assert progress == [2, 4, 6, 8, 11] and db.scalar(sa.select(Job.done)) == 12
    events = db.scalars(sa.select(ConsentEvent.contact_id).where(ConsentEvent.action == "imported"))
    assert len(events) == len(set(events)) == 9
    assert uploads(mailer) == []


def test_two_workers_never_run_the_same_job(editor, mailer, db):
    upload(editor)
    now = utcnow()
    with session_scope(mailer.sessions) as first, session_scope(mailer.sessions) as second:
        claimed = jobs.claim_next(first, owner="worker-1", now=now)
        assert claimed is not None
        first.commit()
        assert jobs.claim_next(second, owner="worker-2", now=now) is None
    assert db.scalar(sa.select(Job.lease_owner)) == "worker-1"


def test_worker_drain_finishes_queued_imports(editor, mailer, db):
    upload(editor)
    mailer.drain()
    assert db.scalar(sa.select(Job.status)) == "done"
    assert json.loads(db.scalar(sa.select(Job.report)))["imported"] == 4


def test_viewers_may_not_import(app, editor, db):
    viewer = log_in(app, "viewer@clinic.example", "viewer")
    assert ">Import</a>" not in viewer.get("/admin/").text and ">Import</a>" in editor.get("/admin/").text
    upload(editor)
    job_id = db.scalar(sa.select(Job.id))
    for path in ("/admin/imports", f"/admin/imports/{job_id}", f"/admin/imports/{job_id}/progress"):
        assert viewer.get(path).status_code == 403, path
    assert upload(viewer).status_code == 403
    assert db.scalar(sa.select(sa.func.count()).select_from(Job)) == 1
    assert app.test_client().get("/admin/imports").status_code == 302  # to the login page


def test_a_sending_newsletter_shows_its_progress(editor, mailer, smtp_server):
    make_audience(mailer, 3)
    newsletter_id = compose(editor)
    editor.post(f"/admin/newsletters/{newsletter_id}/send-now", {"confirm": "yes"})
    with session_scope(mailer.sessions) as session:
        newsletters.start_due(session, utcnow())
    page = editor.get(f"/admin/newsletters/{newsletter_id}").text
    assert '<progress value="0" max="3"' in page and "0 of 3 sent so far." in text_of(page)
    assert f'data-progress-url="/admin/newsletters/{newsletter_id}/progress"' in page
    state = editor.get(f"/admin/newsletters/{newsletter_id}/progress").json
    assert (state["finished"], state["value"], state["max"], state["figures"]["queued"]) == (False, 0, 3, 3)
    mailer.drain()
    state = editor.get(f"/admin/newsletters/{newsletter_id}/progress").json
    assert (state["finished"], state["value"], state["figures"]["sent"]) == (True, 3, 3)
    assert "<progress" not in editor.get(f"/admin/newsletters/{newsletter_id}").text


browser = browser_support.browser  # the shared Chromium (a pytest fixture)


@pytest.mark.parametrize("width", [1280, 390])
def test_in_a_browser_the_job_page_follows_the_import_to_its_report(database_url, tmp_path, browser, width):
    app, port = live_app(database_url, tmp_path)
    m = app.extensions["mailer"]
    with session_scope(m.sessions) as session:
        users.create_user(session, "editor@clinic.example", PASSWORD, "editor")
    csv_file = tmp_path / "clinic-list.csv"
    csv_file.write_bytes(CSV)
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    with serving(app, port) as base:
        page.goto(f"{base}/admin/login")
        page.get_by_label("Email").fill("editor@clinic.example")
        page.get_by_label("Password").fill(PASSWORD)
        with page.expect_navigation():
            page.get_by_role("button", name="Log in").click()
        nav_link(page, "Import").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Import subscribers")
        page.get_by_label("CSV file").set_input_files(str(csv_file))
        page.get_by_label("How did these people give their consent?").fill(NOTE)
        page.get_by_role("button", name="Import").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Import of clinic-list.csv")
        expect(page.locator("progress")).to_have_attribute("max", "7")
        shot(page, f"import-queued-{width}")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        work(m)  # the worker, meanwhile; the page's poller notices and shows the report
        expect(page.get_by_role("status")).to_contain_text("7 rows read.", timeout=TIMEOUT_MS)
        expect(page.locator('td[data-figure="imported"]')).to_have_text("4")
        expect(page.locator("progress")).to_have_count(0)
        shot(page, f"import-done-{width}")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
    context.close()
    m.engine.dispose()


def test_an_unexpected_error_is_retried_then_the_job_is_given_up_and_says_why(editor, mailer, db, monkeypatch):
    upload(editor)
    job_id = db.scalar(sa.select(Job.id))
    real_import = imports.import_csv
    failures = []

    def database_away(*args, **kwargs):
        failures.append(1)
        raise sa.exc.OperationalError("INSERT …", {"email": "ann@example.com"}, Exception("server closed"))

    monkeypatch.setattr(imports, "import_csv", database_away)
    start = utcnow()
    assert work(mailer, clock=lambda: start) == 1
    job = db.scalar(sa.select(Job))
    assert (job.status, job.attempts, job.error) == ("running", 1, "an unexpected error (OperationalError)")
    assert "ann@example.com" not in job.error  # the error's text may quote a row: only its kind is kept
    page = text_of(editor.get(f"/admin/imports/{job_id}").text)
    assert "Stopped once on an unexpected error (OperationalError); the worker tries again shortly." in page
    assert work(mailer, clock=lambda: start + jobs.RETRY_AFTER / 2) == 0  # not before the pause

    # A passing problem: the next try finishes the import with the usual report.
    monkeypatch.setattr(imports, "import_csv", real_import)
    assert work(mailer, clock=lambda: start + jobs.RETRY_AFTER * 2) == 1
    job = db.scalar(sa.select(Job))
    assert (job.status, job.attempts, job.error) == ("done", 2, None)
    assert json.loads(job.report)["imported"] == 4

    # One that stays: after MAX_ATTEMPTS tries the job fails, says why, and its upload is removed.
    upload(editor)
    second = db.scalar(sa.select(Job.id).order_by(Job.id.desc()))
    monkeypatch.setattr(imports, "import_csv", database_away)
    when = start + dt.timedelta(minutes=10)
    for attempt in range(jobs.MAX_ATTEMPTS):
        assert work(mailer, clock=lambda: when + jobs.RETRY_AFTER * 2 * attempt) == 1
    assert work(mailer, clock=lambda: when + jobs.RETRY_AFTER * 2 * jobs.MAX_ATTEMPTS) == 0
    job = db.scalar(sa.select(Job).where(Job.id == second))
    assert job.status == "failed" and job.attempts == jobs.MAX_ATTEMPTS
    assert job.error == ("The import stopped 3 times without finishing (the last time: an unexpected error "
                         "(OperationalError)), so it was given up. The rows imported before stay imported; "
                         "upload the file again to import the rest.")
    assert "The import stopped: The import stopped 3 times" in text_of(editor.get(f"/admin/imports/{second}").text)
    assert uploads(mailer) == [] and len(failures) == 4


def test_the_rows_quoted_as_invalid_are_forgotten_after_30_days_the_counts_stay(editor, mailer, db):
    upload(editor)
    work(mailer)
    finished = db.scalar(sa.select(Job.finished_at))
    assert json.loads(db.scalar(sa.select(Job.report)))["examples"]["invalid"] != []
    with session_scope(mailer.sessions) as session:
        assert jobs.forget_old_examples(session, finished + dt.timedelta(days=29)) == 0
    with session_scope(mailer.sessions) as session:
        assert jobs.forget_old_examples(session, finished + dt.timedelta(days=31)) == 1
    report = json.loads(db.scalar(sa.select(Job.report)))
    assert report["examples"] == {"invalid": []} and (report["imported"], report["invalid"]) == (4, 2)
    with session_scope(mailer.sessions) as session:
        assert jobs.forget_old_examples(session, finished + dt.timedelta(days=32)) == 0  # once


def test_a_worker_on_another_host_runs_an_import_uploaded_through_the_web_app(editor, mailer, db, database_url,
                                                                               tmp_path):
    """The worker's instance folder is not the web app's (as on another host): it reads the
    upload from the database, and nothing is kept on either host's disk."""
    assert upload(editor).status_code == 303
    job_id = db.scalar(sa.select(Job.id))
    other_host = tmp_path / "other-host"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_DATABASE_URL=database_url, MAILER_SECRET_KEY=SECRET, MAILER_INSTANCE_PATH=str(other_host))
    done = subprocess.run([sys.executable, "-m", "mailer", "worker", "--drain"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ran 1 console jobs (imports)" in done.stdout
    job = db.scalar(sa.select(Job))
    assert (job.id, job.status, json.loads(job.report)["imported"]) == (job_id, "done", 4)
    assert db.scalar(sa.select(sa.func.count()).select_from(Subscription)) == 4
    assert uploads(mailer) == []
    assert not (other_host / "uploads").exists() and not jobs.uploads_dir(mailer.settings).exists()


def test_an_upload_stored_in_many_pieces_reads_back_whole(editor, mailer, db, monkeypatch):
    monkeypatch.setattr(jobs, "UPLOAD_PIECE", 5)  # pieces split rows and multi-byte characters
    names = ["Zoë Ørsted", "李小龍", "José Müller", "Ann"]
    content = ("\ufeffEmail,Name\n" + "".join(f'p{i}@example.com,"{name}"\n' for i, name in enumerate(names))).encode()
    upload(editor, content=content)
    assert len(uploads(mailer)) == -(-len(content) // 5)
    assert work(mailer) == 1
    assert db.scalars(sa.select(Contact.name).order_by(Contact.id)) == names
    assert uploads(mailer) == []


def test_a_job_queued_before_uploads_moved_into_the_database_reads_its_file(mailer, db):
    """An install upgraded with a queued import (its upload a file under instance/uploads)."""
    folder = jobs.uploads_dir(mailer.settings)
    folder.mkdir(parents=True)
    (folder / "old.csv").write_bytes(CSV)
    params = {"list": "newsletter", "list_name": "Monthly newsletter", "consent_note": NOTE, "filename": "old.csv"}
    with session_scope(mailer.sessions) as session:
        session.add(Job(kind=jobs.IMPORT, status="queued", file_path=str(folder / "old.csv"), total=7, done=0,
                        params=json.dumps(params), created_at=utcnow()))
    assert work(mailer) == 1
    job = db.scalar(sa.select(Job))
    assert (job.status, json.loads(job.report)["imported"]) == ("done", 4)
    assert uploads(mailer) == []  # the file is removed when the job ends, as before
