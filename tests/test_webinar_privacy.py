"""Public webinar pages tell nobody who is registered: seats are a band, never a number,
and registering only stores a request (no read about the address), so the answer, and
the work done to give it, are the same for every address. The worker registers it."""
from __future__ import annotations

import datetime as dt
import re

import pytest
import sqlalchemy as sa

from mailer import privacy
from mailer.delivery import suppression
from mailer.audience import contacts
from mailer.campaigns import webinars
from mailer.audience.consent import RequestContext
from mailer.db import session_scope, utcnow
from mailer.models import ConsentEvent, Contact, Registration, RegistrationRequest
from mailer.web.public.webinar_pages import REGISTERED, SEATS

UTC = dt.timezone.utc
JOIN = "https://meet.example.com/spine-health-room"
START_LOCAL = dt.datetime(2030, 3, 26, 18, 0)  # London, GMT: 18:00 UTC
BANDS = {"Seats available", "A few seats left", "Full — join the waitlist"}
PAGE = "/webinars/spine-health"


@pytest.fixture
def webinar(mailer):
    with session_scope(mailer.sessions) as session:
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health", starts_local=START_LOCAL,
                                  timezone="Europe/London", capacity=10, join_url=JOIN, now=utcnow())
        webinars.publish(session, w.id)
        return w.id


def post(client, email, *, json=False, **extra):
    data = {"email": email, "name": "Ann", "timezone": "America/New_York", **extra}
    headers = {"User-Agent": "pytest-browser/1.0"}
    if json:
        return client.post(f"{PAGE}/register", json=data, headers=headers)
    return client.post(f"{PAGE}/register", data=data, headers=headers)


def book(mailer, email, now=None):
    """A registration made directly (what the worker does with a request)."""
    with session_scope(mailer.sessions) as session:
        webinars.register(session, mailer.settings, "spine-health", email=email, context=RequestContext(),
                          now=now or utcnow())


def seats_text(client) -> str:
    page = client.get(PAGE)
    assert page.status_code == 200
    return re.search(r'<p class="seats" id="seats">(.*?)</p>', page.text).group(1)


def set_capacity(mailer, webinar_id, capacity):
    with session_scope(mailer.sessions) as session:
        webinars.get_webinar(session, webinar_id).capacity = capacity


def mails_to(smtp_server, address):
    return [r.message for r in smtp_server.received if r.rcpt_tos == [address]]


def test_public_pages_never_show_a_number_of_seats(client, mailer, webinar):
    seen = []
    for taken in range(11):  # capacity 10: from empty to full
        page, listing = client.get(PAGE).text, client.get("/webinars").text
        seen.append(seats_text(client))
        for text in (page, listing):
            assert not re.search(r"\d+\s*(seats?|places?|spots?)\b", text, re.I), text
            assert re.search(r"(?i)\bseats? left\b", text) is None or "A few seats left" in text
        listed = "Waitlist" if seen[-1] == "Full — join the waitlist" else seen[-1]  # the list says it in a word
        assert seen[-1] in BANDS and f'<span class="seats">{listed}</span>' in listing
        book(mailer, f"p{taken}@example.com")
    # Five or fewer seats left is "a few" (webinars.FEW_SEATS); none left is the waitlist.
    assert seen == ["Seats available"] * 5 + ["A few seats left"] * 5 + ["Full — join the waitlist"]
    set_capacity(mailer, webinar, None)
    assert seats_text(client) == "Free, open to all"
    # The JSON answer carries no count either.
    answer = post(client, "json@example.com", json=True).json
    assert answer == {"status": "check_your_email", "message": REGISTERED, "webinar": "Spine Health",
                      "starts_at": "2030-03-26T18:00:00Z"}
    assert set(SEATS.values()) == BANDS | {"Free, open to all"}


def test_the_answer_and_the_page_tell_nobody_whether_an_address_is_registered(client, mailer, webinar, db):
    """Near capacity (one seat left), the answer for a new address and for one in each
    state is the same bytes, the request path runs the same statements and reads no
    personal table, and registering a known address leaves the public page unchanged."""
    for address in ["known@example.com", "erased@example.com", "cancelled@example.com"] + [
            f"f{n}@example.com" for n in range(7)]:
        book(mailer, address)
    with session_scope(mailer.sessions) as session:
        erased_id = session.scalar(sa.select(Contact.id).where(Contact.email == "erased@example.com"))
        privacy.erase_contact(session, mailer.settings, erased_id, now=utcnow())
        cancelled = session.scalar(sa.select(Registration).join(Contact).where(
            Contact.email == "cancelled@example.com"))
        webinars.cancel_registration(session, cancelled.token, now=utcnow())
        suppression.suppress_address(session, mailer.settings, "bounced@example.com", reason="hard_bounce",
                                     now=utcnow())
    book(mailer, "f7@example.com")
    set_capacity(mailer, webinar, 9)
    book(mailer, "waitlisted@example.com")  # full at 9: waitlisted
    set_capacity(mailer, webinar, 10)
    assert db.scalar(sa.select(sa.func.count()).select_from(Registration).where(
        Registration.status == "confirmed")) == 9  # one seat left

    page_before = client.get(PAGE).data
    assert seats_text(client) == "A few seats left"
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_args):
        statements.append(statement)

    sa.event.listen(mailer.engine, "before_cursor_execute", record)
    try:
        answers, work = {}, {}
        for address in ("new@example.com", "known@example.com", "waitlisted@example.com",
                        "cancelled@example.com", "bounced@example.com", "erased@example.com"):
            statements.clear()
            answers[address] = post(client, address)
            work[address] = list(statements)
        json_answers = {a: post(client, a, json=True) for a in ("new2@example.com", "known@example.com")}
    finally:
        sa.event.remove(mailer.engine, "before_cursor_execute", record)

    def headers(answer):
        return sorted((k, v) for k, v in answer.headers if k.lower() != "date")

    first = answers["new@example.com"]
    assert first.status_code == 200 and "Check your inbox" in first.text and REGISTERED in first.text
    for address, answer in answers.items():
        assert (answer.status_code, answer.data, headers(answer)) == (200, first.data, headers(first)), address
        assert work[address] == work["new@example.com"], address
    print("\nthe request path's statements:", *work["new@example.com"], sep="\n  ")
    assert work["new@example.com"] and not any(
        re.search(r"\b(contacts|registrations|subscriptions|suppressions|consent_events)\b", s)
        for s in work["new@example.com"])
    assert json_answers["known@example.com"].data == json_answers["new2@example.com"].data
    assert db.scalar(sa.select(sa.func.count()).select_from(RegistrationRequest)) == 8

    # The known address alone (its form and JSON requests), processed: no seat taken, the page is the same bytes.
    db.write(sa.delete(RegistrationRequest).where(RegistrationRequest.email != "known@example.com"))
    assert mailer.process_signups() == 2
    assert client.get(PAGE).data == page_before
    # A new address takes the last seat (the boundary a band cannot hide; see the README).
    post(client, "new@example.com")
    mailer.process_signups()
    assert seats_text(client) == "Full — join the waitlist"


def test_full_at_processing_time_means_the_waitlist_and_the_mail_says_so(client, mailer, smtp_server, webinar, db):
    set_capacity(mailer, webinar, 1)
    assert seats_text(client) == "A few seats left"
    first, second = post(client, "first@example.com"), post(client, "second@example.com")
    assert first.data == second.data  # both sent while the page still said a seat was free
    mailer.drain()
    [seat] = mails_to(smtp_server, "first@example.com")
    [waitlisted] = mails_to(smtp_server, "second@example.com")
    assert seat["Subject"] == "Your seat: Spine Health, Tuesday 26 March 2030, 14:00 EDT"
    assert waitlisted["Subject"] == "You're on the waitlist: Spine Health"
    text = waitlisted.get_body(("plain",)).get_content()
    assert "Spine Health (Tuesday 26 March 2030, 14:00 EDT) is full, so you are on the waitlist." in text
    assert JOIN not in waitlisted.as_string() and not list(waitlisted.iter_attachments())
    statuses = dict(db.execute(sa.select(Contact.email, Registration.status).join(Contact)))
    assert statuses == {"first@example.com": "confirmed", "second@example.com": "waitlisted"}
    assert seats_text(client) == "Full — join the waitlist"


def test_two_submits_of_one_address_make_one_registration_and_one_mail(client, mailer, smtp_server, webinar, db):
    assert post(client, "ann@example.com").data == post(client, "ANN@example.com ").data
    assert db.scalar(sa.select(sa.func.count()).select_from(RegistrationRequest)) == 2
    mailer.drain()
    post(client, "ann@example.com")  # a third, after the worker registered the first two
    mailer.drain()
    assert db.scalar(sa.select(sa.func.count()).select_from(Registration)) == 1
    assert len(mails_to(smtp_server, "ann@example.com")) == 1
    assert db.scalar(sa.select(sa.func.count()).select_from(RegistrationRequest)) == 0  # processed rows go


def test_the_request_keeps_the_evidence_and_its_time(client, mailer, webinar, db):
    """Registration time is request time; the newsletter consent event carries the
    visitor's IP, browser and page as sent, not the worker's."""
    import time_machine

    asked = dt.datetime(2029, 5, 4, 9, 30, 15, tzinfo=UTC)
    with time_machine.travel(asked, tick=False):
        answer = post(client, "ann@example.com", name="Ann\x07 Lee", newsletter="yes", newsletter_version="1",
                      source_url="https://clinic.example/blog/spine")
    assert answer.status_code == 200
    [request] = db.execute(sa.select(RegistrationRequest.email, RegistrationRequest.name, RegistrationRequest.timezone,
                                     RegistrationRequest.ip, RegistrationRequest.user_agent,
                                     RegistrationRequest.source_url, RegistrationRequest.newsletter,
                                     RegistrationRequest.newsletter_version, RegistrationRequest.created_at))
    assert tuple(request) == ("ann@example.com", "Ann Lee", "America/New_York", "127.0.0.1", "pytest-browser/1.0",
                              "https://clinic.example/blog/spine", True, 1, asked)
    mailer.process_signups()  # now, in real time: long after the request
    [(created, zone, name)] = db.execute(sa.select(Registration.created_at, Registration.timezone, Contact.name)
                                         .join(Contact))
    assert (created, zone, name) == (asked, "America/New_York", "Ann Lee")
    [event] = db.execute(sa.select(ConsentEvent.action, ConsentEvent.ip, ConsentEvent.user_agent,
                                   ConsentEvent.source_url, ConsentEvent.created_at))
    assert tuple(event) == ("requested", "127.0.0.1", "pytest-browser/1.0", "https://clinic.example/blog/spine", asked)


def test_bad_input_is_refused_and_stores_nothing(client, mailer, webinar, db):
    bad = post(client, "not-an-address")
    assert bad.status_code == 400 and "That email address is not valid" in bad.text
    assert post(client, "a@example.com", json=True, newsletter=True, newsletter_version="99").json["error"][
        "field"] == "consent_version"
    assert post(client, "a@example.com", newsletter_version="x").status_code == 400
    assert client.post("/webinars/nope/register", data={"email": "a@example.com"}).status_code == 404
    assert post(client, "bot@example.com", website="http://spam.example").data == post(client, "x@example.com").data
    assert db.scalar(sa.select(sa.func.count()).select_from(RegistrationRequest)) == 1  # the last one only


def test_a_request_for_a_webinar_cancelled_since_is_dropped_and_erasure_removes_unprocessed_ones(
        client, mailer, smtp_server, webinar, db):
    post(client, "ann@example.com")
    with session_scope(mailer.sessions) as session:
        webinars.cancel_webinar(session, webinar, now=utcnow())
    assert mailer.process_signups() == 1
    assert db.scalar(sa.select(sa.func.count()).select_from(Registration)) == 0
    assert db.scalar(sa.select(sa.func.count()).select_from(RegistrationRequest)) == 0

    with session_scope(mailer.sessions) as session:
        other = webinars.save_webinar(session, slug="knee-care", title="Knee Care", starts_local=START_LOCAL,
                                      timezone="Europe/London", join_url=JOIN, now=utcnow())
        webinars.publish(session, other.id)
    client.post("/webinars/knee-care/register", data={"email": "bob@example.com"})
    with session_scope(mailer.sessions) as session:  # Bob is known (a subscriber) and asks to be erased
        bob = contacts.get_or_create_contact(session, mailer.settings, "bob@example.com", now=utcnow()).id
        report = privacy.erase_contact(session, mailer.settings, bob, now=utcnow())
    assert report.signup_requests_deleted == 1
    assert db.scalar(sa.select(sa.func.count()).select_from(RegistrationRequest)) == 0


def test_worker_drain_registers_stored_requests_and_sends_their_mail(client, smtp_server, database_url, tmp_path,
                                                                     webinar, db):
    from click.testing import CliRunner

    from mailer.cli import main
    from tests.conftest import SECRET

    post(client, "ann@example.com")
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance"), "MAILER_SMTP_URL": smtp_server.url}
    result = CliRunner().invoke(main, ["worker", "--drain"], env=env)
    assert result.exit_code == 0, result.output
    assert "sent 1, deferred 0, failed 0, skipped 0" in result.output
    [mail] = mails_to(smtp_server, "ann@example.com")
    assert mail["Subject"].startswith("Your seat: Spine Health, ")
    assert db.scalar(sa.select(sa.func.count()).select_from(RegistrationRequest)) == 0
