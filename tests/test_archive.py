"""The public archive: only public, sent issues, newest first, shown with no reader in them."""
from __future__ import annotations

import datetime as dt
import re

import sqlalchemy as sa

from mailer.campaigns import newsletters
from mailer.db import session_scope
from mailer.models import Contact
from tests.audience import make_audience

UTC = dt.timezone.utc
BODY = ("Hello {{ contact.first_name or 'friend' }} ({{ contact.name }}, {{ contact.email }}),\n\n"
        "Our **spring** exercises. [Your settings]({{ unsubscribe_url }})\n")


def issue(mailer, subject: str, *, public: bool, send_at: dt.datetime | None) -> int:
    """An issue, made public or not, and sent at `send_at` (None: left a draft)."""
    with session_scope(mailer.sessions) as session:
        n = newsletters.create_newsletter(session, subject=subject, body_md=BODY, lists=["newsletter"])
        newsletters.update_newsletter(session, n.id, subject=subject, body_md=BODY, lists=["newsletter"],
                                      public=public)
        if send_at:
            newsletters.schedule(session, n.id, send_at, now=send_at)
        newsletter_id = n.id
    if send_at:
        mailer.drain(clock=lambda: send_at)
    return newsletter_id


def test_the_archive_lists_only_public_sent_issues_newest_first(mailer, client, smtp_server):
    make_audience(mailer, 2)
    march = issue(mailer, "March for {{ contact.first_name }}", public=True, send_at=dt.datetime(2027, 3, 2, 9, tzinfo=UTC))
    april = issue(mailer, "April news", public=True, send_at=dt.datetime(2027, 4, 6, 8, tzinfo=UTC))
    private = issue(mailer, "Members only", public=False, send_at=dt.datetime(2027, 4, 7, 8, tzinfo=UTC))
    draft = issue(mailer, "Draft for May", public=True, send_at=None)
    assert len(smtp_server.received) == 6

    page = client.get("/archive")
    assert page.status_code == 200
    titles = re.findall(r'<a href="/archive/(\d+)">([^<]*)</a>', page.text)
    assert titles == [(str(april), "April news"), (str(march), "March for")]  # no reader's name in a subject
    assert "Tuesday 6 April 2027, 09:00 BST" in page.text and "Tuesday 2 March 2027, 09:00 GMT" in page.text
    for hidden in (private, draft, 999):
        assert client.get(f"/archive/{hidden}").status_code == 404
        assert client.get(f"/archive/{hidden}/email.html").status_code == 404


def test_an_archived_issue_shows_no_personal_data_and_runs_nothing(mailer, client, db):
    make_audience(mailer, 2)
    march = issue(mailer, "Spring exercises", public=True, send_at=dt.datetime(2027, 3, 2, 9, tzinfo=UTC))

    page = client.get(f"/archive/{march}")
    assert page.status_code == 200
    assert "<h1>Spring exercises</h1>" in page.text
    assert f'src="/archive/{march}/email.html"' in page.text and 'sandbox="allow-popups' in page.text
    assert "<script" not in page.text

    email = client.get(f"/archive/{march}/email.html")
    assert email.status_code == 200
    csp = email.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox ") and "allow-scripts" not in csp and "allow-same-origin" not in csp
    body = email.text
    assert "Hello friend (, )" in body and "<strong>spring</strong>" in body
    for name, address in db.execute(sa.select(Contact.name, Contact.email)):
        assert address not in body and name not in body and name.split()[0] not in body
    assert "Alex" not in body and "example.com" not in body
    assert "/unsubscribe/" not in body and "/preferences/" not in body  # no personal link, working or dead
    # The body's {{ unsubscribe_url }} and the footer's links lead back to this page.
    assert f'<a href="https://news.example.org/archive/{march}"' in body
    assert f'href="https://news.example.org/archive/{march}" style=' in body
