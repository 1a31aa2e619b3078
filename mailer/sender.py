"""The send loop: claim due deliveries, render each, hand it to the transport,
record what happened. No database transaction is open while mail is on the wire."""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import socket
import uuid
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from mailer import contacts, outbox
from mailer.db import session_scope, utcnow
from mailer.models import Delivery, DeliveryStatus
from mailer.rendering import EmailRenderer, build_message
from mailer.settings import Settings
from mailer.transports import Transport, TransportError

log = logging.getLogger(__name__)

# Each kind of mail: the function that returns its template context (or a Skip).
CONTEXT_BUILDERS: dict[str, Callable] = {
    contacts.CONFIRMATION: contacts.confirmation_email,
}


@dataclasses.dataclass
class BatchResult:
    claimed: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    skipped: int = 0

    def add(self, other: "BatchResult") -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


@dataclasses.dataclass(frozen=True)
class OutgoingMessage:
    delivery_id: int
    rcpt_to: str
    data: bytes


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Sender:
    def __init__(self, settings: Settings, session_factory, transport: Transport, renderer: EmailRenderer,
                 worker_id: str | None = None, clock: Callable[[], dt.datetime] = utcnow):
        self.settings = settings
        self.session_factory = session_factory
        self.transport = transport
        self.renderer = renderer
        self.worker_id = worker_id or new_worker_id()
        self.clock = clock

    def send_batch(self) -> BatchResult:
        settings = self.settings
        with session_scope(self.session_factory) as session:
            ids = outbox.claim_due(session, worker_id=self.worker_id, now=self.clock(),
                                   limit=settings.send_batch_size, lease_seconds=settings.lease_seconds,
                                   message_domain=settings.from_domain)
        if not ids:
            return BatchResult()
        outcomes = outbox.Outcomes()
        with session_scope(self.session_factory) as session:
            messages = self._build(session, ids, outcomes)
        self._transmit(messages, outcomes)
        with session_scope(self.session_factory) as session:
            outbox.record_outcomes(session, outcomes, worker_id=self.worker_id, now=self.clock(),
                                   base_seconds=settings.retry_base_seconds, cap_seconds=settings.retry_cap_seconds,
                                   deadline=dt.timedelta(hours=settings.retry_deadline_hours))
        return BatchResult(claimed=len(ids), sent=len(outcomes.sent), deferred=len(outcomes.deferred),
                           failed=len(outcomes.failed), skipped=len(outcomes.skipped))

    def _build(self, session: Session, ids: list[int], outcomes: outbox.Outcomes) -> list[OutgoingMessage]:
        deliveries = session.scalars(sa.select(Delivery).where(Delivery.id.in_(ids)).order_by(Delivery.id)
                                     .options(selectinload(Delivery.contact))).all()
        suppressed = outbox.suppressed_hashes(session, [d.contact.email_hash for d in deliveries])
        now = self.clock()
        messages = []
        for delivery in deliveries:
            contact = delivery.contact
            if contact.email is None:
                outcomes.skipped[delivery.id] = (DeliveryStatus.CANCELLED, "contact erased")
                continue
            if contact.email_hash in suppressed:
                outcomes.skipped[delivery.id] = (DeliveryStatus.SUPPRESSED, "address is suppressed")
                continue
            builder = CONTEXT_BUILDERS.get(delivery.kind)
            if builder is None:
                outcomes.failed[delivery.id] = f"unknown kind of mail: {delivery.kind}"
                continue
            try:
                context = builder(session, self.settings, delivery)
                if isinstance(context, outbox.Skip):
                    outcomes.skipped[delivery.id] = (context.status, context.reason)
                    continue
                data = self._compose(delivery, contact, context, now)
            except Exception as exc:  # one broken message must not stop the rest of the batch
                log.exception("cannot render delivery %s", delivery.id)
                outcomes.failed[delivery.id] = f"rendering failed: {exc}"
                continue
            messages.append(OutgoingMessage(delivery.id, contact.email, data))
        return messages

    def _compose(self, delivery: Delivery, contact, context: dict, now: dt.datetime) -> bytes:
        settings = self.settings
        headers = {}
        context = dict(context, contact=contact, organisation=settings.organisation,
                       postal_address=settings.postal_address, base_url=settings.base_url)
        if delivery.list_id is not None:
            url = contacts.unsubscribe_url(settings, contact.id, delivery.list_id)
            mailto = contacts.unsubscribe_mailto(settings, contact.id, delivery.list_id)
            headers["List-Unsubscribe"] = f"<{url}>, <{mailto}>"
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
            context["unsubscribe_url"] = url
        rendered = self.renderer.render(delivery.kind, context)
        msg = build_message(rendered, from_addr=settings.from_addr, reply_to=settings.reply_to,
                            to_email=contact.email, to_name=contact.name, message_id=delivery.message_id,
                            date=now, headers=headers)
        return msg.as_bytes()

    def _transmit(self, messages: list[OutgoingMessage], outcomes: outbox.Outcomes) -> None:
        if not messages:
            return
        with self.transport.connect() as connection:
            for index, message in enumerate(messages):
                try:
                    connection.send(self.settings.from_email, message.rcpt_to, message.data)
                except TransportError as exc:
                    if exc.temporary:
                        outcomes.deferred[message.delivery_id] = str(exc)
                    else:
                        outcomes.failed[message.delivery_id] = str(exc)
                    if exc.connection_lost:
                        try:
                            connection.reopen()
                        except TransportError as down:
                            # The server is gone: keep the rest for later instead of failing them one by one.
                            for rest in messages[index + 1:]:
                                outcomes.deferred[rest.delivery_id] = str(down)
                            return
                    continue
                outcomes.sent.append(message.delivery_id)

    def drain(self, max_batches: int | None = None) -> BatchResult:
        """Send until nothing is due (rows deferred to the future are left for later)."""
        total = BatchResult()
        batches = 0
        while max_batches is None or batches < max_batches:
            result = self.send_batch()
            batches += 1
            if not result.claimed:
                break
            total.add(result)
        return total
