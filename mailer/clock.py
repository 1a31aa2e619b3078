"""Time helpers shared by newsletters, webinars, the pages and the CLI: a wall-clock
time in a zone as a UTC instant (refusing the hour the clocks skip), and an instant
as a reader in a zone sees it. Pure functions."""
from __future__ import annotations

import datetime as dt
import functools
from zoneinfo import ZoneInfo, available_timezones

from mailer.errors import InvalidInput


def local_to_utc(local: dt.datetime, zone: str) -> dt.datetime:
    """A wall-clock time in `zone` as a UTC instant. A time that does not exist (the hour
    skipped when clocks go forward) is refused rather than guessed."""
    if zone not in known_zones():
        raise InvalidInput("timezone", f"Unknown time zone '{zone}'.")
    if not 2000 <= local.year <= 2999:
        raise InvalidInput("send_at", "Give a year between 2000 and 2999.")
    tz = ZoneInfo(zone)
    aware = local.replace(tzinfo=tz)
    back = aware.astimezone(dt.timezone.utc).astimezone(tz)
    if back.replace(tzinfo=None) != local.replace(tzinfo=None):
        raise InvalidInput("send_at", f"{local:%Y-%m-%d %H:%M} does not exist in {zone} (the clocks go forward).")
    return aware.astimezone(dt.timezone.utc)


def format_local(when: dt.datetime, zone: str) -> str:
    """A UTC instant as a reader in `zone` sees it: 'Tuesday 1 December 2026, 18:00 GMT'."""
    local = when.astimezone(ZoneInfo(zone))
    return f"{local:%A} {local.day} {local:%B %Y, %H:%M} {local.tzname()}"


def format_local_short(when: dt.datetime, zone: str) -> str:
    """The same instant for a table cell, on one line: 'Tue 1 Dec 2026 18:00 GMT' (no-break spaces)."""
    local = when.astimezone(ZoneInfo(zone))
    return "\u00a0".join((f"{local:%a}", str(local.day), f"{local:%b}", f"{local:%Y}", f"{local:%H:%M}",
                           local.tzname() or ""))


@functools.cache
def known_zones() -> frozenset[str]:
    """The IANA names this machine's time zone data knows (read once: it scans files)."""
    return frozenset(available_timezones())


def zone_or(stored: str | None, fallback: str) -> str:
    """A reader's stored zone when it is a known IANA name, else `fallback` (the organisation's)."""
    return stored if stored in known_zones() else fallback


def reader_local_to_utc(local: dt.datetime, zone: str) -> dt.datetime:
    """The instant a reader's clock in `zone` shows the wall-clock time `local`. Unlike
    local_to_utc nothing is refused, since staff chose the time for every zone at once: a
    time the clocks skip there goes out as the clocks jump past it (01:30 on the spring
    night in London is 01:30 UTC, 02:30 BST); one they repeat is the first of the two."""
    return local.replace(tzinfo=ZoneInfo(zone), fold=0).astimezone(dt.timezone.utc)
