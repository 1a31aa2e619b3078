"""Rights of the people we write to (GDPR): Art. 15 export of everything held about one
person, and Art. 17 erasure. Both reach across the packages: contacts and the consent
ledger, webinar registrations, sequence enrolments, the outbox and the dev mailbox."""
from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audience import consent, contacts, fields, frontdesk
from mailer.campaigns import sequences, webinars
from mailer.delivery import outbox, suppression
from mailer.errors import NotFound
from mailer.models import (ConsentAction, Contact, Delivery, DevMessage, Enrolment, Registration,
                           RegistrationRequest, RegistrationStatus, Sequence, SignupRequest, Subscription,
                           SubscriptionStatus, Suppression, SuppressionReason, Webinar)
from mailer.settings import Settings

ERASURE_NOTE = "Personal data erased on request (GDPR Art. 17)"


@dataclasses.dataclass(frozen=True)
class ErasureReport:
    """What erase_contact did, for the page or command that asked."""

    contact_id: int
    already_erased: bool = False
    deliveries_cancelled: int = 0
    subscriptions_ended: int = 0
    registrations_cancelled: int = 0
    signup_requests_deleted: int = 0
    dev_messages_deleted: int = 0


def erase_contact(session: Session, settings: Settings, contact_id: int, *, now: dt.datetime) -> ErasureReport:
    """Erase one person (GDPR Art. 17): their address goes on the suppression list as a
    keyed hash (so no later signup or import mails it), unsent mail is cancelled,
    subscriptions end, seats at webinars to come are given back (the waitlist moves up),
    sequence enrolments and custom field values are deleted, and every copy of the address, name and time zone is
    removed, including SMTP error texts, unprocessed signups and the dev mailbox. The consent ledger keeps its events with
    their personal fields redacted, plus an "erased" event; the chain still verifies.
    NotFound for an unknown id; a contact already erased is left as it is."""
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"No contact with id {contact_id}.")
    if contact.email is None:
        return ErasureReport(contact_id, already_erased=True)
    address = contact.email
    # SMTP replies often quote the address; cleared before the cancellations write their reasons.
    session.execute(sa.update(Delivery).where(Delivery.contact_id == contact_id, Delivery.last_error.is_not(None))
                    .values(last_error=None))
    cancelled = outbox.cancel_pending(session, contact_id=contact_id, reason="contact erased")
    suppression.suppress_address(session, settings, address, reason=SuppressionReason.ERASED, detail=ERASURE_NOTE,
                                 now=now)
    # A bounce recorded earlier may quote the address in its detail; its reason stays.
    session.execute(sa.update(Suppression).where(Suppression.email_hash == suppression.email_hash(settings, address),
                                                 Suppression.reason != SuppressionReason.ERASED)
                    .values(detail="detail removed at erasure"))
    # Seats of webinars still to come go back (to the waitlist); a past webinar's
    # registration stays as it was, without personal data, so its attendance still adds up.
    registrations = session.scalars(sa.select(Registration).join(Webinar, Webinar.id == Registration.webinar_id).where(
        Registration.contact_id == contact_id, Registration.status != RegistrationStatus.CANCELLED,
        Webinar.starts_at > now)).all()
    for registration in registrations:
        webinars.cancel_registration(session, registration.token, now=now, acknowledge=False)
    session.execute(sa.update(Registration).where(Registration.contact_id == contact_id).values(timezone=None))
    sequences.forget_contact(session, contact_id)  # nothing more from any sequence
    ended = session.execute(sa.update(Subscription).where(
        Subscription.contact_id == contact_id,
        Subscription.status.in_([SubscriptionStatus.ACTIVE, SubscriptionStatus.PENDING]),
    ).values(status=SubscriptionStatus.UNSUBSCRIBED, unsubscribed_at=now)).rowcount
    signups = session.execute(sa.delete(SignupRequest).where(SignupRequest.email == address)).rowcount
    # Unprocessed webinar registrations are unprocessed signups too (the report counts both).
    signups += session.execute(sa.delete(RegistrationRequest).where(RegistrationRequest.email == address)).rowcount
    # Test copies staff sent to the address before it was anyone's contact (no index: they are few, erasures rare).
    session.execute(sa.update(Delivery).where(Delivery.to_email == address).values(to_email=None))
    messages = session.execute(sa.delete(DevMessage).where(sa.func.lower(DevMessage.rcpt_to) == address)).rowcount
    fields.forget_contact(session, contact_id)
    contacts.anonymise_contact(session, contact_id, now)
    frontdesk.forget_edits(session, contact_id)  # the audit log kept old and new names
    # After the redaction, so this event keeps its note; it holds no address.
    consent.record_event(session, contact_id=contact_id, purpose="all", action=ConsentAction.ERASED,
                         context=consent.RequestContext(note=ERASURE_NOTE), now=now)
    session.expire(contact)
    return ErasureReport(contact_id, False, cancelled, ended, len(registrations), signups, messages)


def export_contact(session: Session, email: str) -> dict | None:
    """Everything held about one person (GDPR Art. 15), as plain JSON-ready data."""
    address = contacts.normalise_email(email)
    contact = session.scalar(sa.select(Contact).where(Contact.email == address))
    if contact is None:
        return None
    return _export(session, contact)


def export_contact_by_id(session: Session, contact_id: int) -> dict:
    """export_contact for the staff console and the API, by id; NotFound if unknown."""
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"No contact with id {contact_id}.")
    return _export(session, contact)


def _export(session: Session, contact: Contact) -> dict:
    subs = session.scalars(sa.select(Subscription).where(Subscription.contact_id == contact.id)).all()
    deliveries = session.scalars(sa.select(Delivery).where(Delivery.contact_id == contact.id).order_by(Delivery.id)).all()
    registrations = session.scalars(sa.select(Registration).where(Registration.contact_id == contact.id)
                                    .order_by(Registration.id)).all()
    enrolments = session.execute(sa.select(Enrolment, Sequence.name).join(Sequence).where(
        Enrolment.contact_id == contact.id).order_by(Enrolment.id)).all()
    return {
        "contact": {"id": contact.id, "email": contact.email, "name": contact.name, "timezone": contact.timezone,
                    "created_at": _iso(contact.created_at), "erased_at": _iso(contact.erased_at)},
        "fields": fields.values_of(session, contact.id),
        "subscriptions": [{"list": s.mailing_list.slug, "status": s.status, "created_at": _iso(s.created_at),
                           "confirmed_at": _iso(s.confirmed_at), "unsubscribed_at": _iso(s.unsubscribed_at)}
                          for s in subs],
        "deliveries": [{"kind": d.kind, "status": d.status, "created_at": _iso(d.created_at),
                        "sent_at": _iso(d.sent_at)} for d in deliveries],
        "registrations": [{"webinar": r.webinar.slug, "title": r.webinar.title, "status": r.status,
                           "timezone": r.timezone, "created_at": _iso(r.created_at),
                           "cancelled_at": _iso(r.cancelled_at), "attended": r.attended} for r in registrations],
        "enrolments": [{"sequence": name, "enrolled_at": _iso(e.enrolled_at), "status": e.status,
                        "last_position": e.last_position, "last_at": _iso(e.last_at),
                        "exited_reason": e.exited_reason} for e, name in enrolments],
        "consent_events": [
            {"id": e.id, "at": _iso(e.created_at), "purpose": e.purpose, "action": e.action,
             "wording_version": e.wording.version if e.wording else None,
             "wording": e.wording.text if e.wording else None,
             "source_url": e.source_url, "ip": e.ip, "user_agent": e.user_agent, "note": e.note,
             "hash": e.hash}
            for e in consent.contact_history(session, contact.id)
        ],
    }


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None
