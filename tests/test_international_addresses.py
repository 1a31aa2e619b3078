"""International addresses (item 7 of issue 10): domains go out as IDNA A-labels; a
non-ASCII local part goes over SMTPUTF8 when the server offers it, and otherwise that
one delivery fails with its reason while the rest of the batch is sent."""
from __future__ import annotations

import re
from email import message_from_string, policy

import pytest
import sqlalchemy as sa

from mailer import create_app
from mailer.delivery import addresses
from mailer.models import Contact, Delivery, Subscription, Suppression
from mailer.delivery.rendering import encode_address
from tests.audience import make_newsletter
from tests.conftest import settings_for, signup
from tests.smtp_server import SMTPServer

CHINESE = "用户@例子.广告"
GERMAN = "jöhn@exämple.com"


def test_wire_addresses_are_idna_and_only_a_non_ascii_local_part_needs_smtputf8():
    assert addresses.wire_address(GERMAN) == "jöhn@xn--exmple-cua.com"
    assert addresses.wire_address(CHINESE) == "用户@xn--fsqu00a.xn--4rr70v"
    assert addresses.wire_address("ann@exämple.com") == "ann@xn--exmple-cua.com"
    assert addresses.wire_address("ann@example.com") == "ann@example.com"
    assert [addresses.needs_smtputf8(a) for a in (GERMAN, CHINESE, "ann@exämple.com")] == [True, True, False]
    with pytest.raises(addresses.AddressError):
        addresses.wire_address("ann@-exämple.com")
    # The To header: the name RFC 2047-encoded, the domain as A-labels, a UTF-8 local part as is (RFC 6532).
    assert encode_address("Jöhn", "ann@exämple.com") == "=?utf-8?b?SsO2aG4=?= <ann@xn--exmple-cua.com>"
    assert encode_address("Jöhn", GERMAN) == "=?utf-8?b?SsO2aG4=?= <jöhn@xn--exmple-cua.com>"
    assert encode_address("", CHINESE) == "用户@xn--fsqu00a.xn--4rr70v"


@pytest.fixture
def utf8_server():
    server = SMTPServer(smtputf8=True).start()
    yield server
    server.stop()


def _subscribe(client, mailer, server, address: str, name: str) -> None:
    """Sign up, receive the confirmation through the server and follow its link."""
    assert signup(client, address, name=name).status_code in (200, 302)
    before = len(server.received)
    mailer.drain()
    assert len(server.received) == before + 1, "the confirmation was not delivered"
    text = server.received[-1].message.get_body(preferencelist=("plain",)).get_content()
    link = re.search(r"https://news\.example\.org(/confirm/\S+)", text).group(1)
    assert client.get(link).status_code in (200, 302)


def test_smtputf8_server_receives_both_international_addresses(database_url, tmp_path, utf8_server, db):
    app = create_app(settings_for(database_url, tmp_path, smtp_url=utf8_server.url))
    mailer, client = app.extensions["mailer"], app.test_client()
    try:
        _subscribe(client, mailer, utf8_server, CHINESE, "用户")
        _subscribe(client, mailer, utf8_server, GERMAN, "Jöhn")
        assert db.scalar(sa.select(sa.func.count()).select_from(Subscription)
                         .where(Subscription.status == "active")) == 2

        make_newsletter(mailer)
        result = mailer.drain()
        assert (result.sent, result.failed) == (2, 0)
        issue = utf8_server.received[-2:]
        assert sorted(r.rcpt_tos[0] for r in issue) == sorted(["用户@xn--fsqu00a.xn--4rr70v",
                                                               "jöhn@xn--exmple-cua.com"])
        # RFC 6532: the headers are UTF-8, so the message is parsed as text, not as ASCII bytes.
        by_rcpt = {r.rcpt_tos[0]: message_from_string(r.data.decode("utf-8"), policy=policy.default) for r in issue}
        chinese = by_rcpt["用户@xn--fsqu00a.xn--4rr70v"]
        assert chinese["To"].addresses[0].addr_spec == "用户@xn--fsqu00a.xn--4rr70v"
        assert chinese["To"].addresses[0].display_name == "用户"
        german = by_rcpt["jöhn@xn--exmple-cua.com"]
        assert german["To"].addresses[0].addr_spec == "jöhn@xn--exmple-cua.com"
        assert german["Subject"] == "Spine Health monthly for Jöhn"
        assert "Hello Jöhn," in german.get_body(preferencelist=("plain",)).get_content()
        assert set(db.scalars(sa.select(Delivery.status))) == {"sent"}
    finally:
        mailer.engine.dispose()


def test_without_smtputf8_the_non_ascii_local_part_fails_cleanly_and_the_batch_goes_on(
        database_url, tmp_path, smtp_server, db):
    app = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url))
    mailer, client = app.extensions["mailer"], app.test_client()
    try:
        for address in (GERMAN, "ann@exämple.com", "bob@example.com"):
            assert signup(client, address, name="Reader").status_code in (200, 302)
        result = mailer.drain()  # the three confirmations: one batch
        assert (result.sent, result.failed) == (2, 1)
        assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == ["ann@xn--exmple-cua.com", "bob@example.com"]
        ann = [r.message for r in smtp_server.received if r.rcpt_tos == ["ann@xn--exmple-cua.com"]][0]
        assert ann["To"].addresses[0].addr_spec == "ann@xn--exmple-cua.com"

        failed = db.execute(sa.select(Delivery.status, Delivery.error_class, Delivery.last_error, Contact.email)
                            .join(Contact, Contact.id == Delivery.contact_id).where(Delivery.status != "sent"))
        assert len(failed) == 1
        status, error_class, last_error, email = failed[0]
        assert (status, error_class, email) == ("failed", "address", GERMAN)
        assert "does not offer SMTPUTF8" in last_error and "non-ASCII local part" in last_error
        assert "codec" not in last_error
        # Not the address's fault: nothing is suppressed.
        assert db.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 0
    finally:
        mailer.engine.dispose()


def test_a_domain_checked_once_is_answered_the_same_from_then_on():
    """contacts keeps email-validator's answer per domain (_check_each_domain_once): the
    same normalised address whether the domain was seen before or not, and a refused
    domain is refused every time, with its reason."""
    from mailer.audience import contacts
    from mailer.errors import InvalidInput

    for _ in range(2):
        assert contacts.normalise_email("Jöhn@EXÄMPLE.com") == "jöhn@exämple.com"
        assert contacts.normalise_email("ann@xn--exmple-cua.com") == "ann@exämple.com"
        assert contacts.normalise_email(CHINESE) == CHINESE
        for bad, reason in (("ann@exa..mple.com", "two periods"), ("ann@ex ample.com", "invalid characters"),
                            ("ann@-example.com", "hyphen")):
            with pytest.raises(InvalidInput) as refused:
                contacts.normalise_email(bad)
            assert reason in refused.value.message
