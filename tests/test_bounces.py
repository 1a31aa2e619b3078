"""Bounce and complaint webhook: token checks, the generic JSON shape, Amazon SES via SNS."""
from __future__ import annotations

import json
import logging
import types

import pytest
import sqlalchemy as sa

from mailer.audience import consent, contacts
from mailer.delivery import outbox
from mailer.staff import users
from mailer.db import session_scope, utcnow
from mailer.models import ApiToken, ConsentEvent, Contact, Delivery, Subscription, Suppression
from mailer.delivery import bounces
from tests.conftest import signup

URL = "/webhooks/bounces"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:mailer-ses-feedback"
# Not verified by mailer (see README), but present in every SNS message.
SIGNATURE = ("EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6bkkOxYDVrY0"
             "Ad8L10Hs3zH81mtnPk5uvvolIC1CXGu43obcgFxeL3khZl8IKvO61GWB6jI9b5+gLPoBc1Q=")
SIGNING_CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"


@pytest.fixture
def tokens(mailer):
    """A write token, a webhook token (what the SNS subscription URL carries), a read token,
    and a revoked write token."""
    with session_scope(mailer.sessions) as session:
        user = users.create_user(session, "ops@clinic.example", "correct horse battery staple")
        made = types.SimpleNamespace(write=users.create_token(session, user, "ses", "write"),
                                     webhook=users.create_token(session, user, "sns", "webhook"),
                                     read=users.create_token(session, user, "prometheus", "read"),
                                     revoked=users.create_token(session, user, "old", "write"))
        session.execute(sa.update(ApiToken).where(ApiToken.token_hash == users.hash_token(made.revoked))
                        .values(revoked_at=utcnow()))
    return made


def post(client, token, body, *, content_type="application/json", headers=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = dict({"Authorization": f"Bearer {token}"} if token else {}, **(headers or {}))
    return client.post(URL, data=data, content_type=content_type, headers=headers)


def suppressions(db) -> list[tuple[str, str]]:
    rows = db.execute(sa.select(Suppression.reason, Suppression.detail).order_by(Suppression.id))
    return [tuple(row) for row in rows]


def is_suppressed(mailer, address: str) -> bool:
    with mailer.read_sessions() as session:
        return contacts.is_suppressed(session, mailer.settings, address)


def active_subscriber(client, mailer, address: str) -> int:
    """Sign up and confirm, then queue a newsletter for them; returns the contact id."""
    signup(client, address)
    with mailer.read_sessions() as session:
        sub = session.scalar(sa.select(Subscription).join(Contact).where(Contact.email == address))
        token = contacts.confirm_token(mailer.settings, sub)
    assert client.get(f"/confirm/{token}").status_code == 200
    with session_scope(mailer.sessions) as session:
        outbox.enqueue(session, contact_id=sub.contact_id, kind="newsletter", list_id=sub.list_id, ref_id=1,
                       dedupe_key=f"newsletter:1:{sub.contact_id}", now=utcnow())
    return sub.contact_id


def sns_notification(message: dict) -> dict:
    """An SNS HTTP(S) delivery envelope, as Amazon SNS posts it."""
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC,
        "Message": json.dumps(message),
        "Timestamp": "2024-05-06T10:15:02.447Z",
        "SignatureVersion": "1",
        "Signature": SIGNATURE,
        "SigningCertURL": SIGNING_CERT_URL,
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn="
                          f"{TOPIC}:c9135db0-26c4-47ec-8998-413945fb5a96",
    }


MAIL = {
    "timestamp": "2024-05-06T10:14:59.000Z",
    "source": "news@clinic.example",
    "sourceArn": "arn:aws:ses:eu-west-1:123456789012:identity/clinic.example",
    "sourceIp": "192.0.2.10",
    "sendingAccountId": "123456789012",
    "messageId": "0102018f4d3a1c2e-6b0e3a4d-8a7f-4a57-9f2e-6f3d2c1b0a99-000000",
    "destination": ["gone@example.com", "full@example.net"],
    "headersTruncated": False,
    "commonHeaders": {"from": ["Spine Clinic <news@clinic.example>"], "to": ["gone@example.com"],
                      "messageId": "<41.a1b2c3@clinic.example>", "subject": "Spine Health, May"},
}


def ses_bounce(bounce_type: str, recipients: list[dict], sub_type: str = "General") -> dict:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": sub_type,
            "bouncedRecipients": recipients,
            "timestamp": "2024-05-06T10:15:01.873Z",
            "feedbackId": "0102018f4d3a2b11-7c9d2f6e-1f5b-4c83-b1e0-3a2f5d6c7b8a-000000",
            "remoteMtaIp": "198.51.100.25",
            "reportingMTA": "dsn; a27-33.smtp-out.eu-west-1.amazonses.com",
        },
        "mail": MAIL,
    }


def ses_complaint(address: str) -> dict:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "feedbackId": "0102018f4d3a9f00-2e8f1a7b-5c4d-4e3f-a2b1-9c8d7e6f5a4b-000000",
            "complaintSubType": None,
            "complainedRecipients": [{"emailAddress": address}],
            "timestamp": "2024-05-06T11:02:44.000Z",
            "userAgent": "Yahoo!-Mail-Feedback/2.0",
            "complaintFeedbackType": "abuse",
            "arrivalDate": "2024-05-06T11:02:40.000Z",
        },
        "mail": dict(MAIL, destination=[address]),
    }


# Authentication ---------------------------------------------------------------------

def test_webhook_needs_a_live_write_token(client, tokens, db):
    bounce = {"type": "bounce", "email": "gone@example.com"}
    for token in (None, "mlr_not-a-real-token", tokens.revoked):
        answer = post(client, token, bounce)
        assert answer.status_code == 401, token
        assert answer.json == {"error": {"code": "unauthorized", "message": "A valid API token is required.",
                                         "field": "token"}}
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    read_only = post(client, tokens.read, bounce)
    assert read_only.status_code == 403
    assert read_only.json["error"]["code"] == "forbidden"
    assert post(client, None, bounce, headers={"Authorization": f"Basic {tokens.write}"}).status_code == 401
    assert suppressions(db) == []
    assert db.scalars(sa.select(ApiToken.last_used_at).where(ApiToken.scope == "write")) == [None, None]


def test_only_a_webhook_token_may_travel_in_the_url(client, tokens, db):
    """A URL ends up in proxy logs: ?token= takes the webhook scope only; the header takes write too."""
    hook = tokens.webhook
    bounce = {"type": "bounce", "email": "gone@example.com"}
    refused = client.post(f"{URL}?token={tokens.write}", json=bounce)
    assert refused.status_code == 403
    assert refused.json == {"error": {
        "code": "forbidden", "field": "token",
        "message": "Only a webhook-scope token may be sent as ?token= (URLs end up in logs). Send this token in "
                   "the Authorization header, or create a token with scope webhook for the URL."}}
    assert suppressions(db) == []
    assert db.scalars(sa.select(ApiToken.last_used_at).where(ApiToken.scope == "write")) == [None, None]
    assert client.post(f"{URL}?token={tokens.read}", json=bounce).status_code == 403
    assert client.post(f"{URL}?token={tokens.revoked}", json=bounce).status_code == 401

    answer = client.post(f"{URL}?token={hook}", json=bounce)
    assert answer.status_code == 200 and len(suppressions(db)) == 1
    used = db.scalar(sa.select(ApiToken.last_used_at).where(ApiToken.token_hash == users.hash_token(hook)))
    assert used is not None and (utcnow() - used).total_seconds() < 60
    # In the Authorization header a write token keeps working.
    assert post(client, tokens.write, bounce).status_code == 200


def test_a_webhook_token_works_here_and_nowhere_else(client, mailer, db):
    with session_scope(mailer.sessions) as session:
        user = users.create_user(session, "ops@clinic.example", "correct horse battery staple")
        hook = users.create_token(session, user, "sns", "webhook")
    answer = client.post(f"{URL}?token={hook}", json={"type": "bounce", "email": "gone@example.com"})
    assert answer.status_code == 200 and len(suppressions(db)) == 1
    bearer = {"Authorization": f"Bearer {hook}"}
    for path in ("/api/v1/newsletters", "/api/v1/contacts", "/metrics"):
        refused = client.get(path, headers=bearer)
        assert refused.status_code == 403, path
        assert refused.json["error"]["message"] == "This token's scope (webhook) does not allow this.", path


# The generic shape -------------------------------------------------------------------------

def test_permanent_bounce_suppresses_and_a_later_signup_queues_nothing(client, mailer, tokens, db):
    answer = post(client, tokens.write, {"type": "bounce", "email": " Gone@Example.com ", "bounce_type": "permanent",
                                         "detail": "550 5.1.1 <gone@example.com>: mailbox unknown"})
    assert answer.status_code == 200
    assert answer.json == {"suppressed": 1, "unsubscribed": 0, "ignored": 0}
    # The detail is kept, but not the address: suppressions hold only a keyed hash.
    assert suppressions(db) == [("hard_bounce", "550 5.1.1 <address>: mailbox unknown")]
    assert is_suppressed(mailer, "gone@example.com")

    signup(client, "gone@example.com")
    signup(client, "here@example.com")
    queued_for = db.scalars(sa.select(Contact.email).join(Delivery, Delivery.contact_id == Contact.id))
    assert queued_for == ["here@example.com"]


def test_bounce_type_defaults_to_permanent_and_repeats_answer_the_same(client, tokens, db):
    for _ in range(2):
        answer = post(client, tokens.write, {"type": "bounce", "email": "gone@example.com"})
        assert answer.json == {"suppressed": 1, "unsubscribed": 0, "ignored": 0}
    assert suppressions(db) == [("hard_bounce", "")]


def test_complaint_suppresses_unsubscribes_and_cancels_queued_mail(client, mailer, tokens, db):
    contact_id = active_subscriber(client, mailer, "ada@example.com")
    answer = post(client, tokens.write, {"type": "complaint", "email": "ada@example.com", "detail": "marked as spam"})
    assert answer.json == {"suppressed": 1, "unsubscribed": 1, "ignored": 0}

    assert suppressions(db) == [("complaint", "marked as spam")]
    assert db.scalars(sa.select(Subscription.status)) == ["unsubscribed"]
    assert set(db.scalars(sa.select(Delivery.status).where(Delivery.contact_id == contact_id))) == {"cancelled"}
    events = db.scalars(sa.select(ConsentEvent).where(ConsentEvent.contact_id == contact_id).order_by(ConsentEvent.id))
    assert [e.action for e in events] == ["requested", "confirmed", "withdrawn"]
    assert (events[-1].source_url, events[-1].note) == ("bounce webhook", "spam complaint (webhook): marked as spam")
    with mailer.read_sessions() as session:
        assert consent.verify_chain(session).intact


def test_transient_bounce_is_acknowledged_and_recorded_nowhere(client, mailer, tokens, db):
    active_subscriber(client, mailer, "ada@example.com")
    answer = post(client, tokens.write, {"type": "bounce", "email": "ada@example.com", "bounce_type": "transient",
                                         "detail": "452 4.2.2 mailbox full"})
    assert answer.json == {"suppressed": 0, "unsubscribed": 0, "ignored": 1}
    assert suppressions(db) == []
    assert db.scalars(sa.select(Subscription.status)) == ["active"]
    assert "cancelled" not in db.scalars(sa.select(Delivery.status))


def test_a_list_with_one_invalid_address_applies_the_rest(client, mailer, tokens, db):
    answer = post(client, tokens.write, [
        {"type": "bounce", "email": "not an address"},
        {"type": "bounce", "email": "gone@example.com", "detail": "no such user"},
        {"type": "complaint", "email": "angry@example.org"},
        {"type": "bounce", "email": ""},
    ])
    assert answer.status_code == 200
    assert answer.json == {"suppressed": 2, "unsubscribed": 0, "ignored": 2}
    assert sorted(suppressions(db)) == [("complaint", ""), ("hard_bounce", "no such user")]
    assert is_suppressed(mailer, "angry@example.org")


def test_malformed_bodies_are_400_and_change_nothing(client, tokens, db):
    cases = [
        (b"{not json", "body"),
        (b"\xff\xfe\x00garbage", "body"),
        (b"[" * 100_000 + b"]" * 100_000, "body"),
        (b'"bounce"', "body"),
        (b"[1, 2]", "[0]"),
        (json.dumps({"email": "a@example.com"}), "type"),
        (json.dumps({"type": "spam", "email": "a@example.com"}), "type"),
        (json.dumps({"type": "bounce", "email": ["a@example.com"]}), "email"),
        (json.dumps({"type": "bounce", "email": "a@example.com", "bounce_type": "soft"}), "bounce_type"),
        (json.dumps({"type": "bounce", "email": "a@example.com", "detail": {"code": 550}}), "detail"),
        # Nothing is applied when a later item is malformed.
        (json.dumps([{"type": "bounce", "email": "a@example.com"}, {"type": "bounce"}]), "[1].email"),
        (json.dumps({"Type": "Notification", "TopicArn": TOPIC}), "Message"),
        (json.dumps({"Type": "Surprise", "TopicArn": TOPIC}), "Type"),
        (json.dumps(sns_notification({"notificationType": "Bounce", "bounce": "gone"})), "bounce"),
        (json.dumps(sns_notification({"notificationType": "Complaint", "complaint": {}})),
         "complaint.complainedRecipients"),
    ]
    for body, field in cases:
        answer = post(client, tokens.write, body)
        assert answer.status_code == 400, body[:60]
        assert answer.json["error"]["code"] == "invalid"
        assert answer.json["error"]["field"] == field, body[:60]
    assert suppressions(db) == []


# Amazon SES via SNS ----------------------------------------------------------------------------

def test_ses_permanent_bounce_via_sns_suppresses_every_recipient(client, mailer, tokens, db):
    message = ses_bounce("Permanent", [
        {"emailAddress": "gone@example.com", "action": "failed", "status": "5.1.1",
         "diagnosticCode": "smtp; 550 5.1.1 <gone@example.com>: Recipient address rejected: User unknown"},
        {"emailAddress": "Old Friend <old@example.net>", "action": "failed", "status": "5.1.1"},
    ])
    answer = post(client, tokens.write, sns_notification(message), content_type="text/plain; charset=UTF-8",
                  headers={"x-amz-sns-message-type": "Notification", "x-amz-sns-topic-arn": TOPIC})
    assert answer.status_code == 200
    assert answer.json == {"suppressed": 2, "unsubscribed": 0, "ignored": 0}
    assert suppressions(db) == [
        ("hard_bounce", "SES Permanent bounce (General): smtp; 550 5.1.1 <address>: "
                        "Recipient address rejected: User unknown"),
        ("hard_bounce", "SES Permanent bounce (General)"),
    ]
    assert is_suppressed(mailer, "gone@example.com") and is_suppressed(mailer, "old@example.net")


def test_ses_permanent_policy_or_content_refusals_suppress_nobody(client, mailer, tokens, db):
    """A permanent bounce that refuses the message or our sending (5.7.x, spam, DMARC,
    SES's ContentRejected) is not about the mailbox: nobody goes on the suppression list."""
    message = ses_bounce("Permanent", [
        {"emailAddress": "a@example.com", "action": "failed", "status": "5.7.1",
         "diagnosticCode": "smtp; 550 5.7.1 Message rejected as spam"},
        {"emailAddress": "b@example.com", "action": "failed", "status": "5.0.0",
         "diagnosticCode": "smtp; 550 Rejected by DMARC policy"},
    ])
    answer = post(client, tokens.write, sns_notification(message))
    assert answer.json == {"suppressed": 0, "unsubscribed": 0, "ignored": 2}
    rejected = ses_bounce("Permanent", [{"emailAddress": "c@example.com", "action": "failed", "status": "5.3.0",
                                         "diagnosticCode": "smtp; 554 Content rejected"}], "ContentRejected")
    assert post(client, tokens.write, sns_notification(rejected)).json["ignored"] == 1
    assert suppressions(db) == []
    assert not any(is_suppressed(mailer, a) for a in ("a@example.com", "b@example.com", "c@example.com"))


def test_ses_transient_and_undetermined_bounces_are_ignored(client, tokens, db):
    for bounce_type, sub_type in (("Transient", "MailboxFull"), ("Undetermined", "Undetermined")):
        message = ses_bounce(bounce_type, [{"emailAddress": "full@example.net", "action": "delayed",
                                            "status": "4.2.2", "diagnosticCode": "smtp; 452 4.2.2 Mailbox full"}],
                             sub_type)
        answer = client.post(f"{URL}?token={tokens.webhook}", data=json.dumps(sns_notification(message)),
                             content_type="text/plain; charset=UTF-8")
        assert answer.json == {"suppressed": 0, "unsubscribed": 0, "ignored": 1}
    assert suppressions(db) == []


def test_ses_complaint_via_sns_with_query_token_unsubscribes(client, mailer, tokens, db):
    contact_id = active_subscriber(client, mailer, "ada@example.com")
    envelope = sns_notification(ses_complaint("ada@example.com"))
    answer = client.post(f"{URL}?token={tokens.webhook}", data=json.dumps(envelope),
                         content_type="text/plain; charset=UTF-8", headers={"x-amz-sns-message-type": "Notification"})
    assert answer.json == {"suppressed": 1, "unsubscribed": 1, "ignored": 0}
    assert suppressions(db) == [("complaint", "SES complaint, feedback type: abuse")]
    assert db.scalars(sa.select(Subscription.status)) == ["unsubscribed"]
    assert set(db.scalars(sa.select(Delivery.status).where(Delivery.contact_id == contact_id))) == {"cancelled"}
    withdrawn = db.scalar(sa.select(ConsentEvent).where(ConsentEvent.action == "withdrawn"))
    assert withdrawn.note == "spam complaint (Amazon SES): SES complaint, feedback type: abuse"


def test_ses_raw_message_delivery_and_other_event_types(client, tokens, db):
    # With "raw message delivery" SNS posts the SES notification without its envelope.
    answer = post(client, tokens.write, ses_complaint("angry@example.org"))
    assert answer.json == {"suppressed": 1, "unsubscribed": 0, "ignored": 0}
    delivery = {"notificationType": "Delivery", "mail": MAIL,
                "delivery": {"timestamp": "2024-05-06T10:15:01.000Z", "recipients": ["here@example.com"],
                             "processingTimeMillis": 1203, "smtpResponse": "250 2.0.0 OK"}}
    assert post(client, tokens.write, sns_notification(delivery)).json == {"suppressed": 0, "unsubscribed": 0,
                                                                           "ignored": 1}
    hello = dict(sns_notification({}), Message="Hello from the SNS console")
    assert post(client, tokens.write, hello).json == {"suppressed": 0, "unsubscribed": 0, "ignored": 1}
    assert suppressions(db) == [("complaint", "SES complaint, feedback type: abuse")]


def test_sns_subscription_confirmation_asks_the_operator(client, tokens, db, caplog):
    subscribe_url = ("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn="
                     f"{TOPIC}&Token=2336412f37fb687f5d51e6e2425dacbba4d0a12ce08b2db1c2f5e9e4ac7d9d")
    confirmation = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f5d51e6e2425dacbba4d0a12ce08b2db1c2f5e9e4ac7d9d",
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.\n"
                   "To confirm the subscription, visit the SubscribeURL included in this message.",
        "SubscribeURL": subscribe_url,
        "Timestamp": "2024-05-06T09:58:11.532Z",
        "SignatureVersion": "1",
        "Signature": SIGNATURE,
        "SigningCertURL": SIGNING_CERT_URL,
    }
    with caplog.at_level(logging.WARNING, logger="mailer.web.api.hooks"):
        answer = client.post(f"{URL}?token={tokens.webhook}", data=json.dumps(confirmation),
                             content_type="text/plain; charset=UTF-8",
                             headers={"x-amz-sns-message-type": "SubscriptionConfirmation"})
    assert answer.status_code == 200
    assert answer.json["status"] == "confirmation_required"
    assert answer.json["subscribe_url"] == subscribe_url
    assert "Open the SubscribeURL once" in answer.json["message"]
    assert subscribe_url in caplog.text
    assert suppressions(db) == []
    # A confirmation pointing anywhere but Amazon SNS is refused, so no one is sent there.
    forged = dict(confirmation, SubscribeURL="https://sns.eu-west-1.amazonaws.com.evil.example/?Action=x")
    refused = post(client, tokens.write, forged)
    assert refused.status_code == 400 and refused.json["error"]["field"] == "SubscribeURL"



@pytest.mark.parametrize("subscribe_url", [
    "https://sns.us-east-1.amazonaws.com\\@evil.example/",  # a browser reads the backslash as /
    "https://user:pw@sns.us-east-1.amazonaws.com/",
    "https://evil.example\\.sns.us-east-1.amazonaws.com/",  # a browser goes to evil.example
    "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription\r\nFAKE LOG LINE",
    "https://sns.us-east-1.amazonaws.com/?Action=\x1b[2JConfirmSubscription",
    "https://sns.us-east-1.amazonaws.com/ evil",
    "http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
    "https://sns.us-east-1.amazonaws.com:8443/?Action=ConfirmSubscription",
    "https://sns.us-east-1.amazonaws.com./?Action=ConfirmSubscription",
    "https://sns.us-east-1.amazonaws.com.evil.example/?Action=ConfirmSubscription",
    "javascript:alert(1)//sns.us-east-1.amazonaws.com",
    "https://",
    None,
], ids=["backslash-at", "userinfo", "backslash-host", "crlf", "escape", "space", "http", "port", "trailing-dot",
        "suffix", "javascript", "no-host", "missing"])
def test_a_subscribe_url_a_browser_could_read_elsewhere_is_refused_and_not_logged(client, tokens, caplog,
                                                                                   subscribe_url):
    confirmation = {"Type": "SubscriptionConfirmation", "TopicArn": TOPIC, "Message": "Confirm it.",
                    "Token": "2336412f", "SubscribeURL": subscribe_url}
    with caplog.at_level(logging.INFO):
        refused = client.post(f"{URL}?token={tokens.webhook}", data=json.dumps(confirmation),
                              content_type="text/plain; charset=UTF-8")
    assert refused.status_code == 400
    assert refused.json == {"error": {"code": "invalid", "field": "SubscribeURL",
                                      "message": "SubscribeURL is not an Amazon SNS address."}}
    assert [r.getMessage() for r in caplog.records] == [
        "SNS subscription confirmation refused: its SubscribeURL is not an Amazon SNS address"]


@pytest.mark.parametrize("subscribe_url, shown", [
    ("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:eu-west-1:1:t&Token=ab",
     "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:eu-west-1:1:t&Token=ab"),
    ("HTTPS://SNS.cn-north-1.AmazonAWS.com.cn:443/?Action=ConfirmSubscription&Token=ab",
     "https://sns.cn-north-1.amazonaws.com.cn/?Action=ConfirmSubscription&Token=ab"),
])
def test_an_amazon_subscribe_url_is_shown_as_a_browser_reads_it(subscribe_url, shown):
    control = bounces.parse_sns_envelope({"Type": "SubscriptionConfirmation", "TopicArn": TOPIC,
                                          "SubscribeURL": subscribe_url})
    assert control.subscribe_url == shown


def test_request_text_reaches_the_log_escaped_on_one_line(client, tokens, caplog):
    """A TopicArn is the sender's text: it must not forge a log line or drive the terminal."""
    forged = f"{TOPIC}\r\nFAKE LOG LINE \x1b[2J"
    bodies = [sns_notification(["not an SES notification"]), {"Type": "UnsubscribeConfirmation"},
              {"Type": "SubscriptionConfirmation",
               "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=ab"}]
    with caplog.at_level(logging.INFO):
        for body in bodies:
            answer = client.post(f"{URL}?token={tokens.webhook}", data=json.dumps(dict(body, TopicArn=forged)),
                                 content_type="text/plain; charset=UTF-8")
            assert answer.status_code == 200
    messages = [record.getMessage() for record in caplog.records]
    for message in messages + caplog.text.splitlines():
        assert "\r" not in message and "\n" not in message and "\x1b" not in message
        assert not message.startswith("FAKE LOG LINE")
    naming_the_topic = [message for message in messages if TOPIC in message]
    assert len(naming_the_topic) == 3  # the ignored notification, the unsubscription, the confirmation
    assert all(f"{TOPIC}\\r\\nFAKE LOG LINE \\x1b[2J" in message for message in naming_the_topic), messages

# Pure parts --------------------------------------------------------------------------------

def test_detail_masks_addresses_and_is_bounded():
    assert bounces.clean_detail("550 <a.b+c@example.com> and x@y.example said\nno") == \
        "550 <address> and <address> said no"
    assert len(bounces.clean_detail("x" * 5000)) == bounces.DETAIL_MAX
    assert bounces.clean_detail(None) == ""


def test_ses_recipient_without_address_is_ignored():
    notices = bounces.parse_ses_notification(ses_bounce("Permanent", [{"status": "5.1.1"}, "junk"]))
    assert [(n.action, n.address) for n in notices] == [(bounces.Action.HARD_BOUNCE, None)] * 2
