"""POST /subscribe's one transaction: the rate-limit count and the stored signup commit
together, durably (on PostgreSQL in one statement); a request that stores nothing commits
only its count, and on PostgreSQL without waiting for the WAL flush. The intake row written through the driver's cursor is the
row SQLAlchemy would write."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
import sqlalchemy as sa

from mailer import db as mailer_db
from mailer.audience import contacts
from mailer.audience.consent import RequestContext
from mailer.db import make_engine
from mailer.models import RateLimitCounter, SignupRequest
from mailer.web.ratelimit import DatabaseStorage, Limit, Limiter
from tests.conftest import signup

ASYNC_COMMIT = "SET LOCAL synchronous_commit TO OFF"


class Transactions:
    """Commits and the statements SQLAlchemy sends, per POST."""

    def __init__(self, engine):
        self.engine, self.commits, self.statements = engine, 0, []

    def _commit(self, _conn):
        self.commits += 1

    def _statement(self, _conn, _cursor, statement, *_args):
        self.statements.append(statement)

    def __enter__(self):
        sa.event.listen(self.engine, "commit", self._commit)
        sa.event.listen(self.engine, "before_cursor_execute", self._statement)
        return self

    def __exit__(self, *_exc):
        sa.event.remove(self.engine, "commit", self._commit)
        sa.event.remove(self.engine, "before_cursor_execute", self._statement)


def _hits(db) -> int:
    return db.scalar(sa.select(sa.func.sum(RateLimitCounter.hits)).where(RateLimitCounter.key.like("signup/%"))) or 0


def test_a_signup_and_its_count_are_one_durable_commit(client, mailer, db):
    client.post("/subscribe", data={"email": "warm@example.com", "consent": "yes", "lists": "newsletter"})
    with Transactions(mailer.engine) as seen:
        answer = signup(client, "ada@example.com", process=False)
    assert answer.status_code == 200
    if mailer.engine.dialect.name == "postgresql":
        # One statement on a connection in autocommit (DatabaseStorage.increment_and_insert):
        # no transaction of SQLAlchemy's, no BEGIN, no COMMIT, no SET LOCAL.
        assert seen.commits == 0 and seen.statements == []
    else:
        assert seen.commits == 1
        assert ASYNC_COMMIT not in seen.statements  # the signup's commit waits for the disk
    assert db.scalar(sa.select(sa.func.count()).select_from(SignupRequest).where(
        SignupRequest.email == "ada@example.com")) == 1
    assert _hits(db) == 2


def test_requests_that_store_nothing_still_count_and_do_not_wait_for_the_disk(client, mailer, db):
    postgres = mailer.engine.dialect.name == "postgresql"
    with Transactions(mailer.engine) as seen:
        answers = [signup(client, "bot@example.com", process=False, website="http://spam.example")]  # honeypot
    assert seen.commits == 1 and seen.statements.count(ASYNC_COMMIT) == (1 if postgres else 0)
    with Transactions(mailer.engine) as seen:
        answers.append(signup(client, "no-consent@example.com", process=False, consent=""))  # invalid
        answers.append(signup(client, "not an address", process=False, step="1"))  # step 1, refused address
    assert [a.status_code for a in answers] == [200, 400, 400]
    assert seen.statements.count(ASYNC_COMMIT) == (2 if postgres else 0)
    assert _hits(db) == 3
    assert db.scalar(sa.select(sa.func.count()).select_from(SignupRequest)) == 0


def test_over_the_limit_nothing_is_stored_and_the_count_goes_on(app, client, mailer, db):
    mailer.settings = mailer.base_settings = dataclasses.replace(mailer.settings, signup_rate_limit=2)
    codes = [signup(client, f"p{i}@example.com", process=False).status_code for i in range(4)]
    assert codes == [200, 200, 429, 429]
    assert sorted(db.scalars(sa.select(SignupRequest.email))) == ["p0@example.com", "p1@example.com"]
    assert _hits(db) == 4


def test_the_intake_row_is_the_row_sqlalchemy_would_write(mailer):
    now = dt.datetime(2031, 3, 25, 17, 4, 5, 123456, tzinfo=dt.timezone.utc)
    row = contacts.signup_request(email=" Ada@Example.COM ", name="Ada\x07 Lovelace", lists=["newsletter"],
                                  consent_given=True, consent_version=1, timezone="Europe/London",
                                  context=RequestContext("https://clinic.example/blog", "203.0.113.5", "UA/1"),
                                  now=now)
    public_lists = contacts.PublicLists()
    with mailer.engine.begin() as connection:
        contacts.accept_signup(connection, public_lists, row)  # the driver's cursor
        connection.execute(sa.insert(SignupRequest.__table__), row)  # SQLAlchemy's own execution
    with mailer.engine.connect() as connection:
        stored = connection.execute(sa.select(SignupRequest).order_by(SignupRequest.id)).all()
        raw = connection.exec_driver_sql("SELECT created_at FROM signup_requests ORDER BY id").scalars().all()
    assert len(stored) == 2 and stored[0][1:] == stored[1][1:]
    assert stored[0].created_at == now and stored[0].email == "ada@example.com" and stored[0].name == "Ada Lovelace"
    assert raw[0] == raw[1]  # the same text (SQLite) or timestamp (PostgreSQL) in the table


def test_a_failed_driver_statement_leaves_the_connection_fit_for_the_next(mailer):
    """DriverStatement keeps one cursor per connection on PostgreSQL: a statement that fails
    there (a duplicate key) must not spoil the next ones on the same pooled connection."""
    table = SignupRequest.__table__
    insert = mailer_db.DriverStatement(sa.insert(table).returning(table.c.id), mailer.engine.dialect)
    row = {"email": "ada@example.com", "name": "Ada", "lists": "newsletter", "consent_version": 1,
           "timezone": None, "source_url": None, "ip": None, "user_agent": None,
           "created_at": dt.datetime(2031, 3, 25, 17, 4, 5, tzinfo=dt.timezone.utc)}
    with mailer.engine.connect() as connection:
        dbapi_connection = connection.connection.dbapi_connection
        with connection.begin():
            (first,) = insert.execute(connection, dict(row, id=1))
        with pytest.raises(mailer.engine.dialect.loaded_dbapi.IntegrityError):  # the driver's own error
            with connection.begin():
                insert.execute(connection, dict(row, id=1))  # the same key again
        with connection.begin():
            (second,) = insert.execute(connection, dict(row, id=2, email="grace@example.com"))
        assert connection.connection.dbapi_connection is dbapi_connection  # the same connection throughout
    with mailer.engine.connect() as connection:
        stored = connection.execute(sa.select(table.c.id, table.c.email).order_by(table.c.id)).all()
    assert (first, second) == (1, 2)
    assert stored == [(1, "ada@example.com"), (2, "grace@example.com")]


def test_a_driver_error_in_the_counter_lets_the_request_through(tmp_path):
    """The counter runs on the driver's cursor, so its errors are the driver's: still the
    storage's errors for Limiter.hit, which lets the request through rather than fail."""
    engine = make_engine(f"sqlite:///{tmp_path / 'not-migrated.db'}")
    try:
        assert Limiter(DatabaseStorage(engine)).hit(Limit("signup", 1, 60), "203.0.113.1") is None
    finally:
        engine.dispose()


def test_showing_the_form_or_an_error_on_it_takes_no_write_transaction(client, mailer):
    """On SQLite a write transaction takes the lock every signup queues for."""
    with Transactions(mailer.engine) as seen:
        assert client.get("/subscribe").status_code == 200
        assert client.get("/subscribe?lists=newsletter&embed=1").status_code == 200
    assert seen.commits == 0 and "BEGIN IMMEDIATE" not in seen.statements


def test_a_connection_the_server_closed_while_it_was_idle_is_replaced(client, mailer, db, monkeypatch):
    """Pooled connections are pinged when they were idle (db._ping_when_idle), not at every
    checkout: one the server ended in the meantime (a restart) is replaced, and the signup
    on it goes through."""
    if mailer.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to end a connection")
    assert signup(client, "before@example.com", process=False).status_code == 200
    admin = sa.create_engine(mailer.engine.url, poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as connection:
            ended = connection.execute(sa.text(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")).scalar()
    finally:
        admin.dispose()
    assert ended >= 1
    monkeypatch.setattr(mailer_db, "PING_AFTER_IDLE_SECONDS", 0.0)  # each pooled connection counts as idle
    assert signup(client, "after@example.com", process=False).status_code == 200
    assert sorted(db.scalars(sa.select(SignupRequest.email))) == ["after@example.com", "before@example.com"]


def test_without_a_referer_the_evidence_names_the_page_the_form_was_posted_to(client, db):
    """The consent event's source is the address the browser posted to (request.url, made
    once per address and kept: mailer.web._page_address), the query string included."""
    data = {"email": "ada@example.com", "name": "Ada", "consent": "yes", "consent_version": "1", "lists": "newsletter"}
    for path, email in (("/subscribe?embed=1", "ada@example.com"), ("/subscribe", "bob@example.com"),
                        ("/subscribe?embed=1&from=caf%C3%A9", "cy@example.com")):
        assert client.post(path, data=dict(data, email=email)).status_code == 200
    referred = client.post("/subscribe", data=dict(data, email="di@example.com"),
                           headers={"Referer": "https://clinic.example/newsletter"})
    assert referred.status_code == 200
    assert db.execute(sa.select(SignupRequest.email, SignupRequest.source_url).order_by(SignupRequest.id)) == [
        ("ada@example.com", "http://localhost/subscribe?embed=1"),
        ("bob@example.com", "http://localhost/subscribe"),
        ("cy@example.com", "http://localhost/subscribe?embed=1&from=café"),
        ("di@example.com", "https://clinic.example/newsletter"),
    ]
