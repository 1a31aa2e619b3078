"""Importing existing subscribers from CSV: streamed in chunks, every row accounted
for (imported, invalid, duplicate or already on the list, suppressed), consent recorded
with how it was obtained. A suppressed or unsubscribed address is never re-activated.
Other columns named like a custom field (its key or label) fill that field, checked by
its type (a bad value makes the row invalid); columns naming no field are reported."""
from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import itertools
from typing import Callable, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audience import consent, contacts, fields
from mailer.db import dialect_insert, session_scope
from mailer.delivery import suppression
from mailer.errors import InvalidInput
from mailer.models import ConsentAction, Contact, MailingList, Subscription, SubscriptionStatus, Suppression

CHUNK = 5000
EXAMPLES = 100  # invalid rows listed in the report, with line number and reason
EMAIL_COLUMNS = ("email", "e-mail", "email address", "mail")
NAME_COLUMNS = ("name", "first name", "first_name", "firstname")


@dataclasses.dataclass
class ImportReport:
    rows: int = 0
    imported: int = 0
    invalid: int = 0
    duplicate: int = 0  # twice in the file, or already on the list (in any state: unsubscribed stays so)
    suppressed: int = 0
    examples: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {"invalid": []})
    # Columns of the file that name no custom field (nor the address or name): not imported.
    unknown_columns: list[str] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        unknown = (f"; columns not imported (no field of that name): {', '.join(self.unknown_columns)}"
                   if self.unknown_columns else "")
        return (f"{self.rows} rows: {self.imported} imported, {self.invalid} invalid, "
                f"{self.duplicate} duplicate or already on the list, {self.suppressed} suppressed{unknown}")


def _column(fieldnames, candidates) -> str | None:
    for name in fieldnames or []:
        if name and name.strip().lower() in candidates:
            return name
    return None


def consent_note_or_refuse(consent_note: str | None) -> str:
    note = " ".join((consent_note or "").split())
    if len(note) < 10:
        raise InvalidInput("consent_note", "Say how these people gave their consent (e.g. 'Paper form at the "
                                           "clinic desk, 2024–2026'); an import without it is refused.")
    return note


def refuse_archived(mailing_list: MailingList) -> None:
    if mailing_list.archived_at is not None:
        raise InvalidInput("list", f"The list '{mailing_list.name}' is archived: it takes no new subscribers, "
                                   "imported ones included.")


def columns(fieldnames) -> tuple[str, str | None]:
    """The email column (required) and the name column (optional) of a CSV header."""
    email_column = _column(fieldnames, EMAIL_COLUMNS)
    if email_column is None:
        raise InvalidInput("file", "The CSV needs an 'email' column.")
    return email_column, _column(fieldnames, NAME_COLUMNS)


def read_addresses(lines: Iterable[str]) -> Iterator[str]:
    """The addresses in a CSV with an email column (see EMAIL_COLUMNS), or in plain lines
    of one address each (the first cell of each line); raw, for the caller to check."""
    rows = csv.reader(lines)
    first = next(rows, None)
    if first is None:
        return
    email_column = _column(first, EMAIL_COLUMNS)
    index = first.index(email_column) if email_column is not None else 0
    if email_column is None and first:
        yield first[0]
    for row in rows:
        if len(row) > index:
            yield row[index]


def import_csv(session_factory, settings, lines: Iterable[str], *, list_slug: str, consent_note: str,
               source: str, now: dt.datetime, progress: Callable[[ImportReport], None] | None = None,
               resume: ImportReport | None = None,
               checkpoint: Callable[[Session, ImportReport], None] | None = None) -> ImportReport:
    """Each chunk is its own transaction, so a large file neither holds the database nor
    sits in memory; re-running an import adds nobody twice. `checkpoint` runs inside each
    chunk's transaction, so a report saved there matches what was committed; `resume` (such
    a saved report) skips the rows it already counts and carries on from its figures."""
    note = consent_note_or_refuse(consent_note)
    reader = csv.DictReader(lines)
    email_column, name_column = columns(reader.fieldnames)
    with session_scope(session_factory) as session:
        mailing_list = session.scalar(sa.select(MailingList).where(MailingList.slug == list_slug))
        if mailing_list is None:
            raise InvalidInput("list", f"No list '{list_slug}'.")
        refuse_archived(mailing_list)
        list_id, purpose = mailing_list.id, f"list:{mailing_list.slug}"
        wording = contacts.current_wording(session, list_id)
        field_columns, unknown = fields.columns_to_fields(
            session, [h for h in reader.fieldnames or [] if h not in (email_column, name_column) and (h or "").strip()])
    report = dataclasses.replace(resume, examples={k: list(v) for k, v in resume.examples.items()}) \
        if resume else ImportReport()
    report.unknown_columns = unknown
    chunk: list[tuple[str, str]] = []
    values: dict[str, dict[int, tuple[str, float | None]]] = {}  # address → field id → value (empty: none)
    for row in itertools.islice(reader, report.rows, None):
        report.rows += 1
        raw = (row.get(email_column) or "").strip()
        try:
            email = contacts.normalise_email(raw)
            row_values = {}
            for column, field in field_columns.items():
                parsed = fields.parse_value(field, row.get(column))
                if parsed is not None:
                    row_values[field.id] = parsed
            chunk.append((email, contacts.clean_name(row.get(name_column) if name_column else "")))
            if row_values:
                values[email] = row_values
        except InvalidInput as exc:
            report.invalid += 1
            if len(report.examples["invalid"]) < EXAMPLES:
                why = "no address" if not raw else exc.message.removeprefix("That email address is not valid: ")
                report.examples["invalid"].append(f"row {report.rows + 1}: {raw[:80]!r} ({why})")
        if len(chunk) >= CHUNK:
            _import_chunk(session_factory, settings, chunk, list_id, purpose, wording, note, source, now, report,
                          checkpoint, values)
            chunk, values = [], {}
            if progress:
                progress(report)
    if chunk:
        _import_chunk(session_factory, settings, chunk, list_id, purpose, wording, note, source, now, report,
                      checkpoint, values)
    if progress:
        progress(report)
    return report


def _import_chunk(session_factory, settings, chunk, list_id, purpose, wording, note, source, now, report,
                  checkpoint=None, values=None) -> None:
    hashes = {email: suppression.email_hash(settings, email) for email, _ in chunk}
    with session_scope(session_factory) as session:
        suppressed = set(session.scalars(sa.select(Suppression.email_hash).where(
            Suppression.email_hash.in_(list(set(hashes.values()))))))
        wanted = [(email, name) for email, name in chunk if hashes[email] not in suppressed]
        report.suppressed += len(chunk) - len(wanted)
        if wanted:
            _add_subscribers(session, hashes, wanted, list_id, purpose, wording, note, source, now, report,
                             values or {})
        if checkpoint:
            checkpoint(session, report)


def _add_subscribers(session, hashes, wanted, list_id, purpose, wording, note, source, now, report, values) -> None:
    session.execute(dialect_insert(session, Contact).on_conflict_do_nothing(index_elements=["email"]), [
        {"email": email, "email_hash": hashes[email], "name": name, "created_at": now}
        for email, name in dict(wanted).items()])
    ids = dict(session.execute(sa.select(Contact.email, Contact.id).where(
        Contact.email.in_([email for email, _ in wanted]))).all())
    new = session.execute(
        dialect_insert(session, Subscription).on_conflict_do_nothing(index_elements=["contact_id", "list_id"])
        .returning(Subscription.contact_id),
        [{"contact_id": ids[email], "list_id": list_id, "status": SubscriptionStatus.ACTIVE,
          "confirmed_at": now, "created_at": now} for email in dict(wanted)],
    ).scalars().all()
    report.imported += len(new)
    report.duplicate += len(wanted) - len(new)
    # The file's values replace those held, for people already known too; empty cells change nothing.
    fields.store_many(session, [(ids[email], field_id, value) for email, by_field in values.items()
                                if email in ids for field_id, value in by_field.items()])
    consent.record_events(session, [
        {"contact_id": contact_id, "list_id": list_id, "purpose": purpose, "action": ConsentAction.IMPORTED,
         "wording_id": wording.id if wording else None, "source_url": source, "note": note}
        for contact_id in new], now=now)
