"""A real SMTP server for tests (aiosmtpd on 127.0.0.1) that records every message
and can be told to refuse recipients or data with a chosen reply."""
from __future__ import annotations

import dataclasses
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

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rcpt_reply(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SMTPServer:
    def __init__(self, port: int | None = None, *, smtputf8: bool = False):
        self.handler = RecordingHandler()
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
