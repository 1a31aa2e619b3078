"""Custom fields: defined once, used by every interface; values checked by type on the
console, the API, the command line and in imports; read by mail (real SMTP), exported,
handed over (Art. 15) and erased; segment rules on them compare by type."""
from __future__ import annotations

import csv
import io

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from mailer import privacy
from mailer.audience import directory, fields, segments
from mailer.campaigns import newsletters
from mailer.cli import main
from mailer.db import session_scope, utcnow
from mailer.errors import InvalidInput
from mailer.models import AuditLog, Contact, ContactFieldValue
from tests.conftest import SECRET
from tests.test_api_newsletters import Api, error_of
from tests.test_segments import NOW, people, rule  # noqa: F401 (a fixture)
from tests.test_sequences import subscriber

NOTE = "Paper signup sheet at the clinic desk, 2025"


def cli(database_url, tmp_path, *args, input=None):
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance")}
    return CliRunner().invoke(main, list(args), env=env, input=input)


@pytest.fixture
def clinic_fields(mailer) -> dict[str, int]:
    """clinic (North / South), visits (a number), renewal (a date), member (yes/no)."""
    with session_scope(mailer.sessions) as session:
        made = [fields.create_field(session, key="clinic", label="Clinic", type="choice", choices=["North", "South"],
                                    now=NOW),
                fields.create_field(session, key="visits", label="Visits", type="number", now=NOW),
                fields.create_field(session, key="renewal", label="Renewal date", type="date", now=NOW),
                fields.create_field(session, key="member", label="Member", type="yes_no", now=NOW)]
        return {f.key: f.id for f in made}


def body_text(received) -> str:
    return received.message.get_body(preferencelist=("plain",)).get_content()


def test_defining_fields_checks_key_type_and_choices(mailer, clinic_fields):
    with session_scope(mailer.sessions) as session:
        for key, problem in (("Clinic", "lowercase"), ("2nd", "lowercase"), ("items", "cannot be read in a template"),
                             ("email", "column of imports"), ("clinic", "exists already")):
            with pytest.raises(InvalidInput) as refused:
                fields.create_field(session, key=key, label="X", type="text", now=NOW)
            assert refused.value.field == "key" and problem in refused.value.message
        with pytest.raises(InvalidInput) as refused:
            fields.create_field(session, key="level", label="Level", type="choice", now=NOW)
        assert refused.value.field == "choices"
        with pytest.raises(InvalidInput) as refused:
            fields.create_field(session, key="level", label="Level", type="colour", now=NOW)
        assert refused.value.field == "type"
    ann = subscriber(mailer, "ann@example.com", "Ann")
    with session_scope(mailer.sessions) as session:
        fields.set_values(session, ann, {"clinic": "north"})  # a choice matches whatever the case
        assert fields.values_of(session, ann) == {"clinic": "North"}
        with pytest.raises(InvalidInput) as refused:  # a held choice stays
            fields.update_field(session, clinic_fields["clinic"], choices=["South", "East"], now=NOW)
        assert "'North'" in refused.value.message
        fields.update_field(session, clinic_fields["clinic"], label="Our clinic", choices=["North", "South", "East"],
                            now=NOW)


def test_values_are_checked_by_type(mailer, clinic_fields):
    ann = subscriber(mailer, "ann@example.com", "Ann")
    with session_scope(mailer.sessions) as session:
        for values, field, words in (({"visits": "abc"}, "visits", "Visits (visits) is a number; 'abc' is not one"),
                                     ({"clinic": "West"}, "clinic", "is one of: North, South; 'West' is not"),
                                     ({"renewal": "31/01/2027"}, "renewal", "is a date like 2027-01-31"),
                                     ({"member": "maybe"}, "member", "is yes or no"),
                                     ({"nope": "x"}, "nope", "There is no field 'nope'")):
            with pytest.raises(InvalidInput) as refused:
                fields.set_values(session, ann, values)
            assert refused.value.field == field and words in refused.value.message
        changes = fields.set_values(session, ann, {"visits": "12.50", "renewal": "2027-01-31", "member": "Y",
                                                   "clinic": "South"})
        assert sorted(changes) == [("clinic", "", "South"), ("member", "", "yes"), ("renewal", "", "2027-01-31"),
                                   ("visits", "", "12.5")]
        assert fields.set_values(session, ann, {"visits": "12.5"}) == []  # the same number: no change
        assert fields.set_values(session, ann, {"visits": ""}) == [("visits", "12.5", "")]
        assert "visits" not in fields.values_of(session, ann)


def test_import_template_export_and_erasure(mailer, clinic_fields, database_url, tmp_path, smtp_server, db):
    csv_text = ("Email,Name,Clinic,visits,Renewal date,Shoe size\n"
                "ann@example.com,Ann,North,3,2027-05-01,38\n"
                "bob@example.com,Bob,south,,,41\n"
                "cy@example.com,Cy,North,abc,,40\n"
                "dee@example.com,Dee,West,1,,39\n")
    result = cli(database_url, tmp_path, "import", "-", "--consent-note", NOTE, input=csv_text)
    assert result.exit_code == 0, result.output
    assert ("4 rows: 2 imported, 2 invalid, 0 duplicate or already on the list, 0 suppressed; "
            "columns not imported (no field of that name): Shoe size") in result.output
    assert "invalid: row 4: 'cy@example.com' (Visits (visits) is a number; 'abc' is not one.)" in result.output
    assert "invalid: row 5: 'dee@example.com' (Clinic (clinic) is one of: North, South; 'West' is not.)" in result.output
    with mailer.read_sessions() as session:
        ann, bob = (session.scalar(sa.select(Contact.id).where(Contact.email == f"{n}@example.com"))
                    for n in ("ann", "bob"))
        assert fields.values_of(session, ann) == {"clinic": "North", "renewal": "2027-05-01", "visits": "3"}
        assert fields.values_of(session, bob) == {"clinic": "South"}

    # A newsletter reads the values; a reader without one gets an empty text.
    with session_scope(mailer.sessions) as session:
        issue = newsletters.create_newsletter(
            session, subject="Hello from {{ contact.fields.clinic }}", lists=["newsletter"],
            body_md="Visits so far: [{{ contact.fields.visits }}].\n\nRenewal: [{{ contact.fields.renewal }}]")
        newsletters.schedule(session, issue.id, NOW, now=NOW)
        newsletters.start_due(session, NOW)
    mailer.drain(clock=lambda: NOW)
    got = {r.rcpt_tos[0]: r for r in smtp_server.received if r.message["Subject"].startswith("Hello from")}
    assert got["ann@example.com"].message["Subject"] == "Hello from North"
    assert "Visits so far: [3]." in body_text(got["ann@example.com"])
    assert "Renewal: [2027-05-01]" in body_text(got["ann@example.com"])
    assert got["bob@example.com"].message["Subject"] == "Hello from South"
    assert "Visits so far: []." in body_text(got["bob@example.com"])

    # The export has a column per field; the JSON a "fields" object.
    with mailer.read_sessions() as session:
        text = "".join(directory.contacts_csv(directory.export_contacts(session)))
        rows = list(directory.export_contacts(session))
    table = list(csv.DictReader(io.StringIO(text)))
    assert list(table[0])[-4:] == ["clinic", "member", "renewal", "visits"]
    assert [(r["email"], r["clinic"], r["visits"], r["renewal"]) for r in table] == [
        ("ann@example.com", "North", "3", "2027-05-01"), ("bob@example.com", "South", "", "")]
    assert [r["fields"] for r in rows] == [{"clinic": "North", "renewal": "2027-05-01", "visits": "3"},
                                           {"clinic": "South"}]

    # Art. 15 hands them over; erasure deletes them.
    with mailer.read_sessions() as session:
        assert privacy.export_contact(session, "ann@example.com")["fields"] == {
            "clinic": "North", "renewal": "2027-05-01", "visits": "3"}
    with session_scope(mailer.sessions) as session:
        privacy.erase_contact(session, mailer.settings, ann, now=utcnow())
    assert db.scalar(sa.select(sa.func.count()).select_from(ContactFieldValue)
                     .where(ContactFieldValue.contact_id == ann)) == 0
    with mailer.read_sessions() as session:
        assert privacy.export_contact_by_id(session, ann)["fields"] == {}
        with pytest.raises(InvalidInput):
            fields.set_values(session, ann, {"clinic": "North"})


def test_templates_name_an_unknown_field_and_previews_show_samples(mailer, clinic_fields, smtp_server):
    with session_scope(mailer.sessions) as session:
        with pytest.raises(InvalidInput) as refused:
            newsletters.create_newsletter(session, subject="Hi", lists=["newsletter"],
                                          body_md="Your clinic: {{ contact.fields.clinic }}\n{{ contact.fields.shoe }}")
        assert refused.value.field == "body"
        assert "body, line 2: there is no custom field 'shoe'" in refused.value.message
        assert "(contact.fields has: clinic, member, renewal, visits)" in refused.value.message
        keys = fields.template_keys(session)
        samples = fields.sample_values(session)
    rendered = newsletters.preview(mailer.renderer, mailer.settings, subject="For {{ contact.fields.clinic }}",
                                   preheader="", body_md="{{ contact.fields.visits }} / {{ contact.fields.renewal }}",
                                   layout="default", field_samples=samples)
    assert rendered.subject == "For North"
    assert "42 / 2027-01-31" in rendered.text
    assert newsletters.template_problems("x", "", "{{ contact.fields.visits }}", keys) == []
    # An archived field is refused in new text; mail written before still renders.
    with session_scope(mailer.sessions) as session:
        fields.archive_field(session, clinic_fields["member"], now=NOW)
        assert "member" not in fields.template_keys(session)
        assert "member" in fields.all_keys(session)


def test_console_api_and_cli_check_values_and_audit_by_key(staff, client, mailer, clinic_fields, database_url,
                                                           tmp_path, db):
    ann = subscriber(mailer, "ann@example.com", "Ann")
    owner, token = staff("owner")
    page = owner.get(f"/admin/contacts/{ann}/fields")
    assert page.status_code == 200 and 'name="field-visits"' in page.text
    refused = owner.post(f"/admin/contacts/{ann}/fields",
                         data={"csrf_token": token, "field-visits": "abc", "field-clinic": "North"})
    assert refused.status_code == 400
    assert "Visits (visits) is a number; &#39;abc&#39; is not one." in refused.text
    assert 'value="abc"' in refused.text  # shown as typed
    saved = owner.post(f"/admin/contacts/{ann}/fields",
                       data={"csrf_token": token, "field-visits": "7", "field-clinic": "North"})
    assert saved.status_code == 302
    detail = owner.get(f"/admin/contacts/{ann}")
    assert "Custom fields" in detail.text and "North" in detail.text
    viewer, viewer_token = staff("viewer")
    assert viewer.get(f"/admin/contacts/{ann}/fields").status_code == 200
    assert viewer.post(f"/admin/contacts/{ann}/fields",
                       data={"csrf_token": viewer_token, "field-visits": "8"}).status_code == 403

    # The API.
    with session_scope(mailer.sessions) as session:
        from mailer.staff import users
        user = session.scalar(sa.select(users.User).where(users.User.email == "owner@clinic.example"))
        api = Api(client, users.create_token(session, user, "cms", "write"))
    bad = error_of(api.patch(f"/contacts/{ann}/fields", {"values": {"visits": "abc"}}), 422)
    assert bad["field"] == "values.visits" and "Visits (visits) is a number" in bad["message"]
    bad = error_of(api.patch(f"/contacts/{ann}/fields", {"values": {"clinic": "West"}}), 422)
    assert bad["field"] == "values.clinic"
    ok = api.patch(f"/contacts/{ann}/fields", {"values": {"visits": 9, "member": True, "clinic": None}})
    assert ok.status_code == 200, ok.json
    assert ok.json == {"contact_id": ann, "values": {"member": "yes", "visits": "9"}}
    assert api.get(f"/contacts/{ann}/fields").json["values"] == {"member": "yes", "visits": "9"}
    created = api.post("/fields", {"key": "level", "label": "Level", "type": "choice", "choices": ["A", "B"]})
    assert created.status_code == 201 and created.json["choices"] == ["A", "B"]
    assert error_of(api.post("/fields", {"key": "level", "label": "Again", "type": "text"}), 409)["field"] == "key"
    changed = api.patch(f"/fields/{created.json['id']}", {"label": "Level of care"})
    assert changed.json["label"] == "Level of care"
    archived = api.post(f"/fields/{created.json['id']}/archive")
    assert archived.json["archived_at"] is not None
    assert [f["key"] for f in api.get("/fields").json["items"]] == ["clinic", "level", "member", "renewal", "visits"]

    # The command line.
    result = cli(database_url, tmp_path, "field", "set", "ann@example.com", "visits=lots")
    assert result.exit_code == 1 and "Visits (visits) is a number; 'lots' is not one." in result.output
    result = cli(database_url, tmp_path, "field", "set", "ann@example.com", "visits=10", "renewal=2027-02-01")
    assert result.exit_code == 0, result.output
    assert cli(database_url, tmp_path, "field", "show", "ann@example.com").output.splitlines() == [
        "member=yes", "renewal=2027-02-01", "visits=10"]
    result = cli(database_url, tmp_path, "field", "create", "--key", "room", "--label", "Room", "--type", "number")
    assert result.exit_code == 0 and "created field" in result.output
    assert "\troom\tnumber\tRoom" in cli(database_url, tmp_path, "field", "list").output

    # Audited old → new by key, never an address.
    details = [d for a, d in db.execute(sa.select(AuditLog.action, AuditLog.detail).order_by(AuditLog.id))
               if a == "contact.fields"]
    assert details == [f"contact {ann}: clinic: (none) → North; visits: (none) → 7",
                       f"contact {ann}: clinic: North → (none); member: (none) → yes; visits: 7 → 9",
                       f"contact {ann}: renewal: (none) → 2027-02-01; visits: 9 → 10 (command line)"]
    assert not any("@" in d for d in details)


def test_field_rules_compare_by_type(mailer, clinic_fields):
    ids = {n: subscriber(mailer, f"{n}@example.com", n.title()) for n in ("ann", "bob", "cy", "dee")}
    with session_scope(mailer.sessions) as session:
        fields.set_values(session, ids["ann"], {"visits": "9", "renewal": "2027-01-31", "clinic": "North"})
        fields.set_values(session, ids["bob"], {"visits": "10", "renewal": "2026-12-01", "clinic": "South"})
        fields.set_values(session, ids["cy"], {"visits": "100", "member": "yes"})

    def picked(kind_op, value=None, field="visits"):
        data = {"groups": [{"rules": [rule("field", kind_op, ref_id=clinic_fields[field], value=value)]}]}
        with mailer.read_sessions() as session:
            parsed = segments.parse_rules(session, data)
            return {c.email.split("@")[0] for c in segments.sample(session, parsed, NOW, limit=100)}

    assert picked("gt", "9") == {"bob", "cy"}  # as numbers: "10" and "100" are more than "9"
    assert picked("lt", "10") == {"ann"}
    assert picked("eq", "10.0") == {"bob"}
    assert picked("lt", "2027-01-01", "renewal") == {"bob"}
    assert picked("gt", "2027-01-01", "renewal") == {"ann"}
    assert picked("eq", "north", "clinic") == {"ann"}
    assert picked("ne", "North", "clinic") == {"bob", "cy", "dee"}  # no value is "not North" too
    assert picked("contains", "OUT", "clinic") == {"bob"}
    assert picked("is_empty", field="clinic") == {"cy", "dee"}
    assert picked("eq", "yes", "member") == {"cy"}
    with mailer.read_sessions() as session:
        for value, op, field, words in (("abc", "gt", "visits", "is a number"), ("x", "lt", "clinic", "allows"),
                                        ("soon", "lt", "renewal", "is a date")):
            with pytest.raises(InvalidInput) as refused:
                segments.parse_rules(session, {"groups": [{"rules": [
                    rule("field", op, ref_id=clinic_fields[field], value=value)]}]})
            assert words in refused.value.message
        with pytest.raises(InvalidInput) as refused:
            segments.parse_rules(session, {"groups": [{"rules": [rule("field", "eq", value="x")]}]})
        assert refused.value.field == "groups.0.rules.0.ref_id"
        described = segments.describe(session, segments.parse_rules(session, {"groups": [{"rules": [
            rule("field", "gt", ref_id=clinic_fields["visits"], value="9")]}]}))
        assert described == "“Visits” is more than “9”"


def test_attended_and_clinic_north_as_an_audience_over_smtp(mailer, smtp_server, people, clinic_fields, staff):
    """Ann and Dee attended Spine Health and are at North; Dee left the list; Bob is at
    North but missed it. Only Ann gets the issue."""
    with session_scope(mailer.sessions) as session:
        for name in ("ann", "bob", "dee"):
            fields.set_values(session, people[name], {"clinic": "North"})
        fields.set_values(session, people["cy"], {"clinic": "South"})
        segment = segments.create_segment(session, name="North attendees", now=NOW, rules={"groups": [{"rules": [
            rule("webinar", "attended", ref_id=people["webinar"]),
            rule("field", "eq", ref_id=clinic_fields["clinic"], value="North")]}]})
        issue = newsletters.create_newsletter(session, subject="North, thank you", lists=["newsletter"],
                                              body_md="See you at {{ contact.fields.clinic }}.", segment_id=segment.id)
        newsletters.schedule(session, issue.id, NOW, now=NOW)
        assert newsletters.start_due(session, NOW) == [issue.id]
        segment_id = segment.id
    mailer.drain(clock=lambda: NOW)
    got = [r for r in smtp_server.received if r.message["Subject"] == "North, thank you"]
    assert [r.rcpt_tos[0] for r in got] == ["ann@example.com"]
    assert "See you at North." in body_text(got[0])

    # The segment editor offers the field and shows the rule as saved.
    editor, _ = staff("editor")
    page = editor.get(f"/admin/segments/{segment_id}")
    assert '<optgroup label="Fields"><option value="field:%d" selected>Clinic</option>' % clinic_fields["clinic"] \
        in page.text
    assert '<option value="field:eq" selected>field is</option>' in page.text
