"""APScheduler wiring for the worker. The scheduler is only a clock: every job
reads what is due from the database and writes its result back idempotently."""
from __future__ import annotations

import datetime as dt
import logging

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from mailer import contacts, jobs, newsletters, send_budget, webinars
from mailer.db import session_scope, utcnow

log = logging.getLogger(__name__)


def send_due(sender) -> None:
    result = sender.drain()
    if result.claimed:
        log.info("sent %d, deferred %d, failed %d, skipped %d", result.sent, result.deferred, result.failed,
                 result.skipped)


def process_signups(mailer, scheduler) -> None:
    processed = mailer.process_signups()
    if processed:
        log.info("processed %d signups", processed)
        scheduler.get_job("send-due").modify(next_run_time=utcnow())  # send their confirmations now


def start_newsletters(mailer, scheduler) -> None:
    """Scheduled issues whose time has come start sending; finished ones are marked sent."""
    now = utcnow()
    with session_scope(mailer.sessions) as session:
        started = newsletters.start_due(session, now)
        newsletters.finish_sent(session, now)
        warned = newsletters.warn_unready(session, mailer.settings, now)
    if warned:
        log.warning("no newsletter ready for %s: staff warned", ", ".join(warned))
    if started:
        log.info("started sending newsletters %s", started)
        scheduler.get_job("send-due").modify(next_run_time=utcnow())


def queue_webinar_mail(mailer, scheduler) -> None:
    """Reminders due soon and follow-ups of ended webinars go into the outbox."""
    with session_scope(mailer.sessions) as session:
        queued = webinars.materialise(session, utcnow())
    if queued:
        log.info("queued %d webinar reminders and follow-ups", queued)
        scheduler.get_job("send-due").modify(next_run_time=utcnow())


def purge_expired_signups(mailer) -> None:
    with session_scope(mailer.sessions) as session:
        purged = contacts.purge_expired_pending(session, mailer.settings, utcnow())
        send_budget.forget_old_windows(session, utcnow())
        jobs.forget_old_examples(session, utcnow())
    if purged:
        log.info("purged %d unconfirmed signups", purged)


def run_console_jobs(mailer, worker_id: str) -> None:
    """Imports started on the staff pages (one at a time; a long one delays the next tick only)."""
    ran = jobs.run_due(mailer.sessions, mailer.settings, owner=worker_id, clock=utcnow)
    if ran:
        log.info("ran %d console jobs", ran)


def periodic_jobs(mailer, sender, scheduler) -> list[dict]:
    """Every periodic job in one list, registered at start-up."""
    return [
        dict(id="process-signups", func=process_signups, args=[mailer, scheduler], trigger="interval", seconds=1),
        dict(id="start-newsletters", func=start_newsletters, args=[mailer, scheduler], trigger="interval",
             seconds=10),
        dict(id="webinar-mail", func=queue_webinar_mail, args=[mailer, scheduler], trigger="interval", seconds=30),
        dict(id="send-due", func=send_due, args=[sender], trigger="interval",
             seconds=mailer.settings.send_interval_seconds),
        dict(id="purge-expired-signups", func=purge_expired_signups, args=[mailer], trigger="interval", hours=1),
        dict(id="console-jobs", func=run_console_jobs, args=[mailer, sender.worker_id], trigger="interval",
             seconds=2, max_instances=1),
    ]


def build_scheduler(mailer, sender, *, blocking: bool):
    cls = BlockingScheduler if blocking else BackgroundScheduler
    scheduler = cls(timezone=dt.timezone.utc,
                    job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60})
    for job in periodic_jobs(mailer, sender, scheduler):
        scheduler.add_job(replace_existing=True, next_run_time=utcnow(), **job)
    return scheduler
