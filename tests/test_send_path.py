"""The send path: the pipelining SMTP client against aiosmtpd (PIPELINING offered or
not), no RSET between good transactions, refusals in the middle of a pipeline, a
connection the server closed between batches, outcomes recorded while a batch is
still going, and the byte-level helpers (dot-stuffing, quoted-printable by line)."""
from __future__ import annotations

import random
import re
import smtplib

import sqlalchemy as sa

from mailer.delivery.rendering import _quoted_printable
from mailer.delivery.smtp_client import wire_data
from mailer.models import Delivery
from tests.audience import address, make_audience, make_newsletter


def _statuses(db) -> dict[str, int]:
    return dict(db.execute(sa.select(Delivery.status, sa.func.count()).group_by(Delivery.status)))


def _pipelined_mail(handler):
    """Count MAIL commands whose RCPT and DATA were already in the server's read buffer
    when MAIL was handled: they came in the same write (RFC 2920)."""
    seen = {"pipelined": 0, "mail": 0}
    plain = handler.handle_MAIL

    async def handle_MAIL(server, session, envelope, address, mail_options):
        seen["mail"] += 1
        waiting = bytes(server._reader._buffer)
        if b"RCPT TO:" in waiting and b"DATA\r\n" in waiting:
            seen["pipelined"] += 1
        return await plain(server, session, envelope, address, mail_options)

    handler.handle_MAIL = handle_MAIL
    return seen


def test_pipelined_commands_no_rset_between_good_transactions(mailer, smtp_server, db):
    seen = _pipelined_mail(smtp_server.handler)
    make_audience(mailer, 40, domains=("example.com", "example.net"))
    make_newsletter(mailer)
    result = mailer.drain()
    assert (result.sent, result.deferred, result.failed) == (40, 0, 0)
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == sorted(
        address(i, d) for i, d in zip(range(40), ["example.com", "example.net"] * 20))
    commands = smtp_server.handler.commands
    assert "RSET" not in commands
    assert commands.count("MAIL") == commands.count("RCPT") == commands.count("DATA") == 40
    assert seen["mail"] == 40 and seen["pipelined"] == 40
    # Each copy is whole: the decoded body names its reader, and lines starting with a dot survive.
    first = smtp_server.received[0].message
    assert first["Subject"].startswith("Spine Health monthly for ")
    assert _statuses(db) == {"sent": 40}


def test_without_pipelining_commands_go_one_at_a_time(database_url, tmp_path, db):
    from mailer import create_app
    from tests.conftest import settings_for
    from tests.smtp_server import SMTPServer

    server = SMTPServer(pipelining=False).start()
    seen = _pipelined_mail(server.handler)
    app = create_app(settings_for(database_url, tmp_path, smtp_url=server.url))
    mailer = app.extensions["mailer"]
    try:
        make_audience(mailer, 12)
        make_newsletter(mailer)
        assert mailer.drain().sent == 12
    finally:
        server.stop()
        mailer.engine.dispose()
    assert seen == {"mail": 12, "pipelined": 0}
    assert len(server.received) == 12 and "RSET" not in server.handler.commands


def test_refusals_inside_a_pipeline_are_classified_and_the_next_transaction_starts_clean(mailer, smtp_server, db):
    make_audience(mailer, 30)
    make_newsletter(mailer)
    refused = {address(3): "550 5.1.1 User unknown", address(11): "451 4.3.0 Try again later",
               address(20): "550 5.7.1 Message rejected as spam"}
    smtp_server.handler.rcpt_reply = lambda a: refused.get(a)
    smtp_server.handler.data_reply = lambda data: "554 5.6.0 Content refused" if address(25).encode() in data \
        else None
    result = mailer.drain()
    assert (result.sent, result.deferred, result.failed) == (26, 1, 3)
    rows = {email: (status, error_class, last_error) for status, error_class, last_error, email in db.execute(
        sa.select(Delivery.status, Delivery.error_class, Delivery.last_error, sa.literal_column("contacts.email"))
        .join(Delivery.contact))}
    assert rows[address(3)] == ("failed", "permanent", "550 5.1.1 User unknown")
    assert rows[address(11)] == ("deferred", "temporary", "451 4.3.0 Try again later")
    assert rows[address(20)] == ("failed", "policy", "550 5.7.1 Message rejected as spam")
    assert rows[address(25)] == ("failed", "rejected", "554 5.6.0 Content refused")
    received = sorted(r.rcpt_tos[0] for r in smtp_server.received)
    assert received == sorted(address(i) for i in range(30) if i not in (3, 11, 20, 25))
    # RSET only after the refused RCPTs (a refused DATA ends its transaction by itself).
    assert smtp_server.handler.commands.count("RSET") <= 3


def test_a_connection_closed_between_batches_is_opened_again_without_a_deferral(database_url, tmp_path, db):
    from mailer import create_app
    from tests.conftest import settings_for
    from tests.smtp_server import SMTPServer, free_port

    port = free_port()
    first = SMTPServer(port).start()
    app = create_app(settings_for(database_url, tmp_path, smtp_url=first.url))
    mailer = app.extensions["mailer"]
    try:
        make_audience(mailer, 10)
        make_newsletter(mailer)
        with mailer.sender() as sender:
            assert sender.send_batch().sent == 10  # the connections stay open after the batch
            first.stop()  # the server goes away, closing them (an idle timeout does the same)
            second = SMTPServer(port).start()
            try:
                make_newsletter(mailer)  # a second issue to the same ten
                result = sender.send_batch()
            finally:
                second.stop()
        assert (result.sent, result.deferred) == (10, 0)
        assert len(first.received) == len(second.received) == 10
        assert dict(db.execute(sa.select(Delivery.status, sa.func.count()).group_by(Delivery.status))) == {"sent": 20}
    finally:
        mailer.engine.dispose()


def test_outcomes_are_recorded_while_the_batch_is_still_sending(mailer, smtp_server, db):
    make_audience(mailer, 100)
    make_newsletter(mailer)
    seen_sent = []

    def look(data: bytes):
        if len(smtp_server.received) == 90:  # the 91st message of a batch of 100
            seen_sent.append(_statuses(db).get("sent", 0))
        return None

    smtp_server.handler.data_reply = look
    assert mailer.drain().sent == 100
    # Groups of 24, at most three of them not yet written: by the 91st message at least
    # 90 - 3 * 24 - (messages on the wire) are recorded; recording all at the end gave 0.
    assert seen_sent and seen_sent[0] >= 10, seen_sent


def test_dot_stuffing_and_line_ends_match_smtplib():
    """smtplib's dot-stuffing, after every bare CR or LF became CRLF (a bare one could end
    the data early at some servers: SMTP smuggling)."""
    rng = random.Random(7)
    pieces = [b".", b"..", b"\r\n", b"\n", b"\r", b"a", b"From ", b"\r\n.\r\n", b"x" * 80, b" "]
    for _ in range(3000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 20)))
        expected = smtplib._quote_periods(re.sub(rb"\r\n|\r|\n", b"\r\n", data))
        if expected[-2:] != b"\r\n":
            expected += b"\r\n"
        assert wire_data(data) == expected + b".\r\n", data


def test_quoted_printable_line_by_line_equals_the_whole_text():
    rng = random.Random(3)
    pieces = ["a", " ", "\t", "=", "é", ".", "\n", "x" * 80, "€", "\r", "\r\n", "y" * 75, " \n", "\t\n", "=\n"]
    lines: dict[str, bytes] = {}
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 25)))
        encoded = _quoted_printable(text, lines)
        assert encoded == _quoted_printable(text), text
        assert all(len(line) <= 76 for line in encoded.split(b"\r\n")), text  # b2a_qp alone made 78


def test_tokens_are_those_of_the_stock_serializer():
    from itsdangerous import URLSafeSerializer

    from mailer import tokens

    key = "a-secret-key-of-more-than-32-characters"
    stock = URLSafeSerializer(key, salt="mailer.unsubscribe")
    payloads = [[1, 1], [12345678, 1], [99999999, 9], [11111111, 1], [111111111, 1], [1111111111111, 11], [7],
                [0, 0], ["aaaaaaaaaa"], [123456789012, 3], [True, 1], [-5, 3], [], {"a": 1}] + [[n, n % 7] for n in range(0, 10**9, 7_777_777)]
    for payload in payloads:
        assert tokens.dumps(key, "unsubscribe", payload) == stock.dumps(payload), payload
        assert tokens.loads(key, "unsubscribe", stock.dumps(payload)) == payload


STATIC = {"organisation": "Spine Clinic", "postal_address": "1 High Street", "base_url": "https://news.example.org",
          "logo_url": ""}
TEXT_BODIES = {
    "named in places": "Hello {{ contact.first_name }},\n\n{{ contact.first_name }}, read this.\n\nBye {{ contact.name }}",
    "name first": "{{ contact.first_name }}\n\nSecond line",
    "a default": "Hi {{ contact.first_name or 'there' }}!\n\n{% for w in upcoming_webinars %}- {{ w.title }}\n{% endfor %}",
    "a field": "Clinic: {{ contact.fields.clinic }}\n\nSee you, {{ contact.first_name | upper }}",
    "a test on the name (rendered whole)": "{% if contact.first_name %}Dear {{ contact.first_name }}{% endif %}\n\nText",
    "no personal value": "Just news.\n\n- one\n- two",
}
READERS = [{"first_name": "Ann", "name": "Ann Lee", "fields": {"clinic": "North"}},
           {"first_name": "", "name": "", "fields": {"clinic": ""}},
           {"first_name": " {{ 7*7 }} ", "name": "A\nB", "fields": {"clinic": "<b>&"}},
           {"first_name": "Zoë", "name": "Zoë Ö", "fields": {"clinic": "  "}}]


def test_text_part_from_the_issue_once_equals_rendering_it_whole_for_each_reader():
    """The text part is rendered once per issue with tokens for the reader's values
    (CompiledNewsletter.text_part); the whole render is the fallback and the reference."""
    from mailer.delivery.rendering import EmailRenderer, compile_newsletter

    for label, body in TEXT_BODIES.items():
        compiled = compile_newsletter(EmailRenderer(), subject="News for {{ contact.first_name }}", preheader="",
                                      body_markdown=body, layout="default", context=STATIC)
        # The footer's unsubscribe and preferences links are personal in every issue.
        assert (compiled.text_personal is None) == label.endswith("(rendered whole)"), label
        for contact in READERS:
            for zone, webinars in (("UTC", []), ("Europe/Paris", [{"title": "Backs"}])):
                context = dict(STATIC, contact=dict(contact, email="a@example.com", timezone=zone),
                               unsubscribe_url="https://news.example.org/unsubscribe/t1",
                               preferences_url="https://news.example.org/p/t1",
                               archive_url="https://news.example.org/archive", upcoming_webinars=webinars)
                whole = compiled.text.render(context).strip() + "\n"
                assert compiled.render(context).text == whole, (label, contact)


def test_spliced_encodings_equal_encoding_the_whole_text():
    """A skeleton's shared parts are encoded once and each copy encodes only its values
    (rendering._spliced_quoted_printable): decoded, the same text; lines never longer than
    76 nor ending in white space, CRLF only; dot-stuffed piece by piece as if stuffed whole."""
    import binascii

    from mailer.delivery.rendering import Skeleton, Spliced, _dot_stuffed, _spliced_quoted_printable

    rng = random.Random(11)
    pieces = ["a", " ", "\t", "=", "é", ".", "\n", "x" * 80, "€", "y" * 75, " \n", "<p>", "\n\n", "🙂", "",
              "\n.", ".."]
    for _ in range(3000):
        count = rng.randrange(1, 7)
        parts = tuple("".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12))) for _ in range(count))
        skeleton = Skeleton(parts)
        for _ in range(3):  # several copies of one skeleton: its encodings are made once and reused
            values = tuple("".join(rng.choice(pieces) for _ in range(rng.randrange(0, 4))) for _ in parts[1:])
            spliced = Spliced(skeleton, values)
            text = spliced.joined()
            encoded = _spliced_quoted_printable(spliced)
            assert binascii.a2b_qp(encoded) == text.replace("\n", "\r\n").encode(), (parts, values)
            assert all(len(line) <= 76 and line[-1:] not in (b" ", b"\t") for line in encoded.split(b"\r\n"))
            assert encoded.count(b"\n") == encoded.count(b"\r\n") == encoded.count(b"\r"), (parts, values)
            stuffed = _spliced_quoted_printable(spliced, stuffed=True)
            assert stuffed == _dot_stuffed(encoded), (parts, values)  # each piece starts a line
    with_cr = Spliced(Skeleton(("a\r\nb", "c")), ("x",))
    assert _spliced_quoted_printable(with_cr) is None  # line ends are made uniform over the whole text
    assert _spliced_quoted_printable(Spliced(Skeleton(("a", "c")), ("x\r",))) is None


def test_an_issue_built_from_its_skeleton_is_the_message_rendered_whole():
    """Each copy of an issue is spliced from the issue's skeleton (text and HTML encoded
    once); read back, the message equals the one built from the copy rendered and
    sanitised whole, for every reader, layout slot and fallback."""
    import dataclasses
    import datetime as dt
    from email import message_from_bytes, policy

    from mailer.delivery.rendering import EmailRenderer, MessageBuilder, compile_newsletter

    builder = MessageBuilder(from_addr="Clinic <news@clinic.example>", reply_to="desk@clinic.example",
                             date=dt.datetime(2026, 12, 7, tzinfo=dt.timezone.utc))
    bodies = dict(TEXT_BODIES, link="[Your page]({{ unsubscribe_url }}) and [site](https://clinic.example/a?b=1)",
                  markup="**{{ contact.first_name }}** <span>{{ contact.fields.clinic }}</span>")
    spliced = 0
    for label, body in bodies.items():
        compiled = compile_newsletter(EmailRenderer(), subject="News for {{ contact.first_name }} & <you>",
                                      preheader="", body_markdown=body, layout="default", context=STATIC)
        for contact in READERS:
            context = dict(STATIC, contact=dict(contact, email="a@example.com", timezone="UTC"),
                           unsubscribe_url="https://news.example.org/unsubscribe/t1.x-Y",
                           preferences_url="https://news.example.org/p/t1", archive_url="https://news.example.org/a",
                           upcoming_webinars=[])
            rendered = compiled.render(context)
            assert rendered.html == compiled.html_document(context, rendered.subject), (label, contact)
            assert rendered.text == compiled.text.render(context).strip() + "\n", (label, contact)
            spliced += rendered.html_spliced is not None and rendered.text_spliced is not None
            whole = dataclasses.replace(rendered, text_spliced=None, html_spliced=None)
            messages = [message_from_bytes(builder.build(r, to_email="a@example.com", to_name=contact["name"],
                                                         message_id="<1@x>"), policy=policy.default)
                        for r in (rendered, whole)]
            for kind in ("plain", "html"):  # text's line breaks are CRLF in canonical form (RFC 2045)
                a, b = (m.get_body((kind,)).get_content().replace("\r\n", "\n") for m in messages)
                assert a == b, (label, contact, kind)
            assert messages[0].get_body(("html",)).get_content().replace("\r\n", "\n") == rendered.html
    # All go the fast way but the issue that tests a name, and the nameless reader of the
    # one that starts with the name (stripping the whole text would reach past it).
    assert spliced == 4 * (len(bodies) - 1) - 1


def test_under_a_per_second_limit_a_claim_fits_in_half_its_lease(mailer, smtp_server, db, monkeypatch):
    """A batch waits its turn message by message under a per-second limit: no more is
    claimed than can go out in half the lease, or another worker could claim (and send)
    rows whose lease ran out while they waited."""
    import dataclasses

    from mailer.delivery import outbox

    claims = []
    claim_due = outbox.claim_due
    monkeypatch.setattr(outbox, "claim_due", lambda *a, **k: claims.append(claim_due(*a, **k)) or claims[-1])
    make_audience(mailer, 25)
    make_newsletter(mailer)
    with mailer.sender() as sender:
        sender._adopt(dataclasses.replace(sender.settings, send_batch_size=500, rate_per_second=5, lease_seconds=4))
        assert sender._batch_size() == 10
        result = sender.send_batch(chain=True)
    assert [len(ids) for ids in claims] == [10, 10, 5, 0]  # each batch claimed as the one before ran out
    assert result.claimed == 25 and result.sent == 25 and _statuses(db) == {"sent": 25}


def test_the_next_batch_is_claimed_while_the_last_messages_are_on_the_wire(mailer, smtp_server, db, monkeypatch):
    """No pause with every connection idle at a batch boundary: the next batch is claimed
    and planned when the last message of this one has been handed to a connection, before
    it is answered."""
    import dataclasses

    from mailer.delivery import outbox

    seen = []
    claim_due = outbox.claim_due
    monkeypatch.setattr(outbox, "claim_due", lambda *a, **k: seen.append(len(smtp_server.received)) or claim_due(*a, **k))
    make_audience(mailer, 40)
    make_newsletter(mailer)
    with mailer.sender() as sender:
        sender._adopt(dataclasses.replace(sender.settings, send_batch_size=10))
        result = sender.send_batch(chain=True)
    assert result.claimed == 40 and result.sent == 40 and _statuses(db) == {"sent": 40}
    assert len(seen) == 5  # four batches and the empty claim that ends the run, all in one send_batch
    assert all(received < 10 * i for i, received in enumerate(seen[1:4], start=1)), seen  # before batch i is all in


def test_a_subject_rendered_once_per_issue_equals_rendering_it_for_each_reader():
    from mailer.delivery.rendering import EmailRenderer, compile_newsletter, one_line

    subjects = ["Monthly news from {{ organisation }}", "News for {{ contact.first_name }}",
                "{{ contact.first_name or 'Friend' }}, {{ contact.fields.clinic }} news", "{{ contact.name | upper }}!",
                "{% if contact.first_name %}Hi {{ contact.first_name }}{% else %}Hello{% endif %}",
                "  {{ contact.first_name }}  ", "{{ contact.first_name }}"]
    for subject in subjects:
        compiled = compile_newsletter(EmailRenderer(), subject=subject, preheader="", body_markdown="Hello",
                                      layout="default", context=STATIC)
        for contact in READERS:
            context = dict(STATIC, contact=dict(contact, email="a@example.com", timezone="UTC"),
                           unsubscribe_url="https://news.example.org/u/t1", preferences_url="https://news.example.org/p/t1",
                           archive_url="https://news.example.org/a", upcoming_webinars=[])
            for _ in range(2):  # the second copy comes from the kept parts
                assert compiled.render(context).subject == one_line(compiled.subject.render(context)), (subject, contact)

# Connection set-up off the send loop (issue 15): set-ups run side by side in threads while
# the loop serves the open connections. ---------------------------------------------------

import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402


class _Gate:
    """A TCP forwarder in front of a test server: it holds the server's greeting back `delay`
    seconds on each connection (`delays`: on the connections numbered so, 1 being the first
    accepted), and on those numbered in `hang` it accepts and never greets. It notes
    (time.time()) when each was accepted, greeted, and closed by the client."""

    def __init__(self, upstream_port: int, *, delay: float = 0.0, delays: dict[int, float] | None = None, hang=()):
        self.upstream_port = upstream_port
        self.delay = delay
        self.delays = delays or {}
        self.hang = set(hang)
        self.accepted: dict[int, float] = {}
        self.greeted: dict[int, float] = {}
        self.closed: dict[int, float] = {}
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        number = 0
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            number += 1
            self.accepted[number] = time.time()
            self.sockets.append(client)
            threading.Thread(target=self._serve, args=(number, client), daemon=True).start()

    def _serve(self, number: int, client: socket.socket) -> None:
        try:
            if number in self.hang:
                while client.recv(65536):  # until the client gives up and closes
                    pass
                self.closed[number] = time.time()
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets.append(upstream)
            greeting = upstream.recv(65536)
            time.sleep(self.delays.get(number, self.delay))
            client.sendall(greeting)
        except OSError:  # stopped meanwhile
            return
        self.greeted[number] = time.time()
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)
        self.closed[number] = time.time()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def stop(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


def _gated_mailer(database_url, tmp_path, url: str, **overrides):
    from mailer import create_app
    from tests.conftest import settings_for

    return create_app(settings_for(database_url, tmp_path, smtp_url=url, **overrides)).extensions["mailer"]


def test_connections_are_set_up_side_by_side(database_url, tmp_path, db):
    """Each set-up waits 0.3 s for the greeting; one after another, 8 take 2.4 s before the
    last can send. One goes first (it tells whether the server is there at all), the other
    seven together: about two set-up times."""
    from tests.smtp_server import SMTPServer

    server = SMTPServer().start()
    gate = _Gate(server.port, delay=0.3)
    mailer = _gated_mailer(database_url, tmp_path, gate.url, smtp_connections=8, per_domain_concurrency=8)
    try:
        make_audience(mailer, 40)
        make_newsletter(mailer)
        result = mailer.drain()
    finally:
        gate.stop()
        server.stop()
        mailer.engine.dispose()
    assert (result.sent, result.deferred, result.failed) == (40, 0, 0)
    assert sorted(r.rcpt_tos[0] for r in server.received) == sorted(address(i) for i in range(40))
    assert len(gate.accepted) == len(gate.greeted) == 8  # every connection carried mail
    set_up = max(gate.greeted.values()) - min(gate.accepted.values())
    assert set_up < 4 * 0.3, set_up
    # The first message did not wait for the other seven set-ups.
    assert min(server.handler.times) < sorted(gate.greeted.values())[1], (server.handler.times, gate.greeted)


def test_a_set_up_that_hangs_holds_up_only_the_message_waiting_for_it(database_url, tmp_path, db):
    """The second connection is accepted but never greeted. The other three deliver
    meanwhile; the hanging set-up ends with the set-up timeout (2 s here), and the message
    that waited for it goes on another connection: each message arrives once."""
    from tests.smtp_server import SMTPServer

    server = SMTPServer().start()
    gate = _Gate(server.port, hang={2})
    mailer = _gated_mailer(database_url, tmp_path, gate.url, smtp_connections=4, per_domain_concurrency=4,
                           smtp_timeout_seconds=2)
    try:
        make_audience(mailer, 30)
        make_newsletter(mailer)
        result = mailer.drain()
    finally:
        gate.stop()
        server.stop()
        mailer.engine.dispose()
    assert (result.sent, result.deferred, result.failed) == (30, 0, 0)
    assert sorted(r.rcpt_tos[0] for r in server.received) == sorted(address(i) for i in range(30))
    assert _statuses(db) == {"sent": 30}
    assert len(gate.accepted) == 4  # the one that hung is not tried again in the same run
    waited = gate.closed[2] - gate.accepted[2]
    assert 1.8 < waited < 6, waited  # the client gave up at its timeout, as smtplib's set-up does
    times = server.handler.times
    assert sum(t < gate.accepted[2] + 1.5 for t in times) == 29, (gate.accepted, times)  # not held up
    assert max(times) > gate.closed[2] - 0.2  # the one that waited went after the set-up failed


def test_a_reconnect_in_the_middle_of_a_run_does_not_hold_up_the_other_connections(database_url, tmp_path, db):
    """A 421 closes one of four connections; its new set-up takes 1 s (the fifth connection
    the server sees). The other three keep delivering meanwhile."""
    from tests.smtp_server import SMTPServer

    server = SMTPServer().start()
    gate = _Gate(server.port, delays={5: 1.0})
    closed = []

    def close_once(data: bytes):
        if address(20).encode() in data and not closed:
            closed.append(time.time())
            return "421 4.4.2 Closing this connection"
        return None

    server.handler.data_reply = close_once
    mailer = _gated_mailer(database_url, tmp_path, gate.url, smtp_connections=4, per_domain_concurrency=4)
    try:
        make_audience(mailer, 60)
        make_newsletter(mailer)
        result = mailer.drain()
    finally:
        gate.stop()
        server.stop()
        mailer.engine.dispose()
    assert (result.sent, result.deferred, result.failed) == (59, 1, 0)  # the 421 at the end of DATA: deferred
    assert sorted(r.rcpt_tos[0] for r in server.received) == sorted(address(i) for i in range(60) if i != 20)
    assert len(gate.accepted) == 5 and gate.greeted[5] - gate.accepted[5] >= 1.0
    during = [t for t in server.handler.times if gate.accepted[5] < t < gate.greeted[5]]
    assert len(during) >= 20, (len(during), gate.accepted, gate.greeted, closed)


def test_server_down_defers_everything_after_one_attempt(database_url, tmp_path, db):
    """Nothing listening, or a server that refuses every session: every message is deferred
    with the set-up's error, as when set-up was serial, and the server sees one attempt."""
    from tests.smtp_server import free_port

    port = free_port()
    mailer = _gated_mailer(database_url, tmp_path, f"smtp://127.0.0.1:{port}", smtp_connections=8,
                           per_domain_concurrency=8)
    try:
        make_audience(mailer, 20)
        make_newsletter(mailer)
        result = mailer.drain()
        assert (result.sent, result.deferred, result.failed) == (0, 20, 0)
        rows = db.execute(sa.select(Delivery.status, Delivery.attempts, Delivery.last_error))
        assert {(r.status, r.attempts) for r in rows} == {("deferred", 1)}
        assert all(r.last_error.startswith(f"cannot reach SMTP server 127.0.0.1:{port}") for r in rows)
    finally:
        mailer.engine.dispose()

    refusing = socket.create_server(("127.0.0.1", 0))
    sessions = []

    def refuse():
        while True:
            try:
                conn, _ = refusing.accept()
            except OSError:
                return
            sessions.append(conn)
            conn.sendall(b"421 4.3.2 Service not available\r\n")
            conn.close()

    threading.Thread(target=refuse, daemon=True).start()
    url = f"smtp://127.0.0.1:{refusing.getsockname()[1]}"
    mailer = _gated_mailer(database_url, tmp_path / "second", url, smtp_connections=8, per_domain_concurrency=8)
    try:
        make_newsletter(mailer)  # a second issue to the same twenty
        result = mailer.drain()
    finally:
        refusing.close()
        mailer.engine.dispose()
    assert (result.sent, result.deferred, result.failed) == (0, 20, 0)
    assert len(sessions) == 1
    rows = db.execute(sa.select(Delivery.status, Delivery.attempts, Delivery.last_error))
    assert {(r.status, r.attempts) for r in rows} == {("deferred", 1)}
    assert sum(r.last_error.startswith("SMTP server refused the session: 421") for r in rows) == 20


def test_stopping_while_a_connection_is_set_up_releases_its_message(database_url, tmp_path, db):
    """request_stop while the first set-up waits for its greeting: nothing is sent, every
    message is given back at once (not after the set-up), the connection made later is
    closed, and the next run sends each message once."""
    from tests.smtp_server import SMTPServer

    server = SMTPServer().start()
    gate = _Gate(server.port, delay=1.0)
    mailer = _gated_mailer(database_url, tmp_path, gate.url, smtp_connections=4, per_domain_concurrency=4)
    try:
        make_audience(mailer, 10)
        make_newsletter(mailer)
        mailer.process_signups()
        with mailer.sender() as sender:
            stopped_at = []

            def stop_during_the_set_up():
                # Once the first connection is accepted (not after a fixed time: claiming and
                # planning can take longer than that on a loaded machine, and a stop before
                # any set-up tests nothing), while the set-up waits 1 s for its greeting.
                deadline = time.monotonic() + 30
                while 1 not in gate.accepted and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.1)
                stopped_at.append(time.monotonic())
                sender.request_stop()

            threading.Thread(target=stop_during_the_set_up, daemon=True).start()
            result = sender.send_batch()
            took = time.monotonic() - stopped_at[0]
        assert (result.sent, result.released) == (0, 10)
        assert took < 0.6, took  # at once: the set-up ends 0.9 s after the stop at the earliest
        assert _statuses(db) == {"queued": 10}
        for _ in range(100):  # the set-up ends after its greeting; the connection is then closed
            if 1 in gate.closed:
                break
            time.sleep(0.05)
        assert 1 in gate.closed
        gate.delay = 0.0
        assert mailer.drain().sent == 10
    finally:
        gate.stop()
        server.stop()
        mailer.engine.dispose()
    assert sorted(r.rcpt_tos[0] for r in server.received) == sorted(address(i) for i in range(10))

def test_stopping_gives_back_the_batch_planned_ahead(mailer, smtp_server, db):
    """While a batch is sending the next one is claimed and planned ahead; a stop (SIGTERM)
    ends the run with that one given back untried, and nothing left leased."""
    import dataclasses

    make_audience(mailer, 60)
    make_newsletter(mailer)
    with mailer.sender() as sender:
        sender._adopt(dataclasses.replace(sender.settings, send_batch_size=10))
        smtp_server.handler.data_reply = lambda data: (sender.request_stop() if len(smtp_server.received) >= 14
                                                       else None)
        result = sender.drain()
        statuses = _statuses(db)  # before close(), which would give back whatever this worker still held
    assert "sending" not in statuses, statuses
    assert statuses["sent"] == result.sent == len(smtp_server.received) < 60
    assert statuses["queued"] == 60 - result.sent and result.released >= 10  # the batch ahead at least
    assert mailer.drain().sent == 60 - result.sent  # and a later run sends each of them once
    assert len({r.rcpt_tos[0] for r in smtp_server.received}) == len(smtp_server.received) == 60


def test_a_database_error_planning_ahead_gives_back_only_that_batch(mailer, smtp_server, db, monkeypatch):
    import dataclasses

    import sqlalchemy.exc

    from mailer.delivery import sender as sender_module

    make_audience(mailer, 30)
    make_newsletter(mailer)
    plan = sender_module.Sender._plan
    calls = []

    def failing_plan(self, session, ids, outcomes):
        calls.append(len(ids))
        if len(calls) == 2:
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("database is locked"))
        return plan(self, session, ids, outcomes)

    monkeypatch.setattr(sender_module.Sender, "_plan", failing_plan)
    with mailer.sender() as sender:
        sender._adopt(dataclasses.replace(sender.settings, send_batch_size=10))
        first = sender.send_batch(chain=True)
        # The released rows reach the database with the outcome log's next group: a claim
        # the planner makes before that finds nothing due and ends the run, and the next
        # run takes them (which one happens depends on the threads' timing).
        later = sender.send_batch(chain=True) if first.sent < 30 else None
        statuses = _statuses(db)
    # The batch whose planning failed went back untried (only it: the others were on the
    # wire), and was claimed again, in this run or the next; each message went once.
    assert first.released == 10 and first.sent in (20, 30), first
    assert first.claimed == 10 + first.sent, first
    assert later is None or (later.claimed == later.sent == 10 and not later.released), later
    assert statuses == {"sent": 30}
    assert len({r.rcpt_tos[0] for r in smtp_server.received}) == len(smtp_server.received) == 30
