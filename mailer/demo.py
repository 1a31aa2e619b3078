"""Demo content for a newcomer: the newsletter list, a Spine Health webinar, a draft issue,
a welcome series for new subscribers and a replay mail for those who miss the webinar."""
from __future__ import annotations

import datetime as dt
import secrets
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session

from mailer.campaigns import sequences
from mailer.staff import users
from mailer.audience.contacts import DEFAULT_LIST, ensure_list
from mailer.models import MailingList, Newsletter, Role, Sequence, User, Webinar

NEWSLETTER_WORDING = ("Yes, send me the free monthly newsletter by email. I can unsubscribe at any time "
                      "with one click. My address will not be shared.")
DEMO_USER = "admin@example.com"
WELCOME_SERIES = "Welcome series"
REPLAY_SEQUENCE = "Spine Health replay for those who missed it"
EXERCISE_WINDOW = "weekdays 09:00-11:00"


def ensure_default_list(session: Session) -> MailingList:
    return ensure_list(session, DEFAULT_LIST, "Monthly newsletter", NEWSLETTER_WORDING,
                       description="Exercises, clinic news and the next free webinar, once a month.")


def first_weekday_of_next_month(now: dt.datetime, zone: str, weekday: int, hour: int) -> dt.datetime:
    local = now.astimezone(ZoneInfo(zone))
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    day = dt.date(year, month, 1)
    day += dt.timedelta(days=(weekday - day.weekday()) % 7)
    return dt.datetime(day.year, day.month, day.day, hour, tzinfo=ZoneInfo(zone)).astimezone(dt.timezone.utc)


def seed_demo(session: Session, timezone: str, now: dt.datetime) -> str | None:
    """Idempotent. Returns the password of the demo staff user when it is made now; None
    when the user exists already (a restart keeps the password the owner may have changed)."""
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
    webinar = session.scalar(sa.select(Webinar).where(Webinar.slug == "spine-health"))
    if session.scalar(sa.select(Newsletter).limit(1)) is None:
        session.add(Newsletter(
            subject="Spine Health monthly: three habits for a happier back",
            preheader="Plus: reserve your spot on our free webinar.",
            body_md="Hello {{ contact.first_name or 'there' }},\n\nThis month: three habits for a happier back...\n",
            status="draft", lists=[newsletter_list],
        ))
    seed_sequences(session, newsletter_list, webinar, now)
    seed_audience(session, webinar, now)
    if session.scalar(sa.select(User.id).where(User.email == DEMO_USER)) is not None:
        return None
    password = secrets.token_urlsafe(12)
    users.create_user(session, DEMO_USER, password, Role.OWNER)
    return password


DEMO_SEGMENT = "Had a seat at Spine Health"


def seed_audience(session: Session, webinar: Webinar | None, now: dt.datetime) -> None:
    """A custom field (which clinic a reader goes to) and a segment (everyone who took a
    seat at the demo webinar), each made once, so the demo shows both."""
    from mailer.audience import fields, segments
    from mailer.models import Field, Segment

    if session.scalar(sa.select(Field.id).where(Field.key == "clinic")) is None:
        fields.create_field(session, key="clinic", label="Clinic", type="choice", choices=["North", "South"], now=now)
    if webinar is not None and session.scalar(sa.select(Segment.id).where(Segment.name == DEMO_SEGMENT)) is None:
        segments.create_segment(session, name=DEMO_SEGMENT, now=now, rules={
            "groups": [{"rules": [{"kind": "webinar", "op": "registered", "ref_id": webinar.id}]}]})


def seed_sequences(session: Session, newsletter_list: MailingList, webinar: Webinar, now: dt.datetime) -> None:
    """Two active sequences, each made once (looked up by name): a three-step welcome series
    for new newsletter subscribers, and a replay mail for those who miss the demo webinar."""
    if session.scalar(sa.select(Sequence).where(Sequence.name == WELCOME_SERIES)) is None:
        welcome = sequences.create_sequence(session, name=WELCOME_SERIES, trigger="confirmed",
                                            list_id=newsletter_list.id, trigger_list_id=newsletter_list.id)
        sequences.add_step(
            session, welcome.id, subject="Welcome to Spine Health, {{ contact.first_name or 'friend' }}",
            preheader="What to expect, and your first exercise in a few days.",
            body_md="Hello {{ contact.first_name or 'there' }},\n\nthank you for joining the Spine Health "
                    "newsletter. Once a month you will get exercises, clinic news and the date of our next "
                    "free webinar.\n\nIn a few days we will send you two short exercises to start with.\n")
        sequences.add_step(
            session, welcome.id, subject="Exercise 1: the two-minute desk stretch",
            preheader="Stand up, reach, breathe.", delay=(2, "days"), window=EXERCISE_WINDOW,
            body_md="Hello {{ contact.first_name or 'there' }},\n\n1. Stand up and put your hands on your hips.\n"
                    "2. Lean back gently and hold for five breaths.\n3. Repeat three times, twice a day.\n")
        sequences.add_step(
            session, welcome.id, subject="Exercise 2: walking after lunch",
            preheader="Ten minutes that your back will thank you for.", delay=(3, "days"), window=EXERCISE_WINDOW,
            body_md="Hello {{ contact.first_name or 'there' }},\n\na ten-minute walk after lunch loosens the "
                    "lower back after a morning of sitting. Try it every working day this week.\n")
        sequences.activate(session, welcome.id, now=now)
    if webinar is not None and session.scalar(sa.select(Sequence).where(Sequence.name == REPLAY_SEQUENCE)) is None:
        replay = sequences.create_sequence(session, name=REPLAY_SEQUENCE, trigger="missed",
                                           list_id=newsletter_list.id, trigger_webinar_id=webinar.id)
        sequences.add_step(
            session, replay.id, subject="Sorry we missed you: watch the Spine Health replay",
            preheader="The recording, and the five desk exercises.",
            body_md="Hello {{ contact.first_name or 'there' }},\n\nwe missed you at *" + webinar.title
                    + "*. The recording is on our website, with the five exercises we showed.\n")
        sequences.activate(session, replay.id, now=now)
