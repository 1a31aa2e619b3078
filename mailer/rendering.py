"""Email rendering: Jinja templates per kind (subject.txt, body.txt, body.html),
staff-written newsletters (Markdown, sandboxed Jinja), CSS inlining, and the MIME
message for exactly one recipient."""
from __future__ import annotations

import dataclasses
import datetime as dt
import binascii
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path

import re
import secrets
from html import escape as html_escape
from html import unescape as html_unescape

import css_inline
import jinja2
import jinja2.sandbox
import nh3
from markdown_it import MarkdownIt
from markupsafe import Markup

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "email"


@dataclasses.dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str  # e.g. 'text/calendar; method=REQUEST; charset="utf-8"'
    data: bytes


@dataclasses.dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str
    attachments: tuple[Attachment, ...] = ()


def one_line(text: str) -> str:
    """Header-safe text: every run of whitespace (CR and LF included) becomes one space."""
    return " ".join(text.split())


class EmailRenderer:
    """Compiled templates are cached by Jinja, so each kind is compiled once per process."""

    def __init__(self, template_dir: Path = TEMPLATES):
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(template_dir)),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.inliner = css_inline.CSSInliner(keep_style_tags=False)

    def render(self, kind: str, context: dict) -> RenderedEmail:
        subject = one_line(self.env.get_template(f"{kind}/subject.txt").render(context))
        text = self.env.get_template(f"{kind}/body.txt").render(context).strip() + "\n"
        html = self.inliner.inline(self.env.get_template(f"{kind}/body.html").render(context))
        return RenderedEmail(subject, text, html)


# Staff-written templates (newsletters) ------------------------------------------------

_JINJA_TAG = re.compile(r"{{.*?}}|{%.*?%}", re.DOTALL)
_MARKDOWN = MarkdownIt("commonmark", {"html": True, "linkify": False, "typographer": False}).enable("table")
# Per-recipient values the layout shows; they stay Jinja expressions in the compiled template.
RECIPIENT_FIELDS = ("unsubscribe_url", "preferences_url")


def staff_environment(*, html: bool) -> jinja2.sandbox.SandboxedEnvironment:
    """Staff write these templates: run them sandboxed, and fail loudly on unknown names."""
    return jinja2.sandbox.SandboxedEnvironment(autoescape=html, undefined=jinja2.StrictUndefined)


def markdown_to_html(markdown: str) -> str:
    """Markdown (raw HTML allowed) to sanitised HTML: no scripts, no event handlers."""
    return nh3.clean(_MARKDOWN.render(markdown), link_rel="noopener noreferrer")


@dataclasses.dataclass(frozen=True)
class CompiledNewsletter:
    """One newsletter ready to personalise: Markdown rendered, layout applied and CSS
    inlined once, so each recipient costs only a Jinja render of three templates."""

    subject: jinja2.Template
    text: jinja2.Template
    html: jinja2.Template

    def render(self, context: dict) -> RenderedEmail:
        return RenderedEmail(one_line(self.subject.render(context)), self.text.render(context).strip() + "\n",
                             self.html.render(context))


class _Placeholders:
    """Swaps Jinja tags for inert tokens while Markdown, sanitising and CSS inlining run."""

    def __init__(self):
        self.nonce = secrets.token_hex(4)
        self.tags: dict[str, str] = {}

    def token(self, tag: str) -> str:
        token = f"MLRTAG{self.nonce}N{len(self.tags)}X"
        self.tags[token] = tag
        return token

    def protect(self, text: str) -> str:
        return _JINJA_TAG.sub(lambda m: self.token(m.group(0)), text)

    def restore(self, text: str) -> str:
        return re.sub(rf"MLRTAG{self.nonce}N\d+X", lambda m: self.tags[m.group(0)], text)


_BODY_LINK = re.compile(r'href="(https?://[^"]+)"')


def body_links(body_markdown: str) -> list[str]:
    """The web links of an issue's body that are the same for every reader (those with
    template tags in them are personal, and never tracked)."""
    marks = _Placeholders()
    html = markdown_to_html(marks.protect(body_markdown))
    return [html_unescape(url) for url in dict.fromkeys(_BODY_LINK.findall(html)) if "MLRTAG" not in url]


def compile_newsletter(renderer: "EmailRenderer", *, subject: str, preheader: str, body_markdown: str,
                       layout: str, context: dict, track_link=None, open_pixel: str | None = None) -> CompiledNewsletter:
    """`context` holds what is the same for every recipient (organisation, address...).
    With `track_link` (url → tracking url) the body's shared links are rewritten, and
    `open_pixel` adds a counting image: both only when the organisation turned tracking on."""
    marks = _Placeholders()
    body_html = markdown_to_html(marks.protect(body_markdown))
    if track_link:
        body_html = _BODY_LINK.sub(
            lambda m: m.group(0) if "MLRTAG" in m.group(1)
            else f'href="{html_escape(track_link(html_unescape(m.group(1))))}"', body_html)
    if open_pixel:
        body_html += f'<img src="{html_escape(open_pixel)}" alt="" width="1" height="1" style="display:block">'

    layout_context = dict(context, body=Markup(body_html), preheader=preheader, subject=marks.protect(subject),
                          **{name: marks.token("{{ %s }}" % name) for name in RECIPIENT_FIELDS})
    page = renderer.env.get_template(f"layouts/{layout}.html").render(layout_context)
    html = marks.restore(renderer.inliner.inline(page))
    footer = renderer.env.get_template(f"layouts/{layout}.txt").render(
        dict(context, **{name: "{{ %s }}" % name for name in RECIPIENT_FIELDS}))
    text_env, html_env = staff_environment(html=False), staff_environment(html=True)
    return CompiledNewsletter(
        subject=text_env.from_string(subject),
        text=text_env.from_string(body_markdown.rstrip() + "\n\n" + footer),
        html=html_env.from_string(html),
    )


def encode_address(display_name: str, email: str) -> str:
    """An address header value: the name quoted, or RFC 2047-encoded when not ASCII."""
    return formataddr((one_line(display_name or ""), email), charset="utf-8")


def _encode_header(value: str) -> str:
    text = one_line(value)
    charset = "us-ascii" if text.isascii() else "utf-8"
    return Header(text, charset, maxlinelen=78).encode(linesep="\r\n")


def _quoted_printable(text: str) -> bytes:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    return binascii.b2a_qp(lines, istext=True).replace(b"\n", b"\r\n")


def _base64(text: str) -> bytes:
    """Base64 in 76-character lines: several times cheaper than quoted-printable for a
    large HTML part, which no one reads in its raw form."""
    encoded = binascii.b2a_base64(text.encode("utf-8"), newline=False)
    return b"\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))


class MessageBuilder:
    """Assembles one-recipient messages (text and HTML alternatives, and attachments).
    What is the same for every message of a batch (sender, date, MIME skeleton) is
    encoded once."""

    def __init__(self, *, from_addr: str, reply_to: str, date: dt.datetime):
        self.boundary = f"=_mailer_{secrets.token_hex(12)}"  # "=_" occurs neither in quoted-printable nor base64
        self.head = (f"From: {encode_address(*parseaddr(from_addr))}\r\n"
                     f"Reply-To: {encode_address(*parseaddr(reply_to))}\r\n"
                     f"Date: {format_datetime(date)}\r\nMIME-Version: 1.0\r\n").encode()
        # Neither boundary may begin with the other.
        self.mixed_boundary = f"=_mixed_{secrets.token_hex(12)}"
        self.alternative = self._alternative(self.boundary)

    @staticmethod
    def _alternative(boundary: str) -> tuple[bytes, bytes, bytes, bytes]:
        return (f"Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n"
                f"--{boundary}\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n"
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode(), \
            (f"\r\n--{boundary}\r\nContent-Type: text/html; charset=\"utf-8\"\r\n"
             "Content-Transfer-Encoding: base64\r\n\r\n").encode(), \
            f"\r\n--{boundary}--\r\n".encode(), boundary.encode()

    def build(self, rendered: RenderedEmail, *, to_email: str, to_name: str, message_id: str,
              headers: dict[str, str] | None = None) -> bytes:
        lines = [f"To: {encode_address(to_name, to_email)}", f"Subject: {_encode_header(rendered.subject)}",
                 f"Message-ID: {one_line(message_id)}"]
        lines.extend(f"{name}: {one_line(value)}" for name, value in (headers or {}).items())
        start, middle, end, _ = self.alternative
        body = [start, _quoted_printable(rendered.text), middle, _base64(rendered.html), end]
        if rendered.attachments:
            mixed = self.mixed_boundary
            parts = [f"Content-Type: multipart/mixed; boundary=\"{mixed}\"\r\n\r\n--{mixed}\r\n".encode(), *body]
            for attachment in rendered.attachments:
                name = one_line(attachment.filename).replace('"', "")
                parts.append((f"\r\n--{mixed}\r\nContent-Type: {one_line(attachment.content_type)}; name=\"{name}\"\r\n"
                              f"Content-Disposition: attachment; filename=\"{name}\"\r\n"
                              "Content-Transfer-Encoding: base64\r\n\r\n").encode())
                encoded = binascii.b2a_base64(attachment.data, newline=False)
                parts.append(b"\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76)))
            parts.append(f"\r\n--{mixed}--\r\n".encode())
            body = parts
        return b"".join((self.head, "\r\n".join(lines).encode(), b"\r\n", *body))


def format_local(when: dt.datetime, zone: str) -> str:
    """A UTC instant as a reader in `zone` sees it: 'Tuesday 1 December 2026, 18:00 GMT'."""
    from zoneinfo import ZoneInfo

    local = when.astimezone(ZoneInfo(zone))
    return f"{local:%A} {local.day} {local:%B %Y, %H:%M} {local.tzname()}"
