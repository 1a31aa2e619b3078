"""The settings page: validation (header injection refused), stored overrides that reach
the worker's next batch and the web within seconds, the environment winning, audit."""
from __future__ import annotations

import html
import re

import pytest
import sqlalchemy as sa

from mailer import create_app
from mailer.campaigns import newsletters
from mailer.staff import site_settings, users
from mailer.db import session_scope, utcnow
from mailer.models import AuditLog, Setting
from mailer.delivery.send_budget import Limits
from mailer.settings import load_settings
from tests.audience import make_audience, make_newsletter
from tests.conftest import SECRET, signup
from tests.test_staff_admin import _cli

PASSWORD = "correct horse battery staple"
DEFAULT_FROM = "Mailer <newsletter@example.com>"
DEFAULT_POSTAL = "1 Example Street, London, UK"


def _csrf(text: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', text).group(1)


@pytest.fixture
def clean_env(monkeypatch):
    for field in site_settings.FIELDS:
        monkeypatch.delenv(site_settings.env_name(field.key), raising=False)
    return monkeypatch


@pytest.fixture
def make_app(database_url, smtp_server, tmp_path, clean_env):
    """An app whose sender, address and limits come from defaults.toml (and the page)."""
    made = []

    def make():
        app = create_app(dict(database_url=database_url, instance_path=str(tmp_path / "instance"), secret_key=SECRET,
                              base_url="https://news.example.org", signup_rate_limit=1000, smtp_url=smtp_server.url))
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["mailer"].engine.dispose()


@pytest.fixture
def site(make_app):
    app = make_app()
    with session_scope(app.extensions["mailer"].sessions) as session:
        for role in ("owner", "editor", "viewer"):
            users.create_user(session, f"{role}@clinic.example", PASSWORD, role)
    return app


def login(app, role):
    client = app.test_client()
    answer = client.post("/admin/login", data={"email": f"{role}@clinic.example", "password": PASSWORD,
                                               "csrf_token": _csrf(client.get("/admin/login").text)})
    assert answer.status_code == 302
    client.csrf = _csrf(client.get("/admin/settings").text)
    return client


def form_of(page: str) -> dict:
    """The settings form as the browser would send it (disabled inputs are not sent)."""
    fields = {}
    for tag in re.findall(r"<input [^>]*>", page, re.S):
        name = re.search(r'name="([^"]+)"', tag)
        if name and "disabled" not in tag and 'type="checkbox"' not in tag:
            value = re.search(r'value="([^"]*)"', tag)
            fields[name.group(1)] = html.unescape(value.group(1)) if value else ""
    return fields


def save(client, **changes):
    fields = form_of(client.get("/admin/settings").text)
    fields.update(changes)
    return client.post("/admin/settings", data=fields)


def field_html(page: str, key: str) -> str:
    return re.search(rf'<fieldset id="field-{key}".*?</fieldset>', page, re.S).group(0)


# Validation (pure) ---------------------------------------------------------------------

HEADER_MESSAGE = "Line breaks and control characters are not allowed: this text goes into mail headers."


@pytest.mark.parametrize("key, value", [
    ("from_addr", "Clinic <news@clinic.example>\r\nBcc: everyone@example.com"),
    ("from_addr", "Clinic\n <news@clinic.example>"),
    ("reply_to", "desk@clinic.example\nBcc: everyone@example.com"),
    ("organisation", "Spine Clinic\r\nX-Spam: yes"),
    ("organisation", "Spine\x00Clinic"),
    ("organisation", "Spine\u2028Clinic"),
])
def test_header_injection_is_refused(key, value):
    values, errors = site_settings.validate({key: value})
    assert errors == {key: HEADER_MESSAGE} and values == {}


@pytest.mark.parametrize("key, value, message", [
    ("from_addr", "Clinic without an address", "Give one email address, e.g. Spine Clinic <news@clinic.example>."),
    ("from_addr", "a@clinic.example, b@clinic.example", "Give one email address"),
    ("from_addr", "Clinic <news@clinic>", "news@clinic is not a valid email address"),
    ("from_addr", "", "Sender (From) cannot be empty."),
    ("reply_to", "front desk", "Give one email address, e.g. front-desk@clinic.example."),
    ("postal_address", "1 Road\nLeeds", "Write it on one line (separate the parts with commas)"),
    ("postal_address", "x" * 301, "At most 300 characters."),
    ("timezone", "Mars/Olympus_Mons", "'Mars/Olympus_Mons' is not a time zone name; use an IANA name such as"),
    ("timezone", "../../etc/passwd", "is not a time zone name"),
    ("rate_per_second", "-1", "Give a whole number, 0 or more (0 for no limit)."),
    ("rate_per_hour", "1.5", "Give a whole number, 0 or more"),
    ("rate_per_hour", "ten", "Give a whole number, 0 or more"),
    ("rate_per_day", "\u0663", "Give a whole number, 0 or more"),  # an Arabic-Indic digit
    ("rate_per_day", "", "Give a whole number (0 for no limit)."),
])
def test_invalid_values_have_clear_messages(key, value, message):
    values, errors = site_settings.validate({key: value})
    assert values == {} and message in errors[key]


def test_valid_values_are_cleaned():
    values, errors = site_settings.validate({
        "from_addr": " Spine Clinic <news@clinic.example> ", "reply_to": "", "organisation": "Spine & Motion",
        "postal_address": "2 New Road, Leeds", "timezone": "America/New_York", "rate_per_second": "0",
        "rate_per_hour": "500", "rate_per_day": " 10000 ", "not_editable": "x"})
    assert errors == {}
    assert values == {"from_addr": "Spine Clinic <news@clinic.example>", "reply_to": "", "organisation": "Spine & Motion",
                      "postal_address": "2 New Road, Leeds", "timezone": "America/New_York", "rate_per_second": 0,
                      "rate_per_hour": 500, "rate_per_day": 10000}


def test_apply_keeps_the_environment_and_reply_to_follows_the_sender():
    base = load_settings({"database_url": "sqlite://", "secret_key": SECRET},
                         environ={"MAILER_POSTAL_ADDRESS": "9 Env Street"})
    assert base.fixed == {"database_url", "secret_key", "postal_address"}
    assert site_settings.apply(base, {}) is base
    changed = site_settings.apply(base, {"from_addr": "Clinic <hi@clinic.example>", "postal_address": "2 New Road",
                                         "rate_per_hour": 60})
    assert (changed.from_addr, changed.reply_to, changed.postal_address, changed.rate_per_hour) == (
        "Clinic <hi@clinic.example>", "Clinic <hi@clinic.example>", "9 Env Street", 60)
    assert site_settings.apply(base, {"reply_to": "desk@clinic.example"}).reply_to == "desk@clinic.example"


# The page ------------------------------------------------------------------------------

def test_editors_and_viewers_see_settings_but_only_owners_change_them(site, db):
    for role in ("editor", "viewer"):
        client = login(site, role)
        page = client.get("/admin/settings")
        assert page.status_code == 200
        assert f'value="{DEFAULT_POSTAL}" disabled' in page.text
        assert "Only owners can change settings." in page.text and "Save settings" not in page.text
        refused = client.post("/admin/settings", data={"csrf_token": client.csrf, "postal_address": "Elsewhere"})
        assert refused.status_code == 403
    assert db.scalar(sa.select(sa.func.count()).select_from(Setting)) == 0
    assert "Save settings" in login(site, "owner").get("/admin/settings").text


def test_wrong_fields_are_marked_and_nothing_is_saved(site, db):
    owner = login(site, "owner")
    answer = save(owner, from_addr="Clinic <news@clinic.example>\r\nBcc: everyone@example.com",
                  organisation="Spine Clinic\nX-Spam: yes", timezone="Mars/Base", rate_per_hour="-5",
                  postal_address="2 New Road, Leeds")
    assert answer.status_code == 400
    assert "Nothing was saved: please correct the fields marked below." in answer.text
    assert HEADER_MESSAGE in field_html(answer.text, "from_addr")
    assert HEADER_MESSAGE in field_html(answer.text, "organisation")
    assert "is not a time zone name" in field_html(answer.text, "timezone")
    assert "Give a whole number, 0 or more" in field_html(answer.text, "rate_per_hour")
    assert 'aria-invalid="true"' not in field_html(answer.text, "postal_address")
    assert 'value="2 New Road, Leeds"' in field_html(answer.text, "postal_address")  # kept for correcting
    assert db.scalar(sa.select(sa.func.count()).select_from(Setting)) == 0
    assert db.scalar(sa.select(sa.func.count()).select_from(AuditLog)) == 0
    assert site.extensions["mailer"].settings.postal_address == DEFAULT_POSTAL


def test_new_sender_and_address_reach_the_next_batch_of_a_running_worker(site, db, smtp_server):
    mailer = site.extensions["mailer"]
    worker = mailer.sender()  # started before the change, like a worker process
    make_audience(mailer, 1)
    newsletter_id = make_newsletter(mailer)
    signup(site.test_client(), "ada@example.com", "Ada")
    assert worker.drain().sent == 2
    before = {r.rcpt_tos[0]: r for r in smtp_server.received}
    assert before["ada@example.com"].message["From"] == DEFAULT_FROM
    assert before["ada@example.com"].mail_from == "newsletter@example.com"
    assert DEFAULT_POSTAL in before["reader0000000@example.com"].message.get_body(("plain",)).get_content()

    owner = login(site, "owner")
    answer = save(owner, from_addr="Spine Clinic <hello@spine.example>", postal_address="2 New Road, Leeds, UK")
    assert answer.status_code == 302
    assert "Saved: Sender (From), Postal address." in owner.get("/admin/settings").text

    make_audience(mailer, 1, start=1)  # a new reader of the same issue: its compiled copy must be redone
    with session_scope(mailer.sessions) as session:
        assert newsletters.enqueue_audience(session, newsletter_id, now=utcnow()) == 1
    signup(site.test_client(), "bob@example.com", "Bob")
    smtp_server.received.clear()
    assert worker.drain().sent == 2
    worker.close()
    after = {r.rcpt_tos[0]: r for r in smtp_server.received}
    for received in after.values():
        assert received.message["From"] == "Spine Clinic <hello@spine.example>"
        assert received.message["Reply-To"] == "Spine Clinic <hello@spine.example>"
        assert received.mail_from == "hello@spine.example"
        text = received.message.get_body(("plain",)).get_content()
        assert "2 New Road, Leeds, UK" in text and DEFAULT_POSTAL not in text
    assert "2 New Road, Leeds, UK" in after["reader0000001@example.com"].message.get_body(("html",)).get_content()

    owner_id = db.scalar(sa.select(AuditLog.user_id).where(AuditLog.action == "change_setting"))
    assert db.execute(sa.select(AuditLog.user_id, AuditLog.detail).where(AuditLog.action == "change_setting")
                      .order_by(AuditLog.id)) == [
        (owner_id, f'from_addr: "{DEFAULT_FROM}" -> "Spine Clinic <hello@spine.example>"'),
        (owner_id, f'postal_address: "{DEFAULT_POSTAL}" -> "2 New Road, Leeds, UK"')]
    page = owner.get("/admin/settings").text
    assert "Set here (owner@clinic.example, " in field_html(page, "postal_address")
    assert "Default." in field_html(page, "organisation")


def test_rate_limits_apply_from_the_next_batch(site, smtp_server):
    mailer = site.extensions["mailer"]
    worker = mailer.sender()
    assert worker.limits == Limits(0, 0, 0)
    owner = login(site, "owner")
    assert save(owner, rate_per_hour="1", rate_per_day="1000").status_code == 302
    for email in ("ada@example.com", "bob@example.com"):
        signup(site.test_client(), email)
    result = worker.drain()
    worker.close()
    assert worker.limits == Limits(0, 1, 1000)
    assert (result.sent, result.released) == (1, 1)
    assert len(smtp_server.received) == 1


def test_back_to_the_default_and_saving_unchanged_values_records_nothing(site, db):
    owner = login(site, "owner")
    assert save(owner).status_code == 302
    assert "Nothing changed." in owner.get("/admin/settings").text
    assert save(owner, timezone="America/New_York").status_code == 302
    assert site.extensions["mailer"].settings.timezone == "America/New_York"
    page = owner.get("/admin/settings").text
    assert 'name="reset_timezone"' in field_html(page, "timezone")
    fields = form_of(page) | {"reset_timezone": "1"}
    assert owner.post("/admin/settings", data=fields).status_code == 302
    assert site.extensions["mailer"].settings.timezone == "Europe/London"
    assert db.scalar(sa.select(sa.func.count()).select_from(Setting)) == 0
    assert db.scalars(sa.select(AuditLog.detail).where(AuditLog.action == "change_setting").order_by(AuditLog.id)) == [
        'timezone: "Europe/London" -> "America/New_York"', 'timezone: "America/New_York" -> "Europe/London"']


def test_the_environment_wins_and_its_fields_are_read_only(make_app, clean_env, db, smtp_server):
    clean_env.setenv("MAILER_POSTAL_ADDRESS", "9 Env Street, York")
    app = make_app()
    mailer = app.extensions["mailer"]
    with session_scope(mailer.sessions) as session:
        users.create_user(session, "owner@clinic.example", PASSWORD, "owner")
        session.add(Setting(key="postal_address", value="Stored Street"))  # e.g. set before the variable was
    owner = login(app, "owner")
    page = owner.get("/admin/settings").text
    field = field_html(page, "postal_address")
    assert 'value="9 Env Street, York" disabled' in field
    assert "Set by the environment variable MAILER_POSTAL_ADDRESS: change it there." in field
    refused = save(owner, postal_address="Page Street")
    assert refused.status_code == 400
    assert "Set by the environment variable MAILER_POSTAL_ADDRESS; change it there" in \
        field_html(refused.text, "postal_address")
    assert save(owner, organisation="Spine Clinic").status_code == 302  # other fields still save

    signup(app.test_client(), "ada@example.com")
    mailer.drain()
    text = smtp_server.received[0].message.get_body(("plain",)).get_content()
    assert "Spine Clinic, 9 Env Street, York" in text


def test_web_processes_read_overrides_at_most_every_few_seconds(site, make_app):
    """The public signup path does not pay a query per request for settings."""
    other = make_app()  # a second web process on the same database
    visitor = other.test_client()
    engine = other.extensions["mailer"].engine
    reads = []

    def count(conn, cursor, statement, *args):
        if "FROM settings" in statement:
            reads.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    for i in range(20):
        assert signup(visitor, f"reader{i}@example.com", process=False).status_code in (200, 303)
    assert len(reads) == 1  # the first request of the process

    owner = login(site, "owner")
    assert save(owner, organisation="Renamed Clinic").status_code == 302
    assert site.extensions["mailer"].settings.organisation == "Renamed Clinic"  # the saving process: at once
    visitor.get("/healthz")
    assert other.extensions["mailer"].settings.organisation != "Renamed Clinic"  # the other: not yet
    other.extensions["mailer"].settings_read_at -= 10  # ... some seconds later
    visitor.get("/healthz")
    assert other.extensions["mailer"].settings.organisation == "Renamed Clinic"
    assert len(reads) == 2


def test_cli_shows_and_sets_settings_with_the_same_rules(database_url, tmp_path, clean_env, db):
    refused = _cli(database_url, tmp_path, "settings", "set", "organisation", "Clinic\r\nBcc: x@example.com")
    assert refused.exit_code == 1 and HEADER_MESSAGE in refused.output
    unknown = _cli(database_url, tmp_path, "settings", "set", "secret_key", "x")
    assert unknown.exit_code == 1 and "secret_key cannot be set here" in unknown.output
    assert _cli(database_url, tmp_path, "settings", "set", "rate_per_hour", "600").output == "rate_per_hour set\n"
    shown = _cli(database_url, tmp_path, "settings", "show").output.splitlines()
    assert "rate_per_hour\t600\tset here" in shown
    assert f"postal_address\t{DEFAULT_POSTAL}\tdefault" in shown
    assert db.scalars(sa.select(AuditLog.detail).where(AuditLog.action == "change_setting")) == [
        "rate_per_hour: 0 -> 600 (command line)"]
