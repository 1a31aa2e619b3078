"""The app of wsgi.py plus one route that does nothing but store one row durably, for
`bench/signup.py --ceiling`: how close to /livez can any route come that writes to the
database, on this machine, with this server and these workers?

GET /bench/store-one-row inserts one row of a signup's size into `bench_rows` the way the
signup stores its row (mailer.db.DriverStatement on the app's own engine and pool; on
PostgreSQL one statement on a connection in autocommit, on SQLite a write transaction with
its BEGIN IMMEDIATE and turn), and answers "ok". No form, no validation, no rate limit, no
page: a signup does all of those and this one write. `bench/signup.py` creates the table
(create_table) before it starts gunicorn with `store_one_row:create()`; importing this module
makes no app (the benchmark's own process imports it for the table)."""
from __future__ import annotations

import itertools
import os

import sqlalchemy as sa

from mailer import create_app
from mailer.db import DriverStatement, UTCDateTime, utcnow

ROWS = sa.Table(
    "bench_rows", sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(320), nullable=False),
    sa.Column("source_url", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
)


def create_table(engine: sa.Engine) -> None:
    ROWS.create(engine, checkfirst=True)


def create():
    """gunicorn's app factory: the app of wsgi.py with GET /bench/store-one-row."""
    app = create_app()
    engine = app.extensions["mailer"].engine
    insert = DriverStatement(sa.insert(ROWS), engine.dialect, column_keys=["email", "source_url", "created_at"])
    serial = itertools.count()

    @app.get("/bench/store-one-row")
    def store_one_row():
        row = {"email": f"row-{os.getpid()}-{next(serial)}@bench.example",
               "source_url": "http://127.0.0.1/subscribe", "created_at": utcnow()}
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                insert.execute(connection, row)
        else:
            with engine.begin() as connection:
                insert.execute(connection, row)
        return "ok\n", 200, {"Content-Type": "text/plain"}

    return app
