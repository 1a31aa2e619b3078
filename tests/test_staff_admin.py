"""Staff access pages: users and roles (owners only), disabling, my password, API tokens,
the audit log, session cookies, and the matching CLI commands."""
from __future__ import annotations

import datetime as dt
import re

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from mailer import create_app
from mailer.staff import users
from mailer.cli import main
from mailer.db import session_scope, utcnow
from mailer.models import ApiToken, AuditLog, User
from tests.conftest import SECRET, settings_for

PASSWORD = "correct horse battery staple"
API = "/api/v1"


def _csrf(text: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', text).group(1)


class Staff:
    """Logged-in test clients, each with the CSRF token of its session."""

    def __init__(self, app, mailer):
        self.app, self.mailer = app, mailer

    def add(self, email, role, password=PASSWORD):
        with session_scope(self.mailer.sessions) as session:
            return users.create_user(session, email, password, role).id

    def login(self, who, password=PASSWORD):
        client = self.app.test_client()
        email = who if "@" in who else f"{who}@clinic.example"
        answer = client.post("/admin/login", data={"email": email, "password": password,
                                                   "csrf_token": _csrf(client.get("/admin/login").text)})
        if answer.status_code != 302:
            return client, answer
        client.csrf = _csrf(client.get("/admin/").text)
        return client, answer

    def client(self, who, password=PASSWORD):
        client, answer = self.login(who, password)
        assert answer.status_code == 302, answer.text
        return client


def post(client, path, **fields):
    return client.post(path, data={"csrf_token": client.csrf, **fields})


@pytest.fixture
def staff(app, mailer):
    made = Staff(app, mailer)
    for role in ("owner", "editor", "viewer"):
        made.add(f"{role}@clinic.example", role)
    return made


def user_id(db, email):
    return db.scalar(sa.select(User.id).where(User.email == email))


def audit_rows(db, action):
    return db.execute(sa.select(AuditLog.user_id, AuditLog.detail).where(AuditLog.action == action)
                      .order_by(AuditLog.id))


# Owners only ---------------------------------------------------------------------------

def test_users_and_audit_pages_are_for_owners_only(staff, db):
    editor_id = user_id(db, "editor@clinic.example")
    for role in ("editor", "viewer"):
        client = staff.client(role)
        assert client.get("/admin/users").status_code == 403
        assert client.get("/admin/audit").status_code == 403
        for path in ("/admin/users", f"/admin/users/{editor_id}/role", f"/admin/users/{editor_id}/disable",
                     f"/admin/users/{editor_id}/enable"):
            assert post(client, path, email="x@clinic.example", role="owner").status_code == 403, path
        assert "Users</a>" not in client.get("/admin/tokens").text  # no link to a page they cannot open
    assert db.scalar(sa.select(User.role).where(User.id == editor_id)) == "editor"
    assert db.scalar(sa.select(sa.func.count()).select_from(User)) == 3
    anonymous = staff.app.test_client()
    for path in ("/admin/users", "/admin/tokens", "/admin/settings", "/admin/audit", "/admin/account/password"):
        assert anonymous.get(path).headers["Location"].startswith("/admin/login?next="), path


# Users ---------------------------------------------------------------------------------

def test_owner_adds_a_user_with_a_generated_password_shown_once(staff, db):
    owner = staff.client("owner")
    page = post(owner, "/admin/users", email="New.Person@Clinic.example", role="editor")
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    password = re.search(r'<code id="new-password">([^<]+)</code>', page.text).group(1)
    assert len(password) >= 20
    assert "Added new.person@clinic.example." in page.text
    assert password not in owner.get("/admin/users").text  # shown once, never again
    newcomer = staff.client("new.person@clinic.example", password)
    assert newcomer.get("/admin/newsletters").status_code == 200
    assert audit_rows(db, "create_user") == [(user_id(db, "owner@clinic.example"),
                                              "new.person@clinic.example as editor")]


def test_owner_gives_a_user_who_forgot_theirs_a_new_password_shown_once(staff, db):
    owner = staff.client("owner")
    editor_session = staff.client("editor")
    for _ in range(5):  # and they locked themselves out trying
        staff.login("editor", "not the password at all")
    editor_id = user_id(db, "editor@clinic.example")
    page = post(owner, f"/admin/users/{editor_id}/password")
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    password = re.search(r'<code id="new-password">([^<]+)</code>', page.text).group(1)
    assert "New password for editor@clinic.example, shown only this once" in page.text
    assert password not in owner.get("/admin/users").text
    assert editor_session.get("/admin/").status_code == 302  # their old session is over
    assert staff.login("editor")[1].status_code == 400  # the old password no longer works
    assert staff.client("editor", password).get("/admin/").status_code == 200  # lockout lifted too
    assert audit_rows(db, "reset_password") == [(user_id(db, "owner@clinic.example"), "editor@clinic.example")]
    yourself = post(owner, f"/admin/users/{user_id(db, 'owner@clinic.example')}/password")
    assert yourself.status_code == 400 and "Change your own password under" in yourself.text
    assert post(staff.client("viewer"), f"/admin/users/{editor_id}/password").status_code == 403


def test_owner_may_type_the_initial_password_and_bad_input_is_refused(staff, db):
    owner = staff.client("owner")
    typed = post(owner, "/admin/users", email="ann@clinic.example", role="viewer", password="a long typed password")
    assert typed.status_code == 200 and 'id="new-password"' not in typed.text
    assert staff.client("ann@clinic.example", "a long typed password").get("/admin/").status_code == 200

    short = post(owner, "/admin/users", email="bob@clinic.example", role="viewer", password="short")
    assert short.status_code == 400
    assert "The password must have at least 12 characters." in short.text
    again = post(owner, "/admin/users", email="ANN@clinic.example", role="viewer")
    assert again.status_code == 400 and "A user with that email exists already." in again.text
    bad_role = post(owner, "/admin/users", email="cat@clinic.example", role="admin")
    assert bad_role.status_code == 400 and "Role must be one of: owner, editor, viewer." in bad_role.text
    bad_email = post(owner, "/admin/users", email="not an address", role="viewer")
    assert bad_email.status_code == 400 and "That email address is not valid" in bad_email.text
    assert db.scalar(sa.select(sa.func.count()).select_from(User)) == 4


def test_the_users_list_shows_role_last_login_and_status(staff, db):
    owner = staff.client("owner")
    staff.login("viewer", "wrong password!")  # one failure: not locked yet
    with session_scope(staff.mailer.sessions) as session:
        session.execute(sa.update(User).where(User.email == "editor@clinic.example")
                        .values(locked_until=utcnow() + dt.timedelta(minutes=10)))
    page = owner.get("/admin/users").text
    rows = {m.group(1): m.group(0) for m in re.finditer(r"<tr>\s*<td>([^<(]+?)(?: \(you\))?</td>.*?</tr>", page, re.S)}
    assert set(rows) == {"editor@clinic.example", "owner@clinic.example", "viewer@clinic.example"}
    assert "<td>locked until" in rows["editor@clinic.example"]
    assert "<td>active</td>" in rows["viewer@clinic.example"]
    assert "<td>never</td>" in rows["viewer@clinic.example"]
    assert '<option value="viewer" selected>' in rows["viewer@clinic.example"]
    # Compact, on one line in the table (no-break spaces): "Mon 7 Dec 2026 18:00 GMT".
    assert re.search(r"<td>\w{3}\xa0\d+\xa0\w{3}\xa0\d{4}\xa0\d\d:\d\d\xa0(GMT|BST)</td>", rows["owner@clinic.example"])
    assert "Disable" not in rows["owner@clinic.example"]  # not for yourself


def test_change_role_takes_effect_at_the_next_request_and_is_audited(staff, db):
    owner, editor = staff.client("owner"), staff.client("editor")
    assert editor.get("/admin/newsletters/new").status_code == 200
    answer = post(owner, f"/admin/users/{user_id(db, 'editor@clinic.example')}/role", role="viewer")
    assert answer.status_code == 302
    assert "editor@clinic.example is now viewer." in owner.get(answer.headers["Location"]).text
    # Their session ends at once (users.end_sessions); logged in again, the new role applies.
    assert editor.get("/admin/newsletters/new").headers["Location"].startswith("/admin/login")
    assert staff.client("editor").get("/admin/newsletters/new").status_code == 403
    assert audit_rows(db, "change_role") == [(user_id(db, "owner@clinic.example"),
                                              "editor@clinic.example: editor -> viewer")]


def test_the_last_active_owner_cannot_be_demoted_or_disabled(staff, db):
    owner = staff.client("owner")
    owner_id = user_id(db, "owner@clinic.example")
    demote = post(owner, f"/admin/users/{owner_id}/role", role="editor")
    assert demote.status_code == 400
    assert "owner@clinic.example is the last active owner" in demote.text
    itself = post(owner, f"/admin/users/{owner_id}/disable")
    assert itself.status_code == 400 and "You cannot disable your own account." in itself.text

    second = staff.add("second@clinic.example", "owner")
    assert post(owner, f"/admin/users/{second}/disable").status_code == 302
    # A disabled owner does not count: the first is still the last active one.
    assert post(owner, f"/admin/users/{owner_id}/role", role="editor").status_code == 400
    assert post(owner, f"/admin/users/{second}/enable").status_code == 302
    assert post(owner, f"/admin/users/{owner_id}/role", role="editor").status_code == 302
    assert owner.get("/admin/users").status_code == 403  # demoted themself, now an editor
    assert db.scalar(sa.select(User.role).where(User.id == owner_id)) == "editor"
    assert post(owner, "/admin/users/999/disable").status_code == 403


def test_unknown_user_is_404(staff):
    owner = staff.client("owner")
    assert post(owner, "/admin/users/999/disable").status_code == 404
    assert post(owner, "/admin/users/999/role", role="viewer").status_code == 404


def test_a_disabled_user_loses_sessions_logins_and_tokens_until_enabled(staff, db, client):
    owner, editor = staff.client("owner"), staff.client("editor")
    editor_id = user_id(db, "editor@clinic.example")
    with session_scope(staff.mailer.sessions) as session:
        token = users.create_token(session, session.get(User, editor_id), "cms", "write")
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get(API + "/newsletters", headers=bearer).status_code == 200

    answer = post(owner, f"/admin/users/{editor_id}/disable")
    assert answer.status_code == 302
    assert "editor@clinic.example is disabled" in owner.get("/admin/users").text
    assert "<td>disabled</td>" in owner.get("/admin/users").text
    assert editor.get("/admin/").headers["Location"].startswith("/admin/login")  # the session is over
    _, refused = staff.login("editor")
    assert refused.status_code == 400 and "This account has been disabled." in refused.text
    _, wrong = staff.login("editor", "wrong password!")
    assert "Wrong email or password." in wrong.text  # disabled is told only to whoever knows the password
    unauthorized = client.get(API + "/newsletters", headers=bearer)
    assert unauthorized.status_code == 401
    assert unauthorized.json == {"error": {"code": "unauthorized", "message": "A valid API token is required.",
                                           "field": None}}

    assert post(owner, f"/admin/users/{editor_id}/enable").status_code == 302
    assert staff.client("editor").get("/admin/").status_code == 200
    assert client.get(API + "/newsletters", headers=bearer).status_code == 200
    owner_id = user_id(db, "owner@clinic.example")
    assert audit_rows(db, "disable_user") == [(owner_id, "editor@clinic.example")]
    assert audit_rows(db, "enable_user") == [(owner_id, "editor@clinic.example")]


# My password ---------------------------------------------------------------------------

def test_change_my_password_needs_the_current_one_and_ends_other_sessions(staff, db):
    viewer, elsewhere = staff.client("viewer"), staff.client("viewer")
    page = viewer.get("/admin/account/password")
    assert page.status_code == 200 and "Current password" in page.text
    wrong = post(viewer, "/admin/account/password", current_password="nope", password="a brand new password",
                 repeat_password="a brand new password")
    assert wrong.status_code == 400 and "The current password is wrong." in wrong.text
    differ = post(viewer, "/admin/account/password", current_password=PASSWORD, password="a brand new password",
                  repeat_password="a brand new passwort")
    assert differ.status_code == 400 and "The two new passwords differ." in differ.text
    short = post(viewer, "/admin/account/password", current_password=PASSWORD, password="short",
                 repeat_password="short")
    assert short.status_code == 400 and "at least 12 characters" in short.text

    done = post(viewer, "/admin/account/password", current_password=PASSWORD, password="a brand new password",
                repeat_password="a brand new password")
    assert done.status_code == 302
    assert "Your password is changed." in viewer.get(done.headers["Location"]).text
    assert viewer.get("/admin/").status_code == 200  # this session goes on
    assert elsewhere.get("/admin/").status_code == 302  # the other one is over
    assert staff.login("viewer")[1].status_code == 400
    assert staff.client("viewer", "a brand new password").get("/admin/").status_code == 200
    assert audit_rows(db, "change_password") == [(user_id(db, "viewer@clinic.example"), "viewer@clinic.example")]


# API tokens ----------------------------------------------------------------------------

def test_a_token_is_shown_once_works_shows_last_use_and_can_be_revoked(staff, db, client):
    editor = staff.client("editor")
    assert "No tokens yet." in editor.get("/admin/tokens").text
    created = post(editor, "/admin/tokens", name="website", scope="write")
    assert created.status_code == 200 and created.headers["Cache-Control"] == "no-store"
    token = re.search(r'<code id="new-token">(mlr_[^<]+)</code>', created.text).group(1)
    assert token not in editor.get("/admin/tokens").text
    assert db.scalar(sa.select(ApiToken.token_hash)) == users.hash_token(token)  # only the hash is kept

    listed = editor.get("/admin/tokens").text
    assert "<td>website</td><td>write</td>" in listed and "<td>never</td>" in listed
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get(API + "/newsletters", headers=bearer).status_code == 200
    assert "<td>never</td>" not in editor.get("/admin/tokens").text  # last used: now

    token_id = db.scalar(sa.select(ApiToken.id))
    revoked = post(editor, f"/admin/tokens/{token_id}/revoke")
    assert revoked.status_code == 302
    assert "Token &#39;website&#39; is revoked." in editor.get("/admin/tokens").text
    assert client.get(API + "/newsletters", headers=bearer).status_code == 401
    editor_id = user_id(db, "editor@clinic.example")
    assert audit_rows(db, "create_token") == [(editor_id, f"token {token_id} 'website' (write) for editor@clinic.example")]
    assert audit_rows(db, "revoke_token") == [(editor_id, f"token {token_id} 'website' of editor@clinic.example")]


def test_token_rules_viewers_read_only_own_tokens_owners_see_all(staff, db):
    viewer, editor, owner = staff.client("viewer"), staff.client("editor"), staff.client("owner")
    refused = post(viewer, "/admin/tokens", name="reports", scope="write")
    assert refused.status_code == 400 and "Viewers may only create read tokens." in refused.text
    assert 'value="write"' not in viewer.get("/admin/tokens").text
    assert post(viewer, "/admin/tokens", name="reports", scope="read").status_code == 200
    no_name = post(editor, "/admin/tokens", name="  ", scope="read")
    assert no_name.status_code == 400 and "Give the token a name" in no_name.text
    bad_scope = post(editor, "/admin/tokens", name="x", scope="admin")
    assert bad_scope.status_code == 400 and "Scope must be read, write or webhook." in bad_scope.text
    assert post(editor, "/admin/tokens", name="cms", scope="write").status_code == 200

    assert "reports" not in editor.get("/admin/tokens").text  # only their own
    everyone = owner.get("/admin/tokens").text
    assert "<th>Owner</th>" in everyone
    assert "<td>viewer@clinic.example</td>" in everyone and "<td>editor@clinic.example</td>" in everyone
    viewers_token = db.scalar(sa.select(ApiToken.id).where(ApiToken.name == "reports"))
    assert post(editor, f"/admin/tokens/{viewers_token}/revoke").status_code == 404  # not theirs
    assert db.scalar(sa.select(ApiToken.revoked_at).where(ApiToken.id == viewers_token)) is None
    assert post(owner, f"/admin/tokens/{viewers_token}/revoke").status_code == 302  # owners may
    assert db.scalar(sa.select(ApiToken.revoked_at).where(ApiToken.id == viewers_token)) is not None


def test_use_token_refuses_revoked_disabled_and_a_viewers_writes(mailer):
    with session_scope(mailer.sessions) as session:
        user = users.create_user(session, "ed@clinic.example", PASSWORD, "editor")
        write = users.create_token(session, user, "cms", "write")
        revoked = users.create_token(session, user, "old", "read")
        users.revoke_token(session, session.scalar(sa.select(ApiToken.id).where(ApiToken.name == "old")),
                           actor=None, now=utcnow())
    any_scope, write_scope = frozenset({"read", "write"}), frozenset({"write"})

    def use(token, scopes):
        with session_scope(mailer.sessions) as session:
            return users.use_token(session, token, scopes, now=utcnow())

    assert use(write, write_scope).name == "cms"
    for token in (None, "", "mlr_unknown", revoked):
        with pytest.raises(users.AuthError) as refused:
            use(token, any_scope)
        assert (refused.value.status, refused.value.code) == (401, "unauthorized")
    with session_scope(mailer.sessions) as session:
        users.set_role(session, session.get(User, user.id), "viewer", actor_id=None)
    with pytest.raises(users.AuthError) as demoted:
        use(write, write_scope)  # a viewer's token only reads, whatever its scope
    assert (demoted.value.status, demoted.value.message) == (403, "This token's scope (read) does not allow this.")
    assert use(write, any_scope).name == "cms"
    with session_scope(mailer.sessions) as session:
        users.create_user(session, "own@clinic.example", PASSWORD, "owner")
        users.disable_user(session, session.get(User, user.id), actor_id=None, now=utcnow())
    with pytest.raises(users.AuthError) as disabled:
        use(write, any_scope)
    assert disabled.value.status == 401


# Audit log -----------------------------------------------------------------------------

def test_audit_log_newest_first_filters_and_pages_in_the_organisations_zone(staff, db):
    owner_id, editor_id = user_id(db, "owner@clinic.example"), user_id(db, "editor@clinic.example")
    start = dt.datetime(2026, 7, 1, 11, 0, tzinfo=dt.timezone.utc)  # 12:00 in London (BST)
    with session_scope(staff.mailer.sessions) as session:
        for i in range(60):
            session.add(AuditLog(user_id=owner_id if i % 2 else editor_id, action="view_registrants" if i % 3 else
                                 "export_registrants", detail=f"entry {i}", created_at=start + dt.timedelta(minutes=i)))
    owner = staff.client("owner")
    first = owner.get("/admin/audit")
    assert first.status_code == 200
    details = re.findall(r"<td>entry (\d+)</td>", first.text)
    assert details == [str(i) for i in range(59, 9, -1)]  # newest first, 50 a page
    assert "<td>2026-07-01 12:59:00 BST</td>" in first.text
    next_page = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', first.text).group(1).replace("&amp;", "&")
    second = owner.get(next_page)
    assert re.findall(r"<td>entry (\d+)</td>", second.text) == [str(i) for i in range(9, -1, -1)]
    assert "Next page" not in second.text

    filtered = owner.get(f"/admin/audit?user={editor_id}&action=export_registrants")
    assert re.findall(r"<td>entry (\d+)</td>", filtered.text) == ["54", "48", "42", "36", "30", "24", "18", "12",
                                                                  "6", "0"]
    assert "<td>editor@clinic.example</td><td>—</td><td>export_registrants</td>" in filtered.text
    assert f'<option value="{editor_id}" selected>' in filtered.text
    assert "No entries." in owner.get("/admin/audit?action=nothing_like_it").text
    assert owner.get("/admin/audit?user=abc&before=x").status_code == 200  # ignored, not a 500


# Session cookie ------------------------------------------------------------------------

def _session_cookie(client) -> str:
    response = client.post("/admin/login", data={"email": "owner@clinic.example", "password": PASSWORD,
                                                 "csrf_token": _csrf(client.get("/admin/login").text)})
    assert response.status_code == 302
    return [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")][-1]


def test_session_cookie_is_httponly_lax_secure_on_https_and_expires(staff):
    cookie = _session_cookie(staff.app.test_client())
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie
    expires = dt.datetime.strptime(re.search(r"Expires=([^;]+)", cookie).group(1), "%a, %d %b %Y %H:%M:%S GMT")
    left = expires.replace(tzinfo=dt.timezone.utc) - utcnow()
    assert dt.timedelta(hours=11, minutes=59) < left <= dt.timedelta(hours=12)


def test_session_cookie_is_not_secure_on_plain_http(database_url, tmp_path):
    app = create_app(settings_for(database_url, tmp_path) | {"base_url": "http://127.0.0.1:5000"})
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "owner@clinic.example", PASSWORD, "owner")
    cookie = _session_cookie(app.test_client())
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    app.extensions["mailer"].engine.dispose()


# Command line --------------------------------------------------------------------------

def _cli(database_url, tmp_path, *args):
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance"), "MAILER_NEW_PASSWORD": PASSWORD}
    return CliRunner().invoke(main, list(args), env=env)


def test_cli_users_and_tokens(database_url, tmp_path, db, mailer):
    assert _cli(database_url, tmp_path, "create-user", "boss@clinic.example").exit_code == 0
    assert _cli(database_url, tmp_path, "create-user", "ed@clinic.example", "--role", "editor").exit_code == 0
    listed = _cli(database_url, tmp_path, "users", "list")
    assert listed.output.splitlines() == ["boss@clinic.example\towner\tactive\tlast login never",
                                          "ed@clinic.example\teditor\tactive\tlast login never"]
    assert _cli(database_url, tmp_path, "users", "set-role", "ed@clinic.example", "viewer").output == \
        "ed@clinic.example: editor -> viewer\n"
    last = _cli(database_url, tmp_path, "users", "disable", "boss@clinic.example")
    assert last.exit_code == 1 and "boss@clinic.example is the last active owner" in last.output
    assert _cli(database_url, tmp_path, "users", "disable", "ed@clinic.example").exit_code == 0
    assert "ed@clinic.example\tviewer\tdisabled" in _cli(database_url, tmp_path, "users", "list").output
    assert _cli(database_url, tmp_path, "users", "enable", "ed@clinic.example").output == "ed@clinic.example enabled\n"
    new = _cli(database_url, tmp_path, "users", "reset-password", "ed@clinic.example").output.strip()
    with session_scope(mailer.sessions) as session:
        assert users.authenticate(session, "ed@clinic.example", new, now=utcnow(), max_failures=5,
                                  lockout_seconds=60).email == "ed@clinic.example"
    unknown = _cli(database_url, tmp_path, "users", "disable", "nobody@clinic.example")
    assert unknown.exit_code == 1 and "no staff user nobody@clinic.example" in unknown.output

    refused = _cli(database_url, tmp_path, "create-token", "ed@clinic.example", "--name", "x", "--scope", "write")
    assert refused.exit_code == 1 and "Viewers may only create read tokens." in refused.output
    token = _cli(database_url, tmp_path, "create-token", "boss@clinic.example", "--name", "cms", "--scope", "write")
    assert token.output.startswith("mlr_")
    token_id = db.scalar(sa.select(ApiToken.id))
    line = _cli(database_url, tmp_path, "list-tokens").output.strip()
    assert re.fullmatch(rf"{token_id}\twrite\tboss@clinic.example\tcreated \d{{4}}-\d\d-\d\d \d\d:\d\d\tused -\tactive\tcms",
                        line), line
    assert _cli(database_url, tmp_path, "list-tokens", "--user", "ed@clinic.example").output == ""
    assert _cli(database_url, tmp_path, "revoke-token", str(token_id)).output == f"token {token_id} (cms) revoked\n"
    assert "\trevoked " in _cli(database_url, tmp_path, "list-tokens").output
    assert _cli(database_url, tmp_path, "revoke-token", "999").exit_code == 1
    actions = db.execute(sa.select(AuditLog.user_id, AuditLog.action, AuditLog.detail).order_by(AuditLog.id))
    assert actions == [
        (None, "create_user", "boss@clinic.example as owner (command line)"),
        (None, "create_user", "ed@clinic.example as editor (command line)"),
        (None, "change_role", "ed@clinic.example: editor -> viewer (command line)"),
        (None, "disable_user", "ed@clinic.example (command line)"),
        (None, "enable_user", "ed@clinic.example (command line)"),
        (None, "reset_password", "ed@clinic.example (command line)"),
        (None, "create_token", f"token {token_id} 'cms' (write) for boss@clinic.example (command line)"),
        (None, "revoke_token", f"token {token_id} 'cms' of boss@clinic.example (command line)"),
    ]
