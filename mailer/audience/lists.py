"""Mailing lists and their subscriptions as staff see them (console, API and CLI call
these): create a list with its consent wording, edit it, new wording versions (each
immutable; events point at the one they showed), archive it, counts per status,
subscriptions page by page, withdraw one.

Archiving closes a list to new people: the public form, the preferences page, the
webinar form's newsletter box, the API's signups and imports refuse it. Its
subscriptions, their consent history and unsubscribe links stay as they were. It is
refused while mail for the list is still planned (a newsletter scheduled, sending or
paused for it; an automation active or paused that sends as it or starts from it):
cancel or finish those first, so archiving never silently drops or strands mail."""
from __future__ import annotations

import dataclasses
import datetime as dt
import re

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audience import consent, contacts
from mailer.db import dialect_insert, newest_first
from mailer.errors import Conflict, InvalidInput, NotFound
from mailer.models import (ConsentEvent, ConsentWording, Contact, MailingList, Newsletter, NewsletterStatus, Sequence,
                           SequenceStatus, Subscription, SubscriptionStatus, newsletter_lists)
from mailer.settings import Settings

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}[a-z0-9]$")
NAME_MAX, DESCRIPTION_MAX, WORDING_MAX = 200, 2000, 5000
# Mail still planned for a list in these states keeps it from being archived.
_PLANNED_NEWSLETTER = (NewsletterStatus.SCHEDULED, NewsletterStatus.SENDING, NewsletterStatus.PAUSED)
_LIVE_SEQUENCE = (SequenceStatus.ACTIVE, SequenceStatus.PAUSED)


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


def _clean_name(name: str | None) -> str:
    name = " ".join((name or "").split())
    if not name:
        raise InvalidInput("name", "A list needs a name.")
    if len(name) > NAME_MAX:
        raise InvalidInput("name", f"Keep the name under {NAME_MAX} characters.")
    return name


def _clean_description(description: str | None) -> str:
    description = (description or "").strip()
    if len(description) > DESCRIPTION_MAX:
        raise InvalidInput("description", f"Keep the description under {DESCRIPTION_MAX} characters.")
    return description


def _clean_wording(text: str | None) -> str:
    text = (text or "").strip()
    if not text:
        raise InvalidInput("consent_wording", "A list needs the consent wording people agree to when they join.")
    if len(text) > WORDING_MAX:
        raise InvalidInput("consent_wording", f"Keep the consent wording under {WORDING_MAX} characters.")
    return text


def create_list(session: Session, *, slug: str, name: str, wording: str, description: str = "",
                public: bool = True, now: dt.datetime) -> ListSummary:
    """A new list with version 1 of the consent wording people are shown when they join.
    Conflict when the slug is taken (also when two requests race for it)."""
    slug = (slug or "").strip()
    if not SLUG.match(slug):
        raise InvalidInput("slug", "Use 2–64 lower-case letters, digits and dashes, e.g. practice-news.")
    name, description, wording = _clean_name(name), _clean_description(description), _clean_wording(wording)
    list_id = session.execute(
        dialect_insert(session, MailingList)
        .values(slug=slug, name=name, description=description, public=public, created_at=now)
        .on_conflict_do_nothing(index_elements=["slug"]).returning(MailingList.id)
    ).scalar()
    if list_id is None:
        raise Conflict("slug", f"A list with the slug '{slug}' exists already.")
    session.add(ConsentWording(list_id=list_id, version=1, text=wording, created_at=now))
    session.flush()
    return get_list(session, list_id)


def _locked_list(session: Session, list_id: int) -> MailingList:
    """The list, its row locked until commit on PostgreSQL (SQLite: BEGIN IMMEDIATE already
    serialises writers), so two staff changing it at once go one after the other."""
    mailing_list = session.scalar(sa.select(MailingList).where(MailingList.id == list_id).with_for_update())
    if mailing_list is None:
        raise NotFound(f"no mailing list {list_id}")
    return mailing_list


def update_list(session: Session, list_id: int, *, name: str | None = None, description: str | None = None,
                public: bool | None = None) -> ListSummary:
    """Change what is given (None leaves it). The slug stays: forms, links and the consent
    ledger's purposes ("list:<slug>") name the list by it."""
    mailing_list = _locked_list(session, list_id)
    if name is not None:
        mailing_list.name = _clean_name(name)
    if description is not None:
        mailing_list.description = _clean_description(description)
    if public is not None:
        mailing_list.public = public
    session.flush()
    return get_list(session, list_id)


@dataclasses.dataclass(frozen=True)
class WordingVersion:
    wording: ConsentWording
    events: int  # consent events recorded with this version (requested, confirmed, imported)


def wording_versions(session: Session, list_id: int) -> list[WordingVersion]:
    """Every version of the list's consent wording, newest first, each with how many
    consent events used it."""
    get_list(session, list_id)
    wordings = session.scalars(sa.select(ConsentWording).where(ConsentWording.list_id == list_id)
                               .order_by(ConsentWording.version.desc())).all()
    used = dict(session.execute(
        sa.select(ConsentEvent.wording_id, sa.func.count())
        .where(ConsentEvent.wording_id.in_([w.id for w in wordings])).group_by(ConsentEvent.wording_id)).all())
    return [WordingVersion(w, used.get(w.id, 0)) for w in wordings]


def add_wording(session: Session, list_id: int, text: str, *, now: dt.datetime,
                replaces_version: int | None = None) -> ConsentWording:
    """A new version of the consent wording: shown to everyone who joins from now on.
    Earlier versions stay as they are, with the events that showed them.
    `replaces_version`, when given, is the version the editor started from: Conflict if
    someone added another meanwhile (their text would otherwise be overwritten unseen)."""
    mailing_list = _locked_list(session, list_id)
    if mailing_list.archived_at is not None:
        raise Conflict("list", f"'{mailing_list.name}' is archived: it takes no new signups, "
                                          "so its wording no longer changes.")
    text = _clean_wording(text)
    current = contacts.current_wording(session, list_id)
    if replaces_version is not None and (current is None or current.version != replaces_version):
        raise Conflict("replaces_version", f"The wording was changed meanwhile (now version "
                                           f"{current.version if current else 0}); reload and edit that one.")
    if current is not None and current.text == text:
        raise InvalidInput("consent_wording", f"This is the wording of version {current.version} already; "
                                              "change the text to make a new version.")
    wording = ConsentWording(list_id=list_id, version=(current.version if current else 0) + 1, text=text,
                             created_at=now)
    session.add(wording)
    session.flush()
    return wording


def archive_blockers(session: Session, list_id: int) -> list[str]:
    """What still plans mail for the list, in words staff act on; archiving waits for none."""
    issues = session.execute(
        sa.select(Newsletter.id, Newsletter.subject, Newsletter.status)
        .join(newsletter_lists, newsletter_lists.c.newsletter_id == Newsletter.id)
        .where(newsletter_lists.c.list_id == list_id, Newsletter.status.in_(_PLANNED_NEWSLETTER))
        .order_by(Newsletter.id)).all()
    automations = session.execute(
        sa.select(Sequence.id, Sequence.name, Sequence.status)
        .where(sa.or_(Sequence.list_id == list_id, Sequence.trigger_list_id == list_id),
               Sequence.status.in_(_LIVE_SEQUENCE))
        .order_by(Sequence.id)).all()
    return ([f"newsletter {i.id} '{i.subject}' is {i.status}" for i in issues]
            + [f"automation {a.id} '{a.name}' is {a.status}" for a in automations])


def archive_list(session: Session, list_id: int, *, now: dt.datetime) -> ListSummary:
    """Close the list to new signups (see the module's docstring). Refused (Conflict)
    while mail is planned for it; archiving an archived list changes nothing."""
    mailing_list = _locked_list(session, list_id)
    if mailing_list.archived_at is None:
        blockers = archive_blockers(session, list_id)
        if blockers:
            raise Conflict("list", f"'{mailing_list.name}' still has mail planned: {'; '.join(blockers)}. "
                                   "Cancel these, or let them finish, then archive the list.")
        mailing_list.archived_at = now
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
