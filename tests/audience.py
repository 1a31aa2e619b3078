"""Build a newsletter audience of any size quickly, for delivery tests and benchmarks."""
from __future__ import annotations

import sqlalchemy as sa

from mailer.audience import contacts
from mailer.campaigns import newsletters
from mailer.db import session_scope, utcnow
from mailer.models import Contact, MailingList, Newsletter, Subscription

BODY = """Hello {{ contact.first_name or 'there' }},

This month: **three habits** for a happier back.

1. Stand up every 30 minutes.
2. Walk after lunch.
3. Stretch before bed.

[Read more on our blog](https://clinic.example/blog/habits)
"""


def address(i: int, domain: str = "example.com") -> str:
    return f"reader{i:07d}@{domain}"


def make_audience(mailer, count: int, *, domains: tuple[str, ...] = ("example.com",), start: int = 0,
                  chunk: int = 10_000) -> int:
    """`count` active subscribers of the default list; returns the list id."""
    now = utcnow()
    with session_scope(mailer.sessions) as session:
        list_id = session.scalar(sa.select(MailingList.id).where(MailingList.slug == contacts.DEFAULT_LIST))
    for first in range(start, start + count, chunk):
        numbers = range(first, min(first + chunk, start + count))
        with session_scope(mailer.sessions) as session:
            rows = []
            for i in numbers:
                email = address(i, domains[i % len(domains)])
                rows.append({"email": email, "email_hash": contacts.email_hash(mailer.settings, email),
                             "name": f"Reader{i} Test", "created_at": now})
            session.execute(sa.insert(Contact.__table__), rows)
            ids = session.scalars(sa.select(Contact.id).where(Contact.email.in_([r["email"] for r in rows]))).all()
            session.execute(sa.insert(Subscription.__table__), [
                {"contact_id": cid, "list_id": list_id, "status": "active", "created_at": now, "confirmed_at": now}
                for cid in ids])
    return list_id


def make_newsletter(mailer, *, subject="Spine Health monthly for {{ contact.first_name }}", body=BODY,
                    enqueue=True) -> int:
    with session_scope(mailer.sessions) as session:
        lists = session.scalars(sa.select(MailingList).where(MailingList.slug == contacts.DEFAULT_LIST)).all()
        newsletter = Newsletter(subject=subject, preheader="Three habits", body_md=body, status="sending",
                                lists=list(lists))
        session.add(newsletter)
        session.flush()
        if enqueue:
            newsletters.enqueue_audience(session, newsletter.id, now=utcnow())
        return newsletter.id
