"""One real message of every kind of mail the project sends, made the way users and the
worker make them and received by the test SMTP server: the corpus the spam-score and
DKIM tests check."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from mailer.audience import checkpoints, contacts
from mailer.audience.consent import RequestContext
from mailer.campaigns import newsletters, sequences, webinars
from mailer.db import session_scope, utcnow
from mailer.models import Delivery, Registration, Subscription, Webinar
from mailer.staff import users
from tests.audience import make_audience, make_newsletter
from tests.conftest import signup

# What each sample is: kind of mail (Delivery.kind) and a label for messages.
KINDS = {
    contacts.CONFIRMATION: "confirmation",
    newsletters.NEWSLETTER: "newsletter (with preheader)",
    newsletters.NEWSLETTER_TEST: "newsletter test copy",
    webinars.CONFIRMATION: "webinar confirmation",
    webinars.WAITLISTED: "webinar waitlist",
    webinars.PROMOTED: "webinar promotion",
    webinars.REMINDER: "webinar reminder",
    webinars.UPDATED: "webinar update",
    webinars.CANCELLED: "webinar cancellation",
    webinars.SEAT_CANCELLED: "webinar seat given back",
    webinars.FOLLOW_UP: "webinar follow-up",
    sequences.STEP: "automation step",
    newsletters.RHYTHM_WARNING: "rhythm warning",
    checkpoints.CHECKPOINT_MAIL: "consent checkpoint",
}


def _send(mailer) -> None:
    with mailer.sender() as sender:
        sender.drain()


def every_kind_of_mail(mailer, client, smtp_server) -> dict[str, bytes]:
    """kind → the raw bytes of one message of that kind, as the SMTP server got them."""
    now = utcnow()
    settings = mailer.settings
    signup(client, "new.reader@example.com", name="Nora Reader")  # confirmation
    make_audience(mailer, 1)
    make_newsletter(mailer, body="Hello {{ contact.first_name or 'there' }},\n\nThis month: **three habits** for "
                                 "a happier back. Stand up every 30 minutes, walk after lunch, and stretch "
                                 "before bed.\n\n[Read more on our blog](https://clinic.example/blog/habits)\n")
    _send(mailer)
    with session_scope(mailer.sessions) as session:
        issue = session.scalar(sa.select(Delivery.ref_id).where(Delivery.kind == newsletters.NEWSLETTER))
        newsletters.send_test(session, settings, issue, ["editor.copy@example.com"], now=now)
        for role in ("owner", "editor"):
            users.create_user(session, f"{role}@clinic.example", "correct horse battery staple", role)
        soon = now + dt.timedelta(hours=2)
        newsletters.create_rhythm(session, name="Monthly", day="*", hour=soon.hour, minute=soon.minute,
                                  timezone="UTC")
        newsletters.warn_unready(session, settings, now)
        checkpoints.queue_checkpoint_mail(session, settings, now)
        # A webinar with one seat: a confirmation, a waitlist place, then a promotion and a
        # seat given back; a reminder, an update, a follow-up; another webinar cancelled.
        for slug, capacity in (("spine-health", 1), ("posture-basics", None)):
            webinar = webinars.save_webinar(session, slug=slug, title=slug.replace("-", " ").title(),
                                            starts_local=now + dt.timedelta(days=2), timezone="UTC",
                                            join_url="https://meet.example/spine", capacity=capacity,
                                            replay_url="https://video.example/replay", reminder_offsets="60",
                                            now=now)
            webinars.publish(session, webinar.id)
        for email, name in (("first.seat@example.com", "Fay First"), ("second.seat@example.com", "Sam Second")):
            webinars.register(session, settings, "spine-health", email=email, name=name,
                              context=RequestContext(), now=now - dt.timedelta(hours=1))
        webinars.register(session, settings, "posture-basics", email="posture@example.com", name="Pat Posture",
                          context=RequestContext(), now=now - dt.timedelta(hours=1))
        list_id, reader = session.execute(sa.select(Subscription.list_id, Subscription.contact_id).where(
            Subscription.status == "active").order_by(Subscription.contact_id).limit(1)).one()
        sequence = sequences.create_sequence(session, name="Welcome", trigger="manual", list_id=list_id)
        sequences.add_step(session, sequence.id, subject="Welcome to the clinic newsletter",
                           body_md="Hello {{ contact.first_name }},\n\nThank you for reading. Each month we "
                                   "share one exercise and one habit for a healthier back.")
        sequences.activate(session, sequence.id, now=now)
        sequences.enrol(session, sequence.id, reader, now)
    mailer.queue_due(now)
    _send(mailer)
    with session_scope(mailer.sessions) as session:
        first = session.scalar(sa.select(Registration).join(Webinar).where(
            Webinar.slug == "spine-health", Registration.status == "confirmed"))
        webinars.cancel_registration(session, first.token, now=now)  # seat given back; second promoted
        spine = session.scalar(sa.select(Webinar).where(Webinar.slug == "spine-health"))
        webinars.reschedule(session, spine, now + dt.timedelta(minutes=30), now=now)  # update; reminder due
        # ... to whoever had a seat before its time: the promoted registrant, as if promoted earlier.
        session.execute(sa.update(Registration).where(Registration.status == "confirmed").values(
            promoted_at=now - dt.timedelta(hours=1)))
        posture = session.scalar(sa.select(Webinar).where(Webinar.slug == "posture-basics"))
        webinars.cancel_webinar(session, posture.id, now=now)
    mailer.queue_due(now)
    _send(mailer)
    with session_scope(mailer.sessions) as session:
        spine = session.scalar(sa.select(Webinar).where(Webinar.slug == "spine-health"))
        spine.starts_at, spine.reminder_offsets = now - dt.timedelta(hours=3), ""
    mailer.queue_due(now)  # the follow-up with the replay
    _send(mailer)
    with mailer.read_sessions() as session:
        sent = dict(session.execute(sa.select(Delivery.message_id, Delivery.kind).where(Delivery.status == "sent")).all())
    samples: dict[str, bytes] = {}
    for received in smtp_server.received:
        kind = sent.get(received.message["Message-ID"])
        if kind is not None:
            samples.setdefault(kind, received.data)
    missing = set(KINDS) - set(samples)
    assert not missing, f"no sample of {sorted(missing)}; got {sorted(samples)}"
    return samples
