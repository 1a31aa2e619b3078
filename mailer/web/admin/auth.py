"""Staff login and logout; `login_required` guards every /admin page."""
from __future__ import annotations

import functools

from flask import Blueprint, abort, current_app, g, redirect, render_template, request, session, url_for
from itsdangerous import BadSignature, URLSafeTimedSerializer

from mailer.staff import users
from mailer.db import utcnow
from mailer.models import User
from mailer.web import db_reader, db_session, mailer
from mailer.web import ratelimit

bp = Blueprint("auth", __name__, url_prefix="/admin")
# A browser that logged in to an account keeps this signed cookie naming the account, so the
# account's back-off after wrong passwords (users.authenticate) never holds its owner up.
DEVICE_COOKIE = "mailer_device"
DEVICE_MAX_AGE = 365 * 24 * 3600


def _devices() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt="mailer.known-device")


def _known_device_user() -> int | None:
    try:
        return _devices().loads(request.cookies.get(DEVICE_COOKIE, ""), max_age=DEVICE_MAX_AGE)["user"]
    except (BadSignature, KeyError, TypeError):
        return None


def session_user() -> User | None:
    """The staff user this browser is logged in as, or None."""
    user_id = session.get("user_id")
    if user_id is None:
        return None
    with db_reader() as s:
        user = s.get(User, user_id)
    # A disabled account, or a password changed since this login, ends the session.
    if user is not None and (user.disabled_at is not None or session.get("stamp") != users.session_stamp(user)):
        session.clear()
        return None
    return user


def login_required(view):
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        user = session_user()
        if user is None:
            return redirect(url_for("auth.login", next=request.full_path))
        g.user = user
        return view(*args, **kwargs)

    return wrapped


def role_required(*roles):
    """Logged in, and with one of these roles (after login_required); 403 otherwise."""
    def decorate(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            if g.user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return decorate


def audit(action: str, detail: str = "") -> None:
    """Record that the logged-in user saw or exported personal data, or changed access."""
    with db_session() as s:
        users.record(s, g.user.id, action, detail)


def _safe_next(target: str | None) -> str:
    """Back to the staff page that asked for the login; anything else goes to the dashboard."""
    if (target and target.startswith("/admin") and not target.startswith("//") and target.isprintable()
            and "\\" not in target):
        return target
    return url_for("admin.dashboard")


@bp.route("/login", methods=["GET", "POST"])
def login():
    error = retry_after = None
    if request.method == "POST":
        settings = mailer().settings
        retry_after = ratelimit.exceeded("login")
        if retry_after:
            error = "Too many login attempts from your network. Try again in a few minutes."
        else:
            user_id = None
            device_user = _known_device_user()
            with db_session() as s:  # failed attempts must be committed too, so catch inside
                try:
                    user = users.authenticate(s, request.form.get("email", ""), request.form.get("password", ""),
                                              now=utcnow(), max_failures=settings.login_max_failures,
                                              lockout_seconds=settings.login_lockout_seconds,
                                              known_device_user=device_user)
                    user_id, stamp = user.id, users.session_stamp(user)
                except users.LoginRefused as exc:
                    error = str(exc)
            if user_id is not None:
                session.clear()
                session.permanent = True  # ends PERMANENT_SESSION_LIFETIME after the last request
                session["user_id"] = user_id
                session["stamp"] = stamp
                response = redirect(_safe_next(request.args.get("next")))
                response.set_cookie(DEVICE_COOKIE, _devices().dumps({"user": user_id}), max_age=DEVICE_MAX_AGE,
                                    path=url_for("auth.login"), secure=request.is_secure, httponly=True,
                                    samesite="Lax")
                return response
    if retry_after:
        return ratelimit.with_retry_after((render_template("admin/login.html", error=error), 429), retry_after)
    return render_template("admin/login.html", error=error), 400 if error else 200


@bp.post("/logout")
def logout():
    """Ends the session server-side: every copy of this account's session cookie is refused
    from now on (users.end_sessions), not only the one in this browser."""
    user_id = session.get("user_id")
    if user_id is not None:
        with db_session() as s:
            user = s.get(User, user_id)
            if user is not None and session.get("stamp") == users.session_stamp(user):
                users.end_sessions(user)
    session.clear()
    return redirect(url_for("auth.login"))
