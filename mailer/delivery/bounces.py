"""Bounce and complaint notifications: parse a webhook body (a generic JSON shape, or
Amazon SES notifications delivered by SNS) and apply it: suppress bounced addresses,
suppress and unsubscribe complainers. And bounces from any relay: VERP return paths that
name the delivery, and delivery status notifications read from a mailbox
(bounce_mailbox.py), matched to their delivery."""
from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import enum
import hashlib
import hmac
import json
import logging
import re
from email.utils import getaddresses, parseaddr

import ada_url
import flufl.bounce
from sqlalchemy.orm import Session

from mailer.db import dialect_insert
from mailer.delivery import registry, suppression
from mailer.errors import InvalidInput
from mailer.logtext import loggable
from mailer.models import Bounce, Delivery, ErrorClass, SuppressionReason
from mailer.settings import Settings
from mailer.delivery.transports import classify_smtp_reply

log = logging.getLogger(__name__)

DETAIL_MAX = 500
SUBSCRIBE_URL_MAX = 2000
# SubscribeURLs that may be shown to the operator: Amazon SNS's own hosts only, so a
# forged confirmation cannot send them to another site.
_SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
# Suppressions and consent notes hold no addresses (they survive erasure); MTA
# diagnostics often quote the recipient, so addresses in free text are masked.
# An SMTP reply inside an SES diagnosticCode ("smtp; 550 5.7.1 Message refused").
_SMTP_REPLY = re.compile(r"\b([45]\d\d)[ -](.*)", re.DOTALL)
_ADDRESS_IN_TEXT = re.compile(r"<?[^\s<>@\"'(),;:\[\]]+@[^\s<>@\"'(),;:\[\]]+>?")


# Notifications: what a webhook body says ------------------------------------------

class Action(enum.StrEnum):
    HARD_BOUNCE = "hard_bounce"  # suppress
    COMPLAINT = "complaint"  # suppress and unsubscribe from every list
    IGNORE = "ignore"  # acknowledged, recorded nowhere (transient bounces, other events)


@dataclasses.dataclass(frozen=True)
class Notice:
    """One recipient in a notification: what to do about which address (as received)."""

    action: Action
    address: str | None = None
    detail: str = ""
    source: str = "webhook"


@dataclasses.dataclass(frozen=True)
class SnsControl:
    """An SNS subscription message, not a notification: the operator has something to do."""

    type: str
    topic_arn: str
    subscribe_url: str | None = None


@dataclasses.dataclass(frozen=True)
class Counts:
    suppressed: int = 0
    unsubscribed: int = 0
    ignored: int = 0


def clean_detail(text) -> str:
    """Free text from a notification, addresses masked, bounded in length."""
    if not isinstance(text, str):
        return ""
    return _ADDRESS_IN_TEXT.sub("<address>", " ".join(text.split()))[:DETAIL_MAX]


def parse_webhook_body(raw: bytes) -> list[Notice] | SnsControl:
    """A generic notification or a list of them, an SNS envelope, or (SNS raw message
    delivery) a bare SES notification. InvalidInput for anything malformed."""
    data = _load_json(raw)
    if isinstance(data, dict) and "Type" in data:
        return parse_sns_envelope(data)
    if isinstance(data, dict) and ("notificationType" in data or "eventType" in data):
        return parse_ses_notification(data)
    return parse_generic(data)


def _load_json(raw: bytes):
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InvalidInput("body", "The body is not valid JSON.") from None


def parse_generic(data) -> list[Notice]:
    """`{"type": "bounce"|"complaint", "email", "bounce_type": "permanent"|"transient", "detail"}`,
    or a list of them. Every item is checked before any is applied."""
    if isinstance(data, dict):
        return [_generic_item(data, "")]
    if isinstance(data, list):
        return [_generic_item(item, f"[{i}].") for i, item in enumerate(data)]
    raise InvalidInput("body", "Send a notification object or a list of them.")


def _generic_item(item, prefix: str) -> Notice:
    if not isinstance(item, dict):
        raise InvalidInput(prefix.rstrip(".") or "body", "Each notification must be a JSON object.")
    kind, email = item.get("type"), item.get("email")
    bounce_type, detail = item.get("bounce_type", "permanent"), item.get("detail", "")
    if kind not in ("bounce", "complaint"):
        raise InvalidInput(f"{prefix}type", 'type must be "bounce" or "complaint".')
    if not isinstance(email, str):
        raise InvalidInput(f"{prefix}email", "email must be a string.")
    if kind == "bounce" and bounce_type not in ("permanent", "transient"):
        raise InvalidInput(f"{prefix}bounce_type", 'bounce_type must be "permanent" or "transient".')
    if detail is not None and not isinstance(detail, str):
        raise InvalidInput(f"{prefix}detail", "detail must be a string.")
    if kind == "complaint":
        action = Action.COMPLAINT
    else:
        action = Action.HARD_BOUNCE if bounce_type == "permanent" else Action.IGNORE
    return Notice(action, email, clean_detail(detail), source="webhook")


def parse_sns_envelope(envelope: dict) -> list[Notice] | SnsControl:
    """Amazon SNS's HTTP(S) delivery: a Notification wraps the SES notification as a JSON
    string in "Message"; subscription messages ask the operator to act."""
    kind, topic = envelope.get("Type"), str(envelope.get("TopicArn") or "")
    if kind == "SubscriptionConfirmation":
        try:
            subscribe_url = _sns_subscribe_url(envelope.get("SubscribeURL"))
        except InvalidInput:
            log.warning("SNS subscription confirmation refused: its SubscribeURL is not an Amazon SNS address")
            raise
        return SnsControl(kind, topic, subscribe_url)
    if kind == "UnsubscribeConfirmation":
        return SnsControl(kind, topic)
    if kind != "Notification":
        raise InvalidInput("Type", "Unknown SNS message type.")
    message = envelope.get("Message")
    if not isinstance(message, str):
        raise InvalidInput("Message", "An SNS notification needs a Message string.")
    try:
        inner = json.loads(message)
    except (ValueError, RecursionError):
        inner = None
    if not isinstance(inner, dict):
        # Someone published something else to the topic: acknowledge it, or SNS retries it.
        log.warning("SNS notification on %s is not an SES notification; ignored", loggable(topic))
        return [Notice(Action.IGNORE, source="Amazon SES")]
    return parse_ses_notification(inner)


def _sns_subscribe_url(url) -> str:
    """The SubscribeURL as a browser reads it (WHATWG URL parsing, the ada library):
    https, no user:password@, no port, on an Amazon SNS host. Anything a browser and a
    person reading the log could see differently is refused before parsing: backslashes
    (a browser reads them as slashes), control characters and spaces."""
    refused = InvalidInput("SubscribeURL", "SubscribeURL is not an Amazon SNS address.")
    if (not isinstance(url, str) or len(url) > SUBSCRIBE_URL_MAX or "\\" in url or not url.isprintable()
            or any(char.isspace() for char in url)):
        raise refused
    try:
        parsed = ada_url.URL(url)
    except ValueError:
        raise refused from None
    if (parsed.protocol != "https:" or parsed.username or parsed.password or parsed.port
            or not _SNS_HOST.match(parsed.hostname)):
        raise refused
    return parsed.href


def parse_ses_notification(message: dict) -> list[Notice]:
    """One SES notification (bounce, complaint, or another event to ignore) → one notice per recipient.
    Event publishing (configuration sets) names the type "eventType" instead of "notificationType"."""
    kind = message.get("notificationType") or message.get("eventType")
    if kind == "Bounce":
        bounce = _object(message, "bounce")
        bounce_type = bounce.get("bounceType")
        summary = f"SES {bounce_type} bounce ({bounce.get('bounceSubType')})"
        return [Notice(_ses_bounce_action(bounce_type, bounce.get("bounceSubType"), r), _ses_address(r),
                       clean_detail(_bounce_detail(summary, r)), source="Amazon SES")
                for r in _recipients(bounce, "bounce", "bouncedRecipients")]
    if kind == "Complaint":
        complaint = _object(message, "complaint")
        detail = clean_detail(f"SES complaint, feedback type: {complaint.get('complaintFeedbackType') or 'none'}")
        return [Notice(Action.COMPLAINT, _ses_address(r), detail, source="Amazon SES")
                for r in _recipients(complaint, "complaint", "complainedRecipients")]
    return [Notice(Action.IGNORE, source="Amazon SES")]


def _ses_bounce_action(bounce_type, subtype, recipient) -> Action:
    """Only a permanent bounce about the mailbox itself stops mailing the address. SES
    says "Undetermined" when it could not tell, and a transient bounce may go through
    next time. A permanent bounce that is a policy or content refusal (SES subtype
    ContentRejected, a 5.7.x status, or a diagnostic the SMTP classifier calls policy:
    spam, blocked, DMARC) is about this message or our sending, not the person, as at
    RCPT (transports.classify_smtp_reply): acknowledged, nobody suppressed."""
    if bounce_type != "Permanent" or subtype == "ContentRejected":
        return Action.IGNORE
    details = recipient if isinstance(recipient, dict) else {}
    status = details.get("status") if isinstance(details.get("status"), str) else ""
    if status.strip().startswith("5.7."):
        return Action.IGNORE
    diagnostic = details.get("diagnosticCode") if isinstance(details.get("diagnosticCode"), str) else ""
    reply = _SMTP_REPLY.search(diagnostic)
    if reply and classify_smtp_reply(int(reply.group(1)), reply.group(2)).error_class == ErrorClass.POLICY:
        return Action.IGNORE
    return Action.HARD_BOUNCE


def _object(message: dict, key: str) -> dict:
    value = message.get(key)
    if not isinstance(value, dict):
        raise InvalidInput(key, f"An SES notification of this type needs a {key} object.")
    return value


def _recipients(part: dict, key: str, field: str) -> list:
    recipients = part.get(field)
    if not isinstance(recipients, list):
        raise InvalidInput(f"{key}.{field}", f"{field} must be a list.")
    return recipients


def _ses_address(recipient) -> str | None:
    address = recipient.get("emailAddress") if isinstance(recipient, dict) else None
    if not isinstance(address, str):
        return None
    return parseaddr(address)[1] or address  # tolerate "Name <address>"


def _bounce_detail(summary: str, recipient) -> str:
    code = recipient.get("diagnosticCode") if isinstance(recipient, dict) else None
    return f"{summary}: {code}" if isinstance(code, str) and code else summary


# Applying notifications ------------------------------------------------------------

def apply_notices(session: Session, settings: Settings, notices: list[Notice], *, now: dt.datetime) -> Counts:
    """Suppress hard-bounced and complaining addresses (cancelling their queued mail) and
    unsubscribe complainers from every list. An address that is not valid is ignored.
    `suppressed` counts every address now on the suppression list, so a retried
    notification answers the same; `unsubscribed` counts list subscriptions withdrawn."""
    suppressed = unsubscribed = ignored = 0
    for notice in notices:
        address = _valid_address(notice.address) if notice.action != Action.IGNORE else None
        if address is None:
            ignored += 1
            continue
        reason = SuppressionReason.COMPLAINT if notice.action == Action.COMPLAINT else SuppressionReason.HARD_BOUNCE
        suppression.suppress_address(session, settings, address, reason=reason, detail=notice.detail, now=now)
        suppressed += 1
        if notice.action == Action.COMPLAINT:
            note = f"spam complaint ({notice.source}): {notice.detail}"[:DETAIL_MAX]
            unsubscribed += registry.audience().unsubscribe_everywhere(
                session, address, source_url="bounce webhook", note=note, now=now)
    return Counts(suppressed, unsubscribed, ignored)


def _valid_address(raw: str | None) -> str | None:
    try:
        return registry.audience().normalise_email(raw)
    except InvalidInput:
        return None


# VERP: the return path names the delivery ------------------------------------------

VERP_SIGNATURE_HEX = 16  # 64 bits: a forged bounce cannot name a delivery it never saw
_VERP_LOCAL = re.compile(r"^(?P<base>.+)\+(?P<id>\d{1,18})-(?P<sig>[0-9a-f]{%d})$" % VERP_SIGNATURE_HEX)


def _verp_signature(settings: Settings, delivery_id: int) -> str:
    key = hashlib.sha256(f"mailer.verp:{settings.secret_key}".encode()).digest()
    return hmac.new(key, str(delivery_id).encode(), hashlib.sha256).hexdigest()[:VERP_SIGNATURE_HEX]


def return_path(settings: Settings, delivery_id: int) -> str:
    """The SMTP envelope sender (MAIL FROM) of a delivery: bounce+<id>-<signature>@domain of
    MAILER_BOUNCE_ADDRESS when set (VERP), else the From address."""
    if not settings.bounce_address:
        return settings.from_email
    local, _, domain = parseaddr(settings.bounce_address)[1].rpartition("@")
    return f"{local}+{delivery_id}-{_verp_signature(settings, delivery_id)}@{domain}"


def verp_delivery_id(settings: Settings, address: str) -> int | None:
    """The delivery a VERP address names, when its signature is ours (case-insensitive: some
    MTAs lower-case the local part); None otherwise."""
    local = parseaddr(address or "")[1].rpartition("@")[0].lower()
    match = _VERP_LOCAL.match(local)
    if match is None:
        return None
    delivery_id = int(match.group("id"))
    return delivery_id if hmac.compare_digest(match.group("sig"), _verp_signature(settings, delivery_id)) else None


# Delivery status notifications from a mailbox ---------------------------------------

class BounceKind(enum.StrEnum):
    HARD = "hard"  # the mailbox does not exist or is disabled: suppressed
    SOFT = "soft"  # delayed, mailbox full, try later: recorded
    POLICY = "policy"  # this message refused (spam, blocked, DMARC, too big): recorded, nobody suppressed


@dataclasses.dataclass(frozen=True)
class FailedRecipient:
    address: str
    kind: BounceKind
    status: str = ""
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class MailboxNotice:
    """What one message in the bounce mailbox says: which delivery (VERP, or the Message-ID of
    the returned message) and which recipients failed how. Empty `failures`: not a bounce."""

    key: str  # identifies the notification (its Message-ID, else its digest)
    delivery_id: int | None
    original_message_id: str | None
    failures: tuple[FailedRecipient, ...]


# Where MTAs put the address a bounce was sent to (the VERP return path).
_ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "X-Rcpt-To", "To")
_MESSAGE_ID = re.compile(r"^<[0-9a-f]{32}\.(\d{1,18})@[^<>\s]+>$")
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def read_notice(settings: Settings, raw: bytes) -> MailboxNotice:
    """Parse one message from the bounce mailbox (pure). RFC 3464 delivery status
    notifications are read field by field; other formats (Exim, qmail, Yahoo, Exchange...)
    by flufl.bounce's detectors, their diagnostic text classified like an SMTP reply."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    key = hashlib.sha256((str(message.get("Message-ID") or "").strip().encode() or raw)).hexdigest()
    delivery_id = None
    for header in _ENVELOPE_HEADERS:
        for _name, address in getaddresses([str(v) for v in message.get_all(header, [])]):
            delivery_id = delivery_id or verp_delivery_id(settings, address)
    original = _returned_message_id(message)
    failures = _dsn_failures(message)
    if failures is None:
        failures = _heuristic_failures(message)
    return MailboxNotice(key, delivery_id, original, tuple(failures))


def _parts(message):
    return message.walk() if message.is_multipart() else [message]


def _dsn_failures(message) -> list[FailedRecipient] | None:
    """The per-recipient fields of a message/delivery-status part (RFC 3464 §2.3); None
    when the message has none."""
    for part in _parts(message):
        if part.get_content_type() != "message/delivery-status":
            continue
        blocks = part.get_payload()
        if isinstance(blocks, str):  # some MTAs send it as text: parse the field blocks ourselves
            blocks = [email.message_from_string(block.strip() + "\n") for block in re.split(r"\n\s*\n", blocks)
                      if block.strip()]
        failures = []
        for fields in blocks[1:] if len(blocks) > 1 else blocks:
            action = str(fields.get("Action", "")).strip().lower()
            recipient = str(fields.get("Final-Recipient") or fields.get("Original-Recipient") or "")
            address = recipient.split(";", 1)[-1].strip()
            status = str(fields.get("Status", "")).strip()
            diagnostic = " ".join(str(fields.get("Diagnostic-Code", "")).split(";", 1)[-1].split())
            said = diagnostic if status and status in diagnostic else f"{status} {diagnostic}".strip()
            if action == "failed":
                failures.append(FailedRecipient(address, classify(status, diagnostic), status[:20], clean_detail(said)))
            elif action == "delayed":
                failures.append(FailedRecipient(address, BounceKind.SOFT, status[:20],
                                                clean_detail(f"delayed: {said}")))
        return failures
    return None


def _heuristic_failures(message) -> list[FailedRecipient]:
    temporary, permanent = flufl.bounce.all_failures(message)
    if not permanent and not temporary:
        return []
    text = _plain_text(message)
    reply = _SMTP_REPLY_IN_TEXT.search(text)
    diagnostic = " ".join(reply.group(0).split())[:DETAIL_MAX] if reply else ""
    status = _STATUS.search(diagnostic)
    kind = classify(status.group(0) if status else "", diagnostic) if diagnostic else BounceKind.HARD
    failures = [FailedRecipient(_text(a), kind, status.group(0) if status else "", clean_detail(diagnostic))
                for a in sorted(permanent)]
    failures += [FailedRecipient(_text(a), BounceKind.SOFT, "", clean_detail(diagnostic)) for a in sorted(temporary)]
    return failures


_SMTP_REPLY_IN_TEXT = re.compile(r"\b[45]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}\b)?[^\n]*(?:\n[45]\d\d[ -][^\n]*)*")


def classify(status: str, diagnostic: str) -> BounceKind:
    """A failed recipient's status code and diagnostic, judged as the sender judges an SMTP
    refusal at RCPT (transports.classify_smtp_reply): only a reply about the mailbox itself
    is a hard bounce."""
    if status.startswith("4."):
        return BounceKind.SOFT
    reply = _SMTP_REPLY.search(diagnostic)
    code = int(reply.group(1)) if reply else 550
    text = reply.group(2) if reply else diagnostic
    if status and not _ENHANCED_START.match(text):
        text = f"{status} {text}"
    judged = classify_smtp_reply(code, text)
    if judged.temporary:
        return BounceKind.SOFT
    return BounceKind.HARD if judged.error_class == ErrorClass.PERMANENT else BounceKind.POLICY


_ENHANCED_START = re.compile(r"^\s*[245]\.\d{1,3}\.\d{1,3}\b")


def _returned_message_id(message) -> str | None:
    """The Message-ID of the returned message (a message/rfc822 or text/rfc822-headers part)."""
    for part in _parts(message):
        kind = part.get_content_type()
        if kind == "message/rfc822" and part.is_multipart():
            inner = part.get_payload(0)
            value = inner.get("Message-ID")
        elif kind in ("text/rfc822-headers", "message/rfc822-headers") or kind == "message/rfc822":
            headers = email.message_from_string(_text(part.get_payload(decode=True) or b""))
            value = headers.get("Message-ID")
        else:
            continue
        if value:
            return " ".join(str(value).split())
    match = re.search(r"^Message-ID:\s*(<[^>\s]+>)", _plain_text(message), re.IGNORECASE | re.MULTILINE)
    return match.group(1) if match else None


def _plain_text(message) -> str:
    texts = []
    for part in _parts(message):
        if part.get_content_type() == "text/plain":
            texts.append(_text(part.get_payload(decode=True) or b""))
    return "\n".join(texts)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass
class MailboxCounts:
    read: int = 0
    hard: int = 0
    soft: int = 0
    policy: int = 0
    unmatched: int = 0  # a bounce naming no delivery of ours: nothing done
    not_bounces: int = 0  # auto-replies and other mail


def apply_notice(session: Session, settings: Settings, notice: MailboxNotice, counts: MailboxCounts, *,
                 now: dt.datetime) -> None:
    """Match a notification to its delivery (the signed VERP address, else the Message-ID of the
    returned message, whose random part only we know), then suppress a hard bounce's address
    and record every failure once. A bounce that names no delivery changes nothing: anyone
    can write to the bounce address."""
    counts.read += 1
    if not notice.failures:
        counts.not_bounces += 1
        return
    delivery = _matched_delivery(session, notice)
    if delivery is None:
        counts.unmatched += 1
        log.info("a bounce in the mailbox names no delivery of ours; left alone")
        return
    address = delivery.contact.email if delivery.contact is not None else delivery.to_email
    for failure in _failures_for(notice.failures, address):
        digest = hashlib.sha256(f"{notice.key}:{failure.address.lower()}".encode()).hexdigest()
        added = session.execute(
            dialect_insert(session, Bounce).values(delivery_id=delivery.id, kind=failure.kind, status=failure.status,
                                                   detail=failure.detail, notice_key=digest, received_at=now)
            .on_conflict_do_nothing(index_elements=["notice_key"]).returning(Bounce.id)).first()
        setattr(counts, failure.kind.value, getattr(counts, failure.kind.value) + 1)
        if failure.kind == BounceKind.HARD and address and added is not None:
            suppression.suppress_address(session, settings, address, reason=SuppressionReason.HARD_BOUNCE,
                                         detail=f"bounce ({failure.status or 'no status'}): {failure.detail}",
                                         now=now)


def _matched_delivery(session: Session, notice: MailboxNotice) -> Delivery | None:
    if notice.delivery_id is not None:
        delivery = session.get(Delivery, notice.delivery_id)
        if delivery is not None:
            return delivery
    match = _MESSAGE_ID.match(notice.original_message_id or "")
    if match:
        delivery = session.get(Delivery, int(match.group(1)))
        if delivery is not None and delivery.message_id == notice.original_message_id:
            return delivery
    return None


def _failures_for(failures: tuple[FailedRecipient, ...], address: str | None) -> list[FailedRecipient]:
    """A delivery has one recipient: the failure naming its address, else (a forwarding address
    bounced, or the MTA rewrote it) the notification's only failure."""
    if address:
        same = [f for f in failures if f.address.lower() == address.lower()]
        if same:
            return same[:1]
    return list(failures[:1]) if len(failures) == 1 else []
