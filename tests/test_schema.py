"""Migrations: they build exactly the schema the models describe."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import uuid

import sqlalchemy as sa

from mailer.db import Base, comparison_options, make_engine, migrate
from tests.conftest import BACKEND, POSTGRES_ADMIN_URL


def test_migrated_database_matches_the_models(database_url):
    engine = make_engine(database_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts=comparison_options(conn.dialect.name)), Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_from_the_first_release_keeps_its_data(tmp_path):
    """An install of release 0001 with people in it upgrades to the current schema."""
    if BACKEND == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        name = f"mailer_upgrade_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        migrate(url, "0001")
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO contacts (email, name, created_at) VALUES ('ann@example.com', 'Ann', '2026-11-01 10:00:00')")
            for key, kind in (("n1", "newsletter"), ("c1", "confirmation")):
                conn.exec_driver_sql(
                    "INSERT INTO deliveries (contact_id, kind, dedupe_key, status, attempts, next_attempt_at, created_at) "
                    f"VALUES (1, '{kind}', '{key}', 'queued', 0, '2026-11-01 10:00:00', '2026-11-01 10:00:00')")
        engine.dispose()
        migrate(url)
        engine = make_engine(url)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT email, name FROM contacts").all() == [("ann@example.com", "Ann")]
            # Queued newsletter mail becomes bulk (0005); the rest stays transactional.
            assert conn.exec_driver_sql("SELECT kind, priority FROM deliveries ORDER BY id").all() == [
                ("newsletter", 1), ("confirmation", 0)]
            diff = compare_metadata(MigrationContext.configure(conn, opts=comparison_options(conn.dialect.name)), Base.metadata)
        engine.dispose()
        assert diff == []
    finally:
        if BACKEND != "sqlite":
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
            admin.dispose()
