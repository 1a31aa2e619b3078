"""Staff users and API tokens: accounts, roles, disabling, passwords (check with lockout),
tokens (stored hashed, revocable). Every change by staff is written to the audit log."""
from __future__ import annotations

import contextvars
import dataclasses
import datetime as dt
import functools
import hashlib
import hmac
import secrets

import sqlalchemy as sa
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from mailer.db import newest_first
from mailer.errors import InvalidInput, NotFound
from mailer.models import ApiToken, AuditLog, Role, User

MIN_PASSWORD = 12
# The one answer to a refused login, whether the address is unknown, the password wrong or
# the account backing off: the page never tells which.
LOGIN_REFUSED = "Wrong email or password."
# The client address of the web request being served (set per request by mailer.web, which
# resolves it through MAILER_PROXY_COUNT); goes into every audit entry that request writes.
client_ip: contextvars.ContextVar[str | None] = contextvars.ContextVar("client_ip", default=None)


@functools.cache
def _dummy_hash() -> str:
    """Checked when the address is unknown, so a wrong address costs as long as a wrong
    password. Made on first use: scrypt needs 32 MB, which a worker should not pay."""
    return generate_password_hash("not-a-real-password")


def create_user(session: Session, email: str, password: str, role: str = Role.OWNER) -> User:
    from mailer.audience.contacts import normalise_email

    address = normalise_email(email)
    if len(password) < MIN_PASSWORD:
        raise InvalidInput("password", f"The password must have at least {MIN_PASSWORD} characters.")
    if role not in set(Role):
        raise InvalidInput("role", f"Role must be one of: {', '.join(Role)}.")
    if session.scalar(sa.select(User).where(User.email == address)):
        raise InvalidInput("email", "A user with that email exists already.")
    user = User(email=address, password_hash=generate_password_hash(password), role=role)
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, user: User, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput("password", f"The password must have at least {MIN_PASSWORD} characters.")
    user.password_hash = generate_password_hash(password)
    user.failed_logins = 0
    user.locked_until = None
    end_sessions(user)


def end_sessions(user: User) -> None:
    """Every login session of this account, on every process and host, is refused from its
    next request (its stamp no longer matches; see session_stamp)."""
    user.session_generation = (user.session_generation or 0) + 1


class LoginRefused(Exception):
    pass


def backoff_seconds(failures: int, *, max_failures: int, longest: int) -> int:
    """How long an account waits after `failures` wrong passwords in a row: nothing for the
    first max_failures - 1, then 1 s, doubling with each further failure, at most `longest`."""
    if failures < max_failures:
        return 0
    return min(longest, 2 ** min(failures - max_failures, 30))


def authenticate(session: Session, email: str, password: str, *, now: dt.datetime, max_failures: int,
                 lockout_seconds: int, known_device_user: int | None = None) -> User:
    """The user, or LoginRefused(LOGIN_REFUSED) alike for an unknown address, a wrong password
    and an account backing off. A password hash is checked in every case, so the three take
    the same time. Wrong passwords in a row make the account wait ever longer (backoff_seconds,
    at most lockout_seconds) before a password is tried at all; a browser that logged in to
    this account before (`known_device_user`, its id) is not held up, so an attacker cannot
    lock the owner out."""
    user = session.scalar(sa.select(User).where(User.email == (email or "").strip().lower()))
    correct = check_password_hash(user.password_hash if user else _dummy_hash(), password or "")
    if user is None:
        raise LoginRefused(LOGIN_REFUSED)
    backing_off = bool(user.locked_until and user.locked_until > now)
    if backing_off and user.id != known_device_user:
        raise LoginRefused(LOGIN_REFUSED)  # the password is not looked at while backing off
    if not correct:
        user.failed_logins += 1
        wait = backoff_seconds(user.failed_logins, max_failures=max_failures, longest=lockout_seconds)
        user.locked_until = now + dt.timedelta(seconds=wait) if wait else None
        raise LoginRefused(LOGIN_REFUSED)
    if user.disabled_at is not None:  # said only to whoever knows the password
        raise LoginRefused("This account has been disabled. Ask an owner to enable it again.")
    if not backing_off:  # the owner's own browser getting in leaves other browsers waiting
        user.failed_logins = 0
        user.locked_until = None
    user.last_login_at = now
    return user


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# read: GET on the API and /metrics; write: everything on the API and the bounce webhook
# (in the Authorization header); webhook: the bounce webhook only, and the only scope the
# webhook takes as ?token= (for SNS), so a URL that carries a token opens nothing else.
SCOPES = ("read", "write", "webhook")


def create_token(session: Session, user: User, name: str, scope: str = "read") -> str:
    """A new API token; only its hash is stored, so the plain value is shown once.
    Viewers may only have read tokens. (Staff actions go through issue_token, audited.)"""
    name = " ".join((name or "").split())
    if not name:
        raise InvalidInput("name", "Give the token a name that says what it is for, e.g. 'website'.")
    if len(name) > 100:
        raise InvalidInput("name", "The name may have at most 100 characters.")
    if scope not in SCOPES:
        raise InvalidInput("scope", "Scope must be read, write or webhook.")
    if scope != "read" and user.role == Role.VIEWER:
        raise InvalidInput("scope", "Viewers may only create read tokens.")
    token = "mlr_" + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name, token_hash=hash_token(token), scope=scope))
    session.flush()
    return token


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def use_token(session: Session, token: str | None, scopes: frozenset[str], *, now: dt.datetime) -> ApiToken:
    """The live token with one of `scopes`, its last use recorded; AuthError otherwise."""
    found = session.execute(sa.select(ApiToken, User).join(User, User.id == ApiToken.user_id)
                            .where(ApiToken.token_hash == hash_token(token))).first() if token else None
    row, user = found if found else (None, None)
    if row is None or row.revoked_at is not None or user.disabled_at is not None:
        raise AuthError(401, "unauthorized", "A valid API token is required.")
    scope = effective_scope(row, user)
    if scope not in scopes:
        raise AuthError(403, "forbidden", f"This token's scope ({scope}) does not allow this.")
    row.last_used_at = now
    return row


def effective_scope(token: ApiToken, user: User) -> str:
    """A token never allows more than its user's role: a viewer's token only reads."""
    return "read" if user.role == Role.VIEWER else token.scope


# Audit ---------------------------------------------------------------------------------

def record(session: Session, actor_id: int | None, action: str, detail: str = "") -> None:
    """An audit log entry, in the same transaction as the change it describes.
    actor_id None: done from the command line."""
    if actor_id is None:
        detail = f"{detail} (command line)"
    session.add(AuditLog(user_id=actor_id, action=action, detail=detail[:2000], ip=client_ip.get()))


def audit_entries(session: Session, *, user_id: int | None = None, action: str | None = None,
                  before_id: int | None = None, limit: int = 50) -> list:
    """Audit log rows (id, created_at, user's email, action, detail, ip), newest first, one more
    than `limit` when there is a next page. The user and action filters walk their (…, id)
    indexes, so a page costs the same however long the log grows."""
    query = (sa.select(AuditLog.id, AuditLog.created_at, User.email, AuditLog.action, AuditLog.detail, AuditLog.ip)
             .outerjoin(User, User.id == AuditLog.user_id))
    if user_id is not None:
        query = query.where(AuditLog.user_id == user_id)
    if action is not None:
        query = query.where(AuditLog.action == action)
    return session.execute(newest_first(query, AuditLog.id, before_id=before_id, limit=limit)).all()


def audit_actions(session: Session) -> list[str]:
    """The actions the log holds, for the page's filter (read from the action index)."""
    return list(session.scalars(sa.select(AuditLog.action).distinct().order_by(AuditLog.action)))


# Accounts ------------------------------------------------------------------------------

def new_password() -> str:
    """A strong initial password (about 120 random bits), shown once to the owner."""
    return secrets.token_urlsafe(15)


def session_stamp(user: User) -> str:
    """Kept in the login session and compared on every request: changes with the password
    and with the session generation (end_sessions), so logout, a new password, a role change
    or disabling refuses every copy of the cookie. Derived from the hash, never the hash itself."""
    material = f"{user.session_generation or 0}:{user.password_hash}".encode()
    return hmac.new(b"mailer.session-stamp", material, hashlib.sha256).hexdigest()[:20]


def list_users(session: Session) -> list[User]:
    return list(session.scalars(sa.select(User).order_by(User.email)))


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("no such user")
    return user


def find_user(session: Session, email: str) -> User:
    user = session.scalar(sa.select(User).where(User.email == (email or "").strip().lower()))
    if user is None:
        raise NotFound(f"no staff user {email}")
    return user


def add_user(session: Session, email: str, role: str, password: str | None = None, *,
             actor_id: int | None) -> tuple[User, str | None]:
    """A new account; with no password given, a generated one is returned (to show once)."""
    generated = None if password else new_password()
    user = create_user(session, email, password or generated, role)
    record(session, actor_id, "create_user", f"{user.email} as {role}")
    return user, generated


def _other_active_owners(session: Session, user: User) -> int:
    # Locked rows: two owners demoting each other at once must not leave no owner.
    ids = session.scalars(sa.select(User.id).where(User.role == Role.OWNER, User.disabled_at.is_(None))
                          .with_for_update()).all()
    return len([i for i in ids if i != user.id])


def _keep_an_owner(session: Session, user: User, what: str) -> None:
    if user.role == Role.OWNER and user.disabled_at is None and not _other_active_owners(session, user):
        raise InvalidInput("user", f"{user.email} is the last active owner: {what} would leave no one able "
                                   "to manage users. Make another user an owner first.")


def set_role(session: Session, user: User, role: str, *, actor_id: int | None) -> str:
    """Change the role; returns the old one. The last active owner keeps the owner role."""
    if role not in set(Role):
        raise InvalidInput("role", f"Role must be one of: {', '.join(Role)}.")
    old = user.role
    if old == role:
        return old
    if role != Role.OWNER:
        _keep_an_owner(session, user, "changing their role")
    user.role = role
    end_sessions(user)  # they log in again, and see what the new role allows
    record(session, actor_id, "change_role", f"{user.email}: {old} -> {role}")
    return old


def disable_user(session: Session, user: User, *, actor_id: int | None, now: dt.datetime) -> None:
    """No more logins, sessions or API tokens for this account; its audit trail stays."""
    if actor_id is not None and actor_id == user.id:
        raise InvalidInput("user", "You cannot disable your own account.")
    if user.disabled_at is not None:
        return
    _keep_an_owner(session, user, "disabling them")
    user.disabled_at = now
    end_sessions(user)
    record(session, actor_id, "disable_user", user.email)


def enable_user(session: Session, user: User, *, actor_id: int | None) -> None:
    """Logins work again, and so do the account's tokens that were not revoked."""
    if user.disabled_at is None:
        return
    user.disabled_at = None
    user.failed_logins = 0
    user.locked_until = None
    record(session, actor_id, "enable_user", user.email)


def reset_password(session: Session, user: User, *, actor_id: int | None) -> str:
    """An owner gives a user who forgot their password a new generated one (returned, to
    show once). Their sessions end, as with any new password; the lockout is lifted."""
    if actor_id is not None and actor_id == user.id:
        raise InvalidInput("user", "Change your own password under “My password”.")
    password = new_password()
    set_password(session, user, password)
    user.failed_logins, user.locked_until = 0, None
    record(session, actor_id, "reset_password", user.email)
    return password


def change_password(session: Session, user: User, current: str, new: str, *, repeat: str | None = None) -> None:
    """A user changes their own password: the current one is required."""
    if not check_password_hash(user.password_hash, current or ""):
        raise InvalidInput("current_password", "The current password is wrong.")
    if repeat is not None and new != repeat:
        raise InvalidInput("repeat_password", "The two new passwords differ.")
    if new == current:
        raise InvalidInput("password", "The new password must differ from the current one.")
    set_password(session, user, new or "")
    record(session, user.id, "change_password", user.email)


# Tokens --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TokenRow:
    id: int
    name: str
    scope: str
    user_email: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


def list_tokens(session: Session, user: User | None = None) -> list[TokenRow]:
    """Tokens of one user, or of everyone (user None), newest first."""
    query = (sa.select(ApiToken.id, ApiToken.name, ApiToken.scope, User.email, ApiToken.created_at,
                       ApiToken.last_used_at, ApiToken.revoked_at)
             .join(User, User.id == ApiToken.user_id).order_by(ApiToken.id.desc()))
    if user is not None:
        query = query.where(ApiToken.user_id == user.id)
    return [TokenRow(*row) for row in session.execute(query)]


def issue_token(session: Session, user: User, name: str, scope: str, *, actor_id: int | None) -> str:
    """create_token, by staff or on the command line: audited."""
    token = create_token(session, user, name, scope)
    row = session.scalar(sa.select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    record(session, actor_id, "create_token", f"token {row.id} '{row.name}' ({scope}) for {user.email}")
    return token


def revoke_token(session: Session, token_id: int, *, actor: User | None, now: dt.datetime) -> ApiToken:
    """Revoke for good. Staff revoke their own tokens, owners anyone's; actor None: the command line."""
    token = session.get(ApiToken, token_id)
    if token is None or (actor is not None and actor.role != Role.OWNER and token.user_id != actor.id):
        raise NotFound("no such token")
    if token.revoked_at is None:
        token.revoked_at = now
        owner = session.get(User, token.user_id)
        record(session, actor.id if actor else None, "revoke_token", f"token {token.id} '{token.name}' of {owner.email}")
    return token
