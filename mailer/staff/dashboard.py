"""Figures for the staff dashboard: subscribers over time, this month's growth and
unsubscribes, what goes out next, and the health of the queue.

Subscribers over time come from the subscriptions themselves: a subscription counts from
its confirmation until it ends, so the active count at any past instant is today's count
minus what was gained since plus what was lost since. Changes are counted per UTC quarter
hour in the database and folded into days in the organiser's zone here, so days follow DST
and start on time in zones a half or three quarters of an hour off UTC (Kolkata, Adelaide,
Kathmandu)."""
from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.expression import FunctionElement

from mailer.campaigns import newsletters, webinars
from mailer.staff import metrics
from mailer.models import (MailingList, Newsletter, NewsletterStatus, Rhythm, Subscription, SubscriptionStatus,
                           Webinar)

HISTORY_DAYS = 90
# Every UTC offset and DST change in use is a whole number of quarter hours (+05:45 is the
# finest), so each quarter hour lies within one local day of every zone; whole hours did not.
BUCKET_SECONDS = 15 * 60


class utc_quarter_hour(FunctionElement):
    """The quarter hour a naive-UTC timestamp falls in, as an integer on both databases:
    whole quarter hours since 1970-01-01 00:00 UTC."""

    type = sa.BigInteger()
    inherit_cache = True


@compiles(utc_quarter_hour)
def _utc_quarter_hour_sqlite(element, compiler, **kw):
    return "CAST(strftime('%%s', %s) AS INTEGER) / %d" % (compiler.process(element.clauses, **kw), BUCKET_SECONDS)


@compiles(utc_quarter_hour, "postgresql")
def _utc_quarter_hour_postgres(element, compiler, **kw):
    # A timestamp without time zone: its epoch is read as UTC whatever the session's TimeZone.
    return "CAST(floor(extract(epoch FROM %s) / %d) AS BIGINT)" % (
        compiler.process(element.clauses, **kw), BUCKET_SECONDS)


@dataclasses.dataclass(frozen=True)
class Day:
    date: dt.date
    active: int  # at the end of the day
    gained: int
    lost: int


def _changes_per_quarter_hour(session: Session, column, since: dt.datetime, *conditions) -> dict[dt.datetime, int]:
    bucket = utc_quarter_hour(column)
    rows = session.execute(sa.select(bucket, sa.func.count()).where(column >= since, *conditions).group_by(bucket))
    return {dt.datetime.fromtimestamp(quarter * BUCKET_SECONDS, dt.timezone.utc): n for quarter, n in rows}


def _list_filter(list_id: int | None):
    return (Subscription.list_id == list_id,) if list_id is not None else ()


def active_count(session: Session, list_id: int | None = None) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(Subscription).where(
        Subscription.status == SubscriptionStatus.ACTIVE, *_list_filter(list_id)))


def gains_and_losses(session: Session, since: dt.datetime, list_id: int | None = None):
    """Confirmations and ends of subscriptions since `since`, per UTC quarter hour (its start)."""
    gained = _changes_per_quarter_hour(
        session, Subscription.confirmed_at, since,
        Subscription.status.in_((SubscriptionStatus.ACTIVE, SubscriptionStatus.UNSUBSCRIBED)), *_list_filter(list_id))
    lost = _changes_per_quarter_hour(
        session, Subscription.unsubscribed_at, since, Subscription.status == SubscriptionStatus.UNSUBSCRIBED,
        Subscription.confirmed_at.is_not(None), *_list_filter(list_id))
    return gained, lost


def _local_midnight(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tz).astimezone(dt.timezone.utc)


def subscriber_figures(session: Session, *, now: dt.datetime, zone: str, days: int = HISTORY_DAYS,
                       list_id: int | None = None, active_now: int | None = None) -> tuple[list[Day], dict]:
    """Active subscriptions at the end of each of the last `days` local days (today so far last),
    and this month's gains and losses — both from one pass over the changes since the earlier start.
    `active_now`: today's count when the caller has it already (list_counts), else it is counted."""
    tz = ZoneInfo(zone)
    today = now.astimezone(tz).date()
    first = today - dt.timedelta(days=days - 1)
    month_from = _local_midnight(today.replace(day=1), tz)
    gained, lost = gains_and_losses(session, min(_local_midnight(first, tz), month_from), list_id)
    per_day = {first + dt.timedelta(days=i): [0, 0] for i in range(days)}
    month = {"gained": 0, "lost": 0}
    for changes, slot, name in ((gained, 0, "gained"), (lost, 1, "lost")):
        for quarter, n in changes.items():
            day = quarter.astimezone(tz).date()
            if day in per_day:
                per_day[day][slot] += n
            if quarter >= month_from:
                month[name] += n
    active = active_count(session, list_id) if active_now is None else active_now
    history = []
    for day in sorted(per_day, reverse=True):  # walk back from today's count
        g, lo = per_day[day]
        history.append(Day(day, active, g, lo))
        active = active - g + lo
    month["net"] = month["gained"] - month["lost"]
    return history[::-1], month


def list_counts(session: Session) -> list[tuple[MailingList, dict[str, int]]]:
    """Each list with its subscriptions per status (one GROUP BY on the (list, status) index)."""
    counts: dict[int, dict[str, int]] = {}
    for list_id, status, n in session.execute(
            sa.select(Subscription.list_id, Subscription.status, sa.func.count())
            .group_by(Subscription.list_id, Subscription.status)):
        counts.setdefault(list_id, {})[status] = n
    lists = session.scalars(sa.select(MailingList).order_by(MailingList.name)).all()
    return [(ml, {s.value: counts.get(ml.id, {}).get(s.value, 0) for s in SubscriptionStatus}) for ml in lists]


def next_newsletter(session: Session, now: dt.datetime) -> dict | None:
    """The next scheduled issue, or else the next date of an active monthly rhythm (with no issue ready)."""
    issue = session.scalars(sa.select(Newsletter).where(Newsletter.status == NewsletterStatus.SCHEDULED)
                            .order_by(Newsletter.send_at).limit(1)).first()
    if issue is not None:
        return {"newsletter": issue, "send_at": issue.send_at, "rhythm": None}
    upcoming = [(newsletters.next_occurrence(r, now), r)
                for r in session.scalars(sa.select(Rhythm).where(Rhythm.active.is_(True)))]
    if not upcoming:
        return None
    when, rhythm = min(upcoming, key=lambda pair: pair[0])
    return {"newsletter": None, "send_at": when, "rhythm": rhythm}


def latest_newsletters(session: Session, limit: int = 5) -> list[Newsletter]:
    return list(session.scalars(sa.select(Newsletter).order_by(Newsletter.id.desc()).limit(limit)))


def next_webinar(session: Session, now: dt.datetime) -> dict | None:
    found = webinars.upcoming(session, now, limit=1)
    if not found:
        return None
    webinar: Webinar = found[0]
    return {"webinar": webinar, "taken": webinars.seats_taken(session, webinar.id),
            "left": webinars.seats_left(session, webinar)}


def queue(session: Session, now: dt.datetime) -> dict:
    """Outbox counts per status, what is due now and how long it has waited, the send rate, failures."""
    due = metrics.due_summary(session, now)
    return {"counts": metrics.status_counts(session), "due": due.due, "oldest_due_seconds": due.oldest_due_seconds,
            "rate_per_second": metrics.send_rate_per_second(session, now),
            "failures": metrics.failure_counts(session)}
