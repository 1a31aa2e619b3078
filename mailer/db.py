"""Database: engine, sessions, the declarative Base, and running migrations.

One engine per app or worker. SQLite runs in WAL mode with a busy timeout and
every unit of work opens with BEGIN IMMEDIATE, so concurrent writers queue for
the lock instead of failing with "database is locked" when a read upgrades.
Read-only sessions open a plain deferred transaction."""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

ROOT = Path(__file__).resolve().parent.parent
SQLITE_BUSY_TIMEOUT_MS = 30_000

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.types.TypeDecorator):
    """Stores naive UTC, returns aware UTC: the same values on SQLite and PostgreSQL."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; pass an aware UTC datetime")
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime()}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class DriverStatement:
    """A Core statement compiled once for one database and run on the driver's cursor,
    inside the caller's SQLAlchemy connection and transaction, with each bound value's
    type processing kept (UTCDateTime, SQLite's datetime text). For the public site's
    hottest statements: SQLAlchemy's execution layer costs more CPU than such a statement
    itself (measured: 21 against 6 µs on SQLite). It bypasses engine events (echo,
    before_cursor_execute): nothing on those paths listens to them."""

    def __init__(self, statement, dialect, **compile_kwargs):
        compiled = statement.compile(dialect=dialect, **compile_kwargs)
        self.sql = compiled.string
        processors = {name: processor for name, bind in compiled.binds.items()
                      if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect))}
        # Literals in the statement (func.f('x')) are binds with a value of their own.
        self.constants = {name: bind.value for name, bind in compiled.binds.items() if not bind.required}
        # The binds in the order the driver takes them (positional parameters as a list,
        # named ones as a dict) and each one's processor (None: the value as it is).
        self.names = tuple(compiled.positiontup if compiled.positional else compiled.binds)
        self.processors = tuple(processors.get(name) for name in self.names)
        self.positional = compiled.positional
        # Known here, not asked of the cursor: psycopg builds cursor.description anew at each
        # call (4 % of a signup's CPU on PostgreSQL, py-spy).
        self.returns_rows = statement.is_select or bool(compiled.returning)
        # psycopg reads a statement's whole result at execute, so one cursor per connection
        # can serve every statement (a new cursor and its close: 18 of a statement's 62 µs
        # of CPU, timeit). sqlite3's cursor steps through RETURNING rows as they are
        # fetched and must be closed to finish the statement: a new one each time (1 µs).
        self.reuses_cursor = dialect.name == "postgresql"

    def execute(self, connection: sa.Connection, values: dict) -> tuple | None:
        """Run with `values` by bind name; the first row when the statement returns rows."""
        values = self.constants | values if self.constants else values
        processed = [processor(values[name]) if processor else values[name]
                     for name, processor in zip(self.names, self.processors)]
        parameters = processed if self.positional else dict(zip(self.names, processed))
        fairy = connection.connection
        cursor = _connection_cursor(fairy) if self.reuses_cursor else fairy.cursor()
        try:
            cursor.execute(self.sql, parameters)
            return cursor.fetchone() if self.returns_rows else None
        finally:
            if not self.reuses_cursor:
                cursor.close()


def _connection_cursor(fairy):
    """The cursor kept for DriverStatement on this DBAPI connection. Kept in the pool's
    info for the connection, which SQLAlchemy empties when it replaces the DBAPI connection;
    a cursor of another connection, or closed, is replaced all the same."""
    cursor = fairy.info.get("driver_statement_cursor")
    if cursor is None or cursor.closed or cursor.connection is not fairy.dbapi_connection:
        cursor = fairy.info["driver_statement_cursor"] = fairy.dbapi_connection.cursor()
    return cursor


def _fresh_pool_after_fork(engine: sa.Engine) -> sa.Engine:
    """A process forked from this one (gunicorn --preload) must not use the parent's open
    connections: two processes on one socket corrupt each other's transactions. The child
    forgets them without closing them (SQLAlchemy's documented recipe for forking)."""
    ref = weakref.ref(engine)

    def after_fork_in_child() -> None:
        forked = ref()
        if forked is not None:
            forked.dispose(close=False)

    os.register_at_fork(after_in_child=after_fork_in_child)
    return engine


def make_engine(url: str, *, ping_when_idle: bool = False, **kwargs) -> sa.Engine:
    """`ping_when_idle` (the web app's): a pooled connection is checked before use only
    when it sat idle (_ping_when_idle), not at every checkout (SQLAlchemy's pool_pre_ping,
    kept for the worker, whose outcomes must be recorded on a working connection)."""
    return _fresh_pool_after_fork(_make_engine(url, ping_when_idle, **kwargs))


def _make_engine(url: str, ping_when_idle: bool = False, **kwargs) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection, _record):
            # Let SQLAlchemy's "begin" event issue BEGIN itself (see below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        turns = _WriterTurns.beside(engine)

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            if conn.get_execution_options().get("read_only"):
                _begin_on_driver(conn, "BEGIN DEFERRED")
                return
            if turns is not None:
                turns.take(conn.connection)
            try:
                _begin_on_driver(conn, "BEGIN IMMEDIATE")
            except BaseException:
                if turns is not None:
                    turns.give_back(conn.connection)
                raise

        return engine
    if ping_when_idle:
        return _ping_when_idle(sa.create_engine(url, **kwargs))
    return sa.create_engine(url, pool_pre_ping=True, **kwargs)


def _begin_on_driver(conn: sa.Connection, sql: str) -> None:
    """BEGIN straight on the driver's connection: through SQLAlchemy's execution layer
    (exec_driver_sql) it cost 10 µs more of the 40 µs a signup's whole transaction takes
    (timeit). Its errors are wrapped as SQLAlchemy's, as that layer would."""
    dbapi_connection = conn.connection.driver_connection
    try:
        dbapi_connection.execute(sql)
    except conn.dialect.loaded_dbapi.Error as exc:
        raise sa.exc.DBAPIError.instance(sql, (), exc, conn.dialect.loaded_dbapi.Error) from exc


class _WriterTurns:
    """SQLite's writers (BEGIN IMMEDIATE) take turns on a lock file beside the database,
    `<database>-writers`, instead of waiting in SQLite's busy handler. That handler sleeps
    1, 2, 5, 10 … ms between tries while a signup's transaction lasts a tenth of a
    millisecond, so under bench/signup.py a quarter of the machine's CPU stood idle
    (vmstat) with two web workers; taking turns, /subscribe answered 22-26 % more requests
    (2,092-2,097 → 2,537-2,650 a second, same run).

    The turn is an flock on the file, asked for without blocking every POLL_FIRST_SECONDS,
    backing off to POLL_MAX_SECONDS, for at most SQLite's busy timeout: the kernel lets it
    go when its process dies, and a writer that waited that long goes on to BEGIN IMMEDIATE
    all the same. The turn only orders mailer's own writers: SQLite's lock still decides
    who writes, so a writer outside mailer (the sqlite3 shell, a migration run on its own
    connection) is waited for by the busy handler as before. Each pooled connection opens
    the file once (its own open file description, so two threads of one process take turns
    too) and gives the turn back when its transaction commits or rolls back, or when the
    connection is closed."""

    POLL_FIRST_SECONDS = 0.00002
    POLL_MAX_SECONDS = 0.00025

    def __init__(self, path: str, timeout_seconds: float):
        self.path = path
        self.timeout_seconds = timeout_seconds

    @classmethod
    def beside(cls, engine: sa.Engine) -> "_WriterTurns | None":
        """Turns for this SQLite engine's file, wired to its transactions; None for a
        database in memory (one connection, nobody to take turns with)."""
        database = engine.url.database
        if not database or database == ":memory:" or database.startswith("file:") or engine.url.query.get("uri"):
            return None
        turns = cls(database + "-writers", SQLITE_BUSY_TIMEOUT_MS / 1000)
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        # SQLAlchemy has no event after a commit or a rollback (its "commit" and "rollback"
        # events come before), so the dialect's own calls are wrapped, on this engine only.
        def do_commit(dbapi_connection):
            try:
                commit(dbapi_connection)
            finally:
                turns.give_back(dbapi_connection)

        def do_rollback(dbapi_connection):
            try:
                rollback(dbapi_connection)
            finally:
                turns.give_back(dbapi_connection)

        dialect.do_commit, dialect.do_rollback = do_commit, do_rollback
        event.listen(engine, "close", lambda _dbapi_connection, record: turns.forget(record.info))
        return turns

    def take(self, connection) -> bool:
        """Wait for this connection's turn (a pooled connection: its `info` keeps the file);
        False when it did not come within the timeout, or the file cannot be opened."""
        info = connection.info
        if info.get("writer_turn"):
            return True
        fd = info.get("writer_turn_fd")
        if fd is None:
            try:
                fd = info["writer_turn_fd"] = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                return False  # a read-only folder: SQLite's busy handler alone, as before
        delay, deadline = self.POLL_FIRST_SECONDS, time.monotonic() + self.timeout_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(delay)
                delay = min(delay * 2, self.POLL_MAX_SECONDS)
            else:
                info["writer_turn"] = True
                return True

    def give_back(self, connection) -> None:
        try:
            info = connection.info
        except NotImplementedError:  # the dialect's first connect: a connection outside the pool
            return
        if info.pop("writer_turn", False):
            fcntl.flock(info["writer_turn_fd"], fcntl.LOCK_UN)

    @staticmethod
    def forget(info: dict) -> None:
        """The connection is closing: closing its file gives back a turn it still held."""
        fd = info.pop("writer_turn_fd", None)
        if fd is not None:
            if info.pop("writer_turn", False):  # explicitly: a process forked since may share the file
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


# A pooled connection idle for longer than this is pinged before use (see _ping_when_idle).
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_when_idle(engine: sa.Engine) -> sa.Engine:
    """SQLAlchemy's pool_pre_ping, for connections that were idle: a connection the server
    closed while it sat in the pool (a restart, an idle timeout) is replaced before a
    request uses it. pool_pre_ping pings at every checkout: one more round trip for each
    signup, a fifth of a busy web worker's time waiting on PostgreSQL (py-spy under
    bench/signup.py). A connection used within the last second is handed out as it is;
    if the server went away in that second, the request on it fails like one in flight,
    and SQLAlchemy then replaces every connection of the pool. For the web app only: a
    worker pings at every checkout, so that a restart between sending a batch and
    recording its outcomes cannot cost a second copy of those messages."""

    @event.listens_for(engine, "checkin")
    def _idle_from(_dbapi_connection, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection, record, _proxy):
        idle_since = record.info.pop("idle_since", None)  # none: a new connection
        if idle_since is not None and time.monotonic() - idle_since > PING_AFTER_IDLE_SECONDS:
            try:
                engine.dialect.do_ping(dbapi_connection)
            except engine.dialect.loaded_dbapi.Error as exc:
                raise sa.exc.DisconnectionError(str(exc)) from exc  # the pool connects anew

    return engine


def make_session_factory(engine: sa.Engine, *, read_only: bool = False) -> sessionmaker[Session]:
    """Sessions for units of work, or (read_only) for looking only: on SQLite those
    take no write lock, so a long read never holds up the sender or a signup."""
    bind = engine.execution_options(read_only=True) if read_only else engine
    return sessionmaker(bind, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with factory() as session, session.begin():
        yield session


def one_of(column, values, *, postgres: bool):
    """`column IN values`, for a batch's hundreds of values: a list, or a bind parameter
    whose list comes at execution. On PostgreSQL one array parameter, matched as
    `column = ANY(ARRAY(SELECT unnest(:values)))`:
    - the planner cannot see into an array made by a subquery and takes it for a few rows,
      so it looks them up by index whatever its statistics say. Written as `IN (...)`, or
      joined to `unnest(...)`, a claim's UPDATE was planned over a table just filled by a
      newsletter's audience as a read of the whole table (100,000 rows for 500: 24-37 ms),
      and a group's outcome as a read of every index entry 'sending' had had since VACUUM
      (2.8 ms for 40 rows after 100,000 sent; PostgreSQL 15);
    - one parameter instead of one per value: SQLAlchemy rendering 500 casts and psycopg
      converting a statement too long for its cache cost 30 µs of a worker's CPU per
      message planned (cProfile)."""
    if isinstance(values, sa.BindParameter):  # a named list, required at execution as `values` was
        key, given = values.key, {}
    else:
        key, given = None, {"value": list(values)}
    if not postgres:
        return column.in_(sa.bindparam(key, expanding=True, **given))
    array = sa.bindparam(key, type_=postgresql.ARRAY(column.type), **given)
    return column == sa.any_(sa.func.array(sa.select(sa.func.unnest(array)).scalar_subquery()))


def is_postgres(session_or_engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"


def take_singleton(session: Session, name: str) -> bool:
    """Make this transaction the only one doing the job `name` right now; False when another
    worker holds it (then skip this run: that worker does the work). Call it first in the
    transaction, before reading what is due, so what is read is what the last holder left.
    PostgreSQL: a transaction-scoped advisory lock (released at commit or rollback), so it
    holds across hosts. SQLite: writers are already serialised by BEGIN IMMEDIATE, so a
    write transaction is alone from its first statement and always gets it."""
    if not is_postgres(session):
        return True
    key = int.from_bytes(hashlib.blake2b(f"mailer:{name}".encode(), digest_size=8).digest(), "big", signed=True)
    return bool(session.scalar(sa.select(sa.func.pg_try_advisory_xact_lock(key))))


def newest_first(stmt, id_column, *, before_id: int | None, limit: int):
    """One keyset page of `stmt`: rows below `before_id`, highest id first, and one row
    more than `limit`, so the caller can tell whether there is a next page."""
    if before_id is not None:
        stmt = stmt.where(id_column < before_id)
    return stmt.order_by(id_column.desc()).limit(limit + 1)


def dialect_insert(session: Session, model):
    """A Core INSERT that knows ON CONFLICT, on SQLite and PostgreSQL alike. To learn
    whether a row went in, use RETURNING: rowcount is not reliable for INSERT on PostgreSQL."""
    return (postgresql if is_postgres(session) else sqlite).insert(getattr(model, "__table__", model))


# SQLite's substring search of contacts: an FTS5 trigram table kept in step with contacts by
# triggers (migration 0019). Not models: Alembic's comparison leaves them out (include_name).
SQLITE_SEARCH_TABLE = "contacts_fts"


def comparison_options(dialect_name: str) -> dict:
    """Alembic's options for comparing a database with the models (autogenerate, tests):
    SQLite's FTS5 table and its shadow tables are not models, and indexes declared for
    PostgreSQL only (Index.ddl_if, which Alembic does not read) are not on SQLite."""
    def include_name(name, type_, parent_names) -> bool:
        return not (type_ == "table" and name and name.startswith(SQLITE_SEARCH_TABLE))

    def include_object(obj, name, type_, reflected, compare_to) -> bool:
        only = getattr(obj, "_ddl_if", None) if type_ == "index" else None
        return only is None or only.dialect in (None, dialect_name)

    return {"include_name": include_name, "include_object": include_object}


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)
