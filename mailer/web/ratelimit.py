"""Request limits per client IP that every web process shares: a fixed-window counter
from the `limits` package (one atomic increment per request), kept in the database all
processes already use, or in Redis when MAILER_REDIS_URL is set."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time

import sqlalchemy as sa
from flask import current_app, make_response, request
from limits import RateLimitItemPerSecond
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter

from mailer.db import DriverStatement
from mailer.models import RateLimitCounter
from mailer.web import mailer

log = logging.getLogger(__name__)
_COUNTERS = RateLimitCounter.__table__
# Every this many increments a process deletes the windows that have ended, so the
# table holds only live counters without a scheduled job.
PRUNE_EVERY = 1000


def _increment_statement(insert):
    """INSERT … ON CONFLICT DO UPDATE … RETURNING for one counter, built once per storage
    with bound parameters (key, amount, expires_at, now), so a request only executes it."""
    stmt = insert(_COUNTERS).values(key=sa.bindparam("key"), hits=sa.bindparam("amount"),
                                    expires_at=sa.bindparam("expires_at"))
    ended = _COUNTERS.c.expires_at <= sa.bindparam("now", type_=_COUNTERS.c.expires_at.type)
    return stmt.on_conflict_do_update(index_elements=[_COUNTERS.c.key], set_={
        # Both read the row as it was: an ended window starts again from this hit.
        "hits": sa.case((ended, stmt.excluded.hits), else_=_COUNTERS.c.hits + stmt.excluded.hits),
        "expires_at": sa.case((ended, stmt.excluded.expires_at), else_=_COUNTERS.c.expires_at),
    }).returning(_COUNTERS.c.hits, _COUNTERS.c.expires_at)


def _counted_insert_statement(increment, table: sa.Table, columns: list[str]):
    """WITH counter AS (the increment … RETURNING), kept AS (INSERT INTO table SELECT the
    row's values FROM counter WHERE hits <= limit) SELECT hits, expires_at, and, when
    refused, set_config('synchronous_commit', 'off', true). PostgreSQL only."""
    counter = increment.cte("counter")
    limit = sa.bindparam("limit", type_=sa.Integer)
    values = sa.select(*[sa.bindparam(f"row_{name}", type_=table.c[name].type) for name in columns]).where(
        counter.c.hits <= limit)
    kept = sa.insert(table).from_select(columns, values).cte("kept")
    refused = sa.case((counter.c.hits > limit, sa.func.set_config("synchronous_commit", "off", True)))
    return sa.select(counter.c.hits, counter.c.expires_at, refused).add_cte(kept)


class DatabaseStorage(Storage):
    """`limits` storage in the rate_limit_counters table: the increment is one
    INSERT … ON CONFLICT DO UPDATE … RETURNING, atomic on SQLite and PostgreSQL."""

    def __init__(self, engine: sa.Engine, clock=time.time):
        super().__init__()
        self.engine = engine
        self.clock = clock
        self._calls = itertools.count(1)
        self._postgres = engine.dialect.name == "postgresql"
        if self._postgres:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        self._increment = _increment_statement(insert)
        # The same statement as SQL for this database, run on the driver's cursor: it
        # costs a third of the CPU of SQLAlchemy's execution layer.
        self._increment_run = DriverStatement(self._increment, engine.dialect)
        self._counted_inserts: dict[tuple, DriverStatement] = {}

    @property
    def counts_and_inserts_in_one_statement(self) -> bool:
        """Whether increment_and_insert is available: PostgreSQL (data-modifying CTEs)."""
        return self._postgres

    @property
    def base_exceptions(self):
        # increment() runs on the driver's cursor: its errors are the driver's own.
        return (sa.exc.SQLAlchemyError, self.engine.dialect.loaded_dbapi.Error)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        with self.engine.begin() as connection:
            if self._postgres:
                # A counter lost in a server crash costs nothing: do not wait for the WAL flush.
                connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            return self.increment(connection, key, expiry, amount)[0]

    def increment(self, connection: sa.Connection, key: str, expiry: int, amount: int = 1) -> tuple[int, float]:
        """Count `amount` hits in the caller's transaction (writes the database): (hits in
        the window, when the window ends). The caller commits; with the signup's own
        transaction the counter costs no transaction of its own."""
        now = self.clock()
        hits, expires_at = self._increment_run.execute(
            connection, {"key": key, "amount": amount, "expires_at": now + expiry, "now": now})
        self._prune_now_and_then(connection, now)
        return hits, expires_at

    def increment_and_insert(self, connection: sa.Connection, key: str, expiry: int, limit: int,
                             table: sa.Table, row: dict) -> tuple[int, float]:
        """PostgreSQL: count one hit and, if the count is then within `limit`, insert `row`
        into `table`, in one statement (data-modifying CTEs). On a connection in autocommit
        that is one round trip and one commit, instead of BEGIN, two statements and COMMIT;
        the counter's row, which every request from one address updates, is locked for
        that one statement and its WAL flush. A refused request's commit does not wait
        for the flush (set_config(..., true) holds for the statement's own transaction).
        (hits in the window, when the window ends), as increment()."""
        statement = self._counted_inserts.get((table.name, tuple(row)))
        if statement is None:
            statement = self._counted_inserts[table.name, tuple(row)] = DriverStatement(
                _counted_insert_statement(self._increment, table, list(row)), self.engine.dialect)
        now = self.clock()
        hits, expires_at, _ = statement.execute(connection, {
            "key": key, "amount": 1, "expires_at": now + expiry, "now": now, "limit": limit,
            **{f"row_{name}": value for name, value in row.items()}})
        self._prune_now_and_then(connection, now)
        return hits, expires_at

    def _prune_now_and_then(self, connection: sa.Connection, now: float) -> None:
        """Every PRUNE_EVERY increments, delete the windows that have ended."""
        if next(self._calls) % PRUNE_EVERY == 0:
            connection.execute(sa.delete(_COUNTERS).where(_COUNTERS.c.expires_at <= now))

    def _live(self, column, key: str):
        # read_only: on SQLite a plain BEGIN, not the write lock (mailer.db.make_engine).
        with self.engine.execution_options(read_only=True).connect() as connection:
            return connection.execute(sa.select(column).where(
                _COUNTERS.c.key == key, _COUNTERS.c.expires_at > self.clock())).scalar()

    def get(self, key: str) -> int:
        return self._live(_COUNTERS.c.hits, key) or 0

    def get_expiry(self, key: str) -> float:
        return self._live(_COUNTERS.c.expires_at, key) or self.clock()

    def check(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.select(1))
            return True
        except sa.exc.SQLAlchemyError:
            return False

    def reset(self) -> int | None:
        with self.engine.begin() as connection:
            return connection.execute(sa.delete(_COUNTERS)).rowcount

    def clear(self, key: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(sa.delete(_COUNTERS).where(_COUNTERS.c.key == key))


def redis_storage(url: str, key_prefix: str = "mailer") -> Storage:
    """`limits`' own Redis storage; short timeouts so a slow Redis cannot hold a request."""
    from limits.storage import RedisStorage

    return RedisStorage(url, key_prefix=key_prefix, socket_timeout=1.0, socket_connect_timeout=1.0)


def storage_for(settings, engine: sa.Engine) -> Storage:
    return redis_storage(settings.redis_url) if settings.redis_url else DatabaseStorage(engine)


@dataclasses.dataclass(frozen=True)
class Limit:
    """At most `amount` requests per client in a window of `seconds`."""

    name: str
    amount: int
    seconds: int

    @property
    def item(self) -> RateLimitItemPerSecond:
        return RateLimitItemPerSecond(self.amount, self.seconds, namespace=self.name)


class Limiter:
    """Counts requests per (limit, client) in a storage shared by every process."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self.strategy = FixedWindowRateLimiter(storage)

    def hit(self, limit: Limit, client: str, connection: sa.Connection | None = None,
            keep: tuple[sa.Table, dict] | None = None) -> int | None:
        """Count one request; None when allowed, else the seconds to wait (for Retry-After).
        When the storage is unreachable the request is let through and logged: a limit
        protects the site, it must not take the public forms down with Redis.
        `connection`: a transaction the caller is about to commit anyway (the signup's);
        the database storage counts in it instead of opening its own, and a database error
        there is the caller's, like any other in its transaction. Redis ignores it.
        `keep` (table, row), only where keeps_in_one_statement(): the row is inserted by
        the counting statement itself when the request is allowed."""
        item = limit.item
        if keep is not None:
            hits, expires_at = self.storage.increment_and_insert(
                connection, item.key_for(client), item.get_expiry(), item.amount, *keep)
            return None if hits <= item.amount else max(1, math.ceil(expires_at - self.storage.clock()))
        if connection is not None and isinstance(self.storage, DatabaseStorage):
            hits, expires_at = self.storage.increment(connection, item.key_for(client), item.get_expiry())
            return None if hits <= item.amount else max(1, math.ceil(expires_at - self.storage.clock()))
        try:
            if self.strategy.hit(item, client):
                return None
            reset_at = self.strategy.get_window_stats(item, client).reset_time
        except self.storage.base_exceptions as exc:
            log.warning("rate limit %s not checked: %s", limit.name, exc.__class__.__name__)
            return None
        return max(1, math.ceil(reset_at - time.time()))


# The limits the public forms and the login page check, from the current settings.
LIMITS = {
    "signup": lambda s: Limit("signup", s.signup_rate_limit, s.signup_rate_window_seconds),
    "webinar": lambda s: Limit("webinar", s.signup_rate_limit, s.signup_rate_window_seconds),
    # Login attempts per IP, in steps that lengthen the wait the longer someone keeps trying:
    # 10 a minute, 30 an hour, 100 a day (the account's own back-off is users.authenticate's).
    "login": lambda s: (Limit("login", 10, 60), Limit("login-hour", 30, 3600), Limit("login-day", 100, 86400)),
}


def exceeded(name: str, connection: sa.Connection | None = None,
             keep: tuple[sa.Table, dict] | None = None) -> int | None:
    """Count this request against limit `name` (one Limit, or several steps) for its client
    IP (the proxy-resolved address, see MAILER_PROXY_COUNT); the seconds to wait when any
    step is over, else None. With `connection`, counted in that transaction (Limiter.hit);
    with `keep` as well (only where keeps_in_one_statement), the row is inserted when allowed."""
    limits = LIMITS[name](mailer().settings)
    limiter, client = current_app.extensions["rate_limiter"], request.remote_addr or "?"
    waits = [limiter.hit(limit, client, connection, keep) for limit in (limits if isinstance(limits, tuple) else (limits,))]
    return max((wait for wait in waits if wait), default=None)


def keeps_in_one_statement(name: str) -> bool:
    """Whether exceeded(name, connection, keep=…) can count and insert in one statement:
    the database storage on PostgreSQL, and a limit of one step."""
    storage = current_app.extensions["rate_limiter"].storage
    return (isinstance(storage, DatabaseStorage) and storage.counts_and_inserts_in_one_statement
            and not isinstance(LIMITS[name](mailer().settings), tuple))


def count_only(connection: sa.Connection) -> None:
    """The transaction `connection` is in holds nothing but rate-limit counts (a refused or
    not stored request): on PostgreSQL its commit need not wait for the WAL flush, as a
    counter's own transaction does not (DatabaseStorage.incr). Matters most for a flood
    from one address, whose requests all update the same counter row: none of them then
    holds the row while the disk flushes."""
    if (connection.dialect.name == "postgresql"
            and isinstance(current_app.extensions["rate_limiter"].storage, DatabaseStorage)):
        connection.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")


def with_retry_after(answer, seconds: int):
    """The view's 429 answer with the Retry-After header the client should honour."""
    response = make_response(answer)
    response.headers["Retry-After"] = str(seconds)
    return response
