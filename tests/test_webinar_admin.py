"""Staff webinar pages: roles, create, reschedule, publish, registrants, attendance, CSV export."""
from __future__ import annotations

import datetime as dt
import io

import sqlalchemy as sa

from mailer.campaigns import webinars
from mailer.audience.consent import RequestContext
from mailer.db import session_scope
from mailer.models import AuditLog, Registration, Webinar

PASSWORD = "correct horse battery staple"




def form(client, path, token, **fields):
    return client.post(path, data={"csrf_token": token, **fields})


def test_editor_creates_publishes_and_reschedules(staff, mailer, db, smtp_server):
    editor, token = staff("editor")
    fields = dict(title="Spine Health", slug="spine-health", start="2030-03-26T18:00", timezone="Europe/London",
                  duration_minutes="45", capacity="2", join_url="https://meet.example.com/r", replay_url="",
                  reminder_offsets="1440,60", description_md="Hello")
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
