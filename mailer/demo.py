"""Demo content for a newcomer: the newsletter list, a Spine Health webinar, a draft issue."""
from __future__ import annotations

import datetime as dt
import secrets
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer import users
from mailer.contacts import DEFAULT_LIST, ensure_list
from mailer.models import MailingList, Newsletter, Role, User, Webinar

NEWSLETTER_WORDING = ("Yes, send me the free monthly newsletter by email. I can unsubscribe at any time "
                      "with one click. My address will not be shared.")
DEMO_USER = "admin@example.com"


def ensure_default_list(session: Session) -> MailingList:
    return ensure_list(session, DEFAULT_LIST, "Monthly newsletter", NEWSLETTER_WORDING,
                       description="Exercises, clinic news and the next free webinar, once a month.")


def first_weekday_of_next_month(now: dt.datetime, zone: str, weekday: int, hour: int) -> dt.datetime:
    local = now.astimezone(ZoneInfo(zone))
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    day = dt.date(year, month, 1)
    day += dt.timedelta(days=(weekday - day.weekday()) % 7)
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=ZoneInfo(zone)).astimezone(dt.timezone.utc)


def seed_demo(session: Session, timezone: str, now: dt.datetime) -> str:
    """Idempotent. Returns a fresh password for the demo staff user."""
    newsletter_list = ensure_default_list(session)
    if session.scalar(sa.select(Webinar).where(Webinar.slug == "spine-health")) is None:
        session.add(Webinar(
            slug="spine-health", title="Spine Health: understanding and easing back pain",
            description_md="A free 45-minute webinar with our physiotherapists: why backs hurt, "
                           "five exercises you can do at your desk, and your questions answered live.",
            starts_at=first_weekday_of_next_month(now, timezone, 1, 18), timezone=timezone,
            duration_minutes=45, capacity=100, join_url="https://meet.example.com/spine-health",
            status="published",
        ))
    if session.scalar(sa.select(Newsletter).limit(1)) is None:
        session.add(Newsletter(
            subject="Spine Health monthly: three habits for a happier back",
            preheader="Plus: reserve your spot on our free webinar.",
            body_md="Hello {{ contact.first_name or 'there' }},\n\nThis month: three habits for a happier back...\n",
            status="draft", lists=[newsletter_list],
        ))
    password = secrets.token_urlsafe(12)
    user = session.scalar(sa.select(User).where(User.email == DEMO_USER))
    if user is None:
        users.create_user(session, DEMO_USER, password, Role.OWNER)
    else:
        users.set_password(session, user, password)
    return password
