"""Staff users and API tokens: creation, password check with lockout."""
from __future__ import annotations

import datetime as dt
import functools
import hashlib
import secrets

import sqlalchemy as sa
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from mailer.errors import InvalidInput
from mailer.models import ApiToken, Role, User

MIN_PASSWORD = 12


@functools.cache
def _dummy_hash() -> str:
    """Checked when the address is unknown, so a wrong address costs as long as a wrong
    password. Made on first use: scrypt needs 32 MB, which a worker should not pay."""
    return generate_password_hash("not-a-real-password")


def create_user(session: Session, email: str, password: str, role: str = Role.OWNER) -> User:
    from mailer.contacts import normalise_email

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


class LoginRefused(Exception):
    pass


def authenticate(session: Session, email: str, password: str, *, now: dt.datetime, max_failures: int,
                 lockout_seconds: int) -> User:
    """The user, or LoginRefused with a message that does not tell which part was wrong."""
    user = session.scalar(sa.select(User).where(User.email == (email or "").strip().lower()))
    if user is None:
        check_password_hash(_dummy_hash(), password or "")
        raise LoginRefused("Wrong email or password.")
    if user.locked_until and user.locked_until > now:
        raise LoginRefused("Too many failed attempts. Try again later.")
    if not check_password_hash(user.password_hash, password or ""):
        user.failed_logins += 1
        if user.failed_logins >= max_failures:
            user.locked_until = now + dt.timedelta(seconds=lockout_seconds)
            user.failed_logins = 0
        raise LoginRefused("Wrong email or password.")
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    return user


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, user: User, name: str, scope: str = "read") -> str:
    """A new API token; only its hash is stored, so the plain value is shown once."""
    if scope not in {"read", "write"}:
        raise InvalidInput("scope", "Scope must be read or write.")
    token = "mlr_" + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name[:100], token_hash=hash_token(token), scope=scope))
    session.flush()
    return token


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def use_token(session: Session, token: str | None, scopes: frozenset[str], *, now: dt.datetime) -> ApiToken:
    """The live token with one of `scopes`, its last use recorded; AuthError otherwise."""
    row = session.scalar(sa.select(ApiToken).where(ApiToken.token_hash == hash_token(token))) if token else None
    if row is None or row.revoked_at is not None:
        raise AuthError(401, "unauthorized", "A valid API token is required.")
    if row.scope not in scopes:
        raise AuthError(403, "forbidden", f"This token's scope ({row.scope}) does not allow this.")
    row.last_used_at = now
    return row
