"""The consent ledger: append-only events chained by a keyed hash (HMAC), signed
checkpoints that anchor the chain's head outside the database, and verification.

Each event's hash is an HMAC, with a key derived from the secret key, over the previous
hash, the event's fields, the digest of the wording text shown and the digest of its
personal fields. Someone who can write the database but does not hold the secret key
cannot recompute it after an edit. Personal fields may be blanked (erasure): a redaction
verifies only when a later "redacted" event of the same contact, written at the same
moment, records it. Installs from before the keyed chain keep their old SHA-256 events;
one "reanchored" event seals them under the key (see ensure_anchored)."""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import types
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from mailer.db import is_postgres, newest_first
from mailer.errors import InvalidInput
from mailer.models import ConsentAction, ConsentEvent, ConsentWording, MailingList

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
# Any constant: serialises appends to the chain on PostgreSQL.
_CHAIN_LOCK_KEY = 0x6D61696C6572
# The ledger's bookkeeping events.
REDACTED = ConsentAction.REDACTED
REANCHORED = ConsentAction.REANCHORED
LEDGER_PURPOSE = "ledger"
_KEYS = "mailer.consent.keys"


@dataclasses.dataclass(frozen=True)
class LedgerKeys:
    """Keys derived from the secret key, one per use, so neither reveals the other or the secret."""

    chain: bytes
    checkpoint: bytes

    @classmethod
    def derive(cls, secret_key: str) -> "LedgerKeys":
        def derived(label: str) -> bytes:
            return hmac.new(secret_key.encode(), label.encode(), hashlib.sha256).digest()
        return cls(derived("mailer.consent-chain.v2"), derived("mailer.consent-checkpoint.v1"))


def bind_keys(*factories: sessionmaker, secret_key: str) -> None:
    """Sessions from these factories carry the ledger's keys (in Session.info, never in the database)."""
    keys = LedgerKeys.derive(secret_key)
    for factory in factories:
        factory.configure(info={**factory.kw.get("info", {}), _KEYS: keys})


def _keys(session: Session) -> LedgerKeys:
    try:
        return session.info[_KEYS]
    except KeyError:
        raise RuntimeError("this session has no ledger keys: use the sessions of mailer.build()") from None


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


def _created(event) -> str:
    return event.created_at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _legacy_hash(event) -> str:
    """The unkeyed SHA-256 of events written before the keyed chain (verified, never written)."""
    payload = json.dumps(
        [event.prev_hash, event.contact_id, event.list_id, event.purpose, event.action,
         event.wording_id, _created(event), event.personal_digest],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _event_hash(chain: hmac.HMAC, event, wording_digest: str | None, created: str | None = None) -> str:
    """`chain` is an HMAC object keyed with the chain key (copied, so keying happens once);
    `created` is _created(event), when the caller already has it."""
    payload = json.dumps(
        ["v2", event.prev_hash, event.contact_id, event.list_id, event.purpose, event.action,
         event.wording_id, wording_digest, created or _created(event), event.personal_digest],
        ensure_ascii=False,
    )
    mac = chain.copy()
    mac.update(payload.encode())
    return mac.hexdigest()


def _chain_mac(keys: LedgerKeys) -> hmac.HMAC:
    return hmac.new(keys.chain, digestmod=hashlib.sha256)


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _wording_digests(session: Session, ids=None) -> dict[int, str]:
    stmt = sa.select(ConsentWording.id, ConsentWording.text)
    if ids is not None:
        stmt = stmt.where(ConsentWording.id.in_(ids))
    return {wording_id: _text_digest(text) for wording_id, text in session.execute(stmt)}


def lock_chain(session: Session) -> None:
    """Hold the ledger's chain until the transaction ends (every append takes it). A writer
    that also takes row locks others may wait on (new contacts) takes it first, so two such
    writers queue instead of deadlocking: A holds the chain and waits for B's new contact,
    B holds that contact and waits for the chain."""
    if is_postgres(session):
        session.execute(sa.select(sa.func.pg_advisory_xact_lock(_CHAIN_LOCK_KEY)))
    # On SQLite, BEGIN IMMEDIATE already serialises writers (see db.py).


def _head(session: Session) -> str:
    return session.scalar(sa.select(ConsentEvent.hash).order_by(ConsentEvent.id.desc()).limit(1)) or GENESIS_HASH


def record_event(session: Session, *, contact_id: int | None, purpose: str, action: str, now: dt.datetime,
                 context: RequestContext = RequestContext(), list_id: int | None = None,
                 wording_id: int | None = None) -> ConsentEvent:
    """Append one event to the chain. Callers hold the transaction open until commit."""
    chain = _chain_mac(_keys(session))
    lock_chain(session)
    event = ConsentEvent(
        contact_id=contact_id, list_id=list_id, purpose=purpose, action=action, wording_id=wording_id,
        source_url=context.source_url, ip=context.ip, user_agent=context.user_agent, note=context.note,
        created_at=now,
        personal_digest=_personal_digest(context.source_url, context.ip, context.user_agent, context.note),
        prev_hash=_head(session),
    )
    wording = _wording_digests(session, [wording_id]).get(wording_id) if wording_id is not None else None
    event.hash = _event_hash(chain, event, wording)
    session.add(event)
    session.flush()
    return event


def record_events(session: Session, events: list[dict], *, now: dt.datetime) -> int:
    """Append many events at once (an import): the chain is computed here, in order, and
    the rows go in with one executemany. Each dict has contact_id, list_id, purpose,
    action and optionally wording_id and the RequestContext fields."""
    if not events:
        return 0
    chain = _chain_mac(_keys(session))
    lock_chain(session)
    prev = _head(session)
    wordings = _wording_digests(session, {item["wording_id"] for item in events if item.get("wording_id")})
    created = _created(types.SimpleNamespace(created_at=now))  # one time for the whole batch
    rows = []
    for item in events:
        personal = [item.get(k) for k in ("source_url", "ip", "user_agent", "note")]
        row = dict(contact_id=item["contact_id"], list_id=item.get("list_id"), purpose=item["purpose"],
                   action=item["action"], wording_id=item.get("wording_id"), source_url=personal[0], ip=personal[1],
                   user_agent=personal[2], note=personal[3], created_at=now,
                   personal_digest=_personal_digest(*personal), prev_hash=prev)
        row["hash"] = prev = _event_hash(chain, types.SimpleNamespace(**row), wordings.get(row["wording_id"]), created)
        rows.append(row)
    # Inserted in list order inside the chain lock, so ids follow the chain.
    session.execute(sa.insert(ConsentEvent.__table__), rows)
    return len(rows)


def redact_contact_events(session: Session, contact_id: int, now: dt.datetime) -> None:
    """Erase the personal fields of a contact's events, and record that in the chain: a
    "redacted" event at `now`, the moment stamped on every event it redacted. The chain
    stays verifiable; a redaction without that event does not verify."""
    redacted = session.execute(
        sa.update(ConsentEvent)
        .where(ConsentEvent.contact_id == contact_id, ConsentEvent.redacted_at.is_(None))
        .values(source_url=None, ip=None, user_agent=None, note=None, redacted_at=now)
    ).rowcount
    if redacted:
        record_event(session, contact_id=contact_id, purpose=LEDGER_PURPOSE, action=REDACTED, now=now,
                     context=RequestContext(note=f"personal fields of {redacted} earlier events redacted"))


# Re-anchoring the events of installs from before the keyed chain ----------------------------

_SEAL = re.compile(r"seal ([0-9a-f]{64})")


def _is_legacy_chain(session: Session, chain: hmac.HMAC) -> bool:
    """True when the chain starts with an unkeyed SHA-256 event (an install from before the keyed chain)."""
    first = session.scalars(sa.select(ConsentEvent).order_by(ConsentEvent.id).limit(1)).first()
    if first is None:
        return False
    wording = _wording_digests(session, [first.wording_id]).get(first.wording_id) if first.wording_id else None
    return _event_hash(chain, first, wording) != first.hash and _legacy_hash(first) == first.hash


class _Seal:
    """A keyed digest over the unkeyed events: each one's hash, the digest of its wording
    text and its redaction state (unless a later "redacted" event accounts for it)."""

    def __init__(self, keys: LedgerKeys):
        self.mac = hmac.new(keys.chain, b"mailer.consent-seal", hashlib.sha256)

    def add(self, event: ConsentEvent, wording: str | None, redaction: str | None) -> None:
        self.mac.update(json.dumps([event.id, event.hash, wording, redaction]).encode() + b"\n")

    def hexdigest(self) -> str:
        return self.mac.hexdigest()


class _Redactions:
    """The moments at which each contact's events were legitimately redacted (the "redacted" events)."""

    def __init__(self, session: Session):
        self.by_contact = collections.defaultdict(list)
        for event_id, contact_id, created_at in session.execute(
                sa.select(ConsentEvent.id, ConsentEvent.contact_id, ConsentEvent.created_at)
                .where(ConsentEvent.action == REDACTED)):
            self.by_contact[contact_id].append((event_id, created_at))

    def recorded(self, event: ConsentEvent) -> bool:
        return any(marker_id > event.id and at == event.redacted_at
                   for marker_id, at in self.by_contact.get(event.contact_id, ()))

    def unexplained(self, event: ConsentEvent) -> str | None:
        """The redaction state the seal covers: None, or a redaction no later event records."""
        if event.redacted_at is None or self.recorded(event):
            return None
        return _created(types.SimpleNamespace(created_at=event.redacted_at))


def ensure_anchored(session: Session, now: dt.datetime) -> bool:
    """Once per install from before the keyed chain: append a "reanchored" event that seals
    the old unkeyed events under the key. Called at start (migrate, worker, web app); True
    when this call did it. Concurrent starts take the chain lock, so only one does."""
    keys = _keys(session)
    # A chain that starts keyed (every install since) costs one read of its first event.
    if not _is_legacy_chain(session, _chain_mac(keys)):
        return False
    # The anchor follows the old events, so this walk in id order stops there.
    has_anchor = (sa.select(ConsentEvent.id).where(ConsentEvent.action == REANCHORED)
                  .order_by(ConsentEvent.id).limit(1))
    if session.scalar(has_anchor) is not None:
        return False
    lock_chain(session)
    if session.scalar(has_anchor) is not None:
        return False
    seal, redactions, wordings, count = _Seal(keys), _Redactions(session), _wording_digests(session), 0
    columns = (ConsentEvent.id, ConsentEvent.hash, ConsentEvent.wording_id, ConsentEvent.contact_id,
               ConsentEvent.redacted_at)
    for event in session.execute(sa.select(*columns).order_by(ConsentEvent.id).execution_options(yield_per=5000)):
        seal.add(event, wordings.get(event.wording_id), redactions.unexplained(event))
        count += 1
    record_event(session, contact_id=None, purpose=LEDGER_PURPOSE, action=REANCHORED, now=now, context=RequestContext(
        note=f"ledger re-anchored under a keyed hash: {count} earlier unkeyed events sealed, seal {seal.hexdigest()}"))
    log.info("consent ledger re-anchored: %d earlier events sealed under the keyed chain", count)
    return True


# Checkpoints --------------------------------------------------------------------------------

_CHECKPOINT = re.compile(r"mailer-consent-checkpoint events=(\d+) head=([0-9a-f]{64}) "
                         r"at=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) sig=([0-9a-f]{64})")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """The chain's head at one moment, signed with a key derived from the secret key."""

    events: int
    head: str
    at: str
    signature: str

    @property
    def text(self) -> str:
        return (f"mailer-consent-checkpoint events={self.events} head={self.head} at={self.at} "
                f"sig={self.signature}")


def _sign(keys: LedgerKeys, events: int, head: str, at: str) -> str:
    return hmac.new(keys.checkpoint, f"{events}|{head}|{at}".encode(), hashlib.sha256).hexdigest()


def make_checkpoint(session: Session, now: dt.datetime) -> Checkpoint:
    """Count and head of the ledger now, signed: kept outside the database (printed, mailed)."""
    events = session.scalar(sa.select(sa.func.count()).select_from(ConsentEvent))
    head = _head(session)
    at = now.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Checkpoint(events, head, at, _sign(_keys(session), events, head, at))


def parse_checkpoint(session: Session, text: str) -> Checkpoint:
    """A checkpoint as printed or mailed; InvalidInput when it is malformed or its signature is wrong."""
    found = _CHECKPOINT.search(text or "")
    if not found:
        raise InvalidInput("checkpoint", "This is not a consent checkpoint: expected the line "
                                         "'mailer-consent-checkpoint events=… head=… at=… sig=…'.")
    events, head, at, signature = int(found[1]), found[2], found[3], found[4]
    if not hmac.compare_digest(_sign(_keys(session), events, head, at), signature):
        raise InvalidInput("checkpoint", "The checkpoint's signature does not match: it was altered, "
                                         "or made with another secret key.")
    return Checkpoint(events, head, at, signature)


# Verification -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ChainReport:
    events: int
    broken_event_id: int | None = None
    reason: str = ""
    # False while an install from before the keyed chain has not been re-anchored yet.
    keyed: bool = True

    @property
    def intact(self) -> bool:
        return self.broken_event_id is None and not self.reason


def verify_chain(session: Session, batch_size: int = 5000, *, checkpoint: Checkpoint | None = None) -> ChainReport:
    """Recompute every hash in order; name the first event that does not match. With a
    checkpoint, also report events removed or rewritten at or before it."""
    keys = _keys(session)
    chain = _chain_mac(keys)
    wordings = _wording_digests(session)
    redactions = _Redactions(session)
    anchor = session.execute(sa.select(ConsentEvent.id, ConsentEvent.note).where(ConsentEvent.action == REANCHORED)
                             .order_by(ConsentEvent.id).limit(1)).first()
    keyed = anchor is not None or not _is_legacy_chain(session, chain)
    # Events before the anchor (all of them, before re-anchoring) are the old unkeyed ones.
    legacy_before = anchor.id if anchor else (0 if keyed else float("inf"))
    seal = _Seal(keys)
    prev_hash = GENESIS_HASH
    count = 0
    last_id = 0

    def broken(event, reason):
        return ChainReport(count, event.id, reason, keyed)

    while True:
        events = session.scalars(
            sa.select(ConsentEvent).where(ConsentEvent.id > last_id).order_by(ConsentEvent.id).limit(batch_size)
        ).all()
        if not events:
            break
        for event in events:
            count += 1
            wording = wordings.get(event.wording_id)
            if event.prev_hash != prev_hash:
                return broken(event, "does not link to the event before it (one was removed or altered)")
            if event.id < legacy_before:
                if _legacy_hash(event) != event.hash:
                    return broken(event, "its recorded fields were changed after it was written")
                seal.add(event, wording, redactions.unexplained(event))
            else:
                if _event_hash(chain, event, wording) != event.hash:
                    return broken(event, "its recorded fields or the wording text it showed were changed after it "
                                         "was written (or the secret key is not the one it was written with)")
                if anchor is not None and event.id == anchor.id:
                    sealed = _SEAL.search(event.note or "")
                    if not sealed or sealed[1] != seal.hexdigest():
                        return broken(event, "an event from before the re-anchoring had its wording text or "
                                             "redaction changed since")
            if event.redacted_at is None:
                digest = _personal_digest(event.source_url, event.ip, event.user_agent, event.note)
                if digest != event.personal_digest:
                    return broken(event, "its source URL, IP, user agent or note was changed")
            elif any(v is not None for v in (event.source_url, event.ip, event.user_agent, event.note)):
                return broken(event, "it is marked redacted but holds personal data written since")
            elif event.id >= legacy_before and not redactions.recorded(event):
                return broken(event, "it is marked redacted, but the ledger records no redaction of this contact "
                                     "at that moment")
            if checkpoint is not None and count == checkpoint.events and event.hash != checkpoint.head:
                return broken(event, f"it is not the event the checkpoint of {checkpoint.at} ends with: events at "
                                     f"or before the checkpoint were removed or rewritten")
            prev_hash = event.hash
            last_id = event.id
        session.expunge_all()
    if checkpoint is not None and count < checkpoint.events:
        return ChainReport(count, None, f"the checkpoint of {checkpoint.at} counted {checkpoint.events} events, only "
                                        f"{count} remain: events were removed", keyed)
    return ChainReport(count, keyed=keyed)


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


# Path segments of our own pages that are followed by a personal token (confirm, unsubscribe,
# preferences, a webinar seat's cancel and stop-mail links).
_TOKEN_AFTER = frozenset({"confirm", "unsubscribe", "preferences", "cancel", "stop-mail"})
_LONG_SEGMENT = 32  # longer than any slug we make: someone else's token, shown as "…" too


def source_page(source_url: str | None) -> str | None:
    """The page an event came from, as staff read it: the address without its query string,
    fragment or token segments (a live confirm or preferences link would let the reader act
    for the person). The ledger keeps the full evidence; this only shapes what is shown."""
    if not source_url:
        return source_url
    parts = urlsplit(source_url)
    if parts.scheme not in ("http", "https"):
        return source_url.split("?", 1)[0].split("#", 1)[0]
    segments = parts.path.split("/")
    shown = ["…" if segment and (segments[i - 1] in _TOKEN_AFTER or len(segment) >= _LONG_SEGMENT) else segment
             for i, segment in enumerate(segments)]
    host = parts.netloc.rsplit("@", 1)[-1]  # never a user:password@ part
    return f"{parts.scheme}://{host}{'/'.join(shown)}"
