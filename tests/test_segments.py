"""Segments: rules checked with the place of each problem, compiled to one SQL query, the
count and sample; a segment as a newsletter's audience (exactly its subscribers, never
someone who left the list; frozen when the issue starts), real SMTP."""
from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from mailer.audience import segments
from mailer.audience.consent import RequestContext
from mailer.campaigns import newsletters, sequences, webinars
from mailer.db import session_scope
from mailer.errors import InvalidInput
from mailer.models import Newsletter, Registration, Subscription
from tests.test_sequences import default_list, subscriber

UTC = dt.timezone.utc
NOW = dt.datetime(2027, 3, 28, 12, 0, tzinfo=UTC)
WEBINAR_START = dt.datetime(2027, 3, 25, 18, 0)  # London, 45 minutes: over by NOW


@pytest.fixture
def people(mailer):
    """Ann, Bob and Cy on the newsletter list; Ann and Bob had seats at Spine Health, Ann
    was marked attended; Bob is in London, Cy in Berlin, Ann has no zone; Dee left the list."""
    ids = {name: subscriber(mailer, f"{name}@example.com", name.title(), zone)
           for name, zone in (("ann", None), ("bob", "Europe/London"), ("cy", "Europe/Berlin"),
                              ("dee", "Europe/London"))}
    before = NOW - dt.timedelta(days=10)
    with session_scope(mailer.sessions) as session:
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health", starts_local=WEBINAR_START,
                                  timezone="Europe/London", duration_minutes=45,
                                  join_url="https://meet.example.com/room", now=before)
        webinars.publish(session, w.id)
        for name in ("ann", "bob", "dee"):
            webinars.register(session, mailer.settings, "spine-health", email=f"{name}@example.com", name=name,
                              context=RequestContext(), now=before)
        session.execute(sa.update(Registration).where(Registration.contact_id.in_([ids["ann"], ids["dee"]]))
                        .values(attended=True))
        session.execute(sa.update(Subscription).where(Subscription.contact_id == ids["dee"])
                        .values(status="unsubscribed"))
        # "subscribed" reads Subscription.created_at, which the helper leaves at the real time:
        # date each subscription with its confirmation (long before NOW), as the rules below assume.
        session.execute(sa.update(Subscription).values(created_at=Subscription.confirmed_at))
        ids["webinar"] = w.id
    return ids


def picked(mailer, rules) -> set[str]:
    with mailer.read_sessions() as session:
        parsed = segments.parse_rules(session, rules)
        assert segments.count(session, parsed, NOW) == len(segments.sample(session, parsed, NOW, limit=100))
        return {c.email.split("@")[0] for c in segments.sample(session, parsed, NOW, limit=100)}


def rule(kind, op, **extra):
    return {"kind": kind, "op": op, **extra}


def test_rules_pick_contacts_in_one_query(mailer, people):
    w = people["webinar"]
    assert picked(mailer, {"groups": [{"rules": [rule("webinar", "attended", ref_id=w)]}]}) == {"ann", "dee"}
    assert picked(mailer, {"groups": [{"rules": [rule("webinar", "missed", ref_id=w)]}]}) == {"bob"}
    assert picked(mailer, {"groups": [{"rules": [rule("webinar", "registered")]}]}) == {"ann", "bob", "dee"}
    assert picked(mailer, {"groups": [{"rules": [rule("timezone", "is", value="Europe/London")]}]}) == {"bob", "dee"}
    assert picked(mailer, {"groups": [{"rules": [rule("timezone", "is_empty")]}]}) == {"ann"}
    assert picked(mailer, {"groups": [{"rules": [rule("timezone", "is_not", value="Europe/London")]}]}) == {
        "ann", "cy"}
    # (attended OR in Berlin) AND on the newsletter list, active.
    list_id = default_list(mailer)
    both = {"match": "all", "groups": [
        {"match": "any", "rules": [rule("webinar", "attended", ref_id=w), rule("timezone", "is", value="Europe/Berlin")]},
        {"rules": [rule("list", "active", ref_id=list_id)]}]}
    assert picked(mailer, both) == {"ann", "cy"}
    # Subscribed long ago (the helper dates them 30 days before 1 March 2027).
    assert picked(mailer, {"groups": [{"rules": [rule("subscribed", "before", value="2027-02-01")]}]}) == {
        "ann", "bob", "cy", "dee"}
    assert picked(mailer, {"groups": [{"rules": [rule("confirmed", "within_days", value=7)]}]}) == set()
    with mailer.read_sessions() as session:
        assert segments.describe(session, segments.parse_rules(session, both)) == (
            "(attended “Spine Health” or time zone is Europe/Berlin) and (active on “Monthly newsletter”)")


def test_problems_name_their_place(mailer, people):
    cases = [
        ({"groups": []}, "groups"),
        ({"groups": [{"rules": [rule("planet", "is")]}]}, "groups.0.rules.0.kind"),
        ({"groups": [{"rules": [rule("timezone", "is", value="Mars/Olympus")]}]}, "groups.0.rules.0.value"),
        ({"groups": [{"rules": [rule("webinar", "attended")]}, {"rules": [rule("list", "active")]}]},
         "groups.1.rules.0.ref_id"),
        ({"groups": [{"rules": [rule("subscribed", "before", value="last spring")]}]}, "groups.0.rules.0.value"),
        ({"match": "some", "groups": [{"rules": [rule("timezone", "is_empty")]}]}, "match"),
        ("{not json", "rules"),
    ]
    with mailer.read_sessions() as session:
        for rules, field in cases:
            with pytest.raises(InvalidInput) as refused:
                segments.parse_rules(session, rules)
            assert refused.value.field == field, (rules, refused.value)


def test_a_segment_narrows_a_newsletter_and_is_frozen_when_it_starts(mailer, smtp_server, people):
    w = people["webinar"]
    with session_scope(mailer.sessions) as session:
        segment = segments.create_segment(session, name="Came to Spine Health", now=NOW, rules={
            "groups": [{"rules": [rule("webinar", "attended", ref_id=w)]}]})
        issue = newsletters.create_newsletter(session, subject="For those who came", body_md="Thank you.",
                                              lists=["newsletter"], segment_id=segment.id)
        segment_id, issue_id = segment.id, issue.id
    with mailer.read_sessions() as session:
        # Dee attended but left the list: a segment never adds anyone.
        assert newsletters.count_audience(session, issue_id, NOW) == 1
    with session_scope(mailer.sessions) as session:
        newsletters.schedule(session, issue_id, NOW, now=NOW)
        assert newsletters.start_due(session, NOW) == [issue_id]
        # Edited after the start: the issue keeps the rules it went out with.
        segments.update_segment(session, segment_id, name="Anyone", now=NOW,
                                rules={"groups": [{"rules": [rule("webinar", "registered")]}]})
    mailer.drain(clock=lambda: NOW)
    assert sorted(r.rcpt_tos[0] for r in smtp_server.received
                  if r.message["Subject"] == "For those who came") == ["ann@example.com"]
    with mailer.read_sessions() as session:
        issue = session.get(Newsletter, issue_id)
        assert issue.audience_count == 1
        assert "attended" in issue.segment_rules and "registered" not in issue.segment_rules
        assert newsletters.count_audience(session, issue_id, NOW) == 1

    # An archived segment cannot be chosen for a new issue.
    with session_scope(mailer.sessions) as session:
        segments.archive_segment(session, segment_id, now=NOW)
        with pytest.raises(InvalidInput) as refused:
            newsletters.create_newsletter(session, subject="Again", body_md="x", lists=["newsletter"],
                                          segment_id=segment_id)
        assert refused.value.field == "segment"


def test_an_automation_enrols_a_segment_and_uses_one_as_a_step_condition(mailer, smtp_server, people):
    w = people["webinar"]
    list_id = default_list(mailer)
    with session_scope(mailer.sessions) as session:
        londoners = segments.create_segment(session, name="Londoners", now=NOW, rules={
            "groups": [{"rules": [rule("timezone", "is", value="Europe/London")]}]})
        seated = segments.create_segment(session, name="Had a seat", now=NOW, rules={
            "groups": [{"rules": [rule("webinar", "registered", ref_id=w)]}]})
        sequence = sequences.create_sequence(session, name="Replay", trigger="manual", list_id=list_id)
        sequences.add_step(session, sequence.id, subject="Hello", body_md="Hello.")
        sequences.add_step(session, sequence.id, subject="For Londoners", body_md="Tea?", delay=(1, "hours"),
                           condition="in_segment", condition_ref_id=londoners.id)
        sequences.activate(session, sequence.id, now=NOW)
        # Ann, Bob and Dee had seats; Dee left the list, so only Ann and Bob are enrolled.
        assert sequences.enrol_segment(session, sequence.id, seated.id, NOW) == 2
        assert sequences.enrol_segment(session, sequence.id, seated.id, NOW) == 0  # nobody twice
        sequence_id = sequence.id
    for hours in (0, 1):
        with session_scope(mailer.sessions) as session:
            sequences.run(session, mailer.settings, NOW + dt.timedelta(hours=hours))
        mailer.drain(clock=lambda: NOW + dt.timedelta(hours=hours))
    got = sorted((r.rcpt_tos[0], r.message["Subject"]) for r in smtp_server.received
                 if not r.message["Subject"].startswith("Your seat"))
    assert got == [("ann@example.com", "Hello"), ("bob@example.com", "For Londoners"), ("bob@example.com", "Hello")]
    with mailer.read_sessions() as session:
        [_, second] = sequences.report(session, sequence_id)
        assert second["skipped"] == 1  # Ann: no zone, not a Londoner
        with pytest.raises(InvalidInput):
            sequences.add_step(session, sequence_id, subject="x", body_md="x", condition="in_segment",
                               condition_ref_id=999)


def test_rules_on_the_tables_the_audience_reads_itself(mailer, people):
    """A newsletter's audience reads subscriptions and a step's condition reads enrolments:
    rules on those same tables must still be about the reader, not the outer row."""
    list_id = default_list(mailer)
    with session_scope(mailer.sessions) as session:
        sequence = sequences.create_sequence(session, name="Course", trigger="manual", list_id=list_id)
        sequences.add_step(session, sequence.id, subject="One", body_md="One.")
        sequences.activate(session, sequence.id, now=NOW)
        sequences.enrol(session, sequence.id, people["bob"], NOW)
        on_list = segments.create_segment(session, name="Active", now=NOW, rules={
            "groups": [{"rules": [rule("list", "active", ref_id=list_id),
                                  rule("subscribed", "before", value="2027-03-01")]}]})
        in_course = segments.create_segment(session, name="In the course", now=NOW, rules={
            "groups": [{"rules": [rule("automation", "enrolled", ref_id=sequence.id)]}]})
        issues = [newsletters.create_newsletter(session, subject=f"Issue {i}", body_md="x", lists=["newsletter"],
                                                segment_id=seg.id).id for i, seg in enumerate((on_list, in_course))]
        sequences.add_step(session, sequence.id, subject="Two", body_md="Two.", condition="in_segment",
                           condition_ref_id=in_course.id)
    with mailer.read_sessions() as session:
        assert newsletters.count_audience(session, issues[0], NOW) == 3  # Ann, Bob, Cy (Dee left)
        assert newsletters.count_audience(session, issues[1], NOW) == 1  # Bob
    with session_scope(mailer.sessions) as session:
        assert sequences.run(session, mailer.settings, NOW) == 2  # Bob: step one, then two (in the course)
