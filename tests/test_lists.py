"""Mailing lists as staff run them (console, API, CLI): counts per status, consent wording
versions (people keep the exact text they were shown: in the ledger, on their contact
page, in their Art. 15 export; new signups get the new version), archiving (no new
signups by any path, history kept, refused while mail is planned), and viewers who may
only look. Real database; real SMTP for the confirmation mails."""
from __future__ import annotations

import html
import re
import types

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from mailer import privacy
from mailer.audience import consent, contacts, imports, lists
from mailer.cli import main
from mailer.db import session_scope, utcnow
from mailer.demo import NEWSLETTER_WORDING
from mailer.errors import InvalidInput
from mailer.models import AuditLog, ConsentEvent, ConsentWording, Contact, MailingList, Subscription
from mailer.staff import users
from tests.conftest import SECRET, links_in, signup
from tests.test_api_newsletters import Api, error_of

V2 = "Yes, send me the monthly newsletter and invitations to free webinars. I can unsubscribe at any time."


@pytest.fixture
def api_tokens(mailer, staff):
    """Write tokens of the owner and the editor, the viewer's read token (staff made the users)."""
    with session_scope(mailer.sessions) as session:
        made = {role: users.create_token(session, users.find_user(session, f"{role}@clinic.example"), f"{role}-cms",
                                         "read" if role == "viewer" else "write")
                for role in ("owner", "editor", "viewer")}
    return types.SimpleNamespace(**made)


@pytest.fixture
def api(client, api_tokens):
    return Api(client, api_tokens.editor)


def confirm_all(client, mailer, smtp_server) -> None:
    """Send what is due over real SMTP, then click every confirmation link received."""
    mailer.drain()
    for received in smtp_server.received:
        text = received.message.get_body(preferencelist=("plain",)).get_content()
        for link in links_in(text):
            if "/confirm/" in link:
                assert client.get(link.removeprefix("https://news.example.org")).status_code == 200


def contact_id(db, email: str) -> int:
    return db.scalar(sa.select(Contact.id).where(Contact.email == email))


def events_shown(mailer, contact: int) -> list[tuple]:
    """The person's consent events in the ledger: action, wording version and its exact text."""
    with mailer.read_sessions() as session:
        return [(e.action, e.wording.version, e.wording.text) for e in consent.contact_history(session, contact)]


# Consent wording versions ---------------------------------------------------------------

def test_people_keep_the_wording_they_were_shown_and_new_signups_get_the_new_version(
        client, mailer, smtp_server, staff, db, api, api_tokens):
    form_before = client.get("/subscribe?lists=newsletter").get_data(as_text=True)
    assert NEWSLETTER_WORDING in form_before and 'name="consent_version" value="1"' in form_before
    signup(client, "ada@example.com", "Ada")
    confirm_all(client, mailer, smtp_server)

    editor, token = staff("editor")
    answer = editor.post("/admin/lists/1/wording", data={"csrf_token": token, "consent_wording": V2,
                                                         "replaces_version": "1"})
    assert answer.status_code == 302
    page = editor.get("/admin/lists/1").get_data(as_text=True)
    assert "Version 2 (current)" in page and "Version 1" in page
    assert V2 in page and NEWSLETTER_WORDING in page
    assert "used by 2 consent events" in page  # Ada's request and confirmation, under version 1

    form_after = client.get("/subscribe?lists=newsletter").get_data(as_text=True)
    assert V2 in form_after and 'name="consent_version" value="2"' in form_after
    assert NEWSLETTER_WORDING not in form_after
    signup(client, "bob@example.com", "Bob", consent_version="2")
    # Cy loaded the form before the change and sent it after: he agreed to what he was shown.
    signup(client, "cy@example.com", "Cy", consent_version="1")
    smtp_server.received.clear()
    confirm_all(client, mailer, smtp_server)

    shown = {email: events_shown(mailer, contact_id(db, email))
             for email in ("ada@example.com", "bob@example.com", "cy@example.com")}
    assert shown["ada@example.com"] == [("requested", 1, NEWSLETTER_WORDING), ("confirmed", 1, NEWSLETTER_WORDING)]
    assert shown["bob@example.com"] == [("requested", 2, V2), ("confirmed", 2, V2)]
    assert shown["cy@example.com"] == [("requested", 1, NEWSLETTER_WORDING), ("confirmed", 1, NEWSLETTER_WORDING)]

    # The Art. 15 export and the contact page say the same, with the exact text.
    with mailer.read_sessions() as session:
        ada = privacy.export_contact_by_id(session, contact_id(db, "ada@example.com"))
        bob = privacy.export_contact_by_id(session, contact_id(db, "bob@example.com"))
    assert [(e["wording_version"], e["wording"]) for e in ada["consent_events"]] == [(1, NEWSLETTER_WORDING)] * 2
    assert [(e["wording_version"], e["wording"]) for e in bob["consent_events"]] == [(2, V2)] * 2
    owner, _ = staff("owner")
    ada_page = owner.get(f"/admin/contacts/{contact_id(db, 'ada@example.com')}").get_data(as_text=True)
    assert 'href="/admin/lists/1#version-1"' in ada_page and ">v1</a>" in ada_page and "v2" not in ada_page

    assert api.get("/lists/1/wordings").json == {"items": [
        {"version": 2, "text": V2, "created_at": api.get("/lists/1/wordings").json["items"][0]["created_at"],
         "consent_events": 2, "current": True},
        {"version": 1, "text": NEWSLETTER_WORDING, "created_at": api.get("/lists/1/wordings").json["items"][1]["created_at"],
         "consent_events": 4, "current": False}]}
    with mailer.read_sessions() as session:
        assert consent.verify_chain(session).intact


def test_a_version_never_changes_and_a_stale_edit_is_refused(mailer, api, db):
    with session_scope(mailer.sessions) as session:
        wording = session.scalar(sa.select(ConsentWording).where(ConsentWording.list_id == 1))
        with pytest.raises(ValueError, match="never changed"):
            wording.text = "Something else"
    assert db.scalar(sa.select(ConsentWording.text).where(ConsentWording.list_id == 1)) == NEWSLETTER_WORDING

    made = api.post("/lists/1/wordings", {"text": V2, "replaces_version": 1})
    assert made.status_code == 201, made.json
    assert {k: made.json[k] for k in ("version", "text", "consent_events", "current")} == {
        "version": 2, "text": V2, "consent_events": 0, "current": True}
    stale = error_of(api.post("/lists/1/wordings", {"text": "Yes please.", "replaces_version": 1}), 409)
    assert (stale["code"], stale["field"]) == ("conflict", "replaces_version")
    same = error_of(api.post("/lists/1/wordings", {"text": f"  {V2}\n"}), 422)
    assert same["field"] == "text" and "version 2 already" in same["message"]
    blank = error_of(api.post("/lists/1/wordings", {"text": "   "}), 422)
    assert blank["field"] == "text"
    assert api.get("/lists/1").json["consent_version"] == 2
    assert error_of(api.post("/lists/99/wordings", {"text": "Yes."}), 404)["code"] == "not_found"


# Counts ---------------------------------------------------------------------------------

def test_counts_per_status_are_per_list(client, mailer, smtp_server, api, staff):
    assert api.post("/lists", {"slug": "clinic-news", "name": "Clinic news",
                               "consent_wording": "Yes, tell me about the clinic."}).status_code == 201
    for email in ("a@example.com", "b@example.com", "c@example.com"):
        signup(client, email)
    signup(client, "d@example.com", lists="clinic-news")
    confirm_all(client, mailer, smtp_server)
    signup(client, "e@example.com")  # pending
    signup(client, "f@example.com", lists="clinic-news")  # pending
    api("DELETE", "/subscriptions/1")  # a@ leaves the newsletter

    assert api.get("/lists/1").json["subscribers"] == {"pending": 1, "active": 2, "unsubscribed": 1}
    assert api.get("/lists/2").json["subscribers"] == {"pending": 1, "active": 1, "unsubscribed": 0}
    viewer, _ = staff("viewer")
    page = viewer.get("/admin/lists").get_data(as_text=True)
    rows = re.findall(r"<tr><td><a href=\"/admin/lists/(\d+)\">[^<]+</a></td>.*?</tr>", page, re.S)
    assert rows == ["1", "2"]
    cells = [re.findall(r"<td>(\d+)</td>", row) for row in re.findall(r"<tr><td><a.*?</tr>", page, re.S)]
    assert cells == [["1", "2", "1"], ["1", "1", "0"]]  # pending, active, unsubscribed


# Archiving ------------------------------------------------------------------------------

def test_an_archived_list_refuses_every_new_signup_and_keeps_its_history(
        client, mailer, smtp_server, api, staff, db, database_url, tmp_path):
    signup(client, "ada@example.com")
    confirm_all(client, mailer, smtp_server)
    signup(client, "bob@example.com")  # pending when the list is archived
    events_before = db.scalar(sa.select(sa.func.count()).select_from(ConsentEvent))

    archived = api.post("/lists/1/archive")
    assert archived.status_code == 200, archived.json
    assert archived.json["archived_at"] is not None
    assert archived.json["subscribers"] == {"pending": 1, "active": 1, "unsubscribed": 0}
    again = api.post("/lists/1/archive", {})
    assert again.status_code == 200 and again.json["archived_at"] == archived.json["archived_at"]

    closed = "The list 'Monthly newsletter' is closed: it takes no new signups."
    form = signup(client, "cy@example.com", process=False)
    assert form.status_code == 410 and closed in html.unescape(form.get_data(as_text=True))  # the form has no other list to offer
    as_json = client.post("/subscribe", json={"email": "cy@example.com", "consent": True, "lists": ["newsletter"]},
                          headers={"Accept": "application/json"})
    assert as_json.status_code == 400 and as_json.json["error"]["message"] == closed
    assert client.get("/subscribe").status_code == 410  # the only list on the form is closed
    by_api = error_of(api.post("/subscriptions", {"email": "cy@example.com", "list": "newsletter", "consent": True}),
                      422)
    assert (by_api["field"], by_api["message"]) == ("list", closed)
    with pytest.raises(InvalidInput, match="archived"):
        imports.import_csv(mailer.sessions, mailer.settings, ["email\n", "cy@example.com\n"], list_slug="newsletter",
                           consent_note="Paper form at the clinic desk", source="test", now=utcnow())
    cli = CliRunner().invoke(main, ["import", "-", "--consent-note", "Paper form at the clinic desk"],
                             input="email\ncy@example.com\n",
                             env={"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
                                  "MAILER_INSTANCE_PATH": str(tmp_path / "instance")})
    assert cli.exit_code == 1 and "archived" in cli.output
    assert error_of(api.post("/lists/1/wordings", {"text": V2}), 409)["field"] == "list"
    assert error_of(api.post("/newsletters", {"subject": "Hello", "body_md": "Hi", "lists": ["newsletter"]}),
                    422)["field"] == "lists"
    assert mailer.process_signups() == 0
    assert db.scalar(sa.select(Contact.id).where(Contact.email == "cy@example.com")) is None

    # Who was on it stays on it, with their history; the preferences page lets them leave, not rejoin.
    assert db.execute(sa.select(Contact.email, Subscription.status).join(Subscription).order_by(Contact.email)) == [
        ("ada@example.com", "active"), ("bob@example.com", "pending")]
    assert db.scalar(sa.select(sa.func.count()).select_from(ConsentEvent)) == events_before
    ada = contact_id(db, "ada@example.com")
    preferences = contacts.preferences_url(mailer.settings, ada).removeprefix("https://news.example.org")
    assert "Monthly newsletter" in client.get(preferences).get_data(as_text=True)
    assert NEWSLETTER_WORDING not in client.get(preferences).get_data(as_text=True)
    client.post(preferences, data={"name": "Ada"})  # unticked: she leaves
    assert db.scalar(sa.select(Subscription.status).where(Subscription.contact_id == ada)) == "unsubscribed"
    client.post(preferences, data={"name": "Ada", "lists": "newsletter"})  # ticking it again does nothing
    assert db.scalar(sa.select(Subscription.status).where(Subscription.contact_id == ada)) == "unsubscribed"
    assert "Monthly newsletter" not in client.get(preferences).get_data(as_text=True)
    # Bob's confirmation, asked for before the archive, still works.
    smtp_server.received.clear()
    confirm_all(client, mailer, smtp_server)
    assert db.scalar(sa.select(Subscription.status).where(Subscription.contact_id == contact_id(db, "bob@example.com"))) \
        == "active"
    with mailer.read_sessions() as session:
        assert consent.verify_chain(session).intact


def test_archiving_waits_for_mail_planned_for_the_list(client, api, staff, db):
    issue = api.post("/newsletters", {"subject": "March", "body_md": "Hello", "lists": ["newsletter"]}).json
    assert api.post(f"/newsletters/{issue['id']}/schedule", {"send_at": "2099-03-01T09:00:00Z"}).status_code == 200
    refused = error_of(api.post("/lists/1/archive"), 409)
    assert refused["field"] == "list"
    assert f"newsletter {issue['id']} 'March' is scheduled" in refused["message"]
    editor, token = staff("editor")
    page = editor.get("/admin/lists/1").get_data(as_text=True)
    assert "cannot be archived while mail is still planned" in page and "Archive list" not in page
    answer = editor.post("/admin/lists/1/archive", data={"csrf_token": token}, follow_redirects=True)
    assert "still has mail planned" in answer.get_data(as_text=True)
    assert db.scalar(sa.select(MailingList.archived_at).where(MailingList.id == 1)) is None

    assert api.post(f"/newsletters/{issue['id']}/cancel").status_code == 200
    answer = editor.post("/admin/lists/1/archive", data={"csrf_token": token}, follow_redirects=True)
    assert "Archived: the list takes no new signups" in answer.get_data(as_text=True)
    assert db.scalar(sa.select(MailingList.archived_at).where(MailingList.id == 1)) is not None
    # A draft still aimed at it cannot be scheduled now.
    draft = api.post("/newsletters", {"subject": "April", "body_md": "Hello", "lists": ["newsletter"]})
    assert draft.status_code == 422


# The console ----------------------------------------------------------------------------

def test_editors_create_and_edit_lists_in_the_console_and_it_is_audited(client, staff, db):
    editor, token = staff("editor")
    index = editor.get("/admin/lists")
    assert index.status_code == 200 and 'href="/admin/lists"' in index.get_data(as_text=True)  # in the nav
    made = editor.post("/admin/lists", data={"csrf_token": token, "slug": "clinic-news", "name": " Clinic  news ",
                                             "description": "Opening hours.", "public": "yes",
                                             "consent_wording": "Yes, tell me about the clinic."})
    assert made.status_code == 302 and made.headers["Location"].endswith("/admin/lists/2")
    taken = editor.post("/admin/lists", data={"csrf_token": token, "slug": "clinic-news", "name": "Again",
                                              "consent_wording": "Yes."})
    assert taken.status_code == 409 and "exists already" in taken.get_data(as_text=True)
    assert 'value="Again"' in taken.get_data(as_text=True)  # what was typed is kept

    edited = editor.post("/admin/lists/2/edit", data={"csrf_token": token, "name": "Clinic news and hours",
                                                       "description": "When we are open."})
    assert edited.status_code == 302
    assert db.execute(sa.select(MailingList.name, MailingList.description, MailingList.public)
                      .where(MailingList.id == 2)) == [("Clinic news and hours", "When we are open.", False)]
    assert editor.post("/admin/lists/2/edit", data={"csrf_token": token, "name": " "}).status_code == 400
    assert editor.post("/admin/lists/2/wording", data={"csrf_token": token, "consent_wording": "Yes, please.",
                                                        "replaces_version": "1"}).status_code == 302
    stale = editor.post("/admin/lists/2/wording", data={"csrf_token": token, "consent_wording": "Yes, really.",
                                                         "replaces_version": "1"})
    assert stale.status_code == 409 and "changed meanwhile" in stale.get_data(as_text=True)
    assert editor.post("/admin/lists/2/edit", data={"name": "No token"}).status_code == 400  # CSRF
    assert [tuple(r) for r in db.execute(sa.select(AuditLog.action, AuditLog.detail).order_by(AuditLog.id))
            if r.action.startswith("list_")] == [
        ("list_create", "list clinic-news"), ("list_edit", "list clinic-news: name, description, public"),
        ("list_wording", "list clinic-news: consent wording version 2")]
    assert editor.get("/admin/lists/99").status_code == 404


def test_viewers_look_but_cannot_change_anything(client, staff, api_tokens, db):
    viewer, token = staff("viewer")
    index = viewer.get("/admin/lists").get_data(as_text=True)
    assert "Monthly newsletter" in index and "New list" not in index
    page = viewer.get("/admin/lists/1").get_data(as_text=True)
    assert NEWSLETTER_WORDING in page and "Save as a new version" not in page and "Archive list" not in page
    for path, data in (("/admin/lists", {"slug": "x-y", "name": "X", "consent_wording": "Yes."}),
                       ("/admin/lists/1/edit", {"name": "Mine"}),
                       ("/admin/lists/1/wording", {"consent_wording": V2}),
                       ("/admin/lists/1/archive", {})):
        assert viewer.post(path, data={"csrf_token": token, **data}).status_code == 403, path
    api = Api(client, api_tokens.viewer)
    assert api.get("/lists/1/wordings").status_code == 200
    for method, path, body in (("PATCH", "/lists/1", {"name": "Mine"}), ("POST", "/lists/1/archive", None),
                               ("POST", "/lists/1/wordings", {"text": V2})):
        assert api(method, path, body).status_code == 403, path
    assert db.execute(sa.select(MailingList.name, MailingList.archived_at)) == [("Monthly newsletter", None)]
    assert db.scalar(sa.select(sa.func.count()).select_from(ConsentWording)) == 1


# The API and the CLI ---------------------------------------------------------------------

def test_patch_changes_only_what_is_given(api):
    changed = api.patch("/lists/1", {"public": False})
    assert changed.status_code == 200, changed.json
    assert (changed.json["name"], changed.json["public"]) == ("Monthly newsletter", False)
    changed = api.patch("/lists/1", {"name": "  Practice   news ", "description": ""})
    assert (changed.json["name"], changed.json["description"], changed.json["public"]) == ("Practice news", "", False)
    assert error_of(api.patch("/lists/1", {"slug": "other"}), 422)["field"] == "slug"
    assert error_of(api.patch("/lists/1", {"name": " "}), 422)["field"] == "name"
    assert error_of(api.patch("/lists/1", {"name": None}), 422)["field"] == "name"
    assert error_of(api.patch("/lists/7", {"name": "X"}), 404)["code"] == "not_found"


def test_the_cli_runs_the_same_list_operations(database_url, tmp_path, db):
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance")}

    def run(*args, **kw):
        return CliRunner().invoke(main, list(args), env=env, **kw)

    made = run("list", "create", "clinic-news", "--name", "Clinic news", "--wording", "Yes, clinic news.", "--private")
    assert made.exit_code == 0, made.output
    assert "clinic-news\tprivate\t0 pending, 0 active, 0 unsubscribed\twording v1\tClinic news" in made.output
    assert run("list", "create", "clinic-news", "--name", "Again", "--wording", "Yes.").exit_code == 1
    assert run("list", "edit", "clinic-news", "--public", "--name", "Clinic news!").exit_code == 0
    added = run("list", "wording", "clinic-news", "--wording-file", "-", input="Yes, clinic news and hours.\n")
    assert added.exit_code == 0, added.output
    assert "consent wording version 2 is now shown to new signups" in added.output
    shown = run("list", "wording", "clinic-news")
    assert shown.exit_code == 0
    assert re.findall(r"version (\d)\t.*\t(\d) consent events\n  (.+)", shown.output) == [
        ("2", "0", "Yes, clinic news and hours."), ("1", "0", "Yes, clinic news.")]
    assert run("list", "archive", "clinic-news").exit_code == 0
    listed = run("list", "list").output.splitlines()
    assert [line.split("\t")[1:3] for line in listed] == [["newsletter", "public"], ["clinic-news", "archived"]]
    assert run("list", "wording", "nope").exit_code == 1
    assert db.execute(sa.select(AuditLog.action, AuditLog.detail).where(AuditLog.action.like("list_%"))
                      .order_by(AuditLog.id)) == [
        ("list_create", "list clinic-news (command line)"),
        ("list_edit", "list clinic-news: name, public (command line)"),
        ("list_wording", "list clinic-news: consent wording version 2 (command line)"),
        ("list_archive", "list clinic-news (command line)")]


def test_a_webinar_form_sent_before_the_archive_keeps_its_seat_without_the_newsletter(
        client, mailer, smtp_server, db):
    from mailer.campaigns import webinars
    from tests.test_webinars import BEFORE, JOIN, START_LOCAL, at, mails_to, register, view

    with session_scope(mailer.sessions) as session:
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health", starts_local=START_LOCAL,
                                  timezone="Europe/London", duration_minutes=45, capacity=None, description_md="",
                                  join_url=JOIN, replay_url="", reminder_offsets="1440,60", now=BEFORE)
        webinars.publish(session, w.id)
    # The page is read at BEFORE, as the form is sent: on the real clock the webinar is over from
    # 2027-03-25 18:00 UTC on, and its page offers no form at all.
    assert 'name="newsletter"' in view(client, "/webinars/spine-health").text
    register(client, "ann@example.com", newsletter="yes", newsletter_version="1")  # the form, before the archive
    with session_scope(mailer.sessions) as session:
        lists.archive_list(session, 1, now=utcnow())
    assert 'name="newsletter"' not in view(client, "/webinars/spine-health").text  # no box for a closed list
    mailer.drain(clock=at(BEFORE))
    assert [m["Subject"] for m in mails_to(smtp_server, "ann@example.com")] == [
        "Your seat: Spine Health, Thursday 25 March 2027, 14:00 EDT"]
    assert db.scalar(sa.select(sa.func.count()).select_from(Subscription)) == 0
