"""Segments: saved rules that pick contacts, compiled to one SQL query (SQLAlchemy Core,
nothing filtered in Python), so a segment's count and its audience work at 1,000,000
contacts. Rules are ANDed or ORed in one level of groups:

    {"match": "all", "groups": [{"match": "any", "rules": [{"kind": "webinar", "op": "attended"}, …]}, …]}

Each rule is a predicate on one contact (its id IN a subquery, or a column test):

- list: subscription status on a list ({"list_id", "status"})
- subscribed / confirmed: when they subscribed to (or confirmed) a list, or any list
  ({"list_id"?, "op": "before" | "after" | "within_days", "value": "2027-01-31" | days})
- source: the page (or import) their consent came from contains a text ({"op": "contains", "value"})
- timezone: {"op": "is" | "is_not" | "is_empty", "value"}
- webinar: registered for, attended or missed a webinar, or any ({"op", "webinar_id"?})
- automation: enrolled in or completed an automation ({"op": "enrolled" | "completed", "sequence_id"})
- field: a custom field's value ({"ref_id": field id, "op": "eq" | "ne" | "contains" | "lt" | "gt" |
  "is_empty", "value"}), compared by the field's type (numbers as numbers, dates as dates); "ne"
  picks those without a value too, like "timezone is_not"

A segment narrows an audience; it never adds anyone: a newsletter goes only to subscribers
of its lists, an automation's mail only to subscribers of its list."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from mailer import clock
from mailer.errors import InvalidInput, NotFound
from mailer.audience import fields as custom_fields
from mailer.models import (ConsentEvent, Contact, ContactFieldValue, Enrolment, Field, FieldType, EnrolmentStatus, MailingList, Registration,
                           RegistrationStatus, Segment, Sequence, Subscription, SubscriptionStatus, Webinar)

KINDS = ("list", "subscribed", "confirmed", "source", "timezone", "webinar", "automation", "field")
OPS = {
    "list": tuple(SubscriptionStatus),
    "subscribed": ("before", "after", "within_days"),
    "confirmed": ("before", "after", "within_days"),
    "source": ("contains",),
    "timezone": ("is", "is_not", "is_empty"),
    "webinar": ("registered", "attended", "missed"),
    "automation": ("enrolled", "completed"),
    "field": ("eq", "ne", "contains", "lt", "gt", "is_empty"),
}
# Which field ops each type of field allows (contains: text; lt / gt: numbers and dates).
FIELD_OPS = {FieldType.TEXT: ("eq", "ne", "contains", "is_empty"), FieldType.NUMBER: ("eq", "ne", "lt", "gt", "is_empty"),
             FieldType.DATE: ("eq", "ne", "lt", "gt", "is_empty"), FieldType.YES_NO: ("eq", "ne", "is_empty"),
             FieldType.CHOICE: ("eq", "ne", "contains", "is_empty")}
MATCHES = ("all", "any")
MAX_GROUPS, MAX_RULES = 5, 10  # per segment, per group
SAMPLE = 10


@dataclasses.dataclass(frozen=True)
class Rule:
    kind: str
    op: str
    value: str | int | None = None
    ref_id: int | None = None  # the list, webinar or automation it is about (None: any)


@dataclasses.dataclass(frozen=True)
class Group:
    match: str
    rules: tuple[Rule, ...]


@dataclasses.dataclass(frozen=True)
class Rules:
    match: str
    groups: tuple[Group, ...]

    def as_json(self) -> str:
        return json.dumps({"match": self.match, "groups": [
            {"match": g.match, "rules": [{k: v for k, v in dataclasses.asdict(r).items() if v is not None}
                                         for r in g.rules]} for g in self.groups]}, sort_keys=True)


# Reading and checking rules -----------------------------------------------------------------

def parse_rules(session: Session, data) -> Rules:
    """Rules from their JSON shape, checked: each problem is InvalidInput naming where it
    is ("groups.1.rules.0.value"). The lists, webinars and automations named must exist."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            raise InvalidInput("rules", "The rules are not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidInput("rules", "The rules are an object with 'match' and 'groups'.")
    match = _match(data.get("match", "all"), "match")
    groups_data = data.get("groups")
    if not isinstance(groups_data, list) or not groups_data:
        raise InvalidInput("groups", "Add at least one rule.")
    if len(groups_data) > MAX_GROUPS:
        raise InvalidInput("groups", f"At most {MAX_GROUPS} groups.")
    groups = []
    for g, group in enumerate(groups_data):
        where = f"groups.{g}"
        if not isinstance(group, dict) or not isinstance(group.get("rules"), list) or not group["rules"]:
            raise InvalidInput(f"{where}.rules", "A group needs at least one rule.")
        if len(group["rules"]) > MAX_RULES:
            raise InvalidInput(f"{where}.rules", f"At most {MAX_RULES} rules in a group.")
        rules = tuple(_rule(session, rule, f"{where}.rules.{r}") for r, rule in enumerate(group["rules"]))
        groups.append(Group(_match(group.get("match", "all"), f"{where}.match"), rules))
    return Rules(match, tuple(groups))


def _match(value, field: str) -> str:
    if value not in MATCHES:
        raise InvalidInput(field, "Match 'all' (every rule) or 'any' (at least one).")
    return value


def _rule(session: Session, data, where: str) -> Rule:
    if not isinstance(data, dict):
        raise InvalidInput(where, "A rule is an object with 'kind' and 'op'.")
    kind, op = data.get("kind"), data.get("op")
    if kind not in KINDS:
        raise InvalidInput(f"{where}.kind", f"Unknown kind of rule; one of: {', '.join(KINDS)}.")
    if op not in OPS[kind]:
        raise InvalidInput(f"{where}.op", f"For '{kind}' the choices are: {', '.join(OPS[kind])}.")
    value, ref_id = data.get("value"), data.get("ref_id")
    if ref_id in ("", None):
        ref_id = None
    elif isinstance(ref_id, bool) or not isinstance(ref_id, (int, str)) or not str(ref_id).isdigit():
        raise InvalidInput(f"{where}.ref_id", "Choose one from the menu.")
    else:
        ref_id = int(ref_id)
        if ref_id > 2**31 - 1:  # ids are 32-bit on PostgreSQL
            raise InvalidInput(f"{where}.ref_id", "That one does not exist.")
    model = {"list": MailingList, "subscribed": MailingList, "confirmed": MailingList, "webinar": Webinar,
             "automation": Sequence, "field": Field}.get(kind)
    if kind in ("list", "automation", "field") and ref_id is None:
        raise InvalidInput(f"{where}.ref_id", f"Choose the {kind if kind != 'automation' else 'automation'}.")
    if model is not None and ref_id is not None and session.get(model, ref_id) is None:
        raise InvalidInput(f"{where}.ref_id", "That one does not exist (any more).")
    if model is None:
        ref_id = None
    if kind in ("subscribed", "confirmed"):
        value = _when(op, value, f"{where}.value")
    elif kind == "source":
        value = " ".join(str(value or "").split())
        if not value or len(value) > 200:
            raise InvalidInput(f"{where}.value", "Give the text the page address contains, e.g. /webinars/.")
    elif kind == "field":
        value = _field_value(session.get(Field, ref_id), op, value, f"{where}.value")
    elif kind == "timezone":
        if op == "is_empty":
            value = None
        elif value not in clock.known_zones():
            raise InvalidInput(f"{where}.value", f"Unknown time zone '{value}'.")
    else:
        value = None
    return Rule(kind, op, value, ref_id)


def _field_value(field: Field, op: str, value, where: str) -> str | None:
    """The value a field rule compares with, in the field's canonical text."""
    if op not in FIELD_OPS[field.type]:
        raise InvalidInput(where.rpartition(".")[0] + ".op", f"A {custom_fields.TYPE_LABELS[field.type]} field "
                           f"allows: {', '.join(FIELD_OPS[field.type])}.")
    if op == "is_empty":
        return None
    if op == "contains":
        value = " ".join(str(value if value is not None else "").split())
        if not value or len(value) > 200:
            raise InvalidInput(where, f"Give the text {field.label} contains.")
        return value
    parsed = custom_fields.parse_value(field, value, where=where)
    if parsed is None:
        raise InvalidInput(where, f"Give the value of {field.label} to compare with (or choose 'is empty').")
    return parsed[0]


def _when(op: str, value, field: str) -> str | int:
    if op == "within_days":
        try:
            days = int(value)
        except (TypeError, ValueError):
            raise InvalidInput(field, "Give a number of days.") from None
        if not 1 <= days <= 36600:
            raise InvalidInput(field, "Give a number of days from 1.")
        return days
    try:
        return dt.date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise InvalidInput(field, "Give a date like 2027-01-31.") from None


# Compiling ----------------------------------------------------------------------------------

def condition(session: Session, rules: Rules, now: dt.datetime, contact=Contact.id):
    """The rules as one SQL condition on `contact` (a contact id column or value)."""
    combine = {"all": sa.and_, "any": sa.or_}
    return combine[rules.match](*(combine[g.match](*(_predicate(session, r, contact, now) for r in g.rules))
                                  for g in rules.groups))


def contacts_in(session: Session, rules: Rules, now: dt.datetime):
    """SELECT contacts.id of everyone the rules pick who still has an address."""
    # Never correlated with a contacts table around it (Contact.id IN (this)).
    return sa.select(Contact.id).where(Contact.email.is_not(None), condition(session, rules, now)).correlate(None)


def _among(contact, column, *where):
    """`contact IN (SELECT column FROM … WHERE …)`: not correlated, so the database reads
    the subquery once (SQLite even walks contacts from its ids) instead of probing it for
    every contact as a correlated EXISTS did (bench/segments.py). `column` is never NULL
    there, so the test is never NULL either (a NOT around it stays right)."""
    contact = sa.literal(contact) if isinstance(contact, int) else contact
    return contact.in_(sa.select(column).where(column.is_not(None), *where))


def _predicate(session: Session, rule: Rule, contact, now: dt.datetime):
    """One rule on `contact`. Each subquery reads its own alias of its table, so it never
    mixes with the same table in the statement around it (a newsletter's audience reads
    subscriptions, a sequence's step reads enrolments)."""
    if rule.kind == "list":
        sub = aliased(Subscription)
        return _among(contact, sub.contact_id, sub.list_id == rule.ref_id, sub.status == rule.op)
    if rule.kind in ("subscribed", "confirmed"):
        sub = aliased(Subscription)
        column = sub.created_at if rule.kind == "subscribed" else sub.confirmed_at
        if rule.op == "within_days":
            test = column >= now - dt.timedelta(days=int(rule.value))
        else:
            day = dt.datetime.combine(dt.date.fromisoformat(str(rule.value)), dt.time(), tzinfo=dt.timezone.utc)
            test = column < day if rule.op == "before" else column >= day + dt.timedelta(days=1)
        on_list = (sub.list_id == rule.ref_id,) if rule.ref_id else ()
        return _among(contact, sub.contact_id, *on_list, test)
    if rule.kind == "source":
        event = aliased(ConsentEvent)
        pattern = "%" + rule.value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return _among(contact, event.contact_id, event.source_url.like(pattern, escape="\\"))
    if rule.kind == "timezone":
        if contact is Contact.id:
            zone = Contact.timezone
        else:
            other = aliased(Contact)
            zone = sa.select(other.timezone).where(other.id == contact).scalar_subquery()
        if rule.op == "is_empty":
            return zone.is_(None)
        # Never NULL (a NOT around a rule must pick those without a zone too).
        zone = sa.func.coalesce(zone, "")
        return zone == rule.value if rule.op == "is" else zone != rule.value
    if rule.kind == "webinar":
        seat = aliased(Registration)
        seated = [seat.status == RegistrationStatus.CONFIRMED]
        if rule.ref_id:
            seated.append(seat.webinar_id == rule.ref_id)
        if rule.op == "attended":
            seated.append(seat.attended.is_(True))
        elif rule.op == "missed":
            seated += [sa.or_(seat.attended.is_(None), seat.attended.is_(False)),
                       seat.webinar_id.in_(_ended_webinars(session, now, rule.ref_id))]
        return _among(contact, seat.contact_id, *seated)
    if rule.kind == "automation":
        enrolment = aliased(Enrolment)
        states = (EnrolmentStatus.COMPLETED,) if rule.op == "completed" else tuple(EnrolmentStatus)
        return _among(contact, enrolment.contact_id, enrolment.sequence_id == rule.ref_id,
                      enrolment.status.in_(states))
    if rule.kind == "field":
        return _field_predicate(session, rule, contact)
    raise AssertionError(rule.kind)


def _field_predicate(session: Session, rule: Rule, contact):
    """A rule on a custom field, as `contact IN (values of that field that pass)`: numbers
    compare by their number column, dates by their ISO text (which sorts as dates do), text
    case-insensitively for contains. `ne` and `is_empty` also pick those with no value."""
    held = aliased(ContactFieldValue)
    field = held.field_id == rule.ref_id
    if rule.op == "is_empty":
        return ~_among(contact, held.contact_id, field)
    field_type = session.scalar(sa.select(Field.type).where(Field.id == rule.ref_id))
    if rule.op == "contains":
        escaped = str(rule.value).lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return _among(contact, held.contact_id, field, sa.func.lower(held.value).like(f"%{escaped}%", escape="\\"))
    if field_type == FieldType.NUMBER:
        column, value = held.number, float(rule.value)
    else:
        column, value = held.value, str(rule.value)
    if rule.op in ("eq", "ne"):
        same = _among(contact, held.contact_id, field, column == value)
        return same if rule.op == "eq" else ~same
    return _among(contact, held.contact_id, field, column < value if rule.op == "lt" else column > value)


def _ended_webinars(session: Session, now: dt.datetime, webinar_id: int | None) -> list[int]:
    """Ids of the webinars that have ended by `now`; the end (start + duration) is computed
    here, so no date arithmetic in SQL (webinars are few: those started in the last year)."""
    query = sa.select(Webinar.id, Webinar.starts_at, Webinar.duration_minutes).where(Webinar.starts_at <= now)
    if webinar_id:
        query = query.where(Webinar.id == webinar_id)
    return [w for w, starts, minutes in session.execute(query) if starts + dt.timedelta(minutes=minutes) <= now]


# Segments -----------------------------------------------------------------------------------

def create_segment(session: Session, *, name: str, rules, now: dt.datetime) -> Segment:
    segment = Segment(name=_name(name), rules=parse_rules(session, rules).as_json(), created_at=now, updated_at=now)
    session.add(segment)
    session.flush()
    return segment


def update_segment(session: Session, segment_id: int, *, name: str, rules, now: dt.datetime) -> Segment:
    """New rules take effect for what is counted or sent from now on; an issue already
    sending keeps the audience it was given (and the rules it had, on the issue)."""
    segment = get_segment(session, segment_id)
    segment.name, segment.rules, segment.updated_at = _name(name), parse_rules(session, rules).as_json(), now
    return segment


def archive_segment(session: Session, segment_id: int, *, now: dt.datetime) -> Segment:
    segment = get_segment(session, segment_id)
    segment.archived_at = now
    return segment


def _name(name: str) -> str:
    name = " ".join((name or "").split())
    if not name or len(name) > 200:
        raise InvalidInput("name", "Give the segment a name of up to 200 characters.")
    return name


def get_segment(session: Session, segment_id: int) -> Segment:
    segment = session.get(Segment, segment_id)
    if segment is None:
        raise NotFound(f"no segment {segment_id}")
    return segment


def list_segments(session: Session, *, archived: bool = False) -> list[Segment]:
    query = sa.select(Segment).order_by(Segment.name)
    if not archived:
        query = query.where(Segment.archived_at.is_(None))
    return list(session.scalars(query))


def choices(session: Session) -> list[tuple[int, str]]:
    """(id, name) of the segments staff may choose (for an issue, an enrolment, a condition)."""
    return [(segment.id, segment.name) for segment in list_segments(session)]


def rules_of(segment: Segment) -> Rules:
    """A stored segment's rules (checked when saved; read back without the database)."""
    return parse_stored(segment.rules)


def parse_stored(text: str) -> Rules:
    """Rules stored by Rules.as_json (a segment's, or an issue's frozen copy)."""
    data = json.loads(text)
    return Rules(data["match"], tuple(Group(g["match"], tuple(Rule(**r) for r in g["rules"])) for g in data["groups"]))


def count(session: Session, rules: Rules, now: dt.datetime) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(contacts_in(session, rules, now).subquery()))


def sample(session: Session, rules: Rules, now: dt.datetime, limit: int = SAMPLE) -> list[Contact]:
    """The newest few contacts the rules pick (for the editor)."""
    return list(session.scalars(sa.select(Contact).where(Contact.id.in_(contacts_in(session, rules, now)))
                                .order_by(Contact.id.desc()).limit(limit)))


def describe(session: Session, rules: Rules) -> str:
    """The rules in words, for staff ("attended Spine Health and time zone is Europe/London")."""
    def one(rule: Rule) -> str:
        ref = ""
        if rule.ref_id:
            model, attr = {"list": (MailingList, "name"), "subscribed": (MailingList, "name"),
                           "confirmed": (MailingList, "name"), "webinar": (Webinar, "title"),
                           "automation": (Sequence, "name"), "field": (Field, "label")}[rule.kind]
            row = session.get(model, rule.ref_id)
            ref = f"“{getattr(row, attr)}”" if row else "(deleted)"
        if rule.kind == "list":
            return f"{rule.op} on {ref}"
        if rule.kind in ("subscribed", "confirmed"):
            where = f" to {ref}" if ref else ""
            when = f"in the last {rule.value} days" if rule.op == "within_days" else f"{rule.op} {rule.value}"
            return f"{rule.kind}{where} {when}"
        if rule.kind == "source":
            return f"signed up on a page containing “{rule.value}”"
        if rule.kind == "timezone":
            return "has no time zone" if rule.op == "is_empty" else f"time zone {rule.op.replace('_', ' ')} {rule.value}"
        if rule.kind == "webinar":
            return f"{rule.op} {ref or 'any webinar'}"
        if rule.kind == "field":
            if rule.op == "is_empty":
                return f"{ref} is empty"
            words = {"eq": "is", "ne": "is not", "contains": "contains", "lt": "is less than", "gt": "is more than"}
            return f"{ref} {words[rule.op]} “{rule.value}”"
        return f"{rule.op} {ref}"

    joiner = {"all": " and ", "any": " or "}
    parts = [joiner[g.match].join(one(r) for r in g.rules) for g in rules.groups]
    if len(parts) == 1:
        return parts[0]
    return joiner[rules.match].join(f"({p})" for p in parts)
