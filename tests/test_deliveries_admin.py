"""The staff deliveries page: filters (status, kind, error text), keyset pages, the link to
each contact, login, and an audit row for every view that never holds an address."""
from __future__ import annotations

import html
import re

import pytest
import sqlalchemy as sa

from mailer.audience import contacts
from mailer.audience.consent import RequestContext
from mailer.db import session_scope, utcnow
from mailer.models import AuditLog
from mailer.web.admin import deliveries_admin

REPLIES = {"bounce@example.com": "550 5.1.1 User unknown", "grey@example.com": "451 4.7.1 Greylisted, try later"}


@pytest.fixture
def viewer(staff):
    return staff("viewer")[0]


@pytest.fixture
def outbox(mailer, smtp_server):
    """Confirmations to four people through the real SMTP server: ann and bob sent, bounce
    failed, grey deferred (delivery and contact ids 1–4 in that order)."""
    smtp_server.handler.rcpt_reply = lambda address: REPLIES.get(address)
    with session_scope(mailer.sessions) as session:
        for email in ("ann@example.com", "bounce@example.com", "grey@example.com", "bob@example.com"):
            contacts.subscribe(session, mailer.settings, email=email, consent_given=True,
                               context=RequestContext(), now=utcnow())
    mailer.drain()


def rows(page) -> list[tuple[str, ...]]:
    """The table as text: one tuple of cell texts per row."""
    body = page.text.split("<tbody>", 1)[1].split("</tbody>", 1)[0] if "<tbody>" in page.text else ""
    return [tuple(" ".join(html.unescape(re.sub(r"<[^>]+>", " ", cell)).split())
                  for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S))
            for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def audits(db) -> list[tuple[str, str]]:
    return db.execute(sa.select(AuditLog.action, AuditLog.detail).order_by(AuditLog.id))


def test_the_page_needs_a_login(client):
    answer = client.get("/admin/deliveries")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/admin/login")


def test_every_delivery_newest_first_with_its_outcome(viewer, outbox, db):
    page = viewer.get("/admin/deliveries")
    assert page.status_code == 200
    assert '<a href="/admin/deliveries" aria-current="page">Deliveries</a>' in page.text  # in the nav, marked as here
    table = rows(page)
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in table] == [
        ("4", "bob@example.com", "Subscription confirmation", "sent", "1"),
        ("3", "grey@example.com", "Subscription confirmation", "deferred", "1"),
        ("2", "bounce@example.com", "Subscription confirmation", "failed", "1"),
        ("1", "ann@example.com", "Subscription confirmation", "sent", "1")]
    assert table[0][5].startswith("sent ") and table[1][5].startswith("next ") and table[2][5] == ""
    assert table[2][6].startswith("permanent ") and "550 5.1.1 User unknown" in table[2][6]
    assert table[1][6].startswith("temporary ") and "Greylisted" in table[1][6]
    assert '<a href="/admin/contacts/2">bounce@example.com</a>' in page.text
    assert audits(db) == [("deliveries.view", "status=any kind=any error=none")]


def test_filters_by_status_kind_and_error_text(viewer, outbox, db):
    assert [r[0] for r in rows(viewer.get("/admin/deliveries?status=sent"))] == ["4", "1"]
    assert [r[0] for r in rows(viewer.get("/admin/deliveries?kind=confirmation&status=failed"))] == ["2"]
    assert rows(viewer.get("/admin/deliveries?kind=newsletter")) == []
    assert "No deliveries match." in viewer.get("/admin/deliveries?kind=newsletter").text
    found = viewer.get("/admin/deliveries?error=greyLISTED")
    assert [r[0] for r in rows(found)] == ["3"]
    assert 'value="greyLISTED"' in found.text  # the form keeps what was asked
    assert '<option value="failed" selected>' in viewer.get("/admin/deliveries?status=failed").text
    searched = viewer.get("/admin/deliveries?status=failed&error=bounce@example.com")
    assert searched.status_code == 200
    assert audits(db)[-1] == ("deliveries.view", "status=failed kind=any error=text")
    assert not any("@" in detail for _, detail in audits(db))


@pytest.mark.parametrize("query, message", [
    ("status=lost", "Choose a status from the menu."),
    ("kind=postcard", "Choose a kind of mail from the menu."),
    ("error=" + "x" * 201, "Search for at most 200 characters of error text."),
    ("before=abc", "That page link is not valid; start again from the first page."),
    ("before=-3", "That page link is not valid; start again from the first page."),
])
def test_a_filter_no_menu_offers_is_answered_400_with_a_message(viewer, outbox, query, message):
    page = viewer.get(f"/admin/deliveries?{query}")
    assert page.status_code == 400
    assert f'<p class="error" role="alert">{message}</p>' in page.text
    assert rows(page) == []


def test_next_page_walks_every_row_once(viewer, outbox, monkeypatch):
    monkeypatch.setattr(deliveries_admin, "PAGE", 3)
    seen, url, pages = [], "/admin/deliveries", 0
    while url:
        page = viewer.get(url)
        seen += [r[0] for r in rows(page)]
        pages += 1
        found = re.search(r'<a href="([^"]+)">Next page</a>', page.text)
        url = found.group(1).replace("&amp;", "&") if found else None
        assert ("First page" in page.text) == (pages > 1)
    assert (seen, pages) == (["4", "3", "2", "1"], 2)
    first = viewer.get("/admin/deliveries?status=sent&error=&kind=")
    assert rows(first) and "Next page" not in first.text
    filtered = viewer.get("/admin/deliveries?error=5")  # 550 and 451: two rows, keeps the filter on the link
    assert [r[0] for r in rows(filtered)] == ["3", "2"]
    monkeypatch.setattr(deliveries_admin, "PAGE", 1)
    link = re.search(r'<a href="([^"]+)">Next page</a>', viewer.get("/admin/deliveries?error=5").text).group(1)
    assert link == "/admin/deliveries?error=5&amp;before=3"
    assert [r[0] for r in rows(viewer.get(link.replace("&amp;", "&")))] == ["2"]
