"""Newsletters: who gets an issue (audience materialised into the outbox in one
statement) and the mail each recipient gets. Composing and scheduling build on this."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer import outbox
from mailer.db import dialect_insert
from mailer.models import (Contact, Delivery, DeliveryStatus, Newsletter, Subscription, SubscriptionStatus,
                           Suppression, newsletter_lists)
from mailer.rendering import compile_newsletter

NEWSLETTER = "newsletter"


def _audience(newsletter_id: int):
    """(contact_id, list_id) of every active, reachable subscriber of the issue's lists;
    someone on two of its lists is one row (and gets one copy)."""
    return (
        sa.select(Subscription.contact_id, sa.func.min(Subscription.list_id).label("list_id"))
        .join(newsletter_lists, newsletter_lists.c.list_id == Subscription.list_id)
        .join(Contact, Contact.id == Subscription.contact_id)
        .where(
            newsletter_lists.c.newsletter_id == newsletter_id,
            Subscription.status == SubscriptionStatus.ACTIVE,
            Contact.email.is_not(None),
            ~sa.exists().where(Suppression.email_hash == Contact.email_hash),
        )
        .group_by(Subscription.contact_id)
    )


def count_audience(session: Session, newsletter_id: int) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(_audience(newsletter_id).subquery()))


def enqueue_audience(session: Session, newsletter_id: int, *, now: dt.datetime) -> int:
    """Queue the issue for its whole audience in one INSERT … SELECT. The dedupe key is
    per issue and contact, so running it again (a retry, a second worker) adds nobody twice."""
    audience = _audience(newsletter_id).subquery()
    source = sa.select(
        audience.c.contact_id,
        sa.literal(NEWSLETTER),
        audience.c.list_id,
        sa.literal(newsletter_id, sa.Integer),
        sa.literal(f"newsletter:{newsletter_id}:") + sa.cast(audience.c.contact_id, sa.String),
        sa.literal(DeliveryStatus.QUEUED.value),
        sa.literal(0),
        sa.literal(now, Delivery.next_attempt_at.type),
        sa.literal(now, Delivery.created_at.type),
    ).where(sa.true())  # SQLite needs a WHERE before ON CONFLICT in INSERT … SELECT
    stmt = dialect_insert(session, Delivery).from_select(
        ["contact_id", "kind", "list_id", "ref_id", "dedupe_key", "status", "attempts", "next_attempt_at",
         "created_at"],
        source,
    ).on_conflict_do_nothing(index_elements=["dedupe_key"])
    # SQLAlchemy keeps the rowcount of an INSERT only when asked to.
    return session.execute(stmt.execution_options(preserve_rowcount=True)).rowcount


def newsletter_email(batch, delivery: Delivery):
    """The compiled issue: compiled once, reused for every recipient while its text is unchanged."""
    row_key = (Newsletter, delivery.ref_id)
    if row_key not in batch.rows:
        batch.rows[row_key] = batch.session.get(Newsletter, delivery.ref_id)
    newsletter = batch.rows[row_key]
    if newsletter is None or newsletter.status == "cancelled":
        return outbox.Skip(DeliveryStatus.CANCELLED, "newsletter cancelled")
    key = (NEWSLETTER, newsletter.id, newsletter.subject, newsletter.preheader, newsletter.body_md, newsletter.layout)
    if key not in batch.cache:
        if len(batch.cache) > 32:
            batch.cache.clear()
        batch.cache[key] = compile_newsletter(
            batch.renderer, subject=newsletter.subject, preheader=newsletter.preheader,
            body_markdown=newsletter.body_md, layout=newsletter.layout, context=batch.static_context,
        )
    return batch.cache[key]
