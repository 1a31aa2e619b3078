"""Operational numbers for /metrics and /healthz: a few grouped queries over the
outbox and the send windows, their Prometheus text exposition, and the health checks.

Every query counts on indexed columns (deliveries has ix_deliveries_due on
(status, next_attempt_at)) and returns a handful of rows, whatever the size of
the outbox; none loads delivery rows into Python."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.models import PENDING_DELIVERY, Delivery, DeliveryStatus, ErrorClass, SendWindow

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
QUEUE_STATUSES = (DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED, DeliveryStatus.SENDING)
FINAL_STATUSES = (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SUPPRESSED, DeliveryStatus.CANCELLED)
# Rows whose error class is still interesting: given up on, or waiting to be retried.
FAILURE_STATUSES = (DeliveryStatus.FAILED, DeliveryStatus.DEFERRED)
UNKNOWN_CLASS = "unknown"
# How long one transport check (an SMTP session: connect, NOOP, QUIT) answers for every
# /healthz of the process: load balancers probe every few seconds, and each probe must
# not open a session with the mail provider.
TRANSPORT_CHECK_SECONDS = 10.0

if TYPE_CHECKING:
    from mailer import Mailer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric family: samples keyed by a single label's value (or by None when unlabelled)."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    samples: dict[str | None, float]
    label: str | None = None


@dataclasses.dataclass(frozen=True)
class DueSummary:
    due: int
    oldest_due_seconds: float


# Queries ---------------------------------------------------------------------------

def status_counts(session: Session) -> dict[str, int]:
    """Deliveries per status, every status present (0 when none): one GROUP BY over the status index."""
    rows = session.execute(sa.select(Delivery.status, sa.func.count()).group_by(Delivery.status))
    counts = {status.value: 0 for status in DeliveryStatus}
    counts.update({status: count for status, count in rows})
    return counts


def failure_counts(session: Session) -> dict[str, int]:
    """Failed or deferred deliveries per error class; rows without a class count as "unknown"."""
    rows = session.execute(
        sa.select(Delivery.error_class, sa.func.count())
        .where(Delivery.status.in_(FAILURE_STATUSES))
        .group_by(Delivery.error_class)
    )
    counts = {cls.value: 0 for cls in ErrorClass}
    for error_class, count in rows:
        key = error_class or UNKNOWN_CLASS
        counts[key] = counts.get(key, 0) + count
    return counts


def _earliest_due(status: str, now: dt.datetime):
    # ORDER BY … LIMIT 1 per status is one index seek on (status, next_attempt_at), on both databases.
    return (sa.select(Delivery.next_attempt_at)
            .where(Delivery.status == status, Delivery.next_attempt_at <= now)
            .order_by(Delivery.next_attempt_at).limit(1).scalar_subquery())


def due_summary(session: Session, now: dt.datetime) -> DueSummary:
    """How many queued or deferred deliveries are due at `now`, and how long the oldest has waited."""
    due_count = (sa.select(sa.func.count()).select_from(Delivery)
                 .where(Delivery.status.in_(PENDING_DELIVERY), Delivery.next_attempt_at <= now).scalar_subquery())
    due, *earliest = session.execute(
        sa.select(due_count, *(_earliest_due(status, now) for status in PENDING_DELIVERY))).one()
    times = [when for when in earliest if when is not None]
    oldest = max((now - min(times)).total_seconds(), 0.0) if times else 0.0
    return DueSummary(due=due, oldest_due_seconds=round(oldest, 3))


def last_full_minute(now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Start and end of the last complete UTC minute before `now`."""
    end = now.astimezone(dt.timezone.utc).replace(second=0, microsecond=0)
    return end - dt.timedelta(minutes=1), end


def send_rate_per_second(session: Session, now: dt.datetime) -> float:
    """Messages handed to the SMTP server in the last full minute, per second (the sender's "m" windows)."""
    start, end = last_full_minute(now)
    sent = session.scalar(sa.select(sa.func.coalesce(sa.func.sum(SendWindow.count), 0)).where(
        SendWindow.granularity == "m", SendWindow.start >= start, SendWindow.start < end))
    return sent / 60


def queue_health(session: Session, now: dt.datetime) -> dict:
    """The queue part of /healthz."""
    summary = due_summary(session, now)
    return {"due": summary.due, "oldest_due_seconds": summary.oldest_due_seconds}


def collect(session: Session, now: dt.datetime) -> list[Metric]:
    """Every metric /metrics exposes, read in one session (one snapshot on SQLite's read transaction)."""
    statuses = status_counts(session)
    return [
        Metric("mailer_queue_depth", "gauge", "Deliveries waiting or in flight, by status.",
               {s.value: statuses[s] for s in QUEUE_STATUSES}, label="status"),
        Metric("mailer_deliveries_total", "counter",
               "Deliveries that reached a final status (rows in the outbox, never deleted).",
               {s.value: statuses[s] for s in FINAL_STATUSES}, label="status"),
        Metric("mailer_failures", "gauge", "Deliveries currently failed or deferred, by error class.",
               failure_counts(session), label="class"),
        Metric("mailer_oldest_due_seconds", "gauge",
               "Age of the oldest queued or deferred delivery that is due (0 when none).",
               {None: due_summary(session, now).oldest_due_seconds}),
        Metric("mailer_send_rate_per_second", "gauge", "Messages sent in the last full minute, per second.",
               {None: send_rate_per_second(session, now)}),
    ]


# Health ------------------------------------------------------------------------------

class CachedCheck:
    """A check (a callable that raises when something is wrong) run at most once per
    `seconds` in a process. Callers that come while it runs wait for it and share its
    outcome; a failure is kept as long as a success, so a mail server that is down is not
    asked at every probe either."""

    def __init__(self, check: Callable[[], None], seconds: float = TRANSPORT_CHECK_SECONDS,
                 clock: Callable[[], float] = time.monotonic):
        self.check, self.seconds, self.clock = check, seconds, clock
        self.error: str | None = None
        self.checked_at: float | None = None
        self._lock = threading.Lock()

    def __call__(self) -> str | None:
        """None when the last check passed, else what went wrong (runs it when too old)."""
        with self._lock:
            if self.checked_at is None or self.clock() - self.checked_at >= self.seconds:
                try:
                    self.check()
                    self.error = None
                except Exception as exc:
                    self.error = str(exc) or type(exc).__name__
                self.checked_at = self.clock()
            return self.error


@dataclasses.dataclass(frozen=True)
class Health:
    healthy: bool
    database_ok: bool
    checks: dict[str, str]  # what each check found: "ok", "ok (smtp)", "error: ..."
    queue: dict | None = None  # queue_health(), when asked for and readable


def check_health(mailer: "Mailer", now: dt.datetime, *, with_queue: bool) -> Health:
    """The database and the transport decide health; the queue figures only inform."""
    checks, queue = {}, None
    try:
        # A read: on SQLite a probe must not take (or wait for) the write lock during a long import.
        with mailer.read_sessions() as session:
            session.execute(sa.select(1))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    if with_queue and checks["database"] == "ok":
        try:
            with mailer.read_sessions() as session:
                queue = queue_health(session, now)
        except Exception:
            log.exception("healthz: could not read the queue")
    error = mailer.transport_check()
    checks["transport"] = f"ok ({mailer.transport.name})" if error is None else f"error: {error}"
    healthy = all(value.startswith("ok") for value in checks.values())
    return Health(healthy, checks["database"] == "ok", checks, queue)


# Exposition ------------------------------------------------------------------------

def format_value(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(metrics: list[Metric]) -> str:
    """The Prometheus text exposition format, version 0.0.4."""
    lines = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {metric.help}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for key, value in metric.samples.items():
            labels = "" if metric.label is None else f'{{{metric.label}="{_escape_label(key)}"}}'
            lines.append(f"{metric.name}{labels} {format_value(value)}")
    return "\n".join(lines) + "\n"
