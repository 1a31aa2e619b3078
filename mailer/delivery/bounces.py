"""Bounce and complaint notifications: parse a webhook body (a generic JSON shape, or
Amazon SES notifications delivered by SNS) and apply it: suppress bounced addresses,
suppress and unsubscribe complainers."""
from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import logging
import re
from email.utils import parseaddr

import ada_url
from sqlalchemy.orm import Session

from mailer.delivery import registry, suppression
from mailer.errors import InvalidInput
from mailer.logtext import loggable
from mailer.models import ErrorClass, SuppressionReason
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
