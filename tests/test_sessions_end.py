"""Sessions that end: logout, a new password, a role change and disabling refuse every copy
of the account's session cookie, on every web process (users.end_sessions)."""
from __future__ import annotations

import re

import sqlalchemy as sa

from mailer.staff import users
from mailer.db import session_scope
from mailer.models import ApiToken, AuditLog
from tests.conftest import SECRET, STAFF_PASSWORD
from tests.production import gunicorn, request, stop


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def log_in(app, email: str, password: str = STAFF_PASSWORD):
    client = app.test_client()
    answer = client.post("/admin/login", data={"email": email, "password": password,
                                               "csrf_token": csrf_of(client.get("/admin/login").text)})
    assert answer.status_code == 302, answer.text
    return client


def copy_of(app, client):
    """Another browser holding a copy of `client`'s session cookie (stolen, or left behind)."""
    thief = app.test_client()
    cookie = client.get_cookie("session")
    thief.set_cookie("session", cookie.value)
    return thief


def assert_logged_out(client) -> None:
    answer = client.get("/admin/")
    assert answer.status_code == 302 and answer.headers["Location"].startswith("/admin/login"), answer.status_code


def test_logout_refuses_a_copied_cookie_and_it_cannot_mint_a_token(app, mailer, db):
    with session_scope(mailer.sessions) as session:
        users.create_user(session, "owner@clinic.example", STAFF_PASSWORD, "owner")
    browser = log_in(app, "owner@clinic.example")
    thief = copy_of(app, browser)
    form = csrf_of(thief.get("/admin/tokens").text)  # the copy works while the session lives
    browser.post("/admin/logout", data={"csrf_token": csrf_of(browser.get("/admin/").text)})
    # The copy still carries a valid CSRF token: only the server-side end of the session stops it.
    minted = thief.post("/admin/tokens", data={"name": "stolen", "scope": "write", "csrf_token": form})
    assert minted.status_code == 302 and minted.headers["Location"].startswith("/admin/login")
    assert_logged_out(browser)
    assert_logged_out(thief)
    assert db.scalar(sa.select(sa.func.count()).select_from(ApiToken)) == 0
    # Logging in again works, and starts a session the old cookie is not part of.
    again = log_in(app, "owner@clinic.example")
    assert again.get("/admin/").status_code == 200
    assert_logged_out(thief)


def test_a_new_password_a_role_change_and_disabling_end_that_users_sessions(app, mailer, db):
    with session_scope(mailer.sessions) as session:
        for role in ("owner", "editor", "viewer"):
            users.create_user(session, f"{role}@clinic.example", STAFF_PASSWORD, role)
        ids = dict(session.execute(sa.select(users.User.email, users.User.id)).all())
    owner = log_in(app, "owner@clinic.example")
    token = csrf_of(owner.get("/admin/users").text)

    editor = log_in(app, "editor@clinic.example")
    other_owner_session = log_in(app, "owner@clinic.example")
    assert owner.post(f"/admin/users/{ids['editor@clinic.example']}/role",
                      data={"role": "viewer", "csrf_token": token}).status_code == 302
    assert_logged_out(editor)  # not merely 403 on the next editor page: the session is over
    assert other_owner_session.get("/admin/").status_code == 200  # other users are untouched

    viewer = log_in(app, "viewer@clinic.example")
    assert owner.post(f"/admin/users/{ids['viewer@clinic.example']}/disable",
                      data={"csrf_token": token}).status_code == 302
    assert_logged_out(viewer)

    # A user's own new password ends their other sessions; the one that changed it goes on.
    laptop, phone = log_in(app, "editor@clinic.example"), log_in(app, "editor@clinic.example")
    changed = laptop.post("/admin/account/password", data={
        "current_password": STAFF_PASSWORD, "password": "another long passphrase", "repeat_password":
        "another long passphrase", "csrf_token": csrf_of(laptop.get("/admin/account/password").text)})
    assert changed.status_code in (200, 302), changed.text
    assert_logged_out(phone)
    assert laptop.get("/admin/").status_code == 200


def test_logout_ends_the_session_on_every_gunicorn_worker(database_url, smtp_server, tmp_path, mailer):
    """gunicorn -w 2: the copy is refused whichever worker answers (the generation is in the
    shared database, not in a worker's memory)."""
    with session_scope(mailer.sessions) as session:
        users.create_user(session, "owner@clinic.example", STAFF_PASSWORD, "owner")
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET, "MAILER_SMTP_URL": smtp_server.url,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance"), "MAILER_REDIS_URL": ""}
    process, port = gunicorn(env, tmp_path / "gunicorn.log", workers=2)
    base, source = f"http://127.0.0.1:{port}", "127.0.0.1"

    def call(path, cookie, method="GET", form=None):
        status, headers, body = request(base + path, source=source, method=method, form=form,
                                        headers={"Cookie": f"session={cookie}"} if cookie else {})
        for line in headers["set-cookie-all"]:
            if line.startswith("session="):
                cookie = line.split(";")[0].split("=", 1)[1]
        return status, headers, body, cookie

    try:
        _, _, page, cookie = call("/admin/login", None)
        status, _, _, cookie = call("/admin/login", cookie, "POST", {
            "email": "owner@clinic.example", "password": STAFF_PASSWORD, "csrf_token": csrf_of(page)})
        assert status == 302
        copied = cookie
        statuses = [call("/admin/", copied)[0] for _ in range(6)]
        assert statuses == [200] * 6
        _, _, page, cookie = call("/admin/", cookie)
        assert call("/admin/logout", cookie, "POST", {"csrf_token": csrf_of(page)})[0] == 302
        statuses = [call("/admin/", copied)[0] for _ in range(6)]
        assert statuses == [302] * 6
    finally:
        stop(process)


def test_audit_entries_record_the_client_address(app, mailer, db):
    with session_scope(mailer.sessions) as session:
        users.create_user(session, "owner@clinic.example", STAFF_PASSWORD, "owner")
        users.create_user(session, "editor@clinic.example", STAFF_PASSWORD, "editor")
        editor_id = session.scalar(sa.select(users.User.id).where(users.User.email == "editor@clinic.example"))
    owner = log_in(app, "owner@clinic.example")
    answer = owner.post(f"/admin/users/{editor_id}/role", environ_base={"REMOTE_ADDR": "198.51.100.23"},
                        data={"role": "viewer", "csrf_token": csrf_of(owner.get("/admin/users").text)})
    assert answer.status_code == 302
    assert db.scalar(sa.select(AuditLog.ip).where(AuditLog.action == "change_role")) == "198.51.100.23"
    page = owner.get("/admin/audit?action=change_role").text
    assert re.search(r"<td>owner@clinic.example</td><td>198\.51\.100\.23</td><td>change_role</td>", page), page
    with session_scope(mailer.sessions) as session:  # the command line has no client address
        user = users.find_user(session, "editor@clinic.example")
        users.set_role(session, user, "editor", actor_id=None)
    assert db.scalars(sa.select(AuditLog.ip).where(AuditLog.action == "change_role").order_by(AuditLog.id)) \
        == ["198.51.100.23", None]


def test_a_background_request_cannot_bring_back_a_flash_message(app, mailer, db):
    """The editor's live preview sent while the browser follows "Save draft" carries the session
    with the "Draft saved." flash in it; were its answer to renew the cookie, the flash would
    come back on the page after the next one. Background requests renew nothing."""
    with session_scope(mailer.sessions) as session:
        users.create_user(session, "editor@clinic.example", STAFF_PASSWORD, "editor")
    browser = log_in(app, "editor@clinic.example")
    token = csrf_of(browser.get("/admin/newsletters/new").text)
    saved = browser.post("/admin/newsletters/new", data={
        "subject": "Spine Health in July", "body_md": "Hello {{ contact.first_name or 'there' }},", "lists": "newsletter",
        "csrf_token": token})
    assert saved.status_code == 302, saved.text
    with_flash = browser.get_cookie("session").value
    page = browser.get(saved.headers["Location"])
    assert "Draft saved." in page.text

    late = copy_of(app, browser)
    late.set_cookie("session", with_flash)
    preview = late.post("/admin/newsletters/preview", headers={"Sec-Fetch-Dest": "empty", "X-CSRFToken": token},
                        data={"subject": "Spine Health in July", "body_md": "Hello", "csrf_token": token})
    assert preview.status_code == 200, preview.text
    assert "session=" not in " ".join(preview.headers.getlist("Set-Cookie"))
    frame = late.get(saved.headers["Location"] + "/preview.html", headers={"Sec-Fetch-Dest": "iframe"})
    assert frame.status_code == 200 and "session=" not in " ".join(frame.headers.getlist("Set-Cookie"))
    assert "Draft saved." not in browser.get(saved.headers["Location"]).text

    # A page the browser navigates to still renews the session's twelve hours.
    renewed = browser.get("/admin/", headers={"Sec-Fetch-Dest": "document"})
    assert "session=" in " ".join(renewed.headers.getlist("Set-Cookie"))
