"""Staff-side reading of contacts: search, detail, bulk export (CSV or JSON, streamed).
The queries that must stay fast at a million contacts are all in this module."""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
from typing import Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audience import consent, fields as custom_fields
from mailer.audience.contacts import normalise_email
from mailer.db import SQLITE_SEARCH_TABLE, is_postgres
from mailer.errors import InvalidInput, NotFound
from mailer.models import (ConsentEvent, Contact, Delivery, MailingList, Registration, Subscription,
                           SubscriptionStatus, Webinar, name_search_key)

MAX_PAGE = 500
# A name prefix with at least this many matches is "common" (see _name_prefix).
COMMON_NAME_MATCHES = 2000
# Shorter search texts are a name prefix: trigram indexes need three characters, and a
# substring of one or two would match nearly everyone.
SUBSTRING_MIN = 3
_FTS = sa.table(SQLITE_SEARCH_TABLE, sa.column("rowid", sa.Integer))
RECENT_DELIVERIES = 50
EXPORT_FIELDS = ("id", "email", "name", "timezone", "created_at", "subscriptions")
CHUNK_CHARS = 64 * 1024  # what an export hands to the web server at a time
# A spreadsheet runs a cell that starts with one of these as a formula.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclasses.dataclass(frozen=True)
class ListStatus:
    list_id: int
    slug: str
    name: str
    status: str


@dataclasses.dataclass(frozen=True)
class ContactRow:
    """One line of a search result. `email` is None for an erased contact."""

    id: int
    email: str | None
    name: str
    created_at: dt.datetime
    erased_at: dt.datetime | None
    subscriptions: tuple[ListStatus, ...]


@dataclasses.dataclass(frozen=True)
class ContactDetail:
    """Everything the staff detail page shows about one person (ORM objects, loaded)."""

    contact: Contact
    subscriptions: list[tuple[Subscription, MailingList]]
    registrations: list[tuple[Registration, Webinar]]
    deliveries: list[Delivery]  # the most recent RECENT_DELIVERIES, newest first
    consent_events: list[ConsentEvent]  # oldest first, with .wording loaded


def check_filters(session: Session, list_id: int | None, status: str | None) -> None:
    """InvalidInput for an unknown status or list (checked before a stream starts)."""
    if status is not None and status not in set(SubscriptionStatus):
        raise InvalidInput("status", f"Unknown status '{status}': use pending, active or unsubscribed.")
    if list_id is not None and session.get(MailingList, list_id) is None:
        raise InvalidInput("list_id", f"No mailing list with id {list_id}.")


def _filtered_ids(session: Session, *, q: str, list_id: int | None, status: str | None):
    """SELECT contacts.id with every filter applied; the caller adds order and keyset.
    A list filter walks the subscription indexes (list_id[, status], contact_id) from
    the newest contact down, so a page reads about `limit` index entries."""
    q = (q or "").strip()
    if list_id is not None:
        stmt = sa.select(Subscription.contact_id.label("id")).where(Subscription.list_id == list_id)
        if status is not None:
            stmt = stmt.where(Subscription.status == status)
        id_column = Subscription.contact_id
        # The address, the name and "not erased" live on contacts.
        stmt = stmt.join(Contact, Contact.id == Subscription.contact_id)
    else:
        stmt = sa.select(Contact.id.label("id"))
        id_column = Contact.id
        if status is not None:
            stmt = stmt.where(sa.exists().where(Subscription.contact_id == Contact.id, Subscription.status == status))
    mode = search_mode(q)
    if mode == "address":
        stmt = stmt.where(Contact.email == normalise_email(q))
    elif mode == "name":
        condition, few = _name_prefix(session, name_search_key(q))
        stmt = stmt.where(condition)
        if few:  # the name index finds them all at once: keep the keyset from luring the planner away
            return stmt, id_column, id_column + 0
    elif mode == "text":
        key = name_search_key(q)
        if is_postgres(session):  # the pg_trgm GIN indexes answer both LIKEs; the planner picks the walk
            stmt = stmt.where(sa.or_(Contact.email.contains(key, autoescape=True),
                                     Contact.name_key.contains(key, autoescape=True)))
        else:
            # The FTS5 trigram table drives: it hands out matching rowids newest first (ORDER BY
            # rowid DESC is its own order), so a page of a common text stops after a page.
            phrase = '"' + key.replace('"', '""') + '"'
            stmt = stmt.join(_FTS, _FTS.c.rowid == Contact.id).where(
                sa.literal_column(SQLITE_SEARCH_TABLE).op("MATCH")(phrase))
            return stmt, _FTS.c.rowid, _FTS.c.rowid
    return stmt, id_column, id_column


def search_mode(q: str | None) -> str:
    """How search_contacts reads `q`: "none"; "address" (a whole address, matched exactly);
    "name" (one or two characters: the start of a name); "text" (three or more: found
    anywhere in the address or the name, "maria", "example.org", "@clinic")."""
    q = (q or "").strip()
    if not q:
        return "none"
    if "@" in q:
        try:
            normalise_email(q)
            return "address"
        except InvalidInput:
            pass
    return "text" if len(q) >= SUBSTRING_MIN else "name"


def describe_search(*, q: str = "", list_id: int | None = None, status: str | None = None) -> str:
    """A search in the audit log: its kind and filters, never the searched text (which may be an address)."""
    return f"search={search_mode(q)} list={list_id or 'any'} status={status or 'any'}"


def _name_prefix(session: Session, key: str):
    """(condition, few): contacts.name_key starts with `key`; few when the index alone should be used. PostgreSQL: LIKE on the varchar_pattern_ops
    index, and its statistics choose the plan. SQLite (no statistics) would always read
    every match from ix_contacts_name_key and sort them by id: fine for a rare name,
    over 300 ms for one in ten of a million contacts. So a few index entries are counted
    first, and a common prefix walks the contacts newest first instead (`name_key || ''`
    cannot use the index), which finds a page of matches after a few thousand rows."""
    if is_postgres(session):
        escaped = key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return Contact.name_key.like(escaped + "%", escape="\\"), False

    def in_range(column):
        # Binary (code point) order: every key that starts with `key` sorts in this range.
        return sa.and_(column >= key, column < key + "\U0010ffff")

    probe = sa.select(Contact.id).where(in_range(Contact.name_key)).limit(COMMON_NAME_MATCHES).subquery()
    common = session.scalar(sa.select(sa.func.count()).select_from(probe)) >= COMMON_NAME_MATCHES
    return in_range(Contact.name_key.concat("") if common else Contact.name_key), not common


def search_contacts(session: Session, *, q: str = "", list_id: int | None = None, status: str | None = None,
                    before_id: int | None = None, limit: int = 50, include_erased: bool = False) -> list[ContactRow]:
    """Contacts newest first (id descending). `q` (see search_mode): a whole address is
    matched exactly (as normalise_email makes it); three or more characters are found
    anywhere in the address or the name, case-insensitively (any script); one or two are
    the start of a name. `status` is the subscription status
    on `list_id`, or on any list when no list is given. Erased contacts are left out
    unless include_erased. Keyset pages: pass the last row's id as `before_id`. Like the
    other paged reads, one more row than asked is returned when there is a next page."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput("limit", f"limit must be between 1 and {MAX_PAGE}.")
    check_filters(session, list_id, status)
    stmt, id_column, keyset_column = _filtered_ids(session, q=q, list_id=list_id, status=status)
    if not include_erased:
        stmt = stmt.where(Contact.email.is_not(None))
    if before_id is not None:
        stmt = stmt.where(keyset_column < before_id)
    ids = [row.id for row in session.execute(stmt.order_by(id_column.desc()).limit(limit + 1))]
    if not ids:
        return []
    people = {row.id: row for row in session.execute(
        sa.select(Contact.id, Contact.email, Contact.name, Contact.created_at, Contact.erased_at)
        .where(Contact.id.in_(ids)))}
    statuses = _list_statuses(session, ids)
    return [ContactRow(cid, people[cid].email, people[cid].name, people[cid].created_at, people[cid].erased_at,
                       statuses.get(cid, ())) for cid in ids]


def matching_ids(session: Session, *, q: str = "", list_id: int | None = None, status: str | None = None,
                 after_id: int = 0, up_to_id: int | None = None, limit: int = 500) -> list[int]:
    """The next `limit` (not erased) contacts a search finds, oldest first after `after_id`
    and, given `up_to_id`, none added after it: how a bulk action walks a search result."""
    stmt, id_column, keyset_column = _filtered_ids(session, q=q, list_id=list_id, status=status)
    stmt = stmt.where(Contact.email.is_not(None), keyset_column > after_id)
    if up_to_id is not None:
        stmt = stmt.where(keyset_column <= up_to_id)
    return [row.id for row in session.execute(stmt.order_by(id_column).limit(limit))]


def count_matching(session: Session, *, q: str = "", list_id: int | None = None, status: str | None = None,
                   up_to_id: int | None = None) -> int:
    """How many (not erased) contacts a search finds (up to `up_to_id`): the count a bulk
    action on a search result states before staff confirm it."""
    check_filters(session, list_id, status)
    stmt, _, keyset_column = _filtered_ids(session, q=q, list_id=list_id, status=status)
    stmt = stmt.where(Contact.email.is_not(None))
    if up_to_id is not None:
        stmt = stmt.where(keyset_column <= up_to_id)
    return session.scalar(sa.select(sa.func.count()).select_from(stmt.subquery()))


def _list_statuses(session: Session, contact_ids: list[int]) -> dict[int, tuple[ListStatus, ...]]:
    found: dict[int, list[ListStatus]] = {}
    for row in session.execute(
            sa.select(Subscription.contact_id, MailingList.id, MailingList.slug, MailingList.name, Subscription.status)
            .join(MailingList, MailingList.id == Subscription.list_id)
            .where(Subscription.contact_id.in_(contact_ids)).order_by(Subscription.contact_id, MailingList.id)):
        found.setdefault(row[0], []).append(ListStatus(row[1], row[2], row[3], row[4]))
    return {cid: tuple(items) for cid, items in found.items()}


def count_contacts(session: Session, *, list_id: int | None = None, status: str | None = None) -> int | None:
    """How many (not erased) contacts match the list/status filters, when an index can
    tell cheaply: everyone, or one list (with or without a status). None for a status on
    any list, which would visit every contact; a name search has no count either."""
    check_filters(session, list_id, status)
    if list_id is None and status is None:
        return session.scalar(sa.select(sa.func.count()).select_from(Contact).where(Contact.email.is_not(None)))
    if list_id is None:
        return None
    on_list = [Subscription.list_id == list_id] + ([Subscription.status == status] if status else [])
    subscribed = session.scalar(sa.select(sa.func.count()).select_from(Subscription).where(*on_list))
    # Erased people are few: subtract theirs instead of joining every subscription to contacts.
    erased = session.scalar(sa.select(sa.func.count()).select_from(Contact).join(
        Subscription, Subscription.contact_id == Contact.id).where(Contact.email.is_(None), *on_list))
    return subscribed - erased


def get_contact(session: Session, contact_id: int) -> Contact:
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"No contact with id {contact_id}.")
    return contact


def contact_id_for_email(session: Session, email: str) -> int:
    """The (not erased) contact with this address; InvalidInput on field "email" if it
    is not an address, NotFound if nobody has it."""
    address = normalise_email(email)
    contact_id = session.scalar(sa.select(Contact.id).where(Contact.email == address))
    if contact_id is None:
        raise NotFound(f"no contact with the address {address}")
    return contact_id


def contact_detail(session: Session, contact_id: int) -> ContactDetail:
    """Subscriptions (with list), registrations (with webinar), recent deliveries and the
    consent history of one contact; NotFound if there is no such contact."""
    contact = get_contact(session, contact_id)
    subscriptions = [tuple(row) for row in session.execute(
        sa.select(Subscription, MailingList).join(MailingList, MailingList.id == Subscription.list_id)
        .where(Subscription.contact_id == contact_id).order_by(MailingList.id))]
    registrations = [tuple(row) for row in session.execute(
        sa.select(Registration, Webinar).join(Webinar, Webinar.id == Registration.webinar_id)
        .where(Registration.contact_id == contact_id).order_by(Webinar.starts_at.desc()))]
    deliveries = list(session.scalars(sa.select(Delivery).where(Delivery.contact_id == contact_id)
                                      .order_by(Delivery.id.desc()).limit(RECENT_DELIVERIES)))
    events = consent.contact_history(session, contact_id)
    for event in events:
        event.wording  # loaded now: the page renders after the session has closed
    return ContactDetail(contact, subscriptions, registrations, deliveries, events)


# Bulk export ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ExportRows:
    """The rows of an export, and the custom fields' keys (contacts_csv's extra columns)."""

    field_keys: tuple[str, ...]
    rows: Iterator[dict]

    def __iter__(self) -> Iterator[dict]:
        return self.rows


def export_contacts(session: Session, *, list_id: int | None = None, status: str | None = None,
                    batch_size: int = 5000, q: str = "", within=None) -> ExportRows:
    """Every (not erased) contact matching the filters (`q` as in search_contacts; `within`: a
    select of contact ids, e.g. a segment's), oldest first, as plain dicts with
    EXPORT_FIELDS ("subscriptions" is a list of {"list", "status"}) and "fields" (custom field values by key). Read in id batches
    with Core rows, so memory stays flat however many there are; the session must stay
    open while the iterator is consumed."""
    check_filters(session, list_id, status)
    return ExportRows(tuple(custom_fields.all_keys(session)),
                      _export_batches(session, list_id=list_id, status=status, batch_size=batch_size, q=q,
                                      within=within))


def _export_batches(session: Session, *, list_id, status, batch_size, q, within) -> Iterator[dict]:
    ids_stmt, id_column, keyset_column = _filtered_ids(session, q=q, list_id=list_id, status=status)
    last_id = 0
    while True:
        ids_query = ids_stmt.where(keyset_column > last_id, Contact.email.is_not(None),
                                   *((id_column.in_(within),) if within is not None else ())) \
            .order_by(id_column).limit(batch_size).subquery()
        rows = session.execute(
            sa.select(Contact.id, Contact.email, Contact.name, Contact.timezone, Contact.created_at)
            .where(Contact.id.in_(sa.select(ids_query.c.id))).order_by(Contact.id)).all()
        if not rows:
            return
        last_id = rows[-1].id
        subs: dict[int, list[dict]] = {}
        for cid, slug, sub_status in session.execute(
                sa.select(Subscription.contact_id, MailingList.slug, Subscription.status)
                .join(MailingList, MailingList.id == Subscription.list_id)
                .where(Subscription.contact_id.in_([row.id for row in rows]))
                .order_by(Subscription.contact_id, MailingList.id)):
            subs.setdefault(cid, []).append({"list": slug, "status": sub_status})
        values = custom_fields.values_for(session, [row.id for row in rows])
        for row in rows:
            yield {"id": row.id, "email": row.email, "name": row.name, "timezone": row.timezone,
                   "created_at": row.created_at.isoformat(), "subscriptions": subs.get(row.id, []),
                   "fields": values.get(row.id, {})}


def spreadsheet_cell(value) -> str:
    """The text of a CSV cell, with a leading apostrophe when a spreadsheet would run it as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def contacts_csv(rows: Iterable[dict], field_keys: Iterable[str] | None = None) -> Iterator[str]:
    """CSV text in chunks of about CHUNK_CHARS. Cells that a spreadsheet would run as a
    formula get a leading apostrophe; subscriptions read "newsletter:active; …"; then a
    column per custom field, headed by its key (those of ExportRows unless given), which an
    import maps back."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    field_keys = list(getattr(rows, "field_keys", ()) if field_keys is None else field_keys)
    writer.writerow((*EXPORT_FIELDS, *field_keys))
    for row in rows:
        subs = "; ".join(f"{s['list']}:{s['status']}" for s in row["subscriptions"])
        values = row.get("fields", {})
        writer.writerow([spreadsheet_cell(cell) for cell in (
            row["id"], row["email"], row["name"], row["timezone"], row["created_at"], subs,
            *(values.get(key, "") for key in field_keys))])
        if buffer.tell() >= CHUNK_CHARS:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def contacts_json(rows: Iterable[dict]) -> Iterator[str]:
    """A JSON array, written element by element in chunks of about CHUNK_CHARS."""
    parts, size, separator = ["["], 1, "\n"
    for row in rows:
        text = separator + json.dumps(row, ensure_ascii=False)
        parts.append(text)
        size += len(text)
        separator = ",\n"
        if size >= CHUNK_CHARS:
            yield "".join(parts)
            parts, size = [], 0
    parts.append("\n]\n")
    yield "".join(parts)
