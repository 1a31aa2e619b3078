"""APScheduler wiring for the worker. The scheduler is only a clock: every job
reads what is due from the database and writes its result back idempotently."""
from __future__ import annotations

import datetime as dt
import logging

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.blocking import BlockingScheduler

from mailer.audience import checkpoints, contacts
from mailer.campaigns import blog, newsletters, sequences, webinars
from mailer.delivery import send_budget
from mailer.staff import jobs
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


def queue_sequence_mail(mailer, scheduler) -> None:
    """Triggers enrol people in sequences; steps that are due (in their readers' send
    windows) go into the outbox."""
    with session_scope(mailer.sessions) as session:
        queued = sequences.run(session, mailer.settings, utcnow())
    if queued:
        log.info("queued %d sequence mails", queued)
        scheduler.get_job("send-due").modify(next_run_time=utcnow())


def refresh_blog_feed(mailer) -> None:
    """Read the blog's feed into the cache when it is older than blog.FEED_REFRESH."""
    found = blog.refresh(mailer.sessions, mailer.refresh_settings(), now=utcnow())
    if found is not None and found.error:
        log.warning("the blog feed could not be read (see the settings page)")
    elif found is not None:
        log.info("read %d posts from the blog feed", len(found.posts))


def purge_expired_signups(mailer) -> None:
    with session_scope(mailer.sessions) as session:
        purged = contacts.purge_expired_pending(session, mailer.settings, utcnow())
        send_budget.forget_old_windows(session, utcnow())
        jobs.forget_old_examples(session, utcnow())
    if purged:
        log.info("purged %d unconfirmed signups", purged)


def mail_consent_checkpoint(mailer) -> None:
    """Each week, a signed checkpoint of the consent ledger to the owners (once per owner and week)."""
    with session_scope(mailer.sessions) as session:
        queued = checkpoints.queue_checkpoint_mail(session, mailer.settings, utcnow())
    if queued:
        log.info("queued the weekly consent checkpoint for %d owners", queued)


def read_bounce_mailbox(mailer) -> None:
    """Delivery status notifications in MAILER_BOUNCE_MAILBOX_URL: hard bounces suppressed,
    soft ones recorded, every message read then deleted (or moved)."""
    from mailer.delivery import bounce_mailbox

    try:
        counts = bounce_mailbox.read_bounce_mailbox(mailer.sessions, mailer.settings, clock=utcnow)
    except bounce_mailbox.MailboxError as exc:
        log.warning("bounce mailbox: %s", exc)
        return
    if counts.read:
        log.info("bounce mailbox: read %d (hard %d, soft %d, policy %d, unmatched %d, not bounces %d)",
                 counts.read, counts.hard, counts.soft, counts.policy, counts.unmatched, counts.not_bounces)


def run_console_jobs(mailer, worker_id: str) -> None:
    """Imports started on the staff pages (one at a time; a long one delays the next tick only)."""
    ran = jobs.run_due(mailer.sessions, mailer.settings, owner=worker_id, clock=utcnow)
    if ran:
        log.info("ran %d console jobs", ran)


# Every worker process (on every host) runs every job below. A job must therefore be safe to
# run by several workers at once; how each one is:
#   process-signups    rows claimed FOR UPDATE SKIP LOCKED (PostgreSQL), deleted as processed
#   start-newsletters  compare-and-set on the status (start, sent) and on Rhythm.warned_month
#   webinar-mail       take_singleton("webinar-mail"), and a dedupe key per mail
#   sequence-mail      take_singleton("sequence-mail"); a dedupe key per enrolment and step, UNIQUE
#                      (sequence, contact) for enrolments, and an UPDATE that only moves enrolments
#                      not yet past the step
#   send-due           deliveries claimed under a lease, SKIP LOCKED
#   purge-expired-...  take_singleton per step that rewrites what it read (purge, trimming reports);
#                      forgetting old send windows is one idempotent DELETE
#   console-jobs       a job row claimed under a lease (compare-and-set)
#   consent-checkpoint a dedupe key per owner and ISO week
#   blog-feed          compare-and-set on blog_feed.checked_at (one worker reads the feed per
#                      FEED_REFRESH); posts are upserted by their key, UNIQUE
#   bounce-mailbox     a unique key per notification and recipient (bounces.notice_key); messages
#                      are removed only after their transaction commits
# A new job whose effect must happen once (a weekly mail, processing rows): claim its rows
# FOR UPDATE SKIP LOCKED, or begin its domain function with
#     if not take_singleton(session, "<job id>"): return 0   # another worker is on it
# in the same write transaction as the work (mailer.db.take_singleton), so `worker --drain`
# and the CLI get the same guarantee; and give mail it queues a dedupe key.
def periodic_jobs(mailer, sender, scheduler) -> list[dict]:
    """Every periodic job in one list, registered at start-up."""
    return [
        dict(id="process-signups", func=process_signups, args=[mailer, scheduler], trigger="interval", seconds=1),
        dict(id="start-newsletters", func=start_newsletters, args=[mailer, scheduler], trigger="interval",
             seconds=10),
        dict(id="webinar-mail", func=queue_webinar_mail, args=[mailer, scheduler], trigger="interval", seconds=30),
        # Every few seconds: a welcome step is queued within ~5 s of the confirmation.
        dict(id="sequence-mail", func=queue_sequence_mail, args=[mailer, scheduler], trigger="interval", seconds=4),
        dict(id="send-due", func=send_due, args=[sender], trigger="interval",
             seconds=mailer.settings.send_interval_seconds),
        dict(id="purge-expired-signups", func=purge_expired_signups, args=[mailer], trigger="interval", hours=1),
        dict(id="console-jobs", func=run_console_jobs, args=[mailer, sender.worker_id], trigger="interval",
             seconds=2, max_instances=1),
        dict(id="consent-checkpoint", func=mail_consent_checkpoint, args=[mailer], trigger="interval", hours=6),
        dict(id="blog-feed", func=refresh_blog_feed, args=[mailer], trigger="interval", minutes=5),
        *([dict(id="bounce-mailbox", func=read_bounce_mailbox, args=[mailer], trigger="interval", seconds=60)]
          if mailer.settings.bounce_mailbox_url else []),
    ]


def build_scheduler(mailer, sender, *, blocking: bool):
    cls = BlockingScheduler if blocking else BackgroundScheduler
    scheduler = cls(timezone=dt.timezone.utc,
                    job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60})
    for job in periodic_jobs(mailer, sender, scheduler):
        scheduler.add_job(replace_existing=True, next_run_time=utcnow(), **job)
    return scheduler
