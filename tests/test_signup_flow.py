"""A visitor subscribes, confirms from the received mail, and unsubscribes with one click."""
from __future__ import annotations

import re

import sqlalchemy as sa
from email.utils import getaddresses

from mailer.audience import consent
from mailer.db import session_scope
from mailer.models import ConsentEvent, ConsentWording, Contact, Delivery, MailingList, Subscription
from tests.conftest import links_in, signup


def test_double_opt_in_confirm_and_one_click_unsubscribe(client, mailer, smtp_server, db):
    response = signup(client, "Ada.Lovelace@Example.COM", "Ada Lovelace")
    assert response.status_code == 200
    assert "Check your inbox" in response.text

    result = mailer.drain()
    assert result.sent == 1
    assert len(smtp_server.received) == 1
    received = smtp_server.received[0]
    assert received.rcpt_tos == ["ada.lovelace@example.com"]
    assert received.mail_from == "news@clinic.example"
    msg = received.message
    assert getaddresses([msg["To"]]) == [("Ada Lovelace", "ada.lovelace@example.com")]
    assert msg["From"] == "Spine Clinic <news@clinic.example>"
    assert msg["Reply-To"] == "Spine Clinic <news@clinic.example>"
    assert msg["Subject"] == "Please confirm your subscription to Monthly newsletter"
    assert msg["Message-ID"].endswith("@clinic.example>")
    assert msg["Date"]
    assert msg["Cc"] is None and msg["Bcc"] is None
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # As a mail client reads it: literal URIs, never RFC 2047 encoded-words.
    raw_header = received.data.split(b"\r\nList-Unsubscribe: ", 1)[1].split(b"\r\n", 1)[0]
    assert raw_header.startswith(b"<https://news.example.org/unsubscribe/")
    assert b"=?" not in raw_header and b", <mailto:unsubscribe@example.com?subject=unsubscribe%20" in raw_header
    unsub_https, unsub_mailto = [part.strip(" <>") for part in msg["List-Unsubscribe"].split(",")]
    assert unsub_https.startswith("https://news.example.org/unsubscribe/")
    assert unsub_mailto.startswith("mailto:unsubscribe@example.com?subject=unsubscribe%20")

    text = msg.get_body(preferencelist=("plain",)).get_content()
    html = msg.get_body(preferencelist=("html",)).get_content()
    assert "Hello Ada," in text
    confirm_link = [link for link in links_in(text) if "/confirm/" in link][0]
    assert f'href="{confirm_link}"' in html
    assert 'style="' in html  # CSS was inlined

    page = client.get(confirm_link.removeprefix("https://news.example.org"))
    assert page.status_code == 200
    assert "Thank you! You are now subscribed to Monthly newsletter." in page.text
    assert db.scalar(sa.select(Subscription.status)) == "active"
    assert "already subscribed" in client.get(confirm_link.removeprefix("https://news.example.org")).text

    # RFC 8058: a mail client POSTs "List-Unsubscribe=One-Click" to the URL, no further click.
    one_click = client.post(unsub_https.removeprefix("https://news.example.org"),
                            data={"List-Unsubscribe": "One-Click"})
    assert one_click.status_code == 200
    assert "You will receive no more email from Monthly newsletter." in one_click.text
    assert db.scalar(sa.select(Subscription.status)) == "unsubscribed"

    actions = db.scalars(sa.select(ConsentEvent.action).order_by(ConsentEvent.id))
    assert actions == ["requested", "confirmed", "withdrawn"]
    requested = db.scalars(sa.select(ConsentEvent).order_by(ConsentEvent.id))[0]
    wording = db.scalar(sa.select(ConsentWording).where(ConsentWording.id == requested.wording_id))
    assert wording.version == 1
    assert wording.text.startswith("Yes, send me the free monthly newsletter")
    assert requested.user_agent == "pytest-browser/1.0"
    assert requested.ip == "127.0.0.1"
    with mailer.read_sessions() as session:
        assert consent.verify_chain(session).intact


def test_unsubscribe_page_shows_one_button_and_get_changes_nothing(client, mailer, smtp_server, db):
    signup(client)
    mailer.drain()
    url = smtp_server.received[0].message["List-Unsubscribe"].split(",")[0].strip(" <>")
    path = url.removeprefix("https://news.example.org")
    page = client.get(path)
    assert page.status_code == 200
    assert "Stop receiving <strong>Monthly newsletter</strong>?" in page.text
    assert page.text.count("<button") == 1
    assert db.scalar(sa.select(Subscription.status)) == "pending"


def test_unsubscribing_cancels_every_queued_message(client, mailer, smtp_server, db):
    signup(client)  # the confirmation is queued, not yet sent
    sub = db.scalar(sa.select(Subscription))
    from mailer.audience.contacts import unsubscribe_url

    path = unsubscribe_url(mailer.settings, sub.contact_id, sub.list_id).removeprefix("https://news.example.org")
    assert client.post(path).status_code == 200
    assert db.scalar(sa.select(Delivery.status)) == "cancelled"
    assert mailer.drain().sent == 0
    assert smtp_server.received == []


def test_forged_or_garbled_links_are_refused(client):
    assert client.get("/confirm/not-a-token").status_code == 404
    assert "This link is not valid" in client.get("/confirm/not-a-token").text
    assert client.post("/unsubscribe/WzEsMV0.forged").status_code == 404
    assert client.get("/unsubscribe/WzEsMV0.forged").status_code == 404


def test_preferences_link_changes_name_and_lists(client, mailer, smtp_server, db):
    from mailer.audience.contacts import ensure_list

    with session_scope(mailer.sessions) as session:
        ensure_list(session, "events", "Events and webinars", "Yes, tell me about events.")
    signup(client, "ada@example.com", "Ada")
    mailer.drain()
    text = smtp_server.received[0].message.get_body(preferencelist=("plain",)).get_content()
    client.get([l for l in links_in(text) if "/confirm/" in l][0].removeprefix("https://news.example.org"))
    html = smtp_server.received[0].message.get_body(preferencelist=("html",)).get_content()
    path = re.search(r'href="https://news\.example\.org(/preferences/[^"]+)"', html).group(1)

    page = client.get(path)
    assert page.status_code == 200 and "For ada@example.com" in page.text
    assert 'value="newsletter" checked' in page.text and 'value="events" >' in page.text
    saved = client.post(path, data={"name": "Ada L.", "lists": ["events"]})
    # The page says what was done, and only that.
    assert "Saved your name: Ada L." in saved.text
    assert "You are unsubscribed from Monthly newsletter." in saved.text
    assert "We have emailed you a link to confirm Events and webinars." in saved.text
    again = client.post(path, data={"name": "Ada L.", "lists": ["events"]})
    assert "Nothing changed" in again.text and "unsubscribed from" not in again.text
    assert "Saved your name" not in again.text and "emailed you a link" not in again.text
    statuses = dict(db.execute(sa.select(MailingList.slug, Subscription.status).join(
        Subscription, Subscription.list_id == MailingList.id)))
    assert statuses == {"newsletter": "unsubscribed", "events": "pending"}
    assert db.scalar(sa.select(Contact.name)) == "Ada L."
    mailer.drain()
    assert smtp_server.received[-1].message["Subject"] == "Please confirm your subscription to Events and webinars"
    assert client.get("/preferences/forged.token").status_code == 404
