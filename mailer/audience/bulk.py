"""Bulk actions on the contacts a segment picks: unsubscribe them from a list, or erase
them. Each runs as a console job (mailer.staff.jobs) over the segment's members in id
order, a chunk per transaction, so it can stop anywhere and go on from the last id; the
rules and the time they are read at are frozen when the job is queued, so the job acts on
the segment as staff saw it counted. (Enrolling a segment in an automation is one
INSERT … SELECT: sequences.enrol_segment. Exporting one streams: directory.export_contacts.)"""
from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audience import consent, segments
from mailer.errors import InvalidInput
from mailer.models import (NOT_YET_SENT, ConsentAction, Contact, Delivery, DeliveryStatus, MailingList, Subscription,
                           SubscriptionStatus)

UNSUBSCRIBE, ERASE = "unsubscribe", "erase"
ACTIONS = (UNSUBSCRIBE, ERASE)
CHUNK = 500


@dataclasses.dataclass
class Plan:
    """A bulk action as staff confirm it: what, on which segment's rules (frozen, as JSON),
    read at which time, how many contacts that is, and the list for an unsubscribe."""

    action: str
    segment_id: int
    rules: str
    at: dt.datetime
    count: int
    list_id: int | None = None
    list_name: str | None = None


def plan(session: Session, action: str, segment_id: int, *, list_id: int | None, now: dt.datetime) -> Plan:
    """Check the request and count who it would touch now (shown before staff confirm)."""
    if action not in ACTIONS:
        raise InvalidInput("action", f"Unknown bulk action '{action}'.")
    segment = segments.get_segment(session, segment_id)
    list_name = None
    if action == UNSUBSCRIBE:
        mailing_list = session.get(MailingList, list_id) if list_id else None
        if mailing_list is None:
            raise InvalidInput("list", "Choose the list to unsubscribe them from.")
        list_name = mailing_list.name
    rules = segments.rules_of(segment)
    return Plan(action, segment_id, rules.as_json(), now, segments.count(session, rules, now), list_id, list_name)


def members_after(session: Session, rules_json: str, at: dt.datetime, after_id: int, limit: int = CHUNK) -> list[int]:
    """The next `limit` members of the frozen rules, by id, after `after_id`."""
    picked = segments.contacts_in(session, segments.parse_stored(rules_json), at)
    return list(session.scalars(picked.where(Contact.id > after_id).order_by(Contact.id).limit(limit)))


def unsubscribe(session: Session, contact_ids: list[int], list_id: int, *, context: consent.RequestContext,
                now: dt.datetime) -> int:
    """Unsubscribe these contacts from one list (those subscribed or waiting to confirm):
    one UPDATE, a `withdrawn` consent event each with the staff member as its source, and
    their mail for that list not yet sent cancelled. Returns how many were unsubscribed."""
    mailing_list = session.get(MailingList, list_id)
    changed = list(session.scalars(sa.update(Subscription).where(
        Subscription.contact_id.in_(contact_ids), Subscription.list_id == list_id,
        Subscription.status.in_([SubscriptionStatus.ACTIVE, SubscriptionStatus.PENDING]),
    ).values(status=SubscriptionStatus.UNSUBSCRIBED, unsubscribed_at=now).returning(Subscription.contact_id)))
    if not changed:
        return 0
    consent.record_events(session, [
        {"contact_id": contact_id, "list_id": list_id, "purpose": f"list:{mailing_list.slug}",
         "action": ConsentAction.WITHDRAWN, "source_url": context.source_url, "ip": context.ip,
         "user_agent": context.user_agent, "note": context.note} for contact_id in sorted(changed)], now=now)
    session.execute(sa.update(Delivery).where(
        Delivery.contact_id.in_(changed), Delivery.list_id == list_id, Delivery.status.in_(NOT_YET_SENT),
    ).values(status=DeliveryStatus.CANCELLED, last_error="unsubscribed"))
    return len(changed)

