"""How many messages may go now: per second and per rolling hour and day, shared by
every worker through the send_windows table (the database is already the one
thing all workers share; a Redis-only limiter would add a service to run)."""
from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.db import dialect_insert, is_postgres
from mailer.models import SendWindow

# Any constant: serialises budget decisions across workers on PostgreSQL.
_BUDGET_LOCK_KEY = 0x6D6C7262


@dataclasses.dataclass(frozen=True)
class Limits:
    per_second: int = 0  # 0: no limit
    per_hour: int = 0
    per_day: int = 0


@dataclasses.dataclass(frozen=True)
class Grant:
    count: int
    # When nothing (more) may go: the moment to try again.
    retry_at: dt.datetime | None = None


def _tenth(now: dt.datetime) -> dt.datetime:
    """The 100 ms slot of `now` (the per-second limit counts in slots)."""
    return now.replace(microsecond=now.microsecond // 100_000 * 100_000)


def _minute(now: dt.datetime) -> dt.datetime:
    return now.replace(second=0, microsecond=0)


def _sent_since(session: Session, since: dt.datetime) -> int:
    return session.scalar(sa.select(sa.func.coalesce(sa.func.sum(SendWindow.count), 0)).where(
        SendWindow.granularity == "m", SendWindow.start > since)) or 0


def take(session: Session, wanted: int, limits: Limits, now: dt.datetime) -> Grant:
    """Reserve up to `wanted` sends under the hourly and daily limits and count them.
    The windows count whole minutes, so the rolling hour and day are exact to the minute."""
    _lock(session)
    granted, retry_at = wanted, None
    minute = _minute(now)
    for limit, span in ((limits.per_hour, dt.timedelta(hours=1)), (limits.per_day, dt.timedelta(days=1))):
        if limit:
            room = limit - _sent_since(session, minute - span)
            if room < granted:
                granted = max(room, 0)
                retry_at = minute + dt.timedelta(minutes=1)  # the oldest minute leaves the window
    if granted:
        _count(session, "m", minute, granted)
    return Grant(granted, retry_at if granted < wanted else None)


def take_one_this_second(session: Session, per_second: int, now: dt.datetime) -> dt.datetime | None:
    """Claim one send just before it goes out. None when claimed; otherwise the moment to
    try again. The window is the current 100 ms slot and the ten before it: any real
    one-second span lies within those eleven slots, so no span holds more than the limit."""
    _lock(session)
    slot = _tenth(now)
    last_second = session.scalar(sa.select(sa.func.coalesce(sa.func.sum(SendWindow.count), 0)).where(
        SendWindow.granularity == "s", SendWindow.start >= slot - dt.timedelta(seconds=1))) or 0
    if last_second >= per_second:
        return slot + dt.timedelta(milliseconds=100)
    _count(session, "s", slot, 1)
    return None


def _lock(session: Session) -> None:
    if is_postgres(session):
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(_BUDGET_LOCK_KEY)))


def _count(session: Session, granularity: str, start: dt.datetime, n: int) -> None:
    stmt = dialect_insert(session, SendWindow).values(granularity=granularity, start=start, count=n)
    session.execute(stmt.on_conflict_do_update(
        index_elements=["granularity", "start"], set_={"count": SendWindow.__table__.c.count + n}))


def forget_old_windows(session: Session, now: dt.datetime) -> None:
    """Sub-second rows matter for a second, per-minute rows for a day (and the metrics)."""
    session.execute(sa.delete(SendWindow).where(sa.or_(
        sa.and_(SendWindow.granularity == "s", SendWindow.start < now - dt.timedelta(minutes=1)),
        sa.and_(SendWindow.granularity == "m", SendWindow.start < now - dt.timedelta(days=2)),
    )))
