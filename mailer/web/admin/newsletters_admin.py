"""Staff pages for newsletters: the list, the editor with its live preview, the issue's
page (pre-flight check, schedule, send now, cancel, test send, report). Viewers may look;
every change is a POST that owners and editors alone may make."""
from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import Blueprint, Response, flash, jsonify, redirect, render_template, request, url_for

from mailer.audience import contacts, fields, segments
from mailer.campaigns import blog, newsletters
from mailer.db import utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.models import Contact, Delivery, DeliveryStatus, MailingList, Newsletter, NewsletterStatus, Role
from mailer.clock import format_local, known_zones, local_to_utc
from mailer.web import db_reader, db_session, error_json, mailer, wants_json
from mailer.web.admin.auth import audit, login_required, role_required

bp = Blueprint("newsletters_admin", __name__, url_prefix="/admin/newsletters")

# Email HTML shown to staff: no scripts, no forms, no requests except the issue's own images
# (https ones, and the media library's at MAILER_BASE_URL, which may be http:// in development).
SANDBOX_CSP = ("sandbox allow-popups allow-popups-to-escape-sandbox; default-src 'none'; "
               "style-src 'unsafe-inline'; img-src https: data:{media}; frame-ancestors 'self'")
CHANGEABLE = (NewsletterStatus.DRAFT, NewsletterStatus.SCHEDULED)
CHART_WIDTH, CHART_HEIGHT = 600, 120


def can_change(view):
    """Logged in as an owner or editor: every page and POST that changes something."""
    return login_required(role_required(Role.OWNER, Role.EDITOR)(view))


@bp.errorhandler(NotFound)
def _not_found(exc):
    return render_template("admin/message.html", title="Not found", message=str(exc)), 404


@bp.context_processor
def _template_names() -> dict:
    """The names a subject or body may use, as staff write them (help text in the editor)."""
    names = newsletters.TEMPLATE_NAMES
    return {"template_names": [f"{name}.{attr}" for name, attrs in names.items() if attrs for attr in sorted(attrs)]
            + [name for name, attrs in names.items() if not attrs]
            + [f"{block}()" for block in newsletters.BLOCKS]}  # a ready block: alone on a line of the body


def sandboxed(body: str, mimetype: str = "text/html", status: int = 200) -> Response:
    response = Response(body, status=status, mimetype=mimetype)
    response.headers["Content-Security-Policy"] = SANDBOX_CSP.format(media=_media_origin())
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Cache-Control"] = "no-store"
    return response


def _media_origin() -> str:
    """' <origin of MAILER_BASE_URL>' when it is not https (https: covers it already)."""
    scheme, _, rest = mailer().settings.base_url.partition("://")
    origin = f"{scheme}://{rest.split('/', 1)[0]}"
    return "" if scheme == "https" or not rest or not re.fullmatch(r"http://[A-Za-z0-9.:\[\]-]+", origin) else " " + origin


def _editor_input() -> dict:
    form = request.form
    segment = form.get("segment", "").strip()
    return {"subject": form.get("subject", ""), "preheader": form.get("preheader", ""),
            "body_md": form.get("body_md", ""), "layout": form.get("layout", "default"),
            "lists": form.getlist("lists"), "public": form.get("public") == "yes",
            "segment_id": int(segment) if segment.isdigit() else None}


def _render_editor(values: dict, newsletter_id: int | None = None, error: InvalidInput | None = None,
                   status: int = 200):
    with db_reader() as s:
        mailing_lists = s.scalars(sa.select(MailingList).order_by(MailingList.name)).all()
        segment_choices = segments.choices(s)
    return render_template("admin/newsletters/edit.html", values=values, newsletter_id=newsletter_id,
                           mailing_lists=mailing_lists, segment_choices=segment_choices,
                           layouts=newsletters.layouts(), error=error), status


# The list --------------------------------------------------------------------------

def _render_index(*, form: dict | None = None, error: InvalidInput | None = None, editing: int | None = None,
                  status: int = 200):
    with db_reader() as s:
        issues = s.scalars(sa.select(Newsletter).order_by(Newsletter.send_at.is_(None).desc(),
                                                          Newsletter.send_at.desc(), Newsletter.id.desc())).all()
        sent = dict(s.execute(sa.select(Delivery.ref_id, sa.func.count()).where(
            Delivery.kind == newsletters.NEWSLETTER, Delivery.status == DeliveryStatus.SENT,
        ).group_by(Delivery.ref_id)).all())
        rhythms = [(r, newsletters.next_occurrence(r, utcnow())) for r in newsletters.list_rhythms(s)]
    return render_template("admin/newsletters/index.html", issues=issues, sent=sent, rhythms=rhythms,
                           form=form or {}, error=error, editing=editing, weeks=newsletters.RHYTHM_WEEKS,
                           weekdays=newsletters.RHYTHM_WEEKDAYS, zones=sorted(known_zones()),
                           describe_day=newsletters.describe_rhythm_day), status


@bp.get("")
@login_required
def index():
    editing = request.args.get("rhythm", "")
    if editing.isdigit():
        with db_reader() as s:
            r = newsletters.get_rhythm(s, int(editing))
            week, _, weekday = r.day.partition(" ")
            form = {"name": r.name, "week": "day" if r.day.isdigit() else week,
                    "weekday": r.day if r.day.isdigit() else weekday, "time": f"{r.hour:02d}:{r.minute:02d}",
                    "timezone": r.timezone, "fill_from_blog": "yes" if r.fill_from_blog else ""}
        return _render_index(form=form, editing=int(editing))
    return _render_index()


def _rhythm_form() -> tuple[dict, dict]:
    """The form as typed, and the domain's arguments from it (InvalidInput: which field)."""
    form = {k: request.form.get(k, "") for k in ("name", "week", "weekday", "time", "timezone", "fill_from_blog")}
    try:
        hour, minute = (int(part) for part in form["time"].split(":"))
    except ValueError:
        raise InvalidInput("time", "Give the time like 09:00.") from None
    day = newsletters.rhythm_day(form["week"], form["weekday"])
    return form, dict(name=form["name"], day=day, hour=hour, minute=minute,
                      timezone=form["timezone"] or mailer().settings.timezone,
                      fill_from_blog=form["fill_from_blog"] == "yes")


@bp.post("/rhythms")
@can_change
def create_rhythm():
    form = {k: request.form.get(k, "") for k in ("name", "week", "weekday", "time", "timezone", "fill_from_blog")}
    try:
        form, values = _rhythm_form()
        with db_session() as s:
            newsletters.create_rhythm(s, **values)
    except InvalidInput as exc:
        return _render_index(form=form, error=exc, status=400)
    flash("Rhythm created.")
    return redirect(url_for(".index"))


@bp.post("/rhythms/<int:rhythm_id>")
@can_change
def update_rhythm(rhythm_id: int):
    form = {k: request.form.get(k, "") for k in ("name", "week", "weekday", "time", "timezone", "fill_from_blog")}
    try:
        form, values = _rhythm_form()
        with db_session() as s:
            newsletters.update_rhythm(s, rhythm_id, **values)
    except InvalidInput as exc:
        return _render_index(form=form, error=exc, editing=rhythm_id, status=400)
    flash("Rhythm changed: months already made ready keep their send time.")
    return redirect(url_for(".index"))


@bp.post("/rhythms/<int:rhythm_id>/delete")
@can_change
def delete_rhythm(rhythm_id: int):
    with db_session() as s:
        name = newsletters.delete_rhythm(s, rhythm_id).name
    flash(f"Rhythm “{name}” stopped: no more warnings or months; issues it scheduled stay scheduled.")
    return redirect(url_for(".index"))


# Composing --------------------------------------------------------------------------

@bp.get("/new")
@can_change
def new():
    return _render_editor({"subject": "", "preheader": "", "body_md": "", "layout": "default",
                           "lists": [contacts.DEFAULT_LIST], "public": False, "segment_id": None})


@bp.post("/new")
@can_change
def create():
    values = _editor_input()
    try:
        with db_session() as s:
            newsletter = newsletters.create_newsletter(
                s, subject=values["subject"], preheader=values["preheader"], body_md=values["body_md"],
                layout=values["layout"], lists=values["lists"], segment_id=values["segment_id"])
            newsletter.public = values["public"]  # create_newsletter takes no `public`
            newsletter_id = newsletter.id
    except InvalidInput as exc:
        return _render_editor(values, error=exc, status=400)
    flash("Draft saved.")
    return redirect(url_for(".detail", newsletter_id=newsletter_id))


@bp.get("/<int:newsletter_id>/edit")
@can_change
def edit(newsletter_id: int):
    with db_reader() as s:
        n = newsletters.get_newsletter(s, newsletter_id)
        values = {"subject": n.subject, "preheader": n.preheader, "body_md": n.body_md, "layout": n.layout,
                  "lists": [ml.slug for ml in n.lists], "public": n.public, "segment_id": n.segment_id}
    return _render_editor(values, newsletter_id)


@bp.post("/<int:newsletter_id>/edit")
@can_change
def update(newsletter_id: int):
    values = _editor_input()
    try:
        with db_session() as s:
            newsletters.update_newsletter(s, newsletter_id, **values)
    except InvalidInput as exc:
        return _render_editor(values, newsletter_id, error=exc, status=400)
    flash("Changes saved.")
    return redirect(url_for(".detail", newsletter_id=newsletter_id))


@bp.post("/preview")
@can_change
def preview():
    """The editor's current text as a sample reader gets it: JSON for the editor's script,
    or the HTML itself (part=both adds the text part) for a sandboxed iframe."""
    values = _editor_input()
    with db_reader() as s:  # the same webinars the mail would list, sample field values
        upcoming = newsletters.upcoming_for_issue(s, mailer().settings, utcnow())
        posts = blog.posts_for_issue(s, mailer().settings, now=utcnow(), list_slugs=values["lists"])
        samples = fields.sample_values(s)
    try:
        rendered = newsletters.preview(mailer().renderer, mailer().settings, subject=values["subject"],
                                       preheader=values["preheader"], body_md=values["body_md"],
                                       layout=values["layout"], upcoming=upcoming, posts=posts,
                                       field_samples=samples)
    except InvalidInput as exc:
        if wants_json():
            return error_json(exc.code, exc.message, exc.field)
        return sandboxed(render_template("admin/newsletters/preview_problem.html", message=exc.message), status=400)
    if wants_json():
        return jsonify(subject=rendered.subject, html=rendered.html, text=rendered.text)
    if request.form.get("part") == "both":
        text_part = render_template("admin/newsletters/preview_text_part.html", rendered=rendered)
        return sandboxed(rendered.html.replace("</body>", text_part + "</body>", 1))
    return sandboxed(rendered.html)


# One issue ---------------------------------------------------------------------------

def _sent_per_minute_chart(per_minute: list[tuple[str, int]], zone: str) -> dict | None:
    """Bars for an inline SVG chart; minutes are UTC in the report and local on the page."""
    if not per_minute:
        return None
    peak = max(n for _, n in per_minute)
    step = min(CHART_WIDTH / len(per_minute), 24)  # a few minutes stay thin bars, not blocks
    bars = []
    for i, (minute, n) in enumerate(per_minute):
        try:
            when = dt.datetime.fromisoformat(minute).replace(tzinfo=dt.timezone.utc)
            label = format_local(when, zone)
        except ValueError:
            label = minute
        height = max(1.0, (CHART_HEIGHT - 20) * n / peak)
        bars.append({"x": round(i * step + step * 0.1, 2), "width": round(max(step * 0.8, 1), 2),
                     "y": round(CHART_HEIGHT - 14 - height, 2), "height": round(height, 2), "count": n,
                     "label": label})
    return {"bars": bars, "peak": peak, "width": CHART_WIDTH, "height": CHART_HEIGHT,
            "first": bars[0]["label"], "last": bars[-1]["label"]}


def _schedule_defaults(newsletter: Newsletter, zone: str) -> dict:
    """The form's date and time: the issue's send time, or tomorrow at 09:00, local."""
    if newsletter.send_local_time:
        local = newsletters.reader_local_time(newsletter)
        return {"date": f"{local:%Y-%m-%d}", "time": f"{local:%H:%M}", "mode": "readers"}
    if newsletter.send_at:
        local = newsletter.send_at.astimezone(ZoneInfo(zone))
    else:
        local = (utcnow().astimezone(ZoneInfo(zone)) + dt.timedelta(days=1)).replace(hour=9, minute=0)
    return {"date": f"{local:%Y-%m-%d}", "time": f"{local:%H:%M}", "mode": "organisation"}


def _utc_day(when: dt.datetime) -> str:
    return f"{when:%H:%M} UTC on {when.day} {when:%B}"


def describe_reader_local_time(local: dt.datetime, span: tuple[dt.datetime, dt.datetime] | None) -> str:
    """'09:00 in each reader's time zone on Wednesday 10 March 2027 (from 20:00 UTC on
    9 March to 17:00 UTC on 10 March)': the issue's time and the span its readers make."""
    text = f"{local:%H:%M} in each reader's time zone on {local:%A} {local.day} {local:%B %Y}"
    if span is None:
        return text
    first, last = span
    if first == last:
        return f"{text} ({_utc_day(first)}: all its readers share that time)"
    return f"{text} (from {_utc_day(first)} to {_utc_day(last)})"


def _render_detail(newsletter_id: int, *, error: InvalidInput | None = None, form: dict | None = None,
                   status: int = 200):
    m = mailer()
    with db_reader() as s:
        newsletter = newsletters.get_newsletter(s, newsletter_id)
        changeable = newsletter.status in CHANGEABLE
        problems = newsletters.preflight(s, m.renderer, m.settings, newsletter_id) if changeable else []
        audience = newsletters.count_audience(s, newsletter_id) if changeable else newsletter.audience_count
        report = newsletters.report(s, newsletter_id, now=utcnow())
        reader_time = (describe_reader_local_time(newsletters.reader_local_time(newsletter),
                                                  newsletters.local_time_span(s, newsletter))
                       if newsletter.send_local_time else None)
        try:
            sample = newsletters.preview(m.renderer, m.settings, subject=newsletter.subject,
                                         preheader=newsletter.preheader, body_md=newsletter.body_md,
                                         layout=newsletter.layout, field_samples=fields.sample_values(s),
                                         upcoming=newsletters.upcoming_for_issue(s, m.settings, utcnow()),
                                         posts=blog.posts_for_issue(s, m.settings, newsletter, now=utcnow()))
        except InvalidInput:
            sample = None  # the pre-flight problems say why
        page = render_template(
            "admin/newsletters/detail.html", n=newsletter, lists=sorted(ml.name for ml in newsletter.lists),
            changeable=changeable, problems=problems, audience=audience, report=report, sample=sample,
            reader_time=reader_time, figures=_figures(newsletter), segment_text=_segment_text(s, newsletter),
            chart=_sent_per_minute_chart(report["sent_per_minute"], m.settings.timezone),
            schedule=form if form and "date" in form else _schedule_defaults(newsletter, m.settings.timezone),
            rhythms=newsletters.list_rhythms(s), error=error, form=form or {})
    return page, status


def _segment_text(session, newsletter: Newsletter) -> str | None:
    """'readers in Came to Spine Health: attended …' (the rules it went out with, once sent)."""
    if newsletter.segment_id is None:
        return None
    segment = segments.get_segment(session, newsletter.segment_id)
    rules = (segments.parse_stored(newsletter.segment_rules) if newsletter.segment_rules
             else segments.rules_of(segment))
    return f"readers in “{segment.name}”: {segments.describe(session, rules)}"


@bp.get("/<int:newsletter_id>")
@login_required
def detail(newsletter_id: int):
    return _render_detail(newsletter_id)


REPORT_FIGURES = ("audience", "sent", "queued", "held", "deferred", "failed", "suppressed", "cancelled", "unsubscribes")


def _figures(newsletter: Newsletter) -> tuple[str, ...]:
    """The report's columns: an issue sent in its readers' zones also shows who waits for their time."""
    if not newsletter.send_local_time:
        return REPORT_FIGURES
    return REPORT_FIGURES[:3] + ("waiting",) + REPORT_FIGURES[3:]


@bp.get("/<int:newsletter_id>/progress")
@login_required
def progress(newsletter_id: int):
    """Sent of audience while an issue is sending, for the page's poller (static/progress.js)."""
    with db_reader() as s:
        report = newsletters.report(s, newsletter_id, now=utcnow())
    return jsonify(status=report["status"], finished=report["status"] != "sending", value=report["sent"],
                   max=report["audience"] or 0, figures={key: report[key] for key in (*REPORT_FIGURES, "waiting")})


def _action(newsletter_id: int, action, done: str, form: dict | None = None):
    """Run one domain call; success → back to the issue's page, a refusal → the page with the message."""
    try:
        with db_session() as s:
            result = action(s)
    except InvalidInput as exc:
        return _render_detail(newsletter_id, error=exc, form=form, status=400)
    flash(done.format(result=result))
    return redirect(url_for(".detail", newsletter_id=newsletter_id))


def _dry_run(action) -> InvalidInput | None:
    """What the domain would refuse, found by running the action in a transaction that is
    rolled back (so the question is only asked about something that would work)."""
    with mailer().sessions() as s:
        try:
            action(s)
        except InvalidInput as exc:
            return exc
        finally:
            s.rollback()
    return None


def _confirmed(newsletter_id: int, endpoint: str, form: dict, what: str, button: str, *, action,
               needs_audience: bool = True):
    """None when the form carries confirm=yes; else the page that asks, saying what would
    happen to how many people (counted now), or the issue's page with the refusal the
    action would meet. An empty audience is refused on the question's page."""
    if request.form.get("confirm") == "yes":
        return None
    refusal = _dry_run(action)
    if refusal is not None:
        return _render_detail(newsletter_id, error=refusal, form=form, status=400)
    with db_reader() as s:
        n = newsletters.get_newsletter(s, newsletter_id)
        audience = newsletters.count_audience(s, newsletter_id)
        lists = sorted(ml.name for ml in n.lists)
        subject = newsletters.sample_subject(n.subject)
        segment = segments.get_segment(s, n.segment_id).name if n.segment_id else None
    who = (f"{audience:,} subscriber{'s' if audience != 1 else ''} of {', '.join(lists)}"
           + (f" in the segment “{segment}”" if segment else ""))
    refused = None
    if needs_audience and audience == 0:
        refused = "No one would receive it: its lists have no active subscribers" + (
            " in its segment" if segment else "") + ". Nothing was scheduled."
    page = render_template("admin/newsletters/confirm.html", n=n, subject=subject, endpoint=endpoint,
                           question=what.format(subject=subject, who=who), button=button, form=form, refused=refused)
    return page, 400 if refused else 200


@bp.post("/<int:newsletter_id>/schedule")
@can_change
def schedule(newsletter_id: int):
    form = {"date": request.form.get("date", ""), "time": request.form.get("time", ""),
            "mode": "readers" if request.form.get("mode") == "readers" else "organisation"}
    zone = mailer().settings.timezone
    try:
        local = dt.datetime.fromisoformat(f"{form['date']}T{form['time']}")
        when = None if form["mode"] == "readers" else local_to_utc(local, zone)
    except ValueError:
        return _render_detail(newsletter_id, status=400, form=form, error=InvalidInput(
            "send_at", "Give a date and a time, e.g. 2027-03-02 and 09:00."))
    except InvalidInput as exc:
        return _render_detail(newsletter_id, error=exc, form=form, status=400)
    at = (f"{local:%H:%M} in each reader's own time zone on {local:%A} {local.day} {local:%B %Y}"
          if form["mode"] == "readers" else format_local(when, zone))
    if form["mode"] == "readers":
        def action(s):
            newsletter = newsletters.schedule_in_reader_zones(s, newsletter_id, local, fallback_zone=zone,
                                                              now=utcnow())
            return describe_reader_local_time(local, newsletters.local_time_span(s, newsletter))
        done = "Scheduled for {result}."
    else:
        def action(s):
            return newsletters.schedule(s, newsletter_id, when, now=utcnow())
        done = f"Scheduled for {format_local(when, zone)}."
    asked = _confirmed(newsletter_id, "newsletters_admin.schedule", form,
                       "Schedule “{subject}” for " + at + " to {who} (counted now; counted again when it starts)?",
                       "Schedule", action=action)
    return asked or _action(newsletter_id, action, done, form)


@bp.post("/<int:newsletter_id>/send-now")
@can_change
def send_now(newsletter_id: int):
    def action(s):
        return newsletters.schedule(s, newsletter_id, utcnow(), now=utcnow())

    asked = _confirmed(newsletter_id, "newsletters_admin.send_now", {}, "Send “{subject}” to {who} now?",
                       "Send now", action=action)
    return asked or _action(newsletter_id, action, "Sending starts within a few seconds.")


@bp.post("/<int:newsletter_id>/cancel")
@can_change
def cancel(newsletter_id: int):
    with db_reader() as s:
        report = newsletters.report(s, newsletter_id)
    left = report["queued"] + report["held"] + report["deferred"]
    what = ("Cancel “{subject}”? " + (f"The {left:,} copies not sent yet are cancelled; the {report['sent']:,} "
                                     "sent stay sent." if report["status"] in ("sending", "paused")
                                     else "It will not be sent to {who}."))
    asked = _confirmed(newsletter_id, "newsletters_admin.cancel", {}, what, "Cancel the newsletter",
                       needs_audience=False, action=lambda s: newsletters.cancel(s, newsletter_id))
    if asked:
        return asked
    return _action(newsletter_id, lambda s: newsletters.cancel(s, newsletter_id), "Cancelled.")


@bp.post("/<int:newsletter_id>/duplicate")
@can_change
def duplicate(newsletter_id: int):
    with db_session() as s:
        copy_id = newsletters.duplicate_newsletter(s, newsletter_id).id
    flash("A copy, as a new draft: change what you need, then schedule it.")
    return redirect(url_for(".edit", newsletter_id=copy_id))


@bp.post("/<int:newsletter_id>/delete")
@can_change
def delete(newsletter_id: int):
    asked = _confirmed(newsletter_id, "newsletters_admin.delete", {},
                       "Delete the draft “{subject}”? It cannot be undone.", "Delete the draft",
                       needs_audience=False, action=lambda s: newsletters.delete_newsletter(s, newsletter_id))
    if asked:
        return asked
    try:
        with db_session() as s:
            subject = newsletters.delete_newsletter(s, newsletter_id)
    except InvalidInput as exc:
        return _render_detail(newsletter_id, error=exc, status=400)
    flash(f"Deleted the draft “{newsletters.sample_subject(subject)}”.")
    return redirect(url_for(".index"))


@bp.post("/<int:newsletter_id>/ready")
@can_change
def ready(newsletter_id: int):
    form = {"rhythm_id": request.form.get("rhythm_id", ""), "month": request.form.get("month", "")}
    try:
        rhythm_id = int(form["rhythm_id"])
    except ValueError:
        return _render_detail(newsletter_id, error=InvalidInput("rhythm_id", "Choose a rhythm."), form=form,
                              status=400)
    return _action(newsletter_id, lambda s: newsletters.mark_ready(s, newsletter_id, rhythm_id, form["month"],
                                                                   now=utcnow()),
                   "Ready: it goes out at that month's send time.", form)


@bp.post("/<int:newsletter_id>/pause")
@can_change
def pause(newsletter_id: int):
    return _action(newsletter_id, lambda s: newsletters.pause(s, newsletter_id),
                   "Paused: the rest is held until you resume.")


@bp.post("/<int:newsletter_id>/resume")
@can_change
def resume(newsletter_id: int):
    return _action(newsletter_id, lambda s: newsletters.resume(s, newsletter_id), "Resumed.")


@bp.post("/<int:newsletter_id>/test")
@can_change
def send_test(newsletter_id: int):
    raw = request.form.get("addresses", "")
    addresses = [a for a in re.split(r"[,;\s]+", raw) if a]
    return _action(newsletter_id, lambda s: newsletters.send_test(s, mailer().settings, newsletter_id, addresses,
                                                                   now=utcnow()),
                   "A [TEST] copy is on its way to {result} address(es).", {"addresses": raw})


# Previews of a saved issue (a sample reader, or a real contact: audited) ---------------------

def _saved_preview(newsletter_id: int):
    """The saved issue as the sample reader, or as ?contact=<email> gets it (an audited look
    at personal data). Returns the rendering, or a Response explaining why there is none."""
    m = mailer()
    address = request.args.get("contact", "").strip()
    with db_reader() as s:
        n = newsletters.get_newsletter(s, newsletter_id)
        contact = None
        if address:
            try:
                contact = s.scalar(sa.select(Contact).where(Contact.email == contacts.normalise_email(address)))
            except InvalidInput:
                contact = None
            if contact is None:
                return sandboxed(render_template("admin/newsletters/preview_problem.html",
                                                  message=f"No contact has the address {address}."), status=404)
            audit("preview_as_contact", f"newsletter {newsletter_id} as contact {contact.id}")
        try:
            return newsletters.preview(
                m.renderer, m.settings, subject=n.subject, preheader=n.preheader, body_md=n.body_md, layout=n.layout,
                contact={"first_name": contact.first_name, "name": contact.name, "email": contact.email,
                         "timezone": contact.timezone, "fields": fields.template_values(s, contact.id)}
                if contact else None, field_samples=fields.sample_values(s),
                upcoming=newsletters.upcoming_for_issue(s, m.settings, utcnow()),
                posts=blog.posts_for_issue(s, m.settings, n, now=utcnow()))
        except InvalidInput as exc:
            return sandboxed(render_template("admin/newsletters/preview_problem.html", message=exc.message),
                              status=400)


@bp.get("/<int:newsletter_id>/preview.html")
@login_required
def saved_preview_html(newsletter_id: int):
    rendered = _saved_preview(newsletter_id)
    return rendered if isinstance(rendered, Response) else sandboxed(rendered.html)


@bp.get("/<int:newsletter_id>/preview.txt")
@login_required
def saved_preview_text(newsletter_id: int):
    rendered = _saved_preview(newsletter_id)
    if isinstance(rendered, Response):
        return rendered
    return sandboxed(f"Subject: {rendered.subject}\n\n{rendered.text}", mimetype="text/plain")
