"""Console jobs (a CSV import): stored by the page that starts them, claimed by a worker under
a lease, run with their progress saved on the row, and finished with a report. The upload is
kept in the database (job_uploads, ~1 MB pieces), so a worker on any host can run the job."""
from __future__ import annotations

import codecs
import csv
import dataclasses
import datetime as dt
import io
import json
import logging
from pathlib import Path
from typing import BinaryIO, Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audience import bulk, consent, imports
from mailer.db import session_scope
from mailer.db import take_singleton
from mailer.errors import InvalidInput, NotFound
from mailer.models import Job, JobStatus, JobUpload, MailingList

IMPORT = "import"
LEASE = dt.timedelta(seconds=120)  # renewed at every checkpoint (each few thousand rows)
MAX_ATTEMPTS = 3  # a job that stopped this often without finishing is given up
RETRY_AFTER = dt.timedelta(seconds=30)  # after an unexpected error
BLOCK = 1 << 16
UPLOAD_PIECE = 1 << 20  # bytes per job_uploads row
log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another worker took the job over (this one was too slow); stop without writing."""


def uploads_dir(settings) -> Path:
    """Where uploads were kept before they moved into the database (jobs queued before
    migration 0011 still read their file from here)."""
    return Path(settings.instance_path) / "uploads"


def create_import(session: Session, settings, upload: BinaryIO, *, filename: str, list_slug: str,
                  consent_note: str, user_id: int | None, now: dt.datetime) -> Job:
    """Check the request, store the upload with the job and queue it, in the caller's
    transaction: a refused file or a failed commit leaves nothing behind. The file must be
    UTF-8 text with an email column; `total` is its number of lines after the header."""
    note = imports.consent_note_or_refuse(consent_note)
    mailing_list = session.scalar(sa.select(MailingList).where(MailingList.slug == list_slug))
    if mailing_list is None:
        raise InvalidInput("list", "Choose a list to import into.")
    imports.refuse_archived(mailing_list)
    job = Job(kind=IMPORT, status=JobStatus.QUEUED, user_id=user_id, total=0, done=0, created_at=now,
              params=json.dumps({"list": mailing_list.slug, "list_name": mailing_list.name, "consent_note": note,
                                 "filename": filename[:200]}))
    session.add(job)
    session.flush()
    lines = _store_checked(upload, _UploadWriter(session, job.id))
    job.total = max(lines - 1, 0)
    return job


class _UploadWriter:
    """Writes what it is given as job_uploads rows of UPLOAD_PIECE bytes: at most one piece
    is held in memory (the web server has spooled the request body to a file already)."""

    def __init__(self, session: Session, job_id: int):
        self.session, self.job_id, self.seq, self.pending = session, job_id, 0, bytearray()

    def write(self, block: bytes) -> None:
        self.pending += block
        while len(self.pending) >= UPLOAD_PIECE:
            self._insert(bytes(self.pending[:UPLOAD_PIECE]))
            del self.pending[:UPLOAD_PIECE]

    def close(self) -> None:
        if self.pending:
            self._insert(bytes(self.pending))
            self.pending.clear()

    def _insert(self, piece: bytes) -> None:
        self.session.execute(sa.insert(JobUpload).values(job_id=self.job_id, seq=self.seq, data=piece))
        self.seq += 1


class _UploadReader(io.RawIOBase):
    """A stored upload as a binary file, fetched one piece at a time, each in its own short
    read-only transaction (so a long import holds no read open)."""

    def __init__(self, session_factory, job_id: int):
        self.session_factory, self.job_id, self.seq, self.piece, self.position = session_factory, job_id, 0, b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.position >= len(self.piece):
            with self.session_factory() as session:
                session.connection(execution_options={"read_only": True})  # SQLite: no write lock for this
                piece = session.scalar(sa.select(JobUpload.data).where(JobUpload.job_id == self.job_id,
                                                                       JobUpload.seq == self.seq))
            if not piece:
                return 0
            self.piece, self.position, self.seq = piece, 0, self.seq + 1
        size = min(len(buffer), len(self.piece) - self.position)
        buffer[:size] = self.piece[self.position:self.position + size]
        self.position += size
        return size


def _open_upload(session_factory, job_id: int, file_path: str | None):
    """The job's upload as text lines for the csv module; a job queued before uploads moved
    into the database reads its file."""
    raw = open(file_path, "rb") if file_path else io.BufferedReader(_UploadReader(session_factory, job_id), BLOCK)
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


def _forget_upload(session: Session, job_id: int) -> None:
    session.execute(sa.delete(JobUpload).where(JobUpload.job_id == job_id))


def _store_checked(upload: BinaryIO, out) -> int:
    """Copy the upload to `out` (write, close), refusing what is not UTF-8 CSV text; the
    number of lines."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    lines, head, last = 0, "", b"\n"
    while block := upload.read(BLOCK):
        if b"\0" in block:
            raise InvalidInput("file", "That is not a CSV file (it holds binary data). Export the list "
                                       "as CSV (UTF-8) and try again.")
        try:
            text = decoder.decode(block)
        except UnicodeDecodeError:
            raise InvalidInput("file", "The file is not UTF-8 text. Save it as “CSV UTF-8” and try again.") \
                from None
        if len(head) < 4096:
            head += text[:4096]
        lines += block.count(b"\n")
        last = block[-1:]
        out.write(block)
    out.close()
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InvalidInput("file", "The file is not UTF-8 text. Save it as “CSV UTF-8” and try again.") from None
    if not head.strip():
        raise InvalidInput("file", "The file is empty.")
    try:
        header = next(csv.reader([head.splitlines()[0]]))
    except csv.Error:
        header = []
    imports.columns(header)
    return lines + (last != b"\n")


def claim_next(session: Session, *, owner: str, now: dt.datetime) -> int | None:
    """Lease the oldest queued job, or one whose worker stopped renewing its lease (killed,
    or an unexpected error). The UPDATE repeats the condition, so of two workers that pick
    the same row one wins. A job taken MAX_ATTEMPTS times already is failed instead."""
    claimable = sa.or_(Job.status == JobStatus.QUEUED,
                       sa.and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now))
    while True:
        candidate = session.execute(sa.select(Job.id, Job.attempts, Job.error, Job.file_path).where(claimable)
                                    .order_by(Job.id).limit(1)).first()
        if candidate is None:
            return None
        job_id, attempts, last_error, path = candidate
        if attempts >= MAX_ATTEMPTS:
            _give_up(session, job_id, attempts, last_error, path, claimable, now)
            continue
        claimed = session.execute(sa.update(Job).where(Job.id == job_id, claimable).values(
            status=JobStatus.RUNNING, lease_owner=owner, lease_expires_at=now + LEASE, attempts=Job.attempts + 1,
            started_at=sa.func.coalesce(Job.started_at, now))).rowcount
        return job_id if claimed else None


def _give_up(session: Session, job_id: int, attempts: int, last_error: str | None, path: str | None, claimable,
             now: dt.datetime) -> None:
    why = f" (the last time: {last_error})" if last_error else ""
    failed = session.execute(sa.update(Job).where(Job.id == job_id, claimable).values(
        status=JobStatus.FAILED, finished_at=now, lease_owner=None, lease_expires_at=None,
        error=f"The import stopped {attempts} times without finishing{why}, so it was given up. The rows "
              "imported before stay imported; upload the file again to import the rest.")).rowcount
    if failed:
        _forget_upload(session, job_id)
        if path:
            Path(path).unlink(missing_ok=True)


def _stopped_unexpectedly(session_factory, job_id: int, owner: str, exc: Exception, now: dt.datetime) -> None:
    """Keep the job for another try a little later; only the error's kind is kept, since its
    text may quote a row of the file (an address)."""
    log.error("job %s stopped: %s", job_id, type(exc).__name__)
    try:
        with session_scope(session_factory) as session:
            session.execute(sa.update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(
                error=f"an unexpected error ({type(exc).__name__})", lease_expires_at=now + RETRY_AFTER))
    except Exception:  # the database itself is away: the lease runs out and the job is retried then
        log.error("job %s: could not record the error", job_id)


def run_import(session_factory, settings, job_id: int, *, owner: str, clock: Callable[[], dt.datetime]) -> None:
    """Run a claimed import to its end. After each chunk the report so far is saved in the
    chunk's own transaction, so a re-run after a crash resumes exactly where the data is."""
    with session_scope(session_factory) as session:
        job = session.get(Job, job_id)
        params, path = json.loads(job.params), job.file_path
        resume = imports.ImportReport(**json.loads(job.report)) if job.done else None

    def checkpoint(session: Session, report: imports.ImportReport) -> None:
        renewed = session.execute(sa.update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(
            done=report.rows, report=_json(report), lease_expires_at=clock() + LEASE)).rowcount
        if not renewed:
            raise LeaseLost(job_id)

    try:
        with _open_upload(session_factory, job_id, path) as lines:
            report = imports.import_csv(session_factory, settings, lines, list_slug=params["list"],
                                        consent_note=params["consent_note"], now=clock(),
                                        source=f"import:job-{job_id}:{params['filename']}",
                                        resume=resume, checkpoint=checkpoint)
    except LeaseLost:
        log.warning("import job %s: lease lost to another worker; stopped", job_id)
        return
    except (InvalidInput, OSError, UnicodeDecodeError, csv.Error) as exc:
        _finish(session_factory, job_id, owner, clock(), status=JobStatus.FAILED,
                error=getattr(exc, "message", None) or str(exc))
        return
    except Exception as exc:
        _stopped_unexpectedly(session_factory, job_id, owner, exc, clock())
        return
    _finish(session_factory, job_id, owner, clock(), status=JobStatus.DONE, report=report)


def _finish(session_factory, job_id, owner, now, *, status, report=None, error=None) -> None:
    with session_scope(session_factory) as session:
        job = session.get(Job, job_id)
        if job.lease_owner != owner:
            return
        values = dict(status=status, error=error, finished_at=now, lease_owner=None, lease_expires_at=None)
        if report is not None:
            values.update(report=_json(report), done=report.rows, total=report.rows)
        session.execute(sa.update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(**values))
        _forget_upload(session, job_id)
        path = job.file_path
    if path:  # a job queued before uploads moved into the database
        Path(path).unlink(missing_ok=True)


def _json(report: imports.ImportReport) -> str:
    return json.dumps(dataclasses.asdict(report))


def run_due(session_factory, settings, *, owner: str, clock: Callable[[], dt.datetime]) -> int:
    """Run queued jobs (and ones a dead worker left) one after another; how many ran."""
    ran = 0
    while True:
        with session_scope(session_factory) as session:
            job_id = claim_next(session, owner=owner, now=clock())
            kind = session.get(Job, job_id).kind if job_id is not None else None
        if job_id is None:
            return ran
        if kind == IMPORT:
            run_import(session_factory, settings, job_id, owner=owner, clock=clock)
        else:
            run_bulk(session_factory, settings, job_id, owner=owner, clock=clock)
        ran += 1


# Bulk actions on a segment or a search result ----------------------------------------------

BULK = "bulk"


def create_bulk(session: Session, action: bulk.Plan, *, user_id: int | None, user_email: str,
                now: dt.datetime) -> Job:
    """Queue a bulk action staff confirmed (bulk.plan counted it): what picks the contacts
    is frozen in the job, so it acts on the segment or search result as it was counted."""
    job = Job(kind=BULK, status=JobStatus.QUEUED, user_id=user_id, total=action.count, done=0, created_at=now,
              params=json.dumps({**action.as_params(), "by": user_email}),
              report=json.dumps({"after_id": 0, "changed": 0}))
    session.add(job)
    session.flush()
    return job


def run_bulk(session_factory, settings, job_id: int, *, owner: str, clock: Callable[[], dt.datetime]) -> None:
    """Run a claimed bulk job a chunk of contacts per transaction, saving the last id done
    in the same transaction, so a re-run after a crash goes on from there."""
    from mailer import privacy
    from mailer.campaigns import sequences

    with session_scope(session_factory) as session:
        job = session.get(Job, job_id)
        params = json.loads(job.params)
    context = consent.RequestContext(source_url=f"staff:{params['by']}", note=f"bulk job {job_id}")
    try:
        while True:
            with session_scope(session_factory) as session:
                job = session.get(Job, job_id)
                report = json.loads(job.report)
                ids = bulk.members_after(session, params, report["after_id"])
                if not ids:
                    break
                if params["action"] == bulk.UNSUBSCRIBE:
                    changed = bulk.unsubscribe(session, ids, params["list_id"], context=context, now=clock())
                elif params["action"] == bulk.ENROL:
                    changed = sequences.enrol_selected(session, params["sequence_id"], ids, clock())
                else:
                    for contact_id in ids:
                        privacy.erase_contact(session, settings, contact_id, now=clock())
                    changed = len(ids)
                report = {"after_id": ids[-1], "changed": report["changed"] + changed}
                renewed = session.execute(sa.update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(
                    done=Job.done + len(ids), report=json.dumps(report), lease_expires_at=clock() + LEASE)).rowcount
                if not renewed:
                    raise LeaseLost(job_id)
    except LeaseLost:
        log.warning("bulk job %s: lease lost to another worker; stopped", job_id)
        return
    except Exception as exc:
        _stopped_unexpectedly(session_factory, job_id, owner, exc, clock())
        return
    with session_scope(session_factory) as session:
        session.execute(sa.update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(
            status=JobStatus.DONE, finished_at=clock(), lease_owner=None, lease_expires_at=None, total=Job.done))


def bulk_jobs(session: Session, segment_id: int, limit: int = 10) -> list[dict]:
    """The latest bulk jobs on a segment, as the segment's page shows them."""
    rows = session.scalars(sa.select(Job).where(Job.kind == BULK, Job.params.like(f'%"segment_id": {segment_id},%'))
                           .order_by(Job.id.desc()).limit(limit))
    return [describe_bulk(job) for job in rows]


def describe_bulk(job: Job) -> dict:
    params, report = json.loads(job.params), json.loads(job.report or "{}")
    words = {bulk.UNSUBSCRIBE: f"unsubscribe from {params.get('list_name')}",
             bulk.ENROL: f"add to automation {params.get('sequence_name')}", bulk.ERASE: "erase"}
    return {"id": job.id, "status": job.status, "done": job.done, "total": job.total, "action": params["action"],
            "what": words.get(params["action"], params["action"]), "segment_id": params.get("segment_id"),
            "list": params.get("list_name"), "changed": report.get("changed", 0), "error": job.error,
            "finished": job.status in (JobStatus.DONE, JobStatus.FAILED), "created_at": job.created_at,
            "finished_at": job.finished_at}


def get_bulk_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.kind != BULK:
        raise NotFound(f"No bulk job {job_id}.")
    return job


REPORT_KEPT = dt.timedelta(days=30)


def forget_old_examples(session: Session, now: dt.datetime) -> int:
    """Finished imports keep their counts, but the rows quoted as invalid (text that may be
    someone's mistyped address) only for REPORT_KEPT. Returns how many reports were trimmed.
    One worker at a time: it rewrites what it read."""
    if not take_singleton(session, "forget-old-import-examples"):
        return 0
    trimmed = 0
    for job in session.scalars(sa.select(Job).where(
            Job.status.in_((JobStatus.DONE, JobStatus.FAILED)), Job.finished_at < now - REPORT_KEPT,
            Job.report.like('%"invalid": ["%'))):
        report = json.loads(job.report)
        report["examples"] = {key: [] for key in report.get("examples", {})}
        job.report = json.dumps(report)
        trimmed += 1
    return trimmed


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.kind != IMPORT:
        raise NotFound(f"No import {job_id}.")
    return job


def recent_imports(session: Session, limit: int = 20) -> list[Job]:
    return list(session.scalars(sa.select(Job).where(Job.kind == IMPORT).order_by(Job.id.desc()).limit(limit)))


def describe(job: Job) -> dict:
    """What the pages and the progress poller show of a job."""
    params, report = json.loads(job.params), json.loads(job.report or "{}")
    return {"id": job.id, "status": job.status, "done": job.done, "total": job.total,
            "finished": job.status in (JobStatus.DONE, JobStatus.FAILED), "error": job.error,
            "filename": params.get("filename"), "list": params.get("list_name") or params.get("list"),
            "consent_note": params.get("consent_note"),
            "figures": {key: report.get(key, 0) for key in ("rows", "imported", "duplicate", "invalid", "suppressed")},
            "invalid_examples": report.get("examples", {}).get("invalid", []),
            "unknown_columns": report.get("unknown_columns", []),
            "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at}
