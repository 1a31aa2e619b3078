"""The send loop: claim due deliveries, render each, hand them to a pool of SMTP
connections within the rate limits, record what happened. No database
transaction is open while mail is on the wire."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import queue
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from mailer.delivery import bounces, dkim, outbox, registry, send_budget, suppression
from mailer.db import session_scope, utcnow
from mailer.models import (ContactFieldValue, Delivery, DeliveryStatus, ErrorClass, Field, Subscription,
                           SubscriptionStatus, SuppressionReason)
from mailer.delivery.rendering import EmailRenderer, MessageBuilder
from mailer.settings import Settings
from mailer.delivery.transports import Transport, TransportError

log = logging.getLogger(__name__)

# Each kind of mail: a function (batch, delivery) → template context (dict), a compiled
# template (with .render), or outbox.Skip; and the subscription state mail tied to a list
# needs to go out. Handed over by the modules that define the kinds (registry.register).
BUILDERS = registry.BUILDERS
REQUIRED_SUBSCRIPTION = registry.REQUIRED_SUBSCRIPTION


@dataclasses.dataclass
class BatchResult:
    claimed: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0
    released: int = 0

    def add(self, other: "BatchResult") -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


@dataclasses.dataclass
class BatchContext:
    """What builders share within one batch: compiled templates live in `cache`."""

    session: Session
    settings: Settings
    renderer: EmailRenderer
    static_context: dict
    clock: Callable[[], dt.datetime]
    # Compiled staff templates, kept by the Sender across batches.
    cache: dict = dataclasses.field(default_factory=dict)
    # Rows loaded for this batch (kept here: the session's identity map holds them only weakly).
    rows: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Recipient:
    """The person (or, for a test copy, the bare address) a delivery is written to."""

    contact_id: int | None
    email: str | None
    email_hash: str | None
    name: str = ""
    first_name: str = ""
    timezone: str | None = None


@dataclasses.dataclass(frozen=True)
class OutgoingMessage:
    delivery_id: int
    rcpt_to: str
    data: bytes
    mail_from: str = ""  # the envelope sender (VERP return path); empty: the From address

    @property
    def domain(self) -> str:
        return self.rcpt_to.rpartition("@")[2]


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ConnectionPool:
    """`size` transport connections, handed out one at a time and kept open between
    messages and batches; each opens at its first use."""

    def __init__(self, transport: Transport, size: int):
        self.connections = [transport.connection() for _ in range(size)]
        self.idle: queue.LifoQueue = queue.LifoQueue()
        for connection in self.connections:
            self.idle.put(connection)

    def acquire(self):
        return self.idle.get()

    def release(self, connection) -> None:
        self.idle.put(connection)

    def close(self) -> None:
        """Close every connection; the next use opens it again."""
        for connection in self.connections:
            try:
                connection.close()
            except Exception:  # closing is best effort
                log.debug("error closing a connection", exc_info=True)


class DomainGate:
    """At most `cap` messages in flight to one recipient domain."""

    def __init__(self, cap: int):
        self.cap = cap
        self.lock = threading.Lock()
        self.gates: dict[str, threading.Semaphore] = {}

    def gate(self, domain: str) -> threading.Semaphore:
        with self.lock:
            return self.gates.setdefault(domain, threading.Semaphore(self.cap))


class Sender:
    def __init__(self, settings: Settings, session_factory, transport: Transport, renderer: EmailRenderer,
                 worker_id: str | None = None, clock: Callable[[], dt.datetime] = utcnow,
                 sleep: Callable[[float], None] = time.sleep,
                 settings_source: Callable[[], Settings] | None = None):
        self.session_factory = session_factory
        self.transport = transport
        self.renderer = renderer
        self.worker_id = worker_id or new_worker_id()
        self.clock = clock
        self.sleep = sleep
        # Called before each batch: what staff change on the settings page applies from the next batch.
        self.settings_source = settings_source
        self._source_seen = settings  # what the source gave last: a change there replaces ours
        self.compiled: dict = {}
        self._adopt(settings)
        self.pool = ConnectionPool(transport, max(1, settings.smtp_connections))
        self.executor = ThreadPoolExecutor(max(1, settings.smtp_connections), thread_name_prefix="smtp")
        self.domains = DomainGate(max(1, settings.per_domain_concurrency))
        self.stopping = threading.Event()
        self.signer: dkim.Signer | None = None

    def _adopt(self, settings: Settings) -> None:
        """Use these settings from the next batch on (rate limits, sender, footer)."""
        self.settings = settings
        self.limits = send_budget.Limits(settings.rate_per_second, settings.rate_per_hour, settings.rate_per_day)
        self.static_context = {"organisation": settings.organisation, "postal_address": settings.postal_address,
                               "base_url": settings.base_url, "logo_url": settings.logo_url}
        self.compiled.clear()  # a compiled layout depends on which footer values are empty

    # The batch ---------------------------------------------------------------------

    def send_batch(self) -> BatchResult:
        if self.stopping.is_set():
            return BatchResult()
        if self.settings_source is not None:
            current = self.settings_source()
            if current is not self._source_seen:
                self._source_seen = current
                self._adopt(current)
        settings = self.settings
        # Before claiming: a DKIM key that cannot be read stops the batch with nothing claimed.
        self.signer = dkim.signer_for(settings)
        with session_scope(self.session_factory) as session:
            ids = outbox.claim_due(session, worker_id=self.worker_id, now=self.clock(),
                                   limit=settings.send_batch_size, lease_seconds=settings.lease_seconds,
                                   message_domain=settings.from_domain)
        if not ids:
            return BatchResult()
        outcomes = outbox.Outcomes()
        try:
            with session_scope(self.session_factory) as session:
                messages = self._build(session, ids, outcomes)
        except sa.exc.SQLAlchemyError:
            # The database failed us, not the messages: give the rows back untried.
            with session_scope(self.session_factory) as session:
                outbox.release_claims(session, worker_id=self.worker_id)
            raise
        self._transmit(messages, outcomes)
        self._record(messages, outcomes)
        return BatchResult(claimed=len(ids), sent=len(outcomes.sent), deferred=len(outcomes.deferred),
                           failed=len(outcomes.failed), skipped=len(outcomes.skipped),
                           released=len(outcomes.released))

    def _record(self, messages: list[OutgoingMessage], outcomes: outbox.Outcomes) -> None:
        settings = self.settings
        now = self.clock()
        addresses = {m.delivery_id: m.rcpt_to for m in messages}
        with session_scope(self.session_factory) as session:
            outbox.record_outcomes(session, outcomes, worker_id=self.worker_id, now=now,
                                   base_seconds=settings.retry_base_seconds, cap_seconds=settings.retry_cap_seconds,
                                   deadline=dt.timedelta(hours=settings.retry_deadline_hours))
            for delivery_id, (error_class, reply) in outcomes.failed.items():
                if error_class == ErrorClass.PERMANENT:
                    suppression.suppress_address(session, settings, addresses[delivery_id],
                                                 reason=SuppressionReason.HARD_BOUNCE, detail=reply, now=now)

    # Building ----------------------------------------------------------------------

    def _build(self, session: Session, ids: list[int], outcomes: outbox.Outcomes) -> list[OutgoingMessage]:
        deliveries = session.scalars(sa.select(Delivery).where(Delivery.id.in_(ids)).order_by(Delivery.id)
                                     .options(selectinload(Delivery.contact))).all()
        recipients = {d.id: self._recipient(d) for d in deliveries}
        suppressed = outbox.suppressed_hashes(session, [r.email_hash for r in recipients.values()])
        subscriptions = self._subscription_states(session, deliveries)
        custom = self._field_values(session, deliveries)
        batch = BatchContext(session, self.settings, self.renderer, self.static_context, self.clock, self.compiled)
        builder = MessageBuilder(from_addr=self.settings.from_addr, reply_to=self.settings.reply_to, date=self.clock())
        messages = []
        for delivery in deliveries:
            recipient = recipients[delivery.id]
            skip = self._skip_reason(delivery, recipient, suppressed, subscriptions)
            if skip:
                outcomes.skipped[delivery.id] = skip
                continue
            content_for = BUILDERS.get(delivery.kind)
            if content_for is None:
                outcomes.failed[delivery.id] = (ErrorClass.RENDERING, f"unknown kind of mail: {delivery.kind}")
                continue
            try:
                content = content_for(batch, delivery)
                if isinstance(content, outbox.Skip):
                    outcomes.skipped[delivery.id] = (content.status, content.reason)
                    continue
                data = self._compose(builder, delivery, recipient, content, custom)
                # DKIM (issue 16): the one place the final bytes are signed.
                if self.signer is not None:
                    data = self.signer.sign(data)
            except sa.exc.SQLAlchemyError:
                raise
            except Exception as exc:  # one broken message must not stop the rest of the batch
                log.exception("cannot render delivery %s", delivery.id)
                outcomes.failed[delivery.id] = (ErrorClass.RENDERING, f"rendering failed: {exc}")
                continue
            messages.append(OutgoingMessage(delivery.id, recipient.email, data,
                                            bounces.return_path(self.settings, delivery.id)))
        return messages

    @staticmethod
    def _subscription_states(session: Session, deliveries) -> dict[tuple[int, int], str]:
        contact_ids = {d.contact_id for d in deliveries if d.list_id is not None}
        if not contact_ids:
            return {}
        rows = session.execute(sa.select(Subscription.contact_id, Subscription.list_id, Subscription.status)
                               .where(Subscription.contact_id.in_(contact_ids)))
        return {(contact_id, list_id): status for contact_id, list_id, status in rows}

    @staticmethod
    def _field_values(session: Session, deliveries) -> dict[int, dict[str, str]]:
        """Each recipient's custom fields ({{ contact.fields.<key> }}) in two queries per
        batch: every key ("" where the reader has no value: templates are strict), then
        the batch's values."""
        keys = list(session.scalars(sa.select(Field.key)))
        if not keys:
            return {}
        contact_ids = {d.contact_id for d in deliveries}  # None: a test copy to someone not a contact
        values: dict[int | None, dict[str, str]] = {cid: dict.fromkeys(keys, "") for cid in contact_ids}
        for contact_id, key, value in session.execute(
                sa.select(ContactFieldValue.contact_id, Field.key, ContactFieldValue.value)
                .join(Field, Field.id == ContactFieldValue.field_id)
                .where(ContactFieldValue.contact_id.in_([c for c in contact_ids if c is not None]))):
            values[contact_id][key] = value
        return values

    def _recipient(self, delivery: Delivery) -> "Recipient":
        """Who a delivery goes to: its contact, or (a test copy to someone who is not a
        contact) the address it carries, with the keyed hash suppression is checked by."""
        contact = delivery.contact
        if contact is not None:
            return Recipient(contact.id, contact.email, contact.email_hash, contact.name, contact.first_name,
                             contact.timezone)
        address = delivery.to_email
        return Recipient(None, address, suppression.email_hash(self.settings, address) if address else None)

    @staticmethod
    def _skip_reason(delivery: Delivery, recipient: "Recipient", suppressed: set[str],
                     subscriptions) -> tuple[str, str] | None:
        if recipient.email is None:
            return DeliveryStatus.CANCELLED, "contact erased"
        if recipient.email_hash in suppressed:
            return DeliveryStatus.SUPPRESSED, "address is suppressed"
        if delivery.list_id is not None:
            required = REQUIRED_SUBSCRIPTION.get(delivery.kind, SubscriptionStatus.ACTIVE)
            if subscriptions.get((delivery.contact_id, delivery.list_id)) != required:
                return DeliveryStatus.CANCELLED, f"subscription is not {required}"
        return None

    def _compose(self, builder: MessageBuilder, delivery: Delivery, recipient: "Recipient", content,
                 custom: dict[int | None, dict[str, str]] | None = None) -> bytes:
        settings = self.settings
        context = dict(self.static_context,
                       contact={"first_name": recipient.first_name, "name": recipient.name, "email": recipient.email,
                                "timezone": recipient.timezone, "fields": (custom or {}).get(recipient.contact_id, {})})
        headers = {}
        if delivery.list_id is not None and recipient.contact_id is not None:
            audience = registry.audience()
            url, mailto = audience.unsubscribe_links(settings, recipient.contact_id, delivery.list_id)
            headers["List-Unsubscribe"] = f"<{url}>, <{mailto}>"
            context["unsubscribe_url"] = url
            context["preferences_url"] = audience.preferences_url(settings, recipient.contact_id)
        elif isinstance(content, dict) and content.get("unsubscribe_url"):
            # Not list mail (a webinar seat): the builder names what stops it.
            headers["List-Unsubscribe"] = f"<{content['unsubscribe_url']}>"
        if headers:
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        if isinstance(content, dict):
            rendered = self.renderer.render(delivery.kind, dict(context, **content))
            if content.get("attachments"):
                rendered = dataclasses.replace(rendered, attachments=tuple(content["attachments"]))
        else:
            rendered = content.render(context)
        return builder.build(rendered, to_email=recipient.email, to_name=recipient.name,
                             message_id=delivery.message_id, headers=headers)

    # Sending -----------------------------------------------------------------------

    def _transmit(self, messages: list[OutgoingMessage], outcomes: outbox.Outcomes) -> None:
        """Send within the budget; what may not go now is released, not attempted."""
        pending = list(messages)
        server_down = ServerDown()
        while pending:
            if self.stopping.is_set():
                break
            with session_scope(self.session_factory) as session:
                grant = send_budget.take(session, len(pending), self.limits, self.clock())
            if not grant.count:
                wait = (grant.retry_at - self.clock()).total_seconds()
                if wait > 5:  # an hourly or daily budget is spent: give the rows back until then
                    outcomes.release_until = grant.retry_at
                    break
                self.sleep(max(wait, 0.01))
                continue
            chunk, pending = pending[:grant.count], pending[grant.count:]
            for future in [self.executor.submit(self._send_one, m, outcomes, server_down) for m in chunk]:
                future.result()
        outcomes.released.extend(m.delivery_id for m in pending)

    def _send_one(self, message: OutgoingMessage, outcomes: outbox.Outcomes, server_down: "ServerDown") -> None:
        if server_down.is_set():
            outcomes.deferred[message.delivery_id] = (ErrorClass.CONNECTION, server_down.reason)
            return
        if self.stopping.is_set():
            outcomes.released.append(message.delivery_id)
            return
        gate = self.domains.gate(message.domain)
        with gate:
            connection = self.pool.acquire()
            try:
                if not self._wait_for_this_second():  # stopping while waiting for a slot
                    outcomes.released.append(message.delivery_id)
                    return
                connection.send(message.mail_from or self.settings.from_email, message.rcpt_to, message.data)
            except TransportError as exc:
                error_class = _error_class(exc)
                if exc.temporary:
                    outcomes.deferred[message.delivery_id] = (error_class, str(exc))
                else:
                    outcomes.failed[message.delivery_id] = (error_class, str(exc))
                if exc.connection_lost:
                    self._reopen(connection, server_down)
            except Exception as exc:  # never lose a row to an unexpected error: retry it later
                log.exception("unexpected error sending delivery %s", message.delivery_id)
                outcomes.deferred[message.delivery_id] = (ErrorClass.CONNECTION, f"unexpected error: {exc}")
            else:
                outcomes.sent.append(message.delivery_id)
            finally:
                self.pool.release(connection)

    def _wait_for_this_second(self) -> bool:
        """Under a per-second limit each message claims its place right before it goes
        out, so messages held up on the wire cannot bunch into one second."""
        if not self.limits.per_second:
            return True
        while not self.stopping.is_set():
            with session_scope(self.session_factory) as session:
                retry_at = send_budget.take_one_this_second(session, self.limits.per_second, self.clock())
            if retry_at is None:
                return True
            self.sleep(max((retry_at - self.clock()).total_seconds(), 0.005))
        return False

    @staticmethod
    def _reopen(connection, server_down: "ServerDown") -> None:
        try:
            connection.reopen()
        except TransportError as down:
            # The server is gone: defer the rest of the batch instead of trying each one.
            server_down.set(str(down))

    # Loops -------------------------------------------------------------------------

    def drain(self, max_batches: int | None = None, progress: Callable[[BatchResult], None] | None = None) -> BatchResult:
        """Send until nothing is due (rows deferred to the future are left for later)."""
        total = BatchResult()
        batches = 0
        while (max_batches is None or batches < max_batches) and not self.stopping.is_set():
            result = self.send_batch()
            batches += 1
            total.add(result)
            if progress:
                progress(total)
            if not result.claimed or (result.released and not result.sent):
                break
        self.pool.close()  # do not hold idle connections open until the next run
        return total

    def request_stop(self) -> None:
        """Finish the messages in flight, give back the rest, take no new batch."""
        self.stopping.set()

    def __enter__(self) -> "Sender":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        self.pool.close()
        with session_scope(self.session_factory) as session:
            outbox.release_claims(session, worker_id=self.worker_id)


class ServerDown:
    """Set once, by the first connection that cannot reach the server again."""

    def __init__(self):
        self.event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        self.reason = reason
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


def _error_class(exc: TransportError) -> str:
    if exc.error_class:
        return exc.error_class
    if exc.code is None:
        return ErrorClass.CONNECTION
    return ErrorClass.TEMPORARY if exc.temporary else ErrorClass.PERMANENT
