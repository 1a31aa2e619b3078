"""The consent ledger: append-only events chained by hash, and its verification."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import types

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.db import is_postgres, newest_first
from mailer.models import ConsentEvent, ConsentWording, MailingList

GENESIS_HASH = "0" * 64
# Any constant: serialises appends to the chain on PostgreSQL.
_CHAIN_LOCK_KEY = 0x6D61696C6572


@dataclasses.dataclass(frozen=True)
class RequestContext:
    """Where and how a person acted: the evidence stored with each event."""

    source_url: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    note: str | None = None


def _personal_digest(source_url, ip, user_agent, note) -> str:
    payload = json.dumps([source_url, ip, user_agent, note], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def _event_hash(event: ConsentEvent) -> str:
    created = event.created_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    payload = json.dumps(
        [event.prev_hash, event.contact_id, event.list_id, event.purpose, event.action,
         event.wording_id, created, event.personal_digest],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def record_event(session: Session, *, contact_id: int, purpose: str, action: str, now: dt.datetime,
                 context: RequestContext = RequestContext(), list_id: int | None = None,
                 wording_id: int | None = None) -> ConsentEvent:
    """Append one event to the chain. Callers hold the transaction open until commit."""
    if is_postgres(session):
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(_CHAIN_LOCK_KEY)))
    # On SQLite, BEGIN IMMEDIATE already serialises writers (see db.py).
    prev = session.scalar(sa.select(ConsentEvent.hash).order_by(ConsentEvent.id.desc()).limit(1))
    event = ConsentEvent(
        contact_id=contact_id, list_id=list_id, purpose=purpose, action=action, wording_id=wording_id,
        source_url=context.source_url, ip=context.ip, user_agent=context.user_agent, note=context.note,
        created_at=now,
        personal_digest=_personal_digest(context.source_url, context.ip, context.user_agent, context.note),
        prev_hash=prev or GENESIS_HASH,
    )
    event.hash = _event_hash(event)
    session.add(event)
    session.flush()
    return event


def record_events(session: Session, events: list[dict], *, now: dt.datetime) -> int:
    """Append many events at once (an import): the chain is computed here, in order, and
    the rows go in with one executemany. Each dict has contact_id, list_id, purpose,
    action and optionally wording_id and the RequestContext fields."""
    if not events:
        return 0
    if is_postgres(session):
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(_CHAIN_LOCK_KEY)))
    prev = session.scalar(sa.select(ConsentEvent.hash).order_by(ConsentEvent.id.desc()).limit(1)) or GENESIS_HASH
    rows = []
    for item in events:
        personal = [item.get(k) for k in ("source_url", "ip", "user_agent", "note")]
        row = dict(contact_id=item["contact_id"], list_id=item.get("list_id"), purpose=item["purpose"],
                   action=item["action"], wording_id=item.get("wording_id"), source_url=personal[0], ip=personal[1],
                   user_agent=personal[2], note=personal[3], created_at=now,
                   personal_digest=_personal_digest(*personal), prev_hash=prev)
        row["hash"] = prev = _event_hash(types.SimpleNamespace(**row))
        rows.append(row)
    # Inserted in list order inside the chain lock, so ids follow the chain.
    session.execute(sa.insert(ConsentEvent.__table__), rows)
    return len(rows)


@dataclasses.dataclass(frozen=True)
class ChainReport:
    events: int
    broken_event_id: int | None = None
    reason: str = ""

    @property
    def intact(self) -> bool:
        return self.broken_event_id is None


def verify_chain(session: Session, batch_size: int = 5000) -> ChainReport:
    """Recompute every hash in order; name the first event that does not match."""
    prev_hash = GENESIS_HASH
    count = 0
    last_id = 0
    while True:
        events = session.scalars(
            sa.select(ConsentEvent).where(ConsentEvent.id > last_id).order_by(ConsentEvent.id).limit(batch_size)
        ).all()
        if not events:
            return ChainReport(events=count)
        for event in events:
            count += 1
            if event.prev_hash != prev_hash:
                return ChainReport(count, event.id, "does not link to the event before it (one was removed or altered)")
            if _event_hash(event) != event.hash:
                return ChainReport(count, event.id, "its recorded fields were changed after it was written")
            if event.redacted_at is None:
                digest = _personal_digest(event.source_url, event.ip, event.user_agent, event.note)
                if digest != event.personal_digest:
                    return ChainReport(count, event.id, "its source URL, IP, user agent or note was changed")
            prev_hash = event.hash
            last_id = event.id
        session.expunge_all()


def redact_contact_events(session: Session, contact_id: int, now: dt.datetime) -> None:
    """Erase the personal fields of a contact's events; the chain stays verifiable."""
    session.execute(
        sa.update(ConsentEvent)
        .where(ConsentEvent.contact_id == contact_id, ConsentEvent.redacted_at.is_(None))
        .values(source_url=None, ip=None, user_agent=None, note=None, redacted_at=now)
    )


def contact_history(session: Session, contact_id: int) -> list[ConsentEvent]:
    return list(session.scalars(
        sa.select(ConsentEvent).where(ConsentEvent.contact_id == contact_id).order_by(ConsentEvent.id)
    ))


def search_events(session: Session, *, contact_id: int | None = None, list_id: int | None = None,
                  action: str | None = None, before_id: int | None = None, limit: int = 50
                  ) -> list[tuple[ConsentEvent, str | None, int | None]]:
    """Events newest first, each with its list's slug and the wording version shown; one
    more row than asked when there is a next page. contact_id is indexed; the other
    filters narrow a walk down the ids."""
    stmt = (sa.select(ConsentEvent, MailingList.slug, ConsentWording.version)
            .outerjoin(MailingList, MailingList.id == ConsentEvent.list_id)
            .outerjoin(ConsentWording, ConsentWording.id == ConsentEvent.wording_id))
    if contact_id is not None:
        stmt = stmt.where(ConsentEvent.contact_id == contact_id)
    if list_id is not None:
        stmt = stmt.where(ConsentEvent.list_id == list_id)
    if action is not None:
        stmt = stmt.where(ConsentEvent.action == action)
    return [tuple(row) for row in session.execute(newest_first(stmt, ConsentEvent.id, before_id=before_id,
                                                                  limit=limit))]
