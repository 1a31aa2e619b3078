"""What a reader gets from a sequence and when (the console's "what would Anna get"): the
plan's times are the times the worker really queues each step, in the reader's own zone,
across a DST change; who will get nothing more and why; the per-step unsubscribes."""
from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from mailer.audience import contacts
from mailer.audience.consent import RequestContext
from mailer.campaigns import sequences
from mailer.db import session_scope
from mailer.models import Delivery, MailingList
from tests.test_sequences import ACTIVATED, default_list, mails_to, run, subscriber

UTC = dt.timezone.utc
ENROL = dt.datetime(2027, 3, 1, 12, 0, tzinfo=UTC)  # Monday; the US changes its clocks on 14 March
SECOND_DUE = dt.datetime(2027, 3, 13, 12, 0, tzinfo=UTC)  # enrolment + 12 days: a Saturday


def course(mailer, condition_list: int | None = None) -> tuple[int, list[int]]:
    """At once; 12 days later on a weekday 09:00–11:00 in the reader's zone; a day after
    that, only for readers on `condition_list`."""
    list_id = default_list(mailer)
    with session_scope(mailer.sessions) as session:
        sequence = sequences.create_sequence(session, name="Course", trigger="manual", list_id=list_id)
        steps = [sequences.add_step(session, sequence.id, subject="Lesson 1", body_md="One."),
                 sequences.add_step(session, sequence.id, subject="Lesson 2", body_md="Two.", delay=(12, "days"),
                                    window="weekdays 09:00-11:00"),
                 sequences.add_step(session, sequence.id, subject="Lesson 3", body_md="Three.", delay=(1, "days"),
                                    condition="on_list" if condition_list else None,
                                    condition_ref_id=condition_list)]
        sequences.activate(session, sequence.id, now=ACTIVATED)
        return sequence.id, [s.id for s in steps]


def plan(mailer, sequence_id, contact_id, now):
    with mailer.read_sessions() as session:
        p = sequences.plan_for_contact(session, mailer.settings, sequence_id, contact_id, now)
        return p.stopped, [(s.step.subject, s.state, s.at, s.note) for s in p.steps]


def queued(mailer, step_id, contact_id) -> bool:
    with mailer.read_sessions() as session:
        return session.scalar(sa.select(sa.func.count()).where(
            Delivery.ref_id == step_id, Delivery.kind == "sequence_step", Delivery.contact_id == contact_id)) == 1


def test_the_plan_is_when_the_worker_queues_each_step_in_the_readers_zone_across_dst(mailer, smtp_server):
    sequence_id, (first, second, third) = course(mailer)
    lee = subscriber(mailer, "lee@example.com", "Lee", "America/Los_Angeles")
    sam = subscriber(mailer, "sam@example.com", "Sam", "Australia/Sydney")
    nobody = subscriber(mailer, "noz@example.com", "Noz")  # no zone: the organisation's (Europe/London)
    with session_scope(mailer.sessions) as session:
        for contact_id in (lee, sam, nobody):
            sequences.enrol(session, sequence_id, contact_id, ENROL)

    # Before the worker's first tick everything is planned, from the enrolment.
    _, steps = plan(mailer, sequence_id, lee, ENROL)
    assert [(subject, state) for subject, state, _, _ in steps] == [
        ("Lesson 1", "planned"), ("Lesson 2", "planned"), ("Lesson 3", "planned")]
    assert steps[0][2] == ENROL

    run(mailer, ENROL)
    mailer.drain(clock=lambda: ENROL)
    assert [m["Subject"] for m in mails_to(smtp_server, "lee@example.com")] == ["Lesson 1"]

    # Lesson 2 falls due on Saturday 13 March and waits for Monday 09:00 in each zone:
    # 09:00 PDT in Los Angeles (UTC-7 since the 14th, not -8), 09:00 AEDT in Sydney, 09:00 GMT.
    expected = {lee: dt.datetime(2027, 3, 15, 16, 0, tzinfo=UTC),
                sam: dt.datetime(2027, 3, 14, 22, 0, tzinfo=UTC),
                nobody: dt.datetime(2027, 3, 15, 9, 0, tzinfo=UTC)}
    for contact_id, when in expected.items():
        _, steps = plan(mailer, sequence_id, contact_id, ENROL + dt.timedelta(hours=1))
        assert steps[0][:2] == ("Lesson 1", "sent")
        assert steps[1][:3] == ("Lesson 2", "planned", when)
        assert "waits for the window (weekdays 09:00-11:00)" in steps[1][3]
        assert steps[2][:3] == ("Lesson 3", "planned", when + dt.timedelta(days=1))

    # The worker agrees: a minute before each reader's time nothing, at it their copy.
    for contact_id, when in sorted(expected.items(), key=lambda item: item[1]):
        run(mailer, when - dt.timedelta(minutes=1))
        assert not queued(mailer, second, contact_id)
        run(mailer, when)
        assert queued(mailer, second, contact_id)
    _, steps = plan(mailer, sequence_id, lee, expected[lee])
    assert steps[1][:2] == ("Lesson 2", "queued")
    assert steps[2][:3] == ("Lesson 3", "planned", expected[lee] + dt.timedelta(days=1))


def test_someone_not_in_the_sequence_is_planned_as_if_enrolled_now(mailer):
    sequence_id, _ = course(mailer)
    ann = subscriber(mailer, "ann@example.com", "Ann", "Europe/Berlin")
    now = dt.datetime(2027, 3, 1, 7, 30, tzinfo=UTC)
    stopped, steps = plan(mailer, sequence_id, ann, now)
    assert stopped == ""
    # Monday 08:30 in Berlin (CET) + 12 days = Saturday 13 March → Monday 15 March 09:00 CET.
    assert [(state, at) for _, state, at, _ in steps] == [
        ("planned", now), ("planned", dt.datetime(2027, 3, 15, 8, 0, tzinfo=UTC)),
        ("planned", dt.datetime(2027, 3, 16, 8, 0, tzinfo=UTC))]


def test_a_condition_that_fails_today_and_a_reader_who_left_are_said(mailer, smtp_server):
    with session_scope(mailer.sessions) as session:
        session.add(MailingList(slug="pilates", name="Pilates class news"))
    with mailer.read_sessions() as session:
        pilates = session.scalar(sa.select(MailingList.id).where(MailingList.slug == "pilates"))
    sequence_id, (first, _, _) = course(mailer, condition_list=pilates)
    ann = subscriber(mailer, "ann@example.com", "Ann")
    bob = subscriber(mailer, "bob@example.com", "Bob")
    subscriber(mailer, "bob@example.com", "Bob", list_slug="pilates")
    with session_scope(mailer.sessions) as session:
        for contact_id in (ann, bob):
            sequences.enrol(session, sequence_id, contact_id, ENROL)
    run(mailer, ENROL)
    mailer.drain(clock=lambda: ENROL)

    assert plan(mailer, sequence_id, ann, ENROL)[1][2][3] == "skipped unless still on Pilates class news by then"
    assert plan(mailer, sequence_id, bob, ENROL)[1][2][3] == ""

    # Ann unsubscribes after lesson 1: nothing more is coming, and lesson 1 counts her.
    [lesson] = mails_to(smtp_server, "ann@example.com")
    token = lesson["List-Unsubscribe"].split(",")[0].strip(" <>").rsplit("/", 1)[1]
    left = ENROL + dt.timedelta(hours=2)
    with session_scope(mailer.sessions) as session:
        assert contacts.unsubscribe(session, mailer.settings, token, context=RequestContext(), now=left).outcome \
            == contacts.LinkOutcome.UNSUBSCRIBED
    stopped, steps = plan(mailer, sequence_id, ann, left)
    assert stopped.startswith("not subscribed to ")
    assert [state for _, state, _, _ in steps] == ["sent", "not coming", "not coming"]
    with mailer.read_sessions() as session:
        report = sequences.report(session, sequence_id)
    assert [(r["subject"], r["deliveries"].get("sent", 0), r["unsubscribes"]) for r in report] == [
        ("Lesson 1", 2, 1), ("Lesson 2", 0, 0), ("Lesson 3", 0, 0)]

    # Once the worker sees it, the enrolment has exited and says why.
    run(mailer, dt.datetime(2027, 3, 15, 9, 30, tzinfo=UTC))  # Monday, inside her window
    assert plan(mailer, sequence_id, ann, SECOND_DUE)[0] == "left the sequence: unsubscribed"
