"""Custom contact fields: staff define them (a key templates use as
{{ contact.fields.<key> }}, a label, a type), and each contact may hold one value per
field, checked by the field's type on every way in (console, API, CLI, imports).
Values are stored in canonical text (see models.ContactFieldValue); a number field's
value is kept as a number too, so segment rules compare numbers as numbers."""
from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import re

import jinja2
import sqlalchemy as sa
from jinja2 import nodes
from sqlalchemy.orm import Session

from mailer.db import dialect_insert
from mailer.errors import Conflict, InvalidInput, NotFound
from mailer.models import Contact, ContactFieldValue, Field, FieldType

TYPES = tuple(FieldType)
TYPE_LABELS = {FieldType.TEXT: "text", FieldType.NUMBER: "number", FieldType.DATE: "date",
               FieldType.YES_NO: "yes/no", FieldType.CHOICE: "one of a set of choices"}
# Columns of the contacts export and of imports: a field by one of these names would clash.
RESERVED_KEYS = {"id", "email", "mail", "name", "first_name", "firstname", "timezone", "created_at", "subscriptions",
                 "fields", "status", "list"}
KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
VALUE_MAX = 500
CHOICES_MAX, CHOICE_MAX = 50, 100
YES, NO = "yes", "no"
_YES_NO = {"yes": YES, "y": YES, "true": YES, "1": YES, "no": NO, "n": NO, "false": NO, "0": NO}
# A sample value of each type, for previews.
SAMPLES = {FieldType.TEXT: "Sample text", FieldType.NUMBER: "42", FieldType.DATE: "2027-01-31",
           FieldType.YES_NO: YES}


# Defining fields ----------------------------------------------------------------------

def create_field(session: Session, *, key: str, label: str, type: str, choices=(), now: dt.datetime) -> Field:
    key = _key(key)
    if session.scalar(sa.select(Field.id).where(Field.key == key)) is not None:
        raise Conflict("key", f"A field with the key '{key}' exists already (archived ones keep their key).")
    field_type = _type(type)
    field = Field(key=key, label=_label(label), type=field_type, choices=json.dumps(_choices(field_type, choices)),
                  created_at=now, updated_at=now)
    session.add(field)
    session.flush()
    return field


def update_field(session: Session, field_id: int, *, label: str | None = None, choices=None,
                 now: dt.datetime) -> Field:
    """A new label, or (a choice field) new choices. The key and type stay: templates and
    stored values depend on them. A choice still held by a contact cannot be removed."""
    field = get_field(session, field_id)
    if label is not None:
        field.label = _label(label)
    if choices is not None:
        if field.type != FieldType.CHOICE:
            raise InvalidInput("choices", "Only a field of type choice has choices.")
        new = _choices(field.type, choices)
        held = set(session.scalars(sa.select(ContactFieldValue.value).distinct()
                                   .where(ContactFieldValue.field_id == field.id)))
        dropped = sorted(held - set(new))
        if dropped:
            raise InvalidInput("choices", f"Contacts still hold {', '.join(repr(d) for d in dropped)}; keep "
                                          "these choices, or change those contacts first.")
        field.choices = json.dumps(new)
    field.updated_at = now
    return field


def archive_field(session: Session, field_id: int, *, now: dt.datetime) -> Field:
    """No longer offered for editing or importing; the values stay (templates still read them)."""
    field = get_field(session, field_id)
    if field.archived_at is None:
        field.archived_at = now
    return field


def get_field(session: Session, field_id: int) -> Field:
    field = session.get(Field, field_id)
    if field is None:
        raise NotFound(f"no field {field_id}")
    return field


def list_fields(session: Session, *, archived: bool = False) -> list[Field]:
    query = sa.select(Field).order_by(Field.label, Field.id)
    if not archived:
        query = query.where(Field.archived_at.is_(None))
    return list(session.scalars(query))


def choices_of(field: Field) -> list[str]:
    return json.loads(field.choices or "[]")


def _key(key) -> str:
    key = str(key or "").strip()
    if not KEY_PATTERN.match(key):
        raise InvalidInput("key", "The key is up to 40 lowercase letters, digits and underscores, starting with a "
                                  "letter (e.g. clinic or visit_count).")
    if key in RESERVED_KEYS:
        raise InvalidInput("key", f"'{key}' is a column of imports and exports already; choose another key.")
    if hasattr(dict, key) or not _readable_in_templates(key):
        raise InvalidInput("key", f"'{key}' cannot be read in a template as contact.fields.{key}; choose another key.")
    return key


def _readable_in_templates(key: str) -> bool:
    """{{ contact.fields.<key> }} parses as that attribute (not a Jinja keyword)."""
    try:
        tree = jinja2.Environment().parse("{{ contact.fields.%s }}" % key)
    except jinja2.TemplateSyntaxError:
        return False
    output = tree.body[0].nodes[0] if tree.body and isinstance(tree.body[0], nodes.Output) else None
    return isinstance(output, nodes.Getattr) and output.attr == key


def _label(label) -> str:
    label = " ".join(str(label or "").split())
    if not label or len(label) > 100:
        raise InvalidInput("label", "Give the field a label of up to 100 characters.")
    return label


def _type(value) -> str:
    if value not in TYPES:
        raise InvalidInput("type", f"Unknown type '{value}'; one of: {', '.join(TYPES)}.")
    return str(value)


def _choices(field_type: str, choices) -> list[str]:
    if isinstance(choices, str):
        choices = choices.splitlines() if "\n" in choices else choices.split(",")
    cleaned = list(dict.fromkeys(" ".join(str(c).split()) for c in (choices or ()) if str(c).strip()))
    if field_type != FieldType.CHOICE:
        if cleaned:
            raise InvalidInput("choices", "Only a field of type choice has choices.")
        return []
    if not cleaned:
        raise InvalidInput("choices", "List the choices, one per line.")
    if len(cleaned) > CHOICES_MAX or any(len(c) > CHOICE_MAX for c in cleaned):
        raise InvalidInput("choices", f"Up to {CHOICES_MAX} choices of up to {CHOICE_MAX} characters each.")
    return cleaned


# Values -------------------------------------------------------------------------------

def parse_value(field: Field, raw, *, where: str | None = None) -> tuple[str, float | None] | None:
    """The canonical text (and number) of `raw` for this field; None for an empty value
    (the contact has none). InvalidInput names the field (its key) and what is wrong."""
    where = where or field.key
    text = " ".join(str(raw).split()) if raw is not None and not isinstance(raw, bool) else \
        ("" if raw is None else (YES if raw else NO))
    if text == "":
        return None
    if field.type == FieldType.NUMBER:
        try:
            number = decimal.Decimal(text.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text)
                                     else text)
        except decimal.InvalidOperation:
            number = None
        if number is None or not number.is_finite() or abs(number) >= 10**15:
            raise InvalidInput(where, f"{field.label} ({field.key}) is a number; '{text[:40]}' is not one.")
        canonical = format(number.normalize(), "f") if number != 0 else "0"
        return canonical, float(number)
    if field.type == FieldType.DATE:
        try:
            return dt.date.fromisoformat(text).isoformat(), None
        except ValueError:
            raise InvalidInput(where, f"{field.label} ({field.key}) is a date like 2027-01-31; "
                                      f"'{text[:40]}' is not one.") from None
    if field.type == FieldType.YES_NO:
        if text.lower() not in _YES_NO:
            raise InvalidInput(where, f"{field.label} ({field.key}) is yes or no; '{text[:40]}' is neither.")
        return _YES_NO[text.lower()], None
    if field.type == FieldType.CHOICE:
        choices = choices_of(field)
        found = {c.casefold(): c for c in choices}.get(text.casefold())
        if found is None:
            raise InvalidInput(where, f"{field.label} ({field.key}) is one of: {', '.join(choices)}; "
                                      f"'{text[:40]}' is not.")
        return found, None
    if len(text) > VALUE_MAX:
        raise InvalidInput(where, f"{field.label} ({field.key}) is limited to {VALUE_MAX} characters.")
    return text, None


def values_of(session: Session, contact_id: int) -> dict[str, str]:
    """One contact's values by field key (archived fields too)."""
    return dict(session.execute(sa.select(Field.key, ContactFieldValue.value)
                                .join(Field, Field.id == ContactFieldValue.field_id)
                                .where(ContactFieldValue.contact_id == contact_id).order_by(Field.key)).all())


def values_for(session: Session, contact_ids) -> dict[int, dict[str, str]]:
    """The values of many contacts in one query: contact id → {key: value}."""
    found: dict[int, dict[str, str]] = {}
    ids = list(contact_ids)
    if not ids:
        return found
    for cid, key, value in session.execute(
            sa.select(ContactFieldValue.contact_id, Field.key, ContactFieldValue.value)
            .join(Field, Field.id == ContactFieldValue.field_id).where(ContactFieldValue.contact_id.in_(ids))):
        found.setdefault(cid, {})[key] = value
    return found


def template_values(session: Session, contact_id: int) -> dict[str, str]:
    """What {{ contact.fields }} holds for one contact: every field's key, "" where none."""
    return dict({key: "" for key in all_keys(session)}, **values_of(session, contact_id))


def set_values(session: Session, contact_id: int, values: dict, *, archived_ok: bool = False) -> list[tuple[str, str, str]]:
    """Set a contact's values by field key (an empty value clears it); all are checked
    before any is written. Returns the changes as (key, old, new), "" for none, for the
    audit log. InvalidInput names the first bad value's field key."""
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"No contact with id {contact_id}.")
    if contact.email is None:
        raise InvalidInput("contact", "This contact is erased; nothing can be stored about them.")
    by_key = {f.key: f for f in session.scalars(sa.select(Field).where(Field.key.in_(list(values))))}
    parsed = {}
    for key, raw in values.items():
        field = by_key.get(key)
        if field is None or (field.archived_at is not None and not archived_ok):
            raise InvalidInput(key, f"There is no field '{key}'.")
        parsed[field] = parse_value(field, raw)
    current = {f: v for f, v in session.execute(
        sa.select(ContactFieldValue.field_id, ContactFieldValue.value).where(
            ContactFieldValue.contact_id == contact_id,
            ContactFieldValue.field_id.in_([f.id for f in parsed])))}
    changes = []
    for field, new in parsed.items():
        old = current.get(field.id)
        if (new[0] if new else None) == old:
            continue
        if new is None:
            session.execute(sa.delete(ContactFieldValue).where(ContactFieldValue.contact_id == contact_id,
                                                               ContactFieldValue.field_id == field.id))
        else:
            _upsert(session, [{"contact_id": contact_id, "field_id": field.id, "value": new[0], "number": new[1]}])
        changes.append((field.key, old or "", new[0] if new else ""))
    return sorted(changes)


def _upsert(session: Session, rows: list[dict]) -> None:
    insert = dialect_insert(session, ContactFieldValue)
    session.execute(insert.on_conflict_do_update(
        index_elements=["contact_id", "field_id"],
        set_={"value": insert.excluded.value, "number": insert.excluded.number}), rows)


def store_many(session: Session, rows: list[tuple[int, int, tuple[str, float | None]]]) -> None:
    """Bulk write (contact id, field id, parsed value), replacing what was there (imports)."""
    if rows:
        _upsert(session, [{"contact_id": c, "field_id": f, "value": v[0], "number": v[1]} for c, f, v in rows])


def change_text(changes: list[tuple[str, str, str]]) -> str:
    """Audit detail: each changed field by key, old → new (values, never an address)."""
    def shown(value: str) -> str:
        return "(none)" if not value else "(an address, not shown)" if "@" in value else value[:80]

    return "; ".join(f"{key}: {shown(old)} → {shown(new)}" for key, old, new in changes)


def forget_contact(session: Session, contact_id: int) -> int:
    """Erasure: every value held about the person."""
    return session.execute(sa.delete(ContactFieldValue).where(ContactFieldValue.contact_id == contact_id)).rowcount


# Templates ----------------------------------------------------------------------------

def all_keys(session: Session) -> list[str]:
    """Every field's key, archived too: mail already written may read them."""
    return list(session.scalars(sa.select(Field.key).order_by(Field.key)))


def template_keys(session: Session) -> set[str]:
    """The keys a template may use when saved: the fields not archived."""
    return set(session.scalars(sa.select(Field.key).where(Field.archived_at.is_(None))))


def sample_values(session: Session) -> dict[str, str]:
    """A sample value per field, for previews (a choice field's first choice)."""
    return {f.key: (choices_of(f) or [""])[0] if f.type == FieldType.CHOICE else SAMPLES.get(f.type, "")
            for f in list_fields(session, archived=True)}


# Imports ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """What parse_value needs of a field, usable after its session has closed."""

    id: int
    key: str
    label: str
    type: str
    choices: str

    @classmethod
    def of(cls, field: Field) -> "FieldSpec":
        return cls(field.id, field.key, field.label, field.type, field.choices)


def columns_to_fields(session: Session, headers) -> tuple[dict[str, FieldSpec], list[str]]:
    """The CSV columns (other than those already used) that name a field by key or label
    (case and spacing ignored; archived fields are not imported), and those that name none."""
    fields = list_fields(session)
    by_name = {}
    for field in fields:
        by_name.setdefault(field.key.casefold(), field)
        by_name.setdefault(" ".join(field.label.split()).casefold(), field)
    mapped, unknown = {}, []
    for header in headers:
        field = by_name.get(" ".join((header or "").split()).casefold())
        if field is None:
            unknown.append(header)
        else:
            mapped[header] = FieldSpec.of(field)
    return mapped, unknown
