"""The clinic's blog in each issue: the feed read over real HTTP from a local server
(MAILER_FEED_ALLOW_PRIVATE allowing 127.0.0.1 only), refused when unsafe (other private
addresses, other schemes, redirects to them, too big, too slow), cached; `new_posts` and
{{ blog_posts() }} in the mail aiosmtpd receives and in the preview alike; a rhythm that
fills from the blog drafts one digest and sends nothing until staff approve it."""
from __future__ import annotations

import datetime as dt
import ipaddress
import re
import threading
from email import message_from_bytes, policy

import pytest
import sqlalchemy as sa

from mailer import create_app
from mailer.campaigns import blog, newsletters
from mailer.db import session_scope, utcnow
from mailer.models import BlogPost, MailingList, Newsletter, NewsletterStatus, newsletter_lists
from mailer.staff import site_settings
from tests.audience import address, make_audience
from tests.conftest import settings_for
from tests.feed_server import FeedServer, atom, rss

UTC = dt.timezone.utc
POSTS = [
    {"title": "Desk stretches that work", "link": "https://clinic.example/blog/desk-stretches",
     "summary": "<p>Five <b>stretches</b> for the office.</p><script>alert(1)</script>",
     "published": dt.datetime(2026, 11, 25, 8, 0, tzinfo=UTC), "image": "https://clinic.example/img/desk.jpg"},
    {"title": "Sleep & your spine", "link": "https://clinic.example/blog/sleep", "summary": "Which pillow?",
     "published": dt.datetime(2026, 11, 20, 8, 0, tzinfo=UTC), "enclosure": "https://tracker.example/pixel.jpg"},
    {"title": "Old news", "link": "https://clinic.example/blog/old", "summary": "Before the last issue.",
     "published": dt.datetime(2026, 10, 1, 8, 0, tzinfo=UTC)},
]
PREVIOUS_ISSUE = dt.datetime(2026, 11, 15, 9, 0, tzinfo=UTC)
# The README's example, and exactly what its text part shows for the posts above.
README_LOOP = """New on our blog:

{% for post in new_posts %}
- [{{ post.title }}]({{ post.link }}), {{ post.published }}: {{ post.summary }}
{% endfor %}

See you soon!"""
README_TEXT = """New on our blog:

- [Desk stretches that work](https://clinic.example/blog/desk-stretches), 25 November 2026: Five stretches for the office.
- [Sleep & your spine](https://clinic.example/blog/sleep), 20 November 2026: Which pillow?

See you soon!"""


@pytest.fixture
def feed_server():
    server = FeedServer().start()
    server.serve("/rss", rss(POSTS))
    yield server
    server.stop()


@pytest.fixture
def app(database_url, smtp_server, tmp_path, feed_server):
    """The app reading the local blog: 127.0.0.1 (only) allowed, short limits."""
    app = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url, feed_allow_private="127.0.0.1",
                                  feed_timeout_seconds=1, feed_max_bytes=20_000,
                                  blog_feed_url=feed_server.url("/rss")))
    app.config["TESTING"] = True
    yield app
    app.extensions["mailer"].engine.dispose()


def read(mailer, url: str, **changes) -> blog.FeedCheck:
    import dataclasses
    return blog.read_feed(dataclasses.replace(mailer.settings, **changes), url, now=utcnow())


def received_parts(smtp_server, rcpt: str) -> tuple[str, str]:
    message = message_from_bytes([r for r in smtp_server.received if r.rcpt_tos == [rcpt]][-1].data,
                                 policy=policy.default)
    # Text parts' line breaks are CRLF in their canonical form (both parts are quoted-printable).
    return (message.get_body(("plain",)).get_content().replace("\r\n", "\n"),
            message.get_body(("html",)).get_content().replace("\r\n", "\n"))


def previous_issue(mailer, *, lists=("newsletter",), rhythm_id=None, month=None) -> int:
    with session_scope(mailer.sessions) as session:
        n = newsletters.create_newsletter(session, subject="November", body_md="Hello", lists=list(lists))
        n.status, n.started_at, n.finished_at = NewsletterStatus.SENT, PREVIOUS_ISSUE, PREVIOUS_ISSUE
        n.rhythm_id, n.rhythm_month = rhythm_id, month
        return n.id


# Reading the feed ------------------------------------------------------------------------

def test_rss_and_atom_are_read_into_posts_with_text_summaries_and_only_the_blogs_own_images(mailer, feed_server):
    found = read(mailer, feed_server.url("/rss"))
    assert found.error is None
    assert [(p.title, p.link, p.summary, p.image) for p in found.posts] == [
        ("Desk stretches that work", "https://clinic.example/blog/desk-stretches", "Five stretches for the office.",
         "https://clinic.example/img/desk.jpg"),
        ("Sleep & your spine", "https://clinic.example/blog/sleep", "Which pillow?", None),  # tracker.example: dropped
        ("Old news", "https://clinic.example/blog/old", "Before the last issue.", None)]
    assert found.posts[0].published_at == POSTS[0]["published"]
    feed_server.serve("/atom", atom(POSTS[:2]), "application/atom+xml")
    found = read(mailer, feed_server.url("/atom"))
    assert [(p.title, p.summary, p.published_at) for p in found.posts] == [
        ("Desk stretches that work", "Five stretches for the office.", POSTS[0]["published"]),
        ("Sleep & your spine", "Which pillow?", POSTS[1]["published"])]


def test_a_page_that_is_not_a_feed_or_an_error_status_is_a_clear_error(mailer, feed_server):
    feed_server.serve("/page", b"<html><body><p>Our blog</p></body></html>", "text/html")
    assert read(mailer, feed_server.url("/page")).error.startswith("This address does not serve an RSS or Atom feed")
    assert read(mailer, feed_server.url("/missing")).error == \
        "The blog's server answered HTTP 404 Not Found for the feed."


def test_a_loopback_feed_is_refused_without_the_setting(mailer, feed_server):
    error = read(mailer, feed_server.url("/rss"), feed_allow_private="").error
    assert error.startswith("The feed is not read from 127.0.0.1: 127.0.0.1 is a loopback address.")
    assert "MAILER_FEED_ALLOW_PRIVATE" in error
    assert feed_server.requests == []  # refused before connecting
    # IPv4-mapped IPv6 is the IPv4 address it maps, and other private ranges are refused too.
    error = read(mailer, f"http://[::ffff:127.0.0.1]:{feed_server.port}/rss", feed_allow_private="").error
    assert "::ffff:127.0.0.1 is a loopback address" in error
    for literal, why in (("10.1.2.3", "a private address"), ("169.254.169.254", "a link-local address"),
                         ("[fe80::1]", "a link-local address"), ("[::1]", "a loopback address"),
                         ("192.168.0.10", "a private address"), ("224.0.0.1", "an unspecified or multicast address")):
        assert why in read(mailer, f"http://{literal}/feed").error, literal
    assert feed_server.requests == []


def test_the_allow_list_takes_addresses_networks_or_any():
    assert blog.allowed_private("") is False and blog.allowed_private("1") is True
    assert blog.allowed_private("127.0.0.1, 10.0.0.0/8") == (ipaddress.ip_network("127.0.0.1/32"),
                                                             ipaddress.ip_network("10.0.0.0/8"))
    with pytest.raises(blog.FeedError, match="'nonsense', which is not an address"):
        blog.allowed_private("nonsense")
    mapped = ipaddress.ip_address("::ffff:10.0.0.5")
    assert blog._refused(mapped, False) == "a private address"
    assert blog._refused(mapped, blog.allowed_private("10.0.0.0/8")) is None


def test_other_schemes_and_redirects_to_them_or_to_a_private_address_are_refused(mailer, feed_server):
    for url in ("file:///etc/passwd", "gopher://127.0.0.1:70/1", "ftp://clinic.example/feed", "javascript:alert(1)",
                "https://user:secret@clinic.example/feed"):
        assert read(mailer, url).error in ("The feed's address must start with https:// (or http://).",
                                          "The feed's address may not hold a user name or password."), url
    feed_server.redirect("/to-file", "file:///etc/passwd")
    feed_server.redirect("/to-private", f"http://127.0.0.2:{feed_server.port}/rss")
    feed_server.redirect("/to-metadata", "http://169.254.169.254/latest/meta-data/")
    feed_server.redirect("/to-rss", "/rss")
    assert read(mailer, feed_server.url("/to-file")).error == \
        "The feed's address must start with https:// (or http://)."
    assert read(mailer, feed_server.url("/to-private")).error.startswith(
        "The feed is not read from 127.0.0.2: 127.0.0.2 is a loopback address.")
    assert "169.254.169.254 is a link-local address" in read(mailer, feed_server.url("/to-metadata")).error
    assert len(read(mailer, feed_server.url("/to-rss")).posts) == 3  # a redirect that passes the checks is followed
    for hop in range(5):
        feed_server.redirect(f"/loop{hop}", f"/loop{hop + 1}")
    assert read(mailer, feed_server.url("/loop0")).error == "The feed's address redirects more than 3 times."


def test_an_oversized_feed_is_refused_whether_or_not_it_says_its_length(mailer, feed_server):
    big = rss([dict(POSTS[0], link=f"https://clinic.example/blog/{i}", summary="x" * 200) for i in range(200)])
    assert len(big) > 20_000
    feed_server.serve("/big", big)
    feed_server.serve("/big-unsized", big, length=False)
    for path in ("/big", "/big-unsized"):
        assert read(mailer, feed_server.url(path)).error == \
            "The feed is larger than 20,000 bytes, the most that is read.", path


def test_a_slow_server_is_given_up_on_at_the_time_limit(mailer, feed_server):
    import time

    feed_server.stall("/silent", 3)
    feed_server.drip("/drip", 3)
    for path in ("/silent", "/drip"):
        started = time.monotonic()
        assert read(mailer, feed_server.url(path)).error == \
            "The blog's server did not send the feed within 1 seconds.", path
        assert time.monotonic() - started < 2


def test_https_checks_the_certificate_of_the_host_while_connecting_to_the_checked_address(mailer, tmp_path):
    """The connection goes to the resolved address, but TLS still verifies the certificate
    (here self-signed, so untrusted) for the host name."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = FeedServer(tls=(str(cert), str(key))).start()
    try:
        server.serve("/rss", rss(POSTS))
        error = read(mailer, server.url("/rss")).error
        assert error.startswith("The secure connection to 127.0.0.1 failed: CERTIFICATE_VERIFY_FAILED"), error
    finally:
        server.stop()


def test_the_feed_is_cached_and_read_again_only_when_due(mailer, feed_server, db):
    now = utcnow()
    assert len(blog.refresh(mailer.sessions, mailer.settings, now=now).posts) == 3
    assert blog.refresh(mailer.sessions, mailer.settings, now=now + dt.timedelta(minutes=5)) is None  # fresh
    assert feed_server.requests == ["/rss"]
    assert db.scalar(sa.select(sa.func.count()).select_from(BlogPost)) == 3
    # Read again when due: a post seen again is not stored twice and keeps its date.
    assert len(blog.refresh(mailer.sessions, mailer.settings, now=now + dt.timedelta(minutes=16)).posts) == 3
    assert db.scalar(sa.select(sa.func.count()).select_from(BlogPost)) == 3
    # A failing read keeps the posts and records the error for the settings page.
    feed_server.server.routes.pop("/rss")
    found = blog.refresh(mailer.sessions, mailer.settings, now=now + dt.timedelta(minutes=40))
    assert found.error == "The blog's server answered HTTP 404 Not Found for the feed."
    with mailer.read_sessions() as session:
        assert blog.feed_state(session).error == found.error
    assert db.scalar(sa.select(sa.func.count()).select_from(BlogPost)) == 3


def test_the_feed_address_is_checked_when_saved(mailer):
    for bad, message in (("file:///etc/passwd", "The feed's address must start with https:// (or http://)."),
                         ("gopher://clinic.example/", "The feed's address must start with https:// (or http://)."),
                         ("https://", "The feed's address has no host, e.g. https://clinic.example/blog/feed.xml.")):
        with session_scope(mailer.sessions) as session:
            with pytest.raises(site_settings.InvalidSettings) as caught:
                site_settings.save(session, {"blog_feed_url": bad}, base=mailer.base_settings.__class__(
                    **{**mailer.base_settings.__dict__, "fixed": frozenset()}), actor_id=None, now=utcnow())
        assert caught.value.errors == {"blog_feed_url": message}


# new_posts in the mail and the preview -----------------------------------------------------

def test_new_posts_since_the_previous_issue_are_in_the_sent_mail_and_the_preview_alike(
        mailer, smtp_server, feed_server, staff):
    make_audience(mailer, 1)
    blog.refresh(mailer.sessions, mailer.settings, now=utcnow(), force=True)
    previous_issue(mailer)
    with session_scope(mailer.sessions) as session:
        n = newsletters.create_newsletter(session, subject="December", lists=["newsletter"], body_md=README_LOOP)
        issue_id = n.id
        sample = newsletters.preview(mailer.renderer, mailer.settings, subject=n.subject, preheader="",
                                     body_md=n.body_md, layout="default",
                                     upcoming=newsletters.upcoming_for_issue(session, mailer.settings, utcnow()),
                                     posts=blog.posts_for_issue(session, mailer.settings, n, now=utcnow()))
    editor, _ = staff("editor")
    console_text = editor.get(f"/admin/newsletters/{issue_id}/preview.txt").text
    with session_scope(mailer.sessions) as session:
        newsletters.schedule(session, issue_id, utcnow(), now=utcnow())
    mailer.drain()
    text, html = received_parts(smtp_server, address(0))
    assert README_TEXT in text
    assert README_TEXT in sample.text and README_TEXT in console_text
    sent_list = re.search(r"<ul>.*?</ul>", html, re.DOTALL).group(0)
    assert sent_list == re.search(r"<ul>.*?</ul>", sample.html, re.DOTALL).group(0)
    assert ('<a href="https://clinic.example/blog/desk-stretches" style="color:#0b6e4f" rel="noopener noreferrer">'
            'Desk stretches that work</a>, 25 November 2026: Five stretches for the office.</li>') in sent_list
    assert "Sleep &amp; your spine" in sent_list and "Old news" not in html and "alert" not in html


def test_the_ready_block_shows_each_post_with_its_picture_where_staff_put_it(mailer, smtp_server, feed_server):
    make_audience(mailer, 1)
    blog.refresh(mailer.sessions, mailer.settings, now=utcnow(), force=True)
    previous_issue(mailer)
    body = "Hello {{ contact.first_name }},\n\n{{ blog_posts() }}\n\nThe team"
    with session_scope(mailer.sessions) as session:
        n = newsletters.create_newsletter(session, subject="December", lists=["newsletter"], body_md=body)
        newsletters.schedule(session, n.id, utcnow(), now=utcnow())
    mailer.drain()
    text, html = received_parts(smtp_server, address(0))
    assert re.search(r'<h3><a href="https://clinic.example/blog/desk-stretches"[^>]*>Desk stretches that work</a></h3>',
                     html)
    assert '<img src="https://clinic.example/img/desk.jpg" alt="Desk stretches that work"' in html
    assert "tracker.example" not in html and "Old news" not in html
    assert html.index("Hello Reader0") < html.index("Desk stretches") < html.index("Sleep &amp; your spine") \
        < html.index("The team")
    assert "### [Sleep & your spine](https://clinic.example/blog/sleep)" in text
    assert "[Read the post](https://clinic.example/blog/sleep) · 20 November 2026" in text


def test_new_posts_count_from_the_previous_issue_of_the_rhythm_else_of_the_lists(mailer, feed_server):
    blog.refresh(mailer.sessions, mailer.settings, now=utcnow(), force=True)
    with session_scope(mailer.sessions) as session:
        assert [p["title"] for p in blog.posts_for_issue(session, mailer.settings, now=utcnow(),
                                                         list_slugs=["newsletter"])] == \
            ["Desk stretches that work", "Sleep & your spine", "Old news"]  # no issue before: the newest
        rhythm = newsletters.create_rhythm(session, name="Monthly", day="1st tue", hour=9, timezone="Europe/London")
        rhythm_id = rhythm.id
    previous_issue(mailer, rhythm_id=rhythm_id, month="2026-11")
    with session_scope(mailer.sessions) as session:
        one_off = newsletters.create_newsletter(session, subject="One-off", body_md="Hi", lists=["newsletter"])
        assert [p["title"] for p in blog.posts_for_issue(session, mailer.settings, one_off, now=utcnow())] == \
            ["Desk stretches that work", "Sleep & your spine"]
        # A November issue of the rhythm that went out 30 September (before every post) but a
        # later one-off on the list: the rhythm's next issue counts from its own previous one.
        monthly = newsletters.create_newsletter(session, subject="December", body_md="Hi", lists=["newsletter"])
        monthly.rhythm_id = rhythm_id
        session.execute(sa.update(Newsletter).where(Newsletter.rhythm_id == rhythm_id, Newsletter.id != monthly.id)
                        .values(started_at=dt.datetime(2026, 9, 30, tzinfo=UTC)))
        assert len(blog.posts_for_issue(session, mailer.settings, monthly, now=utcnow())) == 3
        # No feed set: no posts, whatever is cached.
        import dataclasses
        assert blog.posts_for_issue(session, dataclasses.replace(mailer.settings, blog_feed_url=""), monthly,
                                    now=utcnow()) == []


def test_new_posts_and_the_block_pass_the_template_check_and_misplaced_blocks_do_not():
    assert newsletters.check_template("body", blog.BLOG_POSTS_BLOCK) == []
    assert newsletters.check_template("body", README_LOOP) == []
    assert newsletters.check_template("body", "Hi\n\n  {{ blog_posts() }}  \n\nBye") == []
    problems = [str(p) for p in newsletters.check_template("body", "Hi\nRead {{ blog_posts() }} now")]
    assert problems == ["body, line 2: put {{ blog_posts() }} on a line of its own in the body"]
    assert [str(p) for p in newsletters.check_template("subject", "{{ blog_posts() }}")] == \
        ["subject, line 1: put {{ blog_posts() }} on a line of its own in the body"]


# Fill from the blog -----------------------------------------------------------------------

def test_a_rhythm_that_fills_from_the_blog_drafts_one_digest_and_sends_nothing_until_approved(
        mailer, smtp_server, feed_server, staff, db):
    make_audience(mailer, 2)
    staff("owner")  # owners and editors exist
    blog.refresh(mailer.sessions, mailer.settings, now=utcnow(), force=True)
    with session_scope(mailer.sessions) as session:
        rhythm = newsletters.create_rhythm(session, name="Monthly news", day="1st tue", hour=9,
                                           timezone="Europe/London", fill_from_blog=True)
        rhythm_id, when = rhythm.id, newsletters.next_occurrence(rhythm, utcnow())
    previous_issue(mailer, rhythm_id=rhythm_id, month="2026-11")
    before = when - dt.timedelta(hours=23)
    month = when.astimezone(dt.timezone.utc).strftime("%Y-%m")

    # Two workers at once: one digest.
    barrier, results = threading.Barrier(2), []

    def worker():
        barrier.wait()
        with session_scope(mailer.sessions) as session:
            results.append(newsletters.warn_unready(session, mailer.settings, before))
    threads = [threading.Thread(target=worker) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    with session_scope(mailer.sessions) as session:
        assert newsletters.warn_unready(session, mailer.settings, before + dt.timedelta(hours=1)) == []
    assert sorted(len(r) for r in results) == [0, 1]
    digests = db.scalars(sa.select(Newsletter).where(Newsletter.rhythm_id == rhythm_id,
                                                     Newsletter.status == NewsletterStatus.DRAFT))
    assert len(digests) == 1
    digest = digests[0]
    assert digest.subject == "New on our blog: Desk stretches that work and 1 more"
    assert digest.rhythm_month == month
    assert db.scalars(sa.select(MailingList.slug).join(newsletter_lists, newsletter_lists.c.list_id == MailingList.id)
                      .where(newsletter_lists.c.newsletter_id == digest.id)) == ["newsletter"]  # the rhythm's lists

    mailer.drain(clock=lambda: before + dt.timedelta(minutes=1))
    to_staff = {r.rcpt_tos[0]: r.message for r in smtp_server.received}
    assert set(to_staff) == {"owner@clinic.example", "editor@clinic.example"}  # no reader got anything
    asked = to_staff["editor@clinic.example"]
    assert asked["Subject"] == "A digest of the blog is drafted for Monthly news: please approve it"
    asked_text = asked.get_body(("plain",)).get_content()
    assert f"https://news.example.org/admin/newsletters/{digest.id}" in asked_text
    assert "nothing is sent unless you approve it" in asked_text

    # The send time passes: still nothing goes to readers.
    mailer.drain(clock=lambda: when + dt.timedelta(minutes=1))
    assert len(smtp_server.received) == 2
    assert db.scalar(sa.select(Newsletter.status).where(Newsletter.id == digest.id)) == NewsletterStatus.DRAFT

    # Approved (made the month's issue), it goes out at its time with the new posts.
    with session_scope(mailer.sessions) as session:
        approved = newsletters.mark_ready(session, digest.id, rhythm_id, month, now=before)
        assert approved.status == NewsletterStatus.SCHEDULED and approved.send_at == when
    db.write(sa.update(Newsletter).where(Newsletter.id == digest.id).values(send_at=utcnow()))
    mailer.drain()
    text, html = received_parts(smtp_server, address(1))
    assert "Here is what we have published on our blog since our last newsletter:" in text
    assert "### [Desk stretches that work](https://clinic.example/blog/desk-stretches)" in text
    assert "Old news" not in text and "Desk stretches that work</a></h3>" in html


def test_without_new_posts_a_rhythm_that_fills_from_the_blog_only_warns(mailer, smtp_server, feed_server, staff, db):
    feed_server.serve("/rss", rss(POSTS[2:]))  # only a post from before the previous issue
    staff("owner")
    blog.refresh(mailer.sessions, mailer.settings, now=utcnow(), force=True)
    with session_scope(mailer.sessions) as session:
        rhythm = newsletters.create_rhythm(session, name="Monthly news", day="1st tue", hour=9,
                                           timezone="Europe/London", fill_from_blog=True)
        rhythm_id, when = rhythm.id, newsletters.next_occurrence(rhythm, utcnow())
    previous_issue(mailer, rhythm_id=rhythm_id, month="2026-11")
    with session_scope(mailer.sessions) as session:
        assert len(newsletters.warn_unready(session, mailer.settings, when - dt.timedelta(hours=23))) == 1
    assert db.scalar(sa.select(sa.func.count()).select_from(Newsletter).where(
        Newsletter.status == NewsletterStatus.DRAFT)) == 0
    mailer.drain(clock=lambda: when - dt.timedelta(hours=22))
    assert {r.message["Subject"] for r in smtp_server.received} == {"No newsletter is ready for Monthly news"}


def test_the_console_check_shows_the_posts_or_the_clear_error_and_only_owners_may_run_it(
        mailer, feed_server, staff):
    owner, token = staff("owner")
    page = owner.post("/admin/settings/feed-check", data={"csrf_token": token,
                                                           "blog_feed_url": feed_server.url("/rss")})
    assert page.status_code == 200
    assert "The feed has 3 post(s); the newest:" in page.text and "Sleep &amp; your spine" in page.text
    page = owner.post("/admin/settings/feed-check", data={"csrf_token": token,
                                                           "blog_feed_url": "http://10.0.0.7/feed"})
    assert "The feed could not be used: The feed is not read from 10.0.0.7: 10.0.0.7 is a private address." \
        in page.text
    page = owner.post("/admin/settings/feed-check", data={"csrf_token": token, "blog_feed_url": "file:///etc/passwd"})
    assert page.status_code == 400 and "The feed&#39;s address must start with https://" in page.text
    editor, editor_token = staff("editor")
    assert editor.post("/admin/settings/feed-check", data={"csrf_token": editor_token}).status_code == 403
    assert owner.post("/admin/settings/feed-check", data={}).status_code == 400  # no CSRF token


def test_the_rhythm_flag_is_kept_by_the_console_and_the_api(mailer, staff):
    editor, token = staff("editor")
    answer = editor.post("/admin/newsletters/rhythms", data={
        "csrf_token": token, "name": "Monthly", "week": "1st", "weekday": "tue", "time": "09:00",
        "timezone": "Europe/London", "fill_from_blog": "yes"})
    assert answer.status_code == 302
    page = editor.get("/admin/newsletters").text
    assert "(fills from the blog)" in page
    with mailer.read_sessions() as session:
        assert [r.fill_from_blog for r in newsletters.list_rhythms(session)] == [True]


def test_the_api_keeps_the_rhythm_flag(client, tokens):
    answer = client.post("/api/v1/rhythms", headers={"Authorization": f"Bearer {tokens.write}"},
                         json={"name": "Monthly", "day": "1st tue", "hour": 9, "timezone": "Europe/London",
                               "fill_from_blog": True})
    assert answer.status_code == 201 and answer.json["fill_from_blog"] is True
    listed = client.get("/api/v1/rhythms", headers={"Authorization": f"Bearer {tokens.read}"}).json
    assert [r["fill_from_blog"] for r in listed["items"]] == [True]


def test_the_worker_job_and_the_cli_read_the_feed(mailer, feed_server, database_url, tmp_path, db):
    from click.testing import CliRunner

    from mailer import scheduler
    from mailer.cli import main
    from tests.conftest import SECRET

    scheduler.refresh_blog_feed(mailer)
    assert db.scalar(sa.select(sa.func.count()).select_from(BlogPost)) == 3
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance"), "MAILER_FEED_ALLOW_PRIVATE": "127.0.0.1",
           "MAILER_BLOG_FEED_URL": feed_server.url("/rss")}
    result = CliRunner().invoke(main, ["settings", "check-feed"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:2] == [
        "3 post(s)", "2026-11-25\tDesk stretches that work\thttps://clinic.example/blog/desk-stretches"]
    result = CliRunner().invoke(main, ["settings", "check-feed"], env=dict(env, MAILER_FEED_ALLOW_PRIVATE=""))
    assert result.exit_code == 1 and "127.0.0.1 is a loopback address" in result.output
    result = CliRunner().invoke(main, ["newsletter", "rhythm", "--day", "1st tue", "--at", "09:00",
                                       "--fill-from-blog"], env=env)
    assert result.output.strip() == "created rhythm 1"
    with mailer.read_sessions() as session:
        assert newsletters.get_rhythm(session, 1).fill_from_blog is True
