"""A policy or content refusal (5.7.x: spam, blocked, DMARC) fails that delivery and
records its class; only mailbox-level refusals suppress the address (issue 10)."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from mailer.models import Contact, Delivery, Suppression
from mailer.delivery.transports import classify_smtp_reply
from tests.audience import address, make_audience, make_newsletter


@pytest.mark.parametrize("code, text, stage, expected", [
    # Mailbox-level: suppressed.
    (550, "5.1.1 No such user", "rcpt", "permanent"),
    (550, "5.1.10 RESOLVER.ADR.RecipientNotFound", "rcpt", "permanent"),
    (553, "5.1.3 Bad recipient address syntax", "rcpt", "permanent"),
    (550, "5.2.1 Mailbox disabled", "rcpt", "permanent"),
    (550, "5.1.1 user unknown (checked after DATA)", "data", "permanent"),
    (550, "No such user here", "rcpt", "permanent"),  # RFC 5321: 550 at RCPT names the mailbox
    (551, "User not local", "rcpt", "permanent"),
    # Policy and content: failed, never suppressed.
    (550, "5.7.1 Message rejected as spam", "rcpt", "policy"),
    (554, "5.7.1 Service unavailable; client host blocked using zen.spamhaus.org", "rcpt", "policy"),
    (550, "5.7.26 Unauthenticated email is not accepted due to the sender's DMARC policy", "data", "policy"),
    (554, "5.7.9 Message not accepted for policy reasons", "data", "policy"),
    (550, "Rejected by policy", "rcpt", "policy"),  # no enhanced code: the words decide
    (550, "Your IP is on our block list", "rcpt", "policy"),
    (550, "Message looks like SPAM", "data", "policy"),
    (554, "Transaction failed", "data", "rejected"),
    (550, "Message refused", "data", "rejected"),  # at DATA: the message, not the mailbox
    (552, "5.3.4 Message size exceeds fixed limit", "data", "rejected"),
    (550, "5.1.8 Bad sender's system address", "rcpt", "rejected"),  # about our sender
])
def test_classify_5xx(code, text, stage, expected):
    error = classify_smtp_reply(code, text, stage=stage)
    assert not error.temporary
    assert error.error_class == expected
    assert str(error) == f"{code} {text}"


@pytest.mark.parametrize("code, text", [(552, "5.2.2 Mailbox full"), (552, "Requested mail action aborted: exceeded "
                                                                          "storage allocation"),
                                        (451, "4.7.1 Greylisted, try again"), (421, "4.4.2 closing")])
def test_mailbox_full_and_4xx_are_retried(code, text):
    error = classify_smtp_reply(code, text)
    assert error.temporary and error.error_class in (None, "temporary")


def test_550_571_at_rcpt_fails_without_suppressing_and_the_next_issue_arrives(mailer, smtp_server, db):
    make_audience(mailer, 3)
    blocked = address(1)
    smtp_server.handler.rcpt_reply = lambda a: "550 5.7.1 Message rejected as spam" if a == blocked else None
    make_newsletter(mailer)
    result = mailer.drain()
    assert (result.sent, result.failed) == (2, 1)
    failed = db.execute(sa.select(Delivery.status, Delivery.error_class, Delivery.last_error, Contact.email)
                        .join(Contact, Contact.id == Delivery.contact_id).where(Delivery.status == "failed"))
    assert [tuple(f) for f in failed] == [("failed", "policy", "550 5.7.1 Message rejected as spam", blocked)]
    assert db.scalar(sa.select(sa.func.count()).select_from(Suppression)) == 0

    # The block is lifted (the sender fixed its reputation): the next issue reaches them.
    smtp_server.handler.rcpt_reply = lambda a: None
    second = make_newsletter(mailer, subject="April for {{ contact.first_name }}")
    assert mailer.drain().sent == 3
    assert db.scalar(sa.select(sa.func.count()).select_from(Delivery)
                     .where(Delivery.ref_id == second, Delivery.kind == "newsletter", Delivery.status == "sent")) == 3
    to_blocked = [r.message["Subject"] for r in smtp_server.received if r.rcpt_tos == [blocked]]
    assert len(to_blocked) == 1 and to_blocked[0].startswith("April for ")
