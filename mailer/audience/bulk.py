"""Bulk actions on the contacts a segment or a search picks: unsubscribe them from a list,
add them to an automation, or erase them. Each runs as a console job (mailer.staff.jobs)
over the picked contacts in id order, a chunk per transaction, so it can stop anywhere and
go on from the last id. What picks them is frozen when the job is queued: a segment's rules
and the time they are read at, or a search's filters and the newest contact id then, so the
job acts on what staff saw counted. (Exporting either streams: directory.export_contacts.)"""
from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audience import consent, contacts, directory, segments
from mailer.errors import InvalidInput
from mailer.models import Contact, MailingList, Sequence, SequenceStatus, Subscription

UNSUBSCRIBE, ENROL, ERASE = "unsubscribe", "enrol", "erase"
ACTIONS = (UNSUBSCRIBE, ENROL, ERASE)
CHUNK = 500


@dataclasses.dataclass
class Plan:
    """A bulk action as staff confirm it: what, on whom (a segment's rules, frozen as JSON,
    or a search's filters with the newest contact id they may reach), read at which time,
    how many contacts that is, and the list (unsubscribe) or automation (enrol) it names."""

    action: str
    at: dt.datetime
    count: int
    segment_id: int | None = None
    rules: str | None = None
    search: dict | None = None  # {"q", "list_id", "status"} as directory.search_contacts takes them
    up_to_id: int | None = None
    list_id: int | None = None
    list_name: str | None = None
    sequence_id: int | None = None
    sequence_name: str | None = None

    def summary(self) -> str:
        """For the audit log: how many, and the list or automation it names (ids only)."""
        return f"{self.count} contacts" + (f", list {self.list_id}" if self.list_id else "") + (
            f", automation {self.sequence_id}" if self.sequence_id else "")

    def as_params(self) -> dict:
        """What a job keeps of the plan (JSON-able; "at" as ISO text)."""
        params = dataclasses.asdict(self)
        params["at"] = self.at.isoformat()
        del params["count"]
        return params


def plan(session: Session, action: str, *, segment_id: int | None = None, search: dict | None = None,
         up_to_id: int | None = None, list_id: int | None = None, sequence_id: int | None = None,
         now: dt.datetime) -> Plan:
    """Check the request and count who it would touch now (shown before staff confirm).
    Give a segment, or a search (with `up_to_id` from the plan staff saw, if any)."""
    if action not in ACTIONS:
        raise InvalidInput("action", f"Unknown bulk action '{action}'.")
    planned = Plan(action, now, 0)
    if action == UNSUBSCRIBE:
        mailing_list = session.get(MailingList, list_id) if list_id else None
        if mailing_list is None:
            raise InvalidInput("list", "Choose the list to unsubscribe them from.")
        planned.list_id, planned.list_name = list_id, mailing_list.name
    elif action == ENROL:
        sequence = session.get(Sequence, sequence_id) if sequence_id else None
        if sequence is None or sequence.status == SequenceStatus.ARCHIVED:
            raise InvalidInput("sequence", "Choose the automation to add them to.")
        planned.sequence_id, planned.sequence_name = sequence_id, sequence.name
    if segment_id is not None:
        rules = segments.rules_of(segments.get_segment(session, segment_id))
        planned.segment_id, planned.rules = segment_id, rules.as_json()
        planned.count = segments.count(session, rules, now)
    else:
        search = {"q": (search or {}).get("q") or "", "list_id": (search or {}).get("list_id"),
                  "status": (search or {}).get("status") or None}
        if not (search["q"] or search["list_id"] or search["status"]):
            raise InvalidInput("q", "Search first: a bulk action acts on a search result, not on everyone.")
        if up_to_id is None:
            up_to_id = session.scalar(sa.select(sa.func.max(Contact.id))) or 0
        planned.search, planned.up_to_id = search, up_to_id
        planned.count = directory.count_matching(session, **search, up_to_id=up_to_id)
    return planned


def members_after(session: Session, params: dict, after_id: int, limit: int = CHUNK) -> list[int]:
    """The next `limit` contacts a queued job's plan (Plan.as_params) picks, by id, after `after_id`."""
    if params.get("search") is not None:
        return directory.matching_ids(session, **params["search"], after_id=after_id, up_to_id=params["up_to_id"],
                                      limit=limit)
    at = dt.datetime.fromisoformat(params["at"])
    picked = segments.contacts_in(session, segments.parse_stored(params["rules"]), at)
    return list(session.scalars(picked.where(Contact.id > after_id).order_by(Contact.id).limit(limit)))


def unsubscribe(session: Session, contact_ids: list[int], list_id: int, *, context: consent.RequestContext,
                now: dt.datetime) -> int:
    """Unsubscribe these contacts from one list (those subscribed or waiting to confirm), as
    every withdrawal is made (contacts.end_subscriptions), with the staff member as the
    source. Returns how many were unsubscribed."""
    return len(contacts.end_subscriptions(session, Subscription.contact_id.in_(contact_ids),
                                          Subscription.list_id == list_id, context=context, now=now))
