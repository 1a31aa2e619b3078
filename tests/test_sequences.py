"""Sequences (automations) end to end: a signup confirms and gets the welcome series, each
step at its due time inside the reader's send window in their own zone, through a real
SMTP server; exits, edits, pause, webinar triggers, condition skips, bulk materialising."""
from __future__ import annotations

import datetime as dt
import threading
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
import time_machine

from mailer import privacy
from mailer.audience import contacts
from mailer.audience.consent import RequestContext
from mailer.campaigns import sequences, webinars
from mailer.db import session_scope
from mailer.errors import InvalidInput
from mailer.models import Contact, Delivery, Enrolment, MailingList, SequenceSkip, Subscription, Suppression
from tests.audience import make_audience
from tests.conftest import links_in, signup

UTC = dt.timezone.utc
ACTIVATED = dt.datetime(2027, 3, 1, 9, 0, tzinfo=UTC)  # a Monday
ENROL = dt.datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
WELCOME_BODY = ("Hello {{ contact.first_name }},\n\nthank you for joining **Spine Health**.\n\n"
                '<script>alert(1)</script><p onclick="x()">Your first exercise</p>')


def at(when):
    return lambda: when


def mails_to(smtp_server, address):
    return [r.message for r in smtp_server.received if r.rcpt_tos == [address]]


def subjects_to(smtp_server, address):
    return [m["Subject"] for m in mails_to(smtp_server, address)]


def default_list(mailer) -> int:
    with mailer.read_sessions() as session:
        return session.scalar(sa.select(MailingList.id).where(MailingList.slug == contacts.DEFAULT_LIST))


@pytest.fixture
def welcome(mailer):
    """A welcome series on the newsletter list: at once, 3 days later on a weekday
    09:00–11:00 in the reader's zone, 4 days after that."""
    list_id = default_list(mailer)
    with session_scope(mailer.sessions) as session:
        sequence = sequences.create_sequence(session, name="Welcome", trigger="confirmed", trigger_list_id=list_id,
                                             list_id=list_id)
        steps = [
            sequences.add_step(session, sequence.id, subject="Welcome, {{ contact.first_name }}", body_md=WELCOME_BODY,
                               preheader="Your first exercise"),
            sequences.add_step(session, sequence.id, subject="Your desk posture", body_md="Sit tall.",
                               delay=(3, "days"), window="weekdays 09:00–11:00"),
            sequences.add_step(session, sequence.id, subject="A week in", body_md="How is it going?",
                               delay=(4, "days")),
        ]
        sequences.activate(session, sequence.id, now=ACTIVATED)
        return sequence.id, [s.id for s in steps]


def join(client, mailer, smtp_server, email, name, zone, when=ENROL):
    """Sign up on the form and confirm from the received mail, at `when`."""
    with time_machine.travel(when, tick=False):  # the link's signature carries its time
        signup(client, email=email, name=name, timezone=zone)
        mailer.drain(clock=at(when))
        confirmation = [m for m in mails_to(smtp_server, email) if m["Subject"].startswith("Please confirm")][-1]
        link = [l for l in links_in(confirmation.get_body(("plain",)).get_content()) if "/confirm/" in l][0]
        assert "You are now subscribed" in client.get(link.removeprefix("https://news.example.org")).text


def subscriber(mailer, email, name="Reader", zone=None, list_slug=contacts.DEFAULT_LIST) -> int:
    """An active subscriber of a list (as if confirmed long ago)."""
    with session_scope(mailer.sessions) as session:
        contact = contacts.get_or_create_contact(session, mailer.settings, email, name=name, timezone=zone,
                                                 now=ACTIVATED - dt.timedelta(days=30))
        list_id = session.scalar(sa.select(MailingList.id).where(MailingList.slug == list_slug))
        session.add(Subscription(contact_id=contact.id, list_id=list_id, status="active",
                                 confirmed_at=ACTIVATED - dt.timedelta(days=30)))
        return contact.id


def manual_sequence(mailer, *steps, name="Course") -> tuple[int, list[int]]:
    """An active sequence staff enrol people in; each step (subject, delay in minutes, extra)."""
    list_id = default_list(mailer)
    with session_scope(mailer.sessions) as session:
        sequence = sequences.create_sequence(session, name=name, trigger="manual", list_id=list_id)
        ids = [sequences.add_step(session, sequence.id, subject=subject, body_md=f"{subject} for "
                                  "{{ contact.first_name }}", delay=delay, **extra).id
               for subject, delay, extra in steps]
        sequences.activate(session, sequence.id, now=ACTIVATED)
        return sequence.id, ids


def run(mailer, when) -> int:
    with session_scope(mailer.sessions) as session:
        return sequences.run(session, mailer.settings, when)


def queued_at(db, step_id) -> dict[str, dt.datetime]:
    """When each reader's copy of a step was queued, by address."""
    return dict(db.execute(sa.select(Contact.email, Delivery.created_at)
                           .join(Contact, Contact.id == Delivery.contact_id)
                           .where(Delivery.kind == "sequence_step", Delivery.ref_id == step_id)))


DAY = 24 * 60


def test_welcome_series_arrives_step_by_step_in_each_readers_window(client, mailer, smtp_server, welcome, db):
    _, (first, second, third) = welcome
    join(client, mailer, smtp_server, "sam@example.com", "Sam Sydney", "Australia/Sydney")
    join(client, mailer, smtp_server, "lee@example.com", "Lee Angeles", "America/Los_Angeles")
    mailer.drain(clock=at(ENROL + dt.timedelta(seconds=4)))  # the worker's next tick

    welcome_mail = mails_to(smtp_server, "sam@example.com")[-1]
    assert welcome_mail["Subject"] == "Welcome, Sam"
    unsubscribe = welcome_mail["List-Unsubscribe"]
    assert unsubscribe.startswith("<https://news.example.org/unsubscribe/") and "mailto:" in unsubscribe
    assert welcome_mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = welcome_mail.get_body(("plain",)).get_content()
    html = welcome_mail.get_body(("html",)).get_content()
    assert text.startswith("Hello Sam,") and "Unsubscribe: https://news.example.org/unsubscribe/" in text
    assert "Hello Sam," in html and "Spine Health</strong>" in html and "Your first exercise" in html
    assert "<script" not in html and "onclick" not in html
    # The footer says what unsubscribing does: it leaves the list, and with it the series.
    note = "You get this series because you subscribed to Monthly newsletter. Unsubscribing leaves Monthly newsletter, and with it this series."
    assert note in text and note in " ".join(html.split())
    assert subjects_to(smtp_server, "lee@example.com")[-1] == "Welcome, Lee"

    # Three days later it is due, but only inside a weekday 09:00–11:00 where each reader is.
    thursday = ENROL + dt.timedelta(days=3)  # Thu 12:00 UTC: 23:00 in Sydney, 04:00 in Los Angeles
    for when, expected in ((thursday, set()),
                           (dt.datetime(2027, 3, 4, 16, 55, tzinfo=UTC), set()),
                           (dt.datetime(2027, 3, 4, 17, 0, tzinfo=UTC), {"lee@example.com"}),
                           (dt.datetime(2027, 3, 4, 21, 55, tzinfo=UTC), {"lee@example.com"}),
                           (dt.datetime(2027, 3, 4, 22, 0, tzinfo=UTC), {"lee@example.com", "sam@example.com"})):
        mailer.drain(clock=at(when))
        got = {a for a in ("lee@example.com", "sam@example.com") if "Your desk posture" in subjects_to(smtp_server, a)}
        assert got == expected, when
    local = {address: when.astimezone(ZoneInfo(zone)) for (address, when), zone in zip(
        sorted(queued_at(db, second).items()), ("America/Los_Angeles", "Australia/Sydney"))}
    assert {address: (t.strftime("%a"), t.hour, t.minute) for address, t in local.items()} == {
        "lee@example.com": ("Thu", 9, 0), "sam@example.com": ("Fri", 9, 0)}

    # Step 3 comes 4 days after each reader's step 2, with no window: at 17:00 and 22:00 UTC.
    mailer.drain(clock=at(dt.datetime(2027, 3, 8, 16, 59, tzinfo=UTC)))
    assert "A week in" not in subjects_to(smtp_server, "lee@example.com")
    mailer.drain(clock=at(dt.datetime(2027, 3, 8, 17, 0, tzinfo=UTC)))
    mailer.drain(clock=at(dt.datetime(2027, 3, 8, 22, 0, tzinfo=UTC)))
    for address, first_name in (("lee@example.com", "Lee"), ("sam@example.com", "Sam")):
        assert subjects_to(smtp_server, address) == ["Please confirm your subscription to Monthly newsletter",
                                                     f"Welcome, {first_name}", "Your desk posture", "A week in"]
    assert db.scalars(sa.select(Enrolment.status)) == ["completed", "completed"]
    mailer.drain(clock=at(dt.datetime(2027, 4, 8, 22, 0, tzinfo=UTC)))
    assert len(smtp_server.received) == 8  # nothing after the last step


def test_window_follows_the_readers_clock_across_the_end_of_summer_time(mailer, smtp_server, db):
    """London leaves BST on 31 October 2027: 09:00 is 08:00 UTC before and 09:00 UTC after.
    A reader without a zone has the organisation's (Europe/London here)."""
    sequence_id, (step,) = manual_sequence(mailer, ("Posture check", 3 * DAY, {"window": "weekdays 09:00-11:00"}))
    early = subscriber(mailer, "early@example.com", zone="Europe/London")
    late = subscriber(mailer, "late@example.com", zone="Europe/London")
    nozone = subscriber(mailer, "nozone@example.com")
    with session_scope(mailer.sessions) as session:
        sequences.enrol(session, sequence_id, early, dt.datetime(2027, 10, 25, 6, 0, tzinfo=UTC))  # due Thu 28th
        for contact_id in (late, nozone):  # due Saturday 30th: the window opens Monday 1 November
            sequences.enrol(session, sequence_id, contact_id, dt.datetime(2027, 10, 27, 12, 0, tzinfo=UTC))
    for when, expected in ((dt.datetime(2027, 10, 28, 7, 59, tzinfo=UTC), set()),
                           (dt.datetime(2027, 10, 28, 8, 0, tzinfo=UTC), {"early@example.com"}),
                           (dt.datetime(2027, 11, 1, 8, 0, tzinfo=UTC), {"early@example.com"}),
                           (dt.datetime(2027, 11, 1, 9, 0, tzinfo=UTC),
                            {"early@example.com", "late@example.com", "nozone@example.com"})):
        mailer.drain(clock=at(when))
        assert {r.rcpt_tos[0] for r in smtp_server.received} == expected, when
    for when in queued_at(db, step).values():
        assert when.astimezone(ZoneInfo("Europe/London")).strftime("%H:%M") == "09:00"


def test_unsubscribing_after_step_one_leaves_the_list_and_stops_the_sequence(client, mailer, smtp_server,
                                                                            welcome, db):
    join(client, mailer, smtp_server, "ann@example.com", "Ann", "Europe/London")
    mailer.drain(clock=at(ENROL))
    step_one = mails_to(smtp_server, "ann@example.com")[-1]
    url = step_one["List-Unsubscribe"].split(",")[0].strip(" <>")
    answer = client.post(url.removeprefix("https://news.example.org"), data={"List-Unsubscribe": "One-Click"})
    assert "You will receive no more email from Monthly newsletter." in answer.text
    assert db.scalar(sa.select(Subscription.status)) == "unsubscribed"  # the one-click target is the list
    for when in (ENROL + dt.timedelta(days=3, hours=2), dt.datetime(2027, 3, 5, 9, 30, tzinfo=UTC),
                 dt.datetime(2027, 3, 9, 10, 0, tzinfo=UTC), dt.datetime(2027, 4, 1, 10, 0, tzinfo=UTC)):
        mailer.drain(clock=at(when))  # step 2's window (09:00–11:00 in London) opens on Friday 5 March
    assert subjects_to(smtp_server, "ann@example.com")[1:] == ["Welcome, Ann"]
    assert db.execute(sa.select(Enrolment.status, Enrolment.exited_reason)) == [("exited", "unsubscribed")]


def test_erasure_removes_the_enrolment_and_nothing_more_is_sent(client, mailer, smtp_server, welcome, db):
    join(client, mailer, smtp_server, "ann@example.com", "Ann", "Europe/London")
    mailer.drain(clock=at(ENROL))
    assert len(mails_to(smtp_server, "ann@example.com")) == 2
    contact_id = db.scalar(sa.select(Contact.id).where(Contact.email == "ann@example.com"))
    with session_scope(mailer.sessions) as session:
        privacy.erase_contact(session, mailer.settings, contact_id, now=ENROL + dt.timedelta(hours=1))
    assert db.scalar(sa.select(sa.func.count()).select_from(Enrolment)) == 0
    for days in (3, 4, 8):
        mailer.drain(clock=at(ENROL + dt.timedelta(days=days, hours=2)))
    assert len(smtp_server.received) == 2


def test_a_hard_bounce_on_step_two_suppresses_and_ends_the_sequence(client, mailer, smtp_server, welcome, db):
    join(client, mailer, smtp_server, "gone@example.com", "Gus", "Europe/London")
    mailer.drain(clock=at(ENROL))
    assert subjects_to(smtp_server, "gone@example.com")[-1] == "Welcome, Gus"
    smtp_server.handler.rcpt_reply = lambda address: "550 5.1.1 mailbox unavailable" if "gone@" in address else None
    friday_nine = dt.datetime(2027, 3, 5, 9, 0, tzinfo=UTC)  # due Thursday 12:00; the window opens Friday 09:00 GMT
    mailer.drain(clock=at(friday_nine))
    assert db.scalar(sa.select(Delivery.status).where(Delivery.ref_id == welcome[1][1],
                                                      Delivery.kind == "sequence_step")) == "failed"
    assert db.scalar(sa.select(Suppression.reason)) == "hard_bounce"
    smtp_server.handler.rcpt_reply = lambda address: None  # even if the mailbox came back
    for days in (4, 5, 10):
        mailer.drain(clock=at(friday_nine + dt.timedelta(days=days)))
    assert subjects_to(smtp_server, "gone@example.com")[-1] == "Welcome, Gus"
    assert db.scalar(sa.select(sa.func.count()).select_from(Delivery).where(Delivery.kind == "sequence_step")) == 2
    assert db.execute(sa.select(Enrolment.status, Enrolment.exited_reason)) == [("exited", "suppressed")]


def test_pause_edit_delete_and_add_steps_never_send_twice(mailer, smtp_server, db):
    sequence_id, (one, two, three) = manual_sequence(mailer, ("One", 0, {}), ("Two", DAY, {}), ("Three", DAY, {}))
    ann, bob = subscriber(mailer, "ann@example.com", "Ann"), subscriber(mailer, "bob@example.com", "Bob")
    with session_scope(mailer.sessions) as session:
        assert sequences.enrol(session, sequence_id, ann, ENROL)
        assert not sequences.enrol(session, sequence_id, ann, ENROL)  # once per sequence
    mailer.drain(clock=at(ENROL))
    assert subjects_to(smtp_server, "ann@example.com") == ["One"]

    # Paused: step two comes due and waits; resumed, it goes once.
    with session_scope(mailer.sessions) as session:
        sequences.pause(session, sequence_id)
    mailer.drain(clock=at(ENROL + dt.timedelta(days=1, minutes=1)))
    assert subjects_to(smtp_server, "ann@example.com") == ["One"]
    with session_scope(mailer.sessions) as session:
        sequences.resume(session, sequence_id)
    for _ in range(2):
        mailer.drain(clock=at(ENROL + dt.timedelta(days=1, minutes=2)))
    assert subjects_to(smtp_server, "ann@example.com") == ["One", "Two"]

    # Bob starts later; step three's text changes before anyone has it.
    bob_starts = ENROL + dt.timedelta(days=1, minutes=30)
    with session_scope(mailer.sessions) as session:
        sequences.enrol(session, sequence_id, bob, bob_starts)
        sequences.update_step(session, three, subject="Three, revised", body_md="New text", delay=DAY)
    mailer.drain(clock=at(bob_starts))
    assert subjects_to(smtp_server, "bob@example.com") == ["One"]

    # Queued, then paused before it leaves: held, then sent once on resume.
    due_three = ENROL + dt.timedelta(days=2, minutes=3)
    assert run(mailer, due_three) == 1
    with session_scope(mailer.sessions) as session:
        sequences.pause(session, sequence_id)
    mailer.drain(clock=at(due_three))
    assert db.scalar(sa.select(Delivery.status).where(Delivery.ref_id == three)) == "held"
    with session_scope(mailer.sessions) as session:
        sequences.resume(session, sequence_id)
        # Step two is deleted after Ann had it; Bob, not there yet, goes from one to three.
        sequences.delete_step(session, two, now=due_three)
        four = sequences.add_step(session, sequence_id, subject="Four", body_md="Last", delay=DAY).id
    for _ in range(2):
        mailer.drain(clock=at(due_three))
    assert subjects_to(smtp_server, "ann@example.com") == ["One", "Two", "Three, revised"]
    # Bob's step three is a day after his step one (he never gets two); Ann completes, then gets four.
    for when in (bob_starts + dt.timedelta(days=1), ENROL + dt.timedelta(days=3, minutes=3),
                 ENROL + dt.timedelta(days=4, minutes=3), ENROL + dt.timedelta(days=9)):
        mailer.drain(clock=at(when))
    assert subjects_to(smtp_server, "ann@example.com") == ["One", "Two", "Three, revised", "Four"]
    assert subjects_to(smtp_server, "bob@example.com") == ["One", "Three, revised", "Four"]
    enrolment = dict(db.execute(sa.select(Enrolment.contact_id, Enrolment.id)))
    keys = db.scalars(sa.select(Delivery.dedupe_key).where(Delivery.kind == "sequence_step"))
    assert sorted(keys) == sorted([f"seq:{enrolment[ann]}:{s}" for s in (one, two, three, four)]
                                  + [f"seq:{enrolment[bob]}:{s}" for s in (one, three, four)])
    with mailer.read_sessions() as session:
        report = {r["subject"]: (r["deleted"], r["deliveries"]) for r in sequences.report(session, sequence_id)}
    assert report == {"One": (False, {"sent": 2}), "Two": (True, {"sent": 1}),
                      "Three, revised": (False, {"sent": 2}), "Four": (False, {"sent": 2})}


def test_re_enrolment_is_explicit_and_starts_again(mailer, smtp_server, db):
    sequence_id, _ = manual_sequence(mailer, ("One", 0, {}))
    ann = subscriber(mailer, "ann@example.com", "Ann")
    with session_scope(mailer.sessions) as session:
        sequences.enrol(session, sequence_id, ann, ENROL)
    mailer.drain(clock=at(ENROL))
    with session_scope(mailer.sessions) as session:
        assert not sequences.enrol(session, sequence_id, ann, ENROL + dt.timedelta(days=1))
    mailer.drain(clock=at(ENROL + dt.timedelta(days=1)))
    assert subjects_to(smtp_server, "ann@example.com") == ["One"]
    with session_scope(mailer.sessions) as session:
        assert sequences.re_enrol(session, sequence_id, ann, ENROL + dt.timedelta(days=2))
    mailer.drain(clock=at(ENROL + dt.timedelta(days=2)))
    assert subjects_to(smtp_server, "ann@example.com") == ["One", "One"]
    outsider = subscriber(mailer, "other@example.com", list_slug=contacts.DEFAULT_LIST)
    db.write(sa.update(Subscription).where(Subscription.contact_id == outsider).values(status="unsubscribed"))
    with session_scope(mailer.sessions) as session, pytest.raises(InvalidInput):
        sequences.enrol(session, sequence_id, outsider, ENROL)


def test_materialising_twice_or_from_two_workers_queues_each_step_once(mailer, smtp_server, db):
    sequence_id, (one, two) = manual_sequence(mailer, ("One", 0, {}), ("Two", 60, {}))
    make_audience(mailer, 50)
    ids = db.scalars(sa.select(Contact.id))
    with session_scope(mailer.sessions) as session:
        for contact_id in ids:
            sequences.enrol(session, sequence_id, contact_id, ENROL)
    with session_scope(mailer.sessions) as session:
        assert sequences.materialise_due(session, mailer.settings, ENROL) == 50
        assert sequences.materialise_due(session, mailer.settings, ENROL) == 0
    barrier = threading.Barrier(2)
    results = []

    def worker():
        barrier.wait()
        results.append(run(mailer, ENROL + dt.timedelta(hours=1)))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == [0, 50]
    counts = dict(db.execute(sa.select(Delivery.ref_id, sa.func.count()).where(Delivery.kind == "sequence_step")
                             .group_by(Delivery.ref_id)))
    assert counts == {one: 50, two: 50}
    assert mailer.drain(clock=at(ENROL + dt.timedelta(hours=1))).sent == 100
    assert len(smtp_server.received) == 100 and len({r.rcpt_tos[0] for r in smtp_server.received}) == 50


def test_attended_and_missed_webinar_sequences_each_reach_their_own(mailer, smtp_server, db):
    before = dt.datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    with session_scope(mailer.sessions) as session:
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health",
                                  starts_local=dt.datetime(2027, 3, 25, 18, 0), timezone="Europe/London",
                                  duration_minutes=45, join_url="https://meet.example.com/room", now=before)
        webinars.publish(session, w.id)
        webinar_id = w.id
    list_id = default_list(mailer)
    for email, name in (("ann@example.com", "Ann"), ("bob@example.com", "Bob")):
        subscriber(mailer, email, name)
        with session_scope(mailer.sessions) as session:
            webinars.register(session, mailer.settings, "spine-health", email=email, name=name,
                              context=RequestContext(), now=before)
    with session_scope(mailer.sessions) as session:
        for trigger, subject in (("attended", "Thanks for coming, {{ contact.first_name }}"),
                                 ("missed", "Sorry we missed you, {{ contact.first_name }}")):
            sequence = sequences.create_sequence(session, name=trigger, trigger=trigger,
                                                 trigger_webinar_id=webinar_id, list_id=list_id)
            sequences.add_step(session, sequence.id, subject=subject, body_md="The replay is coming.")
            sequences.activate(session, sequence.id, now=before)
        webinars.mark_attendance(session, webinar_id, ["ann@example.com"])
    ends = dt.datetime(2027, 3, 25, 18, 45, tzinfo=UTC)
    mailer.drain(clock=at(ends - dt.timedelta(minutes=1)))  # before the end: neither
    mailer.drain(clock=at(ends + dt.timedelta(hours=1)))  # attended: at once; missed: after a day
    mailer.drain(clock=at(ends + dt.timedelta(hours=25)))
    mailer.drain(clock=at(ends + dt.timedelta(hours=26)))
    ours = lambda address: [s for s in subjects_to(smtp_server, address) if "you" in s or "coming" in s]  # noqa: E731
    assert ours("ann@example.com") == ["Thanks for coming, Ann"]
    assert ours("bob@example.com") == ["Sorry we missed you, Bob"]
    sent_at = dict(db.execute(sa.select(Delivery.ref_id, Delivery.sent_at).where(Delivery.kind == "sequence_step")))
    assert sorted(sent_at.values()) == [ends + dt.timedelta(hours=1), ends + dt.timedelta(hours=25)]


def test_a_step_whose_condition_fails_is_skipped_recorded_and_the_sequence_goes_on(mailer, smtp_server, db):
    with session_scope(mailer.sessions) as session:
        other = contacts.ensure_list(session, "clinic-news", "Clinic news", "Yes, send me clinic news.").id
    sequence_id, (one, two, three) = manual_sequence(
        mailer, ("One", 0, {}), ("Clinic only", 60, {"condition": "on_list", "condition_ref_id": other}),
        ("Three", 60, {}))
    ann = subscriber(mailer, "ann@example.com", "Ann")
    subscriber(mailer, "ann@example.com", "Ann", list_slug="clinic-news")
    bob = subscriber(mailer, "bob@example.com", "Bob")
    with session_scope(mailer.sessions) as session:
        for contact_id in (ann, bob):
            sequences.enrol(session, sequence_id, contact_id, ENROL)
    for hours in (0, 1, 2):
        mailer.drain(clock=at(ENROL + dt.timedelta(hours=hours)))
    assert subjects_to(smtp_server, "ann@example.com") == ["One", "Clinic only", "Three"]
    assert subjects_to(smtp_server, "bob@example.com") == ["One", "Three"]
    bob_enrolment = db.scalar(sa.select(Enrolment.id).where(Enrolment.contact_id == bob))
    assert db.execute(sa.select(SequenceSkip.enrolment_id, SequenceSkip.step_id, SequenceSkip.reason)) == [
        (bob_enrolment, two, "condition: on_list")]
    with mailer.read_sessions() as session:
        skipped = {r["step_id"]: r["skipped"] for r in sequences.report(session, sequence_id)}
    assert skipped == {one: 0, two: 1, three: 0}


def test_materialising_is_bulk_whatever_the_number_of_enrolments(mailer, db):
    """The statements one run issues do not grow with the enrolments it advances."""
    make_audience(mailer, 2020)
    zones = ("Europe/London", "Australia/Sydney", "America/Los_Angeles")
    ids = db.scalars(sa.select(Contact.id).order_by(Contact.id))
    for n, zone in enumerate(zones):
        db.write(sa.update(Contact).where(Contact.id % 3 == n).values(timezone=zone))
    list_id = default_list(mailer)

    def sequence_for(contact_ids, name):
        with session_scope(mailer.sessions) as session:
            sequence = sequences.create_sequence(session, name=name, trigger="manual", list_id=list_id)
            sequences.add_step(session, sequence.id, subject="One", body_md="x", window="daily 00:00-24:00")
            sequences.add_step(session, sequence.id, subject="Two", body_md="x", condition="on_list",
                               condition_ref_id=list_id)
            session.execute(sa.insert(Enrolment).from_select(
                ["sequence_id", "contact_id", "enrolled_at", "last_position", "last_at", "status"],
                sa.select(sa.literal(sequence.id), Contact.id, sa.literal(ENROL, Enrolment.enrolled_at.type),
                          sa.literal(0), sa.literal(ENROL, Enrolment.last_at.type), sa.literal("active"))
                .where(Contact.id.in_(contact_ids))))
            return sequence.id

    small, large = sequence_for(ids[:20], "small"), sequence_for(ids[20:], "large")
    statements = []

    def count(*_args):
        statements.append(1)

    sa.event.listen(mailer.engine, "before_cursor_execute", count)
    try:
        measured = {}
        for active, idle in ((small, large), (large, small)):
            with session_scope(mailer.sessions) as session:
                sequences.archive(session, idle) if active == large else None
                sequences.activate(session, active, now=ENROL)
            statements.clear()
            with session_scope(mailer.sessions) as session:
                queued = sequences.materialise_due(session, mailer.settings, ENROL)
            measured[active] = (queued, len(statements))
    finally:
        sa.event.remove(mailer.engine, "before_cursor_execute", count)
    assert measured[small][0] == 40 and measured[large][0] == 4000
    assert measured[small][1] == measured[large][1] <= 12
    print(f"\nstatements per run: {measured[small][1]} for 20 enrolments, {measured[large][1]} for 2,000")


@pytest.mark.parametrize("text, stored, back", [
    ("weekdays 09:00–11:00", ("mon,tue,wed,thu,fri", 540, 660), "weekdays 09:00-11:00"),
    ("Sat,Sun 10:30-12:00", ("sat,sun", 630, 720), "weekends 10:30-12:00"),
    ("mon,wed 18:00-20:00", ("mon,wed", 1080, 1200), "mon,wed 18:00-20:00"),
    ("09:00-17:00", ("", 540, 1020), "daily 09:00-17:00"),
    ("", ("", None, None), ""),
])
def test_windows_are_read_as_staff_write_them(text, stored, back):
    from mailer.models import SequenceStep

    assert sequences.parse_window(text) == stored
    step = SequenceStep(window_days=stored[0], window_start=stored[1], window_end=stored[2])
    assert sequences.window_text(step) == back


@pytest.mark.parametrize("text", ["weekdays 11:00-09:00", "someday 09:00-10:00", "weekdays 25:00-26:00", "9-11"])
def test_a_window_that_cannot_be_is_refused(text):
    with pytest.raises(InvalidInput):
        sequences.parse_window(text)


def test_window_open_is_wall_clock_time_in_the_zone():
    from mailer.models import SequenceStep

    step = SequenceStep(window_days="mon,tue,wed,thu,fri", window_start=540, window_end=660)
    # 08:30 UTC: 09:30 in London in summer (BST), 08:30 in winter (GMT).
    assert sequences.window_open(step, "Europe/London", dt.datetime(2027, 10, 29, 8, 30, tzinfo=UTC))
    assert not sequences.window_open(step, "Europe/London", dt.datetime(2027, 11, 1, 8, 30, tzinfo=UTC))
    # Friday 22:30 UTC is Saturday 09:30 in Sydney: not a weekday there.
    assert not sequences.window_open(step, "Australia/Sydney", dt.datetime(2027, 3, 5, 22, 30, tzinfo=UTC))
    assert sequences.window_open(step, "Australia/Sydney", dt.datetime(2027, 3, 4, 22, 30, tzinfo=UTC))
    assert not sequences.window_open(step, "Australia/Sydney", dt.datetime(2027, 3, 5, 0, 0, tzinfo=UTC))  # 11:00


def test_steps_are_checked_like_newsletters_when_saved(mailer):
    sequence_id, _ = manual_sequence(mailer, ("One", 0, {}))
    with session_scope(mailer.sessions) as session:
        for bad, field in (({"body_md": "Hi {{ contact.nickname }}"}, "body"),
                           ({"body_md": "{{ '<b>x</b>' | safe }}"}, "body"),
                           ({"subject": "  "}, "subject"),
                           ({"layout": "nope"}, "layout"),
                           ({"delay": (2, "weeks")}, "delay"),
                           ({"condition": "on_list", "condition_ref_id": 999}, "condition_ref_id")):
            with pytest.raises(InvalidInput) as refused:
                sequences.add_step(session, sequence_id, **{"subject": "Fine", "body_md": "Fine", **bad})
            assert refused.value.field == field


def test_a_seat_taken_after_activation_enrols_and_so_does_one_given_from_the_waitlist(mailer, smtp_server, db):
    before = dt.datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    with session_scope(mailer.sessions) as session:
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health", capacity=1,
                                  starts_local=dt.datetime(2027, 3, 25, 18, 0), timezone="Europe/London",
                                  join_url="https://meet.example.com/room", now=before)
        webinars.publish(session, w.id)
    for email, name in (("early@example.com", "Eve"), ("ann@example.com", "Ann"), ("bob@example.com", "Bob")):
        subscriber(mailer, email, name)

    def register(email, when):
        with session_scope(mailer.sessions) as session:
            webinars.register(session, mailer.settings, "spine-health", email=email, context=RequestContext(),
                              now=when)

    register("early@example.com", before)  # before the sequence started: not enrolled
    with session_scope(mailer.sessions) as session:
        sequence = sequences.create_sequence(session, name="Prepare", trigger="registered",
                                             list_id=default_list(mailer))
        sequences.add_step(session, sequence.id, subject="Before the webinar, {{ contact.first_name }}",
                           body_md="Three things to prepare.")
        sequences.activate(session, sequence.id, now=before + dt.timedelta(hours=1))
        # The one seat is Eve's: she gives it back, to Ann (waitlisted), and Bob waits for the next.
        early = db.scalar(sa.select(webinars.Registration.token))
    register("ann@example.com", before + dt.timedelta(hours=2))
    with session_scope(mailer.sessions) as session:
        webinars.cancel_registration(session, early, now=before + dt.timedelta(hours=2))
    register("bob@example.com", before + dt.timedelta(hours=2, minutes=1))  # waitlisted
    mailer.drain(clock=at(before + dt.timedelta(hours=3)))
    ours = lambda address: [s for s in subjects_to(smtp_server, address) if s.startswith("Before")]  # noqa: E731
    assert (ours("early@example.com"), ours("ann@example.com"), ours("bob@example.com")) == (
        [], ["Before the webinar, Ann"], [])
    with session_scope(mailer.sessions) as session:
        ann_token = session.scalar(sa.select(webinars.Registration.token).join(Contact).where(
            Contact.email == "ann@example.com"))
        webinars.cancel_registration(session, ann_token, now=before + dt.timedelta(days=2))  # Bob gets the seat
    mailer.drain(clock=at(before + dt.timedelta(days=2)))
    assert ours("bob@example.com") == ["Before the webinar, Bob"]
    assert ours("early@example.com") == []


def import_into(mailer, list_slug, when, *addresses):
    """A CSV import of these addresses into a list, at `when`, as `python -m mailer import` does it."""
    from mailer.audience import imports

    lines = ["email,name\n", *(f"{a},{a.split('@')[0].title()}\n" for a in addresses)]
    return imports.import_csv(mailer.sessions, mailer.settings, lines, list_slug=list_slug,
                              consent_note="Paper form at the clinic desk, 2026", source="import:test.csv", now=when)


def test_an_import_into_the_list_enrols_only_in_a_sequence_that_chose_the_imported_trigger(client, mailer,
                                                                                          smtp_server, db):
    from mailer.delivery import suppression

    list_id = default_list(mailer)
    with session_scope(mailer.sessions) as session:
        contacts.ensure_list(session, "clinic-news", "Clinic news", "Yes, send me clinic news.")
        welcome = sequences.create_sequence(session, name="Welcome", trigger="confirmed", trigger_list_id=list_id,
                                            list_id=list_id)
        sequences.add_step(session, welcome.id, subject="Welcome, {{ contact.first_name }}", body_md="Hello.")
        imported = sequences.create_sequence(session, name="Imported", trigger="imported", trigger_list_id=list_id,
                                             list_id=list_id)
        sequences.add_step(session, imported.id, subject="Good to have you here, {{ contact.first_name }}",
                           body_md="We moved our newsletter here.")
        for sequence in (welcome, imported):
            sequences.activate(session, sequence.id, now=ACTIVATED)
        welcome_id, imported_id = welcome.id, imported.id
        suppression.suppress_address(session, mailer.settings, "bounced@example.com", reason="hard_bounce",
                                     now=ACTIVATED)
    import_into(mailer, contacts.DEFAULT_LIST, ACTIVATED - dt.timedelta(days=1), "early@example.com")
    subscriber(mailer, "old@example.com", "Old")  # on the list for long
    subscriber(mailer, "gone@example.com", "Gone")
    db.write(sa.update(Subscription).where(Subscription.contact_id == contact_id(db, "gone@example.com"))
             .values(status="unsubscribed"))
    join(client, mailer, smtp_server, "sam@example.com", "Sam", "Europe/London")  # a double opt-in

    report = import_into(mailer, contacts.DEFAULT_LIST, ENROL + dt.timedelta(minutes=1), "ann@example.com",
                         "bob@example.com", "quick@example.com", "old@example.com", "gone@example.com",
                         "bounced@example.com", "early@example.com")
    assert (report.imported, report.duplicate, report.suppressed) == (3, 3, 1)
    import_into(mailer, "clinic-news", ENROL + dt.timedelta(minutes=1), "cal@example.com", "old@example.com")
    db.write(sa.update(Subscription).where(Subscription.contact_id == contact_id(db, "quick@example.com"))
             .values(status="unsubscribed"))  # imported, then gone before the worker looked
    mailer.drain(clock=at(ENROL + dt.timedelta(minutes=2)))
    mailer.drain(clock=at(ENROL + dt.timedelta(minutes=3)))

    def enrolled(sequence_id):
        return set(db.scalars(sa.select(Contact.email).join(Enrolment, Enrolment.contact_id == Contact.id)
                              .where(Enrolment.sequence_id == sequence_id)))

    assert enrolled(imported_id) == {"ann@example.com", "bob@example.com"}
    assert enrolled(welcome_id) == {"sam@example.com"}
    assert subjects_to(smtp_server, "ann@example.com") == ["Good to have you here, Ann"]
    assert subjects_to(smtp_server, "bob@example.com") == ["Good to have you here, Bob"]
    assert subjects_to(smtp_server, "sam@example.com")[1:] == ["Welcome, Sam"]
    assert {r.rcpt_tos[0] for r in smtp_server.received} == {"ann@example.com", "bob@example.com", "sam@example.com"}

    # Imported, unsubscribed, and back by double opt-in: a confirmation, for the welcome series.
    db.write(sa.update(Subscription).where(Subscription.contact_id == contact_id(db, "ann@example.com"))
             .values(status="unsubscribed"))
    join(client, mailer, smtp_server, "ann@example.com", "Ann", "Europe/London", when=ENROL + dt.timedelta(hours=1))
    mailer.drain(clock=at(ENROL + dt.timedelta(hours=1, minutes=1)))
    assert enrolled(welcome_id) == {"sam@example.com", "ann@example.com"}
    assert subjects_to(smtp_server, "ann@example.com")[-1] == "Welcome, Ann"


def contact_id(db, email) -> int:
    return db.scalar(sa.select(Contact.id).where(Contact.email == email))
