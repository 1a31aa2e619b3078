"""Open and click tracking answers only for issues that have started sending: a draft's or
a scheduled issue's tracked links and pixel are 404 and count nothing."""
from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from mailer import create_app
from mailer.campaigns import newsletters
from mailer.db import session_scope, utcnow
from mailer.models import Newsletter, NewsletterLink
from tests.audience import make_audience
from tests.conftest import settings_for

TARGET = "https://clinic.example/blog/spine?x=1"
BODY = f"Read [the article]({TARGET})."


@pytest.fixture
def tracked(database_url, smtp_server, tmp_path):
    """The app with open and click tracking turned on."""
    app = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url, track_opens=True,
                                  track_clicks=True))
    app.config["TESTING"] = True
    yield app
    app.extensions["mailer"].engine.dispose()


def click_path(newsletter_id: int) -> str:
    return f"/t/c/{newsletter_id}/{newsletters.link_hash(TARGET)}"


def create(mailer, subject: str, send_at: dt.datetime | None = None) -> int:
    with session_scope(mailer.sessions) as session:
        issue = newsletters.create_newsletter(session, subject=subject, body_md=BODY, lists=["newsletter"])
        if send_at is not None:
            newsletters.schedule(session, issue.id, send_at, now=utcnow())
        return issue.id


def counts(db, newsletter_id: int) -> tuple[int, int]:
    opens = db.scalar(sa.select(Newsletter.opens).where(Newsletter.id == newsletter_id))
    clicks = db.scalar(sa.select(sa.func.coalesce(sa.func.sum(NewsletterLink.clicks), 0))
                       .where(NewsletterLink.newsletter_id == newsletter_id))
    return opens, clicks


def test_a_drafts_or_scheduled_issues_links_and_pixel_answer_404_and_count_nothing(tracked, db):
    mailer = tracked.extensions["mailer"]
    make_audience(mailer, 1)
    draft = create(mailer, "Draft")
    scheduled = create(mailer, "Next week", utcnow() + dt.timedelta(days=7))
    web = tracked.test_client()
    for issue in (draft, scheduled):
        answer = web.get(click_path(issue))
        assert answer.status_code == 404
        assert "Location" not in answer.headers
        assert web.get(f"/t/o/{issue}.gif").status_code == 404
        assert counts(db, issue) == (0, 0)
    assert db.scalar(sa.select(sa.func.count()).select_from(NewsletterLink)) == 0
    assert web.get("/t/o/424242.gif").status_code == 404  # no such issue


def test_a_sent_issues_link_redirects_and_counts_and_its_pixel_counts(tracked, smtp_server, db):
    mailer = tracked.extensions["mailer"]
    make_audience(mailer, 2)
    issue = create(mailer, "This month", utcnow())
    assert mailer.drain().sent == 2
    html = smtp_server.received[-1].message.get_body(("html",)).get_content()
    assert f'href="https://news.example.org{click_path(issue)}"' in html  # what the reader clicks

    web = tracked.test_client()
    answer = web.get(click_path(issue))
    assert answer.status_code == 302
    assert answer.headers["Location"] == TARGET
    pixel = web.get(f"/t/o/{issue}.gif")
    assert pixel.status_code == 200 and pixel.headers["Content-Type"] == "image/gif"
    assert counts(db, issue) == (1, 1)
    assert web.get(f"/t/c/{issue}/0000000000000000").status_code == 404  # a link it does not have
    assert counts(db, issue) == (1, 1)
