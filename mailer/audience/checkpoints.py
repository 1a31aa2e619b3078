"""The consent ledger's weekly signed checkpoint, mailed to every active owner: the copy
of the ledger's count and head that leaves the database (see consent.make_checkpoint)."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.audience import consent, contacts
from mailer.delivery import outbox
from mailer.delivery.registry import Kind
from mailer.models import ConsentEvent, Role, User

CHECKPOINT_MAIL = "consent_checkpoint"


def queue_checkpoint_mail(session: Session, settings, now: dt.datetime) -> int:
    """This week's signed checkpoint to every active owner, once per owner and ISO week
    (the dedupe key); the text is made when the mail is sent. Returns the mails queued."""
    if not session.scalar(sa.select(sa.exists().where(ConsentEvent.id.is_not(None)))):
        return 0
    year, week, _ = now.astimezone(dt.timezone.utc).isocalendar()
    owners = session.scalars(sa.select(User.email).where(User.role == Role.OWNER, User.disabled_at.is_(None)))
    queued = 0
    for email in owners.all():
        contact = contacts.get_or_create_contact(session, settings, email, now=now)
        queued += bool(outbox.enqueue(session, contact_id=contact.id, kind=CHECKPOINT_MAIL,
                                      dedupe_key=f"consent-checkpoint:{year}-W{week:02d}:{contact.id}", now=now))
    return queued


def checkpoint_email(batch, delivery) -> dict:
    checkpoint = consent.make_checkpoint(batch.session, batch.clock())
    return {"checkpoint": checkpoint.text, "events": checkpoint.events, "at": checkpoint.at}


# The kind of mail this module makes, for the sender (registered by mailer.build).
MAIL_KINDS = {CHECKPOINT_MAIL: Kind(checkpoint_email, label="Consent checkpoint")}
