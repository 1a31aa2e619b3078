"""A real SMTP server for tests (aiosmtpd on 127.0.0.1) that records every message
and can be told to refuse recipients or data with a chosen reply."""
from __future__ import annotations

import dataclasses
import random
import socket
import threading
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Callable

from aiosmtpd.controller import Controller


@dataclasses.dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)


class RecordingHandler:
    def __init__(self):
        self.received: list[Received] = []
        self.times: list[float] = []  # time.time() of each accepted message
        self.lock = threading.Lock()
        self.sessions = 0  # connections accepted (the controller's own start-up probe is one)
        # Return an SMTP reply such as "451 4.3.0 try later" to refuse, or None to accept.
        self.rcpt_reply: Callable[[str], str | None] = lambda address: None
        self.data_reply: Callable[[bytes], str | None] = lambda data: None
        # Return True to hang up in the middle of DATA, before answering.
        self.drop_on_data: Callable[[bytes], bool] = lambda data: False
        # Offer PIPELINING (RFC 2920) in the EHLO reply, as Postfix and most relays do
        # (aiosmtpd reads commands one line at a time, so it serves a pipelining client).
        self.pipelining = True
        self.commands: list[str] = []  # every command verb received, in order (MAIL, RCPT, DATA, RSET...)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            responses = [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.commands.append("MAIL")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RSET(self, server, session, envelope):
        self.commands.append("RSET")
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.commands.append("RCPT")
        reply = self.rcpt_reply(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.commands.append("DATA")
        if self.drop_on_data(envelope.content):
            server.transport.abort()
            return "421 4.4.2 (connection already gone)"
        reply = self.data_reply(envelope.content)
        if reply:
            return reply
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            self.times.append(time.time())
        return "250 Message accepted for delivery"


class _CountingController(Controller):
    def factory(self):
        with self.handler.lock:  # one SMTP protocol object per accepted connection
            self.handler.sessions += 1
        return super().factory()


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            low, high = map(int, ports.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port nobody listens on, for a server a test starts: TCP and UDP, on every IPv4 address.

    Chosen below the kernel's ephemeral range: a port the kernel handed out with bind(0) is
    also what it gives the next outgoing connection, so a server started a moment later on it
    (Caddy, which listens on all addresses) could find it taken ("address already in use",
    seen once in CI). Each port is handed out once per test run."""
    low, _ = _ephemeral_range()
    first = 20000 if low > 21000 else 1024
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(first, low)
        if port in _handed_out:
            continue
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("0.0.0.0", port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port below the ephemeral range")


class SMTPServer:
    def __init__(self, port: int | None = None, *, smtputf8: bool = False, pipelining: bool = True):
        self.handler = RecordingHandler()
        self.handler.pipelining = pipelining
        self.port = port or free_port()
        # smtputf8: offer SMTPUTF8 (RFC 6531), as a server that takes international addresses does.
        self.controller = _CountingController(self.handler, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=smtputf8)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    @property
    def sessions(self) -> int:
        return self.handler.sessions

    @property
    def received(self) -> list[Received]:
        return self.handler.received

    def start(self) -> "SMTPServer":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
