"""Contacts: signup with double opt-in, confirmation, unsubscribe, preferences, purge."""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import logging
import sys
import threading
import time
import unicodedata
import zoneinfo

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from sqlalchemy.orm import Session

from mailer import tokens
from mailer.audience import consent
from mailer.delivery import outbox
from mailer.delivery.registry import Kind
from mailer.delivery.suppression import email_hash
from mailer.db import DriverStatement, dialect_insert, is_postgres
from mailer.db import take_singleton
from mailer.errors import InvalidInput
from mailer.logtext import loggable
from mailer.models import (ConsentAction, ConsentEvent, ConsentWording, Contact, Delivery, DeliveryStatus, MailingList,
                           Registration, SignupRequest, Subscription, SubscriptionStatus, Suppression)
from mailer.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_LIST = "newsletter"
NAME_MAX = 100
EMAIL_MAX = 254
CONFIRMATION = "confirmation"
ZONES = zoneinfo.available_timezones()


def _check_each_domain_once() -> None:
    """email-validator checks an address's domain (its characters, the UTS-46 mapping,
    IDNA) anew for every address: 12 of the 18 µs one address took (timeit). That check
    depends on the domain alone and most addresses share a few domains, so its answer is
    kept per domain, for the last DOMAINS_KEPT domains; a domain it refuses raises again
    each time. The check is looked up in the module that calls it, where email-validator
    2.x has it; it returns the domain's two forms, which the caller only reads."""
    module = sys.modules["email_validator.validate_email"]
    check = module.validate_email_domain_name
    if not hasattr(check, "cache_info"):
        module.validate_email_domain_name = functools.lru_cache(maxsize=DOMAINS_KEPT)(check)


DOMAINS_KEPT = 4096
_check_each_domain_once()


def normalise_email(raw: str | None) -> str:
    """A syntactically valid address in one canonical form (lower case), or InvalidInput."""
    text = (raw or "").strip()
    if not text:
        raise InvalidInput("email", "Please enter your email address.")
    if len(text) > EMAIL_MAX:
        raise InvalidInput("email", "That email address is too long.")
    try:
        info = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInput("email", f"That email address is not valid: {exc}") from None
    return info.normalized.lower()


def clean_name(raw: str | None) -> str:
    """Control and format characters removed, whitespace collapsed, at most NAME_MAX characters."""
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in (raw or ""))
    return " ".join(text.split())[:NAME_MAX].strip()


def clean_timezone(raw: str | None) -> str | None:
    return raw if raw in ZONES else None


def current_wording(session: Session, list_id: int) -> ConsentWording | None:
    return session.scalar(sa.select(ConsentWording).where(ConsentWording.list_id == list_id)
                          .order_by(ConsentWording.version.desc()).limit(1))


def newsletter_wording(session: Session) -> ConsentWording | None:
    """The wording shown next to "also send me the newsletter" on other forms (None, and no
    box, once the list is archived)."""
    list_id = session.scalar(sa.select(MailingList.id).where(MailingList.slug == DEFAULT_LIST,
                                                             MailingList.archived_at.is_(None)))
    return current_wording(session, list_id) if list_id else None


def _wording_shown(session: Session, mailing_list: MailingList, version: int | None) -> ConsentWording:
    if version is None:
        wording = current_wording(session, mailing_list.id)
    else:
        wording = session.scalar(sa.select(ConsentWording).where(
            ConsentWording.list_id == mailing_list.id, ConsentWording.version == version))
    if wording is None:
        raise InvalidInput("consent_version", "The consent wording on this form is unknown; reload the page.")
    return wording


class ListClosed(InvalidInput):
    """A signup for an archived list."""

    def __init__(self, name: str):
        super().__init__("lists", f"The list '{name}' is closed: it takes no new signups.")


def public_lists(session: Session, slugs) -> list[MailingList]:
    wanted = list(dict.fromkeys(slugs or [DEFAULT_LIST]))
    found = session.scalars(sa.select(MailingList).where(MailingList.slug.in_(wanted), MailingList.public)).all()
    if len(found) != len(wanted):
        raise InvalidInput("lists", "Unknown mailing list.")
    for mailing_list in found:
        if mailing_list.archived_at is not None:
            raise ListClosed(mailing_list.name)
    return list(found)


def get_or_create_contact(session: Session, settings: Settings, address: str, *, name: str = "",
                          timezone: str | None = None, now: dt.datetime) -> Contact:
    session.execute(
        dialect_insert(session, Contact)
        .values(email=address, email_hash=email_hash(settings, address), name=name, timezone=timezone, created_at=now)
        .on_conflict_do_nothing(index_elements=["email"])
    )
    contact = session.scalars(sa.select(Contact).where(Contact.email == address)).one()
    # Someone else may type this address; never overwrite what the owner gave us.
    if not contact.name and name:
        contact.name = name
    if not contact.timezone and timezone:
        contact.timezone = timezone
    return contact


def is_suppressed(session: Session, settings: Settings, address: str) -> bool:
    return session.scalar(sa.select(sa.exists().where(Suppression.email_hash == email_hash(settings, address))))


# Built once: the public form runs these on every request.
_LIST_WORDINGS = (
    sa.select(MailingList.slug, ConsentWording.version, MailingList.name, MailingList.archived_at)
    .join(ConsentWording, ConsentWording.list_id == MailingList.id)
    .where(MailingList.public)
)
_INSERT_SIGNUP = sa.insert(SignupRequest.__table__)
_SIGNUP_COLUMNS = ("email", "name", "lists", "consent_version", "timezone", "source_url", "ip", "user_agent",
                   "created_at")


# _INSERT_SIGNUP compiled once per (database, driver), run on the driver's cursor.
_DRIVER_INSERTS: dict[tuple[str, str], DriverStatement] = {}


class PublicLists:
    """Public lists and their consent wording versions, re-read at most every `ttl`
    seconds: the signup form checks them on every request, and they rarely change."""

    def __init__(self, ttl: float = 10.0, clock=time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._versions: dict[str, set[int]] = {}
        self._closed: dict[str, str] = {}  # archived lists: slug → name
        self._read_at: float | None = None
        self._lock = threading.Lock()

    def forget(self) -> None:
        """Read again at the next check (this process changed a list: wording, archive)."""
        with self._lock:
            self._read_at = None

    def versions(self, connection, *, max_age: float | None = None) -> dict[str, set[int]]:
        return self._snapshot(connection, max_age)[0]

    def _snapshot(self, connection, max_age: float | None = None) -> tuple[dict[str, set[int]], dict[str, str]]:
        """(versions per slug, archived lists' names per slug), read together."""
        with self._lock:
            age = self.ttl if max_age is None else max_age
            if self._read_at is None or self.clock() - self._read_at > age:
                versions: dict[str, set[int]] = {}
                closed: dict[str, str] = {}
                for slug, version, name, archived_at in connection.execute(_LIST_WORDINGS):
                    versions.setdefault(slug, set()).add(version)
                    if archived_at is not None:
                        closed[slug] = name
                self._versions, self._closed, self._read_at = versions, closed, self.clock()
            return self._versions, self._closed

    def check(self, connection, slugs: list[str], consent_version: int | None) -> None:
        """A list archived in the last `ttl` seconds by another process may still pass
        here; the worker (process_signups) then drops the signup."""
        versions, closed = self._snapshot(connection)
        if not all(slug in versions for slug in slugs) or (
                consent_version is not None and not all(consent_version in versions[slug] for slug in slugs)):
            # Perhaps a list or a wording version made since the last read (in another
            # process): read again, at most once a second, before refusing.
            versions, closed = self._snapshot(connection, max_age=1.0)
        if not all(slug in versions for slug in slugs):
            raise InvalidInput("lists", "Unknown mailing list.")
        for slug in slugs:
            if slug in closed:
                raise ListClosed(closed[slug])
        if consent_version is not None and not all(consent_version in versions[slug] for slug in slugs):
            raise InvalidInput("consent_version", "The consent wording on this form is unknown; reload the page.")


def signup_request(*, email: str, name: str = "", lists=None, consent_given: bool, consent_version: int | None = None,
                   timezone: str | None = None, context: consent.RequestContext, now: dt.datetime) -> dict:
    """The intake row for a signup from the public form, or InvalidInput for what the
    person must correct (pure: reads nothing, so the caller can do it before it opens
    its transaction). accept_signup checks the lists and keeps it."""
    address = normalise_email(email)
    slugs = list(dict.fromkeys(lists or [DEFAULT_LIST]))
    if not consent_given:
        raise InvalidInput("consent", "Please tick the box to agree to receive the newsletter.")
    return {
        "email": address, "name": clean_name(name), "lists": ",".join(slugs), "consent_version": consent_version,
        "timezone": clean_timezone(timezone), "source_url": context.source_url, "ip": context.ip,
        "user_agent": context.user_agent, "created_at": now,
    }


def check_signup(connection: sa.Connection, public_lists: PublicLists, signup: dict) -> None:
    """InvalidInput unless a signup's lists and consent wording are offered (PublicLists)."""
    public_lists.check(connection, signup["lists"].split(","), signup["consent_version"])


def accept_signup(connection: sa.Connection, public_lists: PublicLists, signup: dict) -> None:
    """Keep a signup (signup_request) for the worker (process_signups), once its lists
    and consent wording are known to be offered (InvalidInput otherwise). The request path
    reads nothing about the address, so the answer, and its timing, cannot tell whether
    the address is known. Takes a Core connection in a transaction: this is the hottest
    path of the public site, one INSERT on the driver's cursor (db.DriverStatement)."""
    check_signup(connection, public_lists, signup)
    dialect = connection.dialect
    insert = _DRIVER_INSERTS.get((dialect.name, dialect.driver))
    if insert is None:
        # for_executemany: no "RETURNING id" (PostgreSQL), which nobody reads here.
        insert = _DRIVER_INSERTS[dialect.name, dialect.driver] = DriverStatement(
            _INSERT_SIGNUP, dialect, column_keys=list(_SIGNUP_COLUMNS), for_executemany=True)
    insert.execute(connection, signup)


def process_signups(session: Session, settings: Settings, *, limit: int = 500) -> int:
    """Turn accepted signups into pending subscriptions, consent events and confirmation
    mails, as of the moment each was made. Safe to run in several workers at once."""
    query = sa.select(SignupRequest).order_by(SignupRequest.id).limit(limit)
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    requests = session.scalars(query).all()
    if requests:  # before the first new contact: see consent.lock_chain
        consent.lock_chain(session)
    resolved: dict[tuple, tuple] = {}  # lists and wordings, looked up once per batch
    for request in requests:
        key = (request.lists, request.consent_version)
        try:
            if key not in resolved:
                resolved[key] = _lists_and_wordings(session, request.lists.split(","), request.consent_version)
        except InvalidInput as exc:  # the list or wording went away since the form was sent
            log.warning("dropping signup request %s: %s", request.id, loggable(exc.message))
        else:
            _subscribe_resolved(session, settings, request.email, request.name, *resolved[key],
                                timezone=request.timezone, now=request.created_at,
                                context=consent.RequestContext(request.source_url, request.ip, request.user_agent))
        session.delete(request)
    session.flush()
    return len(requests)


def _lists_and_wordings(session: Session, slugs, consent_version: int | None):
    mailing_lists = public_lists(session, slugs)
    return mailing_lists, [_wording_shown(session, ml, consent_version) for ml in mailing_lists]


def subscribe(session: Session, settings: Settings, *, email: str, name: str = "", lists=None,
              consent_given: bool, consent_version: int | None = None, timezone: str | None = None,
              context: consent.RequestContext, now: dt.datetime) -> None:
    """Start double opt-in. Returns nothing on purpose: the caller's answer must be
    the same whether the address is new, pending, active, unsubscribed or suppressed."""
    address = normalise_email(email)
    mailing_lists = public_lists(session, lists)
    if not consent_given:
        raise InvalidInput("consent", "Please tick the box to agree to receive the newsletter.")
    wordings = [_wording_shown(session, ml, consent_version) for ml in mailing_lists]
    _subscribe_resolved(session, settings, address, name, mailing_lists, wordings, timezone=timezone,
                        context=context, now=now)


def _subscribe_resolved(session: Session, settings: Settings, address: str, name: str, mailing_lists, wordings, *,
                        timezone: str | None, context: consent.RequestContext, now: dt.datetime) -> None:
    """subscribe() once its input is known to be valid: from here on, only writes."""
    if is_suppressed(session, settings, address):
        return
    contact = get_or_create_contact(session, settings, address, name=clean_name(name),
                                    timezone=clean_timezone(timezone), now=now)
    requested = [sub for mailing_list, wording in zip(mailing_lists, wordings)
                 if (sub := request_subscription(session, settings, contact, mailing_list, wording, context, now))]
    if requested:
        enqueue_confirmation(session, settings, contact, requested, now)


def request_subscription(session, settings, contact, mailing_list, wording, context,
                          now) -> Subscription | None:
    """Pending subscription and its consent event; the subscription when it needs a confirmation mail."""
    inserted = session.execute(
        dialect_insert(session, Subscription)
        .values(contact_id=contact.id, list_id=mailing_list.id, status=SubscriptionStatus.PENDING,
                pending_since=now, confirmation_sent_at=now, created_at=now)
        .on_conflict_do_nothing(index_elements=["contact_id", "list_id"])
        .returning(Subscription.id)
    ).first() is not None
    sub = session.scalars(sa.select(Subscription).where(
        Subscription.contact_id == contact.id, Subscription.list_id == mailing_list.id)).one()
    if not inserted and not _restart_or_resend(session, settings, sub, now):
        return None
    consent.record_event(session, contact_id=contact.id, list_id=mailing_list.id, purpose=f"list:{mailing_list.slug}",
                         action=ConsentAction.REQUESTED, wording_id=wording.id, context=context, now=now)
    return sub


def enqueue_confirmation(session: Session, settings: Settings, contact: Contact, subs: list[Subscription],
                          now: dt.datetime) -> bool:
    """One confirmation mail for everything one signup asked for (its lists share the
    confirmation_sent_at `now`, which is how the mail finds them), and at most
    `confirmations_per_day` such mails to one address in 24 hours, whoever asks from
    wherever: the form cannot be used to flood someone's inbox. The visitor's answer
    was given before this runs, so it is the same either way. True when a mail was queued."""
    if is_postgres(session):  # two workers handling signups for one address count one after the other
        session.execute(sa.select(Contact.id).where(Contact.id == contact.id).with_for_update())
    sent_today = session.scalar(sa.select(sa.func.count()).select_from(Delivery).where(
        Delivery.contact_id == contact.id, Delivery.kind == CONFIRMATION,
        Delivery.created_at > now - dt.timedelta(days=1)))
    if sent_today >= settings.confirmations_per_day:
        log.info("confirmation for contact %s not sent: %s already in 24 hours", contact.id, sent_today)
        return False
    first = subs[0]
    sent_at = int(first.confirmation_sent_at.timestamp())
    return outbox.enqueue(session, contact_id=contact.id, kind=CONFIRMATION, list_id=first.list_id,
                          ref_id=first.id, dedupe_key=f"confirm:{first.id}:{sent_at}", now=now)


def _restart_or_resend(session: Session, settings: Settings, sub: Subscription, now: dt.datetime) -> bool:
    """Move an unsubscribed person back to pending, or resend to a pending one at
    most once per interval. Each is a compare-and-set, so concurrent requests send once."""
    if sub.status == SubscriptionStatus.UNSUBSCRIBED:
        stmt = sa.update(Subscription).where(
            Subscription.id == sub.id, Subscription.status == SubscriptionStatus.UNSUBSCRIBED
        ).values(status=SubscriptionStatus.PENDING, pending_since=now, confirmation_sent_at=now)
    elif sub.status == SubscriptionStatus.PENDING:
        resend_after = now - dt.timedelta(seconds=settings.confirmation_resend_seconds)
        stmt = sa.update(Subscription).where(
            Subscription.id == sub.id, Subscription.status == SubscriptionStatus.PENDING,
            Subscription.confirmation_sent_at <= resend_after,
        ).values(confirmation_sent_at=now)
    else:
        return False
    if session.execute(stmt).rowcount != 1:
        return False
    session.refresh(sub)
    return True


# Links -----------------------------------------------------------------------

def confirm_token(settings: Settings, sub: Subscription) -> str:
    return tokens.dumps(settings.secret_key, "confirm", [sub.id, int(sub.pending_since.timestamp())], timed=True)


def unsubscribe_token(settings: Settings, contact_id: int, list_id: int) -> str:
    return tokens.dumps(settings.secret_key, "unsubscribe", [contact_id, list_id])


def confirm_url(settings: Settings, sub: Subscription) -> str:
    return f"{settings.base_url}/confirm/{confirm_token(settings, sub)}"


def unsubscribe_url(settings: Settings, contact_id: int, list_id: int) -> str:
    return f"{settings.base_url}/unsubscribe/{unsubscribe_token(settings, contact_id, list_id)}"


def unsubscribe_links(settings: Settings, contact_id: int, list_id: int) -> tuple[str, str]:
    """The https link and the mailto for List-Unsubscribe, from one signed token."""
    token = unsubscribe_token(settings, contact_id, list_id)
    return (f"{settings.base_url}/unsubscribe/{token}",
            f"mailto:{settings.unsubscribe_mailto}?subject=unsubscribe%20{token}")


def preferences_url(settings: Settings, contact_id: int) -> str:
    token = tokens.dumps(settings.secret_key, "preferences", [contact_id])
    return f"{settings.base_url}/preferences/{token}"


def contact_for_preferences(session: Session, settings: Settings, token: str) -> Contact | None:
    try:
        (contact_id,) = tokens.loads(settings.secret_key, "preferences", token)
    except (tokens.BadSignature, ValueError, TypeError):
        return None
    contact = session.get(Contact, contact_id)
    return contact if contact is not None and contact.email is not None else None


def preferences(session: Session, contact: Contact) -> list[tuple[MailingList, str | None, ConsentWording | None]]:
    """Every public list with this person's status on it and the wording to show. An
    archived list is shown only to people still on it (so they can leave), with no wording
    (it takes no new signups)."""
    statuses = dict(session.execute(sa.select(Subscription.list_id, Subscription.status)
                                    .where(Subscription.contact_id == contact.id)).all())
    on = (SubscriptionStatus.ACTIVE, SubscriptionStatus.PENDING)
    return [(ml, statuses.get(ml.id), current_wording(session, ml.id) if ml.archived_at is None else None)
            for ml in session.scalars(sa.select(MailingList).where(MailingList.public).order_by(MailingList.id))
            if ml.archived_at is None or statuses.get(ml.id) in on]


@dataclasses.dataclass(frozen=True)
class PreferencesChange:
    """What a save of the preferences page did, so the page says just that."""

    name_changed: bool = False
    asked_to_confirm: tuple[str, ...] = ()  # list names: a confirmation email is on its way
    unsubscribed: tuple[str, ...] = ()  # list names

    @property
    def anything(self) -> bool:
        return self.name_changed or bool(self.asked_to_confirm or self.unsubscribed)


def update_preferences(session: Session, settings: Settings, contact: Contact, *, name: str, wanted: set[str],
                       context: consent.RequestContext, now: dt.datetime) -> PreferencesChange:
    """Lists ticked start double opt-in (if not already on them); lists unticked are
    withdrawn at once, with the rest of their queued mail."""
    new_name = clean_name(name) or contact.name
    name_changed, contact.name = new_name != contact.name, new_name
    asked, left = [], []
    for mailing_list, status, wording in preferences(session, contact):
        on = status in (SubscriptionStatus.ACTIVE, SubscriptionStatus.PENDING)
        if mailing_list.slug in wanted and not on and wording is not None:
            _subscribe_resolved(session, settings, contact.email, contact.name, [mailing_list], [wording],
                                timezone=contact.timezone, context=context, now=now)
            asked.append(mailing_list.name)
        elif mailing_list.slug not in wanted and on:
            unsubscribe(session, settings, unsubscribe_token(settings, contact.id, mailing_list.id),
                        context=context, now=now)
            left.append(mailing_list.name)
    return PreferencesChange(name_changed=name_changed, asked_to_confirm=tuple(asked), unsubscribed=tuple(left))


# Confirm and unsubscribe ----------------------------------------------------------

class LinkOutcome(enum.StrEnum):
    CONFIRMED = "confirmed"
    ALREADY_CONFIRMED = "already_confirmed"
    UNSUBSCRIBED = "unsubscribed"
    ALREADY_UNSUBSCRIBED = "already_unsubscribed"
    EXPIRED = "expired"
    INVALID = "invalid"


@dataclasses.dataclass(frozen=True)
class LinkResult:
    outcome: LinkOutcome
    list_name: str = ""


def confirm(session: Session, settings: Settings, token: str, *, context: consent.RequestContext,
            now: dt.datetime) -> LinkResult:
    try:
        sub_id, since = tokens.loads(settings.secret_key, "confirm", token,
                                     max_age=settings.pending_expiry_days * 86400)
    except tokens.SignatureExpired:
        return LinkResult(LinkOutcome.EXPIRED)
    except (tokens.BadSignature, ValueError, TypeError):
        return LinkResult(LinkOutcome.INVALID)
    sub = session.get(Subscription, sub_id)
    if sub is None:
        return LinkResult(LinkOutcome.EXPIRED)
    list_name = sub.mailing_list.name
    if sub.status == SubscriptionStatus.ACTIVE:
        return LinkResult(LinkOutcome.ALREADY_CONFIRMED, list_name)
    if sub.status != SubscriptionStatus.PENDING or int(sub.pending_since.timestamp()) != since:
        return LinkResult(LinkOutcome.EXPIRED, list_name)
    changed = session.execute(
        sa.update(Subscription).where(Subscription.id == sub.id, Subscription.status == SubscriptionStatus.PENDING)
        .values(status=SubscriptionStatus.ACTIVE, confirmed_at=now)
    ).rowcount
    if changed != 1:
        return LinkResult(LinkOutcome.ALREADY_CONFIRMED, list_name)
    consent.record_event(session, contact_id=sub.contact_id, list_id=sub.list_id,
                         purpose=f"list:{sub.mailing_list.slug}", action=ConsentAction.CONFIRMED,
                         wording_id=_requested_wording_id(session, sub), context=context, now=now)
    return LinkResult(LinkOutcome.CONFIRMED, list_name)


def _requested_wording_id(session: Session, sub: Subscription) -> int | None:
    return session.scalar(sa.select(ConsentEvent.wording_id).where(
        ConsentEvent.contact_id == sub.contact_id, ConsentEvent.list_id == sub.list_id,
        ConsentEvent.action == ConsentAction.REQUESTED).order_by(ConsentEvent.id.desc()).limit(1))


def subscription_for_unsubscribe(session: Session, settings: Settings, token: str) -> Subscription | None:
    try:
        contact_id, list_id = tokens.loads(settings.secret_key, "unsubscribe", token)
    except (tokens.BadSignature, ValueError, TypeError):
        return None
    return session.scalar(sa.select(Subscription).where(
        Subscription.contact_id == contact_id, Subscription.list_id == list_id))


def unsubscribe(session: Session, settings: Settings, token: str, *, context: consent.RequestContext,
                now: dt.datetime) -> LinkResult:
    """Withdraw consent for one list and cancel every message for it not yet sent."""
    sub = subscription_for_unsubscribe(session, settings, token)
    if sub is None:
        return LinkResult(LinkOutcome.INVALID)
    if not withdraw_subscription(session, sub, context=context, now=now):
        return LinkResult(LinkOutcome.ALREADY_UNSUBSCRIBED, sub.mailing_list.name)
    return LinkResult(LinkOutcome.UNSUBSCRIBED, sub.mailing_list.name)


def withdraw_subscription(session: Session, sub: Subscription, *, context: consent.RequestContext,
                          now: dt.datetime) -> bool:
    """Unsubscribe one active or pending subscription (see end_subscriptions). False when
    it had ended already."""
    return bool(end_subscriptions(session, Subscription.id == sub.id, context=context, now=now))


def end_subscriptions(session: Session, *where, context: consent.RequestContext,
                      now: dt.datetime) -> list[tuple[int, int]]:
    """Unsubscribe every active or pending subscription matching `where` (one person's,
    one list's among some people…): one UPDATE, a compare-and-set, so two withdrawals at
    once record one event; a `withdrawn` consent event each, with `context` as the
    evidence; and their list's mail not yet sent cancelled. Every way out of a list (the
    link, the front desk, a complaint, a bulk action) comes here. Returns the
    (contact id, list id) pairs it ended."""
    ended = sorted(tuple(row) for row in session.execute(sa.update(Subscription).where(
        *where, Subscription.status.in_([SubscriptionStatus.ACTIVE, SubscriptionStatus.PENDING]),
    ).values(status=SubscriptionStatus.UNSUBSCRIBED, unsubscribed_at=now).returning(
        Subscription.contact_id, Subscription.list_id)))
    if not ended:
        return []
    slugs = dict(session.execute(sa.select(MailingList.id, MailingList.slug).where(
        MailingList.id.in_({list_id for _, list_id in ended}))).all())
    consent.record_events(session, [
        {"contact_id": contact_id, "list_id": list_id, "purpose": f"list:{slugs[list_id]}",
         "action": ConsentAction.WITHDRAWN, "source_url": context.source_url, "ip": context.ip,
         "user_agent": context.user_agent, "note": context.note} for contact_id, list_id in ended], now=now)
    for list_id in sorted(slugs):
        outbox.cancel_many(session, contact_ids=[c for c, on in ended if on == list_id], list_id=list_id,
                           reason="unsubscribed")
    return ended


# Housekeeping and personal data ---------------------------------------------------

def purge_expired_pending(session: Session, settings: Settings, now: dt.datetime) -> int:
    """Drop signups never confirmed in time; forget people who have nothing else with us.
    One worker at a time (two would each record an `expired` event for the same signup)."""
    if not take_singleton(session, "purge-expired-pending"):
        return 0
    cutoff = now - dt.timedelta(days=settings.pending_expiry_days)
    expired = session.scalars(sa.select(Subscription).where(
        Subscription.status == SubscriptionStatus.PENDING, Subscription.pending_since < cutoff)).all()
    for sub in expired:
        consent.record_event(session, contact_id=sub.contact_id, list_id=sub.list_id,
                             purpose=f"list:{sub.mailing_list.slug}", action=ConsentAction.EXPIRED, now=now)
        outbox.cancel_pending(session, contact_id=sub.contact_id, list_id=sub.list_id, reason="signup expired")
        session.delete(sub)
    session.flush()
    for contact_id in {sub.contact_id for sub in expired}:
        if not _has_other_ties(session, contact_id):
            anonymise_contact(session, contact_id, now)
    return len(expired)


def _has_other_ties(session: Session, contact_id: int) -> bool:
    return bool(session.scalar(sa.select(
        sa.exists().where(Subscription.contact_id == contact_id)
        | sa.exists().where(Registration.contact_id == contact_id)
    )))


def unsubscribe_everywhere(session: Session, address: str, *, context: consent.RequestContext,
                           now: dt.datetime) -> int:
    """Withdraw every list subscription of an address (a spam complaint); returns how many."""
    contact_id = session.scalar(sa.select(Contact.id).where(Contact.email == address.strip().lower()))
    if contact_id is None:
        return 0
    return len(end_subscriptions(session, Subscription.contact_id == contact_id, context=context, now=now))


def anonymise_contact(session: Session, contact_id: int, now: dt.datetime) -> None:
    """Remove the person's data; the row stays so the consent chain keeps its links."""
    outbox.cancel_pending(session, contact_id=contact_id, reason="contact erased")
    session.execute(sa.update(Contact).where(Contact.id == contact_id)
                    .values(email=None, email_hash=None, name="", name_key="", timezone=None, erased_at=now))
    consent.redact_contact_events(session, contact_id, now)


def ensure_list(session: Session, slug: str, name: str, wording: str, *, description: str = "") -> MailingList:
    """Create a list and its first consent wording if missing (migrate and demo use this)."""
    mailing_list = session.scalar(sa.select(MailingList).where(MailingList.slug == slug))
    if mailing_list is None:
        mailing_list = MailingList(slug=slug, name=name, description=description)
        session.add(mailing_list)
        session.flush()
        session.add(ConsentWording(list_id=mailing_list.id, version=1, text=wording))
        session.flush()
    return mailing_list


# Mail built from this module ------------------------------------------------------

def confirmation_email(batch, delivery: Delivery):
    """Template context for a confirmation request (the sender has checked it is still pending)."""
    sub = batch.session.get(Subscription, delivery.ref_id)
    if sub is None:
        return outbox.Skip(DeliveryStatus.CANCELLED, "signup expired")
    # The other lists asked for in the same signup, still waiting for this confirmation.
    together = batch.session.scalars(sa.select(Subscription).where(
        Subscription.contact_id == sub.contact_id, Subscription.id != sub.id,
        Subscription.status == SubscriptionStatus.PENDING,
        Subscription.confirmation_sent_at == sub.confirmation_sent_at).order_by(Subscription.id)).all()
    return {
        "list_name": sub.mailing_list.name,
        "confirm_url": confirm_url(batch.settings, sub),
        "lists": [{"name": s.mailing_list.name, "confirm_url": confirm_url(batch.settings, s)}
                  for s in (sub, *together)],
        "expiry_days": batch.settings.pending_expiry_days,
    }


# The kinds of mail this module makes, for the sender (registered by mailer.build).
MAIL_KINDS = {CONFIRMATION: Kind(confirmation_email, required_subscription=SubscriptionStatus.PENDING,
                                 label="Subscription confirmation")}
