"""Bounces from any relay: every message leaves with a VERP return path naming its delivery;
the bounces that come back land in a real IMAP mailbox (dovecot, started on a loopback
port) as the MTAs write them (Postfix and Gmail RFC 3464 reports, Exim's and qmail's own
formats, a delay warning, a full mailbox, a spam block, an out-of-office reply, a forged
bounce); reading it suppresses the hard bounces, records the soft ones and empties it."""
from __future__ import annotations

import dataclasses
import imaplib
import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailer import create_app
from mailer.delivery import bounce_mailbox, bounces
from mailer.models import Bounce, Delivery, Suppression
from mailer.settings import SettingsError, load_settings
from tests.audience import address, make_audience, make_newsletter
from tests.conftest import settings_for
from tests.imap_server import PASSWORD, USER, IMAPServer, require_dovecot

SAMPLES = Path(__file__).parent / "data" / "bounces"
# Sample → (what it says about its reader, suppressed?)
EXPECTED = {
    "postfix_user_unknown": ("hard", True),
    "gmail_no_such_user": ("hard", True),
    "exim_rcpt_rejected": ("hard", True),
    "qmail_via_message_id": ("hard", True),  # no VERP (a relay rewrote it): matched by the Message-ID
    "postfix_delayed": ("soft", False),
    "mailbox_full": ("soft", False),
    "spam_blocked": ("policy", False),
    "out_of_office": (None, False),
    "forged": (None, False),  # a wrong VERP signature and a made-up Message-ID: nothing happens
}


@pytest.fixture
def imap():
    require_dovecot()
    with IMAPServer() as server:
        yield server


@pytest.fixture
def app(database_url, smtp_server, tmp_path, imap):
    app = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url,
                                  bounce_address="bounce@clinic.example", bounce_mailbox_url=imap.url))
    app.config["TESTING"] = True
    yield app
    app.extensions["mailer"].engine.dispose()


def imap_client(server: IMAPServer) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", server.port)
    client.login(USER, PASSWORD)
    return client


def deliver(client: imaplib.IMAP4, raw: bytes, folder: str = "INBOX") -> None:
    status, _ = client.append(folder, None, None, raw)
    assert status == "OK"


def count(client: imaplib.IMAP4, folder: str = "INBOX") -> int:
    status, data = client.select(folder)
    assert status == "OK"
    return int(data[0])


def sample(name: str, **values) -> bytes:
    return (SAMPLES / f"{name}.eml").read_text().format(**values).replace("\n", "\r\n").encode()


def sent_newsletter(mailer, smtp_server, readers: int) -> dict[str, tuple[int, str, str]]:
    """A newsletter to `readers` people: address → (delivery id, return path, Message-ID)."""
    make_audience(mailer, readers, domains=("example.net",))
    make_newsletter(mailer)
    with mailer.sender() as sender:
        sender.drain()
    with mailer.read_sessions() as session:
        ids = dict(session.execute(sa.select(Delivery.message_id, Delivery.id)).all())
    return {m.rcpt_tos[0]: (ids[m.message["Message-ID"]], m.mail_from, m.message["Message-ID"])
            for m in smtp_server.received}


def test_each_message_goes_out_with_a_signed_verp_return_path(app, mailer, smtp_server):
    sent = sent_newsletter(mailer, smtp_server, 3)
    for rcpt, (delivery_id, mail_from, _message_id) in sent.items():
        assert re.fullmatch(rf"bounce\+{delivery_id}-[0-9a-f]{{16}}@clinic\.example", mail_from)
        assert bounces.verp_delivery_id(mailer.settings, mail_from) == delivery_id
        assert bounces.verp_delivery_id(mailer.settings, mail_from.upper()) == delivery_id  # a lower-casing MTA
        forged = mail_from.replace(f"+{delivery_id}-", f"+{delivery_id + 1}-")
        assert bounces.verp_delivery_id(mailer.settings, forged) is None
    assert smtp_server.received[0].message["From"] == "Spine Clinic <news@clinic.example>"  # From is unchanged


def test_the_worker_reads_real_bounces_suppresses_hard_ones_records_soft_ones_and_empties_the_mailbox(
        app, mailer, smtp_server, imap, db):
    sent = sent_newsletter(mailer, smtp_server, len(EXPECTED))
    readers = {name: address(i, "example.net") for i, name in enumerate(EXPECTED)}
    client = imap_client(imap)
    for name, rcpt in readers.items():
        delivery_id, verp, message_id = sent[rcpt]
        deliver(client, sample(name, verp=verp, rcpt=rcpt, message_id=message_id, delivery_id=delivery_id,
                               forged_verp=f"bounce+{delivery_id}-0123456789abcdef@clinic.example"))
    deliver(client, sample("postfix_user_unknown", verp=sent[readers["postfix_user_unknown"]][1],
                           rcpt=readers["postfix_user_unknown"], message_id=sent[readers["postfix_user_unknown"]][2]))
    assert count(client) == len(EXPECTED) + 1

    counts = bounce_mailbox.read_bounce_mailbox(mailer.sessions, mailer.settings, clock=lambda: _now())
    assert dataclasses.asdict(counts) == {"read": len(EXPECTED) + 1, "hard": 5, "soft": 2, "policy": 1,
                                          "unmatched": 1, "not_bounces": 1}
    assert count(client) == 0  # everything read was deleted

    recorded = dict(db.execute(sa.select(Delivery.id, Bounce.kind).join(Bounce, Bounce.delivery_id == Delivery.id)))
    suppressed = set(db.scalars(sa.select(Suppression.email_hash)))
    from mailer.delivery import suppression
    for name, (kind, is_suppressed) in EXPECTED.items():
        delivery_id = sent[readers[name]][0]
        assert recorded.get(delivery_id) == kind, name
        assert (suppression.email_hash(mailer.settings, readers[name]) in suppressed) == is_suppressed, name
    # Reading the same bounce twice recorded it once.
    assert db.scalar(sa.select(sa.func.count()).select_from(Bounce)) == 7
    details = db.scalars(sa.select(Bounce.detail))
    assert all("@" not in detail for detail in details)  # addresses are masked
    assert "User unknown" in db.scalar(sa.select(Bounce.detail).where(
        Bounce.delivery_id == sent[readers["postfix_user_unknown"]][0]))

    # A suppressed reader gets nothing more.
    make_newsletter(mailer)
    smtp_server.received.clear()
    with mailer.sender() as sender:
        sender.drain()
    got = {m.rcpt_tos[0] for m in smtp_server.received}
    assert readers["gmail_no_such_user"] not in got and readers["postfix_delayed"] in got
    client.logout()


def test_read_messages_can_be_moved_instead(database_url, smtp_server, tmp_path, imap):
    client = imap_client(imap)
    client.create("Processed")
    app = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url,
                                  bounce_address="bounce@clinic.example", bounce_mailbox_url=imap.url + "?move=Processed"))
    m = app.extensions["mailer"]
    deliver(client, sample("out_of_office", verp="bounce@clinic.example", rcpt="someone@example.net"))
    counts = bounce_mailbox.read_bounce_mailbox(m.sessions, m.settings, clock=_now)
    assert counts.read == 1 and counts.not_bounces == 1
    assert count(client, "INBOX") == 0 and count(client, "Processed") == 1
    client.logout()
    m.engine.dispose()


def test_a_refused_login_or_a_bad_url_is_a_clear_error_and_nothing_is_lost(database_url, tmp_path, imap, mailer):
    client = imap_client(imap)
    deliver(client, sample("out_of_office", verp="bounce@clinic.example", rcpt="someone@example.net"))
    wrong = dataclasses.replace(mailer.settings, bounce_mailbox_url=imap.url.replace(PASSWORD, "wrong"))
    with pytest.raises(bounce_mailbox.MailboxError) as refused:
        bounce_mailbox.read_bounce_mailbox(mailer.sessions, wrong, clock=_now)
    assert "cannot log in to the bounce mailbox 127.0.0.1" in str(refused.value)
    assert "wrong" not in str(refused.value)  # never the password
    assert count(client) == 1
    for url, words in (("ftp://u:p@host/", "must look like"), ("pop3://u:p@host?move=Done", "move= needs IMAP"),
                       ("imap://host/INBOX", "must look like")):
        with pytest.raises(bounce_mailbox.MailboxError, match=words):
            bounce_mailbox.parse_url(url)
    client.logout()
    with pytest.raises(SettingsError, match="MAILER_BOUNCE_ADDRESS"):
        load_settings(settings_for(database_url, tmp_path, bounce_address="bounce+x@clinic.example"))


def test_the_cli_reads_the_mailbox_once(app, mailer, imap, tmp_path, database_url):
    import os
    import subprocess
    import sys

    from tests.conftest import SECRET

    client = imap_client(imap)
    deliver(client, sample("out_of_office", verp="bounce@clinic.example", rcpt="someone@example.net"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_DATABASE_URL=database_url, MAILER_SECRET_KEY=SECRET, MAILER_INSTANCE_PATH=str(tmp_path / "i"),
               MAILER_BOUNCE_MAILBOX_URL=imap.url)
    done = subprocess.run([sys.executable, "-m", "mailer", "read-bounces"], cwd=Path(__file__).parent.parent, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "read 1:" in done.stdout and "not bounces 1" in done.stdout
    assert count(client) == 0
    client.logout()


def _now():
    from mailer.db import utcnow

    return utcnow()


def test_a_pop3_mailbox_is_read_and_emptied_too(database_url, smtp_server, tmp_path):
    require_dovecot(pop3=True)
    with IMAPServer(pop3=True) as server:
        app = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url,
                                      bounce_address="bounce@clinic.example", bounce_mailbox_url=server.pop3_url))
        m = app.extensions["mailer"]
        sent = sent_newsletter(m, smtp_server, 2)
        client = imap_client(server)
        (first, (first_id, first_verp, first_mid)), (second, (second_id, second_verp, second_mid)) = sent.items()
        deliver(client, sample("gmail_no_such_user", verp=first_verp, rcpt=first, message_id=first_mid))
        deliver(client, sample("postfix_delayed", verp=second_verp, rcpt=second, message_id=second_mid))
        counts = bounce_mailbox.read_bounce_mailbox(m.sessions, m.settings, clock=_now)
        assert (counts.read, counts.hard, counts.soft) == (2, 1, 1)
        assert count(client) == 0  # POP3 DELE, committed at QUIT
        with m.read_sessions() as session:
            kinds = dict(session.execute(sa.select(Bounce.delivery_id, Bounce.kind)).all())
        assert kinds == {first_id: "hard", second_id: "soft"}
        client.logout()
        m.engine.dispose()
