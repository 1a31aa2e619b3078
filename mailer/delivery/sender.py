"""The send loop: claim due deliveries, render each, hand them to the SMTP connections
(smtp_client.Pipeline: all of them driven from this thread) within the rate limits, and
record what happened as it happens, a group of outcomes at a time (OutcomeLog). No
database transaction is open while mail is on the wire."""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import queue
import socket
import threading
import time
import typing
import uuid
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.delivery import bounces, dkim, outbox, registry, send_budget, suppression
from mailer.db import is_postgres, one_of, session_scope, utcnow
from mailer.models import (Contact, ContactFieldValue, Delivery, DeliveryStatus, ErrorClass, Field, Subscription,
                           SubscriptionStatus, SuppressionReason, first_name_of)
from mailer.delivery.rendering import EmailRenderer, MessageBuilder
from mailer.settings import Settings
from mailer.delivery.smtp_client import Pipeline
from mailer.delivery.transports import SMTPTransport, Transport, TransportError

log = logging.getLogger(__name__)

# Each kind of mail: a function (batch, delivery) → template context (dict), a compiled
# template (with .render), or outbox.Skip; and the subscription state mail tied to a list
# needs to go out. Handed over by the modules that define the kinds (registry.register).
BUILDERS = registry.BUILDERS
REQUIRED_SUBSCRIPTION = registry.REQUIRED_SUBSCRIPTION
# How long one send_batch may go on claiming further batches while its last messages are
# on the wire (Sender._next_batch).
CHAIN_SECONDS = 5.0
# A worker looks for rows whose lease ran out once every 1/RECLAIM_EVERY of a lease (Sender._claim).
RECLAIM_EVERY = 10


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


_RECIPIENT_COLUMNS = (Contact.email, Contact.email_hash, Contact.name, Contact.timezone)
# What the sender and the builders read of a delivery (no times: each costs a conversion).
_PLAN_COLUMNS = (Delivery.id, Delivery.kind, Delivery.list_id, Delivery.ref_id, Delivery.variant, Delivery.contact_id,
                 Delivery.to_email, Delivery.message_id, Delivery.attempts)


# Recipient, Planned and OutgoingMessage are made for every message: named tuples, which
# cost a fraction of a frozen dataclass's __init__ (one object.__setattr__ per field).
class Recipient(typing.NamedTuple):
    """The person (or, for a test copy, the bare address) a delivery is written to."""

    contact_id: int | None
    email: str | None
    email_hash: str | None
    name: str = ""
    first_name: str = ""
    timezone: str | None = None


class Planned(typing.NamedTuple):
    """A claimed row to send: its builder's content, to be composed when its turn comes."""

    delivery: sa.Row  # _PLAN_COLUMNS of the Delivery (and its contact's _RECIPIENT_COLUMNS, as contact_<column>)
    recipient: Recipient
    content: object
    builder: MessageBuilder
    custom: dict


class Composing:
    """A batch's messages, each composed when the transport asks for the next one and
    dropped once sent, so a large batch holds a few messages' bytes at a time. A message
    that cannot be composed is recorded as a rendering failure and skipped."""

    def __init__(self, sender: "Sender", planned: list[Planned], log: "OutcomeLog", *, for_data: bool = False,
                 more: "Callable[[OutcomeLog], list[Planned]] | None" = None):
        self.sender = sender
        self.planned = planned
        self.log = log
        self.index = 0
        # When these are all handed out: the next batch, claimed and planned while the last
        # of these are still on the wire (Sender._next_batch); an empty list ends the run.
        self.more = more
        # For the SMTP client: each message dot-stuffed as it is built, ready to follow DATA
        # (not when DKIM signs it: the signature covers the message as it is read).
        self.stuffed = for_data and sender.signer is None

    def __iter__(self) -> "Composing":
        return self

    def __next__(self) -> "OutgoingMessage":
        while self.index < len(self.planned):
            plan = self.planned[self.index]
            self.index += 1
            delivery, recipient = plan.delivery, plan.recipient
            try:
                data = self.sender._compose(plan.builder, delivery, recipient, plan.content, plan.custom,
                                            stuffed=self.stuffed)
            except Exception as exc:  # one broken message must not stop the rest of the batch
                log.exception("cannot render delivery %s", delivery.id)
                self.log.group.failed[delivery.id] = (ErrorClass.RENDERING, f"rendering failed: {exc}")
                self.log.added()
                continue
            return OutgoingMessage(delivery.id, recipient.email, data,
                                   bounces.return_path(self.sender.settings, delivery.id), self.stuffed)
        if self.more is not None:
            self.planned, self.index = self.more(self.log), 0
            if self.planned:
                return next(self)
            self.more = None
        raise StopIteration

    def rest(self) -> list["OutgoingMessage"]:
        """Those not composed yet (stopping, the server down, the budget spent): stand-ins
        without content, to be released or deferred. No further batch is claimed."""
        self.more = None
        rest, self.index = self.planned[self.index:], len(self.planned)
        return [OutgoingMessage(p.delivery.id, p.recipient.email, b"") for p in rest]


class OutgoingMessage(typing.NamedTuple):
    delivery_id: int
    rcpt_to: str
    data: bytes
    mail_from: str = ""  # the envelope sender: a VERP return path (bounces.return_path), or "" for From
    stuffed: bool = False  # data is dot-stuffed, CRLF only: as it goes after DATA, but for the final "."

    @property
    def domain(self) -> str:
        return self.rcpt_to.rpartition("@")[2]


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class OutcomeLog:
    """Outcomes recorded as they come, in groups: a group every `every` messages or
    `seconds`, whichever comes first, each written in one transaction by a writer thread,
    so the send loop never waits for a commit (PostgreSQL's waits for the WAL flush). At
    most one group waits for the writer; when two are ahead the loop waits. A worker
    killed mid-send has left unrecorded only the messages on the wire and at most three
    groups (the one filling, the one waiting, the one being written): those are what a
    new worker sends again once the lease runs out."""

    def __init__(self, sender: "Sender", every: int = 24, seconds: float = 0.025):
        self.sender = sender
        self.every = every
        self.seconds = seconds
        self.totals = BatchResult()
        self.release_until: dt.datetime | None = None
        self.handoff: queue.Queue = queue.Queue(maxsize=1)
        self.writer: threading.Thread | None = None
        self.failure: BaseException | None = None  # what the writer raised: close() raises it
        self._new_group()

    def _new_group(self) -> None:
        self.group = outbox.Outcomes(release_until=self.release_until)
        self.addresses: dict[int, str] = {}  # delivery id -> address, for a hard bounce's suppression
        self.count = 0
        self.started = time.monotonic()

    def report(self, message: "OutgoingMessage", outcome: str, error: TransportError | None) -> None:
        """What the transport did with one message (sent, deferred, failed or released)."""
        group = self.group
        if outcome == "sent":
            group.sent.append(message.delivery_id)
        elif outcome == "released":
            group.released.append(message.delivery_id)
        elif outcome == "deferred":
            group.deferred[message.delivery_id] = (_error_class(error), str(error))
        else:
            group.failed[message.delivery_id] = (_error_class(error), str(error))
            self.addresses[message.delivery_id] = message.rcpt_to
        self.added()

    def added(self, n: int = 1) -> None:
        self.count += n
        if self.count >= self.every or time.monotonic() - self.started >= self.seconds:
            self.flush()

    def flush(self) -> None:
        """Hand the group filled so far to the writer."""
        group = self.group
        if not self.count:
            return
        group.release_until = self.release_until
        if self.writer is None:
            self.writer = threading.Thread(target=self._write, name="outcomes", daemon=True)
            self.writer.start()
        self.handoff.put((group, self.addresses))
        totals = self.totals
        totals.sent += len(group.sent)
        totals.deferred += len(group.deferred)
        totals.failed += len(group.failed)
        totals.skipped += len(group.skipped)
        totals.released += len(group.released)
        self._new_group()

    def _write(self) -> None:
        while True:
            item = self.handoff.get()
            if item is None:
                return
            if self.failure is None:  # after a failure the rest stays leased: a later claim retries them
                try:
                    self.sender._record(*item)
                except BaseException as exc:  # raised in the batch's thread by close()
                    self.failure = exc

    def close(self) -> None:
        """Write what is left, wait for the writer, and raise what it raised."""
        self.flush()
        if self.writer is not None:
            self.handoff.put(None)
            self.writer.join()
            self.writer = None
        if self.failure is not None:
            raise self.failure


class _Leases:
    """The rows this worker holds (claimed, outcome not yet written), and when their
    leases were last pushed out. The outcome writer renews them every third of the lease
    (Sender._record): a run slower than its lease (a slow relay, a starved CPU, a batch
    planned ahead waiting its turn) must not have its rows claimed, and sent a second
    time, by another worker or by this one's next claim (rows whose lease ran out come
    first in a claim). Seen: 1,101 copies sent twice of 5,000 with a 2 s lease under load."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ids: set[int] = set()
        self._renewed = time.monotonic()

    def hold(self, ids) -> None:
        with self._lock:
            if not self._ids:  # fresh claims: their leases were set just now
                self._renewed = time.monotonic()
            self._ids.update(ids)

    def done(self, outcomes: outbox.Outcomes) -> None:
        with self._lock:
            self._ids.difference_update(outcomes.ids())

    def due(self, lease_seconds: float) -> list[int]:
        """The held rows, when a third of the lease has passed since they were last renewed."""
        with self._lock:
            if not self._ids or time.monotonic() - self._renewed < lease_seconds / 3:
                return []
            self._renewed = time.monotonic()
            return list(self._ids)

    def clear(self) -> None:
        """The run is over: what is still held was not written (a failed writer), and is
        left to run out its lease like a dead worker's."""
        with self._lock:
            self._ids.clear()


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
        self.stopping = threading.Event()
        bind = session_factory.kw.get("bind")
        self._turns = (threading.Lock() if bind is not None and bind.dialect.name == "sqlite"
                       else contextlib.nullcontext())
        self._chain_until = 0.0  # send_batch claims further batches until then (_next_batch)
        self._planner: concurrent.futures.ThreadPoolExecutor | None = None  # plans the next batch ahead
        self._ahead: concurrent.futures.Future | None = None  # the next batch, being planned
        self._leases = _Leases()
        self._reclaimed_at: dt.datetime | None = None  # when _claim last looked for run-out leases
        self.signer: dkim.Signer | None = None
        self.pipeline: Pipeline | None = None  # SMTP: every connection, driven from one thread
        self.connection = None  # another transport (dev mailbox, memory): one connection
        if isinstance(transport, SMTPTransport):
            self.pipeline = Pipeline(transport, connections=settings.smtp_connections,
                                     per_domain=settings.per_domain_concurrency, mail_from=settings.from_email,
                                     before_each=self._before_each, stopping=self.stopping.is_set)

    @contextlib.contextmanager
    def _transaction(self):
        """One unit of work of this sender's. On SQLite every transaction takes the write
        lock (BEGIN IMMEDIATE), and the send loop and the outcome writer would meet in
        SQLite's busy handler, which sleeps 1, 2, 5, 10 ms... between its tries (a stall
        of the send loop at nearly every batch); here they take turns on a lock of their
        own, which wakes the one waiting at once. (Across processes, writers take turns on
        the database's lock file, db._WriterTurns, polled every 20-250 µs.)"""
        with self._turns, session_scope(self.session_factory) as session:
            yield session

    def _adopt(self, settings: Settings) -> None:
        """Use these settings from the next batch on (rate limits, sender, footer)."""
        self.settings = settings
        self.limits = send_budget.Limits(settings.rate_per_second, settings.rate_per_hour, settings.rate_per_day)
        self.static_context = {"organisation": settings.organisation, "postal_address": settings.postal_address,
                               "base_url": settings.base_url, "logo_url": settings.logo_url}
        self.compiled.clear()  # a compiled layout depends on which footer values are empty

    # The batch ---------------------------------------------------------------------

    def send_batch(self, *, chain: bool = False) -> BatchResult:
        """Claim a batch and send it. With `chain` (drain), further batches are claimed as
        each one's last messages go on the wire (_next_batch), for up to CHAIN_SECONDS."""
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
        with self._transaction() as session:
            ids = self._claim(session)
        if not ids:
            return BatchResult()
        self._leases.hold(ids)
        log = OutcomeLog(self)
        try:
            with self._transaction() as session:
                planned = self._plan(session, ids, log.group)
        except sa.exc.SQLAlchemyError:
            # The database failed us, not the messages: give the rows back untried.
            with self._transaction() as session:
                outbox.release_claims(session, worker_id=self.worker_id)
            raise
        group = log.group
        log.added(len(group.skipped) + len(group.failed))
        log.totals.claimed = len(ids)
        self._chain_until = time.monotonic() + CHAIN_SECONDS if chain else 0.0
        try:
            if self._may_chain() and not self.limits.per_second:
                self._plan_ahead()
            self._transmit(planned, log)
        finally:
            try:
                self._give_back_ahead(log)
            finally:
                try:
                    log.close()
                finally:
                    self._leases.clear()
        return log.totals

    def _may_chain(self) -> bool:
        """Whether this send_batch may claim a further batch (_next_batch): not stopping, no
        hourly or daily budget that could hold rows back (those batches go one at a time,
        as _transmit grants them), and for CHAIN_SECONDS at most (then the drain loop takes
        the next batch afresh: settings, the DKIM key)."""
        return not (self.stopping.is_set() or self.limits.per_hour or self.limits.per_day
                    or time.monotonic() > self._chain_until)

    def _next_batch(self, book: "OutcomeLog") -> list["Planned"]:
        """The next batch, for the connections to go on with while the last messages of this
        one are still on the wire, so they do not stand idle at every batch boundary (over
        a 50 ms link a boundary cost two round trips plus the database's work). It was
        claimed and planned ahead by the planner thread (one batch ahead, while this one
        was sending: the database's share of that work runs beside the send loop), or,
        under a per-second limit (whose claims must not wait their turn for long), now.
        [] ends the run."""
        while True:
            if self._ahead is not None:
                ahead, self._ahead = self._ahead, None
                prepared = ahead.result()
            elif self._may_chain():
                prepared = self._prepare_batch()
            else:
                return []
            if prepared is None:
                return []
            planned = self._take_prepared(book, prepared)
            if self._may_chain() and not self.limits.per_second:
                self._plan_ahead()
            if planned:
                return planned  # (a batch all skipped: on to the next one)

    def _claim(self, session) -> list[int]:
        """Lease the next batch. Rows whose lease ran out (a dead worker's) are looked for
        at the first claim and then once every tenth of a lease (RECLAIM_EVERY), not at every
        claim (see outbox.claim_due): a dead worker's rows wait at most that much longer."""
        settings, now = self.settings, self.clock()
        every = dt.timedelta(seconds=settings.lease_seconds / RECLAIM_EVERY)
        last = self._reclaimed_at
        reclaim = last is None or not dt.timedelta(0) <= now - last < every  # (a clock set back: at once)
        if reclaim:
            self._reclaimed_at = now
        return outbox.claim_due(session, worker_id=self.worker_id, now=now, limit=self._batch_size(),
                                lease_seconds=settings.lease_seconds, message_domain=settings.from_domain,
                                reclaim=reclaim)

    def _plan_ahead(self) -> None:
        if self._planner is None:
            self._planner = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="planner")
        self._ahead = self._planner.submit(self._prepare_batch)

    def _prepare_batch(self) -> "tuple[list[int], list[Planned], outbox.Outcomes] | None":
        """Claim and plan a batch: (its ids, what to send, what was decided without sending
        (skipped, failed; released when the database failed us)); None when nothing is due."""
        with self._transaction() as session:
            ids = self._claim(session)
        if not ids:
            return None
        self._leases.hold(ids)
        outcomes = outbox.Outcomes()
        try:
            with self._transaction() as session:
                planned = self._plan(session, ids, outcomes)
            with self._transaction() as session:  # counted in the send windows
                send_budget.take(session, len(planned), self.limits, self.clock())
        except sa.exc.SQLAlchemyError:
            # The database failed us, not the messages: give these rows back untried (only
            # these: the rest of this worker's claims are on the wire).
            log.exception("cannot plan a batch; its rows are given back")
            return ids, [], outbox.Outcomes(released=list(ids))
        return ids, planned, outcomes

    @staticmethod
    def _take_prepared(book: "OutcomeLog", prepared) -> list["Planned"]:
        """A prepared batch into this run's outcome log: counted as claimed, its decided
        rows recorded; what to send is returned."""
        ids, planned, outcomes = prepared
        book.totals.claimed += len(ids)
        book.group.skipped.update(outcomes.skipped)
        book.group.failed.update(outcomes.failed)
        book.group.released.extend(outcomes.released)
        book.added(len(outcomes.skipped) + len(outcomes.failed) + len(outcomes.released))
        return planned

    def _give_back_ahead(self, book: "OutcomeLog") -> None:
        """A batch planned ahead that will not be sent (the run ended: stopping, the server
        down, time up) is given back untried."""
        if self._ahead is None:
            return
        ahead, self._ahead = self._ahead, None
        try:
            prepared = ahead.result()
        except Exception:  # its rows stay leased; a later claim takes them when the lease runs out
            log.exception("planning ahead failed")
            return
        if prepared is not None:
            ids, planned, outcomes = prepared
            outcomes.released.extend(plan.delivery.id for plan in planned)
            self._take_prepared(book, (ids, [], outcomes))

    def _batch_size(self) -> int:
        """Rows to claim: the batch size, but under a per-second limit no more than can go
        out in half the lease, so no claim outlives its lease while it waits its turn (a
        row whose lease ran out can be claimed, and sent, by another worker)."""
        size = self.settings.send_batch_size
        if self.limits.per_second:
            size = min(size, max(1, self.limits.per_second * self.settings.lease_seconds // 2))
        return size

    def _record(self, outcomes: outbox.Outcomes, addresses: dict[int, str]) -> None:
        """Write one group of outcomes; a hard bounce suppresses the address."""
        settings = self.settings
        now = self.clock()
        renew = self._leases.due(settings.lease_seconds)
        with self._transaction() as session:
            outbox.record_outcomes(session, outcomes, worker_id=self.worker_id, now=now,
                                   base_seconds=settings.retry_base_seconds, cap_seconds=settings.retry_cap_seconds,
                                   deadline=dt.timedelta(hours=settings.retry_deadline_hours))
            outbox.extend_leases(session, renew, worker_id=self.worker_id,
                                 until=now + dt.timedelta(seconds=settings.lease_seconds))
            for delivery_id, (error_class, reply) in outcomes.failed.items():
                if error_class == ErrorClass.PERMANENT and addresses.get(delivery_id):
                    suppression.suppress_address(session, settings, addresses[delivery_id],
                                                 reason=SuppressionReason.HARD_BOUNCE, detail=reply, now=now)
        self._leases.done(outcomes)

    # Building ----------------------------------------------------------------------

    def _plan(self, session: Session, ids: list[int], outcomes: outbox.Outcomes) -> list["Planned"]:
        """What each claimed row becomes (its builder runs here, with the database), or why
        it is skipped; the message itself is composed later, when a connection has room
        for it (Composing)."""
        # Rows, not ORM objects: a builder reads a delivery's columns only, and loading
        # 100 deliveries with their contacts through the ORM cost 0.5 ms of every 1 ms
        # planning took per message.
        postgres = is_postgres(session)
        deliveries = session.execute(
            sa.select(*_PLAN_COLUMNS, *(column.label(f"contact_{column.key}") for column in _RECIPIENT_COLUMNS))
            .outerjoin(Contact, Contact.id == Delivery.contact_id)
            .where(one_of(Delivery.id, ids, postgres=postgres)).order_by(Delivery.id)).all()
        recipients = {d.id: self._recipient(d) for d in deliveries}
        suppressed = outbox.suppressed_hashes(session, [r.email_hash for r in recipients.values()])
        subscriptions = self._subscription_states(session, deliveries, postgres)
        custom = self._field_values(session, deliveries, postgres)
        batch = BatchContext(session, self.settings, self.renderer, self.static_context, self.clock, self.compiled)
        builder = MessageBuilder(from_addr=self.settings.from_addr, reply_to=self.settings.reply_to, date=self.clock())
        planned = []
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
            except sa.exc.SQLAlchemyError:
                raise
            except Exception as exc:  # one broken message must not stop the rest of the batch
                log.exception("cannot render delivery %s", delivery.id)
                outcomes.failed[delivery.id] = (ErrorClass.RENDERING, f"rendering failed: {exc}")
                continue
            planned.append(Planned(delivery, recipient, content, builder, custom))
        return planned

    @staticmethod
    def _subscription_states(session: Session, deliveries, postgres: bool) -> dict[tuple[int, int], str]:
        contact_ids = {d.contact_id for d in deliveries if d.list_id is not None}
        if not contact_ids:
            return {}
        rows = session.execute(sa.select(Subscription.contact_id, Subscription.list_id, Subscription.status)
                               .where(one_of(Subscription.contact_id, contact_ids, postgres=postgres)))
        return {(contact_id, list_id): status for contact_id, list_id, status in rows}

    @staticmethod
    def _field_values(session: Session, deliveries, postgres: bool) -> dict[int, dict[str, str]]:
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
                .where(one_of(ContactFieldValue.contact_id, [c for c in contact_ids if c is not None],
                              postgres=postgres))):
            values[contact_id][key] = value
        return values

    def _recipient(self, delivery) -> "Recipient":
        """Who a delivery (a row of _plan's) goes to: its contact, or (a test copy to someone
        who is not a contact) the address it carries, with the keyed hash suppression is
        checked by."""
        if delivery.contact_id is not None:
            return Recipient(delivery.contact_id, delivery.contact_email, delivery.contact_email_hash,
                             delivery.contact_name, first_name_of(delivery.contact_name), delivery.contact_timezone)
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
                 custom: dict[int | None, dict[str, str]] | None = None, *, stuffed: bool = False) -> bytes:
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
        data = builder.build(rendered, to_email=recipient.email, to_name=recipient.name,
                             message_id=delivery.message_id, headers=headers, stuffed=stuffed)
        # DKIM (issue 16): the one place the final bytes are signed.
        return data if self.signer is None else self.signer.sign(data)

    # Sending -----------------------------------------------------------------------

    def _transmit(self, planned: list["Planned"], log: OutcomeLog) -> None:
        """Send within the budget; what may not go now is released, not attempted."""
        pending = planned
        while pending:
            if self.stopping.is_set():
                break
            with self._transaction() as session:
                grant = send_budget.take(session, len(pending), self.limits, self.clock())
            if not grant.count:
                wait = (grant.retry_at - self.clock()).total_seconds()
                if wait > 5:  # an hourly or daily budget is spent: give the rows back until then
                    log.release_until = grant.retry_at
                    break
                self.sleep(max(wait, 0.01))
                continue
            chunk, pending = pending[:grant.count], pending[grant.count:]
            messages = Composing(self, chunk, log, for_data=self.pipeline is not None,
                                 more=None if pending else self._next_batch)
            if self.pipeline is not None:
                self.pipeline.run(messages, log.report)
            else:
                self._send_each(messages, log)
        for message in Composing(self, pending, log).rest():
            log.report(message, "released", None)

    def _send_each(self, messages: "Composing", log: OutcomeLog) -> None:
        """A transport that is not SMTP (the dev mailbox, memory): one message after another."""
        if self.connection is None:
            self.connection = self.transport.connection()
        for message in messages:
            if self.stopping.is_set() or not self._before_each():
                for stopped in [message, *messages.rest()]:
                    log.report(stopped, "released", None)
                return
            try:
                self.connection.send(message.mail_from or self.settings.from_email, message.rcpt_to, message.data)
            except TransportError as exc:
                log.report(message, "deferred" if exc.temporary else "failed", exc)
                if exc.connection_lost:
                    try:
                        self.connection.reopen()
                    except TransportError as gone:
                        for unsent in messages.rest():  # the server is gone: defer the rest untried
                            log.report(unsent, "deferred", gone)
                        return
            except Exception as exc:  # never lose a row to an unexpected error: retry it later
                log.report(message, "deferred", TransportError(f"unexpected error: {exc}", temporary=True,
                                                               error_class=ErrorClass.CONNECTION))
            else:
                log.report(message, "sent", None)

    def _before_each(self) -> bool:
        """Under a per-second limit each message claims its place right before it goes
        out, so messages held up on the wire cannot bunch into one second. False: stopping."""
        if not self.limits.per_second:
            return not self.stopping.is_set()
        while not self.stopping.is_set():
            with self._transaction() as session:
                retry_at = send_budget.take_one_this_second(session, self.limits.per_second, self.clock())
            if retry_at is None:
                return True
            self.sleep(max((retry_at - self.clock()).total_seconds(), 0.005))
        return False

    def _close_connections(self) -> None:
        """Close every connection (QUIT); the next send opens them again."""
        try:
            if self.pipeline is not None:
                self.pipeline.close()
            if self.connection is not None:
                self.connection.close()
        except Exception:  # closing is best effort
            log.debug("error closing a connection", exc_info=True)

    # Loops -------------------------------------------------------------------------

    def drain(self, max_batches: int | None = None, progress: Callable[[BatchResult], None] | None = None) -> BatchResult:
        """Send until nothing is due (rows deferred to the future are left for later)."""
        total = BatchResult()
        batches = 0
        while (max_batches is None or batches < max_batches) and not self.stopping.is_set():
            result = self.send_batch(chain=max_batches is None)
            batches += 1
            total.add(result)
            if progress:
                progress(total)
            if not result.claimed or (result.released and not result.sent):
                break
        self._close_connections()  # do not hold idle connections open until the next run
        return total

    def request_stop(self) -> None:
        """Finish the messages in flight, give back the rest, take no new batch."""
        self.stopping.set()

    def __enter__(self) -> "Sender":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self._planner is not None:
            self._planner.shutdown(wait=True)
            self._planner = None
        self._close_connections()
        with self._transaction() as session:
            outbox.release_claims(session, worker_id=self.worker_id)


def _error_class(exc: TransportError) -> str:
    if exc.error_class:
        return exc.error_class
    if exc.code is None:
        return ErrorClass.CONNECTION
    return ErrorClass.TEMPORARY if exc.temporary else ErrorClass.PERMANENT
