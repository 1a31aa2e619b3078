"""Transports: SMTP (its connections are driven by smtp_client.Pipeline), the local dev mailbox, memory."""
from __future__ import annotations

import re
import smtplib
import ssl
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from mailer.db import session_scope
from mailer.models import DevMessage, ErrorClass


class TransportError(Exception):
    """A message was not accepted. `temporary` decides retry (True) or fail (False);
    `connection_lost` tells the sender to open a new connection before the next one."""

    def __init__(self, message: str, *, code: int | None = None, temporary: bool, connection_lost: bool = False,
                 error_class: str | None = None):
        super().__init__(message)
        self.code = code
        self.temporary = temporary
        self.connection_lost = connection_lost
        # What the delivery records; None: derived from code and temporary (sender._error_class).
        self.error_class = error_class


class Connection(Protocol):
    def send(self, mail_from: str, rcpt_to: str, data: bytes) -> None: ...

    def reopen(self) -> None: ...

    def close(self) -> None: ...


class Transport(Protocol):
    name: str

    def connection(self) -> Connection: ...  # opens lazily, at the first send

    def check(self) -> None: ...


_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
# Words of a policy or content refusal in replies without an enhanced code (RFC 5321
# §4.2.3 lets 550 mean "command rejected for policy reasons" as well as "no mailbox").
_POLICY_WORDS = re.compile(r"\b(spam|policy|blocked|block ?list(ed)?|black ?list(ed)?|deny ?list(ed)?|blacklisted|"
                           r"reputation|dmarc|dkim|spf|rbl|dnsbl|abuse|content rejected|virus|malware)\b",
                           re.IGNORECASE)


def classify_smtp_reply(code: int, text: str, *, stage: str = "rcpt") -> TransportError:
    """What a refusal means for the delivery and the address (pure; `stage` is where it
    came: "rcpt" for RCPT TO, "data" for the end of DATA).

    4xx: retry (temporary). 5xx: this delivery fails; the address is suppressed (class
    permanent) only when the reply says the mailbox itself is bad:
    - an enhanced status code (RFC 3463) decides when there is one: 5.1.x (bad mailbox,
      domain or address syntax; not 5.1.7 and 5.1.8, which are about our sender) and
      5.2.1 (mailbox disabled) suppress; 5.7.x (security or policy: spam, blocked,
      DMARC, not authorised) is class "policy"; 5.2.2 (mailbox full, which RFC 3463
      calls a persistent transient failure) is retried like a 4xx until the retry
      deadline, then fails without suppression; every other 5.x.y fails as "rejected".
    - without one, RFC 5321's codes: 550, 551 and 553 at RCPT name the mailbox and
      suppress, unless the text says it is a policy refusal (spam, policy, blocked,
      block list, reputation, DMARC/DKIM/SPF...: class "policy"); 552 (storage) is
      retried like 5.2.2; 554 and a 5xx at the end of DATA refuse the message, not the
      mailbox: class "rejected".
    Only class "permanent" suppresses (sender.Sender._record)."""
    message = f"{code} {text}".strip()
    if code < 500:
        return TransportError(message, code=code, temporary=True, connection_lost=code == 421)
    enhanced = _ENHANCED.match(text or "")
    if enhanced and enhanced.group(1) == "5":
        subject, detail = int(enhanced.group(2)), int(enhanced.group(3))
        if (subject == 1 and detail not in (7, 8)) or (subject, detail) == (2, 1):
            error_class = ErrorClass.PERMANENT
        elif (subject, detail) == (2, 2):
            return TransportError(message, code=code, temporary=True, error_class=ErrorClass.TEMPORARY)
        elif subject == 7:
            error_class = ErrorClass.POLICY
        else:
            error_class = ErrorClass.REJECTED
    elif _POLICY_WORDS.search(text or ""):
        error_class = ErrorClass.POLICY
    elif code == 552:
        return TransportError(message, code=code, temporary=True, error_class=ErrorClass.TEMPORARY)
    elif stage == "rcpt" and code in (550, 551, 553):
        error_class = ErrorClass.PERMANENT
    else:
        error_class = ErrorClass.REJECTED
    return TransportError(message, code=code, temporary=False, error_class=error_class)


def _reply_text(raw) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


class SMTPTransport:
    name = "smtp"

    def __init__(self, url: str, *, timeout: float = 30, local_hostname: str | None = None):
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
            raise ValueError("MAILER_SMTP_URL must look like smtp://user:pass@host:587?starttls=1 or smtps://host:465")
        self.ssl = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.ssl else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.starttls = parse_qs(parts.query).get("starttls", ["0"])[0] in {"1", "true", "yes"}
        self.timeout = timeout
        self.local_hostname = local_hostname

    def _open(self) -> smtplib.SMTP:
        try:
            if self.ssl:
                client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                          local_hostname=self.local_hostname, context=ssl.create_default_context())
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout, local_hostname=self.local_hostname)
                if self.starttls:
                    client.starttls(context=ssl.create_default_context())
            if self.username:
                client.login(self.username, self.password or "")
            return client
        except smtplib.SMTPAuthenticationError as exc:
            raise TransportError(f"SMTP login refused: {exc.smtp_code} {_reply_text(exc.smtp_error)}",
                                 code=exc.smtp_code, temporary=True, connection_lost=True) from None
        except smtplib.SMTPResponseException as exc:
            raise TransportError(f"SMTP server refused the session: {exc.smtp_code} {_reply_text(exc.smtp_error)}",
                                 code=exc.smtp_code, temporary=True, connection_lost=True) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransportError(f"cannot reach SMTP server {self.host}:{self.port}: {exc}",
                                 temporary=True, connection_lost=True) from None

    def check(self) -> None:
        client = self._open()
        try:
            client.noop()
        finally:
            client.quit()


class DevMailboxTransport:
    """Keeps messages in the database for /admin/mailbox instead of sending them."""

    name = "dev-mailbox"

    def __init__(self, session_factory):
        self.session_factory = session_factory

    def connection(self):
        return self

    def send(self, mail_from: str, rcpt_to: str, data: bytes) -> None:
        from email import message_from_bytes, policy

        subject = str(message_from_bytes(data, policy=policy.default)["Subject"] or "")
        with session_scope(self.session_factory) as session:
            session.add(DevMessage(mail_from=mail_from, rcpt_to=rcpt_to, subject=subject, raw=data))

    def reopen(self) -> None:
        return None

    def close(self) -> None:
        return None

    def check(self) -> None:
        return None


class MemoryTransport:
    """Collects messages in a list; for unit tests of rendering and rules only."""

    name = "memory"

    def __init__(self):
        self.messages: list[tuple[str, str, bytes]] = []

    def connection(self):
        return self

    def send(self, mail_from: str, rcpt_to: str, data: bytes) -> None:
        self.messages.append((mail_from, rcpt_to, data))

    def reopen(self) -> None:
        return None

    def close(self) -> None:
        return None

    def check(self) -> None:
        return None


def transport_from_settings(settings, session_factory) -> Transport:
    if settings.smtp_url:
        return SMTPTransport(settings.smtp_url, timeout=settings.smtp_timeout_seconds)
    return DevMailboxTransport(session_factory)
