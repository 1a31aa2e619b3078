"""What staff type on the settings page (organisation, postal address) is data: template
syntax in it is shown as typed, in every mail part, the archive and the public pages,
and never runs. Mail goes through the real SMTP server and is read back from its bytes."""
from __future__ import annotations

import datetime as dt
import html

import pytest
import time_machine

from mailer.campaigns import newsletters, webinars
from mailer.staff import site_settings
from mailer.db import session_scope, utcnow
from mailer.delivery.rendering import EmailRenderer, compile_newsletter
from tests.audience import address, make_audience

ORGANISATION = "Clinic {{ 7*7 }} {% if true %}X{% endif %}"
POSTAL = "1 {{ config }} Road, {{ self.__init__ }} Leeds"
# What the old code printed (or failed on) once these ran as a template.
RAN = ("Clinic 49", "Clinic {{ 7*7 }} X", "<Config", "<TemplateReference")
UTC = dt.timezone.utc
SENT_AT = dt.datetime(2027, 3, 2, 9, tzinfo=UTC)
BODY = "Hello {{ contact.first_name }}, news from {{ organisation }} at {{ postal_address }}."


@pytest.fixture
def typed(mailer):
    """The organisation and postal address saved on the settings page, as an owner would."""
    with session_scope(mailer.sessions) as session:
        site_settings.save(session, {"organisation": ORGANISATION, "postal_address": POSTAL},
                           base=mailer.base_settings, actor_id=None, now=utcnow())
    settings = mailer.refresh_settings()
    assert (settings.organisation, settings.postal_address) == (ORGANISATION, POSTAL)
    return mailer


def assert_literal(text: str, *, where: str, count: int = 1) -> None:
    """`text` (an HTML page already unescaped, or plain text) shows both values as typed."""
    assert text.count(ORGANISATION) >= count, where
    assert text.count(POSTAL) >= count, where
    for ran in RAN:
        assert ran not in text, (where, ran)


def send_issue(mailer, *, public: bool = False) -> int:
    with session_scope(mailer.sessions) as session:
        n = newsletters.create_newsletter(session, subject="Spring news", body_md=BODY, lists=["newsletter"])
        newsletters.update_newsletter(session, n.id, subject="Spring news", body_md=BODY, lists=["newsletter"],
                                      public=public)
        newsletters.schedule(session, n.id, SENT_AT, now=SENT_AT)
        newsletter_id = n.id
    mailer.drain(clock=lambda: SENT_AT)
    return newsletter_id


def test_a_newsletter_shows_the_settings_as_typed(typed, smtp_server):
    make_audience(typed, 1)
    send_issue(typed)
    [received] = [r for r in smtp_server.received if r.rcpt_tos == [address(0)]]
    message = received.message
    text = message.get_body(("plain",)).get_content()
    assert_literal(text, where="text part", count=2)  # the body's {{ organisation }} and the footer
    raw_html = message.get_body(("html",)).get_content()
    assert_literal(html.unescape(raw_html), where="html part", count=2)


def test_the_archive_and_public_pages_show_the_settings_as_typed(typed, client, smtp_server):
    make_audience(typed, 1)
    newsletter_id = send_issue(typed, public=True)
    for path in ("/archive", f"/archive/{newsletter_id}", f"/archive/{newsletter_id}/email.html",
                 "/subscribe", "/webinars"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert_literal(html.unescape(page.text), where=path)


def test_a_webinar_confirmation_shows_the_settings_as_typed(typed, client, smtp_server):
    before = dt.datetime(2027, 3, 1, 12, tzinfo=UTC)
    with session_scope(typed.sessions) as session:
        w = webinars.save_webinar(session, slug="spine-health", title="Spine Health",
                                  starts_local=dt.datetime(2027, 3, 25, 18, 0), timezone="Europe/London",
                                  duration_minutes=45, capacity=None, description_md="Desk exercises.",
                                  join_url="https://meet.example.com/room", replay_url="", reminder_offsets="60",
                                  now=before)
        webinars.publish(session, w.id)
    with time_machine.travel(before, tick=False):
        answer = client.post("/webinars/spine-health/register",
                             data={"email": "ann@example.com", "name": "Ann", "timezone": "Europe/London"})
    assert answer.status_code == 200
    assert_literal(html.unescape(client.get("/webinars/spine-health").text), where="webinar page")
    typed.drain(clock=lambda: before)
    [received] = [r for r in smtp_server.received if r.rcpt_tos == ["ann@example.com"]]
    message = received.message
    assert_literal(message.get_body(("plain",)).get_content(), where="text part")
    assert_literal(html.unescape(message.get_body(("html",)).get_content()), where="html part")
    invite = [p for p in message.iter_attachments() if p.get_filename() == "invite.ics"][0]
    assert "Clinic {{ 7*7 }}" in invite.get_payload(decode=True).decode()  # the organiser's name, as typed


@pytest.mark.parametrize("logo_url", ["", "https://clinic.example/logo.png"])
def test_the_layout_keeps_its_conditions_and_escapes_the_values(logo_url):
    """The layout tests `logo_url` and prints the organisation in an attribute: both still
    work now that the shared values are variables of the compiled issue."""
    static = {"organisation": 'Clinic "A" <b>{{ 7*7 }}</b>', "postal_address": POSTAL,
              "base_url": "https://news.example.org", "logo_url": logo_url}
    compiled = compile_newsletter(EmailRenderer(), subject="Hi", preheader="", body_markdown="Hello",
                                  layout="default", context=static)
    copy = compiled.render(dict(static, contact={"first_name": "Ann", "name": "Ann", "email": "a@example.com"},
                                unsubscribe_url="https://news.example.org/u/1",
                                preferences_url="https://news.example.org/p/1"))
    shown = "&lt;b&gt;{{ 7*7 }}&lt;/b&gt;"  # as text: escaped, never run
    if logo_url:
        assert f'<img src="{logo_url}" alt="Clinic &quot;A&quot; {shown}" height="40">' in copy.html
    else:
        assert "<img" not in copy.html and f'>Clinic "A" {shown}</p>' in copy.html
    assert 'Clinic "A" <b>{{ 7*7 }}</b>, 1 {{ config }} Road' in copy.text
    assert "49" not in copy.text and ">49<" not in copy.html
