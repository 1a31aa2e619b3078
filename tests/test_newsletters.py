"""Newsletters from staff: templates checked before scheduling, scheduled in the
organisation's zone across a DST change, sent once to each active subscriber."""
from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa
from click.testing import CliRunner

from mailer import clock
from mailer.delivery import suppression
from mailer.campaigns import newsletters
from mailer.cli import main
from mailer.db import session_scope, utcnow
from mailer.errors import InvalidInput
from mailer.models import Contact, Delivery, Newsletter, Subscription
from tests.audience import BODY, address, make_audience
from tests.conftest import SECRET

UTC = dt.timezone.utc


def cli(database_url, tmp_path, *args, input=None):
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance"), "MAILER_TIMEZONE": "Europe/London"}
    return CliRunner().invoke(main, list(args), env=env, input=input)


def test_template_problems_are_reported_with_their_line_and_nothing_is_created(database_url, tmp_path, db):
    body = "Hello {{ contact.first_name }},\n\nNews.\n{{ contact.nickname }} and {{ coupon }}\n{% if x %}"
    result = cli(database_url, tmp_path, "newsletter", "create", "--subject", "Hi {{ contact.first_name",
                 "--body-file", "-", input=body)
    assert result.exit_code == 1
    assert "subject, line 1:" in result.output
    result = cli(database_url, tmp_path, "newsletter", "create", "--subject", "Hi", "--body-file", "-",
                 input="Hello {{ contact.first_name }},\n\nNews.\n{{ contact.nickname }} and {{ coupon }}\n")
    assert result.exit_code == 1
    assert ("body, line 4: unknown name 'coupon'; "
            "body, line 4: 'contact' has no 'nickname' (it has: email, fields, first_name, name)") in result.output
    assert db.scalar(sa.select(sa.func.count()).select_from(Newsletter)) == 0


def test_syntax_error_is_reported_with_its_line():
    problems = newsletters.check_template("body", "fine\n\n{% for x in y %}\nno end")
    assert [(p.line, p.field) for p in problems] == [(3, "body")]  # where the unclosed block opens
    assert "endfor" in problems[0].message


def test_templates_may_not_switch_off_escaping_or_mark_text_safe(mailer):
    body = ("Hi {{ contact.first_name }}\n\n{{ '<script>alert(1)</script>' | safe }}\n"
            "{% autoescape false %}{{ contact.name }}{% endautoescape %}\n")
    problems = [str(p) for p in newsletters.check_template("body", body)]
    assert problems == ["body, line 3: the 'safe' filter is not allowed: write HTML in the Markdown itself "
                        "(it is cleaned)",
                        "body, line 4: autoescape cannot be switched off: values are always escaped"]
    with session_scope(mailer.sessions) as session:
        try:
            newsletters.create_newsletter(session, subject="Hi", body_md=body, lists=["newsletter"])
            raise AssertionError("a template that bypasses the HTML cleaner was saved")
        except InvalidInput as exc:
            assert exc.field == "body"
    assert newsletters.check_template("body", "Hi {{ contact.first_name | title }}") == []


def test_a_time_skipped_by_the_clock_change_is_refused():
    try:
        clock.local_to_utc(dt.datetime(2027, 3, 28, 1, 30), "Europe/London")
        raise AssertionError("accepted a local time that does not exist")
    except InvalidInput as exc:
        assert exc.message == "2027-03-28 01:30 does not exist in Europe/London (the clocks go forward)."
    assert clock.local_to_utc(dt.datetime(2027, 3, 28, 2, 30), "Europe/London") == \
        dt.datetime(2027, 3, 28, 1, 30, tzinfo=UTC)


def test_scheduled_for_first_tuesday_9am_london_goes_out_at_the_right_instant_across_dst(
        mailer, smtp_server, database_url, tmp_path, db, client):
    make_audience(mailer, 4)
    # reader 3 unsubscribed; one pending signup; one suppressed address
    db.write(sa.update(Subscription).where(Subscription.contact_id == db.scalar(
        sa.select(Contact.id).where(Contact.email == address(3)))).values(status="unsubscribed"))
    from tests.conftest import signup
    signup(client, "pending@example.com")
    with session_scope(mailer.sessions) as session:
        suppression.suppress_address(session, mailer.settings, address(2), reason="hard_bounce", now=utcnow())
    mailer.drain()  # the pending signup's confirmation
    smtp_server.received.clear()

    sent_at = {}
    for local_day, utc_hour in ((dt.datetime(2027, 3, 2, 9, 0), 9), (dt.datetime(2027, 4, 6, 9, 0), 8)):
        created = cli(database_url, tmp_path, "newsletter", "create", "--subject",
                      "Spine Health {{ contact.first_name }}", "--body-file", "-", input=BODY)
        assert created.exit_code == 0, created.output
        newsletter_id = int(created.output.split()[2])
        with time_at(dt.datetime(2027, 2, 20, tzinfo=UTC)):
            scheduled = cli(database_url, tmp_path, "newsletter", "schedule", str(newsletter_id),
                            "--at", f"{local_day:%Y-%m-%d %H:%M}")
        assert scheduled.exit_code == 0, scheduled.output
        due = dt.datetime(local_day.year, local_day.month, local_day.day, utc_hour, 0, tzinfo=UTC)
        assert f"scheduled for {due:%Y-%m-%d %H:%M} UTC" in scheduled.output
        assert "09:00 G" in scheduled.output or "09:00 B" in scheduled.output  # GMT in March, BST in April

        before = len(smtp_server.received)
        assert mailer.drain(clock=lambda: due - dt.timedelta(seconds=1)).sent == 0
        assert len(smtp_server.received) == before
        assert mailer.drain(clock=lambda: due).sent == 2
        sent_at[newsletter_id] = due

    # Each active, reachable subscriber got exactly one personalised copy of each issue.
    per_person = {}
    for received in smtp_server.received:
        per_person.setdefault(received.rcpt_tos[0], []).append(received.message["Subject"])
    assert per_person == {
        address(0): ["Spine Health Reader0", "Spine Health Reader0"],
        address(1): ["Spine Health Reader1", "Spine Health Reader1"],
    }
    statuses = db.execute(sa.select(Newsletter.id, Newsletter.status, Newsletter.audience_count, Newsletter.started_at))
    assert [(i, s, n) for i, s, n, _ in statuses] == [(1, "sent", 2), (2, "sent", 2)]
    assert {i: started for i, _, _, started in statuses} == sent_at

    # The unsubscribe link in the received issue works.
    link = smtp_server.received[-1].message["List-Unsubscribe"].split(",")[0].strip(" <>")
    who = smtp_server.received[-1].rcpt_tos[0]
    assert client.post(link.removeprefix("https://news.example.org")).status_code == 200
    assert db.scalar(sa.select(Subscription.status).join(Contact).where(Contact.email == who)) == "unsubscribed"


def test_start_is_once_even_when_two_workers_look(mailer, db):
    make_audience(mailer, 3)
    with session_scope(mailer.sessions) as session:
        n = newsletters.create_newsletter(session, subject="Hi", body_md="Hello", lists=["newsletter"])
        newsletters.schedule(session, n.id, utcnow(), now=utcnow())
    with session_scope(mailer.sessions) as session:
        assert newsletters.start_due(session, utcnow()) == [1]
    with session_scope(mailer.sessions) as session:
        assert newsletters.start_due(session, utcnow()) == []
    assert db.scalar(sa.select(sa.func.count()).select_from(Delivery)) == 3


def test_cancel_while_sending_cancels_what_is_still_queued(mailer, smtp_server, db, database_url, tmp_path):
    make_audience(mailer, 5)
    with session_scope(mailer.sessions) as session:
        n = newsletters.create_newsletter(session, subject="Hi", body_md="Hello", lists=["newsletter"])
        newsletters.schedule(session, n.id, utcnow(), now=utcnow())
        newsletters.start_due(session, utcnow())
    result = cli(database_url, tmp_path, "newsletter", "cancel", "1")
    assert result.exit_code == 0 and result.output.strip() == "newsletter 1 cancelled"
    assert mailer.drain().sent == 0
    assert set(db.scalars(sa.select(Delivery.status))) == {"cancelled"}
    again = cli(database_url, tmp_path, "newsletter", "cancel", "1")
    assert again.exit_code == 1 and "already cancelled" in again.output


def test_past_time_and_unknown_list_are_refused(mailer):
    with session_scope(mailer.sessions) as session:
        n = newsletters.create_newsletter(session, subject="Hi", body_md="Hello", lists=["newsletter"])
        try:
            newsletters.schedule(session, n.id, utcnow() - dt.timedelta(hours=1), now=utcnow())
            raise AssertionError("scheduled in the past")
        except InvalidInput as exc:
            assert exc.field == "send_at"
        try:
            newsletters.create_newsletter(session, subject="Hi", body_md="Hello", lists=["vip"])
            raise AssertionError("unknown list accepted")
        except InvalidInput as exc:
            assert exc.field == "lists"


def time_at(when: dt.datetime):
    import time_machine

    return time_machine.travel(when, tick=False)


def test_preview_uses_a_sample_reader_and_dead_links():
    from mailer.delivery.rendering import EmailRenderer
    from mailer.settings import load_settings

    settings = load_settings({"secret_key": "preview-test-secret-key-not-for-production",
                              "instance_path": "/tmp/mailer-preview-test",
                              "base_url": "https://news.example.org"})
    rendered = newsletters.preview(EmailRenderer(), settings, subject="Hi {{ contact.first_name }}",
                                   preheader="P", body_md="Hello **{{ contact.first_name }}**", layout="default")
    assert rendered.subject == "Hi Alex"
    assert "Hello <strong" in rendered.html and ">Alex</strong>" in rendered.html
    assert "https://news.example.org/unsubscribe/preview" in rendered.html
    assert rendered.text.startswith("Hello **Alex**")


def test_test_send_is_marked_and_not_counted(mailer, smtp_server, db):
    make_audience(mailer, 2)
    with session_scope(mailer.sessions) as session:
        n = newsletters.create_newsletter(session, subject="March news", body_md="Hello {{ contact.first_name }}",
                                          lists=["newsletter"])
        assert newsletters.send_test(session, mailer.settings, n.id, ["Boss@Clinic.example", "boss@clinic.example"],
                                     now=utcnow()) == 1
    mailer.drain()
    assert [(r.rcpt_tos, r.message["Subject"]) for r in smtp_server.received] == [
        (["boss@clinic.example"], "[TEST] March news")]
    assert "/unsubscribe/test-copy" in smtp_server.received[0].message.get_body(("html",)).get_content()
    with session_scope(mailer.sessions) as session:
        newsletters.schedule(session, n.id, utcnow(), now=utcnow())
    mailer.drain()
    with mailer.read_sessions() as session:
        report = newsletters.report(session, n.id)
    assert (report["audience"], report["sent"], report["status"]) == (2, 2, "sent")
    for bad in ([], [f"p{i}@example.com" for i in range(11)]):
        with session_scope(mailer.sessions) as session:
            try:
                newsletters.send_test(session, mailer.settings, n.id, bad, now=utcnow())
                raise AssertionError("accepted")
            except InvalidInput as exc:
                assert exc.field == "addresses"


def test_preflight_lists_what_to_fix(mailer):
    body = ("See [our site](http://clinic.example) and [this](/relative).\n\n"
            '<img src="https://clinic.example/a.png">\n')
    with session_scope(mailer.sessions) as session:
        n = newsletters.create_newsletter(session, subject="A" * 90, body_md=body, lists=["newsletter"])
        problems = newsletters.preflight(session, mailer.renderer, mailer.settings, n.id)
    assert problems == [
        "Link 'http://clinic.example' is not an absolute https:// address.",
        "Link '/relative' is not an absolute https:// address.",
        "1 image(s) have no alt text.",
        "The subject has 90 characters; inboxes cut it after about 80.",
        "No one would receive it: its lists have no active subscribers.",
    ]
    make_audience(mailer, 1)
    with session_scope(mailer.sessions) as session:
        good = newsletters.create_newsletter(session, subject="Fine", body_md="[Blog](https://clinic.example)",
                                             lists=["newsletter"])
        assert newsletters.preflight(session, mailer.renderer, mailer.settings, good.id) == []


def test_report_counts_outcomes_and_the_unsubscribes_the_issue_caused(mailer, smtp_server, db, client):
    make_audience(mailer, 4)
    smtp_server.handler.rcpt_reply = lambda a: "550 5.1.1 no such user" if a == address(3) else None
    with session_scope(mailer.sessions) as session:
        n = newsletters.create_newsletter(session, subject="Hi", body_md="Hello", lists=["newsletter"])
        newsletters.schedule(session, n.id, utcnow(), now=utcnow())
    mailer.drain()
    link = [r for r in smtp_server.received if r.rcpt_tos == [address(0)]][0].message["List-Unsubscribe"]
    client.post(link.split(",")[0].strip(" <>").removeprefix("https://news.example.org"))
    with mailer.read_sessions() as session:
        report = newsletters.report(session, n.id)
    assert {k: report[k] for k in ("audience", "sent", "failed", "unsubscribes", "status")} == \
        {"audience": 4, "sent": 3, "failed": 1, "unsubscribes": 1, "status": "sent"}
    assert sum(count for _, count in report["sent_per_minute"]) == 3


def test_monthly_rhythm_first_tuesday_9am_london_is_dst_correct_and_warns_when_nothing_is_ready(
        mailer, smtp_server, db):
    from mailer.staff import users
    from mailer.models import Rhythm

    with session_scope(mailer.sessions) as session:
        users.create_user(session, "editor@clinic.example", "a long enough password", "editor")
        rhythm = newsletters.create_rhythm(session, name="Monthly newsletter", day="1st tue", hour=9,
                                           timezone="Europe/London")
        assert newsletters.occurrence_in_month(rhythm, "2027-03") == dt.datetime(2027, 3, 2, 9, tzinfo=UTC)
        assert newsletters.occurrence_in_month(rhythm, "2027-04") == dt.datetime(2027, 4, 6, 8, tzinfo=UTC)
        march = newsletters.create_newsletter(session, subject="March", body_md="Hi", lists=["newsletter"])
        newsletters.mark_ready(session, march.id, rhythm.id, "2027-03", now=dt.datetime(2027, 2, 1, tzinfo=UTC))
        assert march.send_at == dt.datetime(2027, 3, 2, 9, tzinfo=UTC) and march.status == "scheduled"
        other = newsletters.create_newsletter(session, subject="Also March", body_md="Hi", lists=["newsletter"])
        try:
            newsletters.mark_ready(session, other.id, rhythm.id, "2027-03", now=dt.datetime(2027, 2, 1, tzinfo=UTC))
            raise AssertionError("two issues for one month")
        except InvalidInput as exc:
            assert "already the 2027-03 issue" in exc.message
        try:
            newsletters.create_rhythm(session, name="x", day="1st xyz", hour=9, timezone="Europe/London")
            raise AssertionError("bad rhythm accepted")
        except InvalidInput as exc:
            assert exc.field == "day"

    # March is ready: no warning the day before. April is not: one warning, 24 h before, once.
    with session_scope(mailer.sessions) as session:
        assert newsletters.warn_unready(session, mailer.settings, dt.datetime(2027, 3, 1, 10, tzinfo=UTC)) == []
        assert newsletters.warn_unready(session, mailer.settings, dt.datetime(2027, 4, 4, 8, tzinfo=UTC)) == []
        assert newsletters.warn_unready(session, mailer.settings, dt.datetime(2027, 4, 5, 8, 30, tzinfo=UTC)) == \
            ["Monthly newsletter 2027-04"]
        assert newsletters.warn_unready(session, mailer.settings, dt.datetime(2027, 4, 5, 9, tzinfo=UTC)) == []
    mailer.drain(clock=lambda: dt.datetime(2027, 4, 5, 8, 31, tzinfo=UTC))
    warnings = [r for r in smtp_server.received if r.rcpt_tos == ["editor@clinic.example"]]
    assert len(warnings) == 1
    assert warnings[0].message["Subject"] == "No newsletter is ready for Monthly newsletter"
    assert "Tuesday 6 April 2027, 09:00 BST" in warnings[0].message.get_body(("plain",)).get_content()
    assert db.scalar(sa.select(Rhythm.warned_month)) == "2027-04"


def test_tracking_is_off_by_default_and_counts_only_totals_when_on(mailer, smtp_server, database_url, tmp_path, db,
                                                                   client):
    from mailer import create_app
    from mailer.models import NewsletterLink
    from tests.conftest import settings_for

    body = "Read [the blog](https://clinic.example/blog?a=1&b=2) or [your page](https://clinic.example/u/{{ contact.email }})"
    make_audience(mailer, 2)
    with session_scope(mailer.sessions) as session:
        off = newsletters.create_newsletter(session, subject="Off", body_md=body, lists=["newsletter"])
        newsletters.schedule(session, off.id, utcnow(), now=utcnow())
    mailer.drain()
    html = smtp_server.received[0].message.get_body(("html",)).get_content()
    assert "/t/c/" not in html and "/t/o/" not in html
    assert 'href="https://clinic.example/blog?a=1&amp;b=2"' in html
    assert mailer.drain().sent == 0

    tracked = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url, track_opens=True,
                                      track_clicks=True))
    with session_scope(mailer.sessions) as session:
        on = newsletters.create_newsletter(session, subject="On", body_md=body, lists=["newsletter"])
        newsletters.schedule(session, on.id, utcnow(), now=utcnow())
    tracked.extensions["mailer"].drain()
    html = smtp_server.received[-1].message.get_body(("html",)).get_content()
    click = f"https://news.example.org/t/c/{on.id}/{newsletters.link_hash('https://clinic.example/blog?a=1&b=2')}"
    assert f'href="{click}"' in html
    assert "https://clinic.example/u/reader" in html  # a personal link is left as it is, never tracked
    assert f'src="https://news.example.org/t/o/{on.id}.gif"' in html

    web = tracked.test_client()
    answer = web.get(click.removeprefix("https://news.example.org"))
    assert answer.status_code == 302 and answer.headers["Location"] == "https://clinic.example/blog?a=1&b=2"
    assert web.get(f"/t/c/{on.id}/0000000000000000").status_code == 404  # no open redirect
    assert web.get(f"/t/o/{on.id}.gif").headers["Content-Type"] == "image/gif"
    with mailer.read_sessions() as session:
        report = newsletters.report(session, on.id)
    assert report["opens"] == 1
    assert report["clicks"] == [("https://clinic.example/blog?a=1&b=2", 1)]
    assert db.scalar(sa.select(sa.func.count()).select_from(NewsletterLink)) == 1
    # With tracking off the endpoints answer 404 and count nothing.
    assert client.get(click.removeprefix("https://news.example.org")).status_code == 404
    assert client.get(f"/t/o/{on.id}.gif").status_code == 404
    with mailer.read_sessions() as session:
        assert newsletters.report(session, on.id)["opens"] == 1
    tracked.extensions["mailer"].engine.dispose()


def test_pause_holds_the_rest_and_resume_sends_it_once(mailer, smtp_server, db, database_url, tmp_path):
    make_audience(mailer, 30)
    with session_scope(mailer.sessions) as session:
        n = newsletters.create_newsletter(session, subject="Hi", body_md="Hello", lists=["newsletter"])
        newsletters.schedule(session, n.id, utcnow(), now=utcnow())
        newsletters.start_due(session, utcnow())
    with mailer.sender() as sender:  # one small batch goes out, then staff pause
        sender.settings = dataclasses.replace(sender.settings, send_batch_size=10)
        sender.send_batch()
    assert cli(database_url, tmp_path, "newsletter", "pause", "1").output.strip() == "newsletter 1 paused"
    assert mailer.drain().sent == 0
    held = db.scalar(sa.select(sa.func.count()).select_from(Delivery).where(Delivery.status == "held"))
    assert (len(smtp_server.received), held) == (10, 20)
    report = cli(database_url, tmp_path, "newsletter", "report", "1").output
    assert "status: paused" in report and "held: 20" in report and "sent: 10" in report
    assert cli(database_url, tmp_path, "newsletter", "resume", "1").output.strip() == "newsletter 1 resumed"
    assert mailer.drain().sent == 20
    assert len({r.rcpt_tos[0] for r in smtp_server.received}) == 30 == len(smtp_server.received)
    assert db.scalar(sa.select(Newsletter.status)) == "sent"
    again = cli(database_url, tmp_path, "newsletter", "pause", "1")
    assert again.exit_code == 1 and "this one is sent" in again.output


def test_cli_rhythm_ready_check_and_test(mailer, smtp_server, database_url, tmp_path):
    make_audience(mailer, 1)
    assert cli(database_url, tmp_path, "newsletter", "rhythm", "--day", "1st tue", "--at", "09:00").output.strip() \
        == "created rhythm 1"
    cli(database_url, tmp_path, "newsletter", "create", "--subject", "March", "--body-file", "-",
        input="[Blog](http://clinic.example)")
    check = cli(database_url, tmp_path, "newsletter", "check", "1")
    assert check.exit_code == 1
    assert check.output.splitlines() == ["- Link 'http://clinic.example' is not an absolute https:// address.",
                                         "1 problem(s)"]
    ready = cli(database_url, tmp_path, "newsletter", "ready", "1", "--rhythm", "1", "--month", "2099-03")
    assert ready.output.strip() == "newsletter 1 goes out Tuesday 3 March 2099, 09:00 GMT"
    assert cli(database_url, tmp_path, "newsletter", "test", "1", "boss@clinic.example").output.strip() == \
        "queued 1 test copies"
    mailer.drain()
    assert [r.message["Subject"] for r in smtp_server.received] == ["[TEST] March"]


def test_issue_invites_to_upcoming_webinars_in_the_readers_zone_and_links_the_archive(mailer, smtp_server, db):
    from mailer.campaigns import webinars

    make_audience(mailer, 2)
    db.write(sa.update(Contact).where(Contact.email == address(1)).values(timezone="Australia/Sydney"))
    with session_scope(mailer.sessions) as session:
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health", timezone="Europe/London",
                                  starts_local=dt.datetime(2099, 3, 26, 18, 0), join_url="https://meet.example.com/s",
                                  now=utcnow())
        webinars.publish(session, w.id)
        n = newsletters.create_newsletter(
            session, subject="March", lists=["newsletter"],
            body_md="{% for w in upcoming_webinars %}Join {{ w.title }} on {{ w.starts_local }}: {{ w.url }}\n"
                    "{% endfor %}\nPast issues: {{ archive_url }}")
        newsletters.schedule(session, n.id, utcnow(), now=utcnow())
    mailer.drain()
    texts = {r.rcpt_tos[0]: r.message.get_body(("plain",)).get_content() for r in smtp_server.received}
    assert "Join Spine Health on Thursday 26 March 2099, 18:00 GMT: https://news.example.org/webinars/spine-health" \
        in texts[address(0)]
    assert "Join Spine Health on Friday 27 March 2099, 05:00 AEDT" in texts[address(1)]
    assert "Past issues: https://news.example.org/archive" in texts[address(0)]
    html = [r for r in smtp_server.received if r.rcpt_tos == [address(0)]][0].message.get_body(("html",)).get_content()
    assert 'class="issue-title"' in html and ">March</h1>" in html


LOOP_BODY = """Hello {{ contact.first_name or 'there' }},

Our next webinars:

{% for w in upcoming_webinars %}
- [{{ w.title }}]({{ w.url }}) — {{ w.starts_local }}
{% endfor %}

See you soon,
Anna"""


def test_the_readmes_webinar_loop_is_one_list_and_the_sign_off_stays_out(mailer, smtp_server, db):
    """Markdown used to run over the loop's tags as text: the second webinar came out as a
    sub-list and the sign-off inside the list. Now each webinar is an item of one list."""
    from email import message_from_bytes, policy
    from html.parser import HTMLParser

    from mailer.campaigns import webinars

    make_audience(mailer, 1)
    with session_scope(mailer.sessions) as session:
        for slug, title, day in (("spine", "Spine Health", 26), ("sleep", "Sleep Well", 27)):
            w = webinars.save_webinar(session, slug=slug, title=title, timezone="Europe/London",
                                      starts_local=dt.datetime(2099, 3, day, 18, 0),
                                      join_url="https://meet.example.com/s", now=utcnow())
            webinars.publish(session, w.id)
        n = newsletters.create_newsletter(session, subject="March", lists=["newsletter"], body_md=LOOP_BODY)
        newsletters.schedule(session, n.id, utcnow(), now=utcnow())
        # The preview the editor shows has the same webinars as the mail.
        preview = newsletters.preview(mailer.renderer, mailer.settings, subject="March", preheader="",
                                      body_md=LOOP_BODY, layout="default",
                                      upcoming=newsletters.upcoming_for_issue(session, mailer.settings, utcnow()))
    mailer.drain()
    message = message_from_bytes(smtp_server.received[-1].data, policy=policy.default)
    html = message.get_body(("html",)).get_content()

    class Shape(HTMLParser):
        def __init__(self):
            super().__init__()
            self.path, self.items, self.paragraphs_in_lists, self.lists = [], [], 0, 0

        def handle_starttag(self, tag, attrs):
            if tag in ("ul", "ol"):
                self.lists += 1
            if tag == "li":
                self.items.append([p for p in self.path if p in ("ul", "ol", "li")])
            if tag == "p" and "li" in self.path:
                self.paragraphs_in_lists += 1
            self.path.append(tag)

        def handle_endtag(self, tag):
            while self.path and self.path.pop() != tag:
                pass

    for page in (html, preview.html):
        shape = Shape()
        shape.feed(page)
        assert shape.lists == 1 and shape.items == [["ul"], ["ul"]] and shape.paragraphs_in_lists == 0
        assert "Sleep Well</a> — Friday 27 March 2099, 18:00 GMT</li>" in page
        assert page.index("See you soon") > page.index("</ul>")
    text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert ("Our next webinars:\n\n"
            "- [Spine Health](https://news.example.org/webinars/spine) — Thursday 26 March 2099, 18:00 GMT\n"
            "- [Sleep Well](https://news.example.org/webinars/sleep) — Friday 27 March 2099, 18:00 GMT\n\n"
            "See you soon,") in text


def test_cli_duplicates_and_deletes_drafts(database_url, tmp_path, db):
    assert cli(database_url, tmp_path, "newsletter", "create", "--subject", "June", "--body-file", "-",
               input="Hello.").exit_code == 0
    assert cli(database_url, tmp_path, "newsletter", "duplicate", "1").output == \
        "created newsletter 2 (draft), a copy of 1\n"
    assert cli(database_url, tmp_path, "newsletter", "delete", "2").output == "deleted draft 2\n"
    assert db.scalars(sa.select(Newsletter.id)) == [1]
    assert cli(database_url, tmp_path, "newsletter", "cancel", "1").exit_code == 0
    refused = cli(database_url, tmp_path, "newsletter", "delete", "1")
    assert refused.exit_code == 1 and "Only a draft can be deleted" in refused.output
