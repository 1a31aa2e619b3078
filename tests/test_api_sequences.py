"""Sequences through the JSON API and the command line, as staff tooling uses them: a
sequence created with its steps, started, a person enrolled, step one received through
the real SMTP server, the per-step report; refusals in the API's error shapes."""
from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from mailer import privacy
from mailer.cli import main
from mailer.db import session_scope, utcnow
from mailer.models import Enrolment, Subscription
from tests.conftest import SECRET
from tests.test_api_newsletters import Api, error_of
from tests.test_sequences import mails_to, manual_sequence, subscriber

WELCOME = {
    "name": "Welcome series", "trigger": "manual", "list": "newsletter",
    "steps": [
        {"subject": "Welcome, {{ contact.first_name }}", "body_md": "Hello {{ contact.first_name }}, welcome.",
         "preheader": "Your first exercise"},
        {"subject": "Your desk posture", "body_md": "Sit tall.", "delay": 3, "delay_unit": "days",
         "window": "weekdays 09:00-11:00"},
    ],
}


@pytest.fixture
def api(client, tokens):
    return Api(client, tokens.write)


def create(api, **fields) -> dict:
    response = api.post("/sequences", dict(WELCOME, **fields))
    assert response.status_code == 201, response.json
    return response.json


def test_create_activate_enrol_send_and_report(api, mailer, smtp_server):
    ann = subscriber(mailer, "ann@example.com", name="Ann Smith")
    created = create(api)
    assert created["status"] == "draft" and created["list"] == "newsletter" and created["trigger_list"] is None
    first, second = created["steps"]
    assert (first["position"], first["delay_minutes"], first["window"]) == (1, 0, "")
    assert (second["delay"], second["delay_unit"], second["delay_minutes"]) == (3, "days", 3 * 24 * 60)
    assert second["window"] == "weekdays 09:00-11:00"
    location = api.post("/sequences", dict(WELCOME, steps=[])).headers["Location"]
    assert location.endswith("/api/v1/sequences/2")
    path = f"/sequences/{created['id']}"
    assert api.get(path).json == created

    assert api.post(path + "/activate").json["status"] == "active"
    enrolled = api.post(path + "/enrolments", {"email": "ANN@example.com"})
    assert enrolled.status_code == 200, enrolled.json
    assert enrolled.json == {"contact_id": ann, "restarted": False}
    again = error_of(api.post(path + "/enrolments", {"contact_id": ann}), 409)
    assert again["code"] == "conflict" and again["field"] == "contact_id"
    assert api.post(path + "/enrolments", {"contact_id": ann, "restart": True}).json["restarted"] is True

    mailer.drain()  # the worker: the sequence job queues step one, the sender sends it
    [mail] = mails_to(smtp_server, "ann@example.com")
    assert mail["Subject"] == "Welcome, Ann"
    assert mail.get_body(("plain",)).get_content().startswith("Hello Ann, welcome.")
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    report = api.get(path + "/report").json
    assert report["enrolments"] == {"enrolled": 1, "active": 1, "completed": 0, "exited": 0}
    assert [(s["position"], s["deliveries"], s["skipped"], s["unsubscribes"]) for s in report["steps"]] == [
        (1, {"sent": 1}, 0, 0), (2, {}, 0, 0)]
    listed = api.get("/sequences").json["items"]
    assert [(s["id"], s["status"], s["enrolments"]["active"]) for s in listed] == [
        (2, "draft", 0), (created["id"], "active", 1)]
    assert "steps" not in listed[0]


def test_steps_are_added_changed_and_deleted(api, mailer):
    sequence = create(api, steps=[])
    path = f"/sequences/{sequence['id']}"
    assert error_of(api.post(path + "/activate"), 422)["field"] == "steps"
    step = api.post(path + "/steps", {"subject": "Hello", "body_md": "Hi.", "delay": 90})
    assert step.status_code == 201 and step.json["delay_minutes"] == 90
    step_path = f"{path}/steps/{step.json['id']}"
    changed = api.patch(step_path, {"delay": 2}).json  # 90 minutes are shown as minutes: 2 minutes now
    assert (changed["delay"], changed["delay_unit"], changed["subject"]) == (2, "minutes", "Hello")
    changed = api.patch(step_path, {"delay_unit": "hours", "window": "mon,wed 18:00-20:00"}).json
    assert (changed["delay_minutes"], changed["window"]) == (120, "mon,wed 18:00-20:00")
    renamed = api.patch(path, {"name": "Course"}).json
    assert (renamed["name"], renamed["trigger"], len(renamed["steps"])) == ("Course", "manual", 1)
    deleted = api("DELETE", step_path)
    assert deleted.status_code == 200 and deleted.json["deleted_at"] is not None
    assert api.get(path).json["steps"] == []
    assert error_of(api("DELETE", step_path), 404)["code"] == "not_found"
    other = create(api)
    assert error_of(api.patch(f"/sequences/{other['id']}/steps/{step.json['id']}", {"delay": 1}), 404)


def test_pause_resume_and_archive(api, mailer):
    path = f"/sequences/{create(api)['id']}"
    assert error_of(api.post(path + "/pause"), 422)["field"] == "status"
    api.post(path + "/activate")
    assert api.post(path + "/pause", {}).json["status"] == "paused"
    assert api.post(path + "/resume").json["status"] == "active"
    assert api.post(path + "/archive").json["status"] == "archived"
    refused = error_of(api.patch(path, {"name": "Again"}), 422)
    assert refused["field"] == "status"


def test_refusals_name_the_field(api, tokens, mailer):
    bad_window = dict(WELCOME["steps"][1], window="weekdays 11:00-09:00")
    refused = error_of(api.post("/sequences", dict(WELCOME, steps=[WELCOME["steps"][0], bad_window])), 422)
    assert refused["field"] == "steps.1.window" and "end after it starts" in refused["message"]
    assert api.get("/sequences").json["items"] == []  # nothing of it was kept
    assert error_of(api.post("/sequences", dict(WELCOME, list="no-such-list")), 422)["field"] == "list"
    confirmed = error_of(api.post("/sequences", dict(WELCOME, trigger="confirmed")), 422)
    assert confirmed["field"] == "trigger_list"
    assert error_of(api.post("/sequences", dict(WELCOME, trigger="sometimes")), 422)["field"] == "trigger"
    path = f"/sequences/{create(api)['id']}"
    assert error_of(api.post(path + "/steps", {"subject": "{{ coupon.code }", "body_md": "x"}), 422)["field"] \
        == "subject"
    assert error_of(api.post(path + "/enrolments", {}), 422)["field"] == "contact_id"
    assert error_of(api.post(path + "/enrolments", {"email": "nobody@example.com"}), 404)["code"] == "not_found"
    outsider = subscriber(mailer, "zed@example.com", list_slug="newsletter")
    api.post(path + "/activate")
    with session_scope(mailer.sessions) as session:  # no longer on the sequence's list
        session.execute(sa.update(Subscription).where(Subscription.contact_id == outsider).values(
            status="unsubscribed"))
    assert error_of(api.post(path + "/enrolments", {"contact_id": outsider}), 422)["field"] == "contact_id"
    assert error_of(api.get("/sequences/999"), 404)["code"] == "not_found"
    # A read token reads, and cannot change anything.
    assert api.get(path, token=tokens.read).status_code == 200
    assert error_of(api.post(path + "/pause", token=tokens.read), 403)["code"] == "forbidden"
    assert error_of(api.post("/sequences", WELCOME, token=tokens.read), 403)["code"] == "forbidden"


def test_cli_lists_shows_starts_enrols_and_reports(database_url, tmp_path, mailer, smtp_server):
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "i"), "MAILER_BASE_URL": "https://news.example.org"}

    def run(*args):
        result = CliRunner().invoke(main, list(args), env=env)
        return result.exit_code, result.output

    def run_with(stdin, *args):
        result = CliRunner().invoke(main, list(args), env=env, input=stdin)
        return result.exit_code, result.output

    subscriber(mailer, "ann@example.com", name="Ann Smith")
    assert run("sequence", "create", "--name", "Course", "--trigger", "manual") == (0, "created sequence 1 (draft)\n")
    sequence_id = 1
    assert run("sequence", "create", "--name", "Welcome", "--trigger", "confirmed") == (
        1, "Error: Choose the list whose confirmations start the sequence.\n")
    assert run("sequence", "create", "--name", "Imported", "--trigger", "imported") == (
        1, "Error: Choose the list whose imports start the sequence.\n")
    assert run("sequence", "create", "--name", "Imported", "--trigger", "imported", "--trigger-list",
               "newsletter") == (0, "created sequence 2 (draft)\n")
    assert run_with("Hello {{ contact.first_name }}.", "sequence", "add-step", "1", "--subject", "Lesson one",
                    "--body-file", "-") == (0, "added step 1 to sequence 1\n")
    assert run_with("Again.", "sequence", "add-step", "1", "--subject", "Lesson two", "--body-file", "-",
                    "--delay", "2", "--window", "weekdays 09:00-11:00") == (0, "added step 2 to sequence 1\n")
    assert run_with("x", "sequence", "add-step", "1", "--subject", "x", "--body-file", "-", "--window",
                    "noon")[0] == 1

    assert run("sequence", "list") == (0, "2\tdraft\timported\tnewsletter\t0 enrolled, 0 active, 0 completed\t"
                                          f"Imported\n{sequence_id}\tdraft\tmanual\tnewsletter\t0 enrolled, "
                                          "0 active, 0 completed\tCourse\n")
    code, shown = run("sequence", "show", str(sequence_id))
    assert code == 0 and shown.splitlines()[1:] == [
        "  1. Lesson one (at once)", "  2. Lesson two (after 2 days, weekdays 09:00-11:00)"]
    assert run("sequence", "activate", str(sequence_id)) == (0, f"sequence {sequence_id} active\n")
    assert run("sequence", "enrol", str(sequence_id), "ann@example.com") == (
        0, f"ann@example.com enrolled in sequence {sequence_id}\n")
    assert run("sequence", "enrol", str(sequence_id), "ann@example.com")[0] == 1
    assert run("sequence", "enrol", str(sequence_id), "ann@example.com", "--restart")[0] == 0
    assert run("sequence", "enrol", str(sequence_id), "nobody@example.com") == (
        1, "Error: no contact with the address nobody@example.com\n")
    mailer.drain(clock=lambda: utcnow() + dt.timedelta(seconds=1))
    assert [m["Subject"] for m in mails_to(smtp_server, "ann@example.com")] == ["Lesson one"]
    code, report = run("sequence", "report", str(sequence_id))
    assert code == 0 and report.splitlines() == [
        "Course (active): 1 enrolled, 1 active, 0 completed, 0 exited",
        "  1. Lesson one: sent 1", "  2. Lesson two: nothing yet"]
    assert run("sequence", "pause", str(sequence_id)) == (0, f"sequence {sequence_id} paused\n")
    assert run("sequence", "resume", str(sequence_id)) == (0, f"sequence {sequence_id} active\n")
    assert run("sequence", "archive", str(sequence_id)) == (0, f"sequence {sequence_id} archived\n")
    assert run("sequence", "pause", str(sequence_id)) == (
        1, "Error: Only an active sequence can be paused; this one is archived.\n")
    assert run("sequence", "show", "999") == (1, "Error: no sequence 999\n")


def test_enrol_many_by_address(api, mailer):
    sequence_id, _ = manual_sequence(mailer, ("Lesson 1", 0, {}))
    subscriber(mailer, "ann@example.com", "Ann")
    subscriber(mailer, "bob@example.com", "Bob")
    answer = api.post(f"/sequences/{sequence_id}/enrolments/bulk",
                      {"emails": ["Ann@Example.com", "bob@example.com", "bob@example.com", "nobody@example.com", "x"]})
    assert answer.status_code == 200, answer.json
    assert answer.json == {"enrolled": 2, "already": 0, "not_subscribed": 0, "unknown": 1, "invalid": 1,
                           "duplicate": 1}
    again = api.post(f"/sequences/{sequence_id}/enrolments/bulk", {"emails": ["ann@example.com"]}).json
    assert (again["enrolled"], again["already"]) == (0, 1)
    assert api.post(f"/sequences/{sequence_id}/enrolments/bulk", {"emails": []}).status_code == 422


def test_cli_edits_and_deletes_a_step_by_its_number(database_url, tmp_path, mailer, smtp_server):
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "i"), "MAILER_BASE_URL": "https://news.example.org"}

    def run(*args, stdin=None):
        result = CliRunner().invoke(main, list(args), env=env, input=stdin)
        return result.exit_code, result.output

    def steps():
        code, shown = run("sequence", "show", "1")
        assert code == 0, shown
        return shown.splitlines()[1:]

    subscriber(mailer, "ann@example.com", name="Ann Smith")
    run("sequence", "create", "--name", "Course", "--trigger", "manual")
    for subject, extra in (("Lesson one", ()), ("Lesson two", ("--delay", "2", "--window", "weekdays 09:00-11:00")),
                           ("Lesson three", ("--delay", "1"))):
        assert run("sequence", "add-step", "1", "--subject", subject, "--body-file", "-", *extra,
                   stdin=f"{subject} for {{{{ contact.first_name }}}}.")[0] == 0

    # Each option changes its own field; the others keep their values.
    assert run("sequence", "edit-step", "1", "1", "--subject", "Lesson one, revised") == (
        0, "changed step 1 of sequence 1\n")
    assert run("sequence", "edit-step", "1", "2", "--delay", "3")[0] == 0  # still in days
    assert steps() == ["  1. Lesson one, revised (at once)", "  2. Lesson two (after 3 days, weekdays 09:00-11:00)",
                       "  3. Lesson three (after 1 day)"]
    assert run("sequence", "edit-step", "1", "2", "--unit", "hours")[0] == 0
    assert steps()[1] == "  2. Lesson two (after 3 hours, weekdays 09:00-11:00)"
    assert run("sequence", "edit-step", "1", "2", "--window", "")[0] == 0
    assert steps()[1] == "  2. Lesson two (after 3 hours)"
    assert run("sequence", "edit-step", "1", "1", "--body-file", "-", "--preheader", "Start here",
               stdin="New text for {{ contact.first_name }}.")[0] == 0

    # Refusals change nothing and say why.
    assert run("sequence", "edit-step", "1", "2", "--window", "noon") == (
        1, "Error: Write a window like 'weekdays 09:00-11:00' or 'mon,wed 18:00-20:00'.\n")
    assert run("sequence", "edit-step", "1", "1", "--body-file", "-", stdin="Hi {{ contact.nickname }}")[0] == 1
    assert run("sequence", "edit-step", "1", "9", "--subject", "x") == (1, "Error: no step 9 in sequence 1\n")
    assert run("sequence", "edit-step", "7", "1", "--subject", "x") == (1, "Error: no sequence 7\n")
    assert run("sequence", "edit-step", "1", "1")[0] == 1  # nothing to change
    assert steps()[:2] == ["  1. Lesson one, revised (at once)", "  2. Lesson two (after 3 hours)"]

    assert run("sequence", "delete-step", "1", "2") == (0, "deleted step 2 of sequence 1\n")
    assert steps() == ["  1. Lesson one, revised (at once)", "  3. Lesson three (after 1 day)"]
    assert run("sequence", "delete-step", "1", "2") == (1, "Error: no step 2 in sequence 1\n")
    assert run("sequence", "edit-step", "1", "2", "--subject", "x") == (1, "Error: no step 2 in sequence 1\n")

    # What readers get is the steps as edited: the new text, and never the deleted step.
    run("sequence", "activate", "1")
    run("sequence", "enrol", "1", "ann@example.com")
    now = utcnow()
    for later in (dt.timedelta(seconds=1), dt.timedelta(hours=4), dt.timedelta(days=1, hours=5)):
        mailer.drain(clock=lambda: now + later)
    received = mails_to(smtp_server, "ann@example.com")
    assert [m["Subject"] for m in received] == ["Lesson one, revised", "Lesson three"]
    assert received[0].get_body(("plain",)).get_content().startswith("New text for Ann.")



def test_the_art_15_export_lists_the_persons_enrolments(api, mailer, smtp_server, db):
    ann = subscriber(mailer, "ann@example.com", name="Ann Smith")
    bob = subscriber(mailer, "bob@example.com", name="Bob")
    welcome = create(api)["id"]  # step one at once, step two three days later
    course = create(api, name="Course", steps=WELCOME["steps"][:1])["id"]
    for sequence_id, people in ((welcome, (ann, bob)), (course, (bob,))):
        api.post(f"/sequences/{sequence_id}/activate")
        for person in people:
            assert api.post(f"/sequences/{sequence_id}/enrolments", {"contact_id": person}).status_code == 200
    db.write(sa.update(Subscription).where(Subscription.contact_id == bob).values(status="unsubscribed"))
    mailer.drain(clock=lambda: utcnow() + dt.timedelta(seconds=1))  # Ann gets step one; Bob has left
    assert [m["Subject"] for m in mails_to(smtp_server, "ann@example.com")] == ["Welcome, Ann"]

    exported = api.get(f"/contacts/{bob}/export")
    assert exported.status_code == 200, exported.json
    assert [{k: v for k, v in e.items() if k not in ("enrolled_at", "last_at")} for e in exported.json["enrolments"]] \
        == [{"sequence": "Welcome series", "status": "exited", "last_position": 0, "exited_reason": "unsubscribed"},
            {"sequence": "Course", "status": "exited", "last_position": 0, "exited_reason": "unsubscribed"}]
    [enrolment] = api.get(f"/contacts/{ann}/export").json["enrolments"]
    enrolled_at, last_at = db.execute(sa.select(Enrolment.enrolled_at, Enrolment.last_at).where(
        Enrolment.contact_id == ann))[0]
    assert enrolment == {"sequence": "Welcome series", "enrolled_at": enrolment["enrolled_at"], "status": "active",
                         "last_position": 1, "last_at": enrolment["last_at"], "exited_reason": None}
    assert (dt.datetime.fromisoformat(enrolment["enrolled_at"]), dt.datetime.fromisoformat(enrolment["last_at"])) \
        == (enrolled_at, last_at) and last_at > enrolled_at
    with mailer.read_sessions() as session:  # what `python -m mailer export --contact` prints
        assert privacy.export_contact(session, "ann@example.com")["enrolments"] == [{
            "sequence": "Welcome series", "enrolled_at": enrolled_at.isoformat(), "status": "active",
            "last_position": 1, "last_at": last_at.isoformat(), "exited_reason": None}]
