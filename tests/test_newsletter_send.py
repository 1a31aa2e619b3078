"""A newsletter issue reaches each active subscriber once, personalised, and nobody else."""
from __future__ import annotations

import sqlalchemy as sa

from mailer.campaigns import newsletters
from mailer.db import session_scope, utcnow
from mailer.models import Contact, Delivery, Subscription
from tests.audience import make_audience, make_newsletter


def test_issue_goes_to_active_subscribers_only_once_each(mailer, smtp_server, db):
    make_audience(mailer, 6)
    # reader 3 pending, reader 4 unsubscribed, reader 5 suppressed
    for i, status in ((3, "pending"), (4, "unsubscribed")):
        db.write(sa.update(Subscription).where(Subscription.contact_id == db.scalar(
            sa.select(Contact.id).where(Contact.email == f"reader{i:07d}@example.com"))).values(status=status))
    from mailer.delivery import suppression

    with session_scope(mailer.sessions) as session:
        suppression.suppress_address(session, mailer.settings, "reader0000005@example.com", reason="hard_bounce",
                                     now=utcnow())
    newsletter_id = make_newsletter(mailer, enqueue=False)
    with session_scope(mailer.sessions) as session:
        assert newsletters.count_audience(session, newsletter_id) == 3
        assert newsletters.enqueue_audience(session, newsletter_id, now=utcnow()) == 3
        assert newsletters.enqueue_audience(session, newsletter_id, now=utcnow()) == 0  # re-run adds nobody

    assert mailer.drain().sent == 3
    got = sorted(r.rcpt_tos[0] for r in smtp_server.received)
    assert got == [f"reader{i:07d}@example.com" for i in range(3)]
    one = [r for r in smtp_server.received if r.rcpt_tos == ["reader0000001@example.com"]][0].message
    assert one["Subject"] == "Spine Health monthly for Reader1"
    assert one["To"] == "Reader1 Test <reader0000001@example.com>"
    assert one["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = one.get_body(preferencelist=("plain",)).get_content().replace("\r\n", "\n")
    html = one.get_body(preferencelist=("html",)).get_content()
    assert text.startswith("Hello Reader1,\n")
    assert "Unsubscribe: https://news.example.org/unsubscribe/" in text
    assert "<strong" in html and "three habits</strong>" in html
    assert "Hello Reader1," in html
    assert '<a href="https://clinic.example/blog/habits"' in html
    assert 'style="' in html and "<style" not in html  # CSS inlined once, per issue
    assert 'href="https://news.example.org/unsubscribe/' in html
    assert "MLRTAG" not in html and "MLRTAG" not in text


def test_names_are_escaped_in_html_and_plain_in_text(mailer, smtp_server, db):
    make_audience(mailer, 1)
    db.write(sa.update(Contact).values(name="<b>Bo</b> O'Neil"))
    make_newsletter(mailer)
    mailer.drain()
    msg = smtp_server.received[0].message
    assert "Hello <b>Bo</b>," in msg.get_body(preferencelist=("plain",)).get_content()
    html = msg.get_body(preferencelist=("html",)).get_content()
    assert "Hello &lt;b&gt;Bo&lt;/b&gt;," in html


def test_script_in_body_is_removed(mailer, smtp_server):
    make_audience(mailer, 1)
    make_newsletter(mailer, body='Hi\n\n<script>alert(1)</script><p onclick="x()">click</p>')
    mailer.drain()
    html = smtp_server.received[0].message.get_body(preferencelist=("html",)).get_content()
    assert "<script" not in html and "onclick" not in html
    assert "click</p>" in html


def test_unknown_variable_fails_the_rows_instead_of_sending_a_broken_mail(mailer, smtp_server, db):
    make_audience(mailer, 2)
    make_newsletter(mailer, body="Hello {{ contact.nickname }}")
    result = mailer.drain()
    assert result.failed == 2 and smtp_server.received == []
    assert "nickname" in db.scalar(sa.select(Delivery.last_error))


def test_a_confirmation_does_not_wait_behind_a_newsletters_audience(client, mailer, smtp_server, db):
    import dataclasses

    from tests.conftest import signup

    make_audience(mailer, 120)
    make_newsletter(mailer)  # 120 queued before the visitor signs up
    signup(client, email="late@example.com", name="Late")
    assert db.execute(sa.select(Delivery.kind, Delivery.priority, sa.func.count()).group_by(
        Delivery.kind, Delivery.priority).order_by(Delivery.kind)) == [("confirmation", 0, 1), ("newsletter", 1, 120)]
    with mailer.sender() as sender:  # one batch of 50: the confirmation goes in it
        sender.settings = dataclasses.replace(sender.settings, send_batch_size=50)
        sender.send_batch()
    received = [r.rcpt_tos[0] for r in smtp_server.received]
    assert len(received) == 50 and "late@example.com" in received
    assert mailer.drain().sent == 71  # and the rest of the issue goes out as before
