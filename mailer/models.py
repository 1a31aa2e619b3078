"""Tables. Statuses are plain strings; their allowed values are the StrEnums here."""
from __future__ import annotations

import datetime as dt
import enum
import unicodedata
from typing import Optional

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship, validates

from mailer.db import Base, utcnow


class SubscriptionStatus(enum.StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"


class ConsentAction(enum.StrEnum):
    REQUESTED = "requested"
    CONFIRMED = "confirmed"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"
    ERASED = "erased"
    IMPORTED = "imported"  # consent obtained elsewhere; the event's note says how


class DeliveryStatus(enum.StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DEFERRED = "deferred"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPPRESSED = "suppressed"
    HELD = "held"  # its newsletter is paused: kept, not sent, until it resumes


class ErrorClass(enum.StrEnum):
    TEMPORARY = "temporary"  # 4xx from the server for this message
    PERMANENT = "permanent"  # 5xx for this recipient: failed and suppressed
    CONNECTION = "connection"  # could not connect, or the connection dropped
    RENDERING = "rendering"  # the message could not be built
    EXPIRED = "expired"  # retried until the deadline


class SuppressionReason(enum.StrEnum):
    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    ERASED = "erased"
    MANUAL = "manual"


class Priority(enum.IntEnum):
    """Which due mail a worker claims first: a confirmation or a webinar mail must not wait
    behind a newsletter's whole audience."""

    TRANSACTIONAL = 0  # confirmations, webinar mail, test copies, staff warnings
    BULK = 1  # newsletter issues


# Rows in these states are still waiting to go out (and are due at next_attempt_at).
PENDING_DELIVERY = (DeliveryStatus.QUEUED, DeliveryStatus.DEFERRED)
# Everything not yet sent that a cancellation or an unsubscribe must stop.
NOT_YET_SENT = (*PENDING_DELIVERY, DeliveryStatus.HELD)


class Role(enum.StrEnum):
    OWNER = "owner"
    EDITOR = "editor"
    VIEWER = "viewer"


def name_search_key(name: str | None) -> str:
    """The form of a name that staff search by prefix: Unicode-normalised and case-folded,
    the same on SQLite and PostgreSQL (SQLite's lower() folds ASCII only)."""
    return unicodedata.normalize("NFKC", name or "").casefold()[:100]


def _name_key_default(context) -> str:
    return name_search_key(context.get_current_parameters().get("name"))


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (
        # Prefix search (LIKE 'ann%') may use it on PostgreSQL whatever the collation.
        sa.Index("ix_contacts_name_key", "name_key", postgresql_ops={"name_key": "varchar_pattern_ops"}),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # NULL once the person is erased or an unconfirmed signup is purged.
    email: Mapped[Optional[str]] = mapped_column(sa.String(320), unique=True)
    # Keyed hash of the address, matched against suppressions.email_hash.
    email_hash: Mapped[Optional[str]] = mapped_column(sa.String(64), index=True)
    name: Mapped[str] = mapped_column(sa.String(100), default="")
    # name_search_key(name): filled by inserts that omit it (ORM or Core) and by setting
    # .name on the ORM object; a Core UPDATE of name must set it too.
    name_key: Mapped[str] = mapped_column(sa.String(100), default=_name_key_default)
    timezone: Mapped[Optional[str]] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    erased_at: Mapped[Optional[dt.datetime]]

    subscriptions: Mapped[list["Subscription"]] = relationship(back_populates="contact")

    @validates("name")
    def _keep_name_key(self, _key, name):
        self.name_key = name_search_key(name)
        return name

    @property
    def first_name(self) -> str:
        return self.name.split(" ")[0] if self.name else ""


class MailingList(Base):
    __tablename__ = "mailing_lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    public: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ConsentWording(Base):
    """The exact text a person is shown when asked for consent, versioned per list."""

    __tablename__ = "consent_wordings"
    __table_args__ = (sa.UniqueConstraint("list_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(sa.ForeignKey("mailing_lists.id"))
    version: Mapped[int]
    text: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SignupRequest(Base):
    """A validated signup as the form received it, kept until the worker turns it into
    a pending subscription, a consent event and a confirmation mail. The public form
    does one insert, so it is fast and answers alike for every address."""

    __tablename__ = "signup_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320))
    name: Mapped[str] = mapped_column(sa.String(100), default="")
    lists: Mapped[str] = mapped_column(sa.String(500))  # list slugs, comma-separated
    consent_version: Mapped[Optional[int]]
    timezone: Mapped[Optional[str]] = mapped_column(sa.String(64))
    source_url: Mapped[Optional[str]] = mapped_column(sa.Text)
    ip: Mapped[Optional[str]] = mapped_column(sa.String(64))
    user_agent: Mapped[Optional[str]] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime]


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        sa.UniqueConstraint("contact_id", "list_id"),
        # Staff filter pages walk these newest contact first (keyset on contact_id).
        sa.Index("ix_subscriptions_list_status_contact", "list_id", "status", "contact_id"),
        sa.Index("ix_subscriptions_list_contact", "list_id", "contact_id"),
        # The dashboard counts confirmations and unsubscribes of the last 90 days without a full scan.
        sa.Index("ix_subscriptions_confirmed", "confirmed_at", "list_id", "status"),
        sa.Index("ix_subscriptions_unsubscribed", "unsubscribed_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id"))
    list_id: Mapped[int] = mapped_column(sa.ForeignKey("mailing_lists.id"))
    status: Mapped[str] = mapped_column(sa.String(20))
    # Start of the current double opt-in; confirmation links carry it.
    pending_since: Mapped[Optional[dt.datetime]]
    confirmation_sent_at: Mapped[Optional[dt.datetime]]
    confirmed_at: Mapped[Optional[dt.datetime]]
    unsubscribed_at: Mapped[Optional[dt.datetime]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    contact: Mapped[Contact] = relationship(back_populates="subscriptions")
    mailing_list: Mapped[MailingList] = relationship()


class ConsentEvent(Base):
    """Append-only. `hash` chains each event to the one before it; the personal
    fields (IP, user agent, source URL, note) enter the chain through
    `personal_digest`, so they can be redacted on erasure without breaking it."""

    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id"), index=True)
    list_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("mailing_lists.id"))
    purpose: Mapped[str] = mapped_column(sa.String(100))
    action: Mapped[str] = mapped_column(sa.String(20))
    wording_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("consent_wordings.id"))
    source_url: Mapped[Optional[str]] = mapped_column(sa.Text)
    ip: Mapped[Optional[str]] = mapped_column(sa.String(64))
    user_agent: Mapped[Optional[str]] = mapped_column(sa.Text)
    note: Mapped[Optional[str]] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime]
    personal_digest: Mapped[str] = mapped_column(sa.String(64))
    prev_hash: Mapped[str] = mapped_column(sa.String(64))
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    redacted_at: Mapped[Optional[dt.datetime]]

    wording: Mapped[Optional[ConsentWording]] = relationship()


class Delivery(Base):
    """The outbox: one row per message to one person, rendered at send time."""

    __tablename__ = "deliveries"
    __table_args__ = (
        sa.Index("ix_deliveries_due", "status", "next_attempt_at", "id"),
        # The claim reads due rows one (status, priority) at a time, in due order.
        sa.Index("ix_deliveries_claim", "status", "priority", "next_attempt_at", "id"),
        sa.Index("ix_deliveries_contact_status", "contact_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id"))
    kind: Mapped[str] = mapped_column(sa.String(30))
    list_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("mailing_lists.id"))
    ref_id: Mapped[Optional[int]]
    # What kind of this kind: a reminder's offset in minutes, a follow-up's audience.
    variant: Mapped[Optional[str]] = mapped_column(sa.String(50))
    dedupe_key: Mapped[str] = mapped_column(sa.String(200), unique=True)
    status: Mapped[str] = mapped_column(sa.String(20), default=DeliveryStatus.QUEUED)
    priority: Mapped[int] = mapped_column(sa.SmallInteger, default=Priority.TRANSACTIONAL, server_default="0")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[dt.datetime]
    lease_owner: Mapped[Optional[str]] = mapped_column(sa.String(100))
    lease_expires_at: Mapped[Optional[dt.datetime]]
    last_error: Mapped[Optional[str]] = mapped_column(sa.Text)
    # Why the last attempt did not succeed: an ErrorClass value.
    error_class: Mapped[Optional[str]] = mapped_column(sa.String(20))
    # Set at the first claim and kept across attempts.
    message_id: Mapped[Optional[str]] = mapped_column(sa.String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[Optional[dt.datetime]]

    contact: Mapped[Contact] = relationship()


class Suppression(Base):
    """Addresses never to be mailed again, kept as a keyed hash so the list
    survives erasure without holding the address itself."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    email_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    reason: Mapped[str] = mapped_column(sa.String(30))
    detail: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SendWindow(Base):
    """Messages handed to the SMTP server per second ("s") and per minute ("m"), shared by
    every worker: the rate limiter and the send-rate metric both read them."""

    __tablename__ = "send_windows"

    granularity: Mapped[str] = mapped_column(sa.String(1), primary_key=True)
    start: Mapped[dt.datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(default=0)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    role: Mapped[str] = mapped_column(sa.String(20), default=Role.OWNER)
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[Optional[dt.datetime]]
    last_login_at: Mapped[Optional[dt.datetime]]
    # Set when an owner removes the account: no login, its API tokens stop working.
    disabled_at: Mapped[Optional[dt.datetime]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(sa.String(100))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    scope: Mapped[str] = mapped_column(sa.String(10), default="read")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[Optional[dt.datetime]]
    revoked_at: Mapped[Optional[dt.datetime]]


class Setting(Base):
    """A setting changed by staff on the settings page. It overrides config/defaults.toml;
    a MAILER_* environment variable still wins over it."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.Text)
    updated_by: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("users.id"))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Job(Base):
    """A long operation started from the console (a CSV import), run by the worker under a
    lease, with progress (`done` of `total`) the page shows while it runs."""

    __tablename__ = "jobs"
    __table_args__ = (sa.Index("ix_jobs_status", "status", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(30))
    status: Mapped[str] = mapped_column(sa.String(20), default=JobStatus.QUEUED)
    user_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("users.id"))
    # JSON: what the job was asked to do (list, consent note, …).
    params: Mapped[str] = mapped_column(sa.Text, default="{}")
    # An uploaded file the job reads, under the instance folder; removed when the job ends.
    file_path: Mapped[Optional[str]] = mapped_column(sa.String(500))
    total: Mapped[Optional[int]]
    done: Mapped[int] = mapped_column(default=0)
    # JSON: the outcome (counts, skipped rows and why).
    report: Mapped[str] = mapped_column(sa.Text, default="{}")
    error: Mapped[Optional[str]] = mapped_column(sa.Text)
    lease_owner: Mapped[Optional[str]] = mapped_column(sa.String(100))
    lease_expires_at: Mapped[Optional[dt.datetime]]
    # Times a worker took the job; a job that keeps stopping is given up after a few.
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[Optional[dt.datetime]]
    finished_at: Mapped[Optional[dt.datetime]]


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        # Owners filter the log by user or action, newest first.
        sa.Index("ix_audit_log_user", "user_id", "id"),
        sa.Index("ix_audit_log_action", "action", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(sa.String(50))
    detail: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class DevMessage(Base):
    """The local dev mailbox: messages kept instead of sent when no SMTP is set."""

    __tablename__ = "dev_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    mail_from: Mapped[str] = mapped_column(sa.String(320))
    rcpt_to: Mapped[str] = mapped_column(sa.String(320))
    subject: Mapped[str] = mapped_column(sa.Text, default="")
    raw: Mapped[bytes] = mapped_column(sa.LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


newsletter_lists = sa.Table(
    "newsletter_lists",
    Base.metadata,
    sa.Column("newsletter_id", sa.ForeignKey("newsletters.id"), primary_key=True),
    sa.Column("list_id", sa.ForeignKey("mailing_lists.id"), primary_key=True),
)


class NewsletterLink(Base):
    """Clicks on one link of one issue, counted only when click tracking is on."""

    __tablename__ = "newsletter_links"

    newsletter_id: Mapped[int] = mapped_column(sa.ForeignKey("newsletters.id"), primary_key=True)
    url_hash: Mapped[str] = mapped_column(sa.String(16), primary_key=True)
    url: Mapped[str] = mapped_column(sa.Text)
    clicks: Mapped[int] = mapped_column(default=0)


class Rhythm(Base):
    """A repeating send time, e.g. the first Tuesday of every month at 09:00 Europe/London.
    `day` is an APScheduler cron day expression ("1st tue", "last fri", "15")."""

    __tablename__ = "rhythms"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    day: Mapped[str] = mapped_column(sa.String(20))
    hour: Mapped[int]
    minute: Mapped[int] = mapped_column(default=0)
    timezone: Mapped[str] = mapped_column(sa.String(64))
    active: Mapped[bool] = mapped_column(default=True)
    # The month ("2027-03") for which staff were last warned that no issue was ready.
    warned_month: Mapped[Optional[str]] = mapped_column(sa.String(7))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class NewsletterStatus(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    CANCELLED = "cancelled"


class Newsletter(Base):
    __tablename__ = "newsletters"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(sa.String(300))
    preheader: Mapped[str] = mapped_column(sa.String(300), default="")
    body_md: Mapped[str] = mapped_column(sa.Text, default="")
    layout: Mapped[str] = mapped_column(sa.String(100), default="default")
    status: Mapped[str] = mapped_column(sa.String(20), default=NewsletterStatus.DRAFT)
    send_at: Mapped[Optional[dt.datetime]]
    # Shown in the public archive (/archive) once sent.
    public: Mapped[bool] = mapped_column(default=False)
    # Set when the issue is the one for a month of a monthly rhythm ("2027-03").
    rhythm_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("rhythms.id"))
    rhythm_month: Mapped[Optional[str]] = mapped_column(sa.String(7))
    # Counted only when open tracking is on (aggregate: no per-person record).
    opens: Mapped[int] = mapped_column(default=0)
    # Filled in when sending starts and ends.
    audience_count: Mapped[Optional[int]]
    started_at: Mapped[Optional[dt.datetime]]
    finished_at: Mapped[Optional[dt.datetime]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    lists: Mapped[list[MailingList]] = relationship(secondary=newsletter_lists)


class WebinarStatus(enum.StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"
    CANCELLED = "cancelled"


class RegistrationStatus(enum.StrEnum):
    CONFIRMED = "confirmed"
    WAITLISTED = "waitlisted"
    CANCELLED = "cancelled"


class Webinar(Base):
    __tablename__ = "webinars"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(sa.String(100), unique=True)
    title: Mapped[str] = mapped_column(sa.String(300))
    description_md: Mapped[str] = mapped_column(sa.Text, default="")
    starts_at: Mapped[dt.datetime]
    timezone: Mapped[str] = mapped_column(sa.String(64))
    duration_minutes: Mapped[int] = mapped_column(default=60)
    capacity: Mapped[Optional[int]]  # None: no limit
    # Sent only to confirmed registrants; never shown on a page.
    join_url: Mapped[str] = mapped_column(sa.Text, default="")
    replay_url: Mapped[str] = mapped_column(sa.Text, default="")
    # Minutes before the start, comma-separated: "1440,60" (and "0" for "starting now").
    reminder_offsets: Mapped[str] = mapped_column(sa.String(200), default="1440,60")
    status: Mapped[str] = mapped_column(sa.String(20), default=WebinarStatus.DRAFT)
    # iCalendar SEQUENCE: goes up with every change sent to registrants.
    sequence: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Registration(Base):
    __tablename__ = "registrations"
    __table_args__ = (
        sa.UniqueConstraint("webinar_id", "contact_id"),
        sa.Index("ix_registrations_webinar_status", "webinar_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    webinar_id: Mapped[int] = mapped_column(sa.ForeignKey("webinars.id"))
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id"))
    status: Mapped[str] = mapped_column(sa.String(20), default=RegistrationStatus.CONFIRMED)
    timezone: Mapped[Optional[str]] = mapped_column(sa.String(64))
    # Random, for the cancel link in every mail about this registration.
    token: Mapped[str] = mapped_column(sa.String(64), unique=True)
    confirmation_sent_at: Mapped[Optional[dt.datetime]]
    promoted_at: Mapped[Optional[dt.datetime]]
    cancelled_at: Mapped[Optional[dt.datetime]]
    attended: Mapped[Optional[bool]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    webinar: Mapped[Webinar] = relationship()
    contact: Mapped[Contact] = relationship()
