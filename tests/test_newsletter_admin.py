"""Staff newsletter pages: login and roles, the editor (template problems, nothing lost),
the live preview, preview as a contact (audited), scheduling in the organisation's zone,
send now, test sends, cancel and the report."""
from __future__ import annotations

import datetime as dt
import html
import re

import pytest
import sqlalchemy as sa

from mailer.audience import contacts
from mailer.campaigns import newsletters
from mailer.staff import users
from mailer.db import session_scope, utcnow
from mailer.models import AuditLog, Contact, Newsletter
from tests.audience import address, make_audience

PASSWORD = "correct horse battery staple"
UTC = dt.timezone.utc
BODY = "Hello {{ contact.first_name }},\n\nThis month: **three habits**.\n\n[Blog](https://clinic.example/blog)\n"


def _csrf(page_text: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page_text).group(1)


class Staff:
    """A logged-in staff member's browser: every POST carries the session's CSRF token."""

    def __init__(self, client, token: str):
        self.client, self.token = client, token

    def get(self, path: str, **kwargs):
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: dict | None = None, **kwargs):
        return self.client.post(path, data={"csrf_token": self.token, **(data or {})}, **kwargs)


def log_in(app, email: str, role: str = "editor") -> Staff:
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, email, PASSWORD, role)
    client = app.test_client()
    token = _csrf(client.get("/admin/login").text)
    answer = client.post("/admin/login", data={"email": email, "password": PASSWORD, "csrf_token": token})
    assert answer.status_code == 302
    return Staff(client, _csrf(client.get("/admin/newsletters").text))


@pytest.fixture
def editor(app) -> Staff:
    return log_in(app, "editor@clinic.example")


def compose(staff: Staff, subject="March news for {{ contact.first_name }}", body=BODY, public=False, **extra):
    data = {"subject": subject, "preheader": "Three habits", "layout": "default", "lists": "newsletter",
            "body_md": body, **extra}
    if public:
        data["public"] = "yes"
    answer = staff.post("/admin/newsletters/new", data)
    assert answer.status_code == 302, answer.text
    return int(answer.headers["Location"].rsplit("/", 1)[1])


def text_of(page: str) -> str:
    """The page's visible text, roughly: tags dropped, entities decoded, spaces folded."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_every_newsletter_page_needs_a_login(app):
    client = app.test_client()
    token = _csrf(client.get("/admin/login").text)  # a valid token, but no one is logged in
    for path in ("/admin/newsletters", "/admin/newsletters/new", "/admin/newsletters/1",
                 "/admin/newsletters/1/edit", "/admin/newsletters/1/preview.html", "/admin/newsletters/1/preview.txt"):
        answer = client.get(path)
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/admin/login?next="), path
    for path in ("/admin/newsletters/new", "/admin/newsletters/preview", "/admin/newsletters/1/edit",
                 "/admin/newsletters/1/schedule", "/admin/newsletters/1/send-now", "/admin/newsletters/1/cancel",
                 "/admin/newsletters/1/test"):
        answer = client.post(path, data={"csrf_token": token, "subject": "x", "body_md": "x"})
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/admin/login?next="), path


def test_a_viewer_may_look_but_not_change(app, editor, db):
    newsletter_id = compose(editor)
    viewer = log_in(app, "viewer@clinic.example", role="viewer")
    listing = viewer.get("/admin/newsletters")
    assert listing.status_code == 200 and "March news for" in listing.text
    assert "New newsletter" not in listing.text
    page = viewer.get(f"/admin/newsletters/{newsletter_id}")
    assert page.status_code == 200
    assert "Send now" not in page.text and "Send a test" not in page.text and ">Edit<" not in page.text
    assert viewer.get(f"/admin/newsletters/{newsletter_id}/preview.html").status_code == 200
    assert viewer.get("/admin/newsletters/new").status_code == 403
    assert viewer.get(f"/admin/newsletters/{newsletter_id}/edit").status_code == 403
    for path, data in (("/admin/newsletters/new", {"subject": "x", "body_md": "x", "lists": "newsletter"}),
                       (f"/admin/newsletters/{newsletter_id}/edit", {"subject": "x", "body_md": "x",
                                                                     "lists": "newsletter"}),
                       ("/admin/newsletters/preview", {"subject": "x", "body_md": "x"}),
                       (f"/admin/newsletters/{newsletter_id}/schedule", {"date": "2099-01-01", "time": "09:00"}),
                       (f"/admin/newsletters/{newsletter_id}/send-now", {}),
                       (f"/admin/newsletters/{newsletter_id}/test", {"addresses": "v@clinic.example"}),
                       (f"/admin/newsletters/{newsletter_id}/cancel", {})):
        assert viewer.post(path, data).status_code == 403, path
    assert db.execute(sa.select(Newsletter.subject, Newsletter.status)) == [
        ("March news for {{ contact.first_name }}", "draft")]


def test_changes_need_the_csrf_token(editor, db):
    answer = editor.client.post("/admin/newsletters/new", data={"subject": "Hi", "body_md": "x", "lists": "newsletter"})
    assert answer.status_code == 400 and "CSRF" in answer.text
    assert db.scalar(sa.select(sa.func.count()).select_from(Newsletter)) == 0


def test_a_template_problem_is_shown_with_its_line_and_nothing_typed_is_lost(editor, db):
    body = "Hello {{ contact.first_name }},\n\n<b>News</b> & more.\n{{ coupon }}\n"
    answer = editor.post("/admin/newsletters/new", {"subject": "Spring <news>", "preheader": "Pre & head",
                                                   "layout": "default", "lists": "newsletter", "body_md": body,
                                                   "public": "yes"})
    assert answer.status_code == 400
    assert "body, line 4: unknown name &#39;coupon&#39;" in answer.text
    assert 'aria-invalid="true" aria-describedby="body-error"' in answer.text
    # Everything typed comes back, escaped (never as markup).
    assert f'<textarea id="body_md" name="body_md" rows="18" spellcheck="true" aria-invalid="true" ' \
           f'aria-describedby="body-error">{html.escape(body, quote=True)}</textarea>' in answer.text
    assert 'value="Spring &lt;news&gt;"' in answer.text and 'value="Pre &amp; head"' in answer.text
    assert re.search(r'name="public" value="yes" checked', answer.text)
    assert re.search(r'name="lists" value="newsletter" checked', answer.text)
    assert db.scalar(sa.select(sa.func.count()).select_from(Newsletter)) == 0

    syntax = editor.post("/admin/newsletters/new", {"subject": "Hi", "layout": "default", "lists": "newsletter",
                                                   "body_md": "One\n\n{% if contact.name %}\nno end"})
    assert syntax.status_code == 400 and "body, line 3:" in syntax.text
    no_list = editor.post("/admin/newsletters/new", {"subject": "Hi", "layout": "default", "body_md": "Hi"})
    assert no_list.status_code == 400 and "Choose at least one existing list." in no_list.text


def test_the_editor_shows_the_names_a_template_may_use(editor):
    page = editor.get("/admin/newsletters/new").text
    for name in ("contact.first_name", "contact.name", "contact.email", "unsubscribe_url", "organisation",
                 "postal_address", "base_url"):
        assert f"<code>{{{{ {name} }}}}</code>" in page, name
    assert '<option value="default" selected>default</option>' in page
    assert 'src="/static/newsletter_editor.js"' in page and "<script>" not in page


def test_a_new_newsletter_is_saved_and_listed(editor, db):
    newsletter_id = compose(editor, subject="Spine <b>Health</b> monthly", public=True)
    assert db.execute(sa.select(Newsletter.subject, Newsletter.status, Newsletter.public, Newsletter.body_md)) == [
        ("Spine <b>Health</b> monthly", "draft", True, BODY)]
    page = editor.get(f"/admin/newsletters/{newsletter_id}")
    assert "Draft saved." in page.text
    listing = editor.get("/admin/newsletters")
    assert f'<a href="/admin/newsletters/{newsletter_id}">Spine &lt;b&gt;Health&lt;/b&gt; monthly</a>' in listing.text
    assert "<b>Health</b>" not in listing.text
    assert '<span class="status status-draft">draft</span>' in listing.text

    edited = editor.post(f"/admin/newsletters/{newsletter_id}/edit", {
        "subject": "Spine Health, April", "preheader": "", "layout": "default", "lists": "newsletter",
        "body_md": "New text"})
    assert edited.status_code == 302
    assert db.execute(sa.select(Newsletter.subject, Newsletter.body_md, Newsletter.public)) == [
        ("Spine Health, April", "New text", False)]
    form = editor.get(f"/admin/newsletters/{newsletter_id}/edit").text
    assert 'value="Spine Health, April"' in form and ">New text</textarea>" in form


def test_preview_is_personalised_for_a_sample_reader_and_escapes_markup(editor):
    fields = {"subject": "Hi {{ contact.first_name }} & <friends>", "preheader": "P", "layout": "default",
              "body_md": "Hello {{ contact.first_name }}\n\n<script>alert(1)</script><b onclick=\"x()\">bold</b>"}
    answer = editor.post("/admin/newsletters/preview", fields, headers={"Accept": "application/json"})
    assert answer.status_code == 200
    assert answer.json["subject"] == "Hi Alex & <friends>"
    assert answer.json["text"].startswith("Hello Alex")
    page = answer.json["html"]
    assert "Hello Alex" in page
    assert "<script" not in page and "onclick" not in page and "<b>bold</b>" in page
    assert "Hi Alex &amp; &lt;friends&gt;" in page  # the subject as the page title, escaped

    # Without JavaScript the same endpoint answers with the HTML itself, sandboxed.
    as_html = editor.post("/admin/newsletters/preview", {**fields, "part": "both"})
    assert as_html.status_code == 200 and as_html.mimetype == "text/html"
    csp = as_html.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox ") and "allow-scripts" not in csp and "default-src 'none'" in csp
    assert "Hello Alex" in as_html.text and "Text part" in as_html.text
    assert as_html.text.index("Text part") < as_html.text.index("</body>")

    bad = editor.post("/admin/newsletters/preview", {**fields, "body_md": "fine\n{{ contact.nickname }}"},
                      headers={"Accept": "application/json"})
    assert bad.status_code == 400
    assert bad.json["error"]["message"] == "body, line 2: 'contact' has no 'nickname' (it has: email, fields, first_name, name)"
    bad_frame = editor.post("/admin/newsletters/preview", {**fields, "layout": "../confirmation/body"})
    assert bad_frame.status_code == 400 and "Unknown layout" in bad_frame.text
    assert bad_frame.headers["Content-Security-Policy"].startswith("sandbox ")


def test_every_preview_lists_the_webinars_the_mail_would(editor, mailer):
    """The editor's preview, the saved preview, its text part and the API's preview render
    with the same upcoming webinars as the send (they used to show an empty list)."""
    from mailer.campaigns import webinars

    with session_scope(mailer.sessions) as session:
        w = webinars.save_webinar(session, slug="spine", title="Spine Health", timezone="Europe/London",
                                  starts_local=dt.datetime(2099, 3, 26, 18, 0), join_url="https://meet.example.com/s",
                                  now=utcnow())
        webinars.publish(session, w.id)
    body = "Next:\n\n{% for w in upcoming_webinars %}\n- {{ w.title }}, {{ w.starts_local }}\n{% endfor %}\n"
    live = editor.post("/admin/newsletters/preview", {"subject": "S", "preheader": "", "layout": "default",
                                                      "body_md": body}, headers={"Accept": "application/json"})
    assert "- Spine Health, Thursday 26 March 2099, 18:00 GMT" in live.json["text"]
    assert "<li>Spine Health, Thursday 26 March 2099, 18:00 GMT</li>" in live.json["html"]
    newsletter_id = compose(editor, subject="S", body=body)
    assert "<li>Spine Health, Thursday 26 March 2099" in editor.get(f"/admin/newsletters/{newsletter_id}/preview.html").text
    assert "- Spine Health, Thursday 26 March 2099" in editor.get(f"/admin/newsletters/{newsletter_id}/preview.txt").text


def test_preview_as_a_contact_uses_their_name_and_is_audited(app, editor, mailer, db):
    newsletter_id = compose(editor)
    with session_scope(mailer.sessions) as session:
        ada_id = contacts.get_or_create_contact(session, mailer.settings, "ada@example.com",
                                                name="Ada <b>Lovelace</b>", now=utcnow()).id
    sample = editor.get(f"/admin/newsletters/{newsletter_id}/preview.html")
    assert "Hello Alex" in sample.text
    assert db.scalar(sa.select(sa.func.count()).select_from(AuditLog)) == 0

    answer = editor.get(f"/admin/newsletters/{newsletter_id}/preview.html?contact=Ada@Example.com")
    assert answer.status_code == 200
    assert answer.headers["Content-Security-Policy"].startswith("sandbox ")
    assert answer.headers["Cache-Control"] == "no-store"
    assert "Hello Ada" in answer.text and "<b>Lovelace</b>" not in answer.text
    text = editor.get(f"/admin/newsletters/{newsletter_id}/preview.txt?contact=ada@example.com")
    assert text.mimetype == "text/plain" and "Subject: March news for Ada" in text.text
    editor_id = db.scalar(sa.select(AuditLog.user_id))
    assert db.execute(sa.select(AuditLog.user_id, AuditLog.action, AuditLog.detail)) == [
        (editor_id, "preview_as_contact", f"newsletter {newsletter_id} as contact {ada_id}")] * 2

    unknown = editor.get(f"/admin/newsletters/{newsletter_id}/preview.html?contact=nobody@example.com")
    assert unknown.status_code == 404 and "No contact has the address nobody@example.com." in unknown.text
    assert db.scalar(sa.select(sa.func.count()).select_from(AuditLog)) == 2
    assert editor.get("/admin/newsletters/99/preview.html").status_code == 404
    assert editor.get("/admin/newsletters/99").status_code == 404


def next_july_15() -> dt.date:
    today = utcnow().date()
    return dt.date(today.year + 1, 7, 15)


def test_scheduling_for_a_local_time_stores_the_right_utc_instant(editor, mailer, db):
    make_audience(mailer, 2)
    newsletter_id = compose(editor)
    day = next_july_15()
    local = f"{day:%A} 15 July {day.year}, 09:00 BST"
    # First the question, with when and to how many; nothing is scheduled yet.
    asked = editor.post(f"/admin/newsletters/{newsletter_id}/schedule", {"date": day.isoformat(), "time": "09:00"})
    assert asked.status_code == 200
    assert (f"Schedule “March news for Alex” for {local} to 2 subscribers of Monthly newsletter (counted now; "
            "counted again when it starts)?") in text_of(asked.text)
    assert db.scalar(sa.select(Newsletter.status)) == "draft"
    answer = editor.post(f"/admin/newsletters/{newsletter_id}/schedule", {"date": day.isoformat(), "time": "09:00",
                                                                         "confirm": "yes"})
    assert answer.status_code == 302
    # July in Europe/London is summer time (UTC+1): 09:00 there is 08:00 UTC.
    assert db.execute(sa.select(Newsletter.status, Newsletter.send_at)) == [
        ("scheduled", dt.datetime(day.year, 7, 15, 8, 0, tzinfo=UTC))]
    assert f"Scheduled for {local}." in editor.get(f"/admin/newsletters/{newsletter_id}").text
    listing = editor.get("/admin/newsletters").text
    compact = "\xa0".join((f"{day:%a}", "15", "Jul", str(day.year), "09:00", "BST"))  # one line in the table
    assert f'<td class="when">{compact}</td>' in listing
    assert "March news for Alex" in listing and "{{" not in listing  # the subject as the sample reader reads it
    assert "Send time (Europe/London)" in listing
    # The form shows the scheduled local time again.
    page = editor.get(f"/admin/newsletters/{newsletter_id}").text
    assert f'name="date" value="{day.isoformat()}"' in page and 'name="time" value="09:00"' in page


@pytest.mark.parametrize("date, time, message", [
    ("2020-01-01", "09:00", "That time has passed; choose a later one, or send now."),
    ("{year}-03-{last_sunday}", "01:30", "does not exist in Europe/London (the clocks go forward)."),
    ("not a date", "09:00", "Give a date and a time"),
])
def test_a_send_time_that_cannot_be_used_is_explained(editor, mailer, db, date, time, message):
    make_audience(mailer, 1)
    newsletter_id = compose(editor)
    year = utcnow().year + 1
    last_sunday = max(d for d in range(25, 32) if dt.date(year, 3, d).weekday() == 6)
    answer = editor.post(f"/admin/newsletters/{newsletter_id}/schedule",
                         {"date": date.format(year=year, last_sunday=last_sunday), "time": time})
    assert answer.status_code == 400
    assert message in html.unescape(answer.text)
    assert f'name="time" value="{time}"' in answer.text  # what was typed stays
    assert db.scalar(sa.select(Newsletter.status)) == "draft"


def test_send_now_then_the_report_shows_what_was_sent(editor, mailer, smtp_server, db):
    make_audience(mailer, 3)
    newsletter_id = compose(editor)
    page = editor.get(f"/admin/newsletters/{newsletter_id}").text
    assert "Ready to send" in page
    assert "<th>Audience</th><td>3 " in page
    asked = editor.post(f"/admin/newsletters/{newsletter_id}/send-now")
    assert "Send “March news for Alex” to 3 subscribers of Monthly newsletter now?" in text_of(asked.text)
    mailer.drain()
    assert smtp_server.received == []  # asked, not sent
    assert editor.post(f"/admin/newsletters/{newsletter_id}/send-now", {"confirm": "yes"}).status_code == 302
    mailer.drain()
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received) == [address(0), address(1), address(2)]
    page = editor.get(f"/admin/newsletters/{newsletter_id}").text
    assert '<span class="status status-sent">sent</span>' in page
    assert '<td data-figure="audience">3</td>' in page and '<td data-figure="sent">3</td>' in page
    assert '<td data-figure="failed">0</td>' in page and '<td data-figure="unsubscribes">0</td>' in page
    chart = re.search(r'<svg class="chart".*?</svg>', page, re.S).group(0)
    assert len(re.findall(r'<rect class="bar"', chart)) >= 1
    assert sum(int(n) for n in re.findall(r": (\d+)</title>", chart)) == 3
    listing = editor.get("/admin/newsletters").text
    assert "<td>3 / 3</td>" in listing
    # Once sent it can no longer be edited or scheduled.
    refused = editor.post(f"/admin/newsletters/{newsletter_id}/schedule", {"date": next_july_15().isoformat(),
                                                                          "time": "09:00"})
    assert refused.status_code == 400 and "it can no longer be changed" in refused.text


def test_an_issue_nobody_would_receive_is_not_scheduled(editor, db):
    newsletter_id = compose(editor)
    refused = editor.post(f"/admin/newsletters/{newsletter_id}/send-now")
    assert refused.status_code == 400
    assert "No one would receive it: its lists have no active subscribers. Nothing was scheduled." in text_of(
        refused.text)
    assert "Send now" not in text_of(refused.text).split("Nothing was scheduled.")[1]
    assert db.scalar(sa.select(Newsletter.status)) == "draft"


def test_a_test_send_arrives_marked_and_is_not_counted(editor, mailer, smtp_server, db):
    make_audience(mailer, 1)
    newsletter_id = compose(editor, subject="April news")
    answer = editor.post(f"/admin/newsletters/{newsletter_id}/test",
                         {"addresses": "boss@clinic.example,\nhelper@clinic.example"})
    assert answer.status_code == 302
    assert "A [TEST] copy is on its way to 2 address(es)." in editor.get(answer.headers["Location"]).text
    mailer.drain()
    assert sorted((r.rcpt_tos[0], r.message["Subject"]) for r in smtp_server.received) == [
        ("boss@clinic.example", "[TEST] April news"), ("helper@clinic.example", "[TEST] April news")]
    with mailer.read_sessions() as session:
        assert newsletters.report(session, newsletter_id)["sent"] == 0
    assert db.scalar(sa.select(Newsletter.status)) == "draft"
    # Nobody was added to the contacts: the copies went to the addresses as they are.
    assert not db.scalars(sa.select(Contact.email).where(Contact.email.like("%@clinic.example")))
    assert editor.get("/admin/deliveries").text.count("(not a contact)") == 2
    too_many = ", ".join(f"p{i}@clinic.example" for i in range(11))
    refused = editor.post(f"/admin/newsletters/{newsletter_id}/test", {"addresses": too_many})
    assert refused.status_code == 400 and "Give between 1 and 10 addresses." in refused.text
    assert too_many in refused.text  # kept in the form


def test_cancel_a_scheduled_newsletter(editor, mailer, smtp_server, db):
    make_audience(mailer, 2)
    newsletter_id = compose(editor)
    editor.post(f"/admin/newsletters/{newsletter_id}/schedule", {"date": next_july_15().isoformat(), "time": "09:00",
                                                                  "confirm": "yes"})
    asked = editor.post(f"/admin/newsletters/{newsletter_id}/cancel")
    assert ("Cancel “March news for Alex”? It will not be sent to 2 subscribers of Monthly newsletter."
            in text_of(asked.text))
    answer = editor.post(f"/admin/newsletters/{newsletter_id}/cancel", {"confirm": "yes"})
    assert answer.status_code == 302
    assert db.scalar(sa.select(Newsletter.status)) == "cancelled"
    assert mailer.drain(clock=lambda: dt.datetime(next_july_15().year, 7, 16, tzinfo=UTC)).sent == 0
    again = editor.post(f"/admin/newsletters/{newsletter_id}/cancel")
    assert again.status_code == 400 and "already cancelled" in again.text
    page = editor.get(f"/admin/newsletters/{newsletter_id}").text
    assert "Cancel this newsletter" not in page and "Send now" not in page


def test_rhythm_created_edited_stopped_and_an_issue_made_ready_for_a_month(editor, db):
    bad = editor.post("/admin/newsletters/rhythms", {"name": "Monthly", "week": "day", "weekday": "31",
                                                     "time": "09:00", "timezone": "Europe/London"})
    assert bad.status_code == 400
    assert "Choose a day of the month from 1 to 28 (every month has those)." in text_of(bad.text)
    assert 'value="day" selected' in bad.text  # what was chosen stays chosen
    bad_zone = editor.post("/admin/newsletters/rhythms", {"name": "Monthly", "week": "1st", "weekday": "tue",
                                                          "time": "09:00", "timezone": "Mars/Olympus"})
    assert "Unknown time zone 'Mars/Olympus'; choose one from the list." in text_of(bad_zone.text)
    made = editor.post("/admin/newsletters/rhythms", {"name": "Monthly", "week": "1st", "weekday": "tue",
                                                      "time": "09:00", "timezone": "Europe/London"})
    assert made.status_code == 302
    assert "the first Tuesday of each month" in text_of(editor.get("/admin/newsletters").text)
    newsletter_id = compose(editor)
    ready = editor.post(f"/admin/newsletters/{newsletter_id}/ready", {"rhythm_id": "1", "month": "2099-04"})
    assert ready.status_code == 302
    page = text_of(editor.get(f"/admin/newsletters/{newsletter_id}").text)
    assert "Ready: it goes out at that month's send time." in page
    assert db.scalar(sa.select(Newsletter.send_at)) == dt.datetime(2099, 4, 7, 8, 0, tzinfo=dt.timezone.utc)

    # Edit: the form comes back filled in; the 15th at 10:30 from now on.
    form = editor.get("/admin/newsletters?rhythm=1").text
    assert 'value="1st" selected' in form and 'value="tue" selected' in form and "Change the rhythm" in form
    changed = editor.post("/admin/newsletters/rhythms/1", {"name": "Monthly", "week": "day", "weekday": "15",
                                                           "time": "10:30", "timezone": "Europe/London"})
    assert changed.status_code == 302
    listing = text_of(editor.get("/admin/newsletters").text)
    assert "the 15th of each month 10:30 Europe/London" in listing
    # The month made ready keeps its time; stopping the rhythm leaves the issue scheduled.
    assert db.scalar(sa.select(Newsletter.send_at)) == dt.datetime(2099, 4, 7, 8, 0, tzinfo=dt.timezone.utc)
    assert editor.post("/admin/newsletters/rhythms/1/delete").status_code == 302
    assert "the 15th of each month" not in text_of(editor.get("/admin/newsletters").text)
    assert db.scalar(sa.select(Newsletter.status)) == "scheduled"


def test_duplicate_any_issue_and_delete_a_draft(editor, mailer, db):
    make_audience(mailer, 1)
    first = compose(editor, subject="April for {{ contact.first_name }}")
    editor.post(f"/admin/newsletters/{first}/send-now", {"confirm": "yes"})
    mailer.drain()
    copied = editor.post(f"/admin/newsletters/{first}/duplicate")
    assert copied.status_code == 302
    copy_id = int(copied.headers["Location"].rstrip("/").split("/")[-2])
    page = editor.get(copied.headers["Location"]).text
    assert "A copy, as a new draft" in page and 'value="April for {{ contact.first_name }}"' in html.unescape(page)
    assert db.execute(sa.select(Newsletter.id, Newsletter.status).order_by(Newsletter.id)) == [
        (first, "sent"), (copy_id, "draft")]
    asked = editor.post(f"/admin/newsletters/{copy_id}/delete")
    assert "Delete the draft “April for Alex”? It cannot be undone." in text_of(asked.text)
    done = editor.post(f"/admin/newsletters/{copy_id}/delete", {"confirm": "yes"}, follow_redirects=True)
    assert "Deleted the draft “April for Alex”." in text_of(done.text)
    assert db.scalar(sa.select(sa.func.count()).select_from(Newsletter)) == 1
    refused = editor.post(f"/admin/newsletters/{first}/delete", {"confirm": "yes"})
    assert refused.status_code == 400 and "Only a draft can be deleted; this one is sent" in text_of(refused.text)
