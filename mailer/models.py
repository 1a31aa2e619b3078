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
    RECORDED = "recorded"  # consent given to staff (a paper form, in person); the note says how, the source who
    REDACTED = "redacted"  # the ledger's record of an erasure: earlier events' personal fields blanked
    REANCHORED = "reanchored"  # the ledger's own: older unkeyed events sealed under the keyed chain


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
    POLICY = "policy"  # 5xx refusing on policy or content (5.7.x: spam, blocked, DMARC): failed, not suppressed
    REJECTED = "rejected"  # another 5xx that is not about the mailbox (message too big, 554): failed, not suppressed
    ADDRESS = "address"  # the address cannot go out here (non-ASCII local part, no SMTPUTF8): failed, not suppressed


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
        # Substring search (LIKE '%maria%') on PostgreSQL: trigram indexes (pg_trgm). SQLite
        # has the FTS5 table contacts_fts instead (db.SQLITE_SEARCH_TABLES, migration 0019).
        sa.Index("ix_contacts_email_trgm", "email", postgresql_using="gin",
                 postgresql_ops={"email": "gin_trgm_ops"}).ddl_if(dialect="postgresql"),
        sa.Index("ix_contacts_name_key_trgm", "name_key", postgresql_using="gin",
                 postgresql_ops={"name_key": "gin_trgm_ops"}).ddl_if(dialect="postgresql"),
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
        return first_name_of(self.name)


def first_name_of(name: str | None) -> str:
    """What {{ contact.first_name }} prints: the name up to its first space."""
    return name.split(" ")[0] if name else ""


class MailingList(Base):
    __tablename__ = "mailing_lists"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(sa.String(64), unique=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    public: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Set when staff archive the list: no new signups (form, API, imports); its
    # subscribers, their consent history and unsubscribe links stay (mailer.audience.lists).
    archived_at: Mapped[Optional[dt.datetime]]


class ConsentWording(Base):
    """The exact text a person is shown when asked for consent, versioned per list. A
    version is never changed: new wording is a new version (lists.add_wording), and
    consent events point at the version they showed."""

    __tablename__ = "consent_wordings"
    __table_args__ = (sa.UniqueConstraint("list_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    list_id: Mapped[int] = mapped_column(sa.ForeignKey("mailing_lists.id"))
    version: Mapped[int]
    text: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    @validates("text")
    def _text_is_immutable(self, _key, text):
        if self.text is not None and text != self.text:
            raise ValueError("a consent wording version is never changed: add a new version")
        return text


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
    `personal_digest`, so they can be redacted on erasure without breaking it. The
    ledger's own events (re-anchoring) have no contact."""

    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("contacts.id"), index=True)
    list_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("mailing_lists.id"))
    purpose: Mapped[str] = mapped_column(sa.String(100))
    action: Mapped[str] = mapped_column(sa.String(20))
    # Indexed: a list's page counts the events of each wording version.
    wording_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("consent_wordings.id"), index=True)
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
    # NULL only for a test copy staff sent to an address that is nobody's contact (to_email).
    contact_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("contacts.id"))
    # A test copy's recipient when it is not a contact (erasure of that address clears it).
    to_email: Mapped[Optional[str]] = mapped_column(sa.String(320))
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

    contact: Mapped[Optional[Contact]] = relationship()


class Bounce(Base):
    """A delivery status notification read from the bounce mailbox, matched to the delivery it
    is about: a hard bounce (the address was suppressed), a soft one (recorded only), or a
    refusal of the message rather than the mailbox (policy: recorded, nobody suppressed)."""

    __tablename__ = "bounces"

    id: Mapped[int] = mapped_column(primary_key=True)
    delivery_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("deliveries.id", ondelete="SET NULL"),
                                                       index=True)
    kind: Mapped[str] = mapped_column(sa.String(20))
    status: Mapped[str] = mapped_column(sa.String(20), default="")
    # The MTA's diagnostic, addresses masked (clean_detail).
    detail: Mapped[str] = mapped_column(sa.Text, default="")
    # One row per notification and recipient, so reading a message twice records it once.
    notice_key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


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


class RateLimitCounter(Base):
    """Fixed-window request counters shared by every web process (mailer.ratelimit),
    when no Redis is configured: one row per limit and client, gone once it expires."""

    __tablename__ = "rate_limit_counters"
    __table_args__ = (sa.Index("ix_rate_limit_counters_expires_at", "expires_at"),)

    key: Mapped[str] = mapped_column(sa.String(250), primary_key=True)
    hits: Mapped[int]
    # Seconds since the epoch (UTC) when this window ends: compared with time.time().
    expires_at: Mapped[float] = mapped_column(sa.Float)


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
    # Part of every login session's stamp: raised by logout, a new password, a role change
    # or disabling, which ends every session of the account on every process and host.
    session_generation: Mapped[int] = mapped_column(default=0, server_default="0")
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
    # An uploaded file the job reads, under the instance folder (jobs queued before migration
    # 0011; uploads are in job_uploads since); removed when the job ends.
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


class JobUpload(Base):
    """The file a console job reads, in the database so a worker on any host can read it:
    ~1 MB pieces in order (`seq`), written with the job row, deleted when the job ends."""

    __tablename__ = "job_uploads"

    job_id: Mapped[int] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)


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
    # The client address of a change made on the web (MAILER_PROXY_COUNT resolves it); NULL
    # from the command line and the worker.
    ip: Mapped[Optional[str]] = mapped_column(sa.String(64))
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
    # "Fill from the blog": 24 h before a send time with no issue ready and new blog posts,
    # a digest of them is drafted for staff to approve (never sent unapproved).
    fill_from_blog: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class NewsletterStatus(enum.StrEnum):
    DRAFT = "draft"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    PAUSED = "paused"
    SENT = "sent"
    CANCELLED = "cancelled"


class Segment(Base):
    """Saved rules that pick contacts (mailer.audience.segments compiles them to one SQL
    query). A segment narrows an audience; it never adds anyone a list does not have."""

    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    # JSON: {"match": "all" | "any", "groups": [{"match": …, "rules": [{"kind": …, …}]}]}
    rules: Mapped[str] = mapped_column(sa.Text, default="{}")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    archived_at: Mapped[Optional[dt.datetime]]


class Newsletter(Base):
    __tablename__ = "newsletters"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(sa.String(300))
    preheader: Mapped[str] = mapped_column(sa.String(300), default="")
    body_md: Mapped[str] = mapped_column(sa.Text, default="")
    layout: Mapped[str] = mapped_column(sa.String(100), default="default")
    status: Mapped[str] = mapped_column(sa.String(20), default=NewsletterStatus.DRAFT)
    send_at: Mapped[Optional[dt.datetime]]
    # Set when the issue goes out at a wall-clock time in each reader's own zone
    # ("2027-03-10T09:00"); send_at is then the first of those instants among its readers.
    # Readers without a (known) zone get it at that time in send_zone_fallback, the
    # organisation's zone when it was scheduled.
    send_local_time: Mapped[Optional[str]] = mapped_column(sa.String(16))
    send_zone_fallback: Mapped[Optional[str]] = mapped_column(sa.String(64))
    # Shown in the public archive (/archive) once sent.
    public: Mapped[bool] = mapped_column(default=False)
    # Set when the issue is the one for a month of a monthly rhythm ("2027-03").
    rhythm_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("rhythms.id"))
    rhythm_month: Mapped[Optional[str]] = mapped_column(sa.String(7))
    # Counted only when open tracking is on (aggregate: no per-person record).
    opens: Mapped[int] = mapped_column(default=0)
    # Optionally only those subscribers of its lists who are in this segment; the rules
    # as they were when sending started are kept in segment_rules (JSON), so later edits
    # of the segment do not change what the report describes.
    segment_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("segments.id"))
    segment_rules: Mapped[Optional[str]] = mapped_column(sa.Text)
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
    # The invites' ORGANIZER, fixed by the first one sent: calendars ignore an update or a
    # cancellation from another organiser, and staff may change the sender meanwhile.
    organizer_email: Mapped[Optional[str]] = mapped_column(sa.String(320))
    # Staff's own words added to every reminder (plain text), e.g. what to have at hand.
    reminder_text: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
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
    # The invites' UID, fixed by the first one sent: every update and cancellation repeats it.
    calendar_uid: Mapped[Optional[str]] = mapped_column(sa.String(255))
    # Set by the List-Unsubscribe link of this registration's mail: no more reminders or
    # follow-ups (the seat is kept, and changes to the webinar are still sent).
    mail_stopped_at: Mapped[Optional[dt.datetime]]

    webinar: Mapped[Webinar] = relationship()
    contact: Mapped[Contact] = relationship()


class RegistrationRequest(Base):
    """A webinar registration as the public form received it, kept until the worker
    turns it into a seat or a waitlist place, its mail and (for the newsletter box) a
    consent event, as of `created_at`. Like SignupRequest: the form does one insert, so
    its answer and timing are the same for every address."""

    __tablename__ = "registration_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    webinar_id: Mapped[int] = mapped_column(sa.ForeignKey("webinars.id"))
    email: Mapped[str] = mapped_column(sa.String(320))
    name: Mapped[str] = mapped_column(sa.String(100), default="")
    timezone: Mapped[Optional[str]] = mapped_column(sa.String(64))
    newsletter: Mapped[bool] = mapped_column(default=False)
    newsletter_version: Mapped[Optional[int]]
    source_url: Mapped[Optional[str]] = mapped_column(sa.Text)
    ip: Mapped[Optional[str]] = mapped_column(sa.String(64))
    user_agent: Mapped[Optional[str]] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime]


class SequenceTrigger(enum.StrEnum):
    CONFIRMED = "confirmed"  # confirmed a subscription to trigger_list_id (a welcome series); never an import
    IMPORTED = "imported"  # added to trigger_list_id by a CSV import (only when staff choose this trigger)
    REGISTERED = "registered"  # took a seat at trigger_webinar_id, or at any webinar when it is NULL
    ATTENDED = "attended"  # marked attended at that webinar (or any)
    MISSED = "missed"  # had a seat, not marked attended, some time after the webinar's end
    MANUAL = "manual"  # enrolled by staff only


class SequenceStatus(enum.StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"  # nothing queued; its queued mail held until it resumes
    ARCHIVED = "archived"  # nothing more, ever


class StepCondition(enum.StrEnum):
    ON_LIST = "on_list"  # only while still subscribed to the list condition_ref_id
    ATTENDED = "attended"  # only if marked attended at the webinar condition_ref_id
    IN_SEGMENT = "in_segment"  # only if in the segment condition_ref_id when the step is due


class EnrolmentStatus(enum.StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"  # past its last step; a step added at the end still reaches it
    EXITED = "exited"  # unsubscribed from the sequence's list, or suppressed


class Sequence(Base):
    """An automation: who it starts for (the trigger), the list its mail is sent as, and
    ordered steps that a worker job queues, each at its due time."""

    __tablename__ = "sequences"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    trigger: Mapped[str] = mapped_column(sa.String(20))
    trigger_list_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("mailing_lists.id"))
    trigger_webinar_id: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("webinars.id"))
    # Its mail is list mail for this list: List-Unsubscribe leaves the list, and it goes
    # only to people subscribed to it.
    list_id: Mapped[int] = mapped_column(sa.ForeignKey("mailing_lists.id"))
    status: Mapped[str] = mapped_column(sa.String(20), default=SequenceStatus.DRAFT)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # First activation: triggers from before it (older confirmations, registrations) enrol nobody.
    activated_at: Mapped[Optional[dt.datetime]]
    # The worker's last look at the triggers; the next looks from a little before it.
    triggers_checked_at: Mapped[Optional[dt.datetime]]

    steps: Mapped[list["SequenceStep"]] = relationship(order_by="SequenceStep.position", back_populates="sequence")


class SequenceStep(Base):
    """One email of a sequence, sent `delay_minutes` after the previous step was queued
    (after enrolment for the first), inside the send window in the reader's zone if it
    has one. Deleted steps stay (deleted_at) so what was sent keeps its step."""

    __tablename__ = "sequence_steps"
    __table_args__ = (sa.UniqueConstraint("sequence_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sequence_id: Mapped[int] = mapped_column(sa.ForeignKey("sequences.id"))
    # Sort key, increasing; never reused within a sequence (a new step goes after every
    # step ever made, deleted ones included).
    position: Mapped[int]
    subject: Mapped[str] = mapped_column(sa.String(300))
    preheader: Mapped[str] = mapped_column(sa.String(300), default="")
    body_md: Mapped[str] = mapped_column(sa.Text, default="")
    layout: Mapped[str] = mapped_column(sa.String(100), default="default")
    delay_minutes: Mapped[int] = mapped_column(default=0)
    # Send window in the reader's zone: weekdays "mon,tue,…" ("" for every day) and local
    # minutes after midnight [window_start, window_end); no window when window_start is NULL.
    window_days: Mapped[str] = mapped_column(sa.String(30), default="")
    window_start: Mapped[Optional[int]]
    window_end: Mapped[Optional[int]]
    condition: Mapped[Optional[str]] = mapped_column(sa.String(20))
    condition_ref_id: Mapped[Optional[int]]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[Optional[dt.datetime]]

    sequence: Mapped[Sequence] = relationship(back_populates="steps")


class Enrolment(Base):
    """One person in one sequence (at most once: re-enrolment replaces the row, with a
    new id, so its mail has new dedupe keys). `last_position` is the position of the last
    step queued or skipped (0: none yet); `last_at` when that happened (or enrolment)."""

    __tablename__ = "enrolments"
    __table_args__ = (
        sa.UniqueConstraint("sequence_id", "contact_id"),
        # The materialiser reads one sequence's enrolments between two positions, due by last_at.
        sa.Index("ix_enrolments_due", "sequence_id", "last_position", "last_at"),
        sa.Index("ix_enrolments_contact", "contact_id"),
        # SQLite would reuse the id of a deleted last row; an id is part of dedupe keys.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sequence_id: Mapped[int] = mapped_column(sa.ForeignKey("sequences.id"))
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id"))
    enrolled_at: Mapped[dt.datetime]
    last_position: Mapped[int] = mapped_column(default=0)
    last_at: Mapped[dt.datetime]
    status: Mapped[str] = mapped_column(sa.String(20), default=EnrolmentStatus.ACTIVE)
    exited_reason: Mapped[Optional[str]] = mapped_column(sa.String(30))


class SequenceSkip(Base):
    """A step not sent to one enrolment because its condition failed (counted per step).
    No foreign key to the enrolment: the count outlives an erased person's enrolment."""

    __tablename__ = "sequence_skips"
    __table_args__ = (sa.UniqueConstraint("enrolment_id", "step_id"),
                      sa.Index("ix_sequence_skips_step", "step_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    enrolment_id: Mapped[int]
    step_id: Mapped[int] = mapped_column(sa.ForeignKey("sequence_steps.id"))
    reason: Mapped[str] = mapped_column(sa.String(50))
    created_at: Mapped[dt.datetime]


class FieldType(enum.StrEnum):
    TEXT = "text"
    NUMBER = "number"
    DATE = "date"  # ISO YYYY-MM-DD, which sorts as it compares
    YES_NO = "yes_no"  # stored "yes" or "no"
    CHOICE = "choice"  # one of the field's choices


class Field(Base):
    """A custom contact field staff define (mailer.audience.fields): templates read it as
    {{ contact.fields.<key> }}; an archived one is no longer offered, its values stay."""

    __tablename__ = "contact_fields"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(40), unique=True)
    label: Mapped[str] = mapped_column(sa.String(100))
    type: Mapped[str] = mapped_column(sa.String(10))
    # JSON list of the allowed values of a choice field; "[]" for the other types.
    choices: Mapped[str] = mapped_column(sa.Text, default="[]")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    archived_at: Mapped[Optional[dt.datetime]]


class ContactFieldValue(Base):
    """One contact's value of one field, in its canonical text (a number as written
    without exponent, a date as YYYY-MM-DD, yes/no); `number` repeats a number field's
    value as a number so segment rules compare it as one."""

    __tablename__ = "contact_field_values"
    __table_args__ = (
        # Segment rules and exports look values up by field (and value).
        sa.Index("ix_contact_field_values_field_value", "field_id", "value"),
        sa.Index("ix_contact_field_values_field_number", "field_id", "number"),
    )

    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id"), primary_key=True)
    field_id: Mapped[int] = mapped_column(sa.ForeignKey("contact_fields.id"), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(500))
    number: Mapped[Optional[float]] = mapped_column(sa.Float)


class BlogFeed(Base):
    """The blog feed's state (one row): the address last read, when, and the last error."""

    __tablename__ = "blog_feed"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(sa.String(2000), default="")
    checked_at: Mapped[Optional[dt.datetime]]
    error: Mapped[Optional[str]] = mapped_column(sa.String(500))


class BlogPost(Base):
    """A post read from the clinic's blog feed (campaigns.blog): the cache newsletters
    read at send time, so no mail waits on the blog's server."""

    __tablename__ = "blog_posts"
    __table_args__ = (sa.Index("ix_blog_posts_published_at", "published_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # sha256 of the post's id (its guid, else its link) in the feed: the same post is stored once.
    post_key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    title: Mapped[str] = mapped_column(sa.String(300))
    link: Mapped[str] = mapped_column(sa.String(2000))
    summary: Mapped[str] = mapped_column(sa.Text, default="")
    image_url: Mapped[Optional[str]] = mapped_column(sa.String(2000))
    published_at: Mapped[dt.datetime]
    fetched_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class MediaImage(Base):
    """An image in the media library (mailer.campaigns.media): re-encoded on upload (no
    metadata, nothing but pixels), kept in the database so every host serves it, at
    /media/<key>.<ext>. `key` is random so the library cannot be walked by counting."""

    __tablename__ = "media_images"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(32), unique=True)
    # Of the stored bytes: identical uploads are kept once.
    sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)
    mime: Mapped[str] = mapped_column(sa.String(20))
    width: Mapped[int]
    height: Mapped[int]
    size: Mapped[int]
    data: Mapped[bytes] = mapped_column(sa.LargeBinary, deferred=True)
    alt: Mapped[str] = mapped_column(sa.String(300), default="")
    # The name the file had, shown to staff and used in Content-Disposition (made safe).
    filename: Mapped[str] = mapped_column(sa.String(200), default="")
    uploaded_by: Mapped[Optional[int]] = mapped_column(sa.ForeignKey("users.id"))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
