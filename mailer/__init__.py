"""mailer: newsletters and webinar mail for a small practice. create_app() builds the web app;
build() wires the parts, handing delivery the kinds of mail and the audience hooks."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session, sessionmaker

from mailer.db import make_engine, make_session_factory
from mailer.delivery.rendering import EmailRenderer
from mailer.settings import Settings, load_settings
from mailer.delivery.transports import Transport, transport_from_settings

if TYPE_CHECKING:
    from mailer.staff.metrics import CachedCheck

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
    # The transport check /healthz runs, at most once per metrics.TRANSPORT_CHECK_SECONDS.
    transport_check: "CachedCheck | None" = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        from mailer.staff.metrics import CachedCheck

        if self.base_settings is None:
            self.base_settings = self.settings
        if self.transport_check is None:
            self.transport_check = CachedCheck(lambda: self.transport.check())

    def refresh_settings(self, max_age: float = 0.0) -> Settings:
        """`settings` with the settings page's overrides, read from the database again when
        the last read is older than `max_age` seconds (reads the database)."""
        from mailer.staff import site_settings

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

    def anchor_ledger(self) -> bool:
        """Re-anchor a consent ledger from before the keyed chain, once (see
        consent.ensure_anchored); a database not migrated yet is left for `migrate`."""
        from mailer.audience import consent
        from mailer.db import session_scope, utcnow

        try:
            with session_scope(self.sessions) as session:
                return consent.ensure_anchored(session, utcnow())
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            log.warning("cannot check the consent ledger's anchor: %s", exc.__class__.__name__)
            return False

    def sender(self, **kwargs):
        from mailer.delivery.sender import Sender

        kwargs.setdefault("settings_source", self.refresh_settings)
        return Sender(self.settings, self.sessions, self.transport, self.renderer, **kwargs)

    def process_signups(self) -> int:
        from mailer.audience.contacts import process_signups
        from mailer.campaigns.webinars import process_registration_requests
        from mailer.db import session_scope

        total = 0
        while True:
            with session_scope(self.sessions) as session:
                done = process_signups(session, self.settings)
            with session_scope(self.sessions) as session:  # webinar registrations from the public form
                done += process_registration_requests(session, self.settings)
            total += done
            if not done:
                return total

    def queue_due(self, now) -> None:
        """What is due at `now` becomes mail in the outbox: newsletters that start, webinar
        mail, and sequence steps (the worker's scheduled jobs do the same, each on its clock)."""
        from mailer.campaigns import newsletters, sequences, webinars
        from mailer.db import session_scope

        with session_scope(self.sessions) as session:
            newsletters.start_due(session, now)
            webinars.materialise(session, now)
        with session_scope(self.sessions) as session:
            sequences.run(session, self.settings, now)

    def drain(self, **sender_kwargs):
        """Everything due now: accepted signups, due newsletters and sequence steps become
        mail, then all due mail is sent (what the worker's jobs do, at once)."""
        from mailer.campaigns import newsletters
        from mailer.staff import jobs
        from mailer.db import session_scope

        self.process_signups()
        with self.sender(**sender_kwargs) as sender:
            jobs.run_due(self.sessions, self.settings, owner=sender.worker_id, clock=sender.clock)
            self.queue_due(sender.clock())
            result = sender.drain()
            with session_scope(self.sessions) as session:
                newsletters.finish_sent(session, sender.clock())
        return result


def mail_kinds() -> dict:
    """Every kind of mail (kind → registry.Kind), from the modules that define them."""
    from mailer.audience import checkpoints, contacts
    from mailer.campaigns import newsletters, sequences, webinars

    return {**contacts.MAIL_KINDS, **checkpoints.MAIL_KINDS, **newsletters.MAIL_KINDS, **webinars.MAIL_KINDS,
            **sequences.MAIL_KINDS}


def audience_hooks():
    """What delivery asks of the audience (registry.AudienceHooks), from mailer.audience."""
    from mailer.audience import contacts
    from mailer.audience.consent import RequestContext
    from mailer.delivery.registry import AudienceHooks

    def unsubscribe_everywhere(session, address, *, source_url, note, now):
        context = RequestContext(source_url=source_url, note=note)
        return contacts.unsubscribe_everywhere(session, address, context=context, now=now)

    return AudienceHooks(unsubscribe_links=contacts.unsubscribe_links, preferences_url=contacts.preferences_url,
                         unsubscribe_everywhere=unsubscribe_everywhere, normalise_email=contacts.normalise_email)


def build(settings: Settings, transport: Transport | None = None, *, web: bool = False) -> Mailer:
    """`web`: for the web app, whose pooled connections are pinged only after sitting idle
    (db.make_engine's ping_when_idle); a worker's at every checkout."""
    from mailer.audience.consent import bind_keys
    from mailer.delivery import registry

    # Delivery knows no kind of mail and no audience module: it is handed both here.
    registry.register(mail_kinds(), audience_hooks())
    engine = make_engine(settings.database_url, ping_when_idle=web)
    sessions = make_session_factory(engine)
    read_sessions = make_session_factory(engine, read_only=True)
    bind_keys(sessions, read_sessions, secret_key=settings.secret_key)
    return Mailer(settings, engine, sessions, read_sessions, EmailRenderer(),
                  transport or transport_from_settings(settings, sessions))


def create_app(overrides: dict | None = None, *, transport: Transport | None = None) -> Flask:
    from mailer.web import register
    from mailer.web.proxy import trust_proxies

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
    app.extensions["mailer"] = build(settings, transport, web=True)
    app.extensions["mailer"].anchor_ledger()
    register(app)
    trust_proxies(app, settings.proxy_count)
    return app
