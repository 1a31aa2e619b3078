"""Signup answers give nothing away; bad input is refused clearly and loses nothing."""
from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa

from mailer.audience import contacts
from mailer.audience.consent import RequestContext
from mailer.db import session_scope, utcnow
from mailer.models import Contact, Delivery, Subscription
from tests.conftest import signup


def _deliveries(db):
    return db.scalar(sa.select(sa.func.count()).select_from(Delivery))


def test_answer_is_identical_for_new_pending_active_and_unsubscribed_addresses(client, mailer, db):
    for address in ("pending@example.com", "active@example.com", "gone@example.com"):
        signup(client, address)
    with session_scope(mailer.sessions) as session:
        for address, status in (("active@example.com", "active"), ("gone@example.com", "unsubscribed")):
            contact_id = session.scalar(sa.select(Contact.id).where(Contact.email == address))
            session.execute(sa.update(Subscription).where(Subscription.contact_id == contact_id).values(status=status))

    answers = [signup(client, address) for address in
               ("new@example.com", "pending@example.com", "active@example.com", "gone@example.com")]
    assert {a.status_code for a in answers} == {200}
    assert len({a.data for a in answers}) == 1
    assert len({tuple(sorted((k, v) for k, v in a.headers if k.lower() != "date")) for a in answers}) == 1

    json_answers = [client.post("/subscribe", json={"email": address, "consent": True})
                    for address in ("new2@example.com", "pending@example.com", "active@example.com")]
    assert {a.status_code for a in json_answers} == {200}
    assert len({a.data for a in json_answers}) == 1
    assert json_answers[0].json == {"status": "pending_confirmation", "message": json_answers[0].json["message"]}


def test_active_subscriber_gets_no_second_mail_and_pending_one_at_most_one_resend_per_hour(mailer, db):
    settings = mailer.settings
    start = utcnow()

    def sign(address, at):
        with session_scope(mailer.sessions) as session:
            contacts.subscribe(session, settings, email=address, consent_given=True, context=RequestContext(), now=at)

    sign("pending@example.com", start)
    sign("pending@example.com", start + dt.timedelta(minutes=59))
    assert _deliveries(db) == 1
    sign("pending@example.com", start + dt.timedelta(minutes=61))
    sign("pending@example.com", start + dt.timedelta(minutes=62))
    assert _deliveries(db) == 2

    sign("active@example.com", start)
    db.write(sa.update(Subscription).where(Subscription.contact_id == db.scalar(
        sa.select(Contact.id).where(Contact.email == "active@example.com"))).values(status="active"))
    sign("active@example.com", start + dt.timedelta(hours=5))
    assert _deliveries(db) == 3  # no new mail for the active subscriber


def test_header_injection_in_name_adds_no_header_and_no_recipient(client, mailer, smtp_server):
    name = "Eve\r\nBcc: victim@example.net\r\nSubject: pwned"
    assert signup(client, "eve@example.com", name).status_code == 200
    mailer.drain()
    assert len(smtp_server.received) == 1
    received = smtp_server.received[0]
    assert received.rcpt_tos == ["eve@example.com"]
    msg = received.message
    assert msg["Bcc"] is None
    assert msg.get_all("Subject") == ["Please confirm your subscription to Monthly newsletter"]
    assert msg["To"] == '"Eve Bcc: victim@example.net Subject: pwned" <eve@example.com>'
    raw_headers = received.data.split(b"\r\n\r\n", 1)[0]
    assert b"\r\nBcc:" not in raw_headers


def test_name_is_stripped_of_control_characters_and_limited():
    assert contacts.clean_name("  Ada\x00\x07 \u200bLovelace\t ") == "Ada Lovelace"
    assert len(contacts.clean_name("x" * 500)) == 100


def test_markup_in_name_is_escaped_in_the_html_mail(client, mailer, smtp_server):
    signup(client, "mallory@example.com", "<script>alert(1)</script>")
    mailer.drain()
    html = smtp_server.received[0].message.get_body(preferencelist=("html",)).get_content()
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_malformed_address_is_refused_with_a_clear_message_and_nothing_stored(client, db):
    for bad in ("not-an-address", "a@b", "ada@example.com\r\nBcc: x@example.net", "", "a" * 300 + "@example.com"):
        response = signup(client, bad)
        assert response.status_code == 400, bad
        assert '<p class="error" role="alert"' in response.text
    assert "That email address is not valid" in signup(client, "not-an-address").text
    json_answer = signup_json = client.post("/subscribe", json={"email": "nope", "consent": True})
    assert json_answer.status_code == 400
    assert signup_json.json["error"]["field"] == "email"
    assert db.scalar(sa.select(sa.func.count()).select_from(Contact)) == 0


def test_consent_must_be_given(client, db):
    response = signup(client, consent="")
    assert response.status_code == 400
    assert "Please tick the box" in response.text
    assert "Step 2 of 2" in response.text
    assert db.scalar(sa.select(sa.func.count()).select_from(Contact)) == 0


def test_unknown_list_or_wording_version_is_refused(client):
    assert client.post("/subscribe", json={"email": "a@example.com", "consent": True, "lists": ["vip"]}).status_code == 400
    answer = client.post("/subscribe", json={"email": "a@example.com", "consent": True, "consent_version": 99})
    assert answer.status_code == 400
    assert answer.json["error"]["field"] == "consent_version"


def test_non_object_json_is_a_400_not_a_500(client):
    assert client.post("/subscribe", json=["a@example.com"]).status_code == 400
    assert client.post("/subscribe", json={"email": 5, "consent": True}).status_code == 400


def test_honeypot_gets_the_normal_answer_and_stores_nothing(client, db):
    normal = signup(client, "human@example.com")
    bot = signup(client, "bot@example.com", website="http://spam.example")
    assert bot.status_code == normal.status_code == 200
    assert bot.data == normal.data
    assert db.scalars(sa.select(Contact.email)) == ["human@example.com"]


def test_rate_limit_per_ip(app, client, db):
    mailer = app.extensions["mailer"]
    mailer.settings = mailer.base_settings = dataclasses.replace(mailer.settings, signup_rate_limit=3)
    codes = [signup(client, f"p{i}@example.com").status_code for i in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert "Too many signups" in signup(client, "late@example.com").text
    assert db.scalar(sa.select(sa.func.count()).select_from(Contact)) == 3


def test_two_step_form_without_javascript(client):
    page = client.get("/subscribe")
    assert "Step 1 of 2" in page.text
    step2 = client.post("/subscribe", data={"email": " Ada@Example.com ", "step": "1"})
    assert step2.status_code == 200
    assert "Step 2 of 2" in step2.text
    assert 'Signing up as <strong id="email-shown">ada@example.com</strong>' in step2.text
    assert "Yes, send me the free monthly newsletter by email." in step2.text
    bad = client.post("/subscribe", data={"email": "nope", "step": "1"})
    assert bad.status_code == 400 and "Step 1 of 2" in bad.text


def test_suppressed_address_gets_the_same_answer_and_no_mail(client, mailer, db):
    from mailer.models import Suppression

    db.write(sa.insert(Suppression).values(email_hash=contacts.email_hash(mailer.settings, "bounced@example.com"),
                                           reason="hard_bounce", detail="550 no such user", created_at=utcnow()))
    assert signup(client, "bounced@example.com").data == signup(client, "fresh@example.com").data
    assert db.scalars(sa.select(Contact.email)) == ["fresh@example.com"]


def test_signup_for_a_list_removed_after_the_form_was_sent_is_dropped_not_stuck(client, mailer, db, caplog):
    from mailer.models import SignupRequest

    signup(client, "a@example.com", process=False)
    db.write(sa.update(SignupRequest).values(lists="gone"))
    signup(client, "b@example.com", process=False)
    assert mailer.process_signups() == 2
    assert db.scalars(sa.select(Contact.email)) == ["b@example.com"]
    assert db.scalar(sa.select(sa.func.count()).select_from(SignupRequest)) == 0
    assert "dropping signup request 1: Unknown mailing list." in caplog.text
