"""mailer: newsletters and webinar mail for a small practice. create_app() builds the web app."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from pathlib import Path

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from mailer.db import make_engine, make_session_factory
from mailer.rendering import EmailRenderer
from mailer.settings import Settings, load_settings
from mailer.transports import Transport, transport_from_settings

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Mailer:
    """What every entry point needs: settings, the database, the renderer, the transport."""

    settings: Settings
    engine: sa.Engine
    sessions: sessionmaker[Session]
    read_sessions: sessionmaker[Session]
    renderer: EmailRenderer
    transport: Transport
    # `settings` before what staff set on the settings page; refresh_settings() applies that.
    base_settings: Settings | None = None
    settings_read_at: float | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self.base_settings is None:
            self.base_settings = self.settings

    def refresh_settings(self, max_age: float = 0.0) -> Settings:
        """`settings` with the settings page's overrides, read from the database again when
        the last read is older than `max_age` seconds (reads the database)."""
        from mailer import site_settings

        now = time.monotonic()
        if self.settings_read_at is not None and now - self.settings_read_at < max_age:
            return self.settings
        self.settings_read_at = now  # before the query: concurrent requests do not pile up
        try:
            with self.read_sessions() as session:
                overrides = site_settings.load_overrides(session)
        except sa.exc.SQLAlchemyError as exc:  # not migrated yet, or the database is away: keep what we have
            log.warning("cannot read the stored settings: %s", exc.__class__.__name__)
            return self.settings
        updated = site_settings.apply(self.base_settings, overrides)
        if updated != self.settings:
            self.settings = updated
        return self.settings

    def sender(self, **kwargs):
        from mailer.sender import Sender

        kwargs.setdefault("settings_source", self.refresh_settings)
        return Sender(self.settings, self.sessions, self.transport, self.renderer, **kwargs)

    def process_signups(self) -> int:
        from mailer.contacts import process_signups
        from mailer.db import session_scope

        total = 0
        while True:
            with session_scope(self.sessions) as session:
                done = process_signups(session, self.settings)
            total += done
            if not done:
                return total

    def drain(self, **sender_kwargs):
        """Everything due now: accepted signups and due newsletters become mail, then all
        due mail is sent (what the worker's jobs do, at once)."""
        from mailer import jobs, newsletters, webinars
        from mailer.db import session_scope

        self.process_signups()
        with self.sender(**sender_kwargs) as sender:
            jobs.run_due(self.sessions, self.settings, owner=sender.worker_id, clock=sender.clock)
            with session_scope(self.sessions) as session:
                newsletters.start_due(session, sender.clock())
                webinars.materialise(session, sender.clock())
            result = sender.drain()
            with session_scope(self.sessions) as session:
                newsletters.finish_sent(session, sender.clock())
        return result


def build(settings: Settings, transport: Transport | None = None) -> Mailer:
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    return Mailer(settings, engine, sessions, make_session_factory(engine, read_only=True), EmailRenderer(),
                  transport or transport_from_settings(settings, sessions))


def create_app(overrides: dict | None = None, *, transport: Transport | None = None) -> Flask:
    from mailer.web import register

    settings = load_settings(overrides)
    app = Flask(__name__, template_folder=str(ROOT / "templates"), instance_path=settings.instance_path)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.base_url.startswith("https://"),
        # Staff sessions end after a working day without a request.
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=12),
        MAX_CONTENT_LENGTH=1024 * 1024,
        WTF_CSRF_TIME_LIMIT=None,
    )
    app.extensions["mailer"] = build(settings, transport)
    register(app)
    return app
