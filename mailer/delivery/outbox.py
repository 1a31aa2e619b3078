"""The outbox: enqueue with dedupe, claim due rows under a lease, record outcomes."""
from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import random
import typing

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.db import dialect_insert, is_postgres, newest_first, one_of
from mailer.errors import NotFound
from mailer.models import (NOT_YET_SENT, PENDING_DELIVERY, Contact, Delivery, DeliveryStatus, ErrorClass, Priority,
                           Suppression)


def _not_suppressed():
    return ~sa.exists().where(Suppression.email_hash == Contact.email_hash)


INSERTED_COLUMNS = ("contact_id", "kind", "list_id", "ref_id", "variant", "dedupe_key", "status", "priority",
                    "attempts", "next_attempt_at", "created_at")


def enqueue(session: Session, *, contact_id: int, kind: str, dedupe_key: str, now: dt.datetime,
            list_id: int | None = None, ref_id: int | None = None, due_at: dt.datetime | None = None,
            variant: str | None = None, priority: Priority = Priority.TRANSACTIONAL) -> bool:
    """Queue one message for one contact. False when the key was queued before,
    or the contact is erased or suppressed: nothing is queued then."""
    source = sa.select(
        Contact.id, sa.literal(kind), sa.literal(list_id, sa.Integer), sa.literal(ref_id, sa.Integer),
        sa.literal(variant, sa.String), sa.literal(dedupe_key), sa.literal(DeliveryStatus.QUEUED.value),
        sa.literal(int(priority)), sa.literal(0),
        sa.literal(due_at or now, Delivery.next_attempt_at.type), sa.literal(now, Delivery.created_at.type),
    ).where(Contact.id == contact_id, Contact.email.is_not(None), _not_suppressed())
    stmt = dialect_insert(session, Delivery).from_select(
        list(INSERTED_COLUMNS), source,
    ).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(Delivery.id)
    return session.execute(stmt).first() is not None


def enqueue_to_address(session: Session, *, address: str, address_hash: str, kind: str, dedupe_key: str,
                       now: dt.datetime, ref_id: int | None = None) -> bool:
    """Queue one message to an address that is not a contact (a test copy staff send
    themselves): no contact row is made. False when the key was queued before or the
    address (its keyed hash) is suppressed."""
    if session.scalar(sa.select(sa.exists().where(Suppression.email_hash == address_hash))):
        return False
    stmt = dialect_insert(session, Delivery).values(
        contact_id=None, to_email=address, kind=kind, ref_id=ref_id, dedupe_key=dedupe_key,
        status=DeliveryStatus.QUEUED, priority=int(Priority.TRANSACTIONAL), attempts=0, next_attempt_at=now,
        created_at=now,
    ).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(Delivery.id)
    return session.execute(stmt).first() is not None


def enqueue_many(session: Session, rows, *, kind: str, now: dt.datetime, due_at=None,
                 variant: str | None = None, priority: Priority = Priority.TRANSACTIONAL) -> int:
    """Queue one message per row of `rows` (a select of contact_id, list_id, ref_id and
    dedupe_key) in one INSERT … SELECT, whatever their number. Erased and suppressed
    contacts, and keys queued before, are skipped. `due_at` is one time, or an expression
    over the row's Contact (each reader's own time). Returns how many were queued."""
    rows = rows.subquery()
    if not isinstance(due_at, sa.ColumnElement):
        due_at = sa.literal(due_at or now, Delivery.next_attempt_at.type)
    source = sa.select(
        rows.c.contact_id, sa.literal(kind), rows.c.list_id, rows.c.ref_id, sa.literal(variant, sa.String),
        rows.c.dedupe_key, sa.literal(DeliveryStatus.QUEUED.value), sa.literal(int(priority)), sa.literal(0),
        due_at, sa.literal(now, Delivery.created_at.type),
    ).join(Contact, Contact.id == rows.c.contact_id).where(Contact.email.is_not(None), _not_suppressed())
    stmt = dialect_insert(session, Delivery).from_select(
        list(INSERTED_COLUMNS), source,
    ).on_conflict_do_nothing(index_elements=["dedupe_key"])
    # SQLAlchemy keeps the rowcount of an INSERT only when asked to.
    return session.execute(stmt.execution_options(preserve_rowcount=True)).rowcount


def suppressed_hashes(session: Session, email_hashes) -> set[str]:
    """Which of these address hashes are on the suppression list (one query per batch)."""
    wanted = [h for h in email_hashes if h]
    if not wanted:
        return set()
    return set(session.scalars(sa.select(Suppression.email_hash).where(
        one_of(Suppression.email_hash, wanted, postgres=is_postgres(session)))))


def cancel_pending(session: Session, *, contact_id: int, list_id: int | None = None,
                   kinds: tuple[str, ...] | None = None, ref_id: int | None = None,
                   reason: str = "cancelled") -> int:
    """Cancel a contact's messages that have not gone out (all, or one list's, or some kinds, or those
    about one thing such as a registration)."""
    stmt = sa.update(Delivery).where(Delivery.contact_id == contact_id, Delivery.status.in_(NOT_YET_SENT))
    if list_id is not None:
        stmt = stmt.where(Delivery.list_id == list_id)
    if ref_id is not None:
        stmt = stmt.where(Delivery.ref_id == ref_id)
    if kinds is not None:
        stmt = stmt.where(Delivery.kind.in_(kinds))
    return session.execute(stmt.values(status=DeliveryStatus.CANCELLED, last_error=reason)).rowcount


def cancel_many(session: Session, *, contact_ids: list[int], list_id: int, reason: str) -> int:
    """Cancel one list's messages not yet sent to these contacts, in one statement."""
    return session.execute(sa.update(Delivery).where(
        Delivery.contact_id.in_(contact_ids), Delivery.list_id == list_id, Delivery.status.in_(NOT_YET_SENT),
    ).values(status=DeliveryStatus.CANCELLED, last_error=reason)).rowcount


def claim_due(session: Session, *, worker_id: str, now: dt.datetime, limit: int, lease_seconds: int,
              message_domain: str, reclaim: bool = True) -> list[int]:
    """Lease up to `limit` due rows to this worker: rows whose lease ran out first (unless
    `reclaim` is False), then transactional mail (retries, then new), then bulk mail the
    same way, so a confirmation never waits behind a newsletter's audience. One (status,
    priority) per query, so each reads the (status, priority, next_attempt_at, id) index in
    order instead of sorting the whole queue.

    Looking for run-out leases reads every index entry 'sending' has had since VACUUM last
    passed (each message leaves one behind), 5 ms a claim on PostgreSQL after 100,000 sent:
    a worker asks for them now and then, not at every claim (Sender._claim)."""
    ids: list[int] = []
    due_in_order = (Delivery.next_attempt_at, Delivery.id)
    run_out = ((Delivery.status == DeliveryStatus.SENDING, Delivery.lease_expires_at < now), (Delivery.id,))
    for where, order in (
        *((run_out,) if reclaim else ()),
        *(((Delivery.status == status, Delivery.priority == int(priority), Delivery.next_attempt_at <= now),
           due_in_order)
          for priority in Priority for status in (DeliveryStatus.DEFERRED, DeliveryStatus.QUEUED)),
    ):
        if len(ids) >= limit:
            break
        query = sa.select(Delivery.id).where(*where).order_by(*order).limit(limit - len(ids))
        if is_postgres(session):
            query = query.with_for_update(skip_locked=True)
        # SQLite: the transaction began IMMEDIATE, so no other worker claims meanwhile.
        ids.extend(session.scalars(query))
    if not ids:
        return []
    # One UPDATE: the lease, and one stable Message-ID per delivery, fixed before the first
    # attempt leaves and kept on later ones. Two UPDATEs took 10 of a claim's 14.5 ms on PostgreSQL.
    session.execute(
        sa.update(Delivery).where(one_of(Delivery.id, ids, postgres=is_postgres(session))).values(
            status=DeliveryStatus.SENDING, lease_owner=worker_id,
            lease_expires_at=now + dt.timedelta(seconds=lease_seconds), attempts=Delivery.attempts + 1,
            message_id=sa.func.coalesce(Delivery.message_id, _new_message_id(session, message_domain)),
        ).execution_options(synchronize_session=False)  # (no Delivery of this session's to bring up to date)
    )
    return ids


def _new_message_id(session: Session, domain: str):
    """A Message-ID no one can guess or collide with, made by the database for each row:
    128 random bits (122 on PostgreSQL: a version 4 UUID's) — a short numeric one such as
    <15.5b88d057e125@host> is what spam filters' Message-ID rules look for, and bounces
    are matched by it — then the delivery id, which keeps it unique whatever the randomness."""
    if is_postgres(session):
        random_hex = sa.func.replace(sa.cast(sa.func.gen_random_uuid(), sa.String), "-", "")
    else:
        random_hex = sa.func.lower(sa.func.hex(sa.func.randomblob(16)))
    return sa.literal("<") + random_hex + "." + sa.cast(Delivery.id, sa.String) + f"@{domain}>"


@dataclasses.dataclass
class Outcomes:
    """What happened to each claimed row in one batch."""

    sent: list[int] = dataclasses.field(default_factory=list)
    deferred: dict[int, tuple[str, str]] = dataclasses.field(default_factory=dict)  # id → (error class, reply)
    failed: dict[int, tuple[str, str]] = dataclasses.field(default_factory=dict)  # id → (error class, reply)
    skipped: dict[int, tuple[str, str]] = dataclasses.field(default_factory=dict)  # id → (status, reason)
    released: list[int] = dataclasses.field(default_factory=list)  # claimed, never attempted
    release_until: dt.datetime | None = None  # when released rows may go again (None: at once)

    def ids(self):
        """Every row this records an outcome for."""
        return itertools.chain(self.sent, self.released, self.deferred, self.failed, self.skipped)


class Skip(typing.NamedTuple):
    """A deliberate decision not to send a claimed row, with the status to record."""

    status: str
    reason: str


def retry_delay(attempts: int, *, base_seconds: int, cap_seconds: int, rng: random.Random = random) -> dt.timedelta:
    """Exponential backoff with ±20% jitter, so deferred rows do not retry in lockstep."""
    seconds = min(cap_seconds, base_seconds * 2 ** max(attempts - 1, 0))
    return dt.timedelta(seconds=seconds * rng.uniform(0.8, 1.2))


# The statements that record outcomes, built once: the send loop's writer runs them for
# every group of a few dozen messages, and building an UPDATE's expression each time cost
# twice what SQLite took to run it. Core statements on the table, so the ORM has nothing
# to synchronise. (The rows are this worker's, still leased: rows whose lease it lost are
# left alone.)
_DELIVERIES = Delivery.__table__
_COLUMN = _DELIVERIES.c
_MINE = sa.and_(_COLUMN.lease_owner == sa.bindparam("owner"), _COLUMN.status == DeliveryStatus.SENDING.value)
# The same test, which no index can answer: on PostgreSQL the rows come by primary key
# (db.one_of), and with the status's index joined in, it read every entry 'sending' ever
# had until VACUUM passed, as slow as the plain `IN (...)`.
_MINE_BY_ROW = sa.and_(_COLUMN.lease_owner == sa.bindparam("owner"),
                       _COLUMN.status.concat("") == DeliveryStatus.SENDING.value)
_DONE = {"lease_owner": None, "lease_expires_at": None}
_IDS = sa.bindparam("ids")


def _mine_among(postgres: bool) -> tuple:
    """This worker's leased rows among the ids bound as "ids"."""
    return one_of(_COLUMN.id, _IDS, postgres=postgres), (_MINE_BY_ROW if postgres else _MINE)


# Each statement that names rows by a list of ids comes in two forms, indexed by
# is_postgres(session): see db.one_of.
_MARK_SENT = tuple(sa.update(_DELIVERIES).where(*_mine_among(pg)).values(
    status=DeliveryStatus.SENT.value, sent_at=sa.bindparam("at", type_=_COLUMN.sent_at.type),
    last_error=None, error_class=None, **_DONE) for pg in (False, True))
_MARK_RELEASED = tuple(sa.update(_DELIVERIES).where(*_mine_among(pg)).values(
    status=DeliveryStatus.QUEUED.value, attempts=_COLUMN.attempts - 1,
    next_attempt_at=sa.func.coalesce(sa.bindparam("until", type_=_COLUMN.next_attempt_at.type),
                                     _COLUMN.next_attempt_at), **_DONE) for pg in (False, True))
_MARK_ONE = sa.update(_DELIVERIES).where(_COLUMN.id == sa.bindparam("row"), _MINE).values(
    status=sa.bindparam("new_status"), last_error=sa.bindparam("error"), **_DONE)
_MARK_FAILED = sa.update(_DELIVERIES).where(_COLUMN.id == sa.bindparam("row"), _MINE).values(
    status=DeliveryStatus.FAILED.value, last_error=sa.bindparam("error"), error_class=sa.bindparam("error_class"),
    **_DONE)
_LEASED = tuple(sa.select(_COLUMN.id, _COLUMN.attempts, _COLUMN.created_at).where(
    *_mine_among(pg)) for pg in (False, True))
_MARK_DEFERRED = sa.update(_DELIVERIES).where(_COLUMN.id == sa.bindparam("row")).values(
    status=sa.bindparam("new_status"), last_error=sa.bindparam("error"), error_class=sa.bindparam("error_class"),
    next_attempt_at=sa.func.coalesce(sa.bindparam("retry_at", type_=_COLUMN.next_attempt_at.type),
                                     _COLUMN.next_attempt_at), **_DONE)


def record_outcomes(session: Session, outcomes: Outcomes, *, worker_id: str, now: dt.datetime,
                    base_seconds: int, cap_seconds: int, deadline: dt.timedelta) -> None:
    """Write a batch's results; rows whose lease this worker lost are left alone."""
    postgres = is_postgres(session)
    if outcomes.sent:
        session.execute(_MARK_SENT[postgres], {"ids": outcomes.sent, "owner": worker_id, "at": now})
    if outcomes.released:
        session.execute(_MARK_RELEASED[postgres], {"ids": outcomes.released, "owner": worker_id,
                                                   "until": outcomes.release_until})
    if outcomes.failed:
        session.execute(_MARK_FAILED, [{"row": delivery_id, "owner": worker_id, "error": error,
                                        "error_class": error_class}
                                       for delivery_id, (error_class, error) in outcomes.failed.items()])
    if outcomes.skipped:
        session.execute(_MARK_ONE, [{"row": delivery_id, "owner": worker_id, "new_status": status, "error": reason}
                                    for delivery_id, (status, reason) in outcomes.skipped.items()])
    if outcomes.deferred:
        rows = session.execute(_LEASED[postgres], {"ids": list(outcomes.deferred), "owner": worker_id}).all()
        changes = []
        for delivery_id, attempts, created_at in rows:
            error_class, error = outcomes.deferred[delivery_id]
            if now - created_at >= deadline:
                changes.append({"row": delivery_id, "new_status": DeliveryStatus.FAILED.value,
                                "error_class": ErrorClass.EXPIRED, "retry_at": None,
                                "error": f"gave up after {attempts} attempts: {error}"})
            else:
                delay = retry_delay(attempts, base_seconds=base_seconds, cap_seconds=cap_seconds)
                changes.append({"row": delivery_id, "new_status": DeliveryStatus.DEFERRED.value, "error": error,
                                "error_class": error_class, "retry_at": now + delay})
        if changes:
            session.execute(_MARK_DEFERRED, changes)


_EXTEND_LEASES = tuple(sa.update(_DELIVERIES).where(*_mine_among(pg)).values(
    lease_expires_at=sa.bindparam("until", type_=_COLUMN.lease_expires_at.type)) for pg in (False, True))


def extend_leases(session: Session, ids, *, worker_id: str, until: dt.datetime) -> None:
    """Push out the lease of rows this worker still holds (claimed, outcome not yet
    written), so a batch that takes longer than the lease (a slow relay, a starved CPU) is
    not claimed, and sent a second time, by another worker or by this one's next claim."""
    if ids:
        session.execute(_EXTEND_LEASES[is_postgres(session)], {"ids": list(ids), "owner": worker_id, "until": until})


def release_claims(session: Session, *, worker_id: str) -> int:
    """Give back every row this worker holds (on shutdown), as if never claimed."""
    return session.execute(sa.update(Delivery).where(
        Delivery.lease_owner == worker_id, Delivery.status == DeliveryStatus.SENDING,
    ).values(status=DeliveryStatus.QUEUED, attempts=Delivery.attempts - 1, lease_owner=None,
             lease_expires_at=None)).rowcount


def count_due(session: Session, now: dt.datetime) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(Delivery).where(
        Delivery.status.in_(PENDING_DELIVERY), Delivery.next_attempt_at <= now))


def queue_counts(session: Session) -> dict[str, int]:
    rows = session.execute(sa.select(Delivery.status, sa.func.count()).group_by(Delivery.status)).all()
    return {status: count for status, count in rows}


def _with_recipient():
    """Deliveries with their recipient's address: the contact's, or a test copy's own."""
    return (sa.select(Delivery, sa.func.coalesce(Contact.email, Delivery.to_email))
            .outerjoin(Contact, Contact.id == Delivery.contact_id))


def search_deliveries(session: Session, *, status: str | None = None, kind: str | None = None,
                      error: str | None = None, contact_id: int | None = None, ref_id: int | None = None,
                      before_id: int | None = None, limit: int = 50) -> list[tuple[Delivery, str | None]]:
    """Deliveries newest first, each with its recipient's address (None once erased), for
    the staff page and the API. `error` is text contained in last_error, any case;
    `before_id` continues a page. One more row than asked comes back when there is a
    next page. Pages walk down the ids, so a filter stops reading once it has `limit`
    matches; only contact_id has an index to itself (and status on PostgreSQL), so a
    filter that matches few rows may read the whole table once: 0.2 s at 1M rows."""
    stmt = _with_recipient()
    if status is not None:
        # SQLite has no statistics unless ANALYZE ran, so it would read a common status
        # (sent) through its index and sort every such row: 0.7 s at 1M. `status || ''`
        # keeps it on the walk down the ids (PostgreSQL's planner chooses well itself).
        column = Delivery.status if is_postgres(session) else Delivery.status.concat("")
        stmt = stmt.where(column == status)
    if kind is not None:
        stmt = stmt.where(Delivery.kind == kind)
    if error:
        stmt = stmt.where(Delivery.last_error.icontains(error, autoescape=True))
    if contact_id is not None:
        stmt = stmt.where(Delivery.contact_id == contact_id)
    if ref_id is not None:
        stmt = stmt.where(Delivery.ref_id == ref_id)
    return [(delivery, email) for delivery, email in
            session.execute(newest_first(stmt, Delivery.id, before_id=before_id, limit=limit))]


def get_delivery(session: Session, delivery_id: int) -> tuple[Delivery, str | None]:
    row = session.execute(_with_recipient().where(Delivery.id == delivery_id)).first()
    if row is None:
        raise NotFound(f"no delivery {delivery_id}")
    return row[0], row[1]
