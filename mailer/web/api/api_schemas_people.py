"""API models for people and their mail: mailing lists, subscriptions, consent events,
contacts, webinar registrations made through the API, and deliveries (the outbox)."""
from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel, StrictBool, StringConstraints

from mailer.web.api.api_schemas import MAX_ID, ListQuery, Request, Response, Text, UtcDatetime, Zone, omittable
from mailer.models import ConsentAction, DeliveryStatus, SubscriptionStatus

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
ListSlug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}[a-z0-9]$"),
                     Field(description="A list's slug: 2–64 lower-case letters, digits and dashes.",
                           examples=["newsletter"])]
Email = Annotated[Text(1, 320, "An email address."), Field(examples=["ann@example.com"])]
PersonName = Annotated[Text(0, 100, "The person's name, as they gave it."), Field(examples=["Ann Smith"])]
SourceUrl = Annotated[Text(0, 2000, "The page where the person filled in the form: kept as consent evidence."),
                      Field(examples=["https://clinic.example/blog/back-pain"])]
ListName = Annotated[Text(1, 200), Field(description="Shown to subscribers.", examples=["Practice news"])]
ListDescription = Annotated[Text(0, 2000), Field(description="Shown on the preferences page.")]
ConsentWording = Annotated[Text(1, 5000), Field(
    description="What a person agrees to when they join: shown on the form and kept with every consent event "
                "as version 1.",
    examples=["Yes, send me the monthly practice newsletter. I can unsubscribe at any time."])]
NEXT_CURSOR = "Pass as ?cursor= for the next page; null on the last page."


def _must_be_true(value: bool) -> bool:
    if value is not True:
        raise ValueError("The person must have agreed (consent: true); without it nothing is sent.")
    return value


# Mailing lists ------------------------------------------------------------------------

class ListCreate(Request):
    slug: ListSlug
    name: ListName
    description: ListDescription = ""
    consent_wording: ConsentWording
    public: Annotated[StrictBool, Field(description="Offered on public forms and the preferences page.")] = True


ListPublic = Annotated[StrictBool, Field(description="Offered on public forms and the preferences page.")]


class ListPatch(Request):
    """Fields left out keep their values. The slug never changes: forms, links and the
    consent ledger name the list by it."""

    name: ListName = omittable()
    description: ListDescription = omittable()
    public: ListPublic = omittable()


class ListArchive(Request):
    """No fields; the body may be left out."""


WordingText = Annotated[Text(1, 5000), Field(
    description="The new wording: shown to everyone who joins from now on. Earlier versions stay as they were.",
    examples=["Yes, send me the monthly practice newsletter and news of free webinars. I can unsubscribe at any "
              "time."])]


class WordingCreate(Request):
    text: WordingText
    replaces_version: Annotated[int, Field(ge=1, le=MAX_ID, description=(
        "The version this text was edited from: if another version was added meanwhile, the answer is 409 "
        "instead of replacing it unseen."))] = omittable()


class ConsentWordingVersion(Response):
    version: int
    text: str = Field(description="Exactly what people were shown; a version's text never changes.")
    created_at: UtcDatetime
    consent_events: int = Field(description="Consent events recorded with this version.")
    current: bool = Field(description="The version new signups are shown.")

    @classmethod
    def of(cls, version, *, current: bool) -> "ConsentWordingVersion":
        w = version.wording
        return cls(version=w.version, text=w.text, created_at=w.created_at, consent_events=version.events,
                   current=current)


class ConsentWordingList(Response):
    items: list[ConsentWordingVersion] = Field(description="Newest first.")


class SubscriberCounts(Response):
    pending: int
    active: int
    unsubscribed: int


class MailingList(Response):
    id: int
    slug: str
    name: str
    description: str
    public: bool
    consent_wording: str | None = Field(description="The current wording people agree to.")
    consent_version: int | None = Field(description="Its version; consent events refer to it.")
    subscribers: SubscriberCounts
    created_at: UtcDatetime
    archived_at: UtcDatetime | None = Field(description="Set once archived: the list takes no new signups "
                                                        "(form, API, imports); its subscribers stay.")

    @classmethod
    def of(cls, summary) -> "MailingList":
        ml, wording = summary.mailing_list, summary.wording
        return cls(id=ml.id, slug=ml.slug, name=ml.name, description=ml.description, public=ml.public,
                   consent_wording=wording.text if wording else None,
                   consent_version=wording.version if wording else None,
                   subscribers=SubscriberCounts(**{str(k): v for k, v in summary.counts.items()}),
                   created_at=ml.created_at, archived_at=ml.archived_at)


class MailingListList(Response):
    items: list[MailingList]


# Subscriptions ------------------------------------------------------------------------

class SubscriptionQuery(ListQuery):
    contact_id: Id = omittable()
    list: ListSlug = omittable()
    status: SubscriptionStatus = omittable()


class SubscriptionCreate(Request):
    """A signup made on the organisation's own site, sent on by its server."""

    email: Email
    name: PersonName = ""
    list: ListSlug
    consent: Annotated[StrictBool, AfterValidator(_must_be_true),
                       Field(description="Must be true: the person ticked the box with the list's current "
                                         "consent wording.", json_schema_extra={"const": True})]
    source_url: SourceUrl = ""
    timezone: Zone | None = Field(default=None, description="The person's IANA time zone, for their mails.")


class Accepted(Response):
    status: str = Field(examples=["pending_confirmation"])
    message: str


class Subscription(Response):
    id: int
    contact_id: int
    email: str | None = Field(description="Null once the contact has been erased.")
    list: str = Field(description="The list's slug.")
    status: SubscriptionStatus
    pending_since: UtcDatetime | None = Field(description="Start of the current double opt-in.")
    confirmed_at: UtcDatetime | None
    unsubscribed_at: UtcDatetime | None
    created_at: UtcDatetime

    @classmethod
    def of(cls, sub, email: str | None, slug: str) -> "Subscription":
        return cls(id=sub.id, contact_id=sub.contact_id, email=email, list=slug, status=sub.status,
                   pending_since=sub.pending_since, confirmed_at=sub.confirmed_at,
                   unsubscribed_at=sub.unsubscribed_at, created_at=sub.created_at)


class SubscriptionPage(Response):
    items: list[Subscription]
    next_cursor: str | None = Field(description=NEXT_CURSOR)


# Consent events -----------------------------------------------------------------------

class ConsentEventQuery(ListQuery):
    contact_id: Id = omittable()
    list: ListSlug = omittable()
    action: ConsentAction = omittable()


class ConsentEvent(Response):
    id: int
    contact_id: int | None = Field(description="Null for the ledger's own events (re-anchoring).")
    list: str | None = Field(description="The list's slug; null for a purpose that is not a list.")
    purpose: str = Field(examples=["list:newsletter"])
    action: ConsentAction
    wording_version: int | None = Field(description="The version of the list's wording the person was shown.")
    created_at: UtcDatetime
    source_url: str | None = Field(description="Personal: only for an owner's token; null once redacted.")
    ip: str | None = Field(description="Personal: only for an owner's token; null once redacted.")
    user_agent: str | None = Field(description="Personal: only for an owner's token; null once redacted.")
    note: str | None = Field(description="Personal: only for an owner's token; null once redacted.")
    redacted: bool = Field(description="The personal fields were erased (the chain still verifies).")
    hash: str
    prev_hash: str

    @classmethod
    def of(cls, event, slug: str | None, version: int | None, *, personal: bool) -> "ConsentEvent":
        shown = personal and event.redacted_at is None
        return cls(id=event.id, contact_id=event.contact_id, list=slug, purpose=event.purpose, action=event.action,
                   wording_version=version, created_at=event.created_at,
                   source_url=event.source_url if shown else None, ip=event.ip if shown else None,
                   user_agent=event.user_agent if shown else None, note=event.note if shown else None,
                   redacted=event.redacted_at is not None, hash=event.hash, prev_hash=event.prev_hash)


class ConsentEventPage(Response):
    items: list[ConsentEvent]
    next_cursor: str | None = Field(description=NEXT_CURSOR)


# Webinar registrations ----------------------------------------------------------------

class RegistrationCreate(Request):
    """A seat reserved on the organisation's own site, sent on by its server."""

    email: Email
    name: PersonName = ""
    timezone: Zone | None = Field(default=None, description="The registrant's IANA zone: mails show times in it.")
    newsletter: Annotated[StrictBool, Field(description="The person also ticked the newsletter box (its current "
                                                        "wording): double opt-in starts for it.")] = False
    source_url: SourceUrl = ""


# Deliveries ---------------------------------------------------------------------------

MailKind = Annotated[Text(1, 30), Field(examples=["newsletter"], description="The kind of mail.")]
ErrorText = Annotated[Text(1, 200), Field(description="Text contained in the last error, in any case.")]


class DeliveryQuery(ListQuery):
    status: DeliveryStatus = omittable()
    kind: MailKind = omittable()
    error: ErrorText = omittable()
    contact_id: Id = omittable()
    ref_id: Annotated[Id, Field(description="What it is about: the newsletter, subscription or registration.")] \
        = omittable()


class Delivery(Response):
    id: int
    contact_id: int | None = Field(description="Null for a test copy sent to an address that is not a contact.")
    email: str | None = Field(description="The recipient; null once the contact has been erased.")
    kind: str
    list_id: int | None
    ref_id: int | None
    variant: str | None = Field(description="A reminder's minutes before the start, a follow-up's audience.")
    status: DeliveryStatus
    attempts: int
    next_attempt_at: UtcDatetime = Field(description="When it is (or was) due.")
    sent_at: UtcDatetime | None
    error_class: str | None = Field(description="temporary, permanent (the address is suppressed), policy (a 5.7.x "
                                                "policy or content refusal), rejected, address, connection, "
                                                "rendering or expired.")
    last_error: str | None = Field(description="The server's reply or the reason it was not sent.")
    message_id: str | None = Field(description="The Message-ID header, fixed at the first attempt.")
    created_at: UtcDatetime

    @classmethod
    def of(cls, row, email: str | None) -> "Delivery":
        return cls(id=row.id, contact_id=row.contact_id, email=email, kind=row.kind, list_id=row.list_id,
                   ref_id=row.ref_id, variant=row.variant, status=row.status, attempts=row.attempts,
                   next_attempt_at=row.next_attempt_at, sent_at=row.sent_at, error_class=row.error_class,
                   last_error=row.last_error, message_id=row.message_id, created_at=row.created_at)


class DeliveryPage(Response):
    items: list[Delivery]
    next_cursor: str | None = Field(description=NEXT_CURSOR)


# Contacts -------------------------------------------------------------------------------

SearchText = Annotated[Text(1, 320), Field(
    description="A whole email address (matched exactly); three or more characters, found anywhere in the address "
                "or the name (any case); or one or two characters, the start of a name.",
    examples=["ann@example.com", "maria", "example.org"])]


class ContactQuery(ListQuery):
    q: SearchText = omittable()
    list: ListSlug = omittable()
    status: Annotated[SubscriptionStatus, Field(description="On `list`, or on any list.")] = omittable()


ConsentNote = Annotated[Text(0, 1000), Field(
    description="How and when the person gave their consent, in your words; kept with each list's consent event.",
    examples=["Signed the paper form at the desk on 3 March"])]


class ContactCreate(Request):
    """A person added by staff (the front desk). Joining a list needs either `consent_note` or
    `send_confirmation`."""

    email: Email
    name: PersonName = ""
    timezone: Zone | None = Field(default=None, description="The person's IANA time zone, for their mails.")
    lists: Annotated[list[ListSlug], Field(max_length=50, description="Slugs of the lists to join.")] = []
    consent_note: ConsentNote = ""
    send_confirmation: Annotated[StrictBool, Field(
        description="Instead of a consent note: send the confirmation mail of double opt-in; the person joins "
                    "the lists when they click its link.")] = False


class ContactUpdate(Request):
    """Fields left out stay as they are. The address cannot be changed."""

    name: PersonName = omittable()
    timezone: Annotated[Zone | Literal[""], Field(description="An IANA time zone, or \"\" for none.")] = omittable()


class ContactUnsubscribe(Request):
    """Exactly one of `list` and `all`."""

    list: ListSlug = omittable()
    all: Annotated[StrictBool, Field(description="true: from every list.")] = False
    note: Annotated[Text(0, 1000), Field(description="How the person asked, e.g. \"phoned the desk\".")] = ""


class Unsubscribed(Response):
    withdrawn: list[str] = Field(description="Slugs of the lists they were unsubscribed from now (empty: none "
                                             "was active or pending).")


class ContactInvite(Request):
    list: ListSlug


class Invited(Response):
    outcome: Literal["sent", "already_active", "too_soon", "capped"] = Field(
        description="sent: a confirmation mail is queued; already_active: nothing to do; too_soon: one went out "
                    "within the resend interval; capped: the daily limit of confirmation mails to the address "
                    "is reached.")


class ListStatus(Response):
    list: str = Field(description="The list's slug.")
    status: SubscriptionStatus


class ContactSummary(Response):
    id: int
    email: str
    name: str
    created_at: UtcDatetime
    subscriptions: list[ListStatus]

    @classmethod
    def of(cls, row) -> "ContactSummary":
        return cls(id=row.id, email=row.email, name=row.name, created_at=row.created_at,
                   subscriptions=[ListStatus(list=s.slug, status=s.status) for s in row.subscriptions])


class ContactPage(Response):
    items: list[ContactSummary]
    next_cursor: str | None = Field(description=NEXT_CURSOR)


class ContactSubscription(Response):
    id: int
    status: SubscriptionStatus
    confirmed_at: UtcDatetime | None
    unsubscribed_at: UtcDatetime | None
    created_at: UtcDatetime
    list: str = Field(description="The list's slug.")


class ContactRegistration(Response):
    id: int
    webinar_id: int
    webinar: str = Field(description="The webinar's slug.")
    status: str
    attended: bool | None
    created_at: UtcDatetime


class ContactDelivery(Response):
    id: int
    kind: str
    status: DeliveryStatus
    created_at: UtcDatetime
    sent_at: UtcDatetime | None


class ContactConsentEvent(Response):
    id: int
    purpose: str
    action: ConsentAction
    wording_version: int | None
    created_at: UtcDatetime


class ContactDetail(Response):
    """The consent history without its personal fields: /consent-events has those, for owners."""

    id: int
    email: str | None = Field(description="Null once erased.")
    name: str
    timezone: str | None
    created_at: UtcDatetime
    erased_at: UtcDatetime | None
    subscriptions: list[ContactSubscription]
    registrations: list[ContactRegistration]
    recent_deliveries: list[ContactDelivery] = Field(description="The latest 50; /deliveries?contact_id= has all.")
    consent_events: list[ContactConsentEvent] = Field(description="Oldest first.")

    @classmethod
    def of(cls, detail) -> "ContactDetail":
        c = detail.contact
        return cls(
            id=c.id, email=c.email, name=c.name, timezone=c.timezone, created_at=c.created_at, erased_at=c.erased_at,
            subscriptions=[ContactSubscription(id=s.id, list=ml.slug, status=s.status, confirmed_at=s.confirmed_at,
                                               unsubscribed_at=s.unsubscribed_at, created_at=s.created_at)
                           for s, ml in detail.subscriptions],
            registrations=[ContactRegistration(id=r.id, webinar_id=w.id, webinar=w.slug, status=r.status,
                                               attended=r.attended, created_at=r.created_at)
                           for r, w in detail.registrations],
            recent_deliveries=[ContactDelivery(id=d.id, kind=d.kind, status=d.status, created_at=d.created_at,
                                               sent_at=d.sent_at) for d in detail.deliveries],
            consent_events=[ContactConsentEvent(id=e.id, purpose=e.purpose, action=e.action,
                                                wording_version=e.wording.version if e.wording else None,
                                                created_at=e.created_at) for e in detail.consent_events])


# What privacy.export_contact_by_id returns (GDPR Art. 15), field for field.

class ExportedPerson(Response):
    id: int
    email: str | None
    name: str
    timezone: str | None
    created_at: UtcDatetime | None
    erased_at: UtcDatetime | None


class ExportedSubscription(Response):
    status: str
    created_at: UtcDatetime | None
    confirmed_at: UtcDatetime | None
    unsubscribed_at: UtcDatetime | None
    list: str


class ExportedDelivery(Response):
    kind: str
    status: str
    created_at: UtcDatetime | None
    sent_at: UtcDatetime | None


class ExportedRegistration(Response):
    webinar: str
    title: str
    status: str
    timezone: str | None
    created_at: UtcDatetime | None
    cancelled_at: UtcDatetime | None
    attended: bool | None


class ExportedEnrolment(Response):
    sequence: str = Field(description="The sequence's name.")
    enrolled_at: UtcDatetime | None
    status: str = Field(description="`active`, `completed` (past its last step) or `exited`.")
    last_position: int = Field(description="Position of the last step queued or skipped for them; 0: none yet.")
    last_at: UtcDatetime | None = Field(description="When that step was queued or skipped (or the enrolment).")
    exited_reason: str | None = Field(description="Why they left it (`unsubscribed`, `suppressed`, `erased`).")


class ExportedConsentEvent(Response):
    id: int
    at: UtcDatetime | None
    purpose: str
    action: str
    wording_version: int | None
    wording: str | None = Field(description="The exact text the person was shown.")
    source_url: str | None
    ip: str | None
    user_agent: str | None
    note: str | None
    hash: str


class ContactExport(Response):
    """Everything held about one person."""

    contact: ExportedPerson
    subscriptions: list[ExportedSubscription]
    deliveries: list[ExportedDelivery]
    registrations: list[ExportedRegistration]
    enrolments: list[ExportedEnrolment] = Field(description="Sequences (automations) they are in, or were in "
                                                            "until they left; erasure deletes these.")
    consent_events: list[ExportedConsentEvent]
    fields: dict[str, str] = Field(description="Custom field values by key; erasure deletes these.")


class ErasureResult(Response):
    contact_id: int
    already_erased: bool = Field(description="It had been erased before; nothing was done.")
    deliveries_cancelled: int
    subscriptions_ended: int
    registrations_cancelled: int = Field(description="Seats at webinars to come, given to the waitlist.")
    signup_requests_deleted: int
    dev_messages_deleted: int

    @classmethod
    def of(cls, report) -> "ErasureResult":
        return cls(**dataclasses.asdict(report))


class ExportQuery(BaseModel):
    """Query parameters of the bulk export: no pages, it streams every match."""

    model_config = ConfigDict(extra="forbid")
    format: Annotated[Literal["csv", "json"], Field(description="csv (spreadsheet-safe) or json.")] = "csv"
    list: ListSlug = omittable()
    status: Annotated[SubscriptionStatus, Field(description="On `list`, or on any list.")] = omittable()


class ExportedContactSubscription(Response):
    status: SubscriptionStatus
    list: str


class ExportedContact(Response):
    id: int
    email: str
    name: str
    timezone: str | None
    created_at: UtcDatetime
    subscriptions: list[ExportedContactSubscription]
    fields: dict[str, str] = Field(description="Custom field values by key (a CSV has a column per field).")


class ContactExportList(RootModel[list[ExportedContact]]):
    """Every contact matching the filters, oldest first."""
