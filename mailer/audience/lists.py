"""Mailing lists and their subscriptions as staff and the API see them: create a list with
its consent wording, counts per status, subscriptions page by page, withdraw one."""
from __future__ import annotations

import dataclasses
import datetime as dt
import re

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audience import consent, contacts
from mailer.db import dialect_insert, newest_first
from mailer.errors import Conflict, InvalidInput, NotFound
from mailer.models import ConsentWording, Contact, MailingList, Subscription, SubscriptionStatus
from mailer.settings import Settings

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}[a-z0-9]$")


@dataclasses.dataclass(frozen=True)
class ListSummary:
    mailing_list: MailingList
    wording: ConsentWording | None
    counts: dict[str, int]  # subscriptions per status; every status is present


def _counts(session: Session, list_ids: list[int]) -> dict[int, dict[str, int]]:
    counts = {list_id: dict.fromkeys(SubscriptionStatus, 0) for list_id in list_ids}
    for list_id, status, count in session.execute(
            sa.select(Subscription.list_id, Subscription.status, sa.func.count())
            .where(Subscription.list_id.in_(list_ids)).group_by(Subscription.list_id, Subscription.status)):
        counts[list_id][SubscriptionStatus(status)] = count
    return counts


def list_lists(session: Session) -> list[ListSummary]:
    """Every list, oldest first, with its current wording and subscription counts."""
    lists = session.scalars(sa.select(MailingList).order_by(MailingList.id)).all()
    counts = _counts(session, [ml.id for ml in lists])
    return [ListSummary(ml, contacts.current_wording(session, ml.id), counts[ml.id]) for ml in lists]


def get_list(session: Session, list_id: int) -> ListSummary:
    mailing_list = session.get(MailingList, list_id)
    if mailing_list is None:
        raise NotFound(f"no mailing list {list_id}")
    return ListSummary(mailing_list, contacts.current_wording(session, list_id), _counts(session, [list_id])[list_id])


def list_id_for(session: Session, slug: str, field: str = "list") -> int:
    list_id = session.scalar(sa.select(MailingList.id).where(MailingList.slug == slug))
    if list_id is None:
        raise InvalidInput(field, f"Unknown mailing list '{slug}'.")
    return list_id


def create_list(session: Session, *, slug: str, name: str, wording: str, description: str = "",
                public: bool = True, now: dt.datetime) -> ListSummary:
    """A new list with version 1 of the consent wording people are shown when they join.
    Conflict when the slug is taken (also when two requests race for it)."""
    slug = (slug or "").strip()
    if not SLUG.match(slug):
        raise InvalidInput("slug", "Use 2–64 lower-case letters, digits and dashes, e.g. practice-news.")
    name, wording = " ".join((name or "").split()), (wording or "").strip()
    if not name:
        raise InvalidInput("name", "A list needs a name.")
    if not wording:
        raise InvalidInput("consent_wording", "A list needs the consent wording people agree to when they join.")
    list_id = session.execute(
        dialect_insert(session, MailingList)
        .values(slug=slug, name=name, description=description or "", public=public, created_at=now)
        .on_conflict_do_nothing(index_elements=["slug"]).returning(MailingList.id)
    ).scalar()
    if list_id is None:
        raise Conflict("slug", f"A list with the slug '{slug}' exists already.")
    session.add(ConsentWording(list_id=list_id, version=1, text=wording, created_at=now))
    session.flush()
    return get_list(session, list_id)


# Subscriptions ------------------------------------------------------------------------

def _subscriptions():
    return (sa.select(Subscription, Contact.email, MailingList.slug)
            .join(Contact, Contact.id == Subscription.contact_id)
            .join(MailingList, MailingList.id == Subscription.list_id))


def search_subscriptions(session: Session, *, contact_id: int | None = None, list_id: int | None = None,
                         status: str | None = None, before_id: int | None = None, limit: int = 50
                         ) -> list[tuple[Subscription, str | None, str]]:
    """Subscriptions newest first, each with the address (None once erased) and list slug;
    one more row than asked when there is a next page."""
    stmt = _subscriptions()
    if contact_id is not None:
        stmt = stmt.where(Subscription.contact_id == contact_id)
    if list_id is not None:
        stmt = stmt.where(Subscription.list_id == list_id)
    if status is not None:
        stmt = stmt.where(Subscription.status == status)
    return [tuple(row) for row in session.execute(newest_first(stmt, Subscription.id, before_id=before_id,
                                                                  limit=limit))]


def get_subscription(session: Session, subscription_id: int) -> tuple[Subscription, str | None, str]:
    row = session.execute(_subscriptions().where(Subscription.id == subscription_id)).first()
    if row is None:
        raise NotFound(f"no subscription {subscription_id}")
    return tuple(row)


def withdraw(session: Session, settings: Settings, subscription_id: int, *, context: consent.RequestContext,
             now: dt.datetime) -> tuple[Subscription, str | None, str]:
    """Unsubscribe on the person's behalf, by the same path as their unsubscribe link:
    a withdrawn event in the ledger, and what is queued for the list cancelled."""
    sub, _, _ = get_subscription(session, subscription_id)
    contacts.unsubscribe(session, settings, contacts.unsubscribe_token(settings, sub.contact_id, sub.list_id),
                         context=context, now=now)
    session.expire_all()
    return get_subscription(session, subscription_id)
