"""Staff automation pages: create, add steps (template problems refused with the text kept),
start, pause, resume, archive; the timeline, pre-flight, per-step report, a reader's plan
(audited), saved previews as a sample or a real reader, test sends received over SMTP,
enrolling by hand from the automation's page and from the contact's page; viewers look only."""
from __future__ import annotations

import datetime as dt
import html
import io
import re
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from mailer.audience import contacts
from mailer.campaigns import sequences
from mailer.db import session_scope
from mailer.models import AuditLog, Contact, Enrolment, MailingList, Sequence
from tests.test_newsletter_admin import log_in
from tests.test_sequences import subscriber


def seen(page: str) -> str:
    """The page's text as a reader sees it: no tags, entities decoded, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def newsletter_list(mailer) -> int:
    with mailer.read_sessions() as session:
        return session.scalar(sa.select(MailingList.id).where(MailingList.slug == "newsletter"))


def create(staff, mailer, name="Welcome series") -> int:
    list_id = newsletter_list(mailer)
    answer = staff.post("/admin/automations/new", {"name": name, "trigger": "confirmed", "list_id": str(list_id),
                                                   "trigger_list_id": str(list_id)})
    assert answer.status_code == 302, answer.text
    return int(answer.headers["Location"].rstrip("/").rsplit("/", 1)[1])


def step(staff, sequence_id, subject, body="Hello {{ contact.first_name }}.", **extra):
    data = {"subject": subject, "preheader": "", "layout": "default", "body_md": body, "delay": "0",
            "delay_unit": "days", "window": "", "condition": "", **extra}
    return staff.post(f"/admin/automations/{sequence_id}/steps/new", data)


def test_staff_build_start_and_watch_an_automation(app, mailer, smtp_server, db):
    editor = log_in(app, "editor@clinic.example")
    sequence_id = create(editor, mailer)
    page = editor.get(f"/admin/automations/{sequence_id}").text
    assert "Someone confirms their subscription to" in page and "No steps yet" in page

    # A template problem is refused and nothing typed is lost.
    bad = step(editor, sequence_id, "Hi {{ contact.frist_name }}", body="Typed with care.")
    assert bad.status_code == 400
    assert "frist_name" in html.unescape(bad.text) and "Typed with care." in bad.text
    bad = step(editor, sequence_id, "Hi", window="sometimes 9-5")
    assert bad.status_code == 400 and "weekdays 09:00-11:00" in html.unescape(bad.text)

    assert step(editor, sequence_id, "Welcome, {{ contact.first_name }}").status_code == 302
    # The page runs on the real clock: pick a window that Anna's clock (Berlin) is not in
    # 3 days from now, so step 2 always waits for it (09:00-11:00 failed a run at 09:xx).
    due = dt.datetime.now(ZoneInfo("Europe/Berlin")) + dt.timedelta(days=3)
    window = "weekdays 09:00-11:00" if not 8 <= due.hour < 12 else "weekdays 15:00-17:00"
    assert step(editor, sequence_id, "The psoas stretch", delay="3", window=window).status_code == 302
    assert step(editor, sequence_id, "Shoulder bridge", delay="4", condition="on_list",
                condition_list=str(newsletter_list(mailer))).status_code == 302
    page = seen(editor.get(f"/admin/automations/{sequence_id}").text)
    assert "At enrolment" in page and f"3 days after the previous step · sent {window}" in page
    assert "only if still on Monthly newsletter" in page
    assert page.count("Ready") >= 3

    # Start it; Anna's timeline: as if enrolled now, then enrolled by hand.
    assert editor.post(f"/admin/automations/{sequence_id}/activate").status_code == 302
    anna = subscriber(mailer, "anna@example.com", "Anna Berg", "Europe/Berlin")
    page = html.unescape(editor.get(f"/admin/automations/{sequence_id}?contact=anna@example.com").text)
    assert "Not in this automation: shown as if enrolled now." in page and "(Europe/Berlin)" in page
    answer = editor.post("/admin/automations/enrol", {"sequence": str(sequence_id), "email": "anna@example.com"})
    assert answer.status_code == 302
    again = editor.post("/admin/automations/enrol", {"sequence": str(sequence_id), "email": "anna@example.com"})
    assert again.status_code == 400 and "in the automation already" in html.unescape(again.text)
    mailer.drain()
    [welcome] = [r.message for r in smtp_server.received if r.rcpt_tos == ["anna@example.com"]]
    assert welcome["Subject"] == "Welcome, Anna"
    page = seen(editor.get(f"/admin/automations/{sequence_id}?contact=anna@example.com").text)
    assert "Enrolled" in page and "sent" in page and f"waits for the window ({window})" in page
    with mailer.read_sessions() as session:
        actions = session.scalars(sa.select(AuditLog.detail).where(AuditLog.action.in_(
            ["sequence.plan", "sequence.enrol"]))).all()
    assert f"sequence {sequence_id}, contact {anna}" in actions
    assert f"sequence {sequence_id} for contact {anna}" in actions
    assert not any("anna@" in detail for detail in actions)  # ids in the audit log, never addresses

    # The report counts what was sent per step.
    page = seen(editor.get(f"/admin/automations/{sequence_id}").text)
    report = page[page.index("Report Step Subject Sent"):]
    assert "1 Welcome, {{ contact.first_name }} 1 0 0 0 0 0" in report

    # The contact's page shows the enrolment and the next step.
    page = html.unescape(editor.get(f"/admin/contacts/{anna}").text)
    assert "Welcome series" in page and "The psoas stretch" in page

    # Pause, resume, archive.
    assert editor.post(f"/admin/automations/{sequence_id}/pause").status_code == 302
    assert "paused" in editor.get("/admin/automations").text
    assert editor.post(f"/admin/automations/{sequence_id}/resume").status_code == 302
    refused = editor.post(f"/admin/automations/{sequence_id}/activate")
    assert refused.status_code == 400 and "only a draft can be started" in refused.text
    assert editor.post(f"/admin/automations/{sequence_id}/archive").status_code == 302
    with mailer.read_sessions() as session:
        assert session.get(Sequence, sequence_id).status == "archived"


def test_step_previews_test_sends_and_deleting_a_step(app, mailer, smtp_server, db):
    editor = log_in(app, "editor@clinic.example")
    sequence_id = create(editor, mailer, "Course")
    step(editor, sequence_id, "Lesson for {{ contact.first_name }}", body="Dear {{ contact.first_name }}, **stretch**.")
    with mailer.read_sessions() as session:
        [step_id] = [s.id for s in sequences.live_steps(session, sequence_id)]
    subscriber(mailer, "bo@example.com", "Bo Lind")

    sample = editor.get(f"/admin/automations/{sequence_id}/steps/{step_id}/preview.html")
    assert sample.status_code == 200 and "Dear Alex" in sample.text and "<strong>stretch</strong>" in sample.text
    assert "sandbox" in sample.headers["Content-Security-Policy"]
    real = editor.get(f"/admin/automations/{sequence_id}/steps/{step_id}/preview.txt?contact=bo@example.com")
    assert "Subject: Lesson for Bo" in real.text and "Dear Bo" in real.text
    missing = editor.get(f"/admin/automations/{sequence_id}/steps/{step_id}/preview.html?contact=nobody@example.com")
    assert missing.status_code == 404

    # A test copy of a draft's step arrives marked [TEST].
    sent = editor.post(f"/admin/automations/{sequence_id}/steps/{step_id}/test", {"addresses": "me@clinic.example"})
    assert sent.status_code == 302
    bad = editor.post(f"/admin/automations/{sequence_id}/steps/{step_id}/test", {"addresses": "not an address"})
    assert bad.status_code == 400 and "not an address" in html.unescape(bad.text)
    mailer.drain()
    [test_copy] = [r.message for r in smtp_server.received if r.rcpt_tos == ["me@clinic.example"]]
    assert db.scalar(sa.select(Contact.id).where(Contact.email == "me@clinic.example")) is None  # not made a contact
    assert test_copy["Subject"].startswith("[TEST] Lesson for")

    # Edit keeps the text; delete removes the step from the timeline.
    page = editor.get(f"/admin/automations/{sequence_id}/steps/{step_id}").text
    assert "Dear {{ contact.first_name }}, **stretch**." in html.unescape(page)
    assert editor.post(f"/admin/automations/{sequence_id}/steps/{step_id}/delete").status_code == 302
    assert "No steps yet" in editor.get(f"/admin/automations/{sequence_id}").text
    assert editor.get(f"/admin/automations/{sequence_id}/steps/{step_id}").status_code == 404


def test_enrol_from_the_contact_page_and_viewers_only_look(app, mailer, db):
    editor = log_in(app, "editor@clinic.example")
    sequence_id = create(editor, mailer, "Manual course")
    step(editor, sequence_id, "Lesson 1")
    cleo = subscriber(mailer, "cleo@example.com", "Cleo")
    page = editor.get(f"/admin/contacts/{cleo}").text
    assert "In no automation." in page and "Enrol in" in page
    answer = editor.post("/admin/automations/enrol", {"sequence": str(sequence_id), "contact_id": str(cleo),
                                                      "from": "contact"})
    assert answer.status_code == 302 and answer.headers["Location"].endswith(f"/admin/contacts/{cleo}")
    page = editor.get(f"/admin/contacts/{cleo}").text
    assert "Manual course" in page and "In no automation." not in page
    with mailer.read_sessions() as session:
        assert session.scalar(sa.select(Enrolment.contact_id)) == cleo

    # Someone not on the automation's list is refused, with the reason.
    with session_scope(mailer.sessions) as session:
        stranger = contacts.get_or_create_contact(session, mailer.settings, "stranger@example.com",
                                                  now=dt.datetime.now(dt.timezone.utc)).id
    refused = editor.post("/admin/automations/enrol", {"sequence": str(sequence_id), "contact_id": str(stranger),
                                                       "from": "contact"})
    assert refused.status_code == 400 and "not subscribed to the sequence's list" in seen(refused.text)

    viewer = log_in(app, "viewer@clinic.example", role="viewer")
    assert viewer.get(f"/admin/automations/{sequence_id}").status_code == 200
    assert "Add a step" not in viewer.get(f"/admin/automations/{sequence_id}").text
    assert viewer.post(f"/admin/automations/{sequence_id}/pause").status_code == 403
    assert viewer.get(f"/admin/automations/{sequence_id}/steps/new").status_code == 403


def test_enrol_many_from_a_csv_counts_who_was_not_added(app, mailer, db):
    editor = log_in(app, "editor@clinic.example")
    sequence_id = create(editor, mailer, "Course")
    step(editor, sequence_id, "Lesson 1")
    for name in ("ann", "bob", "cy"):
        subscriber(mailer, f"{name}@example.com", name.title())
    with session_scope(mailer.sessions) as session:
        contacts.get_or_create_contact(session, mailer.settings, "outsider@example.com",
                                       now=dt.datetime.now(dt.timezone.utc))
        sequences.enrol(session, sequence_id, db.scalar(sa.select(Contact.id).where(Contact.email == "cy@example.com")),
                        dt.datetime.now(dt.timezone.utc))
    csv = ("name,Email\nAnn,ANN@example.com\nBob,bob@example.com\nBob again,bob@example.com\nCy,cy@example.com\n"
           "Out,outsider@example.com\nNobody,nobody@example.com\nBad,not-an-address\n")
    answer = editor.client.post(f"/admin/automations/{sequence_id}/enrol-many", content_type="multipart/form-data",
                                data={"csrf_token": editor.token, "file": (io.BytesIO(csv.encode()), "people.csv")},
                                follow_redirects=True)
    assert answer.status_code == 200
    assert ("Enrolled: 2 enrolled, 1 already in it, 1 not subscribed to its list, 1 not a contact, "
            "1 not an address, 1 repeated.") in seen(answer.text)
    with mailer.read_sessions() as session:
        enrolled = set(session.scalars(sa.select(Contact.email).join(Enrolment, Enrolment.contact_id == Contact.id)))
        audit = session.scalars(sa.select(AuditLog.detail).where(AuditLog.action == "sequence.enrol_many")).all()
    assert enrolled == {"ann@example.com", "bob@example.com", "cy@example.com"}
    assert audit and "@" not in audit[0]
    # Pasted lines work too; nothing given is a clear error.
    pasted = editor.post(f"/admin/automations/{sequence_id}/enrol-many", {"addresses": "ann@example.com\n"},
                         follow_redirects=True)
    assert "0 enrolled, 1 already in it" in seen(pasted.text)
    empty = editor.post(f"/admin/automations/{sequence_id}/enrol-many", {"addresses": " "})
    assert empty.status_code == 400 and "Choose a CSV file" in seen(empty.text)
