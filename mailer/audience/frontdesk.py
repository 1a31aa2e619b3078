"""The front desk: staff acting for one person. Add a contact with how their consent was
obtained (or send them a confirmation mail instead), correct their name and time zone,
unsubscribe them from a list or from all (a phone call), invite them to a list again by
double opt-in, resend a pending confirmation. The console, the API and the CLI call these;
each records the staff member as the source in the consent ledger and in the audit log."""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audience import consent, contacts
from mailer.audience.imports import consent_note_or_refuse
from mailer.db import dialect_insert
from mailer.delivery.suppression import email_hash
from mailer.errors import Conflict, InvalidInput, NotFound
from mailer.models import AuditLog, ConsentAction, Contact, MailingList, Subscription, SubscriptionStatus, User
from mailer.settings import Settings
from mailer.staff import users

# Audit actions whose detail holds a name or zone (privacy.erase_contact blanks them).
EDIT_ACTION = "contact.edit"
NOTE_MAX = 1000


@dataclasses.dataclass(frozen=True)
class Staff:
    """Who acted, and through what: the source of the consent events and the audit entries."""

    user_id: int | None  # None: the command line without a named user
    label: str  # the staff member's login address, or "command line"
    via: str  # "console", "api token 'website'", "command line"

    @property
    def source(self) -> str:
        return f"staff: {self.label} ({self.via})"

    def context(self, note: str) -> consent.RequestContext:
        return consent.RequestContext(source_url=self.source, note=note)


def staff_member(session: Session, user_id: int, via: str) -> Staff:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"No staff user {user_id}.")
    return Staff(user.id, user.email, via)


def staff_by_email(session: Session, email: str, via: str = "command line") -> Staff:
    user = session.scalar(sa.select(User).where(User.email == (email or "").strip().lower()))
    if user is None:
        raise InvalidInput("by", f"No staff user with the login {email!r}.")
    return Staff(user.id, user.email, via)


def _audit(session: Session, staff: Staff, action: str, detail: str) -> None:
    """An audit entry in the same transaction as the change, naming the interface used."""
    users.record(session, staff.user_id, action, f"{detail} [{staff.via}]" if staff.user_id else detail)


def check_timezone(raw: str | None) -> str | None:
    """None for no zone; the zone's name when it is a known IANA zone; InvalidInput otherwise."""
    text = (raw or "").strip()
    if not text:
        return None
    zone = contacts.clean_timezone(text)
    if zone is None:
        raise InvalidInput("timezone", f"Unknown time zone {text!r}: use a name such as Europe/Berlin.")
    return zone


def _lists_by_slug(session: Session, slugs) -> list[MailingList]:
    wanted = list(dict.fromkeys(s.strip() for s in slugs or [] if s and s.strip()))
    found = {ml.slug: ml for ml in session.scalars(sa.select(MailingList).where(MailingList.slug.in_(wanted)))}
    unknown = [slug for slug in wanted if slug not in found]
    if unknown:
        raise InvalidInput("lists", f"Unknown mailing list {unknown[0]!r}.")
    return [found[slug] for slug in wanted]


def _live_contact(session: Session, contact_id: int) -> Contact:
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"No contact with id {contact_id}.")
    if contact.email is None:
        raise Conflict("contact", "This contact was erased; there is nobody to change.")
    return contact


def _refuse_suppressed(session: Session, settings: Settings, address: str) -> None:
    if contacts.is_suppressed(session, settings, address):
        raise Conflict("email", "This address is on the suppression list (it bounced, complained or was erased): "
                                "mailer will not write to it.")


class ContactExists(Conflict):
    """The address belongs to a contact already; `contact_id` says who."""

    def __init__(self, contact_id: int):
        super().__init__("email", f"A contact with this address exists already (contact {contact_id}).")
        self.contact_id = contact_id


# Adding ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Added:
    contact_id: int
    joined: tuple[str, ...]  # list slugs joined now, on the consent staff recorded
    invited: tuple[str, ...]  # list slugs waiting for the person to confirm
    confirmation_queued: bool


def add_contact(session: Session, settings: Settings, staff: Staff, *, email: str, name: str = "",
                timezone: str | None = None, lists=(), consent_note: str | None = None,
                send_confirmation: bool = False, now: dt.datetime) -> Added:
    """A new contact, on `lists` either at once, on the consent staff obtained (`consent_note`
    says how, e.g. "signed the paper form at the desk on 3 March": a "recorded" event per
    list with the staff member as source), or, with `send_confirmation`, through the same
    double opt-in as the public form (pending until they click). No list is joined without
    one or the other. ContactExists when the address is known; Conflict when suppressed."""
    address = contacts.normalise_email(email)
    name = contacts.clean_name(name)
    zone = check_timezone(timezone)
    mailing_lists = _lists_by_slug(session, lists)
    note = None
    if mailing_lists and not send_confirmation:
        note = consent_note_or_refuse(consent_note)[:NOTE_MAX]
    _refuse_suppressed(session, settings, address)
    contact_id = session.execute(
        dialect_insert(session, Contact)
        .values(email=address, email_hash=email_hash(settings, address), name=name, timezone=zone, created_at=now)
        .on_conflict_do_nothing(index_elements=["email"]).returning(Contact.id)
    ).scalar()
    if contact_id is None:
        raise ContactExists(session.scalar(sa.select(Contact.id).where(Contact.email == address)))
    contact = session.get(Contact, contact_id)
    _audit(session, staff, "contact.add", f"contact {contact_id}: added"
           + (f", lists {', '.join(ml.slug for ml in mailing_lists)}" if mailing_lists else "")
           + (" (confirmation mail)" if mailing_lists and send_confirmation else ""))
    if not mailing_lists:
        return Added(contact_id, (), (), False)
    if send_confirmation:
        _, queued = _invite(session, settings, staff, contact, mailing_lists, now)
        return Added(contact_id, (), tuple(ml.slug for ml in mailing_lists), queued)
    for ml in mailing_lists:
        session.add(Subscription(contact_id=contact_id, list_id=ml.id, status=SubscriptionStatus.ACTIVE,
                                 confirmed_at=now, created_at=now))
        session.flush()
        wording = contacts.current_wording(session, ml.id)
        consent.record_event(session, contact_id=contact_id, list_id=ml.id, purpose=f"list:{ml.slug}",
                             action=ConsentAction.RECORDED, wording_id=wording.id if wording else None,
                             context=staff.context(note), now=now)
    return Added(contact_id, tuple(ml.slug for ml in mailing_lists), (), False)


# Editing -----------------------------------------------------------------------------

_UNSET = object()


def _shown(value) -> str:
    return json.dumps(value, ensure_ascii=False) if value else "(none)"


def edit_contact(session: Session, staff: Staff, contact_id: int, *, name=_UNSET, timezone=_UNSET,
                 now: dt.datetime) -> list[str]:
    """Correct a person's name and/or time zone (a known IANA zone, or empty for none).
    Returns the changes as "name: old → new"; each change is in the audit log with its old
    and new value. The address is never written there (an address is not edited: it is the
    person; add the new one as a contact)."""
    contact = _live_contact(session, contact_id)
    changes = []
    if name is not _UNSET:
        new_name = contacts.clean_name(name)
        if new_name != contact.name:
            changes.append(f"name: {_shown(contact.name)} → {_shown(new_name)}")
            contact.name = new_name
    if timezone is not _UNSET:
        new_zone = check_timezone(timezone)
        if new_zone != contact.timezone:
            changes.append(f"timezone: {_shown(contact.timezone)} → {_shown(new_zone)}")
            contact.timezone = new_zone
    if changes:
        _audit(session, staff, EDIT_ACTION, f"contact {contact_id}: " + "; ".join(changes))
        session.flush()
    return changes


def forget_edits(session: Session, contact_id: int) -> int:
    """Erasure: the audit entries of this person's edits keep that an edit happened, not the
    names and zones it changed."""
    return session.execute(sa.update(AuditLog).where(
        AuditLog.action == EDIT_ACTION, AuditLog.detail.like(f"contact {contact_id}: %")
    ).values(detail=f"contact {contact_id}: edited (values removed at erasure)")).rowcount


# Unsubscribing -----------------------------------------------------------------------

def unsubscribe_contact(session: Session, settings: Settings, staff: Staff, contact_id: int, *,
                        list_slug: str | None, note: str = "", now: dt.datetime) -> list[str]:
    """Withdraw the person from one list (`list_slug`) or from every list (None), as their
    unsubscribe link does (contacts.withdraw_subscription): a withdrawn event with the staff
    member as source and `note` (e.g. "phoned the desk"), and the list's queued mail
    cancelled. Returns the slugs withdrawn now (empty when there was nothing to end)."""
    contact = _live_contact(session, contact_id)
    query = sa.select(Subscription).join(MailingList, MailingList.id == Subscription.list_id).where(
        Subscription.contact_id == contact.id,
        Subscription.status.in_([SubscriptionStatus.ACTIVE, SubscriptionStatus.PENDING]))
    if list_slug is not None:
        list_id = _lists_by_slug(session, [list_slug])[0].id
        query = query.where(Subscription.list_id == list_id)
    text = " ".join((note or "").split())[:NOTE_MAX]
    context = staff.context(f"unsubscribed by staff: {text}" if text else "unsubscribed by staff")
    withdrawn = [sub.mailing_list.slug for sub in session.scalars(query.order_by(Subscription.list_id)).all()
                 if contacts.withdraw_subscription(session, sub, context=context, now=now)]
    _audit(session, staff, "contact.unsubscribe",
           f"contact {contact_id}: " + (", ".join(withdrawn) if withdrawn else "nothing to end")
           + (" (all lists)" if list_slug is None else ""))
    return withdrawn


# Inviting ----------------------------------------------------------------------------

class Invitation(enum.StrEnum):
    SENT = "sent"  # a confirmation mail is queued
    ALREADY_ACTIVE = "already_active"  # nothing to do
    TOO_SOON = "too_soon"  # a confirmation went out less than confirmation_resend_seconds ago
    CAPPED = "capped"  # the daily cap of confirmation mails to one address is reached


def _invite(session: Session, settings: Settings, staff: Staff, contact: Contact, mailing_lists,
            now: dt.datetime) -> tuple[bool, bool]:
    """The public form's double opt-in (contacts.request_subscription: new pending, or an
    unsubscribed person back to pending, or a resend to a pending one once per interval),
    with the staff member as the source of the "requested" events. (Any list asked now?
    Was the confirmation mail queued?) A mail is not queued over the daily cap."""
    requested = []
    for ml in mailing_lists:
        wording = contacts.current_wording(session, ml.id)
        if wording is None:
            raise InvalidInput("list", f"The list {ml.slug!r} has no consent wording to show.")
        sub = contacts.request_subscription(session, settings, contact, ml, wording,
                                             staff.context("confirmation mail sent by staff"), now)
        if sub is not None:
            requested.append(sub)
    if not requested:
        return False, False
    return True, contacts.enqueue_confirmation(session, settings, contact, requested, now)


def invite(session: Session, settings: Settings, staff: Staff, contact_id: int, *, list_slug: str,
           now: dt.datetime) -> Invitation:
    """Ask the person by mail to (re)join a list: the only way staff put someone who left
    back on a list. A pending subscription gets its confirmation resent (at most once per
    confirmation_resend_seconds)."""
    contact = _live_contact(session, contact_id)
    _refuse_suppressed(session, settings, contact.email)
    mailing_list = _lists_by_slug(session, [list_slug])[0]
    status = session.scalar(sa.select(Subscription.status).where(
        Subscription.contact_id == contact.id, Subscription.list_id == mailing_list.id))
    if status == SubscriptionStatus.ACTIVE:
        outcome = Invitation.ALREADY_ACTIVE
    else:
        asked, queued = _invite(session, settings, staff, contact, [mailing_list], now)
        outcome = Invitation.SENT if queued else Invitation.CAPPED if asked else Invitation.TOO_SOON
    _audit(session, staff, "contact.invite", f"contact {contact_id}: {mailing_list.slug} ({outcome})")
    return outcome
