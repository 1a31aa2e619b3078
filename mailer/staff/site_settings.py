"""Settings owners change on the settings page (sender, postal address, time zone, rate
limits): stored in the settings table over config/defaults.toml; MAILER_* still wins."""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import unicodedata
import zoneinfo
from email.utils import getaddresses, parseaddr
from typing import Mapping

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.orm import Session

from mailer.campaigns.blog import check_url
from mailer.staff import users
from mailer.db import dialect_insert
from mailer.errors import InvalidInput
from mailer.logtext import loggable
from mailer.models import Setting, User
from mailer.settings import Settings, env_name, read_defaults

log = logging.getLogger(__name__)

MAX_LENGTH = 300
MAX_RATE = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class Field:
    key: str
    label: str
    help: str
    kind: type = str
    required: bool = True
    header: bool = False  # the value goes into mail headers

    @property
    def number(self) -> bool:
        return self.kind is int


FIELDS = (
    Field("from_addr", "Sender (From)", "Name and address, e.g. Spine Clinic <news@clinic.example>.", header=True),
    Field("reply_to", "Reply-To", "Where replies go. Empty: the sender's address.", required=False, header=True),
    Field("organisation", "Organisation", "Shown in every mail's footer and as the webinar organiser.", header=True),
    Field("postal_address", "Postal address", "Shown in every mail's footer (anti-spam laws ask for it); one line."),
    Field("timezone", "Time zone", "An IANA name such as Europe/London: schedules, staff pages and the audit log."),
    Field("rate_per_second", "Messages per second", "Your provider's limit; 0: no limit.", kind=int),
    Field("rate_per_hour", "Messages per hour", "Over any rolling hour; 0: no limit.", kind=int),
    Field("rate_per_day", "Messages per day", "Over any rolling 24 hours; 0: no limit.", kind=int),
    Field("blog_feed_url", "Blog feed", "The address of your blog's RSS or Atom feed, e.g. "
          "https://clinic.example/blog/feed.xml: issues can show its new posts. Empty: none.", required=False),
)
EDITABLE = {field.key: field for field in FIELDS}


class InvalidSettings(InvalidInput):
    """Every field that is wrong, each with its message (`errors`)."""

    def __init__(self, errors: dict[str, str]):
        field, message = next(iter(errors.items()))
        super().__init__(field, message)
        self.errors = errors


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@functools.cache
def _defaults() -> dict[str, object]:
    return read_defaults()


def _has_control_characters(text: str) -> bool:
    # Cc: CR, LF, NUL, tab…; Zl/Zp: Unicode line and paragraph separators.
    return any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in text)


def _address(text: str, example: str) -> str:
    found = getaddresses([text])
    name, addr = parseaddr(text)
    if len(found) != 1 or "@" not in addr:
        raise ValueError(f"Give one email address, e.g. {example}.")
    try:
        validate_email(addr, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{addr} is not a valid email address: {exc}") from None
    return text


def clean(field: Field, raw: str | None) -> object:
    """The value to store for one field, or ValueError with a message for a person."""
    text = (raw or "").strip()
    if _has_control_characters(text):
        if field.header:
            raise ValueError("Line breaks and control characters are not allowed: this text goes into mail headers.")
        raise ValueError("Write it on one line (separate the parts with commas); control characters are not allowed.")
    if not text:
        if field.kind is int:
            raise ValueError("Give a whole number (0 for no limit).")
        if field.required:
            raise ValueError(f"{field.label} cannot be empty.")
        return ""
    if len(text) > MAX_LENGTH and field.key != "blog_feed_url":
        raise ValueError(f"At most {MAX_LENGTH} characters.")
    if field.kind is int:
        if not (text.isascii() and text.isdigit()) or int(text) > MAX_RATE:
            raise ValueError("Give a whole number, 0 or more (0 for no limit).")
        return int(text)
    if field.key == "from_addr":
        return _address(text, "Spine Clinic <news@clinic.example>")
    if field.key == "reply_to":
        return _address(text, "front-desk@clinic.example")
    if field.key == "blog_feed_url":
        return check_url(text)
    if field.key == "timezone" and text not in _zones():
        raise ValueError(f"{text!r} is not a time zone name; use an IANA name such as Europe/London.")
    return text


def validate(submitted: Mapping[str, str]) -> tuple[dict[str, object], dict[str, str]]:
    """Clean values and per-field error messages for the editable keys in `submitted`."""
    values, errors = {}, {}
    for key, raw in submitted.items():
        if key not in EDITABLE:
            continue
        try:
            values[key] = clean(EDITABLE[key], raw)
        except ValueError as exc:
            errors[key] = str(exc)
    return values, errors


def load_overrides(session: Session) -> dict[str, object]:
    """What staff set, typed; a stored value that no longer passes validation is ignored."""
    stored = dict(session.execute(sa.select(Setting.key, Setting.value).where(Setting.key.in_(EDITABLE))).all())
    values, errors = validate(stored)
    if errors:
        log.warning("ignoring stored settings: %s", loggable(errors, limit=1000))
    return values


def apply(settings: Settings, overrides: Mapping[str, object]) -> Settings:
    """`settings` with the stored overrides, except where the environment (or the app's
    configuration) sets a value. Returns `settings` itself when nothing differs."""
    changes = {key: value for key, value in overrides.items() if key in EDITABLE and key not in settings.fixed}
    if "reply_to" not in settings.fixed:
        # An empty Reply-To means the sender's address, which may itself have changed.
        chosen = overrides.get("reply_to", _defaults().get("reply_to", ""))
        changes["reply_to"] = chosen or changes.get("from_addr", settings.from_addr)
    updated = dataclasses.replace(settings, **changes)
    return settings if updated == settings else updated


def _form_value(base: Settings, overrides: Mapping[str, object], key: str) -> object:
    """What the form shows: the environment's value, else the stored one, else the default."""
    if key in base.fixed:
        return getattr(base, key)
    return overrides.get(key, _defaults().get(key, ""))


@dataclasses.dataclass(frozen=True)
class Row:
    field: Field
    value: object  # what the form shows
    effective: object  # what mail and pages use
    source: str  # "default", "set here", "environment" or "configuration"
    env_name: str
    updated: str = ""  # who set it here, and when

    @property
    def editable(self) -> bool:
        return self.source in ("default", "set here")


def rows(session: Session, base: Settings, environ: Mapping[str, str]) -> list[Row]:
    """Every editable setting with its value and where that value comes from."""
    overrides = load_overrides(session)
    effective = apply(base, overrides)
    who = {key: (email, at) for key, email, at in session.execute(
        sa.select(Setting.key, User.email, Setting.updated_at).outerjoin(User, User.id == Setting.updated_by))}
    result = []
    for field in FIELDS:
        if field.key in base.fixed:
            source = "environment" if env_name(field.key) in environ else "configuration"
        else:
            source = "set here" if field.key in overrides else "default"
        email, at = who.get(field.key, (None, None))
        updated = f"{email or 'command line'}, {at:%Y-%m-%d %H:%M} UTC" if source == "set here" and at else ""
        result.append(Row(field, _form_value(base, overrides, field.key), getattr(effective, field.key), source,
                          env_name(field.key), updated))
    return result


def save(session: Session, submitted: Mapping[str, str], *, base: Settings, actor_id: int | None,
         now: dt.datetime, reset: tuple[str, ...] = ()) -> list[tuple[str, object, object]]:
    """Store what changed (a value equal to the default removes the override; keys in
    `reset` go back to the default), one audit entry per change with old and new value.
    Returns (key, old, new) for each change; InvalidSettings when any field is wrong."""
    submitted = {key: value for key, value in submitted.items() if key in EDITABLE}
    submitted.update({key: str(_defaults()[key]) for key in reset if key in EDITABLE})
    overrides = load_overrides(session)
    values, errors = validate(submitted)
    for key in submitted:
        if key in base.fixed and key not in errors and values[key] != getattr(base, key):
            where = f"the environment variable {env_name(key)}"
            errors[key] = f"Set by {where}; change it there (or remove it to set it here)."
    if errors:
        raise InvalidSettings(errors)
    changes = []
    for key, new in values.items():
        if key in base.fixed:
            continue
        old = _form_value(base, overrides, key)
        if new == old:
            continue
        if new == _defaults().get(key):
            session.execute(sa.delete(Setting).where(Setting.key == key))
        else:
            stmt = dialect_insert(session, Setting).values(key=key, value=str(new), updated_by=actor_id, updated_at=now)
            session.execute(stmt.on_conflict_do_update(
                index_elements=["key"], set_={"value": str(new), "updated_by": actor_id, "updated_at": now}))
        users.record(session, actor_id, "change_setting", f"{key}: {_shown(old)} -> {_shown(new)}")
        changes.append((key, old, new))
    return changes


def _shown(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)
