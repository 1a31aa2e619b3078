"""Staff pages: login required, CSRF, lockout, and the dev mailbox."""
from __future__ import annotations

import io
import re

import pytest

from mailer import create_app
from mailer.staff import users
from mailer.db import session_scope
from tests.conftest import settings_for, signup

PASSWORD = "correct horse battery staple"


@pytest.fixture
def dev_app(database_url, tmp_path):
    """The app as a newcomer runs it: no SMTP, mail kept in the dev mailbox."""
    app = create_app(settings_for(database_url, tmp_path))
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "staff@clinic.example", PASSWORD)
    yield app
    app.extensions["mailer"].engine.dispose()


def _csrf(page_text: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page_text).group(1)


def login(client, password=PASSWORD):
    token = _csrf(client.get("/admin/login").text)
    return client.post("/admin/login", data={"email": "staff@clinic.example", "password": password,
                                             "csrf_token": token})


def test_admin_pages_need_login(dev_app):
    client = dev_app.test_client()
    for path in ("/admin/", "/admin/mailbox", "/admin/mailbox/1", "/admin/mailbox/1/raw", "/admin/mailbox/1/html"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/admin/login?next=")


def test_login_without_csrf_token_is_refused(dev_app):
    client = dev_app.test_client()
    response = client.post("/admin/login", data={"email": "staff@clinic.example", "password": PASSWORD})
    assert response.status_code == 400
    assert "CSRF" in response.text
    assert client.get("/admin/").status_code == 302


def test_wrong_password_then_lockout(dev_app):
    client = dev_app.test_client()
    for _ in range(5):
        answer = login(client, "wrong password!")
        assert answer.status_code == 400
        assert "Wrong email or password." in answer.text
    locked = login(client)  # the right password no longer helps during the back-off
    assert locked.status_code == 400
    assert "Wrong email or password." in locked.text  # the same answer: the page tells nothing


def test_confirmation_mail_appears_in_the_dev_mailbox(dev_app):
    visitor = dev_app.test_client()
    signup(visitor, "ada@example.com", "Ada <b>Lovelace</b>")
    dev_app.extensions["mailer"].drain()

    staff = dev_app.test_client()
    assert login(staff).status_code == 302
    dashboard = staff.get("/admin/")
    assert dashboard.status_code == 200
    assert "<td>Monthly newsletter</td><td>0</td><td>1</td><td>0</td>" in dashboard.text
    mailbox = staff.get("/admin/mailbox")
    assert "ada@example.com" in mailbox.text
    assert "Please confirm your subscription to Monthly newsletter" in mailbox.text
    message_path = re.search(r'href="(/admin/mailbox/\d+)"', mailbox.text).group(1)
    page = staff.get(message_path)
    assert page.status_code == 200
    assert "Hello Ada," in page.text
    assert "List-Unsubscribe-Post" in page.text
    assert "&lt;b&gt;Lovelace&lt;/b&gt;" in page.text  # the name is escaped, never markup
    assert "<b>Lovelace</b>" not in page.text
    html = staff.get(message_path + "/html")
    assert "Yes, subscribe me" in html.text
    assert "sandbox" in html.headers["Content-Security-Policy"]
    raw = staff.get(message_path + "/raw")
    assert raw.mimetype == "text/plain"
    assert raw.data.startswith(b"From:") or b"\nFrom:" in raw.data


def test_logout_needs_csrf_and_ends_the_session(dev_app):
    staff = dev_app.test_client()
    login(staff)
    page = staff.get("/admin/")
    assert staff.post("/admin/logout").status_code == 400
    assert staff.post("/admin/logout", data={"csrf_token": _csrf(page.text)}).status_code == 302
    assert staff.get("/admin/").status_code == 302


def test_next_parameter_cannot_redirect_off_site(dev_app):
    client = dev_app.test_client()
    token = _csrf(client.get("/admin/login").text)
    answer = client.post("/admin/login?next=//evil.example/x", data={
        "email": "staff@clinic.example", "password": PASSWORD, "csrf_token": token})
    assert answer.headers["Location"] == "/admin/"


def _health_token(app, email="monitor@clinic.example") -> str:
    with session_scope(app.extensions["mailer"].sessions) as session:
        user = users.create_user(session, email, PASSWORD, "viewer")
        return users.create_token(session, user, "monitoring", "read")


def test_healthz_reports_database_and_transport(dev_app, app):
    token = _health_token(dev_app)
    assert dev_app.test_client().get("/healthz", headers={"Authorization": f"Bearer {token}"}).json == {
        "status": "ok", "checks": {"database": "ok", "transport": "ok (dev-mailbox)"},
        "queue": {"due": 0, "oldest_due_seconds": 0}}
    token = _health_token(app, "prober@clinic.example")  # the same database as dev_app
    details = app.test_client().get("/healthz", headers={"Authorization": f"Bearer {token}"}).json
    assert details["checks"]["transport"] == "ok (smtp)"


def test_healthz_is_503_when_smtp_is_down(database_url, tmp_path):
    from tests.smtp_server import free_port

    port = free_port()
    app = create_app(settings_for(database_url, tmp_path, smtp_url=f"smtp://127.0.0.1:{port}"))
    answer = app.test_client().get("/healthz")
    assert answer.status_code == 503
    assert answer.json == {"status": "not ok"}  # nothing about the SMTP server for anonymous callers
    assert str(port) not in answer.text and "127.0.0.1" not in answer.text
    details = app.test_client().get("/healthz", headers={"Authorization": f"Bearer {_health_token(app)}"})
    assert details.status_code == 503
    assert details.json["status"] == "not ok"
    assert details.json["checks"]["transport"].startswith(f"error: cannot reach SMTP server 127.0.0.1:{port}")
    app.extensions["mailer"].engine.dispose()


def test_login_next_with_control_characters_goes_to_the_dashboard(dev_app):
    client = dev_app.test_client()
    token = _csrf(client.get("/admin/login").text)
    for target in ("/admin/contacts%0d%0aSet-Cookie:x=1", "/admin/\\evil.example", "//evil.example/admin"):
        answer = client.post(f"/admin/login?next={target}",
                             data={"email": "staff@clinic.example", "password": PASSWORD, "csrf_token": token})
        assert answer.status_code == 302, target
        assert answer.headers["Location"] == "/admin/", target
        client.post("/admin/logout", data={"csrf_token": _csrf(client.get("/admin/").text)})
        token = _csrf(client.get("/admin/login").text)


def test_an_anonymous_large_upload_is_refused_before_it_is_read(dev_app):
    client = dev_app.test_client()
    body = {"file": (io.BytesIO(b"email\n" + b"x" * (2 * 1024 * 1024)), "big.csv"), "list": "newsletter"}
    answer = client.post("/admin/imports", data=body, content_type="multipart/form-data")
    assert answer.status_code == 413  # the import form's 50 MB allowance is for staff who are logged in
