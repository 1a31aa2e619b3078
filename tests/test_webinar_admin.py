"""Staff webinar pages: roles, create, reschedule, publish, registrants, attendance, CSV export."""
from __future__ import annotations

import datetime as dt
import io

import sqlalchemy as sa

from mailer.campaigns import webinars
from mailer.audience.consent import RequestContext
from mailer.db import session_scope
from mailer.models import AuditLog, ConsentEvent, Registration, Webinar

PASSWORD = "correct horse battery staple"




def form(client, path, token, **fields):
    return client.post(path, data={"csrf_token": token, **fields})


def test_editor_creates_publishes_and_reschedules(staff, mailer, db, smtp_server):
    editor, token = staff("editor")
    fields = dict(title="Spine Health", slug="spine-health", start="2030-03-26T18:00", timezone="Europe/London",
                  duration_minutes="45", capacity="2", join_url="https://meet.example.com/r", replay_url="",
                  reminders=["1440", "60"], reminder_custom="", description_md="Hello")
    bad = form(editor, "/admin/webinars/new", token, **dict(fields, join_url="http://insecure.example"))
    assert bad.status_code == 400 and "Give a full https:// address." in bad.text and "Spine Health" in bad.text
    created = form(editor, "/admin/webinars/new", token, **fields)
    assert created.status_code == 302
    webinar_id = db.scalar(sa.select(Webinar.id))
    assert db.scalar(sa.select(Webinar.starts_at)) == dt.datetime(2030, 3, 26, 18, tzinfo=dt.timezone.utc)
    assert form(editor, f"/admin/webinars/{webinar_id}/publish", token).status_code == 302
    with session_scope(mailer.sessions) as session:
        webinars.register(session, mailer.settings, "spine-health", email="ann@example.com", context=RequestContext(),
                          now=dt.datetime(2030, 3, 1, tzinfo=dt.timezone.utc))
    moved = form(editor, f"/admin/webinars/{webinar_id}/edit", token, **dict(fields, start="2030-04-02T18:00"))
    assert moved.status_code == 302
    detail = editor.get(f"/admin/webinars/{webinar_id}")
    assert "Tuesday 2 April 2030, 18:00 BST" in detail.text and "ann@example.com" in detail.text
    assert "Export registrants" not in detail.text  # owners only
    mailer.drain(clock=lambda: dt.datetime(2030, 3, 2, tzinfo=dt.timezone.utc))
    assert sorted(r.message["Subject"].split(":")[0] for r in smtp_server.received) == ["New time", "Your seat"]


def test_viewer_reads_but_cannot_change_and_owner_exports_with_audit(staff, mailer, db):
    with session_scope(mailer.sessions) as session:
        w = webinars.save_webinar(session, slug="back-care", title="Back care", starts_local=dt.datetime(2030, 5, 1, 18),
                                  timezone="Europe/London", join_url="https://meet.example.com/b",
                                  now=dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))
        webinars.publish(session, w.id)
        for address, name in (("a@example.com", "Pat"), ("b@example.com", '=HYPERLINK("https://evil.example/")')):
            webinars.register(session, mailer.settings, "back-care", email=address, name=name,
                              context=RequestContext(), now=dt.datetime(2030, 1, 2, tzinfo=dt.timezone.utc))
    viewer, token = staff("viewer")
    assert viewer.get("/admin/webinars/1").status_code == 200
    assert form(viewer, "/admin/webinars/1/cancel", token).status_code == 403
    assert viewer.get("/admin/webinars/new").status_code == 403
    assert viewer.get("/admin/webinars/1/registrants.csv").status_code == 403

    owner, token = staff("owner")
    export = owner.get("/admin/webinars/1/registrants.csv")
    assert export.status_code == 200 and export.mimetype == "text/csv"
    lines = export.data.decode().splitlines()
    assert lines[0] == "email,name,status,attended,timezone,registered_at"
    assert sorted(line.split(",")[0] for line in lines[1:]) == ["a@example.com", "b@example.com"]
    # A visitor's name never runs as a spreadsheet formula in the export.
    assert lines[2].startswith('b@example.com,"\'=HYPERLINK(""https://evil.example/"")",confirmed')
    assert "export_registrants" in db.scalars(sa.select(AuditLog.action))

    uploaded = owner.post("/admin/webinars/1/attendance", data={
        "csrf_token": token, "file": (io.BytesIO(b"email\nb@example.com\nstranger@example.com\n"), "zoom.csv")},
        content_type="multipart/form-data")
    shown = owner.get(uploaded.headers["Location"]).text
    assert "Marked 1 as attended. 1 address in the file is not registered." in shown
    assert "stranger@example.com" not in shown  # counted, not listed: flashes travel in the session cookie
    saved = form(owner, "/admin/webinars/1/attendance", token, attended="a@example.com")
    assert saved.status_code == 302
    assert dict(db.execute(sa.select(Registration.id, Registration.attended))) == {1: True, 2: False}


UTC = dt.timezone.utc
START = dt.datetime(2030, 3, 26, 18, tzinfo=UTC)


def published(mailer, **extra) -> int:
    with session_scope(mailer.sessions) as session:
        w = webinars.save_webinar(session, slug="back-care", title="Back care", starts_local=dt.datetime(2030, 3, 26, 18),
                                  timezone="Europe/London", join_url="https://meet.example.com/b",
                                  now=dt.datetime(2030, 1, 1, tzinfo=UTC), **extra)
        webinars.publish(session, w.id)
        return w.id


def test_the_form_offers_reminder_choices_a_zone_list_and_a_reminder_text(staff, mailer, db, smtp_server):
    editor, token = staff("editor")
    page = editor.get("/admin/webinars/new").text
    assert '<select id="timezone" name="timezone" required>' in page
    assert '<option value="Europe/London" selected>' in page and '<option value="America/New_York" >' in page
    assert 'name="reminders" value="1440" checked' in page and 'name="reminders" value="60" checked' in page
    assert 'name="reminders" value="10" >' in page
    assert "registrants get an update" not in page.lower() and "sent to every registrant" not in page
    assert "webinar_form.js" in page and "<script>" not in page  # no inline script (CSP)
    created = form(editor, "/admin/webinars/new", token, title="Back care", slug="back-care", start="2030-03-26T18:00",
                   timezone="America/New_York", duration_minutes="60", capacity="", join_url="https://meet.example.com/b",
                   replay_url="", reminders=["1440", "10"], reminder_custom="180, 5",
                   reminder_text="Have a yoga mat\nand water at hand.", description_md="")
    assert created.status_code == 302
    shown = editor.get(created.headers["Location"]).text
    assert "Created as a draft. Publish it to open registration." in shown and "get an update" not in shown
    stored = db.execute(sa.select(Webinar.reminder_offsets, Webinar.timezone, Webinar.reminder_text))
    assert stored == [("1440,180,10,5", "America/New_York", "Have a yoga mat\nand water at hand.")]
    edit = editor.get("/admin/webinars/1/edit").text
    assert 'name="reminders" value="1440" checked' in edit and 'name="reminders" value="60" >' in edit
    assert 'name="reminder_custom" value="180, 5"' in edit
    assert "a new time is sent to every registrant" in edit

    form(editor, "/admin/webinars/1/publish", token)
    with session_scope(mailer.sessions) as session:
        webinars.register(session, mailer.settings, "back-care", email="ann@example.com", context=RequestContext(),
                          now=dt.datetime(2030, 3, 1, tzinfo=UTC))
    clock = dt.datetime(2030, 3, 26, 21, 50, tzinfo=UTC)  # ten minutes before 18:00 EDT in New York
    mailer.drain(clock=lambda: clock)
    reminder = [r.message for r in smtp_server.received if r.message["Subject"].startswith("Starting")][-1]
    assert reminder["Subject"] == "Starting in 10 minutes: Back care"
    assert "minutes.\n\nHave a yoga mat\nand water at hand.\n\n" in reminder.get_body(("plain",)).get_content(
        ).replace("\r\n", "\n")
    assert ">Have a yoga mat and water at hand.</p>" in reminder.get_body(("html",)).get_content()


def test_staff_resend_the_details_and_add_a_registrant_with_how_they_agreed(staff, mailer, db, smtp_server):
    webinar_id = published(mailer)
    with session_scope(mailer.sessions) as session:
        webinars.register(session, mailer.settings, "back-care", email="ann@example.com", name="Ann",
                          context=RequestContext(), now=dt.datetime(2030, 1, 2, tzinfo=UTC))
    editor, token = staff("editor")
    add = f"/admin/webinars/{webinar_id}/registrants"
    refused = form(editor, add, token, email="bob@example.com", name="Bob", consent_note="")
    assert "Say how this person agreed" in editor.get(refused.headers["Location"]).text
    added = form(editor, add, token, email="Bob@Example.com", name="Bob", consent_note="Asked by phone, 3 March")
    assert "Registered: they get the confirmation" in editor.get(added.headers["Location"]).text
    [event] = db.execute(sa.select(ConsentEvent.purpose, ConsentEvent.action, ConsentEvent.source_url,
                                   ConsentEvent.note))
    assert tuple(event) == ("webinar:back-care", "imported", "staff:editor@clinic.example", "Asked by phone, 3 March")

    detail = editor.get(f"/admin/webinars/{webinar_id}").text
    assert 'aria-label="Send the details again to ann@example.com"' in detail
    ann_id = db.scalar(sa.select(Registration.id).where(Registration.contact_id == 1))
    resent = form(editor, f"/admin/webinars/{webinar_id}/registrants/{ann_id}/resend", token)
    assert "Details sent again." in editor.get(resent.headers["Location"]).text
    mailer.drain(clock=lambda: dt.datetime(2030, 1, 3, tzinfo=UTC))
    ann = [r.message for r in smtp_server.received if r.rcpt_tos == ["ann@example.com"]]
    assert len(ann) == 2 and all(m["Subject"].startswith("Your seat: Back care") for m in ann)
    assert sum("Here are the details of your seat again." in m.get_body(("plain",)).get_content() for m in ann) == 1
    assert [r.message["Subject"].split(":")[0] for r in smtp_server.received if r.rcpt_tos == ["bob@example.com"]] \
        == ["Your seat"]
    actions = set(db.scalars(sa.select(AuditLog.action)))
    assert {"add_registrant", "resend_webinar_details"} <= actions
    viewer, vtoken = staff("viewer")
    assert form(viewer, add, vtoken, email="c@example.com", consent_note="by phone").status_code == 403
    assert "Send again" not in viewer.get(f"/admin/webinars/{webinar_id}").text


def test_a_cancelled_webinar_offers_no_edit(staff, mailer):
    webinar_id = published(mailer)
    with session_scope(mailer.sessions) as session:
        webinars.cancel_webinar(session, webinar_id, now=dt.datetime(2030, 1, 2, tzinfo=UTC))
    editor, token = staff("editor")
    detail = editor.get(f"/admin/webinars/{webinar_id}").text
    assert "Edit or reschedule" not in detail and "Add a registrant" not in detail
    assert editor.get(f"/admin/webinars/{webinar_id}/edit").status_code == 302
