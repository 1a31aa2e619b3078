"""The signup form cannot flood an inbox: one signup naming many lists sends one combined
confirmation, and one address gets at most `confirmations_per_day` confirmations a day,
whatever addresses the requests come from. The visitor's answer never changes."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
import time_machine

from mailer.audience import contacts
from mailer.db import session_scope, utcnow
from mailer.models import ConsentEvent, MailingList, Subscription
from tests.conftest import links_in

BASE = "https://news.example.org"


def _lists(mailer, count: int) -> list[str]:
    with session_scope(mailer.sessions) as session:
        for i in range(count):
            contacts.ensure_list(session, f"topic-{i:02}", f"Topic {i:02}", f"Yes, send me topic {i:02}.")
    return [f"topic-{i:02}" for i in range(count)]


def _signup(client, email, lists, ip):
    return client.post("/subscribe", data={"email": email, "name": "Ann", "consent": "yes", "lists": lists},
                       environ_base={"REMOTE_ADDR": ip})


def test_one_signup_naming_22_lists_sends_one_mail_with_a_link_per_list(client, mailer, smtp_server, db):
    slugs = _lists(mailer, 22)
    assert _signup(client, "ann@example.com", slugs, "192.0.2.1").status_code == 200
    mailer.process_signups()
    assert mailer.drain().sent == 1
    assert len(smtp_server.received) == 1
    message = smtp_server.received[0].message
    assert message["Subject"] == "Please confirm your subscriptions to 22 lists"
    text = message.get_body(preferencelist=("plain",)).get_content()
    html = message.get_body(preferencelist=("html",)).get_content()
    links = [link for link in links_in(text) if "/confirm/" in link]
    assert len(set(links)) == 22
    assert all(f'href="{link}"' in html for link in links)
    assert '"Topic 00":' in text and '"Topic 21":' in text
    # Every list asked for is on record, each with its own wording.
    assert db.scalar(sa.select(sa.func.count()).select_from(ConsentEvent)) == 22

    # Each link confirms its own list, and only that one.
    page = client.get(links[5].removeprefix(BASE))
    assert "You are now subscribed to Topic 05" in page.text
    statuses = dict(db.execute(sa.select(MailingList.slug, Subscription.status).join(Subscription.mailing_list)))
    assert statuses["topic-05"] == "active" and statuses["topic-06"] == "pending"
    for link in links:
        client.get(link.removeprefix(BASE))
    assert set(db.scalars(sa.select(Subscription.status))) == {"active"}


def test_one_list_confirmation_reads_as_before(client, mailer, smtp_server):
    assert _signup(client, "bo@example.com", ["newsletter"], "192.0.2.1").status_code == 200
    mailer.process_signups()
    mailer.drain()
    message = smtp_server.received[0].message
    assert message["Subject"] == "Please confirm your subscription to Monthly newsletter"
    text = message.get_body(preferencelist=("plain",)).get_content()
    assert "Please confirm that you want to receive \"Monthly newsletter\"" in text
    assert len([link for link in links_in(text) if "/confirm/" in link]) == 1


def test_an_address_gets_at_most_three_confirmations_a_day_whatever_the_ips(client, mailer, smtp_server, db):
    slugs = _lists(mailer, 6)
    answers = [_signup(client, "cat@example.com", [slug], f"198.51.100.{i}") for i, slug in enumerate(slugs[:5])]
    # Another address is not held back by cat's cap.
    answers.append(_signup(client, "dan@example.com", [slugs[0]], "198.51.100.77"))
    # Same status and the same page for every request, capped or not: nothing to enumerate.
    assert {a.status_code for a in answers} == {200}
    assert len({a.data for a in answers}) == 1
    mailer.process_signups()
    mailer.drain()
    to_cat = [m for m in smtp_server.received if m.rcpt_tos == ["cat@example.com"]]
    assert len(to_cat) == 3
    assert len([m for m in smtp_server.received if m.rcpt_tos == ["dan@example.com"]]) == 1
    # Every request is still on record as asked for; the capped ones stay pending.
    assert db.scalar(sa.select(sa.func.count()).select_from(ConsentEvent).where(ConsentEvent.action == "requested")) == 6

    # A day later the address can be asked again.
    with time_machine.travel(utcnow() + dt.timedelta(hours=25), tick=True):
        assert _signup(client, "cat@example.com", [slugs[5]], "203.0.113.5").status_code == 200
        mailer.process_signups()
        mailer.drain()
    assert len([m for m in smtp_server.received if m.rcpt_tos == ["cat@example.com"]]) == 4
