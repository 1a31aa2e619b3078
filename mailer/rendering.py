"""Email rendering: Jinja templates per kind (subject.txt, body.txt, body.html),
CSS inlined into the HTML part, and the MIME message for exactly one recipient."""
from __future__ import annotations

import dataclasses
import datetime as dt
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from pathlib import Path

import css_inline
import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "email"
# Fold only past RFC 5322's hard limit: below it, the email package would fold a long
# URL by turning it into an RFC 2047 encoded-word, which List-Unsubscribe must not contain.
MAIL_POLICY = SMTP.clone(max_line_length=998)


@dataclasses.dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


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


def make_address(display_name: str, email: str) -> Address:
    return Address(display_name=one_line(display_name or ""), addr_spec=email)


def parse_address(value: str) -> Address:
    name, email = parseaddr(value)
    return make_address(name, email)


def build_message(rendered: RenderedEmail, *, from_addr: str, reply_to: str, to_email: str, to_name: str,
                  message_id: str, date: dt.datetime, headers: dict[str, str] | None = None) -> EmailMessage:
    msg = EmailMessage(policy=MAIL_POLICY)
    msg["From"] = parse_address(from_addr)
    msg["To"] = make_address(to_name, to_email)
    msg["Reply-To"] = parse_address(reply_to)
    msg["Subject"] = rendered.subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    for name, value in (headers or {}).items():
        msg[name] = one_line(value)
    msg.set_content(rendered.text, cte="quoted-printable")
    msg.add_alternative(rendered.html, subtype="html", cte="quoted-printable")
    return msg


def format_local(when: dt.datetime, zone: str) -> str:
    """A UTC instant as a reader in `zone` sees it: 'Tuesday 1 December 2026, 18:00 GMT'."""
    from zoneinfo import ZoneInfo

    local = when.astimezone(ZoneInfo(zone))
    return f"{local:%A} {local.day} {local:%B %Y, %H:%M} {local.tzname()}"
