"""Signed tokens for links in mail: confirm a signup, unsubscribe from a list."""
from __future__ import annotations

import functools

from itsdangerous import BadSignature, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

__all__ = ["BadSignature", "SignatureExpired", "dumps", "loads"]


@functools.lru_cache(maxsize=64)
def _serializer(secret_key: str, purpose: str, timed: bool):
    """One serializer per key and purpose, made once (a send batch signs two tokens per message)."""
    cls = URLSafeTimedSerializer if timed else URLSafeSerializer
    return cls(secret_key, salt=f"mailer.{purpose}")


def dumps(secret_key: str, purpose: str, payload, *, timed: bool = False) -> str:
    return _serializer(secret_key, purpose, timed).dumps(payload)


def loads(secret_key: str, purpose: str, token: str, *, max_age: int | None = None):
    """Raises SignatureExpired when older than max_age, BadSignature when forged."""
    if max_age is not None:
        return _serializer(secret_key, purpose, True).loads(token, max_age=max_age)
    return _serializer(secret_key, purpose, False).loads(token)
