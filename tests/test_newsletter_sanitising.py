"""What is sent is sanitised, not only what is written (issue 10, item 6): template
output that would put live HTML back (urlize plus replace, a tag split by {% if %}, the
preheader, Markup methods) is refused at save, and whatever is stored anyway leaves as
inert HTML, in the mail and on the public archive. A legitimate issue looks the same."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
import sqlalchemy as sa

from mailer.campaigns import newsletters
from mailer.db import session_scope, utcnow
from mailer.errors import InvalidInput
from mailer.models import Newsletter
from mailer.delivery.rendering import EmailRenderer, compile_newsletter, sanitise_html
from tests.audience import make_audience, make_newsletter

URLIZE_REPLACE = "{{ 'https://clinic.example/a'|urlize|replace('href', 'onmouseover=alert(1) href') }}"
ATTACKS = {
    "urlize plus replace": dict(body=f"Read {URLIZE_REPLACE}"),
    "Markup .replace method": dict(body="{{ ('https://clinic.example'|urlize).replace('href', 'onclick=alert(1) href') }}"),
    "attribute split by if": dict(body='<a href="https://clinic.example/" title="{% if false %}">{% endif %}" '
                                       'onmouseover="alert(1)">link</a>'),
    "Markup translate": dict(body="{{ ('xscript~alert(1)x/script~'|e).translate({120: '<', 126: '>'}) }}"),
    "lipsum replace": dict(body="{{ lipsum(1).replace('p', 'img src=x onerror=alert(1) p') }}"),
    "preheader": dict(preheader=URLIZE_REPLACE),
    "subject": dict(subject="News " + URLIZE_REPLACE.replace("onmouseover", "onfocus")),
    "tojson in an attribute": dict(body="<a title=\"{{ {'x onmouseover=alert(1) y': 1}|tojson }}\">x</a>"),
}


class LiveHTML(HTMLParser):
    """Anything a browser or mail client would run: script elements, event handlers,
    javascript: and data: links."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "iframe", "object", "embed", "form", "base", "svg", "math"):
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            url = re.sub(r"[\s\x00-\x1f]", "", value or "").lower()
            if name.startswith("on"):
                self.found.append(f"{tag} {name}={value}")
            elif name in ("href", "src", "action", "formaction", "xlink:href", "srcset") and url.startswith(
                    ("javascript:", "vbscript:", "data:")):
                self.found.append(f"{tag} {name}={value}")


STATIC = {"organisation": "Spine Clinic", "postal_address": "1 High Street", "base_url": "https://news.example.org",
          "logo_url": ""}
READER = dict(STATIC, contact={"first_name": "Ann", "name": "Ann Lee", "email": "ann@example.com", "timezone": None},
              unsubscribe_url="https://news.example.org/unsubscribe/t1", preferences_url="https://news.example.org/p/t1",
              archive_url="https://news.example.org/archive", upcoming_webinars=[])


def _compile(subject="Spring news", preheader="", body="Hello"):
    return compile_newsletter(EmailRenderer(), subject=subject, preheader=preheader, body_markdown=body,
                              layout="default", context=STATIC)


@pytest.mark.parametrize("name", ATTACKS)
def test_each_attack_was_live_html_before_sanitising(name):
    """The attacks are real: Jinja's own output (what used to be sent) runs script."""
    compiled = _compile(**ATTACKS[name])
    assert LiveHTML(compiled.html.render(READER)).found, name
    assert not LiveHTML(compiled.render(READER).html).found


# Plain {% if %} is ordinary template syntax and is saved; the sanitiser after Jinja stops it.
SAVED_ATTACKS = {"attribute split by if"}


def _attack_fields(name):
    fields = {"subject": "Spring news", "preheader": "", "body_md": "Hello"}
    fields.update({("body_md" if k == "body" else k): v for k, v in ATTACKS[name].items()})
    return fields


@pytest.mark.parametrize("name", [name for name in ATTACKS if name not in SAVED_ATTACKS])
def test_each_attack_is_refused_at_save(mailer, name):
    with session_scope(mailer.sessions) as session, pytest.raises(InvalidInput) as refused:
        newsletters.create_newsletter(session, lists=["newsletter"], **_attack_fields(name))
    assert "not allowed" in refused.value.message


@pytest.mark.parametrize("name", sorted(SAVED_ATTACKS))
def test_an_attack_in_plain_template_syntax_is_saved_and_rendered_inert(mailer, name):
    with session_scope(mailer.sessions) as session:
        newsletters.create_newsletter(session, lists=["newsletter"], **_attack_fields(name))
    assert not LiveHTML(_compile(**ATTACKS[name]).render(READER).html).found


@pytest.mark.parametrize("source, field, message", [
    ("{{ x|xmlattr }}", "body", "'xmlattr' filter is not allowed"),
    ("{{ contact.name|attr('upper') }}", "body", "'attr' filter is not allowed"),
    ("{{ ['a']|map('safe')|join }}", "body", "'map' cannot apply a filter"),
    ("{% macro m() %}<b>{% endmacro %}{{ m() }}", "body", "macros are not allowed"),
    ("{% set x %}<b>{% endset %}{{ x }}", "body", "blocks are not allowed"),
    ("{{ contact.name.upper() }}", "body", "calling 'upper()' is not allowed"),
    ("{{ nobody }}", "preheader", "unknown name 'nobody'"),
    ("{{ contact.name|safe }}", "preheader", "'safe' filter is not allowed"),
])
def test_markup_making_template_code_is_refused(mailer, source, field, message):
    fields = {"subject": "Spring news", "preheader": "", "body_md": "Hello", "preheader" if field == "preheader"
              else "body_md": source}
    with session_scope(mailer.sessions) as session, pytest.raises(InvalidInput) as refused:
        newsletters.create_newsletter(session, lists=["newsletter"], **fields)
    assert refused.value.field == field and message in refused.value.message


def test_the_preheader_gets_the_subjects_checks(mailer):
    with session_scope(mailer.sessions) as session:
        n = newsletters.create_newsletter(session, subject="Spring", preheader="Three\r\nBcc: x@evil.example  habits",
                                          body_md="Hello", lists=["newsletter"])
        assert n.preheader == "Three Bcc: x@evil.example habits"  # one line, like the subject
        with pytest.raises(InvalidInput) as refused:
            newsletters.create_newsletter(session, subject="Spring", preheader="x" * 301, body_md="Hello",
                                          lists=["newsletter"])
        assert refused.value.field == "preheader"
        n = newsletters.create_newsletter(session, subject="Spring", preheader="For {{ contact.first_name }}",
                                          body_md="Hello", lists=["newsletter"])
    preview = newsletters.preview(mailer.renderer, mailer.settings, subject="Spring", preheader=n.preheader,
                                  body_md="Hello", layout="default")
    assert '<div class="preheader"' in preview.html and ">For Alex</div>" in preview.html


def _store_attack(mailer, db, subject="Spring news", preheader="", body="Hello") -> int:
    """As an install from before these checks (or someone with database access) has it:
    the attack is in the row, past the save-time checks."""
    newsletter_id = make_newsletter(mailer, subject=subject, body=body, enqueue=False)
    db.write(sa.update(Newsletter).where(Newsletter.id == newsletter_id).values(preheader=preheader, public=True))
    with session_scope(mailer.sessions) as session:
        newsletters.enqueue_audience(session, newsletter_id, now=utcnow())
    return newsletter_id


def test_stored_attacks_leave_as_inert_html_in_the_mail_and_on_the_archive(mailer, smtp_server, client, db):
    make_audience(mailer, 2)
    ids = {name: _store_attack(mailer, db, **attack) for name, attack in ATTACKS.items()}
    result = mailer.drain()
    assert (result.sent, result.failed) == (2 * len(ATTACKS), 0)
    db.write(sa.update(Newsletter).values(status="sent", started_at=utcnow(), finished_at=utcnow()))
    for received in smtp_server.received:
        html = received.message.get_body(preferencelist=("html",)).get_content()
        assert LiveHTML(html).found == [], received.message["Subject"]
        assert "<script" not in html.lower()
    for name, newsletter_id in ids.items():
        page = client.get(f"/archive/{newsletter_id}/email.html")
        assert page.status_code == 200
        assert LiveHTML(page.text).found == [], name
        assert client.get(f"/archive/{newsletter_id}").status_code == 200


LEGIT_BODY = """Hello {{ contact.first_name }},

Our **spring** exercises, in *three* steps:

1. Stand tall — [see the video](https://clinic.example/video?a=1&b=2)
2. Breathe ("slowly") & <em>relax</em>
3. Repeat

| Day | Minutes |
|-----|---------|
| Mon | 10 |

<img src="https://clinic.example/stretch.png" alt="A stretch" width="300">

> A quote from {{ contact.name }}, <{{ contact.email }}>

{% for w in upcoming_webinars %}- {{ w.title }} at {{ w.starts_local }}
{% endfor %}
[Unsubscribe]({{ unsubscribe_url }})
"""


class Shape(HTMLParser):
    """What a reader sees: elements, their attributes (CSS compared property by
    property, the rel nh3 adds aside) and the text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.events: list = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        kept = []
        for name, value in attrs:
            if name == "rel":
                continue
            if name == "style":
                value = ";".join(sorted(re.sub(r"(?<![\d])\.(\d)", r"0.\1", p.replace(" ", ""))
                                        for p in (value or "").split(";") if p.strip()))
            kept.append((name, value))
        self.events.append(("start", tag, tuple(sorted(kept))))

    def handle_endtag(self, tag):
        self.events.append(("end", tag))

    def handle_data(self, data):
        if data.strip():
            self.events.append(("text", " ".join(data.split())))


def test_a_legitimate_issue_renders_as_before():
    compiled = _compile(subject="Spring for {{ contact.first_name }}", preheader="Three habits, {{ contact.name }}",
                        body=LEGIT_BODY)
    reader = dict(READER, upcoming_webinars=[{"title": "Spine Health", "starts_local": "Tuesday 1 December 2026",
                                              "url": "https://news.example.org/webinars/spine"}])
    before = compiled.html.render(reader)  # Jinja's output, as it was sent until now
    after = compiled.render(reader).html
    body = after[after.index(">", after.index("<body")) + 1:after.rindex("</body>")]
    assert Shape(body).events == Shape(before).events
    assert "<title>Spring for Ann</title>" in after
    assert '<a href="https://clinic.example/video?a=1&amp;b=2"' in after
    # The preheader is the first text a reader sees, not hidden text (README "Deliverability").
    assert '<div class="preheader" style="font-size:13px;' in after and 'display:none' not in after


@pytest.mark.parametrize("body", [LEGIT_BODY, "Hi {{ contact.first_name or 'there' }} <a href=\"{{ contact.name }}\">x</a>",
                                  '<a href="mailto:{{ contact.email }}" title="{{ contact.name }}">{{ contact.name }}</a>'])
def test_sanitising_once_per_issue_equals_sanitising_each_copy(body):
    """The fast path (the issue sanitised once, escaped values put in per reader) gives
    what sanitising each reader's own copy gives, for hostile values too."""
    compiled = _compile(subject="Hi {{ contact.first_name }}", preheader="{{ contact.name }}", body=body)
    hostile = ["Ann", "<img src=x onerror=alert(1)>", 'x" onclick="alert(1)', "javascript:alert(1)",
               " JaVaScRiPt:alert(1)", "data:text/html,<script>alert(1)</script>", "&amp; ' \" < >", "用户 Jöhn",
               "https://ok.example/ x", "MLRTAG x"]
    for first in hostile:
        for name in hostile:
            reader = dict(READER, contact={"first_name": first, "name": name, "email": f"{name}@example.com",
                                           "timezone": None}, unsubscribe_url=name)
            fast = compiled.body(reader)
            assert compiled.personal is not None
            slow = sanitise_html(compiled.html.render(reader))
            assert sanitise_html(fast) == slow, (first, name)
            assert LiveHTML(fast).found == []


def test_the_editor_shows_a_preheader_problem_next_to_the_preheader(staff):
    client, token = staff("editor")
    answer = client.post("/admin/newsletters/new", data={
        "csrf_token": token, "subject": "Spring", "preheader": "{{ contact.name|urlize }}", "layout": "default",
        "lists": "newsletter", "body_md": "Hello"})
    assert answer.status_code == 400
    assert 'id="preheader-error"' in answer.text and "the &#39;urlize&#39; filter is not allowed" in answer.text
    assert 'aria-describedby="preheader-error"' in answer.text


def test_a_reader_value_in_control_flow_sanitises_each_copy():
    compiled = _compile(body='<a href="https://clinic.example/" title="{% if contact.first_name %}">{% endif %}" '
                             'onmouseover="alert(1)">link</a>')
    assert compiled.personal is None  # the copy's shape depends on the reader: no shared sanitising
    nameless = dict(READER, contact=dict(READER["contact"], first_name=""))
    assert LiveHTML(compiled.html.render(nameless)).found  # live in Jinja's output for a reader with no first name
    for reader in (READER, nameless):
        assert LiveHTML(compiled.render(reader).html).found == []


@pytest.mark.parametrize("body", [
    "{% set x %}{{ contact.first_name }}{% endset %}{% if x == 'Ann' %}<b>{% endif %}hi",
    "{% filter upper %}{{ contact.first_name }}{% endfilter %}",
    "{% macro m() %}{{ contact.first_name }}{% endmacro %}{{ m()|length }}",
])
def test_captured_output_is_never_shared(body):
    """Output captured into a value (block set, filter block, macro) can be tested or
    transformed, so a template with any of them sanitises each copy."""
    compiled = _compile(body=body)
    assert compiled.personal is None
    assert compiled.body(READER) == sanitise_html(compiled.html.render(READER))
