"""The bounce mailbox (MAILER_BOUNCE_MAILBOX_URL, IMAP or POP3): read the delivery status
notifications that came back to the VERP return path, apply each (bounces.apply_notice),
then delete or move what was read. Each message is applied in its own transaction before
it is removed, and applying one twice records it once, so a crash or two workers reading
at once lose and double nothing."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import imaplib
import logging
import poplib
import re
import ssl
from typing import Callable, Iterator
from urllib.parse import parse_qs, unquote, urlsplit

from mailer.db import session_scope
from mailer.delivery import bounces
from mailer.settings import Settings

log = logging.getLogger(__name__)

MAX_PER_RUN = 500  # messages read per run; the rest wait for the next one
TIMEOUT_SECONDS = 30


class MailboxError(Exception):
    """The mailbox cannot be reached or read (wrong URL, login refused, server gone)."""


@dataclasses.dataclass(frozen=True)
class MailboxURL:
    scheme: str  # imap, imaps, pop3, pop3s
    host: str
    port: int
    username: str
    password: str
    folder: str = "INBOX"
    starttls: bool = False
    move_to: str = ""  # IMAP only: move read messages to this folder instead of deleting them

    @property
    def imap(self) -> bool:
        return self.scheme.startswith("imap")

    @property
    def tls(self) -> bool:
        return self.scheme.endswith("s")


_DEFAULT_PORTS = {"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995}


def parse_url(url: str) -> MailboxURL:
    """imap://user:pass@host:143/INBOX?starttls=1&move=Processed, imaps://…, pop3://…, pop3s://…"""
    parts = urlsplit(url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or not parts.username:
        raise MailboxError("MAILER_BOUNCE_MAILBOX_URL must look like imaps://user:password@host/INBOX or "
                           "pop3s://user:password@host")
    query = parse_qs(parts.query)
    folder = unquote(parts.path.lstrip("/")) or "INBOX"
    move_to = query.get("move", [""])[0]
    if move_to and not parts.scheme.startswith("imap"):
        raise MailboxError("move= needs IMAP: a POP3 mailbox has no folders, read messages are deleted")
    try:
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise MailboxError("MAILER_BOUNCE_MAILBOX_URL has a port that is not a number") from None
    return MailboxURL(parts.scheme, parts.hostname, port, unquote(parts.username), unquote(parts.password or ""),
                      folder, query.get("starttls", ["0"])[0] in {"1", "true", "yes"}, move_to)


def read_bounce_mailbox(session_factory, settings: Settings, *, clock: Callable[[], dt.datetime],
                        limit: int = MAX_PER_RUN) -> bounces.MailboxCounts:
    """One run: every message (up to `limit`) applied, then removed from the mailbox."""
    counts = bounces.MailboxCounts()
    if not settings.bounce_mailbox_url:
        return counts
    url = parse_url(settings.bounce_mailbox_url)
    reader = _imap_messages if url.imap else _pop3_messages
    for raw, done in reader(url, limit):
        notice = bounces.read_notice(settings, raw)
        with session_scope(session_factory) as session:
            bounces.apply_notice(session, settings, notice, counts, now=clock())
        try:
            done()
        except (OSError, imaplib.IMAP4.error, poplib.error_proto) as exc:
            raise MailboxError(f"cannot remove a read message from the bounce mailbox: {_reason(exc)}") from None
    return counts


def _imap_messages(url: MailboxURL, limit: int) -> Iterator[tuple[bytes, Callable[[], None]]]:
    with _imap(url) as client:
        status, _ = client.select(_quoted(url.folder))
        if status != "OK":
            raise MailboxError(f"the IMAP folder {url.folder!r} cannot be opened")
        status, data = client.uid("SEARCH", None, "ALL")
        uids = data[0].split()[:limit] if status == "OK" and data and data[0] else []
        can_move = b"MOVE" in _capabilities(client)
        for uid in uids:
            status, data = client.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next((item[1] for item in data or [] if isinstance(item, tuple)), None)
            if status != "OK" or raw is None:
                continue  # expunged meanwhile (another worker)

            def done(uid=uid):
                if url.move_to and can_move:
                    client.uid("MOVE", uid, _quoted(url.move_to))
                    return
                if url.move_to:
                    client.uid("COPY", uid, _quoted(url.move_to))
                client.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)")

            yield raw, done
        client.expunge()


def _capabilities(client: imaplib.IMAP4) -> set[bytes]:
    """What the server offers once logged in (it may offer more than before login)."""
    status, data = client.capability()
    return set(data[0].upper().split()) if status == "OK" and data and data[0] else set()


def _quoted(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.contextmanager
def _imap(url: MailboxURL):
    try:
        if url.tls:
            client = imaplib.IMAP4_SSL(url.host, url.port, ssl_context=ssl.create_default_context(),
                                       timeout=TIMEOUT_SECONDS)
        else:
            client = imaplib.IMAP4(url.host, url.port, timeout=TIMEOUT_SECONDS)
            if url.starttls:
                client.starttls(ssl_context=ssl.create_default_context())
        client.login(url.username, url.password)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise MailboxError(f"cannot log in to the bounce mailbox {url.host}:{url.port}: {_reason(exc)}") from None
    try:
        yield client
    except (OSError, imaplib.IMAP4.error) as exc:
        raise MailboxError(f"the bounce mailbox {url.host}:{url.port} failed: {_reason(exc)}") from None
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            client.logout()


def _pop3_messages(url: MailboxURL, limit: int) -> Iterator[tuple[bytes, Callable[[], None]]]:
    try:
        if url.tls:
            client = poplib.POP3_SSL(url.host, url.port, timeout=TIMEOUT_SECONDS,
                                     context=ssl.create_default_context())
        else:
            client = poplib.POP3(url.host, url.port, timeout=TIMEOUT_SECONDS)
            if url.starttls:
                client.stls(ssl.create_default_context())
        client.user(url.username)
        client.pass_(url.password)
    except (OSError, poplib.error_proto) as exc:
        raise MailboxError(f"cannot log in to the bounce mailbox {url.host}:{url.port}: {_reason(exc)}") from None
    try:
        count, _ = client.stat()
        for number in range(1, min(count, limit) + 1):
            _, lines, _ = client.retr(number)
            yield b"\r\n".join(lines) + b"\r\n", (lambda number=number: client.dele(number))
        client.quit()  # deletions take effect here (RFC 1939 UPDATE state)
    except (OSError, poplib.error_proto) as exc:
        with contextlib.suppress(OSError, poplib.error_proto):
            client.close()
        raise MailboxError(f"the bounce mailbox {url.host}:{url.port} failed: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """An error without the password, whatever the library put in it."""
    return re.sub(r"\s+", " ", str(exc))[:300]
