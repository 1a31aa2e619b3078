"""Newsletters: compose (with template checks), schedule, start sending when due
(the audience materialised into the outbox in one statement), and the mail each
recipient gets."""
from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

import jinja2
import jinja2.meta
import sqlalchemy as sa
from jinja2 import nodes
from sqlalchemy.orm import Session

from mailer import outbox
from mailer.db import dialect_insert
from mailer.errors import InvalidInput, NotFound
from mailer.models import (PENDING_DELIVERY, Contact, Delivery, DeliveryStatus, MailingList, Newsletter,
                           NewsletterStatus, Subscription, SubscriptionStatus, Suppression, newsletter_lists)
from mailer.rendering import TEMPLATES, compile_newsletter, staff_environment

NEWSLETTER = "newsletter"
SUBJECT_MAX = 150
# What a newsletter's subject and body may use, and the attributes of each (None: a plain value).
TEMPLATE_NAMES: dict[str, set[str] | None] = {
    "contact": {"first_name", "name", "email"},
    "unsubscribe_url": None,
    "organisation": None,
    "postal_address": None,
    "base_url": None,
}


# Composing ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TemplateProblem:
    field: str  # "subject" or "body"
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.field}, line {self.line}: {self.message}"


def layouts() -> list[str]:
    return sorted(p.stem for p in (TEMPLATES / "layouts").glob("*.html"))


def check_template(field: str, source: str) -> list[TemplateProblem]:
    """Syntax errors and unknown names, each with its line, before anything is scheduled."""
    try:
        tree = staff_environment(html=False).parse(source)
    except jinja2.TemplateSyntaxError as exc:
        return [TemplateProblem(field, exc.lineno, exc.message or "syntax error")]
    problems = []
    unknown = jinja2.meta.find_undeclared_variables(tree) - set(TEMPLATE_NAMES)
    for name in tree.find_all(nodes.Name):
        if name.ctx == "load" and name.name in unknown:
            problems.append(TemplateProblem(field, name.lineno, f"unknown name '{name.name}'"))
            unknown.discard(name.name)
    for attribute in tree.find_all(nodes.Getattr):
        if isinstance(attribute.node, nodes.Name) and attribute.node.name in TEMPLATE_NAMES:
            allowed = TEMPLATE_NAMES[attribute.node.name] or set()
            if attribute.attr not in allowed:
                problems.append(TemplateProblem(
                    field, attribute.lineno, f"'{attribute.node.name}' has no '{attribute.attr}'"
                    + (f" (it has: {', '.join(sorted(allowed))})" if allowed else "")))
    return sorted(problems, key=lambda p: p.line)


def _validated(session: Session, *, subject: str, preheader: str, body_md: str, layout: str,
               lists: list[str]) -> list[MailingList]:
    subject = " ".join((subject or "").split())
    if not subject:
        raise InvalidInput("subject", "A newsletter needs a subject.")
    if len(subject) > 300 or len(preheader or "") > 300:
        raise InvalidInput("subject", "Subject and preheader are limited to 300 characters.")
    if layout not in layouts():
        raise InvalidInput("layout", f"Unknown layout '{layout}'; choose one of: {', '.join(layouts())}.")
    problems = check_template("subject", subject) + check_template("body", body_md or "")
    if problems:
        first = problems[0]
        raise InvalidInput(first.field, "; ".join(str(p) for p in problems))
    found = session.scalars(sa.select(MailingList).where(MailingList.slug.in_(lists or []))).all()
    if not lists or len(found) != len(set(lists)):
        raise InvalidInput("lists", "Choose at least one existing list.")
    return list(found)


def create_newsletter(session: Session, *, subject: str, body_md: str, lists: list[str], preheader: str = "",
                      layout: str = "default") -> Newsletter:
    mailing_lists = _validated(session, subject=subject, preheader=preheader, body_md=body_md, layout=layout,
                               lists=lists)
    newsletter = Newsletter(subject=" ".join(subject.split()), preheader=preheader, body_md=body_md, layout=layout,
                            lists=mailing_lists, status=NewsletterStatus.DRAFT)
    session.add(newsletter)
    session.flush()
    return newsletter


def get_newsletter(session: Session, newsletter_id: int) -> Newsletter:
    newsletter = session.get(Newsletter, newsletter_id)
    if newsletter is None:
        raise NotFound(f"no newsletter {newsletter_id}")
    return newsletter


def _changeable(newsletter: Newsletter) -> None:
    if newsletter.status not in (NewsletterStatus.DRAFT, NewsletterStatus.SCHEDULED):
        raise InvalidInput("status", f"The newsletter is {newsletter.status}; it can no longer be changed.")


# Scheduling -----------------------------------------------------------------------

def local_to_utc(local: dt.datetime, zone: str) -> dt.datetime:
    """A wall-clock time in `zone` as a UTC instant. A time that does not exist (the hour
    skipped when clocks go forward) is refused rather than guessed."""
    tz = ZoneInfo(zone)
    aware = local.replace(tzinfo=tz)
    back = aware.astimezone(dt.timezone.utc).astimezone(tz)
    if back.replace(tzinfo=None) != local.replace(tzinfo=None):
        raise InvalidInput("send_at", f"{local:%Y-%m-%d %H:%M} does not exist in {zone} (the clocks go forward).")
    return aware.astimezone(dt.timezone.utc)


def schedule(session: Session, newsletter_id: int, send_at: dt.datetime, *, now: dt.datetime) -> Newsletter:
    """Send at `send_at` (aware; use local_to_utc for a wall-clock time). Allowed until sending starts."""
    newsletter = get_newsletter(session, newsletter_id)
    _changeable(newsletter)
    if send_at.tzinfo is None:
        raise InvalidInput("send_at", "The send time needs a time zone.")
    if send_at < now - dt.timedelta(minutes=1):
        raise InvalidInput("send_at", "That time has passed; choose a later one, or send now.")
    newsletter.send_at = send_at.astimezone(dt.timezone.utc)
    newsletter.status = NewsletterStatus.SCHEDULED
    return newsletter


def cancel(session: Session, newsletter_id: int) -> Newsletter:
    """Stop an issue before or while it goes out: whatever is still queued is cancelled."""
    newsletter = get_newsletter(session, newsletter_id)
    if newsletter.status in (NewsletterStatus.SENT, NewsletterStatus.CANCELLED):
        raise InvalidInput("status", f"The newsletter is already {newsletter.status}.")
    newsletter.status = NewsletterStatus.CANCELLED
    session.execute(sa.update(Delivery).where(
        Delivery.kind == NEWSLETTER, Delivery.ref_id == newsletter.id, Delivery.status.in_(PENDING_DELIVERY),
    ).values(status=DeliveryStatus.CANCELLED, last_error="newsletter cancelled"))
    return newsletter


def start_due(session: Session, now: dt.datetime) -> list[int]:
    """Start every scheduled issue whose time has come: queue its audience. Each start is
    a compare-and-set, so two workers never start the same issue twice."""
    due = session.scalars(sa.select(Newsletter.id).where(
        Newsletter.status == NewsletterStatus.SCHEDULED, Newsletter.send_at <= now)).all()
    started = []
    for newsletter_id in due:
        claimed = session.execute(sa.update(Newsletter).where(
            Newsletter.id == newsletter_id, Newsletter.status == NewsletterStatus.SCHEDULED,
        ).values(status=NewsletterStatus.SENDING, started_at=now)).rowcount
        if claimed:
            queued = enqueue_audience(session, newsletter_id, now=now)
            session.execute(sa.update(Newsletter).where(Newsletter.id == newsletter_id)
                            .values(audience_count=queued))
            started.append(newsletter_id)
    return started


def finish_sent(session: Session, now: dt.datetime) -> list[int]:
    """Mark issues sent once none of their deliveries is waiting or in flight."""
    waiting = sa.exists().where(Delivery.kind == NEWSLETTER, Delivery.ref_id == Newsletter.id,
                                Delivery.status.in_([*PENDING_DELIVERY, DeliveryStatus.SENDING]))
    done = session.scalars(sa.select(Newsletter.id).where(Newsletter.status == NewsletterStatus.SENDING, ~waiting)).all()
    if done:
        session.execute(sa.update(Newsletter).where(Newsletter.id.in_(done))
                        .values(status=NewsletterStatus.SENT, finished_at=now))
    return list(done)


# Who gets it ------------------------------------------------------------------------


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
    if newsletter is None or newsletter.status == NewsletterStatus.CANCELLED:
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
