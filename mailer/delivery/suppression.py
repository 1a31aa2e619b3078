"""The suppression list: addresses never mailed again (hard bounce, complaint, erasure),
kept as a keyed hash of the address so the list survives erasure. The sender skips
them (outbox.suppressed_hashes); contacts are stored under the same hash."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.db import dialect_insert
from mailer.delivery import outbox
from mailer.models import Contact, Suppression
from mailer.settings import Settings


def email_hash(settings: Settings, address: str) -> str:
    key = hashlib.sha256(f"mailer.email-hash:{settings.secret_key}".encode()).digest()
    return hmac.new(key, address.encode(), hashlib.sha256).hexdigest()


def suppress_address(session: Session, settings: Settings, address: str, *, reason: str, detail: str = "",
                     now: dt.datetime) -> bool:
    """Never mail this address again (hard bounce, complaint, erasure); cancels what is
    queued for it. True when it was newly suppressed."""
    digest = email_hash(settings, address.strip().lower())
    added = session.execute(
        dialect_insert(session, Suppression)
        .values(email_hash=digest, reason=reason, detail=detail[:2000], created_at=now)
        .on_conflict_do_nothing(index_elements=["email_hash"]).returning(Suppression.id)
    ).first() is not None
    contact_id = session.scalar(sa.select(Contact.id).where(Contact.email_hash == digest))
    if contact_id is not None:
        outbox.cancel_pending(session, contact_id=contact_id, reason=f"suppressed: {reason}")
    return added
