"""Newsletters: compose (with template checks), schedule, start sending when due
(the audience materialised into the outbox in one statement), and the mail each
recipient gets."""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
from zoneinfo import ZoneInfo

from html.parser import HTMLParser

import jinja2
import jinja2.meta
import sqlalchemy as sa
from apscheduler.triggers.cron import CronTrigger
from jinja2 import nodes
from sqlalchemy.orm import Session, selectinload

from mailer.audience import fields, segments
from mailer.campaigns import blog
from mailer.campaigns import media
from mailer.delivery import outbox, suppression
from mailer.delivery.registry import Kind
from mailer.db import dialect_insert, is_postgres, newest_first, utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.models import (NOT_YET_SENT, PENDING_DELIVERY, ConsentAction, ConsentEvent, Contact, Delivery, DeliveryStatus,
                           MailingList, Newsletter, NewsletterLink, NewsletterStatus, Priority, Rhythm, Subscription,
                           Segment, SubscriptionStatus, Suppression, newsletter_lists)
from mailer import clock
from mailer.clock import format_local
from mailer.delivery.rendering import (TEMPLATES, CompiledNewsletter, RenderedEmail, body_links, compile_newsletter,
                                       one_line, staff_environment)

NEWSLETTER = "newsletter"
NEWSLETTER_TEST = "newsletter_test"
RHYTHM_WARNING = "rhythm_warning"
BLOG_DIGEST = "blog_digest"  # staff asked to approve a digest drafted from the blog
SUBJECT_MAX = 80
TEST_MAX = 10
# What a newsletter's subject and body may use, and the attributes of each (None: a plain value).
TEMPLATE_NAMES: dict[str, set[str] | None] = {
    "contact": {"first_name", "name", "email", "fields"},  # fields: {{ contact.fields.<key> }}, custom fields
    "unsubscribe_url": None,
    "preferences_url": None,
    "archive_url": None,
    "upcoming_webinars": None,  # a list of {title, starts_local, url}: loop over it
    "new_posts": None,  # the blog's posts since the previous issue: {title, link, summary, image, published}
    "organisation": None,
    "postal_address": None,
    "base_url": None,
}


# Composing ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TemplateProblem:
    field: str  # "subject" or "body"
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.field}, line {self.line}: {self.message}"


def layouts() -> list[str]:
    return sorted(p.stem for p in (TEMPLATES / "layouts").glob("*.html"))


# Ready blocks: a line of the body holding only `{{ name() }}` stands for that Markdown.
BLOCKS = {"blog_posts": blog.BLOG_POSTS_BLOCK}
_BLOCK_LINE = re.compile(r"^[ \t]*{{-?\s*(%s)\(\)\s*-?}}[ \t]*$" % "|".join(BLOCKS), re.MULTILINE)


def expand_blocks(body_md: str) -> str:
    """The body with each ready-block line replaced by the block's Markdown."""
    return _BLOCK_LINE.sub(lambda m: BLOCKS[m.group(1)], body_md)


def check_template(field: str, source: str, field_keys: set[str] | None = None) -> list[TemplateProblem]:
    """Syntax errors and unknown names, each with its line, before anything is scheduled.
    With `field_keys` (the custom fields' keys), contact.fields.<key> must name one of them.
    A ready block's line in the body is ours and checked by the tests, not here."""
    if field == "body":
        source = _BLOCK_LINE.sub("", source)
    try:
        tree = staff_environment(html=True).parse(source)  # (the text one trims lines, which moves error lines)
    except jinja2.TemplateSyntaxError as exc:
        return [TemplateProblem(field, exc.lineno, exc.message or "syntax error")]
    problems = []
    unknown = jinja2.meta.find_undeclared_variables(tree) - set(TEMPLATE_NAMES)
    for name in tree.find_all(nodes.Name):
        if name.ctx == "load" and name.name in unknown:
            problems.append(TemplateProblem(field, name.lineno, f"put {{{{ {name.name}() }}}} on a line of its own "
                                                                "in the body" if name.name in BLOCKS
                                            else f"unknown name '{name.name}'"))
            unknown.discard(name.name)
    for attribute in tree.find_all(nodes.Getattr):
        if isinstance(attribute.node, nodes.Name) and attribute.node.name in TEMPLATE_NAMES:
            allowed = TEMPLATE_NAMES[attribute.node.name] or set()
            if attribute.attr not in allowed:
                problems.append(TemplateProblem(
                    field, attribute.lineno, f"'{attribute.node.name}' has no '{attribute.attr}'"
                    + (f" (it has: {', '.join(sorted(allowed))})" if allowed else "")))
        elif (field_keys is not None and isinstance(attribute.node, nodes.Getattr) and attribute.node.attr == "fields"
              and isinstance(attribute.node.node, nodes.Name) and attribute.node.node.name == "contact"
              and attribute.attr not in field_keys):
            problems.append(TemplateProblem(
                field, attribute.lineno, f"there is no custom field '{attribute.attr}' (contact.fields has: "
                + (", ".join(sorted(field_keys)) or "none yet; add fields under Fields") + ")"))
    problems.extend(_markup_problems(field, tree))
    return sorted(problems, key=lambda p: p.line)


# Raw HTML is allowed only in the Markdown, where it is cleaned. What a template makes
# itself must be text, which autoescape escapes: anything that yields Markup (HTML Jinja
# trusts) is refused, and so is calling methods (Markup's .replace or .translate edit
# markup; a filter does the same job on text). Of Jinja's builtin filters these return
# Markup from text: safe, urlize, xmlattr, tojson (its quotes end an attribute); 'attr'
# fetches methods and map/select apply filters by name. The globals: lipsum() returns
# Markup; macros, call blocks and {% set %}...{% endset %} blocks return the template's
# own markup as Markup. Filters that keep Markup only when given it (indent, wordwrap,
# format, replace, truncate, center, upper...) are harmless once nothing makes Markup.
# Whatever gets through is still sanitised after rendering (rendering.sanitise_html).
MARKUP_FILTERS = {"safe": "write HTML in the Markdown itself (it is cleaned)",
                  "urlize": "write the link in the Markdown: <https://example.com> or [text](https://example.com)",
                  "xmlattr": "write attributes in the Markdown",
                  "tojson": "it is not escaped for HTML attributes",
                  "attr": "it reaches methods; use the filters"}
ALLOWED_CALLS = {"range", "dict", "namespace", "cycler", "joiner"}


def _markup_problems(field: str, tree) -> list[TemplateProblem]:
    problems = []
    for node in tree.find_all((nodes.Filter, nodes.EvalContextModifier, nodes.Call, nodes.Macro, nodes.CallBlock,
                               nodes.AssignBlock)):
        if isinstance(node, nodes.EvalContextModifier):
            problems.append(TemplateProblem(field, node.lineno, "autoescape cannot be switched off: values are "
                                                                "always escaped"))
        elif isinstance(node, nodes.Filter):
            if node.name in MARKUP_FILTERS:
                problems.append(TemplateProblem(field, node.lineno, f"the '{node.name}' filter is not allowed: "
                                                                    f"{MARKUP_FILTERS[node.name]}"))
            elif node.name in {"map", "select", "reject", "selectattr", "rejectattr"} and any(
                    isinstance(arg, nodes.Const) and arg.value in MARKUP_FILTERS for arg in node.args):
                problems.append(TemplateProblem(field, node.lineno, f"'{node.name}' cannot apply a filter that is "
                                                                    "not allowed"))
        elif isinstance(node, (nodes.Macro, nodes.CallBlock)):
            problems.append(TemplateProblem(field, node.lineno, "macros are not allowed in a newsletter"))
        elif isinstance(node, nodes.AssignBlock):
            problems.append(TemplateProblem(field, node.lineno, "{% set %}...{% endset %} blocks are not allowed: "
                                                                "use {% set name = value %}"))
        elif isinstance(node, nodes.Call):
            callee = node.node
            if isinstance(callee, nodes.Name) and callee.name in ALLOWED_CALLS | {"loop"} | set(BLOCKS):
                continue  # (a block's name anywhere but alone on a body line is reported as a name)
            if (isinstance(callee, nodes.Getattr) and isinstance(callee.node, nodes.Name)
                    and callee.node.name == "loop" and callee.attr in {"cycle", "changed"}):
                continue
            what = callee.name if isinstance(callee, nodes.Name) else getattr(callee, "attr", "this")
            problems.append(TemplateProblem(field, node.lineno, f"calling '{what}()' is not allowed in a newsletter"
                                                                " (use a filter, e.g. |upper or |replace)"))
    return problems


def template_problems(subject: str, preheader: str, body_md: str,
                      field_keys: set[str] | None = None) -> list[TemplateProblem]:
    """The checks every staff-written part of an issue gets: the preheader is a template
    like the subject (one line, the same names, the same refusals)."""
    return (check_template("subject", subject, field_keys) + check_template("preheader", preheader, field_keys)
            + check_template("body", body_md, field_keys))


def check_content(*, subject: str, preheader: str, body_md: str, layout: str, what: str = "A newsletter",
                  field_keys: set[str] | None = None) -> tuple[str, str]:
    """The checks at save of staff-written mail in a layout (a newsletter, a sequence's
    step): lengths, the layout, the template checks. Returns the subject and preheader
    as stored (one line each); InvalidInput names the first field at fault."""
    subject = " ".join((subject or "").split())
    if not subject:
        raise InvalidInput("subject", f"{what} needs a subject.")
    if len(subject) > 300:
        raise InvalidInput("subject", "The subject is limited to 300 characters.")
    preheader = one_line(preheader or "")
    if len(preheader) > 300:
        raise InvalidInput("preheader", "The preheader is limited to 300 characters.")
    if layout not in layouts():
        raise InvalidInput("layout", f"Unknown layout '{layout}'; choose one of: {', '.join(layouts())}.")
    problems = template_problems(subject, preheader, body_md or "", field_keys)
    if problems:
        first = problems[0]
        raise InvalidInput(first.field, "; ".join(str(p) for p in problems))
    return subject, preheader


def _validated(session: Session, *, subject: str, preheader: str, body_md: str, layout: str,
               lists: list[str]) -> list[MailingList]:
    check_content(subject=subject, preheader=preheader, body_md=body_md, layout=layout,
                  field_keys=fields.template_keys(session))
    found = session.scalars(sa.select(MailingList).where(MailingList.slug.in_(lists or []))).all()
    if not lists or len(found) != len(set(lists)):
        raise InvalidInput("lists", "Choose at least one existing list.")
    _refuse_archived(found)
    return list(found)


def _refuse_archived(mailing_lists) -> None:
    """An archived list gets no new issues (audience.lists: archiving waits for planned ones)."""
    archived = [ml.name for ml in mailing_lists if ml.archived_at is not None]
    if archived:
        raise InvalidInput("lists", f"Archived, so no new issues: {', '.join(archived)}. Choose open lists.")


def create_newsletter(session: Session, *, subject: str, body_md: str, lists: list[str], preheader: str = "",
                      layout: str = "default", public: bool = False, segment_id: int | None = None) -> Newsletter:
    """A draft for the active subscribers of `lists`, or of those only the ones in the
    segment `segment_id` (a segment narrows; it never adds anyone)."""
    mailing_lists = _validated(session, subject=subject, preheader=preheader, body_md=body_md, layout=layout,
                               lists=lists)
    newsletter = Newsletter(subject=" ".join(subject.split()), preheader=one_line(preheader or ""), body_md=body_md,
                            layout=layout, lists=mailing_lists, status=NewsletterStatus.DRAFT, public=public,
                            segment_id=_segment(session, segment_id))
    session.add(newsletter)
    session.flush()
    return newsletter


def _segment(session: Session, segment_id: int | None) -> int | None:
    if segment_id is None:
        return None
    segment = session.get(Segment, segment_id)
    if segment is None or segment.archived_at is not None:
        raise InvalidInput("segment", "Choose a segment that exists and is not archived, or none.")
    return segment.id


def update_newsletter(session: Session, newsletter_id: int, *, subject: str, body_md: str, lists: list[str],
                      preheader: str = "", layout: str = "default", public: bool = False,
                      segment_id: int | None = None) -> Newsletter:
    """Change a draft or a scheduled issue (its schedule stays)."""
    newsletter = get_newsletter(session, newsletter_id)
    _changeable(newsletter)
    newsletter.lists = _validated(session, subject=subject, preheader=preheader, body_md=body_md, layout=layout,
                                  lists=lists)
    newsletter.subject, newsletter.preheader = " ".join(subject.split()), one_line(preheader or "")
    newsletter.body_md, newsletter.layout, newsletter.public = body_md, layout, public
    newsletter.segment_id = _segment(session, segment_id)
    if newsletter.status == NewsletterStatus.SCHEDULED and newsletter.send_local_time:
        session.flush()  # other lists may mean other zones: the send starts with the earliest of them
        newsletter.send_at = min(reader_send_times(session, newsletter))
    return newsletter


def list_newsletters(session: Session, *, before_id: int | None = None, limit: int = 50) -> list[Newsletter]:
    """Newest first; `before_id` continues a page (cursor pagination). One more row than
    asked is returned when there is a next page."""
    stmt = sa.select(Newsletter).options(selectinload(Newsletter.lists))
    return list(session.scalars(newest_first(stmt, Newsletter.id, before_id=before_id, limit=limit)))


def get_newsletter(session: Session, newsletter_id: int) -> Newsletter:
    newsletter = session.get(Newsletter, newsletter_id)
    if newsletter is None:
        raise NotFound(f"no newsletter {newsletter_id}")
    return newsletter


def _changeable(newsletter: Newsletter) -> None:
    if newsletter.status not in (NewsletterStatus.DRAFT, NewsletterStatus.SCHEDULED):
        raise InvalidInput("status", f"The newsletter is {newsletter.status}; it can no longer be changed.")


def duplicate_newsletter(session: Session, newsletter_id: int) -> Newsletter:
    """A new draft with an issue's text, layout, lists and segment (any issue, sent ones too:
    last month's is the usual start of this month's)."""
    source = get_newsletter(session, newsletter_id)
    copy = Newsletter(subject=source.subject, preheader=source.preheader, body_md=source.body_md,
                      layout=source.layout, lists=list(source.lists), public=source.public,
                      segment_id=source.segment_id if source.segment_id and session.get(Segment, source.segment_id)
                      .archived_at is None else None, status=NewsletterStatus.DRAFT)
    session.add(copy)
    session.flush()
    return copy


def delete_newsletter(session: Session, newsletter_id: int) -> str:
    """Delete a draft (nothing of it was sent; its test copies' rows go too). Returns its subject."""
    newsletter = get_newsletter(session, newsletter_id)
    if newsletter.status != NewsletterStatus.DRAFT:
        raise InvalidInput("status", f"Only a draft can be deleted; this one is {newsletter.status} "
                                     "(cancel it instead, and its record stays).")
    subject = newsletter.subject
    session.execute(sa.delete(Delivery).where(Delivery.kind == NEWSLETTER_TEST, Delivery.ref_id == newsletter.id,
                                              Delivery.status.in_(NOT_YET_SENT)))
    session.execute(sa.update(Delivery).where(Delivery.kind == NEWSLETTER_TEST, Delivery.ref_id == newsletter.id)
                    .values(ref_id=None))
    newsletter.lists = []
    session.flush()
    session.delete(newsletter)
    return subject


# Scheduling -----------------------------------------------------------------------

def schedule(session: Session, newsletter_id: int, send_at: dt.datetime, *, now: dt.datetime) -> Newsletter:
    """Send at `send_at` (aware; use clock.local_to_utc for a wall-clock time). Allowed until sending starts."""
    newsletter = get_newsletter(session, newsletter_id)
    _changeable(newsletter)
    _refuse_unsendable(session, newsletter)
    _refuse_archived(newsletter.lists)
    if send_at.tzinfo is None:
        raise InvalidInput("send_at", "The send time needs a time zone.")
    if send_at < now - dt.timedelta(minutes=1):
        raise InvalidInput("send_at", "That time has passed; choose a later one, or send now.")
    newsletter.send_at = send_at.astimezone(dt.timezone.utc)
    newsletter.send_local_time = newsletter.send_zone_fallback = None
    newsletter.status = NewsletterStatus.SCHEDULED
    return newsletter


def _refuse_unsendable(session: Session, newsletter: Newsletter) -> None:
    """Scheduling refuses, with the pre-flight's words, an issue whose copies would fail to
    render (a template problem, e.g. a name that no longer exists), instead of queuing mail
    that fails. (The console also refuses an empty audience, on its confirmation page.)"""
    problems = template_problems(newsletter.subject, newsletter.preheader or "", newsletter.body_md)
    if problems:
        raise InvalidInput(problems[0].field, "Not scheduled: " + "; ".join(str(p) for p in problems))


LOCAL_TIME_FORMAT = "%Y-%m-%dT%H:%M"


def reader_local_time(newsletter: Newsletter) -> dt.datetime | None:
    """The wall-clock time (naive) an issue scheduled in its readers' own zones goes out at."""
    return dt.datetime.strptime(newsletter.send_local_time, LOCAL_TIME_FORMAT) if newsletter.send_local_time else None


def schedule_in_reader_zones(session: Session, newsletter_id: int, local: dt.datetime, *, fallback_zone: str,
                             now: dt.datetime) -> Newsletter:
    """Send at the wall-clock time `local` (naive, e.g. 2027-03-10 09:00) in each reader's own
    zone; readers without a known zone get it at that time in `fallback_zone` (the
    organisation's). Sending starts at the first of those instants among today's audience
    (send_at) and lasts until the last; refused when some readers' time has already passed."""
    newsletter = get_newsletter(session, newsletter_id)
    _changeable(newsletter)
    _refuse_unsendable(session, newsletter)
    _refuse_archived(newsletter.lists)
    if fallback_zone not in clock.known_zones():
        raise InvalidInput("timezone", f"Unknown time zone '{fallback_zone}'.")
    if not 2000 <= local.year <= 2999:
        raise InvalidInput("send_at", "Give a year between 2000 and 2999.")
    newsletter.send_local_time = local.replace(tzinfo=None).strftime(LOCAL_TIME_FORMAT)
    newsletter.send_zone_fallback = fallback_zone
    times = reader_send_times(session, newsletter)
    passed = [zone for instant, zones in times.items() if instant < now - dt.timedelta(minutes=1)
              for zone in zones]
    if passed:
        names = sorted({clock.zone_or(zone, fallback_zone) for zone in passed})
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise InvalidInput("send_at", f"{local:%Y-%m-%d %H:%M} has already passed for readers in {shown}; "
                                      "choose a later day.")
    newsletter.send_at = min(times)
    newsletter.status = NewsletterStatus.SCHEDULED
    return newsletter


def _reader_zones(session: Session, newsletter_id: int) -> list[str | None]:
    """The distinct zones stored on the issue's readers (None: no zone), in one query."""
    audience = _audience(session, newsletter_id).subquery()
    return list(session.scalars(sa.select(Contact.timezone).distinct()
                                .join(audience, audience.c.contact_id == Contact.id)))


def reader_send_times(session: Session, newsletter: Newsletter) -> dict[dt.datetime, list[str | None]]:
    """For an issue in its readers' own zones: each UTC instant at which some of today's
    audience reach its local time → the stored zone values (None: none) of those readers.
    The organisation's instant is always there (readers without a zone, or with one this
    machine does not know); zones sharing an instant (London and Lisbon) share a key."""
    local, fallback = reader_local_time(newsletter), newsletter.send_zone_fallback
    times: dict[dt.datetime, list[str | None]] = {clock.reader_local_to_utc(local, fallback): []}
    for stored in _reader_zones(session, newsletter.id):
        times.setdefault(clock.reader_local_to_utc(local, clock.zone_or(stored, fallback)), []).append(stored)
    return times


def local_time_span(session: Session, newsletter: Newsletter) -> tuple[dt.datetime, dt.datetime] | None:
    """First and last instant an issue in its readers' zones goes (or went) out: from the
    queue once sending has started, else from the zones of today's audience."""
    if not newsletter.send_local_time:
        return None
    if newsletter.started_at is not None:
        first, last = session.execute(sa.select(sa.func.min(Delivery.next_attempt_at), sa.func.max(Delivery.next_attempt_at))
                                      .where(Delivery.kind == NEWSLETTER, Delivery.ref_id == newsletter.id)).one()
        if first is not None:
            return first, last
    times = reader_send_times(session, newsletter)
    instants = [instant for instant, zones in times.items() if zones] or list(times)
    return min(instants), max(instants)


def cancel(session: Session, newsletter_id: int) -> Newsletter:
    """Stop an issue before or while it goes out: whatever is still queued is cancelled."""
    newsletter = get_newsletter(session, newsletter_id)
    if newsletter.status in (NewsletterStatus.SENT, NewsletterStatus.CANCELLED):
        raise InvalidInput("status", f"The newsletter is already {newsletter.status}.")
    newsletter.status = NewsletterStatus.CANCELLED
    session.execute(sa.update(Delivery).where(
        Delivery.kind == NEWSLETTER, Delivery.ref_id == newsletter.id, Delivery.status.in_(NOT_YET_SENT),
    ).values(status=DeliveryStatus.CANCELLED, last_error="newsletter cancelled"))
    return newsletter


def pause(session: Session, newsletter_id: int) -> Newsletter:
    """Hold what is still queued (messages already on the wire finish); nothing is dropped."""
    newsletter = get_newsletter(session, newsletter_id)
    if newsletter.status != NewsletterStatus.SENDING:
        raise InvalidInput("status", f"Only a newsletter that is sending can be paused; this one is {newsletter.status}.")
    newsletter.status = NewsletterStatus.PAUSED
    session.execute(sa.update(Delivery).where(
        Delivery.kind == NEWSLETTER, Delivery.ref_id == newsletter.id, Delivery.status.in_(PENDING_DELIVERY),
    ).values(status=DeliveryStatus.HELD))
    return newsletter


def resume(session: Session, newsletter_id: int) -> Newsletter:
    """Send what was held, from where it stopped."""
    newsletter = get_newsletter(session, newsletter_id)
    if newsletter.status != NewsletterStatus.PAUSED:
        raise InvalidInput("status", f"Only a paused newsletter can be resumed; this one is {newsletter.status}.")
    newsletter.status = NewsletterStatus.SENDING
    session.execute(sa.update(Delivery).where(
        Delivery.kind == NEWSLETTER, Delivery.ref_id == newsletter.id, Delivery.status == DeliveryStatus.HELD,
    ).values(status=DeliveryStatus.QUEUED))
    return newsletter


def start_due(session: Session, now: dt.datetime) -> list[int]:
    """Start every scheduled issue whose time has come: queue its audience. Each start is
    a compare-and-set, so two workers never start the same issue twice."""
    due = session.scalars(sa.select(Newsletter.id).where(
        Newsletter.status == NewsletterStatus.SCHEDULED, Newsletter.send_at <= now)).all()
    started = []
    for newsletter_id in due:
        claimed = session.execute(sa.update(Newsletter).where(
            Newsletter.id == newsletter_id, Newsletter.status == NewsletterStatus.SCHEDULED,
        ).values(status=NewsletterStatus.SENDING, started_at=now)).rowcount
        if claimed:
            newsletter = session.get(Newsletter, newsletter_id)
            if newsletter.segment_id is not None:  # the segment as it is now is who it goes to
                newsletter.segment_rules = segments.get_segment(session, newsletter.segment_id).rules
                session.flush()
            queued = (enqueue_in_reader_zones(session, newsletter, now=now) if newsletter.send_local_time
                      else enqueue_audience(session, newsletter_id, now=now))
            session.execute(sa.update(Newsletter).where(Newsletter.id == newsletter_id)
                            .values(audience_count=queued))
            started.append(newsletter_id)
    return started


def finish_sent(session: Session, now: dt.datetime) -> list[int]:
    """Mark issues sent once none of their deliveries is waiting or in flight."""
    waiting = sa.exists().where(Delivery.kind == NEWSLETTER, Delivery.ref_id == Newsletter.id,
                                Delivery.status.in_([*PENDING_DELIVERY, DeliveryStatus.SENDING]))
    done = session.scalars(sa.select(Newsletter.id).where(Newsletter.status == NewsletterStatus.SENDING, ~waiting)).all()
    if not done:
        return []
    # The status again: another worker may have marked them since (its time stays).
    return list(session.scalars(sa.update(Newsletter).where(
        Newsletter.id.in_(done), Newsletter.status == NewsletterStatus.SENDING,
    ).values(status=NewsletterStatus.SENT, finished_at=now).returning(Newsletter.id)))


# Monthly rhythm -----------------------------------------------------------------------

def _trigger(rhythm: Rhythm) -> CronTrigger:
    return CronTrigger(day=rhythm.day, hour=rhythm.hour, minute=rhythm.minute, timezone=rhythm.timezone)


RHYTHM_WEEKS = {"1st": "first", "2nd": "second", "3rd": "third", "4th": "fourth", "last": "last"}
RHYTHM_WEEKDAYS = {"mon": "Monday", "tue": "Tuesday", "wed": "Wednesday", "thu": "Thursday", "fri": "Friday",
                   "sat": "Saturday", "sun": "Sunday"}


def rhythm_day(week: str, weekday: str) -> str:
    """The day of a rhythm from the form's choices: ("1st", "tue") → "1st tue"; ("day", "15")
    → "15" (the 15th; up to the 28th, which every month has)."""
    if week == "day":
        if not weekday.isdigit() or not 1 <= int(weekday) <= 28:
            raise InvalidInput("day", "Choose a day of the month from 1 to 28 (every month has those).")
        return str(int(weekday))
    if week not in RHYTHM_WEEKS or weekday not in RHYTHM_WEEKDAYS:
        raise InvalidInput("day", "Choose the week (first … last) and the weekday, e.g. the first Tuesday.")
    return f"{week} {weekday}"


def describe_rhythm_day(day: str) -> str:
    """'the first Tuesday', 'the 15th', or the stored text."""
    week, _, weekday = day.partition(" ")
    if week in RHYTHM_WEEKS and weekday in RHYTHM_WEEKDAYS:
        return f"the {RHYTHM_WEEKS[week]} {RHYTHM_WEEKDAYS[weekday]}"
    if day.isdigit():
        n = int(day)
        return f"the {n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
    return day


def _rhythm_values(name: str, day: str, hour: int, minute: int, timezone: str, fill_from_blog: bool) -> dict:
    values = dict(name=" ".join((name or "").split()) or "Monthly newsletter", day=(day or "").strip().lower(),
                  hour=hour, minute=minute, timezone=timezone)
    if timezone not in clock.known_zones():
        raise InvalidInput("timezone", f"Unknown time zone '{timezone}'; choose one from the list.")
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise InvalidInput("time", "Give the time like 09:00.")
    try:
        _trigger(Rhythm(**values))
    except (ValueError, KeyError):
        raise InvalidInput("day", f"'{day}' is not a day of the month we can send on: choose the week and the "
                                  "weekday (e.g. \"1st tue\", \"last fri\") or a day from 1 to 28.") from None
    return dict(values, fill_from_blog=bool(fill_from_blog))


def create_rhythm(session: Session, *, name: str, day: str, hour: int, minute: int = 0, timezone: str,
                  fill_from_blog: bool = False) -> Rhythm:
    """E.g. day="1st tue", hour=9, timezone="Europe/London": the first Tuesday of every month at 09:00.
    With `fill_from_blog`, a month with no issue ready but new blog posts gets a digest
    drafted for staff to approve (warn_unready)."""
    rhythm = Rhythm(**_rhythm_values(name, day, hour, minute, timezone, fill_from_blog))
    session.add(rhythm)
    session.flush()
    return rhythm


def update_rhythm(session: Session, rhythm_id: int, *, name: str, day: str, hour: int, minute: int = 0,
                  timezone: str, fill_from_blog: bool = False) -> Rhythm:
    """Change a rhythm: months marked ready keep the send time they were given; later
    months use the new one."""
    rhythm = get_rhythm(session, rhythm_id)
    for key, value in _rhythm_values(name, day, hour, minute, timezone, fill_from_blog).items():
        setattr(rhythm, key, value)
    return rhythm


def delete_rhythm(session: Session, rhythm_id: int) -> Rhythm:
    """Stop a rhythm: no more warnings and no new months; issues it scheduled stay scheduled
    (cancel them to stop them). Its record stays for the issues that name it."""
    rhythm = get_rhythm(session, rhythm_id)
    rhythm.active = False
    return rhythm


def get_rhythm(session: Session, rhythm_id: int) -> Rhythm:
    rhythm = session.get(Rhythm, rhythm_id)
    if rhythm is None or not rhythm.active:
        raise NotFound(f"no rhythm {rhythm_id}")
    return rhythm


def list_rhythms(session: Session) -> list[Rhythm]:
    return list(session.scalars(sa.select(Rhythm).where(Rhythm.active).order_by(Rhythm.id)))


def occurrence_in_month(rhythm: Rhythm, month: str) -> dt.datetime:
    """The UTC instant of the rhythm's send time in `month` ("2027-03")."""
    year, number = (int(part) for part in month.split("-"))
    start = dt.datetime(year, number, 1, tzinfo=ZoneInfo(rhythm.timezone))
    when = _trigger(rhythm).get_next_fire_time(None, start)
    if when is None or (when.year, when.month) != (year, number):
        raise InvalidInput("month", f"'{rhythm.name}' has no send time in {month}.")
    return when.astimezone(dt.timezone.utc)


def next_occurrence(rhythm: Rhythm, after: dt.datetime) -> dt.datetime:
    return _trigger(rhythm).get_next_fire_time(None, after).astimezone(dt.timezone.utc)


def mark_ready(session: Session, newsletter_id: int, rhythm_id: int, month: str, *, now: dt.datetime) -> Newsletter:
    """Make this the issue for `month` of the rhythm: it goes out at that month's send time."""
    rhythm = session.get(Rhythm, rhythm_id)
    if rhythm is None:
        raise NotFound(f"no rhythm {rhythm_id}")
    taken = session.scalar(sa.select(Newsletter.id).where(
        Newsletter.rhythm_id == rhythm_id, Newsletter.rhythm_month == month, Newsletter.id != newsletter_id,
        Newsletter.status.in_([NewsletterStatus.SCHEDULED, NewsletterStatus.SENDING, NewsletterStatus.SENT])))
    if taken:
        raise InvalidInput("month", f"Newsletter {taken} is already the {month} issue of '{rhythm.name}'.")
    newsletter = schedule(session, newsletter_id, occurrence_in_month(rhythm, month), now=now)
    newsletter.rhythm_id, newsletter.rhythm_month = rhythm_id, month
    return newsletter


def warn_unready(session: Session, settings, now: dt.datetime) -> list[str]:
    """24 hours before a rhythm's send time with no issue ready, email the staff once.
    Nothing is ever sent empty: without a ready issue the month is simply skipped. A rhythm
    set to fill from the blog, with new posts since its previous issue, gets a digest
    drafted instead, and staff are asked to approve it: a draft is never sent unapproved.
    The claim on Rhythm.warned_month makes both happen once, whatever the workers."""
    from mailer.audience import contacts
    from mailer.models import Role, User

    warned = []
    for rhythm in session.scalars(sa.select(Rhythm).where(Rhythm.active)):
        when = next_occurrence(rhythm, now)
        month = when.astimezone(ZoneInfo(rhythm.timezone)).strftime("%Y-%m")
        if when - now > dt.timedelta(hours=24) or rhythm.warned_month == month:
            continue
        ready = session.scalar(sa.select(sa.exists().where(
            Newsletter.rhythm_id == rhythm.id, Newsletter.rhythm_month == month,
            Newsletter.status.in_([NewsletterStatus.SCHEDULED, NewsletterStatus.SENDING, NewsletterStatus.SENT]))))
        if ready:
            continue
        claimed = session.execute(sa.update(Rhythm).where(
            Rhythm.id == rhythm.id, (Rhythm.warned_month != month) | Rhythm.warned_month.is_(None),
        ).values(warned_month=month)).rowcount
        if not claimed:
            continue
        digest = draft_blog_digest(session, settings, rhythm, month, now=now) if rhythm.fill_from_blog else None
        staff = session.scalars(sa.select(User.email).where(User.role.in_([Role.OWNER, Role.EDITOR]))).all()
        for email in staff:
            contact = contacts.get_or_create_contact(session, settings, email, now=now)
            if digest is not None:
                outbox.enqueue(session, contact_id=contact.id, kind=BLOG_DIGEST, ref_id=digest.id,
                               dedupe_key=f"blog-digest:{digest.id}:{contact.id}", now=now)
            else:
                outbox.enqueue(session, contact_id=contact.id, kind=RHYTHM_WARNING, ref_id=rhythm.id,
                               dedupe_key=f"rhythm-warning:{rhythm.id}:{month}:{contact.id}", now=now)
        warned.append(f"{rhythm.name} {month}" + (f" (digest {digest.id} drafted)" if digest is not None else ""))
    return warned


def draft_blog_digest(session: Session, settings, rhythm: Rhythm, month: str, *,
                      now: dt.datetime) -> Newsletter | None:
    """A draft issue for `month` of the rhythm made from the blog's posts since its previous
    issue (None when there are none). It goes to the lists of the rhythm's latest issue and
    stays a draft until staff mark it ready (mark_ready), so it is never sent unapproved."""
    since = blog.previous_issue_start(session, rhythm_id=rhythm.id, before=now)
    posts = [blog.post_context(p, settings.zone) for p in blog.posts_between(session, since, now)]
    if not settings.blog_feed_url or not posts:
        return None
    latest = session.scalar(sa.select(Newsletter).where(
        Newsletter.rhythm_id == rhythm.id, Newsletter.status != NewsletterStatus.CANCELLED,
    ).order_by(Newsletter.created_at.desc(), Newsletter.id.desc()).limit(1))
    subject, body_md = blog.digest_text(posts)
    digest = Newsletter(subject=subject, preheader="", body_md=body_md, layout="default",
                        lists=[ml for ml in (latest.lists if latest else []) if ml.archived_at is None],
                        public=latest.public if latest else False, status=NewsletterStatus.DRAFT,
                        rhythm_id=rhythm.id, rhythm_month=month)
    session.add(digest)
    session.flush()
    return digest


def blog_digest_email(batch, delivery: Delivery):
    digest = batch.session.get(Newsletter, delivery.ref_id)
    rhythm = batch.session.get(Rhythm, digest.rhythm_id) if digest is not None and digest.rhythm_id else None
    if rhythm is None or digest.status != NewsletterStatus.DRAFT:
        return outbox.Skip(DeliveryStatus.CANCELLED, "digest no longer a draft")
    return {"rhythm_name": rhythm.name, "subject": digest.subject, "month": digest.rhythm_month,
            "post_count": len(blog.posts_for_issue(batch.session, batch.settings, digest, now=batch.clock())),
            "send_time": format_local(occurrence_in_month(rhythm, digest.rhythm_month), rhythm.timezone),
            "admin_url": f"{batch.settings.base_url}/admin/newsletters/{digest.id}"}


def rhythm_warning_email(batch, delivery: Delivery):
    rhythm = batch.session.get(Rhythm, delivery.ref_id)
    if rhythm is None:
        return outbox.Skip(DeliveryStatus.CANCELLED, "rhythm removed")
    when = next_occurrence(rhythm, batch.clock())
    return {"rhythm_name": rhythm.name, "send_time": format_local(when, rhythm.timezone),
            "admin_url": f"{batch.settings.base_url}/admin/newsletters"}


# Preview, test sends and the pre-flight check ---------------------------------------------

SAMPLE_CONTACT = {"first_name": "Alex", "name": "Alex Sample", "email": "alex.sample@example.com"}


class SampleFields(dict):
    """contact.fields of a preview: the samples given, "[key]" for any other key (a
    preview that has no database at hand, or a field added since)."""

    def __missing__(self, key):
        return f"[{key}]"


class NoFields(dict):
    """contact.fields of a reader who is nobody in particular (the public archive): empty."""

    def __missing__(self, key):
        return ""


def preview(renderer, settings, *, subject: str, preheader: str, body_md: str, layout: str,
            contact: dict | None = None, unsubscribe_url: str | None = None, upcoming=(), posts=(),
            checked: bool = True, why: str | None = None, field_samples: dict | None = None) -> RenderedEmail:
    """The issue as one recipient (or a sample one) would get it; links to unsubscribe do
    not work in a preview. InvalidInput lists the template problems (checked=False: an
    issue already sent, shown as it went out, sanitised like every copy). The sample
    reader's custom fields are `field_samples` (fields.sample_values); a contact given
    without "fields" has none. `upcoming` and `posts` are what the send would use
    (upcoming_for_issue, blog.posts_for_issue)."""
    if contact is None:
        contact = dict(SAMPLE_CONTACT, fields=SampleFields(field_samples or {}))
    elif "fields" not in contact:
        contact = dict(contact, fields=NoFields())
    problems = template_problems(subject, preheader or "", body_md) if checked else []
    if problems:
        raise InvalidInput(problems[0].field, "; ".join(str(p) for p in problems))
    if layout not in layouts():
        raise InvalidInput("layout", f"Unknown layout '{layout}'; choose one of: {', '.join(layouts())}.")
    static = {"organisation": settings.organisation, "postal_address": settings.postal_address,
              "base_url": settings.base_url, "logo_url": settings.logo_url, **({"why": why} if why else {})}
    try:
        compiled = compile_newsletter(renderer, subject=subject, preheader=preheader,
                                      body_markdown=expand_blocks(body_md), layout=layout, context=static)
        return _render_preview(compiled, static, contact, unsubscribe_url, settings, upcoming, posts)
    except jinja2.TemplateError as exc:  # errors only rendering can show, e.g. {{ 1/0 }} or a missing key
        raise InvalidInput("body", f"The template fails when rendered: {exc}") from None
    except (ArithmeticError, TypeError, ValueError, LookupError) as exc:
        raise InvalidInput("body", f"The template fails when rendered: {exc}") from None


def _render_preview(compiled, static, contact, unsubscribe_url, settings, upcoming, posts) -> RenderedEmail:
    issue = _Issue(compiled, list(upcoming), settings.base_url, test=False, posts=list(posts))
    return issue.render(dict(static, contact=contact or SAMPLE_CONTACT,
                                unsubscribe_url=unsubscribe_url or f"{settings.base_url}/unsubscribe/preview",
                                preferences_url=unsubscribe_url or f"{settings.base_url}/preferences/preview"))


def send_test(session: Session, settings, newsletter_id: int, addresses: list[str], *, now: dt.datetime) -> int:
    """Queue a "[TEST]" copy to up to 10 addresses. Test copies are never counted in reports."""
    newsletter = get_newsletter(session, newsletter_id)
    return queue_test_copies(session, settings, NEWSLETTER_TEST, newsletter.id, addresses, now=now)


def queue_test_copies(session: Session, settings, kind: str, ref_id: int, addresses: list[str], *,
                      now: dt.datetime) -> int:
    """Queue a test copy of staff-written mail (an issue, a sequence's step: `kind` renders
    it marked "[TEST]") to each of 1 to TEST_MAX addresses; returns how many. Nobody is
    added to the contacts: an address that is a contact's gets that person's copy (their
    name fills the slots); any other is written to as it is (outbox.enqueue_to_address)."""
    from mailer.audience import contacts

    try:
        wanted = list(dict.fromkeys(contacts.normalise_email(a) for a in addresses if a and a.strip()))
    except InvalidInput as exc:
        raise InvalidInput("addresses", exc.message) from None
    if not wanted or len(wanted) > TEST_MAX:
        raise InvalidInput("addresses", f"Give between 1 and {TEST_MAX} addresses.")
    stamp = int(now.timestamp() * 1000)
    known = dict(session.execute(sa.select(Contact.email, Contact.id).where(Contact.email.in_(wanted))).all())
    for address in wanted:
        if address in known:
            outbox.enqueue(session, contact_id=known[address], kind=kind, ref_id=ref_id,
                           dedupe_key=f"{kind}:{ref_id}:{known[address]}:{stamp}", now=now)
        else:
            address_hash = suppression.email_hash(settings, address)
            outbox.enqueue_to_address(session, address=address, address_hash=address_hash, kind=kind,
                                      ref_id=ref_id, dedupe_key=f"{kind}:{ref_id}:{address_hash[:16]}:{stamp}",
                                      now=now)
    return len(wanted)


def sample_subject(subject: str) -> str:
    """The subject as the sample reader's copy shows it (for staff lists and questions);
    the stored text when it cannot be rendered."""
    try:
        return one_line(staff_environment(html=False).from_string(subject).render(
            contact=SAMPLE_CONTACT, organisation="", unsubscribe_url="", preferences_url="", archive_url="",
            postal_address="", base_url="", upcoming_webinars=[], new_posts=[]))
    except Exception:  # a template problem: the pre-flight names it; show what staff wrote
        return subject


def upcoming_for_issue(session: Session, settings, now: dt.datetime) -> list[tuple[str, dt.datetime, str, str]]:
    """(title, start, organiser zone, reservation link) of the next public webinars."""
    from mailer.campaigns import webinars

    return [(w.title, w.starts_at, w.timezone, f"{settings.base_url}/webinars/{w.slug}")
            for w in webinars.upcoming(session, now, limit=3)]


class _Issue:
    """A compiled issue and what each recipient's copy adds: the upcoming webinars with
    their start in the reader's own zone, the blog's new posts; a test copy says "[TEST]"
    and has dead links."""

    def __init__(self, compiled: CompiledNewsletter, upcoming, base_url: str, test: bool, why: str | None = None,
                 posts=()):
        self.compiled, self.upcoming, self.base_url, self.test, self.why = compiled, upcoming, base_url, test, why
        self.posts = list(posts)
        self.extras: dict[str | None, dict] = {}  # reader's zone -> what the copy adds (read, never changed)

    def render(self, context: dict) -> RenderedEmail:
        zone = (context.get("contact") or {}).get("timezone")
        extra = self.extras.get(zone)
        if extra is None:
            extra = {"archive_url": f"{self.base_url}/archive", "upcoming_webinars": [
                {"title": title, "starts_local": format_local(starts, zone or organiser_zone), "url": url}
                for title, starts, organiser_zone, url in self.upcoming], "new_posts": self.posts}
            if self.why:
                extra["why"] = self.why
            if self.test:
                extra.update(unsubscribe_url=f"{self.base_url}/unsubscribe/test-copy",
                             preferences_url=f"{self.base_url}/preferences/test-copy")
            if len(self.extras) < 1000:
                self.extras[zone] = extra
        rendered = self.compiled.render(dict(context, **extra))
        return dataclasses.replace(rendered, subject=f"[TEST] {rendered.subject}") if self.test else rendered


class _LinkChecker(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []
        self.images_without_alt = 0

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "a" and "href" in values:
            self.links.append(values["href"] or "")
        if tag == "img" and not (values.get("alt") or "").strip():
            self.images_without_alt += 1


def preflight(session: Session, renderer, settings, newsletter_id: int) -> list[str]:
    """Problems to fix before scheduling, in plain words; an empty list means ready."""
    newsletter = get_newsletter(session, newsletter_id)
    keys = fields.template_keys(session)
    problems = content_problems(renderer, settings, subject=newsletter.subject, preheader=newsletter.preheader,
                                upcoming=upcoming_for_issue(session, settings, utcnow()),
                                posts=blog.posts_for_issue(session, settings, newsletter, now=utcnow()),
                                body_md=newsletter.body_md, layout=newsletter.layout, field_keys=keys)
    templates_render = not template_problems(newsletter.subject, newsletter.preheader or "", newsletter.body_md, keys)
    if templates_render and count_audience(session, newsletter.id) == 0:
        problems.append("No one would receive it: its lists have no active subscribers.")
    return problems


def content_problems(renderer, settings, *, subject: str, preheader: str, body_md: str, layout: str,
                     upcoming=(), posts=(), field_keys: set[str] | None = None) -> list[str]:
    """What to fix in staff-written mail (an issue, a sequence's step) before it goes out,
    in plain words: template problems, links, images without alt text, length, an empty body."""
    problems = [str(p) for p in template_problems(subject, preheader or "", body_md, field_keys)]
    if problems:
        return problems
    layout_source = (TEMPLATES / "layouts" / f"{layout}.html").read_text() if layout in layouts() else ""
    if layout in layouts() and "unsubscribe_url" not in layout_source:
        problems.append(f"The layout '{layout}' has no unsubscribe link.")
    try:
        rendered = preview(renderer, settings, subject=subject, preheader=preheader, body_md=body_md, layout=layout,
                           upcoming=upcoming, posts=posts)
    except InvalidInput as exc:
        return problems + [exc.message]
    checker = _LinkChecker()
    checker.feed(rendered.html)
    for link in dict.fromkeys(checker.links):
        if link.startswith(settings.base_url + "/"):
            continue  # mailer's own unsubscribe and preferences links
        if not (link.startswith("https://") or link.startswith("mailto:")) or " " in link:
            problems.append(f"Link '{link}' is not an absolute https:// address.")
    if checker.images_without_alt:
        problems.append(f"{checker.images_without_alt} image(s) have no alt text.")
    if len(subject) > SUBJECT_MAX:
        problems.append(f"The subject has {len(subject)} characters; inboxes cut it after about {SUBJECT_MAX}.")
    if not body_md.strip():
        problems.append("The body is empty, so the text part would be empty.")
    return problems


# Tracking (off by default; totals only) -----------------------------------------------

def link_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def tracking_options(settings, newsletter_id: int) -> dict:
    """compile_newsletter arguments for the organisation's tracking settings."""
    options = {}
    if settings.track_clicks:
        options["track_link"] = lambda url: f"{settings.base_url}/t/c/{newsletter_id}/{link_hash(url)}"
    if settings.track_opens:
        options["open_pixel"] = f"{settings.base_url}/t/o/{newsletter_id}.gif"
    return options


def count_open(session: Session, newsletter_id: int) -> bool:
    """Count an open of an issue that has started sending; False (nothing counted) for an
    unknown id, a draft or a scheduled issue, whose pixel no reader has received."""
    return bool(session.execute(sa.update(Newsletter).where(
        Newsletter.id == newsletter_id, Newsletter.started_at.is_not(None),
    ).values(opens=Newsletter.opens + 1)).rowcount)


def count_click(session: Session, newsletter_id: int, url_hash: str) -> str | None:
    """The link's address, its click counted; None when the issue has not started sending
    (a draft's links are not out yet, and the redirect must not vouch for them) or has
    no such link (so the redirect can never be pointed at another site)."""
    newsletter = session.get(Newsletter, newsletter_id)
    if newsletter is None or newsletter.started_at is None:
        return None
    url = {link_hash(u): u for u in body_links(newsletter.body_md)}.get(url_hash)
    if url is None:
        return None
    stmt = dialect_insert(session, NewsletterLink).values(newsletter_id=newsletter_id, url_hash=url_hash, url=url,
                                                         clicks=1)
    session.execute(stmt.on_conflict_do_update(index_elements=["newsletter_id", "url_hash"],
                                               set_={"clicks": NewsletterLink.__table__.c.clicks + 1}))
    return url


# Reports ---------------------------------------------------------------------------

def report(session: Session, newsletter_id: int, *, now: dt.datetime | None = None) -> dict:
    """Audience and outcomes of one issue (test copies are not counted), the
    unsubscribes it caused (within 30 days of its start, from its recipients), and
    messages sent per minute for the chart. With `now`, `waiting` counts the queued
    copies not due yet: readers whose own clock has not reached the issue's time."""
    newsletter = get_newsletter(session, newsletter_id)
    mine = sa.and_(Delivery.kind == NEWSLETTER, Delivery.ref_id == newsletter.id)
    counts = dict(session.execute(sa.select(Delivery.status, sa.func.count()).where(mine).group_by(Delivery.status)).all())
    waiting = 0
    if now is not None and counts.get(DeliveryStatus.QUEUED):
        waiting = session.scalar(sa.select(sa.func.count()).where(
            mine, Delivery.status == DeliveryStatus.QUEUED, Delivery.next_attempt_at > now))
    unsubscribes = 0
    if newsletter.started_at:
        window_end = newsletter.started_at + dt.timedelta(days=30)
        unsubscribes = session.scalar(sa.select(sa.func.count(sa.distinct(ConsentEvent.contact_id))).where(
            ConsentEvent.action == ConsentAction.WITHDRAWN,
            ConsentEvent.created_at >= newsletter.started_at, ConsentEvent.created_at < window_end,
            ConsentEvent.contact_id.in_(sa.select(Delivery.contact_id).where(mine, Delivery.status == DeliveryStatus.SENT)),
        ))
    minute = (sa.func.date_trunc("minute", Delivery.sent_at) if is_postgres(session)
              else sa.func.strftime("%Y-%m-%d %H:%M", Delivery.sent_at))
    per_minute = session.execute(sa.select(minute, sa.func.count()).where(mine, Delivery.sent_at.is_not(None))
                                 .group_by(minute).order_by(minute)).all()
    return {
        "id": newsletter.id, "subject": newsletter.subject, "status": newsletter.status,
        "audience": newsletter.audience_count, "started_at": newsletter.started_at, "finished_at": newsletter.finished_at,
        "sent": counts.get(DeliveryStatus.SENT, 0), "deferred": counts.get(DeliveryStatus.DEFERRED, 0),
        "queued": counts.get(DeliveryStatus.QUEUED, 0) + counts.get(DeliveryStatus.SENDING, 0),
        "failed": counts.get(DeliveryStatus.FAILED, 0), "suppressed": counts.get(DeliveryStatus.SUPPRESSED, 0),
        "cancelled": counts.get(DeliveryStatus.CANCELLED, 0), "held": counts.get(DeliveryStatus.HELD, 0),
        "waiting": waiting, "local_time": newsletter.send_local_time,
        "unsubscribes": unsubscribes,
        "sent_per_minute": [(str(bucket)[:16], n) for bucket, n in per_minute],
        "opens": newsletter.opens,
        "clicks": [(link.url, link.clicks) for link in session.scalars(
            sa.select(NewsletterLink).where(NewsletterLink.newsletter_id == newsletter.id)
            .order_by(NewsletterLink.clicks.desc()))],
    }


# Who gets it ------------------------------------------------------------------------


def _audience(session: Session, newsletter_id: int, now: dt.datetime | None = None):
    """(contact_id, list_id) of every active, reachable subscriber of the issue's lists,
    narrowed by its segment if it has one (its rules as frozen when sending started, or as
    they are now); someone on two of its lists is one row (and gets one copy)."""
    narrowed = ()
    newsletter = session.get(Newsletter, newsletter_id)
    if newsletter is not None and newsletter.segment_id is not None:
        rules = (segments.parse_stored(newsletter.segment_rules) if newsletter.segment_rules
                 else segments.rules_of(segments.get_segment(session, newsletter.segment_id)))
        narrowed = (segments.condition(session, rules, now or utcnow(), contact=Contact.id),)
    return (
        sa.select(Subscription.contact_id, sa.func.min(Subscription.list_id).label("list_id"))
        .join(newsletter_lists, newsletter_lists.c.list_id == Subscription.list_id)
        .join(Contact, Contact.id == Subscription.contact_id)
        .where(
            newsletter_lists.c.newsletter_id == newsletter_id,
            Subscription.status == SubscriptionStatus.ACTIVE,
            Contact.email.is_not(None),
            ~sa.exists().where(Suppression.email_hash == Contact.email_hash),
            *narrowed,
        )
        .group_by(Subscription.contact_id)
    )


def count_audience(session: Session, newsletter_id: int, now: dt.datetime | None = None) -> int:
    return session.scalar(sa.select(sa.func.count()).select_from(_audience(session, newsletter_id, now).subquery()))


def enqueue_audience(session: Session, newsletter_id: int, *, now: dt.datetime) -> int:
    """Queue the issue for its whole audience in one INSERT … SELECT. The dedupe key is
    per issue and contact, so running it again (a retry, a second worker) adds nobody twice."""
    return outbox.enqueue_many(session, _audience_rows(session, newsletter_id, now), kind=NEWSLETTER, now=now,
                               priority=Priority.BULK)


def _audience_rows(session: Session, newsletter_id: int, now: dt.datetime | None = None, *where):
    """The outbox rows of the issue's audience (or of those readers matching `where`)."""
    audience = _audience(session, newsletter_id, now).where(*where).subquery()
    return sa.select(
        audience.c.contact_id, audience.c.list_id, sa.literal(newsletter_id, sa.Integer).label("ref_id"),
        (sa.literal(f"newsletter:{newsletter_id}:") + sa.cast(audience.c.contact_id, sa.String)).label("dedupe_key"),
    )


def enqueue_in_reader_zones(session: Session, newsletter: Newsletter, *, now: dt.datetime) -> int:
    """Queue an issue sent in its readers' own zones in one INSERT … SELECT over its
    audience, each row due when its reader's clock shows the issue's time: a CASE on the
    reader's zone, over the zones found among the audience (one query before). Everyone
    else (no zone, an unknown one, or one set since that query) gets the organisation's
    instant. One pass instead of one per distinct instant, which read the whole audience
    each time (24 zones at 1,000,000 readers: see bench/sequences.py). Due rows are claimed
    as usual; a paused issue holds them with their times, so resuming keeps each reader's hour."""
    times = reader_send_times(session, newsletter)
    fallback_at = clock.reader_local_to_utc(reader_local_time(newsletter), newsletter.send_zone_fallback)
    moment = Delivery.next_attempt_at.type
    by_zone = {zone: sa.literal(instant, moment) for instant, zones in times.items() if instant != fallback_at
               for zone in zones}
    due_at = (sa.case(by_zone, value=Contact.timezone, else_=sa.literal(fallback_at, moment)) if by_zone
              else fallback_at)
    return outbox.enqueue_many(session, _audience_rows(session, newsletter.id, now), kind=NEWSLETTER, now=now,
                               due_at=due_at,
                               priority=Priority.BULK)


def newsletter_email(batch, delivery: Delivery):
    """The compiled issue: compiled once, reused for every recipient while its text is
    unchanged (for a test send: the same, marked as a test)."""
    row_key = (Newsletter, delivery.ref_id)
    if row_key not in batch.rows:
        batch.rows[row_key] = batch.session.get(Newsletter, delivery.ref_id)
    newsletter = batch.rows[row_key]
    if newsletter is None or (newsletter.status == NewsletterStatus.CANCELLED and delivery.kind == NEWSLETTER):
        return outbox.Skip(DeliveryStatus.CANCELLED, "newsletter cancelled")
    tracked = delivery.kind == NEWSLETTER  # test copies are never counted
    tracking_key = ("tracking", newsletter.id)
    if tracked and tracking_key not in batch.rows:
        batch.rows[tracking_key] = tracking_options(batch.settings, newsletter.id)
    return compiled_issue(batch, (NEWSLETTER, newsletter.id, tracked), subject=newsletter.subject,
                          preheader=newsletter.preheader, body_md=newsletter.body_md, layout=newsletter.layout,
                          tracking=batch.rows[tracking_key] if tracked else {},
                          test=delivery.kind == NEWSLETTER_TEST, newsletter=newsletter)


def compiled_issue(batch, key: tuple, *, subject: str, preheader: str, body_md: str, layout: str,
                   tracking: dict | None = None, test: bool = False, why: str | None = None,
                   newsletter: Newsletter | None = None) -> _Issue:
    """Staff-written mail in a layout (an issue, a sequence's step), ready to render per
    recipient: compiled once per `key` and text, reused while the text is unchanged;
    sanitised after rendering like every issue. `why` replaces the footer's "you get this
    newsletter because…" (a sequence's step says which list unsubscribing leaves).
    `new_posts` are those since the previous issue of `newsletter`'s rhythm or lists
    (without one, a sequence's step: the newest)."""
    key = (*key, subject, preheader, body_md, layout, why)
    if key not in batch.cache:
        if len(batch.cache) > 32:
            batch.cache.clear()
        batch.cache[key] = compile_newsletter(
            batch.renderer, subject=subject, preheader=preheader, body_markdown=expand_blocks(body_md), layout=layout,
            context=dict(batch.static_context, why=why) if why else batch.static_context, **(tracking or {}),
            image_widths=media.email_widths(batch.session, batch.settings.base_url, body_md),
        )
    if "upcoming_webinars" not in batch.rows:
        batch.rows["upcoming_webinars"] = upcoming_for_issue(batch.session, batch.settings, batch.clock())
    posts_key = ("new_posts", newsletter.id if newsletter is not None else None)
    if posts_key not in batch.rows:
        batch.rows[posts_key] = blog.posts_for_issue(batch.session, batch.settings, newsletter, now=batch.clock())
    issue_key = ("issue", key, test, posts_key)  # one per batch: what it makes per reader's zone is kept
    if issue_key not in batch.rows:
        batch.rows[issue_key] = _Issue(batch.cache[key], batch.rows["upcoming_webinars"], batch.settings.base_url,
                                       test=test, why=why, posts=batch.rows[posts_key])
    return batch.rows[issue_key]


# The kinds of mail this module makes, for the sender (registered by mailer.build).
MAIL_KINDS = {NEWSLETTER: Kind(newsletter_email, label="Newsletter"),
              NEWSLETTER_TEST: Kind(newsletter_email, label="Newsletter test"),
              RHYTHM_WARNING: Kind(rhythm_warning_email, label="Rhythm warning"),
              BLOG_DIGEST: Kind(blog_digest_email, label="Blog digest")}
