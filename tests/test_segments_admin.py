"""Staff segment pages: build a segment from rule rows (a problem names its group and rule,
nothing typed is lost), the live count and sample (JSON) and the no-script count, an issue
narrowed by it from the newsletter editor, an automation enrolling it; viewers look only."""
from __future__ import annotations

import html

import sqlalchemy as sa

from mailer.models import Enrolment, Newsletter, Segment
from tests.test_automations_admin import create as create_automation, seen, step
from tests.test_newsletter_admin import log_in
from tests.test_sequences import subscriber
from tests.test_api_sequences import api  # noqa: F401 (a pytest fixture)


def rows(**fields) -> dict:
    """The editor's form: g0r0-condition=…, etc."""
    form = {"name": "Londoners", "match": "all", "group_slots": "3"}
    for g in range(3):
        form[f"g{g}-match"], form[f"g{g}-slots"] = "all", "4"
    form.update(fields)
    return form


def test_build_count_and_use_a_segment(app, mailer, smtp_server):
    editor = log_in(app, "editor@clinic.example")
    subscriber(mailer, "bob@example.com", "Bob", "Europe/London")
    subscriber(mailer, "cy@example.com", "Cy", "Europe/Berlin")
    subscriber(mailer, "dee@example.com", "Dee", "Europe/London")

    # The live count (the editor's script) and the page's own count.
    answer = editor.post("/admin/segments/count", rows(**{"g0r0-condition": "timezone:is", "g0r0-value": "Europe/London"}),
                         headers={"Accept": "application/json"})
    assert answer.json["count"] == 2 and {c["email"] for c in answer.json["sample"]} == {"bob@example.com",
                                                                                          "dee@example.com"}
    assert answer.json["text"] == "time zone is Europe/London"
    page = editor.post("/admin/segments/new", rows(action="count", **{"g0r0-condition": "timezone:is",
                                                                      "g0r0-value": "Europe/London"}))
    assert page.status_code == 200 and "2 contacts" in seen(page.text) and "dee@example.com" in page.text

    # A problem says where, and keeps what was typed.
    bad = editor.post("/admin/segments/new", rows(**{"g1r2-condition": "timezone:is", "g1r2-value": "Mars/Olympus"}))
    assert bad.status_code == 400
    assert "Group 2, rule 3: Unknown time zone 'Mars/Olympus'." in seen(bad.text)
    assert 'value="Mars/Olympus"' in bad.text
    wrong = editor.post("/admin/segments/new", rows(**{"g0r0-condition": "webinar:attended", "g0r0-ref": "list:1"}))
    assert wrong.status_code == 400 and "Choose a webinar for this rule." in seen(wrong.text)

    saved = editor.post("/admin/segments/new", rows(**{"g0r0-condition": "timezone:is", "g0r0-value": "Europe/London"}))
    assert saved.status_code == 302
    with mailer.read_sessions() as session:
        segment_id = session.scalar(sa.select(Segment.id))
    assert "Londoners" in editor.get("/admin/segments").text
    assert 'value="Europe/London"' in editor.get(f"/admin/segments/{segment_id}").text

    # An issue for the Londoners only, from the newsletter editor.
    draft = editor.post("/admin/newsletters/new", {"subject": "Tea in London", "preheader": "", "layout": "default",
                                                   "lists": "newsletter", "body_md": "Hello.",
                                                   "segment": str(segment_id)})
    assert draft.status_code == 302
    issue_page = editor.get(draft.headers["Location"])
    assert "only readers in “Londoners”: time zone is Europe/London" in html.unescape(issue_page.text)
    with mailer.read_sessions() as session:
        issue = session.scalar(sa.select(Newsletter))
        assert issue.segment_id == segment_id
    send = editor.post(f"/admin/newsletters/{issue.id}/send-now", {"confirm": "yes"})
    assert send.status_code == 302
    mailer.drain()
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received if r.message["Subject"] == "Tea in London") == [
        "bob@example.com", "dee@example.com"]

    # An automation enrols the segment.
    sequence_id = create_automation(editor, mailer, "London welcome")
    step(editor, sequence_id, "Hello")
    enrolled = editor.post(f"/admin/automations/{sequence_id}/enrol-segment", {"segment": str(segment_id)},
                           follow_redirects=True)
    assert "Enrolled 2 from the segment" in seen(enrolled.text)
    with mailer.read_sessions() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Enrolment)) == 2

    viewer = log_in(app, "viewer@clinic.example", role="viewer")
    assert viewer.get(f"/admin/segments/{segment_id}").status_code == 200
    assert viewer.post(f"/admin/segments/{segment_id}", rows()).status_code == 403
    assert viewer.post(f"/admin/segments/{segment_id}/archive").status_code == 403


def test_segments_through_the_api(api, mailer):
    subscriber(mailer, "bob@example.com", "Bob", "Europe/London")
    subscriber(mailer, "cy@example.com", "Cy", "Europe/Berlin")
    rules = {"match": "all", "groups": [{"match": "any", "rules": [
        {"kind": "timezone", "op": "is", "value": "Europe/London"}]}]}
    created = api.post("/segments", {"name": "Londoners", "rules": rules})
    assert created.status_code == 201, created.json
    segment = created.json
    assert segment["description"] == "time zone is Europe/London"
    assert api.get(f"/segments/{segment['id']}/count").json == {"count": 1, "description": "time zone is Europe/London"}
    bad = api.post("/segments", {"name": "x", "rules": {"groups": [{"rules": [
        {"kind": "webinar", "op": "attended", "ref_id": 99}]}]}})
    assert bad.status_code == 422 and bad.json["error"]["field"] == "groups.0.rules.0.ref_id"
    changed = api.patch(f"/segments/{segment['id']}", {"rules": {"groups": [{"rules": [
        {"kind": "timezone", "op": "is_not", "value": "Europe/London"}]}]}}).json
    assert changed["name"] == "Londoners" and changed["description"] == "time zone is not Europe/London"
    issue = api.post("/newsletters", {"subject": "Hi", "body_md": "Hello.", "lists": ["newsletter"],
                                      "segment_id": segment["id"]})
    assert issue.status_code == 201 and issue.json["segment_id"] == segment["id"]
    assert api.post(f"/segments/{segment['id']}/archive").json["archived_at"] is not None
    refused = api.post("/newsletters", {"subject": "Hi", "body_md": "Hello.", "lists": ["newsletter"],
                                        "segment_id": segment["id"]})
    assert refused.status_code == 422 and refused.json["error"]["field"] == "segment"


def test_segments_and_enrolments_on_the_command_line(database_url, tmp_path, mailer):
    from click.testing import CliRunner

    from mailer.cli import main
    from tests.conftest import SECRET
    from tests.test_sequences import manual_sequence

    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "i"), "MAILER_BASE_URL": "https://news.example.org"}

    def run(*args, stdin=None):
        result = CliRunner().invoke(main, list(args), env=env, input=stdin)
        return result.exit_code, result.output

    subscriber(mailer, "bob@example.com", "Bob", "Europe/London")
    subscriber(mailer, "cy@example.com", "Cy", "Europe/Berlin")
    rules = '{"groups": [{"rules": [{"kind": "timezone", "op": "is", "value": "Europe/London"}]}]}'
    assert run("segment", "create", "--name", "Londoners", "--rules-file", "-", stdin=rules) == (
        0, "created segment 1\n")
    assert run("segment", "count", "1") == (0, "1 contacts: time zone is Europe/London\n")
    code, out = run("segment", "create", "--name", "Bad", "--rules-file", "-", stdin='{"groups": []}')
    assert code == 1 and "Add at least one rule." in out
    assert run("segment", "list")[1] == "1\tin use\tLondoners\ttime zone is Europe/London\n"
    sequence_id, _ = manual_sequence(mailer, ("Lesson", 0, {}))
    assert run("sequence", "enrol-segment", str(sequence_id), "1") == (0, f"1 enrolled in sequence {sequence_id}\n")
    assert run("sequence", "enrol-csv", str(sequence_id), "-", stdin="email\ncy@example.com\nbob@example.com\nnope\n") \
        == (0, "1 enrolled, 1 already in it, 0 not subscribed to its list, 0 not a contact, 1 not an address, "
               "0 repeated\n")
    assert run("segment", "archive", "1") == (0, "archived segment 1\n")
