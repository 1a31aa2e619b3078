"""Staff pages for access: users and roles, my password, API tokens, settings, the audit log.
Views parse the form and call mailer.staff.users or mailer.staff.site_settings."""
from __future__ import annotations

import os

import sqlalchemy as sa
from flask import Blueprint, flash, g, redirect, render_template, request, session, url_for

from mailer.campaigns import blog
from mailer.staff import site_settings, users
from mailer.db import utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.models import Role, User
from mailer.clock import format_local
from mailer.web import db_reader, db_session, mailer
from mailer.web.admin.auth import login_required, role_required

bp = Blueprint("staff_admin", __name__, url_prefix="/admin")
AUDIT_PAGE = 50


def owners_only(view):
    return login_required(role_required(Role.OWNER)(view))


def _shown_once(html: str, status: int = 200):
    """A page with a secret on it (a new password or token): never cached, never in a flash."""
    return html, status, {"Cache-Control": "no-store"}


@bp.errorhandler(NotFound)
def _not_found(exc):
    return render_template("admin/message.html", title="Not found", message=str(exc).capitalize() + "."), 404


# Users ---------------------------------------------------------------------------------

def _users_page(status: int = 200, **extra):
    with db_reader() as s:
        rows = users.list_users(s)
    now = utcnow()
    return render_template("admin/staff/users.html", rows=rows, roles=list(Role), now=now,
                           form=extra.pop("form", {}), **extra), status


@bp.get("/users")
@owners_only
def users_index():
    return _users_page()


@bp.post("/users")
@owners_only
def users_create():
    form = {"email": request.form.get("email", ""), "role": request.form.get("role", Role.EDITOR)}
    try:
        with db_session() as s:
            user, generated = users.add_user(s, form["email"], form["role"], request.form.get("password") or None,
                                             actor_id=g.user.id)
            email = user.email
    except InvalidInput as exc:
        return _users_page(400, error=exc, form=form)
    page, status = _users_page(created=email, password=generated)
    return _shown_once(page, status)


def _user_action(user_id: int, change, done):
    try:
        with db_session() as s:
            user = users.get_user(s, user_id)
            change(s, user)
            email, stamp = user.email, users.session_stamp(user)
    except InvalidInput as exc:
        return _users_page(400, error=exc)
    if user_id == g.user.id:
        session["stamp"] = stamp  # an owner changing their own role stays logged in, as the new role
    flash(done(email))
    return redirect(url_for(".users_index"))


@bp.post("/users/<int:user_id>/role")
@owners_only
def users_role(user_id: int):
    role = request.form.get("role", "")
    return _user_action(user_id, lambda s, user: users.set_role(s, user, role, actor_id=g.user.id),
                        lambda email: f"{email} is now {role}.")


@bp.post("/users/<int:user_id>/disable")
@owners_only
def users_disable(user_id: int):
    return _user_action(user_id, lambda s, user: users.disable_user(s, user, actor_id=g.user.id, now=utcnow()),
                        lambda email: f"{email} is disabled: no login, sessions or API tokens.")


@bp.post("/users/<int:user_id>/enable")
@owners_only
def users_enable(user_id: int):
    return _user_action(user_id, lambda s, user: users.enable_user(s, user, actor_id=g.user.id),
                        lambda email: f"{email} can log in again.")


@bp.post("/users/<int:user_id>/password")
@owners_only
def users_reset_password(user_id: int):
    try:
        with db_session() as s:
            user = users.get_user(s, user_id)
            password = users.reset_password(s, user, actor_id=g.user.id)
            email = user.email
    except InvalidInput as exc:
        return _users_page(400, error=exc)
    page, status = _users_page(reset=email, password=password)
    return _shown_once(page, status)


# My password ---------------------------------------------------------------------------

@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def password():
    if request.method == "GET":
        return render_template("admin/staff/password.html", error=None)
    try:
        with db_session() as s:
            user = users.get_user(s, g.user.id)
            users.change_password(s, user, request.form.get("current_password", ""),
                                  request.form.get("password", ""), repeat=request.form.get("repeat_password", ""))
            stamp = users.session_stamp(user)
    except InvalidInput as exc:
        return render_template("admin/staff/password.html", error=exc), 400
    session["stamp"] = stamp  # this session stays; every other one of this user ends
    flash("Your password is changed. Other sessions of yours are logged out.")
    return redirect(url_for(".password"))


# API tokens ----------------------------------------------------------------------------

def _tokens_page(status: int = 200, **extra):
    everyone = g.user.role == Role.OWNER
    with db_reader() as s:
        rows = users.list_tokens(s, None if everyone else g.user)
    zone = mailer().settings.timezone
    return render_template("admin/staff/tokens.html", rows=rows, everyone=everyone, zone=zone,
                           when=lambda t: format_local(t, zone) if t else "never", **extra), status


@bp.get("/tokens")
@login_required
def tokens_index():
    return _tokens_page()


@bp.post("/tokens")
@login_required
def tokens_create():
    form = {"name": request.form.get("name", ""), "scope": request.form.get("scope", "read")}
    try:
        with db_session() as s:
            token = users.issue_token(s, users.get_user(s, g.user.id), form["name"], form["scope"],
                                      actor_id=g.user.id)
    except InvalidInput as exc:
        return _tokens_page(400, error=exc, form=form)
    page, status = _tokens_page(created=token, form={})
    return _shown_once(page, status)


@bp.post("/tokens/<int:token_id>/revoke")
@login_required
def tokens_revoke(token_id: int):
    with db_session() as s:
        token = users.revoke_token(s, token_id, actor=users.get_user(s, g.user.id), now=utcnow())
        name = token.name
    flash(f"Token '{name}' is revoked.")
    return redirect(url_for(".tokens_index"))


# Settings ------------------------------------------------------------------------------

def _settings_page(status: int = 200, errors: dict | None = None, submitted: dict | None = None,
                   feed_check: blog.FeedCheck | None = None):
    m = mailer()
    with db_reader() as s:
        rows = site_settings.rows(s, m.base_settings, os.environ)
        feed = blog.feed_state(s)
    return render_template("admin/staff/settings.html", rows=rows, errors=errors or {}, submitted=submitted or {},
                           can_edit=g.user.role == Role.OWNER, feed=feed, feed_check=feed_check,
                           when=lambda t: format_local(t, m.settings.timezone)), status


@bp.get("/settings")
@login_required
def settings_index():
    return _settings_page()


@bp.post("/settings")
@owners_only
def settings_save():
    submitted = {key: request.form[key] for key in site_settings.EDITABLE if key in request.form}
    reset = tuple(key for key in site_settings.EDITABLE if request.form.get(f"reset_{key}"))
    m = mailer()
    try:
        with db_session() as s:
            changes = site_settings.save(s, submitted, base=m.base_settings, actor_id=g.user.id, now=utcnow(),
                                         reset=reset)
    except site_settings.InvalidSettings as exc:
        return _settings_page(400, errors=exc.errors, submitted=submitted)
    m.refresh_settings()  # this process at once; the others within web.SETTINGS_MAX_AGE, workers at their next batch
    flash(f"Saved: {', '.join(site_settings.EDITABLE[key].label for key, _, _ in changes)}." if changes
          else "Nothing changed.")
    return redirect(url_for(".settings_index"))


@bp.post("/settings/feed-check")
@owners_only
def settings_feed_check():
    """"Check the feed now": read the feed in the field (saved or not) and show what it has.
    The saved feed's posts go into the cache; a feed only typed is read, nothing is stored."""
    m = mailer()
    settings = m.refresh_settings()
    submitted = {key: request.form[key] for key in site_settings.EDITABLE if key in request.form}
    typed = request.form.get("blog_feed_url", settings.blog_feed_url)
    try:
        url = blog.check_url(typed)
    except ValueError as exc:
        return _settings_page(400, errors={"blog_feed_url": str(exc)}, submitted=submitted)
    if url and url == settings.blog_feed_url:
        found = blog.refresh(m.sessions, settings, now=utcnow(), force=True)
    else:
        found = blog.read_feed(settings, url, now=utcnow())
    return _settings_page(submitted=submitted, feed_check=found)


# Audit log -----------------------------------------------------------------------------

@bp.get("/audit")
@owners_only
def audit_log():
    user_id = request.args.get("user", type=int)
    action = request.args.get("action", "").strip()
    before = request.args.get("before", type=int)
    with db_reader() as s:
        entries = users.audit_entries(s, user_id=user_id or None, action=action or None, before_id=before or None,
                                      limit=AUDIT_PAGE)
        staff = s.execute(sa.select(User.id, User.email).order_by(User.email)).all()
        actions = users.audit_actions(s)
    more = len(entries) > AUDIT_PAGE
    entries = entries[:AUDIT_PAGE]
    zone = mailer().settings.timezone
    next_url = url_for(".audit_log", user=user_id or None, action=action or None,
                       before=entries[-1].id) if more else None
    return render_template("admin/staff/audit.html", entries=entries, staff=staff, actions=actions, zone=zone,
                           user_id=user_id, action=action, next_url=next_url,
                           when=lambda t: t.astimezone(mailer().settings.zone).strftime("%Y-%m-%d %H:%M:%S %Z"))
