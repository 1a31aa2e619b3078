"""SQLite's writers take turns on a lock file beside the database (mailer.db._WriterTurns):
a writer waiting for another starts as soon as that one commits, not after SQLite's busy
handler's next sleep; a turn is given back whatever ends the transaction, or the process;
and SQLite's own lock still decides, for writers outside mailer too. These run on a SQLite
file of their own whichever database the suite is for."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailer import db
from mailer.db import make_engine

ROOT = Path(__file__).resolve().parent.parent
HOLD_SECONDS = 0.06


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "writers.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE t (x INTEGER)")
    engine.dispose()
    return path


def engine_on(path: Path) -> sa.Engine:
    return make_engine(f"sqlite:///{path}")


def rows(path: Path) -> list[int]:
    with sqlite3.connect(path) as connection:
        return [x for (x,) in connection.execute("SELECT x FROM t ORDER BY x")]


def test_a_waiting_writer_starts_within_milliseconds_of_the_others_commit(database):
    """SQLite's busy handler alone retries after sleeps of 1, 2, 5, 10, 15, 20, 25 ms: a
    writer that waited for a 60 ms transaction starts about 18 ms after its commit."""
    holder, waiter = engine_on(database), engine_on(database)
    late = []
    for attempt in range(3):
        taken, committed_at = threading.Event(), []

        def hold(attempt=attempt):
            with holder.begin() as connection:
                connection.exec_driver_sql(f"INSERT INTO t VALUES ({attempt})")
                taken.set()
                time.sleep(HOLD_SECONDS)
            committed_at.append(time.monotonic())

        thread = threading.Thread(target=hold)
        thread.start()
        assert taken.wait(5)
        with waiter.begin() as connection:
            started_at = time.monotonic()
            connection.exec_driver_sql(f"INSERT INTO t VALUES ({10 + attempt})")
        thread.join()
        late.append(started_at - committed_at[0])
    assert all(delay >= 0 for delay in late), late  # it did wait for the commit
    assert min(late) < 0.005, f"the waiting writer started {min(late) * 1000:.1f} ms after the commit"
    assert rows(database) == [0, 1, 2, 10, 11, 12]


def test_a_turn_is_given_back_when_a_transaction_fails_or_its_connection_is_closed(database, monkeypatch):
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 2000)  # a turn kept would stall the next writer 2 s
    first, second = engine_on(database), engine_on(database)

    def next_writer_waits() -> float:
        start = time.monotonic()
        with second.begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (99)")
        return time.monotonic() - start

    with pytest.raises(ZeroDivisionError):
        with first.begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
            1 / 0
    assert next_writer_waits() < 0.5
    with pytest.raises(sa.exc.IntegrityError):  # the database refuses the statement
        with first.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE u (x INTEGER NOT NULL)")
            connection.exec_driver_sql("INSERT INTO u VALUES (NULL)")
    assert next_writer_waits() < 0.5
    connection = first.connect()
    connection.begin()
    connection.exec_driver_sql("INSERT INTO t VALUES (2)")
    connection.invalidate()  # the pool closes it mid-transaction: rolled back, turn given back
    connection.close()
    assert next_writer_waits() < 0.5
    assert rows(database) == [99, 99, 99]


HOLD_AND_DIE = """
import sys, time
from mailer.db import make_engine
engine = make_engine("sqlite:///" + sys.argv[1])
connection = engine.connect()
connection.begin()
connection.exec_driver_sql("INSERT INTO t VALUES (7)")
print("held", flush=True)
time.sleep(60)
"""


def test_a_writer_killed_in_its_turn_does_not_hold_up_the_others(database):
    process = subprocess.Popen([sys.executable, "-c", HOLD_AND_DIE, str(database)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        assert (database.parent / "writers.db-writers").exists()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        start = time.monotonic()
        with engine_on(database).begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (8)")
        assert time.monotonic() - start < 1.0  # not SQLite's 30 s busy timeout
    finally:
        process.kill()
        process.wait()
    assert rows(database) == [8]


def test_a_writer_outside_mailer_is_still_waited_for_by_sqlites_own_lock(database):
    """The sqlite3 shell, say, takes no turn: mailer's writer waits for its commit all the same."""
    outsider = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    outsider.execute("BEGIN IMMEDIATE")
    outsider.execute("INSERT INTO t VALUES (1)")
    committed = []

    def commit_later():
        time.sleep(0.2)
        committed.append(time.monotonic())
        outsider.execute("COMMIT")

    thread = threading.Thread(target=commit_later)
    thread.start()
    with engine_on(database).begin() as connection:
        connection.exec_driver_sql("INSERT INTO t VALUES (2)")
        started_at = time.monotonic()
    thread.join()
    outsider.close()
    assert started_at >= committed[0]
    assert rows(database) == [1, 2]


def test_a_turn_that_never_comes_is_waited_for_only_as_long_as_sqlites_busy_timeout(database, monkeypatch):
    """Whoever holds the file (here a bare flock, no transaction) cannot stop a writer for
    longer than SQLite itself would: after the busy timeout it goes on to BEGIN IMMEDIATE."""
    import fcntl

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 300)
    engine = engine_on(database)
    fd = os.open(f"{database}-writers", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        start = time.monotonic()
        with engine.begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (5)")
        waited = time.monotonic() - start
    finally:
        os.close(fd)
    assert 0.3 <= waited < 2.0
    assert rows(database) == [5]
