"""Webinars: create and publish, register with capacity and waitlist, cancel and
promote, reschedule and cancel with calendar updates, reminders and follow-ups
materialised into the outbox, attendance."""
from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import logging
import re
import secrets
import urllib.parse
from zoneinfo import ZoneInfo

import icalendar
import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audience import consent, contacts
from mailer.delivery import outbox
from mailer.delivery.registry import Kind
from mailer.db import is_postgres, newest_first
from mailer.db import take_singleton
from mailer.errors import InvalidInput, NotFound
from mailer.logtext import loggable
from mailer.models import (NOT_YET_SENT, PENDING_DELIVERY, ConsentAction, Contact, Delivery, DeliveryStatus,
                           Registration, RegistrationRequest, RegistrationStatus, Webinar, WebinarStatus)
from mailer.clock import format_local, local_to_utc
from mailer.delivery.rendering import Attachment, markdown_to_html

CONFIRMATION = "webinar_confirmation"
WAITLISTED = "webinar_waitlisted"
PROMOTED = "webinar_promoted"
REMINDER = "webinar_reminder"
UPDATED = "webinar_updated"
CANCELLED = "webinar_cancelled"
FOLLOW_UP = "webinar_follow_up"
SEAT_CANCELLED = "webinar_seat_cancelled"  # the acknowledgement of a seat (or waitlist place) given back
KINDS = (CONFIRMATION, WAITLISTED, PROMOTED, REMINDER, UPDATED, CANCELLED, FOLLOW_UP, SEAT_CANCELLED)
# What the List-Unsubscribe link of webinar mail stops (the seat stays, and with it the
# mail that changes what the seat means: a new time, a cancellation).
STOPPABLE = (REMINDER, FOLLOW_UP)
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{1,98}[a-z0-9]$")
# How far ahead reminders and follow-ups are queued; their send time is exact.
MATERIALISE_AHEAD = dt.timedelta(minutes=10)
# Public pages say "a few seats left" from this many seats left down to one.
FEW_SEATS = 5
log = logging.getLogger(__name__)


# Staff: create, change, publish, cancel ---------------------------------------------

def _offsets(text: str) -> str:
    try:
        values = sorted({int(part) for part in str(text).replace(" ", "").split(",") if part != ""}, reverse=True)
    except ValueError:
        raise InvalidInput("reminder_offsets", "Reminders are minutes before the start, e.g. 1440,60,0.") from None
    if any(v < 0 or v > 60 * 24 * 30 for v in values):
        raise InvalidInput("reminder_offsets", "Each reminder must be between 0 minutes and 30 days before the start.")
    return ",".join(str(v) for v in values)


def _https(field: str, url: str, *, required: bool = False) -> str:
    url = (url or "").strip()
    if not url and not required:
        return ""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        raise InvalidInput(field, "Give a full https:// address.")
    return url


def save_webinar(session: Session, webinar: Webinar | None = None, *, slug: str, title: str, starts_local: dt.datetime,
                 timezone: str, duration_minutes: int = 60, capacity: int | None = None, description_md: str = "",
                 join_url: str = "", replay_url: str = "", reminder_offsets: str = "1440,60",
                 reminder_text: str | None = None, now: dt.datetime) -> Webinar:
    """Create a draft webinar, or change one (a change of start time is a reschedule)."""
    slug = (slug or "").strip().lower()
    if not _SLUG.match(slug):
        raise InvalidInput("slug", "Use 3–100 lower-case letters, digits and dashes, e.g. spine-health.")
    if not (title or "").strip():
        raise InvalidInput("title", "A webinar needs a title.")
    if timezone not in contacts.ZONES:
        raise InvalidInput("timezone", f"Unknown time zone '{timezone}'.")
    if not 5 <= int(duration_minutes) <= 24 * 60:
        raise InvalidInput("duration_minutes", "The duration must be between 5 minutes and a day.")
    if capacity is not None and capacity < 1:
        raise InvalidInput("capacity", "Capacity must be at least 1, or empty for no limit.")
    starts_at = local_to_utc(starts_local, timezone)
    clash = session.scalar(sa.select(Webinar.id).where(Webinar.slug == slug))
    if clash is not None and (webinar is None or clash != webinar.id):
        raise InvalidInput("slug", f"The address /webinars/{slug} is taken.")
    values = dict(slug=slug, title=" ".join(title.split()), description_md=description_md or "", timezone=timezone,
                  duration_minutes=int(duration_minutes), capacity=capacity,
                  join_url=_https("join_url", join_url), replay_url=_https("replay_url", replay_url),
                  reminder_offsets=_offsets(reminder_offsets))
    if reminder_text is not None:  # None: keep it (the API and the CLI do not set it)
        if len(reminder_text) > 2000:
            raise InvalidInput("reminder_text", "Keep the reminder text under 2,000 characters.")
        values["reminder_text"] = reminder_text.strip().replace("\r\n", "\n")
    if webinar is None:
        if starts_at <= now:
            raise InvalidInput("starts_at", "The start must be in the future.")
        webinar = Webinar(starts_at=starts_at, status=WebinarStatus.DRAFT, **values)
        session.add(webinar)
        session.flush()
        return webinar
    if webinar.status == WebinarStatus.CANCELLED:
        raise InvalidInput("status", "A cancelled webinar cannot be changed.")
    old_capacity = webinar.capacity
    for name, value in values.items():
        setattr(webinar, name, value)
    if starts_at != webinar.starts_at:
        reschedule(session, webinar, starts_at, now=now)
    if capacity != old_capacity and webinar.status == WebinarStatus.PUBLISHED and webinar.starts_at > now:
        promote_waitlisted(session, webinar, now)  # more seats: the waitlist moves up, in order
    return webinar


def publish(session: Session, webinar_id: int) -> Webinar:
    webinar = get_webinar(session, webinar_id)
    if webinar.status == WebinarStatus.CANCELLED:
        raise InvalidInput("status", "A cancelled webinar cannot be published.")
    if not webinar.join_url:
        raise InvalidInput("join_url", "Set the join link before publishing: confirmations carry it.")
    webinar.status = WebinarStatus.PUBLISHED
    return webinar


def get_webinar(session: Session, webinar_id: int) -> Webinar:
    webinar = session.get(Webinar, webinar_id)
    if webinar is None:
        raise NotFound(f"no webinar {webinar_id}")
    return webinar


def published_by_slug(session: Session, slug: str) -> Webinar | None:
    return session.scalar(sa.select(Webinar).where(Webinar.slug == slug, Webinar.status == WebinarStatus.PUBLISHED))


def cancelled_by_slug(session: Session, slug: str) -> Webinar | None:
    return session.scalar(sa.select(Webinar).where(Webinar.slug == slug, Webinar.status == WebinarStatus.CANCELLED))


def upcoming(session: Session, now: dt.datetime, limit: int = 20) -> list[Webinar]:
    return list(session.scalars(sa.select(Webinar).where(
        Webinar.status == WebinarStatus.PUBLISHED, Webinar.starts_at > now).order_by(Webinar.starts_at).limit(limit)))


def seats_taken(session: Session, webinar_id: int) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(Registration).where(
        Registration.webinar_id == webinar_id, Registration.status == RegistrationStatus.CONFIRMED))


def seats_left(session: Session, webinar: Webinar) -> int | None:
    """The exact number, for staff only (public pages show public_seats)."""
    return None if webinar.capacity is None else max(webinar.capacity - seats_taken(session, webinar.id), 0)


class SeatBand(enum.StrEnum):
    OPEN = "open"  # no capacity limit
    AVAILABLE = "available"
    FEW = "few"  # 1 to FEW_SEATS seats left
    FULL = "full"  # new registrations go to the waitlist


def seat_band(capacity: int | None, taken: int) -> SeatBand:
    """What public pages say about seats: never a number, because a visitor who registers
    a known address and watches an exact count learns whether it was registered already."""
    if capacity is None:
        return SeatBand.OPEN
    left = capacity - taken
    if left <= 0:
        return SeatBand.FULL
    return SeatBand.FEW if left <= FEW_SEATS else SeatBand.AVAILABLE


def public_seats(session: Session, webinar: Webinar) -> SeatBand:
    return seat_band(webinar.capacity, seats_taken(session, webinar.id))


def reschedule(session: Session, webinar: Webinar, starts_at: dt.datetime, *, now: dt.datetime) -> None:
    """Move the webinar: unsent reminders move with it, sent ones are not repeated, and
    every registrant gets an update with the new time (same calendar UID, next SEQUENCE)."""
    webinar.starts_at = starts_at
    webinar.sequence += 1
    session.flush()
    for delivery in session.scalars(sa.select(Delivery).join(Registration, Registration.id == Delivery.ref_id).where(
            Registration.webinar_id == webinar.id, Delivery.kind == REMINDER,
            Delivery.status.in_(PENDING_DELIVERY))):
        delivery.next_attempt_at = max(starts_at - dt.timedelta(minutes=int(delivery.variant)), now)
    _notify_all(session, webinar, UPDATED, f"seq{webinar.sequence}", now)


def cancel_webinar(session: Session, webinar_id: int, *, now: dt.datetime) -> Webinar:
    """Cancel the webinar: registrants get a calendar cancellation, nothing else goes out."""
    webinar = get_webinar(session, webinar_id)
    if webinar.status == WebinarStatus.CANCELLED:
        raise InvalidInput("status", "The webinar is already cancelled.")
    was_published = webinar.status == WebinarStatus.PUBLISHED
    webinar.status = WebinarStatus.CANCELLED
    webinar.sequence += 1
    session.execute(sa.update(Delivery).where(
        Delivery.kind.in_(KINDS), Delivery.status.in_(NOT_YET_SENT),
        Delivery.ref_id.in_(sa.select(Registration.id).where(Registration.webinar_id == webinar.id)),
    ).values(status=DeliveryStatus.CANCELLED, last_error="webinar cancelled"))
    if was_published:
        _notify_all(session, webinar, CANCELLED, "", now)
    return webinar


def _notify_all(session: Session, webinar: Webinar, kind: str, variant: str, now: dt.datetime) -> None:
    _queue_for_confirmed(session, webinar, kind, variant, now, now)


# Visitors: register and cancel ---------------------------------------------------------

_OPEN_WEBINAR = sa.select(Webinar.id, Webinar.slug, Webinar.title, Webinar.starts_at, Webinar.timezone).where(
    Webinar.slug == sa.bindparam("slug"), Webinar.status == WebinarStatus.PUBLISHED)
_INSERT_REQUEST = sa.insert(RegistrationRequest.__table__)


def open_for_registration(connection, slug: str, now: dt.datetime):
    """The webinar a public form registers for (id, slug, title, starts_at, timezone);
    NotFound unless it is published and has not started. Reads nothing about anyone."""
    webinar = connection.execute(_OPEN_WEBINAR, {"slug": slug}).first()
    if webinar is None or webinar.starts_at <= now:
        raise NotFound("This webinar is not open for registration.")
    return webinar


def accept_registration(connection, public_lists: contacts.PublicLists, webinar_id: int, *, email: str,
                        name: str = "", timezone: str | None = None, newsletter: bool = False,
                        newsletter_version: int | None = None, context: consent.RequestContext,
                        now: dt.datetime) -> None:
    """Validate a registration from the public form and keep it for the worker
    (process_registration_requests), which registers it as of `now`. Like
    contacts.accept_signup, the request path reads nothing about the address: the
    answer and its timing are the same for a new, registered, waitlisted, cancelled,
    suppressed or erased address. Takes a Core connection (or a session)."""
    address = contacts.normalise_email(email)
    if newsletter:
        public_lists.check(connection, [contacts.DEFAULT_LIST], newsletter_version)
    connection.execute(_INSERT_REQUEST, {
        "webinar_id": webinar_id, "email": address, "name": contacts.clean_name(name),
        "timezone": contacts.clean_timezone(timezone), "newsletter": bool(newsletter),
        "newsletter_version": newsletter_version if newsletter else None, "source_url": context.source_url,
        "ip": context.ip, "user_agent": context.user_agent, "created_at": now,
    })


def process_registration_requests(session: Session, settings, *, limit: int = 500) -> int:
    """Turn stored requests into seats or waitlist places, their mail and the newsletter's
    consent event, each as of the moment it was made (register()), then delete them. A
    request that can no longer be honoured (the webinar was cancelled or unpublished,
    the newsletter wording went away) is dropped with a warning. Safe to run in several
    workers at once (PostgreSQL: SKIP LOCKED). Returns how many requests it took."""
    query = sa.select(RegistrationRequest).order_by(RegistrationRequest.id).limit(limit)
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    requests = session.scalars(query).all()
    # register() locks the webinar row: take those locks in one order in every worker.
    for request in sorted(requests, key=lambda r: (r.webinar_id, r.id)):
        slug = session.scalar(sa.select(Webinar.slug).where(Webinar.id == request.webinar_id))
        try:
            with session.begin_nested():  # a dropped request leaves nothing half-written
                register(session, settings, slug, email=request.email, name=request.name,
                         timezone=request.timezone, newsletter=request.newsletter,
                         newsletter_version=request.newsletter_version,
                         context=consent.RequestContext(request.source_url, request.ip, request.user_agent),
                         now=request.created_at)
        except (NotFound, InvalidInput) as exc:
            log.warning("dropping webinar registration request %s: %s", request.id, loggable(exc))
        session.delete(request)
    session.flush()
    return len(requests)


def register(session: Session, settings, slug: str, *, email: str, name: str = "", timezone: str | None = None,
             newsletter: bool = False, newsletter_version: int | None = None,
             context: consent.RequestContext, now: dt.datetime) -> None:
    """Reserve a seat, or a place on the waitlist when full. Returns nothing on purpose:
    the answer must not tell whether the address was registered already."""
    address = contacts.normalise_email(email)
    webinar = _locked_webinar(session, slug)
    if webinar is None or webinar.starts_at <= now:
        raise NotFound("This webinar is not open for registration.")
    if contacts.is_suppressed(session, settings, address):
        return
    zone = contacts.clean_timezone(timezone)
    contact = contacts.get_or_create_contact(session, settings, address, name=contacts.clean_name(name),
                                             timezone=zone, now=now)
    if newsletter:
        try:
            contacts.subscribe(session, settings, email=address, name=name, consent_given=True,
                               consent_version=newsletter_version, timezone=zone, context=context, now=now)
        except contacts.ListClosed:  # archived since the form was shown: the seat still counts
            log.info("webinar registration: newsletter box ignored, the list is archived")
    registration = session.scalar(sa.select(Registration).where(
        Registration.webinar_id == webinar.id, Registration.contact_id == contact.id))
    if registration is not None and registration.status != RegistrationStatus.CANCELLED:
        _resend_confirmation(session, settings, registration, now)
        return
    full = webinar.capacity is not None and seats_taken(session, webinar.id) >= webinar.capacity
    status = RegistrationStatus.WAITLISTED if full else RegistrationStatus.CONFIRMED
    if registration is None:
        registration = Registration(webinar_id=webinar.id, contact_id=contact.id, token=secrets.token_urlsafe(24),
                                    created_at=now)
        session.add(registration)
    registration.status, registration.timezone, registration.cancelled_at = status, zone, None
    registration.promoted_at = None
    if registration.calendar_uid is not None:  # a seat taken again after cancelling: a new event
        registration.calendar_uid = f"registration-{registration.id}-{secrets.token_hex(6)}@{settings.from_domain}"
    registration.created_at, registration.confirmation_sent_at = now, now
    session.flush()
    kind = WAITLISTED if full else CONFIRMATION
    outbox.enqueue(session, contact_id=contact.id, kind=kind, ref_id=registration.id,
                   dedupe_key=f"{kind}:{registration.id}:{int(now.timestamp())}", now=now)


def _locked_webinar(session: Session, slug: str) -> Webinar | None:
    """The webinar row, locked until commit so concurrent registrations count seats one
    at a time (SQLite: the transaction already holds the write lock)."""
    query = sa.select(Webinar).where(Webinar.slug == slug, Webinar.status == WebinarStatus.PUBLISHED)
    if is_postgres(session):
        query = query.with_for_update()
    return session.scalar(query)


def _resend_confirmation(session: Session, settings, registration: Registration, now: dt.datetime) -> None:
    """Registering twice re-sends the confirmation (or waitlist note), at most once per hour."""
    resend_after = now - dt.timedelta(seconds=settings.confirmation_resend_seconds)
    claimed = session.execute(sa.update(Registration).where(
        Registration.id == registration.id, Registration.confirmation_sent_at <= resend_after,
    ).values(confirmation_sent_at=now)).rowcount
    if claimed:
        send_details_again(session, registration, now)


def send_details_again(session: Session, registration: Registration, now: dt.datetime) -> bool:
    """Queue the seat's details (join link, invite) or the waitlist note again, worded as a
    repeat. False for a cancelled registration."""
    if registration.status == RegistrationStatus.CANCELLED:
        return False
    kind = CONFIRMATION if registration.status == RegistrationStatus.CONFIRMED else WAITLISTED
    return outbox.enqueue(session, contact_id=registration.contact_id, kind=kind, ref_id=registration.id,
                          variant="again", dedupe_key=f"{kind}:{registration.id}:again:{int(now.timestamp())}",
                          now=now)


def registration_by_token(session: Session, token: str) -> Registration | None:
    if not token or len(token) > 64:
        return None
    return session.scalar(sa.select(Registration).where(Registration.token == token))


def get_registration(session: Session, registration_id: int) -> Registration:
    registration = session.get(Registration, registration_id)
    if registration is None:
        raise NotFound(f"no registration {registration_id}")
    return registration


def cancel_registration(session: Session, token: str, *, now: dt.datetime,
                        acknowledge: bool = True) -> Registration | None:
    """Give the seat back; the first person on the waitlist gets it and is told. The
    person gets an acknowledgement (acknowledge=False: not, as when they are erased),
    with a calendar cancellation of the invite they had."""
    registration = registration_by_token(session, token)
    if registration is None or registration.status == RegistrationStatus.CANCELLED:
        return registration
    webinar = _locked_webinar(session, registration.webinar.slug) or registration.webinar
    had_seat = registration.status == RegistrationStatus.CONFIRMED
    registration.status, registration.cancelled_at = RegistrationStatus.CANCELLED, now
    outbox.cancel_pending(session, contact_id=registration.contact_id, kinds=KINDS, ref_id=registration.id,
                          reason="registration cancelled")
    if acknowledge and webinar.starts_at > now:
        outbox.enqueue(session, contact_id=registration.contact_id, kind=SEAT_CANCELLED, ref_id=registration.id,
                       variant="seat" if had_seat else "waitlist",
                       dedupe_key=f"{SEAT_CANCELLED}:{registration.id}:{int(now.timestamp())}", now=now)
    session.flush()
    if had_seat and webinar.starts_at > now:
        _promote_next(session, webinar, now)
    return registration


def add_registrant(session: Session, settings, webinar_id: int, *, email: str, name: str = "",
                   consent_note: str, staff_email: str, now: dt.datetime) -> str:
    """Staff register someone by hand (asked by phone, at the front desk…). How they agreed
    is required, and recorded as a consent event with the staff member as its source; the
    person then gets the usual confirmation or waitlist mail. Returns what happened, for
    staff: "registered", "waitlisted", "already" (details sent again) or "suppressed"."""
    note = " ".join((consent_note or "").split())
    if len(note) < 5:
        raise InvalidInput("consent_note", "Say how this person agreed to be registered, e.g. 'asked by phone'.")
    address = contacts.normalise_email(email)
    webinar = get_webinar(session, webinar_id)
    if webinar.status != WebinarStatus.PUBLISHED or webinar.starts_at <= now:
        raise InvalidInput("status", "Only a published webinar that has not started takes registrants.")
    if contacts.is_suppressed(session, settings, address):
        return "suppressed"
    existing = session.scalar(sa.select(Registration).join(Contact, Contact.id == Registration.contact_id).where(
        Registration.webinar_id == webinar.id, Contact.email == address,
        Registration.status != RegistrationStatus.CANCELLED))
    if existing is not None:
        send_details_again(session, existing, now)
        return "already"
    context = consent.RequestContext(source_url=f"staff:{staff_email}", note=note)
    register(session, settings, webinar.slug, email=address, name=name, context=context, now=now)
    registration = session.scalar(sa.select(Registration).join(Contact, Contact.id == Registration.contact_id).where(
        Registration.webinar_id == webinar.id, Contact.email == address))
    consent.record_event(session, contact_id=registration.contact_id, purpose=f"webinar:{webinar.slug}",
                         action=ConsentAction.IMPORTED, context=context, now=now)
    return "registered" if registration.status == RegistrationStatus.CONFIRMED else "waitlisted"


def stop_mail(session: Session, token: str, *, now: dt.datetime) -> Registration | None:
    """The List-Unsubscribe target of webinar mail: no more reminders or follow-ups for this
    registration. The seat is kept (releasing it is the cancel link's job, in the body)."""
    registration = registration_by_token(session, token)
    if registration is None or registration.mail_stopped_at is not None:
        return registration
    registration.mail_stopped_at = now
    outbox.cancel_pending(session, contact_id=registration.contact_id, kinds=STOPPABLE, ref_id=registration.id,
                          reason="webinar mail stopped by the registrant")
    session.flush()
    return registration


def _promote_next(session: Session, webinar: Webinar, now: dt.datetime) -> bool:
    if webinar.capacity is not None and seats_taken(session, webinar.id) >= webinar.capacity:
        return False
    first = session.scalar(sa.select(Registration).where(
        Registration.webinar_id == webinar.id, Registration.status == RegistrationStatus.WAITLISTED,
    ).order_by(Registration.created_at, Registration.id).limit(1))
    if first is None:
        return False
    first.status, first.promoted_at = RegistrationStatus.CONFIRMED, now
    outbox.enqueue(session, contact_id=first.contact_id, kind=PROMOTED, ref_id=first.id,
                   dedupe_key=f"{PROMOTED}:{first.id}:{int(now.timestamp())}", now=now)
    session.flush()
    return True


def promote_waitlisted(session: Session, webinar: Webinar, now: dt.datetime) -> int:
    """Give every free seat to the waitlist, first come first served (after capacity was
    raised); each person promoted is told. Returns how many were promoted."""
    if is_postgres(session):  # count seats under the same lock as registrations do
        session.execute(sa.select(Webinar.id).where(Webinar.id == webinar.id).with_for_update())
    promoted = 0
    while _promote_next(session, webinar, now):
        promoted += 1
    return promoted


# Reminders, follow-ups, attendance ---------------------------------------------------------

def materialise(session: Session, now: dt.datetime) -> int:
    """Queue every reminder due within MATERIALISE_AHEAD (at its exact time) and the
    follow-ups of ended webinars that have a replay. Dedupe keys make this safe to run
    again and in several workers. A reminder whose time passed while no worker ran is
    still queued; the sender skips it, recorded, if the webinar has started. One worker at
    a time: the keys already keep it to one mail each, the lock spares the others the work
    (and two inserts of the same keys in different orders from deadlocking)."""
    if not take_singleton(session, "webinar-mail"):
        return 0
    queued = 0
    webinars = session.scalars(sa.select(Webinar).where(
        Webinar.status == WebinarStatus.PUBLISHED, Webinar.starts_at > now - dt.timedelta(days=7))).all()
    for webinar in webinars:
        offsets = reminder_offsets(webinar)
        for offset, later in zip(offsets, offsets[1:] + [None]):
            due = webinar.starts_at - dt.timedelta(minutes=offset)
            if later is not None and webinar.starts_at - dt.timedelta(minutes=later) <= now:
                continue  # overdue and overtaken (no worker ran): the later reminder says it all
            if due <= now + MATERIALISE_AHEAD and webinar.starts_at > now - dt.timedelta(days=1):
                queued += _queue_for_confirmed(session, webinar, REMINDER, str(offset), due, now, seated_before=due)
        ends = webinar.starts_at + dt.timedelta(minutes=webinar.duration_minutes)
        if webinar.replay_url and ends <= now:
            queued += _queue_for_confirmed(session, webinar, FOLLOW_UP, "", now, now)
    return queued


def reminder_offsets(webinar: Webinar) -> list[int]:
    """The webinar's reminders, minutes before the start, earliest reminder first."""
    return sorted({int(o) for o in webinar.reminder_offsets.split(",") if o != ""}, reverse=True)


def _queue_for_confirmed(session: Session, webinar: Webinar, kind: str, variant: str, due: dt.datetime,
                         now: dt.datetime, *, seated_before: dt.datetime | None = None) -> int:
    """One mail of `kind` to every confirmed registrant, in one statement; the dedupe key
    per registration and variant makes running it again (every worker tick) add nothing.
    `seated_before`: only those who had their seat by then (a reminder whose time had
    passed when someone registered or was promoted is not theirs: their confirmation
    was sent after it and serves)."""
    rows = sa.select(
        Registration.contact_id, sa.literal(None, sa.Integer).label("list_id"), Registration.id.label("ref_id"),
        (sa.literal(f"{kind}:") + sa.cast(Registration.id, sa.String) + sa.literal(f":{variant}")).label("dedupe_key"),
    ).where(Registration.webinar_id == webinar.id, Registration.status == RegistrationStatus.CONFIRMED)
    if seated_before is not None:
        rows = rows.where(sa.func.coalesce(Registration.promoted_at, Registration.created_at) < seated_before)
    if kind in STOPPABLE:
        rows = rows.where(Registration.mail_stopped_at.is_(None))
    return outbox.enqueue_many(session, rows, kind=kind, variant=variant or None, due_at=due, now=now)


def mark_attendance(session: Session, webinar_id: int, emails: list[str], *, attended: bool = True) -> int:
    """Mark these registrants as attended (or not); returns how many were found."""
    addresses = [contacts.normalise_email(e) for e in emails if e and e.strip()]
    ids = session.scalars(sa.select(Registration.id).join(Contact).where(
        Registration.webinar_id == webinar_id, Contact.email.in_(addresses))).all()
    if ids:
        session.execute(sa.update(Registration).where(Registration.id.in_(ids)).values(attended=attended))
    return len(ids)


def import_attendance(session: Session, webinar_id: int, csv_text: str) -> tuple[int, list[str]]:
    """A CSV with an 'email' column (as video platforms export it): those listed attended.
    Returns how many were marked and the addresses not registered or not valid."""
    reader = csv.DictReader(io.StringIO(csv_text))
    column = next((name for name in reader.fieldnames or [] if name and name.strip().lower() in
                   {"email", "e-mail", "email address", "attendee email"}), None)
    if column is None:
        raise InvalidInput("file", "The CSV needs an 'email' column.")
    found, unknown = [], []
    for row in reader:
        raw = (row.get(column) or "").strip()
        try:
            found.append(contacts.normalise_email(raw))
        except InvalidInput:
            unknown.append(raw)
    marked = mark_attendance(session, webinar_id, found)
    registered = set(session.scalars(sa.select(Contact.email).join(Registration).where(
        Registration.webinar_id == webinar_id, Contact.email.in_(found))))
    return marked, unknown + [a for a in found if a not in registered]


# The mail -------------------------------------------------------------------------------

def cancel_url(settings, registration: Registration) -> str:
    return f"{settings.base_url}/webinars/{registration.webinar.slug}/cancel/{registration.token}"


def stop_mail_url(settings, registration: Registration) -> str:
    return f"{settings.base_url}/webinars/{registration.webinar.slug}/stop-mail/{registration.token}"


def _legacy_uid(settings, registration: Registration) -> str:
    # What invites carried before the UID was stored; still the first UID of a registration.
    return f"registration-{registration.id}-{registration.token[:8]}@{settings.from_domain}"


def keep_calendar_identity(session: Session, settings, webinar: Webinar, registration: Registration) -> None:
    """Store the registration's UID and the webinar's organiser with the first invite sent
    (writes; a concurrent worker's value wins if it stored one first), so a later change of
    the sender leaves updates and cancellations matching the event already in calendars."""
    if registration.calendar_uid is None:
        session.execute(sa.update(Registration).where(
            Registration.id == registration.id, Registration.calendar_uid.is_(None),
        ).values(calendar_uid=_legacy_uid(settings, registration)))
        session.refresh(registration, ["calendar_uid"])
    if webinar.organizer_email is None:
        session.execute(sa.update(Webinar).where(Webinar.id == webinar.id, Webinar.organizer_email.is_(None))
                        .values(organizer_email=settings.from_email))
        session.refresh(webinar, ["organizer_email"])


def calendar_invite(settings, webinar: Webinar, registration: Registration, *, cancelled: bool = False,
                    sequence: int | None = None) -> Attachment:
    """An iCalendar invitation: one UID per registration (stored, see keep_calendar_identity),
    SEQUENCE raised by every change, METHOD:CANCEL when the webinar or the seat is off,
    times in the organiser's zone."""
    cal = icalendar.Calendar()
    cal.add("prodid", "-//mailer//webinars//EN")
    cal.add("version", "2.0")
    cal.add("method", "CANCEL" if cancelled else "REQUEST")
    event = icalendar.Event()
    event.add("uid", registration.calendar_uid or _legacy_uid(settings, registration))
    event.add("sequence", webinar.sequence if sequence is None else sequence)
    event.add("dtstamp", dt.datetime.now(dt.timezone.utc))
    zone = ZoneInfo(webinar.timezone)
    event.add("dtstart", webinar.starts_at.astimezone(zone))
    event.add("dtend", (webinar.starts_at + dt.timedelta(minutes=webinar.duration_minutes)).astimezone(zone))
    event.add("summary", webinar.title)
    event.add("status", "CANCELLED" if cancelled else "CONFIRMED")
    organizer = icalendar.vCalAddress(f"mailto:{webinar.organizer_email or settings.from_email}")
    organizer.params["cn"] = icalendar.vText(settings.organisation)
    event.add("organizer", organizer)
    attendee = icalendar.vCalAddress(f"mailto:{registration.contact.email}")
    attendee.params["role"] = icalendar.vText("REQ-PARTICIPANT")
    attendee.params["partstat"] = icalendar.vText("ACCEPTED")
    event.add("attendee", attendee)
    if not cancelled:
        event.add("url", webinar.join_url)
        event.add("location", webinar.join_url)
        event.add("description", f"Join: {webinar.join_url}\nCancel your seat: {cancel_url(settings, registration)}")
        alarm = icalendar.Alarm()
        alarm.add("action", "DISPLAY")
        alarm.add("description", f"{webinar.title} starts in 15 minutes")
        alarm.add("trigger", dt.timedelta(minutes=-15))
        event.add_component(alarm)
    cal.add_component(event)
    cal.add_missing_timezones()
    method = "CANCEL" if cancelled else "REQUEST"
    return Attachment("invite.ics", f'text/calendar; method={method}; charset="utf-8"', cal.to_ical())


def calendar_links(webinar: Webinar) -> dict[str, str]:
    """"Add to Google / Outlook calendar" links (no personal data in them)."""
    start = webinar.starts_at.astimezone(dt.timezone.utc)
    end = start + dt.timedelta(minutes=webinar.duration_minutes)
    google = "https://calendar.google.com/calendar/render?" + urllib.parse.urlencode({
        "action": "TEMPLATE", "text": webinar.title, "details": webinar.join_url, "location": webinar.join_url,
        "dates": f"{start:%Y%m%dT%H%M%SZ}/{end:%Y%m%dT%H%M%SZ}"})
    outlook = "https://outlook.live.com/calendar/0/deeplink/compose?" + urllib.parse.urlencode({
        "path": "/calendar/action/compose", "rru": "addevent", "subject": webinar.title, "body": webinar.join_url,
        "location": webinar.join_url, "startdt": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "enddt": end.strftime("%Y-%m-%dT%H:%M:%SZ")})
    return {"google": google, "outlook": outlook}


def minutes_left(starts_at: dt.datetime, now: dt.datetime) -> int:
    """Whole minutes until the start, to the nearest (a reminder leaves a few seconds late)."""
    return max(round((starts_at - now).total_seconds() / 60), 0)


def starts_in(minutes: int) -> str:
    """A reminder's headline for the time left: 'Starting in 45 minutes', '… 24 hours'."""
    if minutes <= 0:
        return "Starting now"
    if minutes == 1:
        return "Starting in 1 minute"
    if minutes < 120:
        return f"Starting in {minutes} minutes"
    hours = round(minutes / 60)
    if hours < 72:
        return f"Starting in {hours} hours"
    return f"Starting in {round(hours / 24)} days"


def webinar_email(batch, delivery: Delivery):
    """Context for every webinar mail; the join link only for a confirmed seat."""
    key = (Registration, delivery.ref_id)
    if key not in batch.rows:
        batch.rows[key] = batch.session.get(Registration, delivery.ref_id)
    registration = batch.rows[key]
    if registration is None:
        return outbox.Skip(DeliveryStatus.CANCELLED, "registration removed")
    webinar = registration.webinar
    now = batch.clock()
    kind = delivery.kind
    if kind != CANCELLED and webinar.status == WebinarStatus.CANCELLED:
        return outbox.Skip(DeliveryStatus.CANCELLED, "webinar cancelled")
    seated = registration.status == RegistrationStatus.CONFIRMED
    if kind in (CONFIRMATION, PROMOTED, REMINDER, UPDATED, FOLLOW_UP) and not seated:
        return outbox.Skip(DeliveryStatus.CANCELLED, f"registration is {registration.status}")
    if kind == WAITLISTED and registration.status != RegistrationStatus.WAITLISTED:
        return outbox.Skip(DeliveryStatus.CANCELLED, f"registration is {registration.status}")
    if kind == SEAT_CANCELLED and registration.status != RegistrationStatus.CANCELLED:
        return outbox.Skip(DeliveryStatus.CANCELLED, "registration was taken up again")
    if kind in STOPPABLE and registration.mail_stopped_at is not None:
        return outbox.Skip(DeliveryStatus.CANCELLED, "webinar mail stopped by the registrant")
    if kind == REMINDER and now >= webinar.starts_at:
        return outbox.Skip(DeliveryStatus.CANCELLED, "skipped: the webinar had started")
    zone = registration.timezone or webinar.timezone
    context = {
        "webinar": {"title": webinar.title, "duration_minutes": webinar.duration_minutes,
                    "description_html": markdown_to_html(webinar.description_md)},
        "starts_local": format_local(webinar.starts_at, zone),
        "starts_organiser": format_local(webinar.starts_at, webinar.timezone),
        "reader_zone": zone, "organiser_zone": webinar.timezone,
        "cancel_url": cancel_url(batch.settings, registration),
        # The header's one-click target: stops reminders and follow-ups, keeps the seat
        # (a mail client's "unsubscribe" button must not give a seat away unasked).
        "unsubscribe_url": stop_mail_url(batch.settings, registration),
        "stop_mail_url": stop_mail_url(batch.settings, registration),
        "had_seat": delivery.variant == "seat",
        "again": delivery.variant == "again",  # details sent again (registered again, or by staff)
        "page_url": f"{batch.settings.base_url}/webinars/{webinar.slug}",
        "join_url": webinar.join_url if seated and kind != CANCELLED else None,
        "replay_url": webinar.replay_url or None,
        "calendar": calendar_links(webinar) if seated else None,
        "minutes_before": int(delivery.variant) if kind == REMINDER else None,
        # What a reminder says is the time actually left when it leaves, not its nominal offset.
        "starts_in": starts_in(minutes_left(webinar.starts_at, now)) if kind == REMINDER else None,
        "attended": bool(registration.attended),
        "reminder_text": webinar.reminder_text if kind == REMINDER else "",
        "attachments": (),
    }
    if kind in (CONFIRMATION, PROMOTED, UPDATED, CANCELLED):
        keep_calendar_identity(batch.session, batch.settings, webinar, registration)
    if kind in (CONFIRMATION, PROMOTED, UPDATED):
        context["attachments"] = (calendar_invite(batch.settings, webinar, registration),)
    elif kind == CANCELLED:
        context["attachments"] = (calendar_invite(batch.settings, webinar, registration, cancelled=True),)
    if kind == SEAT_CANCELLED:
        del context["unsubscribe_url"]  # the last mail about this registration: nothing to stop
    if kind == SEAT_CANCELLED and delivery.variant == "seat":
        # Above every SEQUENCE the webinar sent this registration, so calendars take it.
        keep_calendar_identity(batch.session, batch.settings, webinar, registration)
        context["attachments"] = (calendar_invite(batch.settings, webinar, registration, cancelled=True,
                                                  sequence=webinar.sequence + 1),)
    return context


# The JSON API's pages ---------------------------------------------------------------------

def list_webinars(session: Session, *, before_id: int | None = None, limit: int = 50) -> list[tuple[Webinar, int]]:
    """Newest first, each with its seats taken; `before_id` continues a page (cursor
    pagination). One more row than asked is returned when there is a next page."""
    stmt = sa.select(Webinar, _seats_taken())
    return [(webinar, count) for webinar, count in
            session.execute(newest_first(stmt, Webinar.id, before_id=before_id, limit=limit))]


def webinars_by_start(session: Session) -> list[tuple[Webinar, int]]:
    """Every webinar, latest start first, each with its seats taken (the staff list)."""
    return [(webinar, count) for webinar, count in
            session.execute(sa.select(Webinar, _seats_taken()).order_by(Webinar.starts_at.desc()))]


def _seats_taken():
    """Confirmed registrations of the webinar in the outer query, as a column."""
    return (sa.select(sa.func.count()).select_from(Registration).where(
        Registration.webinar_id == Webinar.id, Registration.status == RegistrationStatus.CONFIRMED)
        .correlate(Webinar).scalar_subquery())


def list_registrations(session: Session, webinar_id: int, *, before_id: int | None = None, limit: int = 50
                       ) -> list[tuple[Registration, str | None, str]]:
    """A webinar's registrations, newest first, with each registrant's email and name
    (NotFound for an unknown webinar); paged like list_webinars."""
    get_webinar(session, webinar_id)
    return [tuple(row) for row in session.execute(newest_first(_registrants(webinar_id), Registration.id,
                                                                  before_id=before_id, limit=limit))]


def registrations_in_order(session: Session, webinar_id: int):
    """Every registration of a webinar with the registrant's email and name, in the order
    they came, streamed (the staff page and the CSV export)."""
    return session.execute(_registrants(webinar_id).order_by(Registration.id).execution_options(yield_per=500))


def _registrants(webinar_id: int):
    return (sa.select(Registration, Contact.email, Contact.name).join(Contact, Contact.id == Registration.contact_id)
            .where(Registration.webinar_id == webinar_id))


# The kinds of mail this module makes, for the sender (registered by mailer.build).
KIND_LABELS = {CONFIRMATION: "Webinar confirmation", WAITLISTED: "Webinar waitlist place",
               PROMOTED: "Webinar seat from the waitlist", REMINDER: "Webinar reminder", UPDATED: "Webinar change",
               CANCELLED: "Webinar cancelled", FOLLOW_UP: "Webinar follow-up", SEAT_CANCELLED: "Webinar seat given back"}
MAIL_KINDS = {kind: Kind(webinar_email, label=KIND_LABELS[kind]) for kind in KINDS}
