"""Fixtures: a migrated database per test (SQLite file, or PostgreSQL when
MAILER_TEST_DATABASE=postgres), a real SMTP server, the app and its client."""
from __future__ import annotations

import os
import re
import shutil
import types
import uuid

import pytest
import sqlalchemy as sa

from mailer import create_app
from mailer.staff import users
from mailer.db import make_engine, make_session_factory, migrate, session_scope, utcnow
from mailer.models import ApiToken
from mailer.demo import ensure_default_list
from tests.smtp_server import SMTPServer

BACKEND = os.environ.get("MAILER_TEST_DATABASE", "sqlite")
POSTGRES_ADMIN_URL = os.environ.get("MAILER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
SECRET = "test-secret-key-not-for-production"


def pytest_report_header(config):
    return f"mailer database backend: {BACKEND}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed browser test leaves screenshots of its open pages (before teardown closes them)."""
    report = yield
    if report.when == "call" and "browser" in item.fixturenames:
        from tests.browser_support import shoot_open_pages
        shoot_open_pages(item, report.failed, BACKEND)
    return report


def _seed(url: str) -> None:
    engine = make_engine(url)
    with session_scope(make_session_factory(engine)) as session:
        ensure_default_list(session)
    engine.dispose()


@pytest.fixture(scope="session")
def migrated_database(tmp_path_factory):
    """One migrated database per test run: a template file (SQLite) or a fresh database (PostgreSQL)."""
    if BACKEND == "sqlite":
        path = tmp_path_factory.mktemp("template") / "template.db"
        migrate(f"sqlite:///{path}")
        yield path
        return
    name = f"mailer_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    migrate(url)
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def database_url(migrated_database, tmp_path):
    """An empty, migrated database with the default newsletter list."""
    if BACKEND == "sqlite":
        path = tmp_path / "mailer.db"
        shutil.copy(migrated_database, path)
        url = f"sqlite:///{path}"
    else:
        url = migrated_database
        engine = make_engine(url)
        tables = [t for t in sa.inspect(engine).get_table_names() if t != "alembic_version"]
        with engine.begin() as conn:
            conn.exec_driver_sql(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        engine.dispose()
    _seed(url)
    return url


@pytest.fixture
def smtp_server():
    server = SMTPServer().start()
    yield server
    server.stop()


def settings_for(database_url: str, tmp_path, **overrides) -> dict:
    return dict(database_url=database_url, instance_path=str(tmp_path / "instance"), secret_key=SECRET,
                base_url="https://news.example.org", from_addr="Spine Clinic <news@clinic.example>",
                signup_rate_limit=1000, **overrides)


@pytest.fixture
def app(database_url, smtp_server, tmp_path):
    app = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url))
    app.config["TESTING"] = True
    yield app
    app.extensions["mailer"].engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def mailer(app):
    return app.extensions["mailer"]


class Peek:
    """Looks at what is stored, each call in its own short read-only session
    (a long-open SQLite transaction would see a stale snapshot)."""

    def __init__(self, mailer):
        self.mailer = mailer

    def scalar(self, stmt):
        with self.mailer.read_sessions() as session:
            return session.scalar(stmt)

    def scalars(self, stmt) -> list:
        with self.mailer.read_sessions() as session:
            return list(session.scalars(stmt))

    def execute(self, stmt) -> list:
        with self.mailer.read_sessions() as session:
            return list(session.execute(stmt))

    def write(self, stmt) -> None:
        with session_scope(self.mailer.sessions) as session:
            session.execute(stmt)


@pytest.fixture
def db(mailer):
    return Peek(mailer)


def links_in(text: str) -> list[str]:
    return re.findall(r"https://news\.example\.org/\S+", text)


def signup(client, email="ada@example.com", name="Ada", process=True, **extra):
    """Post the signup form as a visitor would; then (process=True) let the worker
    turn accepted signups into subscriptions and queued confirmations."""
    data = {"email": email, "name": name, "consent": "yes", "consent_version": "1", "lists": "newsletter"}
    data.update(extra)
    response = client.post("/subscribe", data=data, headers={"User-Agent": "pytest-browser/1.0"})
    if process:
        client.application.extensions["mailer"].process_signups()
    return response


STAFF_PASSWORD = "correct horse battery staple"


@pytest.fixture
def staff(app, mailer):
    """Staff of each role; staff(role) logs one in and gives its client and CSRF token."""
    with session_scope(mailer.sessions) as session:
        for role in ("owner", "editor", "viewer"):
            users.create_user(session, f"{role}@clinic.example", STAFF_PASSWORD, role)

    def login(role):
        client = app.test_client()
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/login").text).group(1)
        answer = client.post("/admin/login", data={"email": f"{role}@clinic.example", "password": STAFF_PASSWORD,
                                                   "csrf_token": token})
        assert answer.status_code == 302
        # Logging in starts a new session, and with it a new CSRF token.
        return client, re.search(r'name="csrf_token" value="([^"]+)"', client.get("/admin/").text).group(1)

    return login


@pytest.fixture
def tokens(mailer):
    """A write token, a read token and a revoked write token."""
    with session_scope(mailer.sessions) as session:
        user = users.create_user(session, "editor@clinic.example", "correct horse battery staple")
        made = types.SimpleNamespace(write=users.create_token(session, user, "cms", "write"),
                                     read=users.create_token(session, user, "dashboard", "read"),
                                     revoked=users.create_token(session, user, "old", "write"))
        session.execute(sa.update(ApiToken).where(ApiToken.token_hash == users.hash_token(made.revoked))
                        .values(revoked_at=utcnow()))
    return made
