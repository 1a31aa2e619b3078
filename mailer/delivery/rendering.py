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
from html.parser import HTMLParser

import css_inline
import jinja2
import jinja2.meta
import jinja2.sandbox
import nh3
from jinja2 import nodes
from markdown_it import MarkdownIt
from markupsafe import Markup
from markupsafe import escape as markup_escape

from mailer.delivery import addresses

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "email"


@dataclasses.dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str  # e.g. 'text/calendar; method=REQUEST; charset="utf-8"'
    data: bytes


class Skeleton:
    """What every copy made from one shared context has in common: the parts of a text
    around the reader's own values (parts[0], value, parts[1], value, ...), and their
    quoted-printable for the message, made once, when first asked for (MessageBuilder)."""

    __slots__ = ("parts", "qp_table")

    def __init__(self, parts: tuple[str, ...]):
        self.parts = parts
        self.qp_table: tuple | bool | None = None  # _qp_tables; False: this text cannot be encoded in parts


@dataclasses.dataclass(frozen=True)
class Spliced:
    """One copy's text: the shared skeleton with this reader's values between its parts."""

    skeleton: Skeleton
    personal: tuple[str, ...]  # one fewer than skeleton.parts

    def joined(self) -> str:
        parts = self.skeleton.parts
        out = [parts[0]]
        for value, part in zip(self.personal, parts[1:]):
            out += (value, part)
        return "".join(out)


@dataclasses.dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str
    attachments: tuple[Attachment, ...] = ()
    # The same text and HTML as skeleton and values, when the renderer made them so
    # (a newsletter issue): the message then encodes only the reader's values per copy.
    text_spliced: Spliced | None = dataclasses.field(default=None, compare=False)
    html_spliced: Spliced | None = dataclasses.field(default=None, compare=False)


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
    """Staff write these templates: run them sandboxed, and fail loudly on unknown names.
    In text (the subject, the text part) a statement's line leaves no empty line behind,
    so a loop over `- item` lines prints one item a line, as it reads in the editor."""
    return jinja2.sandbox.SandboxedEnvironment(autoescape=html, undefined=jinja2.StrictUndefined,
                                               trim_blocks=not html)


def markdown_to_html(markdown: str) -> str:
    """Markdown (raw HTML allowed) to sanitised HTML: no scripts, no event handlers."""
    return nh3.clean(_MARKDOWN.render(markdown), link_rel="noopener noreferrer")


# The final HTML sanitiser: every newsletter's HTML passes it after Jinja has run (the
# Markdown is cleaned before too, but template output such as `urlize` or a tag split by
# `{% if %}` could otherwise put live HTML back in). The layout's inlined CSS is kept,
# property by property.
_SENT_ATTRIBUTES = {tag: set(names) for tag, names in nh3.ALLOWED_ATTRIBUTES.items()}
_SENT_ATTRIBUTES["*"] = {"class", "style", "lang", "title", "dir"}
_STYLE_PROPERTIES = {
    "background", "background-color", "border", "border-bottom", "border-collapse", "border-color", "border-left",
    "border-radius", "border-right", "border-spacing", "border-style", "border-top", "border-width", "color",
    "display", "font", "font-family", "font-size", "font-style", "font-weight", "height", "letter-spacing",
    "line-height", "list-style", "list-style-type", "margin", "margin-bottom", "margin-left", "margin-right",
    "margin-top", "max-height", "max-width", "min-height", "min-width", "overflow", "padding", "padding-bottom",
    "padding-left", "padding-right", "padding-top", "table-layout", "text-align", "text-decoration", "text-indent",
    "text-transform", "vertical-align", "white-space", "width", "word-break", "word-wrap",
}
_SENT = nh3.Cleaner(attributes=_SENT_ATTRIBUTES, filter_style_properties=_STYLE_PROPERTIES,
                    link_rel="noopener noreferrer")
# Attributes ammonia checks as URLs: whether it keeps one depends on the value's scheme.
_URL_ATTRIBUTES = {"href", "src", "cite", "action", "formaction", "longdesc", "background", "poster", "srcset",
                   "usemap", "data", "codebase", "manifest", "ping", "xlink:href"}


# An http(s) URL made only of characters that both escape the same way (below): its
# scheme and host, then the rest.
_PLAIN_URL = re.compile(r"(https?://[A-Za-z0-9.:@\[\]-]*[/?#])[A-Za-z0-9._~:/?#@!$()*+,;=%&-]*", re.ASCII)
_url_verdicts: dict[tuple[str, str, str], bool] = {}


def _url_kept(tag: str, attribute: str, value: str) -> bool:
    """Whether the sanitiser keeps this value of a URL attribute unchanged. Ammonia
    decides by the URL's scheme, or by whether it parses at all, and a URL fails to parse
    only in its scheme or host (a path, query or fragment is percent-encoded, never
    refused); so for a plain http(s) URL the verdict is that of its scheme and host, kept
    once per process. A newsletter's unsubscribe and preferences links differ per reader
    only after the host: two nh3 calls a message (0.15 ms) become two dictionary lookups."""
    plain = _PLAIN_URL.fullmatch(value)
    key = (tag, attribute, plain.group(1)) if plain else None
    if key is not None and key in _url_verdicts:
        return _url_verdicts[key]
    filled = html_escape(value)
    kept = f' {attribute}="{filled}"' in _SENT.clean(f'<{tag} {attribute}="{filled}">')
    if key is not None:
        if len(_url_verdicts) > 1024:
            _url_verdicts.clear()
        _url_verdicts[key] = kept
    return kept


def sanitise_html(fragment: str) -> str:
    """The last step of every newsletter's HTML: no scripts, no event handlers, no
    javascript: links, only presentational CSS."""
    return _SENT.clean(fragment)


@dataclasses.dataclass(frozen=True)
class _Slots:
    """An issue's body rendered once with inert tokens for the personal values and
    sanitised; each recipient's copy substitutes their escaped values.

    It equals sanitising each recipient's copy because (1) the template reads personal
    values only in whole `{{ ... }}` outputs that read nothing else (no test, loop or
    assignment sees them: checked on the template's syntax tree, `personal_slots`), so
    the Jinja output for a recipient is the tokenised output with each token replaced by
    what that output prints for them, and that is checked per recipient to be escaped
    text; (2) every token survived the sanitiser and sits in text or in a quoted
    attribute value, where escaped text (no < > & " ') can change no markup; (3) for URL
    attributes, whose survival depends on the value, each recipient's value is run through
    the same sanitiser rule (`url_checks`) and any recipient whose value fails falls back
    to a full sanitise of their copy."""

    parts: tuple[str, ...]  # text, token, text, token, ... (odd indices are tokens)
    url_checks: tuple[tuple[str, str, str], ...]  # (tag, attribute, value with tokens)
    # The whole document around these parts (the layout's head and tail, a slot for the
    # subject in <title> when `titled`), as the skeleton each copy is encoded from.
    document: "tuple[Skeleton, bool] | None" = dataclasses.field(default=None, compare=False)


_SLOT_NONE = _Slots((), ())  # "not provable for this issue": sanitise each copy


def _document(parts: tuple[str, ...], head: str, tail: str) -> tuple[Skeleton, bool]:
    """The skeleton of head + body + tail, where the body is `parts` (text, token, text,
    ...): the shared texts, and whether the first value is the subject in <title>."""
    shared = list(parts[0::2])
    shared[-1] += tail
    title = head.split(TITLE_SLOT)
    if len(title) == 2:
        return Skeleton((title[0], title[1] + shared[0], *shared[1:])), True
    shared[0] = head + shared[0]
    return Skeleton(tuple(shared)), False


@dataclasses.dataclass(frozen=True)
class CompiledNewsletter:
    """One newsletter ready to personalise: Markdown rendered, layout applied and CSS
    inlined once, so each recipient costs only a Jinja render of three templates and the
    substitution of their values into the sanitised body."""

    subject: jinja2.Template
    text: jinja2.Template
    html: jinja2.Template  # the content of the layout's <body>
    head: str = ""  # the layout up to and including <body ...>, with TITLE_SLOT for the subject
    tail: str = ""  # </body></html>
    personal: "_PersonalSlots | None" = None  # None: each copy is sanitised whole
    slots: dict = dataclasses.field(default_factory=dict, compare=False)  # shared-context key -> _Slots
    text_personal: "_PersonalSlots | None" = None  # None: the text part is rendered whole for each copy
    # The subject: tokens for the reader's values (None: rendered whole for each copy,
    # unless `subject_shared`: it reads no reader's value at all).
    subject_personal: "_PersonalSlots | None" = None
    subject_shared: bool = False
    subject_slots: dict = dataclasses.field(default_factory=dict, compare=False)  # shared-context key -> parts
    # shared-context key -> _stripped_skeleton(the text part rendered with tokens)
    text_slots: dict = dataclasses.field(default_factory=dict, compare=False)

    def render(self, context: dict) -> RenderedEmail:
        key = self._shared_key(context)
        subject = self._subject(context, key)
        text = self.text_spliced(context, key)
        html = self.html_spliced(context, subject, key)
        return RenderedEmail(subject,
                             text.joined() if text is not None else self.text.render(context).strip() + "\n",
                             html.joined() if html is not None else self.html_document(context, subject),
                             text_spliced=text, html_spliced=html)

    def html_document(self, context: dict, subject: str) -> str:
        """The whole HTML for this recipient, sanitised as a whole (the slow path)."""
        return (self.head.replace(TITLE_SLOT, html_escape(subject, quote=False))
                + sanitise_html(self.html.render(context)) + self.tail)

    def _shared_key(self, context: dict) -> str:
        """What the copies rendered once per shared context are kept by: every value but the reader's."""
        return repr(sorted((k, v) for k, v in context.items() if k not in PERSONAL_NAMES))

    def _subject(self, context: dict, key: str) -> str:
        """The subject for this recipient: rendered once per shared context (with tokens
        for the reader's values, filled in per copy, as the text part is), else whole."""
        if self.subject_personal is None and not self.subject_shared:
            return one_line(self.subject.render(context))
        template = self.subject if self.subject_personal is None else self.subject_personal.template
        parts = _kept(self.subject_slots, key, lambda: tuple(_SLOT.split(template.render(context))))
        if len(parts) == 1:
            return one_line(parts[0])
        printed = self.subject_personal.printed(context, escape=False)
        if printed is None:
            return one_line(self.subject.render(context))
        filled = list(parts)
        for i in range(1, len(filled), 2):
            filled[i] = printed[filled[i]]
        return one_line("".join(filled))

    def text_spliced(self, context: dict, key: str | None = None) -> Spliced | None:
        """The text part for this recipient (stripped, one newline at the end) as the
        issue's skeleton and this reader's values; None: render it whole. The template is
        rendered once per shared context with tokens for the reader's values, and each
        copy fills in what those outputs print for its reader: the same text, because the
        template reads a reader's values only in whole outputs that read nothing else
        (`personal_slots`), and the text part escapes nothing."""
        printed = self.text_personal.printed(context, escape=False) if self.text_personal is not None else None
        if printed is None:
            return None
        key = self._shared_key(context) if key is None else key
        skeleton, tokens, lead, trail = _kept(
            self.text_slots, key, lambda: _stripped_skeleton(self.text_personal.template.render(context)))
        if skeleton is None:
            return None
        values = [printed[token] for token in tokens]
        # The text may begin or end with a reader's value: strip it, unless nothing is left.
        if lead:
            values[0] = values[0].lstrip()
            if not values[0]:
                return None
        if trail:
            values[-1] = values[-1].rstrip()
            if not values[-1]:
                return None
        return Spliced(skeleton, tuple(values))

    def html_spliced(self, context: dict, subject: str, key: str | None = None) -> Spliced | None:
        """The whole HTML for this recipient (the layout, the subject in its <title>, the
        sanitised body) as the issue's skeleton and this reader's escaped values; None:
        render and sanitise it whole (html_document)."""
        found = self._body_slots(context, key)
        if found is None:
            return None
        slots, printed = found
        skeleton, titled = slots.document
        values = [printed[token] for token in slots.parts[1::2]]
        if titled:
            values.insert(0, html_escape(subject, quote=False))
        return Spliced(skeleton, tuple(values))

    def body(self, context: dict) -> str:
        """The sanitised body for this recipient (without the layout around it)."""
        found = self._body_slots(context)
        if found is None:
            return sanitise_html(self.html.render(context))
        slots, printed = found
        parts = list(slots.parts)
        for i in range(1, len(parts), 2):
            parts[i] = printed[parts[i]]
        return "".join(parts)

    def _body_slots(self, context: dict, key: str | None = None) -> "tuple[_Slots, dict[str, str]] | None":
        """The issue's sanitised body with tokens for this shared context, and what this
        reader's copy prints for each token; None when their copy must be sanitised whole."""
        if self.personal is None:
            return None
        printed = self.personal.printed(context)
        if printed is None:
            return None
        key = self._shared_key(context) if key is None else key
        slots = _kept(self.slots, key, lambda: self.personal.sanitised(context, self.head, self.tail))
        if slots is _SLOT_NONE:
            return None
        for tag, attribute, value in slots.url_checks:
            if not _url_kept(tag, attribute, _SLOT.sub(lambda m: html_unescape(printed[m.group(0)]), value)):
                return None  # this reader's value would be dropped: sanitise their copy whole
        return slots, printed


def _kept(cache: dict, key: str, make):
    """cache[key], made by make() the first time: what an issue renders once per shared
    context (one per reader time zone in practice; a cache that grows past 64 starts over)."""
    found = cache.get(key)
    if found is None:
        if len(cache) > 64:
            cache.clear()
        found = cache[key] = make()
    return found


def _stripped_skeleton(tokenised: str) -> tuple:
    """(skeleton, tokens, lead, trail) of a text part rendered with tokens, stripped and
    ended by one newline as a whole text would be: the shared text at either end is
    stripped once; lead / trail say the copy's first / last value must be stripped too
    (nothing shared before / after it). (None, (), False, False) when only whitespace."""
    parts = _SLOT.split(tokenised)
    lead, trail = not parts[0].strip(), not parts[-1].strip()
    if len(parts) == 1:
        return (None, (), False, False) if lead else (Skeleton((parts[0].strip() + "\n",)), (), False, False)
    parts[0] = "" if lead else parts[0].lstrip()
    parts[-1] = "\n" if trail else parts[-1].rstrip() + "\n"
    return Skeleton(tuple(parts[0::2])), tuple(parts[1::2]), lead, trail


@dataclasses.dataclass(frozen=True)
class _PersonalSlots:
    """The body template with every output that reads a reader's values (and nothing
    else) replaced by a token; each token's expression is kept to print it per reader."""

    template: jinja2.Template
    fields: tuple[tuple[str, str, str | None], ...]  # (token, name, attribute): a bare {{ contact.x }} / {{ url }}
    expressions: tuple[tuple[str, jinja2.Template], ...]  # (token, {{ that expression }} alone)

    def printed(self, context: dict, *, escape: bool = True) -> dict[str, str] | None:
        """What this reader's copy prints for each token, escaped as autoescape does;
        None when that cannot be shown to be plain escaped text. escape=False: a
        template without autoescape (the text part), which prints values as str()."""
        printed = {}
        try:
            for token, name, attribute in self.fields:
                value = context[name] if attribute is None else context[name][attribute]
                if not escape:
                    if isinstance(value, jinja2.Undefined) or not isinstance(value, (str, int)):
                        return None  # let the full render print or raise it
                    printed[token] = str(value)
                    continue
                if isinstance(value, Markup):
                    return None  # printed as it is, not escaped
                printed[token] = str(markup_escape(value))
            for token, template in self.expressions:
                text = template.render(context)
                if escape and text != str(markup_escape(html_unescape(text))):
                    return None  # markup, not escaped text
                printed[token] = text
        except (KeyError, TypeError, jinja2.TemplateError):
            return None  # let the full render raise or decide
        return printed

    def sanitised(self, context: dict, head: str = "", tail: str = "") -> _Slots:
        raw = self.template.render(context)
        clean = sanitise_html(raw)
        found = _SlotFinder()
        found.feed(clean)
        found.close()
        if found.unsafe or found.count != len(_SLOT.findall(raw)) or len(_SLOT.findall(clean)) != found.count:
            return _SLOT_NONE
        parts = tuple(_SLOT.split(clean))
        return _Slots(parts, tuple(dict.fromkeys(found.url_checks)), _document(parts, head, tail))


# Per-recipient values: tokens stand for them while an issue is sanitised once.
PERSONAL_NAMES = ("contact", "unsubscribe_url", "preferences_url")
_SLOT_PREFIX = "MLRSLOT" + secrets.token_hex(6) + "Q"
_SLOT = re.compile(rf"({_SLOT_PREFIX}\d+X)")
TITLE_SLOT = "MLRTITLE" + secrets.token_hex(6)


def personal_slots(env: jinja2.Environment, source: str) -> _PersonalSlots | None:
    """Tokens for the outputs of `source` that read only a reader's values
    (`{{ contact.first_name }}`, `{{ contact.first_name or 'there' }}`, `{{ unsubscribe_url }}`).
    None when a reader's value is used any other way (in a test, a loop, an assignment, or
    next to another variable), so the output's shape could differ per reader."""
    tree = env.parse(source)
    if any(True for _ in tree.find_all((nodes.Macro, nodes.CallBlock, nodes.AssignBlock, nodes.FilterBlock))):
        return None  # these capture output (a reader's value with it) as a value that tests and filters can see
    tokens: dict[str, str] = {}
    fields, expressions = [], []
    for output in list(tree.find_all(nodes.Output)):
        for i, item in enumerate(output.nodes):
            if isinstance(item, nodes.TemplateData):
                continue
            names = ([item] if isinstance(item, nodes.Name) else []) + list(item.find_all(nodes.Name))
            if not any(n.name in PERSONAL_NAMES for n in names):
                continue
            if any(n.name not in PERSONAL_NAMES or n.ctx != "load" for n in names):
                return None
            key = repr(item)
            if key not in tokens:
                token = tokens[key] = f"{_SLOT_PREFIX}{len(tokens)}X"
                if isinstance(item, nodes.Name) and item.name != "contact":
                    fields.append((token, item.name, None))
                elif (isinstance(item, nodes.Getattr) and isinstance(item.node, nodes.Name)
                      and item.node.name == "contact" and not hasattr(dict, item.attr)):
                    fields.append((token, "contact", item.attr))  # the sandbox reads a dict's key the same way
                else:
                    alone = nodes.Template([nodes.Output([item], lineno=1)], lineno=1)
                    alone.set_environment(env)
                    expressions.append((token, env.template_class.from_code(
                        env, env.compile(alone), env.make_globals(None), None)))
            output.nodes[i] = nodes.TemplateData(tokens[key], lineno=item.lineno)
    if not tokens or any(n.name in PERSONAL_NAMES for n in tree.find_all(nodes.Name)):
        return None  # a reader's value left somewhere other than a whole output
    tree.set_environment(env)
    template = env.template_class.from_code(env, env.compile(tree), env.make_globals(None), None)
    return _PersonalSlots(template, tuple(fields), tuple(expressions))


class _SlotFinder(HTMLParser):
    """Where the tokens landed in sanitised HTML: text and attribute values are safe
    places; a style attribute is not (its value is rewritten property by property)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.count = 0
        self.unsafe = False
        self.url_checks: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if _SLOT.search(name) or _SLOT.search(tag):
                self.unsafe = True
            hits = len(_SLOT.findall(value or ""))
            if not hits:
                continue
            self.count += hits
            if name == "style":
                self.unsafe = True
            elif name in _URL_ATTRIBUTES:
                self.url_checks.append((tag, name, value))

    handle_startendtag = handle_starttag

    def handle_data(self, data):
        self.count += len(_SLOT.findall(data))

    def handle_comment(self, data):
        if _SLOT.search(data):
            self.unsafe = True


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


_IMG_SRC = re.compile(r'<img(?![^>]*\swidth=)([^>]*?)\ssrc="([^"]+)"')


def with_image_widths(body_html: str, widths: dict[str, int]) -> str:
    """`width` on each <img> whose address `widths` names and that has none: Outlook for
    Windows ignores CSS max-width and would show a 1200-pixel image at 1200 pixels."""
    def sized(match: re.Match) -> str:
        width = widths.get(html_unescape(match.group(2)))
        return match.group(0) if width is None else f'{match.group(0)} width="{int(width)}"'

    return _IMG_SRC.sub(sized, body_html) if widths else body_html


def body_links(body_markdown: str) -> list[str]:
    """The web links of an issue's body that are the same for every reader (those with
    template tags in them are personal, and never tracked)."""
    marks = _Placeholders()
    html = markdown_blocks(body_markdown, marks)
    return [html_unescape(url) for url in dict.fromkeys(_BODY_LINK.findall(html)) if "MLRTAG" not in url]


# A Jinja statement alone on its line ("{% for w in upcoming_webinars %}", "{% endif %}"):
# a block of its own, around Markdown blocks, not text inside a paragraph or a list item.
_BLOCK_STATEMENT = re.compile(r"[ \t]*{%-?\s*(for|endfor|if|elif|else|endif)\b.*?-?%}[ \t]*")
_ONE_LIST = re.compile(r"\A\s*<(ul|ol)>\n?(.*)</\1>\s*\Z", re.DOTALL)


def markdown_blocks(body_markdown: str, marks: "_Placeholders") -> str:
    """The body's Markdown as HTML, with its template tags as placeholder tokens. A loop or
    condition written on lines of its own wraps the Markdown blocks between them, rendered
    apart: so `{% for %}` / `- item` / `{% endfor %}` is one list of items (the list's tags
    move outside the loop), and the paragraph after `{% endfor %}` stays out of the list.
    (Rendered as one text, Markdown made the statements text in a paragraph or an item,
    which nested the second item and pulled the sign-off into the list.)"""
    segments: list[tuple[bool, str]] = []  # (is a statement, text)
    lines: list[str] = []
    for line in body_markdown.split("\n"):
        if _BLOCK_STATEMENT.fullmatch(line):
            segments += [(False, "\n".join(lines)), (True, line.strip())]
            lines = []
        else:
            lines.append(line)
    if not segments:
        return markdown_to_html(marks.protect(body_markdown))
    segments.append((False, "\n".join(lines)))
    html = [marks.token(text) if statement else markdown_to_html(marks.protect(text)) if text.strip() else ""
            for statement, text in segments]
    # A list alone between two statements (a loop over items): one list around the loop.
    for i in range(2, len(html) - 2, 2):
        match = _ONE_LIST.match(html[i])
        if match and segments[i - 1][0] and segments[i + 1][0]:
            tag, items = match.groups()
            html[i - 1], html[i], html[i + 1] = f"<{tag}>\n{html[i - 1]}", items, f"{html[i + 1]}</{tag}>\n"
    return "".join(html)


def compile_newsletter(renderer: "EmailRenderer", *, subject: str, preheader: str, body_markdown: str,
                       layout: str, context: dict, track_link=None, open_pixel: str | None = None,
                       image_widths: dict[str, int] | None = None) -> CompiledNewsletter:
    """`context` holds what is the same for every recipient (organisation, address...):
    the compiled templates read it from the context each copy is rendered with.
    With `track_link` (url → tracking url) the body's shared links are rewritten, and
    `open_pixel` adds a counting image: both only when the organisation turned tracking on.
    `image_widths` (address → pixels) gives those images a width (with_image_widths)."""
    marks = _Placeholders()
    body_html = with_image_widths(markdown_blocks(body_markdown, marks), image_widths or {})
    if track_link:
        body_html = _BODY_LINK.sub(
            lambda m: m.group(0) if "MLRTAG" in m.group(1)
            else f'href="{html_escape(track_link(html_unescape(m.group(1))))}"', body_html)
    if open_pixel:
        body_html += f'<img src="{html_escape(open_pixel)}" alt="" width="1" height="1" style="display:block">'

    # The layout's output becomes template source, so nothing it prints may be text from
    # the settings page: "{{ 7*7 }}" in the organisation's name would run. Each shared
    # value stays a variable there, filled in (and escaped) when a copy is rendered; an
    # empty one stays empty, so the layout's {% if logo_url %} still sees what it is.
    variables = {name: "{{ %s }}" % name if value else "" for name, value in context.items()}
    variables.update({name: "{{ %s }}" % name for name in RECIPIENT_FIELDS})
    layout_context = {name: marks.token(value) if value else "" for name, value in variables.items()}
    layout_context.update(body=Markup(body_html), preheader=marks.protect(preheader), subject=marks.protect(subject))
    page = renderer.env.get_template(f"layouts/{layout}.html").render(layout_context)
    head, body, tail = _split_document(renderer.inliner.inline(page), marks.nonce)
    footer = renderer.env.get_template(f"layouts/{layout}.txt").render(variables)
    text_env, html_env = staff_environment(html=False), staff_environment(html=True)
    body_source = marks.restore(body)
    html = html_env.from_string(body_source)
    text_source = body_markdown.rstrip() + "\n\n" + footer
    return CompiledNewsletter(
        subject=text_env.from_string(subject), subject_personal=personal_slots(text_env, subject),
        subject_shared=not jinja2.meta.find_undeclared_variables(text_env.parse(subject)) & set(PERSONAL_NAMES),
        text=text_env.from_string(text_source),
        html=html, head=head, tail=tail, personal=personal_slots(html_env, body_source),
        text_personal=personal_slots(text_env, text_source),
    )


def _split_document(page: str, nonce: str) -> tuple[str, str, str]:
    """The layout's document around its <body> content. The head holds nothing staff
    wrote but the subject, which goes into <title> as escaped text (TITLE_SLOT)."""
    start = page.index(">", page.index("<body")) + 1
    end = page.rindex("</body>")
    head = re.sub(r"<title>.*?</title>", f"<title>{TITLE_SLOT}</title>", page[:start], count=1, flags=re.DOTALL)
    if f"MLRTAG{nonce}" in head or f"MLRTAG{nonce}" in page[end:]:
        raise ValueError("a newsletter layout may use template values only in <title> and inside <body>")
    return head, page[start:end], page[end:]


def encode_address(display_name: str, email: str) -> str:
    """An address header value: the name quoted, or RFC 2047-encoded when not ASCII; the
    domain in IDNA A-labels; a non-ASCII local part as UTF-8 (RFC 6532: such a message
    only goes out over SMTPUTF8, see smtp_client.Pipeline._start_next)."""
    name = one_line(display_name or "")
    email = addresses.wire_address(email) if "@" in (email or "") else email
    if email.isascii():
        return formataddr((name, email), charset="utf-8")
    if not name:
        return email
    return formataddr((name, "x@x.invalid"), charset="utf-8")[:-len("<x@x.invalid>")] + f"<{email}>"


def _encode_header(value: str) -> str:
    text = one_line(value)
    if len(text) <= 70 and text.isascii() and text.isprintable():
        return text  # what Header would give: ASCII that fits one line is not folded or encoded
    charset = "us-ascii" if text.isascii() else "utf-8"
    return Header(text, charset, maxlinelen=78).encode(linesep="\r\n")


def _quoted_printable(text: str, lines: dict[str, bytes] | None = None) -> bytes:
    """Quoted-printable with CRLF line ends. Quoted-printable encodes each line on its
    own, so with `lines` (a cache kept for a batch) a line seen before, such as every
    line of an issue that does not name the reader, is encoded once: the result is the
    same bytes as encoding the whole text (tests/test_send_path.py compares them)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if lines is None:
        return _b2a_qp(text.encode("utf-8")).replace(b"\n", b"\r\n")
    *whole, last = text.split("\n")
    parts = [lines.get(line) or lines.setdefault(line, _qp_line(line, b"\n")) for line in whole]
    parts.append(_qp_line(last, b""))
    return b"".join(parts)


def _qp_line(line: str, end: bytes) -> bytes:
    return _b2a_qp(line.encode("utf-8") + end).replace(b"\n", b"\r\n")


def _base64(text: str) -> bytes:
    """Base64 in 76-character lines: several times cheaper than quoted-printable for a
    large HTML part, which no one reads in its raw form."""
    encoded = binascii.b2a_base64(text.encode("utf-8"), newline=False)
    return b"\r\n".join([encoded[i:i + 76] for i in range(0, len(encoded), 76)])


def _spliced_quoted_printable(spliced: Spliced, stuffed: bool = False) -> bytes | None:
    """Quoted-printable of spliced.joined(), from the skeleton's parts encoded once: each
    part and each of the reader's values is encoded on its own, and where one ends in
    the middle of a line a soft line break ("=" CRLF, which decoding removes) joins it to
    the next. Decoded, the same text as _quoted_printable's; per copy only the reader's
    values are encoded (a line holding the reader's name no longer costs its whole
    length: 75 µs of 86 for the benchmark's issue). Every piece then starts a line, so
    `stuffed` (dot-stuffing for SMTP's DATA) is done per piece, the shared ones once.
    None when the text holds a CR (line ends are made uniform over the whole text first)."""
    skeleton = spliced.skeleton
    tables = skeleton.qp_table
    if tables is None:
        tables = skeleton.qp_table = _qp_tables(skeleton.parts)
    if tables is False:
        return None
    table = tables[stuffed]
    # Each piece as it goes after a piece that ends at a line's end [0] or in its middle
    # [1] (then with a soft line break in front), and whether it ends in a line's middle.
    first, _, open_line = table[0]
    pieces = [first] if first else []
    encoded: dict[str, tuple[bytes, bytes, bool]] = {}  # a reader's name is often printed many times
    for value, part in zip(spliced.personal, table[1:]):
        if value:
            piece = encoded.get(value)
            if piece is None:
                if "\r" in value:
                    return None
                piece = encoded[value] = _with_soft_break(*_qp_piece(value, stuffed))
            pieces.append(piece[open_line])
            open_line = piece[2]
        if part[0]:
            pieces.append(part[open_line])
            open_line = part[2]
    return b"".join(pieces)


def _qp_tables(parts: tuple[str, ...]) -> tuple | bool:
    """The shared parts' pieces (_with_soft_break of their quoted-printable), plain and
    dot-stuffed; False when a part holds a CR."""
    if any("\r" in part for part in parts):
        return False
    return tuple(tuple(_with_soft_break(*_qp_piece(part, stuffed)) for part in parts) for stuffed in (False, True))


def _with_soft_break(encoded: bytes, ends_open: bool) -> tuple[bytes, bytes, bool]:
    """A piece as it goes after a line's end, and after a piece ending mid-line (a soft
    line break first); an empty piece stays empty (and keeps the line as it was)."""
    return encoded, (b"=\r\n" + encoded) if encoded else b"", ends_open


def _qp_piece(text: str, stuffed: bool = False) -> tuple[bytes, bool]:
    """Quoted-printable of a piece of text that starts a line and may end in the middle of
    one: (the bytes, with CRLF line ends; whether it ends mid-line). A piece ending mid-line
    is followed by a soft line break, so its last line keeps room for the "=" (76 at most)."""
    encoded = _b2a_qp(text.encode("utf-8"))
    ends_open = bool(text) and not text.endswith("\n")
    if ends_open and len(encoded) - encoded.rfind(b"\n") - 1 > 75:
        cut = len(encoded) - (3 if encoded[-3:-2] == b"=" else 1)  # before the last character or =XX
        encoded = encoded[:cut] + b"=\n" + encoded[cut:]
    encoded = encoded.replace(b"\n", b"\r\n")
    return _dot_stuffed(encoded) if stuffed else encoded, ends_open


def _b2a_qp(data: bytes) -> bytes:
    """binascii.b2a_qp for text, with LF line ends; but where it writes a 75-character line
    and then a trailing space or tab as =20 or =09 (78 characters, over RFC 2045's 76), a
    soft line break goes before that last one."""
    encoded = binascii.b2a_qp(data, istext=True)
    if b"=20\n" not in encoded and b"=09\n" not in encoded and not encoded.endswith((b"=20", b"=09")):
        return encoded
    lines = encoded.split(b"\n")
    for i, line in enumerate(lines):
        if len(line) > 76 and line[-3:-2] == b"=":
            lines[i] = line[:-3] + b"=\n" + line[-3:]
    return b"\n".join(lines)


def _dot_stuffed(lines: bytes) -> bytes:
    """Lines (starting at a line's start) with each line that starts with "." given one
    more (RFC 5321 §4.5.2), as they go after DATA."""
    lines = lines.replace(b"\r\n.", b"\r\n..")
    return b"." + lines if lines[:1] == b"." else lines


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
        self.html_quoted_printable = self.alternative[1].replace(b"base64", b"quoted-printable")
        self.text_lines: dict[str, bytes] = {}  # quoted-printable of each text line seen in this batch

    @staticmethod
    def _alternative(boundary: str) -> tuple[bytes, bytes, bytes, bytes]:
        return (f"Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n"
                f"--{boundary}\r\nContent-Type: text/plain; charset=\"utf-8\"\r\n"
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode(), \
            (f"\r\n--{boundary}\r\nContent-Type: text/html; charset=\"utf-8\"\r\n"
             "Content-Transfer-Encoding: base64\r\n\r\n").encode(), \
            f"\r\n--{boundary}--\r\n".encode(), boundary.encode()

    def build(self, rendered: RenderedEmail, *, to_email: str, to_name: str, message_id: str,
              headers: dict[str, str] | None = None, stuffed: bool = False) -> bytes:
        """The message's bytes, CRLF line ends only (no bare CR or LF anywhere). With
        `stuffed`, dot-stuffed as well: ready to follow DATA with only the final "." line
        added (smtp_client), instead of scanning the whole message again for both."""
        lines = [f"To: {encode_address(to_name, to_email)}", f"Subject: {_encode_header(rendered.subject)}",
                 f"Message-ID: {one_line(message_id)}"]
        lines.extend(f"{name}: {one_line(value)}" for name, value in (headers or {}).items())
        fields = "\r\n".join(lines).encode()
        if fields.count(b"\r") != fields.count(b"\r\n") or fields.count(b"\n") != fields.count(b"\r\n"):
            raise ValueError("a header would hold a bare CR or LF")  # (every value above is one line)
        start, middle, end, _ = self.alternative
        text = (_spliced_quoted_printable(rendered.text_spliced, stuffed)
                if rendered.text_spliced is not None else None)
        if text is None:
            text = _quoted_printable(rendered.text, self.text_lines)
            if stuffed:
                text = _dot_stuffed(text)  # only the text part can start a line with "." (base64 cannot)
        # An issue's HTML, encoded once per issue, goes as quoted-printable (a quarter smaller
        # than base64 for HTML); HTML encoded whole for one message goes as base64, which
        # costs a fraction of quoted-printable's CPU.
        html = (_spliced_quoted_printable(rendered.html_spliced, stuffed)
                if rendered.html_spliced is not None else None)
        if html is None:
            html = _base64(rendered.html)
        else:
            middle = self.html_quoted_printable
        body = [start, text, middle, html, end]
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
        return b"".join((self.head, fields, b"\r\n", *body))

