"""The pipelining SMTP client: one thread drives all of a worker's connections with a
selector, instead of a thread per connection.

Per connection, when the server offers PIPELINING (RFC 2920), MAIL FROM, RCPT TO and
DATA go in one write; the message follows the 354 in the same write as the next
message's MAIL, RCPT and DATA, so a connection costs one round trip per message.
Without PIPELINING the commands go one at a time, as RFC 5321 has it. No RSET between
successful transactions (the final reply to DATA ends one; RFC 5321 §4.1.1.4); one is
sent before the next MAIL only after a refused MAIL, RCPT or DATA.

Replies are classified as before (transports.classify_smtp_reply). When a connection
is lost, a message whose content had not been sent yet went nowhere and is handed back
to be tried on another connection; one whose content was sent but not answered is
deferred as today ("connection lost": it may have arrived).

Setting up a connection (connect, greeting, EHLO, STARTTLS, AUTH) uses smtplib, which
blocks, so it runs in a small thread pool (one thread per connection at most) while the
loop keeps serving the open connections; a finished set-up wakes the loop through a
socketpair, and the job that waited for it goes out at once. While no connection is open
only one is set up (a server that is down or refuses our login sees one attempt, as
before); once one is open, the others are set up side by side. A set-up that fails while
another connection is open or being set up gives its message back to be sent on another
connection and leaves that connection closed for the rest of the run; one that fails with
no other connection left means the server cannot be reached: everything not yet sent is
deferred with that error.
"""
from __future__ import annotations

import collections
import concurrent.futures
import re
import selectors
import smtplib
import socket
import ssl
import time
from typing import Callable

from mailer.delivery import addresses
from mailer.delivery.transports import SMTPTransport, TransportError, _reply_text, classify_smtp_reply
from mailer.models import ErrorClass

# A message whose connection was lost before its content went is tried again on a fresh
# connection this many times in one run, then deferred like any lost connection.
MAX_REQUEUES = 3
_BARE_EOL = re.compile(rb"\r\n|\r|\n")


def wire_data(data: bytes) -> bytes:
    """The DATA content as it goes on the wire: CRLF line ends, dot-stuffed (RFC 5321
    §4.5.2), ended by CRLF . CRLF. `bytes` operations on the usual all-CRLF message
    (smtplib runs a regular expression over every byte of it)."""
    pairs = data.count(b"\r\n")  # a bare CR or LF could end the data early at some servers (smuggling)
    if data.count(b"\n") != pairs or data.count(b"\r") != pairs:
        data = _BARE_EOL.sub(b"\r\n", data)
    if data[:1] == b".":
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


class Job:
    """One message on its way: `message` has delivery_id, rcpt_to, data and domain."""

    __slots__ = ("message", "requeues", "error", "content_sent", "wire")

    def __init__(self, message):
        self.message = message
        self.requeues = 0
        self.error: TransportError | None = None
        self.content_sent = False
        self.wire: "Wire | None" = None


class Wire:
    """One SMTP connection: set up (blocking, in a set-up thread), then non-blocking: the
    bytes to write, the bytes read, and the replies expected (step, job), oldest first.
    While it is being set up, `jobs` holds the job waiting for it."""

    def __init__(self, transport: SMTPTransport, number: int):
        self.transport = transport
        self.number = number
        self.client: smtplib.SMTP | None = None
        self.sock: socket.socket | None = None
        self.pipelining = False
        self.smtputf8 = False
        self.eightbit = False
        self.out = bytearray()
        self.inbuf = bytearray()
        self.lines: list[bytes] = []  # the lines of a multi-line reply read so far
        self.expect: collections.deque = collections.deque()  # (step, job)
        self.held: collections.deque = collections.deque()  # (command bytes, step, job) not yet written (no pipelining)
        self.jobs: list[Job] = []  # on this connection now, oldest first
        self.needs_rset = False
        self.deadline = 0.0
        self.registered = 0  # the selector events registered
        self.opening: concurrent.futures.Future | None = None  # the set-up under way (its result: the client)
        self.resting = False  # its set-up failed in this run while others worked: not tried again in it

    @property
    def is_open(self) -> bool:
        return self.sock is not None

    def connect(self) -> smtplib.SMTP:
        """Connect, EHLO, STARTTLS and AUTH (blocking; run in a set-up thread: it touches no
        state of the wire); TransportError when it cannot."""
        client = self.transport._open()
        try:
            client.ehlo_or_helo_if_needed()
        except (OSError, smtplib.SMTPException) as exc:
            client.close()
            raise TransportError(f"cannot reach SMTP server {self.transport.host}:{self.transport.port}: {exc}",
                                 temporary=True, connection_lost=True) from None
        return client

    def adopt(self, client: smtplib.SMTP) -> None:
        """Take a set-up connection (non-blocking from now on). The jobs that waited for it stay."""
        self.client = client
        self.sock = client.sock
        self.pipelining = client.has_extn("pipelining")
        self.smtputf8 = client.has_extn("smtputf8")
        self.eightbit = client.has_extn("8bitmime")
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.sock.setblocking(False)
        self.out.clear()
        self.inbuf.clear()
        self.lines.clear()
        self.expect.clear()
        self.held.clear()
        self.needs_rset = False

    def drop(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except OSError:
                pass
        self.client = None
        self.sock = None
        self.registered = 0

    def quit(self) -> None:
        """QUIT politely (blocking, short) and close."""
        if self.sock is not None and not self.jobs:
            try:
                self.sock.setblocking(True)
                self.sock.settimeout(2)
                self.sock.sendall(b"QUIT\r\n")
            except OSError:
                pass
        self.drop()

    def command(self, line: bytes, step: str, job: Job) -> None:
        if self.pipelining or (not self.expect and not self.held):
            self.out += line
            self.expect.append((step, job))
        else:
            self.held.append((line, step, job))

    def release_held(self) -> None:
        """Without PIPELINING: the next command goes once the last one is answered."""
        if self.held and not self.expect:
            line, step, job = self.held.popleft()
            self.out += line
            self.expect.append((step, job))


class Pipeline:
    """Sends messages over up to `connections` connections from one thread.

    run(messages, report) returns when every message has been reported once, as
    report(message, outcome, error) with outcome "sent", "deferred", "failed" or
    "released" (never attempted: stopping, or held back by the caller's gate)."""

    def __init__(self, transport: SMTPTransport, *, connections: int, per_domain: int,
                 mail_from: str, before_each: Callable[[], bool] | None = None,
                 stopping: Callable[[], bool] = lambda: False):
        self.transport = transport
        self.wires = [Wire(transport, n) for n in range(max(1, connections))]
        self.per_domain = max(1, per_domain)
        self.mail_from = mail_from
        # Called right before a message's content is written (the per-second budget: each
        # message claims its place as it leaves). False: stopping; the job is given back.
        self.before_each = before_each
        self.stopping = stopping
        self.selector = selectors.DefaultSelector()
        self.timeout = transport.timeout
        # Made at the first set-up, kept while connections are kept, ended by close().
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.waker: tuple[socket.socket, socket.socket] | None = None  # (read end, write end)

    # The run ------------------------------------------------------------------------

    def run(self, messages, report: Callable) -> None:
        """Send `messages` (an iterator: each is composed when a connection has room for
        it, and dropped once reported). When it has rest(), that gives the messages it has
        not composed yet, to be released or deferred without composing them."""
        self.report = report
        self.source = iter(messages)
        self.rest = getattr(messages, "rest", None)
        self.exhausted = False
        self.pending: collections.deque[Job] = collections.deque()  # taken from the source, not on a connection
        self.domains: dict[str, dict[int, int]] = {}  # domain -> {wire number: jobs on it}
        self.down: str | None = None  # the server cannot be reached: defer the rest
        for wire in self.wires:
            wire.resting = False
            if wire.jobs or wire.expect or wire.opening is not None:  # left by a run that raised: afresh
                self._abandon(wire)
                if wire.registered:
                    self._unregister(wire)
                wire.drop()
                wire.jobs.clear()
                wire.expect.clear()
                wire.held.clear()
        while True:
            self._assign()
            if self.exhausted and not self.pending and not any(w.jobs for w in self.wires):
                break
            self._poll()

    def _more(self) -> bool:
        return bool(self.pending) or not self.exhausted

    def _pull(self) -> Job | None:
        if self.exhausted:
            return None
        try:
            return Job(next(self.source))
        except StopIteration:
            self.exhausted = True
            return None

    def close(self) -> None:
        for wire in self.wires:
            self._abandon(wire)
            if wire.registered:
                self._unregister(wire)
            wire.quit()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)  # a set-up still running closes its own client
            self.pool = None
        if self.waker is not None:
            try:
                self.selector.unregister(self.waker[0])
            except (KeyError, ValueError):
                pass
            for end in self.waker:
                end.close()
            self.waker = None

    # Handing out jobs ---------------------------------------------------------------

    def _assign(self) -> None:
        """Give each connection with room a job (two at most: one answered, one pipelined
        behind its content)."""
        if self.down is not None or self.stopping():
            left = []
            for wire in self.wires:  # waiting for a set-up: nothing went yet
                if wire.opening is not None:
                    self._abandon(wire)
                    left += wire.jobs
                    for job in list(wire.jobs):
                        self._detach(job)
            left += self.pending
            self.pending.clear()
            if not self.exhausted:
                left += [Job(m) for m in (self.rest() if self.rest is not None else self.source)]
                self.exhausted = True
            for job in left:
                if self.down is not None:
                    self._finish(job, "deferred", TransportError(self.down, temporary=True, connection_lost=True))
                else:
                    self._finish(job, "released", None)
            return
        for wire in self.wires:
            if not self._more():
                return
            if not wire.jobs:
                self._start_next(wire)

    def _room(self, wire: Wire, domain: str) -> bool:
        on = self.domains.get(domain)
        return not on or wire.number in on or len(on) < self.per_domain

    def _take(self, wire: Wire) -> Job | None:
        """The first message this connection may carry (the per-domain cap), composing
        further ones while those waiting are all for domains at their cap."""
        for i, job in enumerate(self.pending):
            if self._room(wire, job.message.domain):
                del self.pending[i]
                return job
        while len(self.pending) < 256:
            job = self._pull()
            if job is None:
                return None
            if self._room(wire, job.message.domain):
                return job
            self.pending.append(job)
        return None

    def _start_next(self, wire: Wire) -> bool:
        """Put the next job's MAIL, RCPT and DATA on this connection, or start setting it up
        with the job waiting for it; False when none."""
        if self.down is not None or wire.resting or wire.opening is not None:
            return False
        if not wire.is_open and not self._may_open():
            return False
        job = self._take(wire)
        if job is None:
            return False
        if not wire.is_open:
            self._open(wire, job)
            return True
        return self._put(wire, job)

    def _put(self, wire: Wire, job: Job) -> bool:
        """Put this job's MAIL, RCPT and DATA on this open connection."""
        sender = job.message.mail_from or self.mail_from  # a VERP return path, or the From address
        try:
            mail_from = addresses.wire_address(sender)
            rcpt_to = addresses.wire_address(job.message.rcpt_to)
        except addresses.AddressError as exc:
            self._finish(job, "failed", TransportError(str(exc), temporary=False, error_class=ErrorClass.ADDRESS))
            return True
        options = b""
        encoding = "ascii"
        if addresses.needs_smtputf8(job.message.rcpt_to) or addresses.needs_smtputf8(sender):
            if not wire.smtputf8:
                self._finish(job, "failed", TransportError(
                    f"the mail server {self.transport.host} does not offer SMTPUTF8, which the address's "
                    "non-ASCII local part needs (RFC 6531); not sent", temporary=False,
                    error_class=ErrorClass.ADDRESS))
                return True
            options = b" SMTPUTF8 BODY=8BITMIME" if wire.eightbit else b" SMTPUTF8"
            encoding = "utf-8"
        self._attach(job, wire)
        if wire.needs_rset:
            wire.command(b"RSET\r\n", "RSET", job)
            wire.needs_rset = False
        wire.command(b"MAIL FROM:<" + mail_from.encode(encoding) + b">" + options + b"\r\n", "MAIL", job)
        wire.command(b"RCPT TO:<" + rcpt_to.encode(encoding) + b">\r\n", "RCPT", job)
        wire.command(b"DATA\r\n", "DATA", job)
        wire.deadline = time.monotonic() + self.timeout
        return True

    def _finish(self, job: Job, outcome: str, error: TransportError | None) -> None:
        self._detach(job)
        self.report(job.message, outcome, error)

    def _detach(self, job: Job) -> None:
        """Take a job off its connection (and out of the per-domain counts) without reporting it."""
        wire = job.wire
        if wire is not None:
            if job in wire.jobs:
                wire.jobs.remove(job)
            counts = self.domains.get(job.message.domain)
            if counts is not None and wire.number in counts:
                counts[wire.number] -= 1
                if not counts[wire.number]:
                    del counts[wire.number]
            job.wire = None

    # Setting connections up ---------------------------------------------------------

    def _may_open(self) -> bool:
        """While no connection is open, one set-up at a time (a server that is down or refuses
        our login sees one attempt); once one is open, the others side by side."""
        return any(w.is_open for w in self.wires) or not any(w.opening is not None for w in self.wires)

    def _open(self, wire: Wire, job: Job) -> None:
        """Start setting this connection up in a set-up thread; the job waits on it (and counts
        for its domain on this connection meanwhile)."""
        if self.pool is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(self.wires),
                                                              thread_name_prefix="smtp-set-up")
        if self.waker is None:
            self.waker = socket.socketpair()
            for end in self.waker:
                end.setblocking(False)
            self.selector.register(self.waker[0], selectors.EVENT_READ, None)
        self._attach(job, wire)
        wire.opening = self.pool.submit(wire.connect)
        wire.opening.add_done_callback(self._wake)

    def _attach(self, job: Job, wire: Wire) -> None:
        """The job goes on this connection: it counts there for its domain's cap (_room)."""
        job.wire = wire
        job.error = None
        job.content_sent = False
        wire.jobs.append(job)
        counts = self.domains.setdefault(job.message.domain, {})
        counts[wire.number] = counts.get(wire.number, 0) + 1

    def _wake(self, future) -> None:
        """In the set-up thread: a set-up ended; wake the loop from select()."""
        waker = self.waker
        if waker is not None:
            try:
                waker[1].send(b"\0")
            except OSError:  # full (the loop is awake anyway) or closed (the pipeline is closed)
                pass

    def _opened(self) -> None:
        """Take the set-ups that ended: the waiting job goes out, or the set-up failed."""
        for wire in self.wires:
            future = wire.opening
            if future is None or not future.done():
                continue
            wire.opening = None
            try:
                client = future.result()
            except TransportError as exc:
                self._open_failed(wire, exc)
                continue
            except Exception as exc:  # not one smtplib raises; still, the job must not be lost
                self._open_failed(wire, TransportError(
                    f"cannot reach SMTP server {self.transport.host}:{self.transport.port}: {exc}",
                    temporary=True, connection_lost=True))
                continue
            wire.adopt(client)
            for job in list(wire.jobs):
                self._detach(job)
                self._put(wire, job)

    def _open_failed(self, wire: Wire, error: TransportError) -> None:
        jobs = list(wire.jobs)
        if any(w is not wire and (w.is_open or w.opening is not None) for w in self.wires):
            # Others work (a provider's cap on connections, one lost SYN): the message went
            # nowhere; another connection takes it. This one is not tried again in this run.
            wire.resting = True
            for job in reversed(jobs):
                if job.requeues >= MAX_REQUEUES:
                    self._finish(job, "deferred", error)
                else:
                    self._detach(job)
                    job.requeues += 1
                    self.pending.appendleft(job)
        else:  # the server cannot be reached: the rest is deferred with this error (_assign)
            self.down = str(error)
            for job in jobs:
                self._finish(job, "deferred", error)

    def _abandon(self, wire: Wire) -> None:
        """Forget the set-up under way (its jobs stay on the wire): a connection it still makes
        is closed when it is made."""
        future, wire.opening = wire.opening, None
        if future is not None and not future.cancel():
            future.add_done_callback(_close_made)

    # The loop -----------------------------------------------------------------------

    def _poll(self) -> None:
        busy = [w for w in self.wires if w.is_open and (w.out or w.expect)]
        opening = any(w.opening is not None for w in self.wires)
        if not busy and not opening:
            return  # _assign hands out the next job (or defers them all when the server is down)
        for wire in busy:
            if wire.out:  # written at once: the selector is asked to wait only for what did not fit
                self._write(wire)
            if not wire.is_open:
                continue
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if wire.out else 0)
            if events != wire.registered:
                if wire.registered:
                    self.selector.modify(wire.sock, events, wire)
                else:
                    self.selector.register(wire.sock, events, wire)
                wire.registered = events
        now = time.monotonic()
        wait = max(0.0, min(min((w.deadline for w in busy), default=now + 0.1) - now, 0.1))
        for key, events in self.selector.select(wait):
            wire = key.data
            if wire is None:  # a set-up ended (the waker)
                try:
                    while self.waker[0].recv(4096):
                        pass
                except OSError:
                    pass
                continue
            if not wire.is_open:
                continue
            if events & selectors.EVENT_WRITE and wire.out:
                self._write(wire)
            if wire.is_open and events & selectors.EVENT_READ:
                self._read(wire)
                if wire.is_open and wire.out:  # the replies' answer (a message, the next commands) goes now
                    self._write(wire)
        now = time.monotonic()
        for wire in busy:
            if wire.is_open and wire.expect and now > wire.deadline:
                self._lost(wire, TransportError("SMTP error: timed out", temporary=True, connection_lost=True))
            elif wire.is_open and not wire.out and not wire.expect and wire.registered:
                self._unregister(wire)
        if opening:
            self._opened()

    def _unregister(self, wire: Wire) -> None:
        try:
            self.selector.unregister(wire.sock)
        except (KeyError, ValueError):
            pass
        wire.registered = 0

    def _write(self, wire: Wire) -> None:
        try:
            sent = wire.sock.send(wire.out)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(wire, TransportError(f"connection lost: {exc}", temporary=True, connection_lost=True))
            return
        del wire.out[:sent]

    def _read(self, wire: Wire) -> None:
        while True:
            try:
                chunk = wire.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._lost(wire, TransportError(f"connection lost: {exc}", temporary=True, connection_lost=True))
                return
            if not chunk:
                self._parse(wire)
                if wire.is_open:
                    self._lost(wire, TransportError("connection lost: Connection unexpectedly closed",
                                                    temporary=True, connection_lost=True))
                return
            wire.inbuf += chunk
            if len(chunk) < 65536 and not (isinstance(wire.sock, ssl.SSLSocket) and wire.sock.pending()):
                break
        self._parse(wire)

    def _parse(self, wire: Wire) -> None:
        """Hand each complete reply to _reply."""
        while wire.is_open:
            end = wire.inbuf.find(b"\n")
            if end < 0:
                return
            line = bytes(wire.inbuf[:end + 1]).rstrip(b"\r\n")
            del wire.inbuf[:end + 1]
            wire.lines.append(line[4:])
            if line[3:4] == b"-":
                continue
            text = _reply_text(b"\n".join(wire.lines))
            wire.lines.clear()
            try:
                code = int(line[:3])
            except ValueError:
                self._lost(wire, TransportError(f"SMTP error: a reply that is not SMTP: {line[:60]!r}",
                                                temporary=True, connection_lost=True))
                return
            self._reply(wire, code, text)

    # Replies ------------------------------------------------------------------------

    def _reply(self, wire: Wire, code: int, text: str) -> None:
        if not wire.expect:
            self._lost(wire, TransportError(f"SMTP error: unexpected reply {code} {text}", temporary=True,
                                            connection_lost=True))
            return
        step, job = wire.expect.popleft()
        wire.deadline = time.monotonic() + self.timeout
        if step == "RSET":
            if code != 250:
                self._lost(wire, TransportError(f"SMTP error: RSET refused: {code} {text}", temporary=True,
                                                connection_lost=True))
                return
        elif step == "MAIL":
            if code != 250:
                # A problem of this session or sender, not of the recipient: a fresh connection next.
                error = TransportError(f"sender refused: {code} {text}", code=code, temporary=True,
                                       connection_lost=True)
                job.error = error
                self._close_after(wire, job, error)
                return
        elif step == "RCPT":
            if code not in (250, 251) and job.error is None:
                job.error = classify_smtp_reply(code, text)
                if job.error.connection_lost:
                    self._close_after(wire, job, job.error)
                    return
                wire.needs_rset = True
        elif step == "DATA":
            if job.error is None and code != 354:
                job.error = classify_smtp_reply(code, text, stage="data")
                wire.needs_rset = True
                if job.error.connection_lost:
                    self._close_after(wire, job, job.error)
                    return
            if job.error is not None:
                if code == 354:  # a server that took DATA without a recipient: end it empty
                    wire.out += b".\r\n"
                    wire.expect.appendleft(("END", job))  # answered before anything pipelined later
                    return
                self._conclude(wire, job)
                return
            if self.before_each is not None and not self.before_each():
                # Stopping: the server waits for content that will not come; hang up (nothing went).
                self._lost(wire, TransportError("stopping", temporary=True, connection_lost=True))
                return
            if getattr(job.message, "stuffed", False):  # built ready for DATA (MessageBuilder.build)
                wire.out += job.message.data
                wire.out += b".\r\n"
            else:
                wire.out += wire_data(job.message.data)
            job.content_sent = True
            wire.expect.append(("END", job))
            # The next message's commands follow its content in the same write.
            if wire.pipelining and self._more() and not self.stopping() and self.down is None:
                self._start_next(wire)
        elif step == "END":
            if job.error is None and code != 250:
                job.error = classify_smtp_reply(code, text, stage="data")
            self._conclude(wire, job)
            if job.error is not None and job.error.connection_lost:
                self._close_after(wire, None, job.error)
                return
        wire.release_held()

    def _conclude(self, wire: Wire, job: Job) -> None:
        error = job.error
        if error is None:
            self._finish(job, "sent", None)
        else:
            self._finish(job, "deferred" if error.temporary else "failed", error)
        if wire.is_open and not wire.jobs and self._more():
            self._start_next(wire)

    def _close_after(self, wire: Wire, job: Job | None, error: TransportError) -> None:
        """This job ends with `error` and the connection is closed (421, a refused MAIL)."""
        if job is not None:
            self._finish(job, "deferred" if error.temporary else "failed", error)
        self._lost(wire, TransportError(f"connection lost: {error}", temporary=True, connection_lost=True))

    def _lost(self, wire: Wire, error: TransportError) -> None:
        """The connection is gone: a message whose content went may have arrived (deferred);
        one whose content did not went nowhere (tried again, first)."""
        jobs = list(wire.jobs)
        if wire.registered:
            self._unregister(wire)
        wire.drop()
        wire.expect.clear()
        wire.held.clear()
        wire.out.clear()
        wire.inbuf.clear()
        wire.lines.clear()
        for job in reversed(jobs):
            if job.content_sent or job.requeues >= MAX_REQUEUES:
                self._finish(job, "deferred", error)
            else:
                self._detach(job)
                job.requeues += 1
                self.pending.appendleft(job)


def _close_made(future: concurrent.futures.Future) -> None:
    """A set-up nobody waits for any more: close the connection it made."""
    if future.cancelled() or future.exception() is not None:
        return
    try:
        future.result().close()
    except OSError:
        pass
