"""Staff contact pages: search modes, filters, keyset pages, roles, audit, streamed exports, CLI export."""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from mailer import privacy
from mailer.audience import contacts, directory
from mailer.cli import main
from mailer.db import session_scope
from mailer.errors import InvalidInput
from mailer.models import AuditLog, Contact, MailingList, Subscription
from tests.conftest import SECRET

PASSWORD = "correct horse battery staple"
NOW = dt.datetime(2026, 11, 1, 9, tzinfo=dt.timezone.utc)




def add_people(mailer, people, *, second_list=False):
    """people: (email, name, {list slug: status}); returns their ids in order."""
    ids = []
    with session_scope(mailer.sessions) as session:
        lists = {"newsletter": session.scalar(sa.select(MailingList).where(MailingList.slug == "newsletter"))}
        if second_list:
            lists["clinic-news"] = contacts.ensure_list(session, "clinic-news", "Clinic news", "Yes, clinic news.")
        for email, name, subs in people:
            contact = contacts.get_or_create_contact(session, mailer.settings, email, name=name, now=NOW)
            for slug, status in subs.items():
                session.add(Subscription(contact_id=contact.id, list_id=lists[slug].id, status=status, created_at=NOW))
            ids.append(contact.id)
    return ids


@pytest.fixture
def people(mailer):
    return add_people(mailer, [
        ("ann@example.com", "Ann Smith", {"newsletter": "active"}),
        ("annette@example.com", "annette Brown", {"newsletter": "pending", "clinic-news": "active"}),
        ("bob@example.com", "Örjan Öberg", {"clinic-news": "unsubscribed"}),
        ("carl@example.com", "=HYPERLINK(\"http://evil\")", {"newsletter": "unsubscribed"}),
        ("dora@example.com", "Dora Straße", {}),
        ("pct@example.com", "100% Smith_x", {"newsletter": "active"}),
    ], second_list=True)


def emails_on(page) -> list[str]:
    return re.findall(r'/admin/contacts/\d+">([^<]+)</a>', page.text)


def list_id(db, slug):
    return db.scalar(sa.select(MailingList.id).where(MailingList.slug == slug))


def test_search_by_exact_address_name_prefix_or_substring(staff, people):
    viewer, _ = staff("viewer")
    assert emails_on(viewer.get("/admin/contacts?q=ANN@Example.com")) == ["ann@example.com"]
    # Not a whole address: three or more characters are found anywhere in an address or a name.
    assert emails_on(viewer.get("/admin/contacts?q=ann@example")) == ["ann@example.com"]
    assert emails_on(viewer.get("/admin/contacts?q=ann@")) == ["ann@example.com"]
    assert emails_on(viewer.get("/admin/contacts?q=ann")) == ["annette@example.com", "ann@example.com"]
    assert emails_on(viewer.get("/admin/contacts?q=smith")) == ["pct@example.com", "ann@example.com"]
    assert emails_on(viewer.get("/admin/contacts?q=ETTE")) == ["annette@example.com"]
    assert emails_on(viewer.get("/admin/contacts?q=%C3%B6RJ")) == ["bob@example.com"]  # "öRJ" finds Örjan
    assert emails_on(viewer.get("/admin/contacts?q=dora%20strass")) == ["dora@example.com"]  # ß folds to ss
    assert emails_on(viewer.get("/admin/contacts?q=k(%22http")) == ["carl@example.com"]  # a quote is plain text
    # One or two characters: the start of a name only.
    assert emails_on(viewer.get("/admin/contacts?q=an")) == ["annette@example.com", "ann@example.com"]
    assert emails_on(viewer.get("/admin/contacts?q=mi")) == []
    # LIKE wildcards typed by staff are plain characters.
    assert emails_on(viewer.get("/admin/contacts?q=100%25")) == ["pct@example.com"]
    assert emails_on(viewer.get("/admin/contacts?q=h_x")) == ["pct@example.com"]
    assert emails_on(viewer.get("/admin/contacts?q=1_0")) == []
    assert emails_on(viewer.get("/admin/contacts?q=%25")) == []


def test_filters_by_list_and_status(staff, people, db):
    editor, _ = staff("editor")
    news, clinic = list_id(db, "newsletter"), list_id(db, "clinic-news")
    page = editor.get(f"/admin/contacts?list={news}")
    assert emails_on(page) == ["pct@example.com", "carl@example.com", "annette@example.com", "ann@example.com"]
    assert "4 contacts match these filters." in page.text
    assert emails_on(editor.get(f"/admin/contacts?list={news}&status=active")) == ["pct@example.com", "ann@example.com"]
    assert emails_on(editor.get(f"/admin/contacts?list={clinic}&status=active")) == ["annette@example.com"]
    assert emails_on(editor.get("/admin/contacts?status=unsubscribed")) == ["carl@example.com", "bob@example.com"]
    assert emails_on(editor.get(f"/admin/contacts?list={clinic}&q=ann")) == ["annette@example.com"]
    assert "1 contact matches these filters." in editor.get(f"/admin/contacts?list={clinic}&status=active").text
    assert emails_on(editor.get(f"/admin/contacts?list={news}&status=pending&q=annette@example.com")) == [
        "annette@example.com"]
    everyone = editor.get("/admin/contacts")
    assert len(emails_on(everyone)) == 6 and "6 contacts match these filters." in everyone.text
    # Every person's statuses are shown on the row.
    assert "Monthly newsletter: pending; Clinic news: active" in everyone.text


@pytest.mark.parametrize("query, message", [
    ("status=gone", "Unknown status &#39;gone&#39;: use pending, active or unsubscribed."),
    ("list=abc", "Choose a list from the menu."),
    ("list=999", "No mailing list with id 999."),
    ("before=x", "That page link is not valid; start again from the first page."),
])
def test_bad_filters_are_a_clear_400(staff, people, query, message):
    viewer, _ = staff("viewer")
    answer = viewer.get(f"/admin/contacts?{query}")
    assert answer.status_code == 400 and message in answer.text


def test_keyset_pages_of_50(staff, mailer):
    add_people(mailer, [(f"p{i:03d}@example.com", f"Person {i}", {"newsletter": "active"}) for i in range(120)])
    owner, _ = staff("owner")
    seen, path, pages = [], "/admin/contacts?status=active", 0
    while path:
        page = owner.get(path)
        assert page.status_code == 200
        seen += emails_on(page)
        pages += 1
        link = re.search(r'<a href="([^"]+)">Next page</a>', page.text)
        path = link.group(1).replace("&amp;", "&") if link else None
    assert pages == 3
    assert seen == [f"p{i:03d}@example.com" for i in reversed(range(120))]
    assert "First page" in owner.get("/admin/contacts?before=10").text


def test_erased_contacts_are_left_out_unless_asked(mailer, people):
    with session_scope(mailer.sessions) as session:
        privacy.erase_contact(session, mailer.settings, people[0], now=NOW)
        assert [r.email for r in directory.search_contacts(session, q="ann")] == ["annette@example.com"]
        everyone = directory.search_contacts(session, include_erased=True)
        assert [r.id for r in everyone][-1] == people[0] and everyone[-1].email is None
        with pytest.raises(InvalidInput) as refused:
            directory.search_contacts(session, limit=0)
        assert refused.value.field == "limit"


def test_detail_page_shows_everything_and_is_audited(staff, people, db, client):
    viewer, _ = staff("viewer")
    page = viewer.get(f"/admin/contacts/{people[1]}")
    assert page.status_code == 200
    assert "annette@example.com" in page.text and "annette Brown" in page.text
    assert "Clinic news" in page.text and "Consent history" in page.text
    # A viewer sees no owner actions.
    assert "Download data" not in page.text and "/erase" not in page.text
    audit = db.execute(sa.select(AuditLog.action, AuditLog.detail).where(AuditLog.action == "contact.view"))
    assert audit == [("contact.view", f"contact {people[1]}")]
    assert viewer.get("/admin/contacts/99999").status_code == 404
    # Not logged in: to the login page.
    assert client.get(f"/admin/contacts/{people[1]}").status_code == 302


def test_owner_only_exports_and_erasure(staff, people):
    for role in ("viewer", "editor"):
        user, token = staff(role)
        assert user.get("/admin/contacts").status_code == 200
        assert user.get("/admin/contacts/export.csv").status_code == 403
        assert user.get("/admin/contacts/export.json").status_code == 403
        assert user.get(f"/admin/contacts/{people[0]}/data.json").status_code == 403
        assert user.get(f"/admin/contacts/{people[0]}/erase").status_code == 403
        answer = user.post(f"/admin/contacts/{people[0]}/erase",
                           data={"csrf_token": token, "confirm_email": "ann@example.com"})
        assert answer.status_code == 403
    owner, _ = staff("owner")
    page = owner.get(f"/admin/contacts/{people[0]}")
    assert "Download data (JSON)" in page.text and "Erase" in page.text
    assert "Export contacts (CSV)" in owner.get("/admin/contacts").text


def test_csv_export_is_streamed_filtered_and_safe_in_spreadsheets(staff, people, db):
    owner, _ = staff("owner")
    news = list_id(db, "newsletter")
    answer = owner.get(f"/admin/contacts/export.csv?list={news}")
    assert answer.status_code == 200 and answer.is_streamed
    assert answer.headers["Content-Disposition"] == 'attachment; filename="contacts.csv"'
    rows = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert [r["email"] for r in rows] == ["ann@example.com", "annette@example.com", "carl@example.com",
                                          "pct@example.com"]
    assert rows[1]["subscriptions"] == "newsletter:pending; clinic-news:active"
    assert rows[2]["name"] == "'=HYPERLINK(\"http://evil\")"
    detail = db.execute(sa.select(AuditLog.detail).where(AuditLog.action == "contacts.export"))
    assert detail == [(f"format=csv search=none list={news} status=any",)]
    assert owner.get("/admin/contacts/export.csv?status=nope").status_code == 400


def test_json_export_and_personal_data_download(staff, people, db):
    owner, _ = staff("owner")
    answer = owner.get("/admin/contacts/export.json?status=unsubscribed")
    assert answer.is_streamed and answer.mimetype == "application/json"
    data = json.loads(answer.get_data(as_text=True))
    assert [(r["email"], r["subscriptions"]) for r in data] == [
        ("bob@example.com", [{"list": "clinic-news", "status": "unsubscribed"}]),
        ("carl@example.com", [{"list": "newsletter", "status": "unsubscribed"}])]
    assert json.loads(owner.get("/admin/contacts/export.json?q=zzz&status=pending").get_data(as_text=True)) == []
    assert json.loads(owner.get("/admin/contacts/export.json?q=Ann&status=pending").get_data(as_text=True)) == [
        {"id": people[1], "email": "annette@example.com", "name": "annette Brown", "timezone": None,
         "created_at": NOW.isoformat(), "subscriptions": [{"list": "newsletter", "status": "pending"},
                                                          {"list": "clinic-news", "status": "active"}],
         "fields": {}}]
    mine = owner.get(f"/admin/contacts/{people[1]}/data.json")
    assert mine.headers["Content-Disposition"] == f'attachment; filename="contact-{people[1]}.json"'
    assert mine.json["contact"]["email"] == "annette@example.com"
    assert [s["list"] for s in mine.json["subscriptions"]] == ["newsletter", "clinic-news"]
    assert owner.get("/admin/contacts/99999/data.json").status_code == 404
    actions = db.execute(sa.select(AuditLog.action, AuditLog.detail).where(AuditLog.action.like("contact%export")))
    assert sorted(actions) == [("contact.export", f"contact {people[1]}"),
                               ("contacts.export", "format=json search=none list=any status=unsubscribed"),
                               ("contacts.export", "format=json search=text list=any status=pending"),
                               ("contacts.export", "format=json search=text list=any status=pending")]
    # No audit detail ever holds an address.
    assert not [d for (d,) in db.execute(sa.select(AuditLog.detail)) if "@" in d]


def test_export_reads_in_batches_with_flat_memory(mailer):
    add_people(mailer, [(f"b{i:03d}@example.com", f"B {i}", {"newsletter": "active"} if i % 3 else {})
                        for i in range(25)])
    with mailer.read_sessions() as session:
        rows = directory.export_contacts(session, list_id=1, batch_size=4)
        emails = [row["email"] for row in rows]
    assert emails == [f"b{i:03d}@example.com" for i in range(25) if i % 3]


def test_cli_export_contacts(mailer, people, database_url, tmp_path):
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance")}
    result = CliRunner().invoke(main, ["export-contacts", "--list", "clinic-news", "--status", "active"], env=env)
    assert result.exit_code == 0, result.output
    assert [r["email"] for r in csv.DictReader(io.StringIO(result.output))] == ["annette@example.com"]
    result = CliRunner().invoke(main, ["export-contacts", "--format", "json"], env=env)
    assert len(json.loads(result.output)) == 6
    missing = CliRunner().invoke(main, ["export-contacts", "--list", "nope"], env=env)
    assert missing.exit_code == 1 and "no list 'nope'" in missing.output


def test_name_key_is_kept_for_core_and_orm_writes(mailer, db):
    (cid,) = add_people(mailer, [("eve@example.com", "", {})])
    assert db.scalar(sa.select(Contact.name_key).where(Contact.id == cid)) == ""
    with session_scope(mailer.sessions) as session:
        session.get(Contact, cid).name = "ÉVE Ångström"
    assert db.scalar(sa.select(Contact.name_key).where(Contact.id == cid)) == "éve ångström"


@pytest.mark.parametrize("common_at", [2, 2000])
def test_common_and_rare_name_prefixes_give_the_same_pages(mailer, monkeypatch, common_at):
    """A common prefix walks contacts newest first, a rare one reads the name index (SQLite)."""
    monkeypatch.setattr(directory, "COMMON_NAME_MATCHES", common_at)
    ids = add_people(mailer, [(f"n{i}@example.com", f"{'Ann' if i % 2 else 'Bob'} {i}", {}) for i in range(9)])
    with mailer.read_sessions() as session:
        first = directory.search_contacts(session, q="ANN", limit=2)
        assert [r.name for r in first] == ["Ann 7", "Ann 5", "Ann 3"]
        rest = directory.search_contacts(session, q="ann", before_id=first[1].id, limit=2)
        assert [r.name for r in rest] == ["Ann 3", "Ann 1"]
        assert [r["name"] for r in directory.export_contacts(session, q="ann", batch_size=1)] == [
            "Ann 1", "Ann 3", "Ann 5", "Ann 7"]
    assert len(ids) == 9


def test_exports_come_in_chunks_that_join_into_valid_files(monkeypatch):
    monkeypatch.setattr(directory, "CHUNK_CHARS", 40)
    rows = [{"id": i, "email": f"x{i}@example.com", "name": "-1+1" if i == 2 else f"X {i}", "timezone": None,
             "created_at": NOW.isoformat(), "subscriptions": [{"list": "newsletter", "status": "active"}]}
            for i in range(1, 6)]
    csv_chunks, json_chunks = list(directory.contacts_csv(iter(rows))), list(directory.contacts_json(iter(rows)))
    assert len(csv_chunks) > 3 and len(json_chunks) > 3
    parsed = list(csv.DictReader(io.StringIO("".join(csv_chunks))))
    assert [r["name"] for r in parsed] == ["X 1", "'-1+1", "X 3", "X 4", "X 5"]
    assert json.loads("".join(json_chunks)) == rows
    assert json.loads("".join(directory.contacts_json(iter([])))) == []
