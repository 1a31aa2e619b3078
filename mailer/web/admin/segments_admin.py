"""Staff pages for segments: the list, and the editor (groups of rules, each rule a
condition, what it is about and a value) with the live count and ten sample contacts.
Viewers may look; owners and editors change. Every action calls mailer.audience.segments."""
from __future__ import annotations

import sqlalchemy as sa
from flask import (Blueprint, Response, flash, jsonify, redirect, render_template, request,
                   stream_with_context, url_for)

from mailer.audience import bulk, directory, segments
from mailer.db import utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.models import Field, MailingList, Newsletter, Role, Sequence, Webinar
from mailer.staff import jobs
from mailer.web import db_reader, db_session, error_json, mailer
from mailer.web.admin import bulk_views
from mailer.web.admin.auth import audit, login_required, role_required
from mailer.web.admin.newsletters_admin import can_change

bp = Blueprint("segments_admin", __name__, url_prefix="/admin/segments")
GROUP_SLOTS, RULE_SLOTS = 3, 4  # empty rows the editor offers beyond those in use
REF_KINDS = {"list": "list", "subscribed": "list", "confirmed": "list", "webinar": "webinar",
             "automation": "sequence", "field": "field"}
CONDITIONS = [  # (value, label) of the editor's condition menu
    *((f"list:{status}", f"is {status} on the list") for status in segments.OPS["list"]),
    ("subscribed:before", "subscribed before (date)"), ("subscribed:after", "subscribed after (date)"),
    ("subscribed:within_days", "subscribed in the last (days)"),
    ("confirmed:before", "confirmed before (date)"), ("confirmed:after", "confirmed after (date)"),
    ("confirmed:within_days", "confirmed in the last (days)"),
    ("source:contains", "signed up on a page containing (text)"),
    ("timezone:is", "time zone is"), ("timezone:is_not", "time zone is not"), ("timezone:is_empty", "has no time zone"),
    ("webinar:registered", "had a seat at the webinar"), ("webinar:attended", "attended the webinar"),
    ("webinar:missed", "missed the webinar"),
    ("automation:enrolled", "is in the automation"), ("automation:completed", "completed the automation"),
    ("field:eq", "field is"), ("field:ne", "field is not"), ("field:contains", "field contains (text)"),
    ("field:lt", "field is less than / before"), ("field:gt", "field is more than / after"),
    ("field:is_empty", "field is empty"),
]


@bp.errorhandler(NotFound)
def _not_found(exc):
    return render_template("admin/message.html", title="Not found", message=str(exc)), 404


def _choices(session) -> dict:
    return {"lists": session.execute(sa.select(MailingList.id, MailingList.name).order_by(MailingList.name)).all(),
            "webinars": session.execute(sa.select(Webinar.id, Webinar.title).order_by(Webinar.starts_at.desc())).all(),
            "automations": session.execute(sa.select(Sequence.id, Sequence.name).order_by(Sequence.name)).all(),
            "fields": session.execute(sa.select(Field.id, Field.label).order_by(Field.label)).all(),
            "conditions": CONDITIONS}


# Form ↔ rules -------------------------------------------------------------------------------

def _rows_from_form(form) -> list[dict]:
    """The editor's groups as typed: every slot, empty ones too (to show them again)."""
    groups = []
    for g in range(int(form.get("group_slots", GROUP_SLOTS) or GROUP_SLOTS)):
        rules = [{"condition": form.get(f"g{g}r{r}-condition", ""), "ref": form.get(f"g{g}r{r}-ref", ""),
                  "value": form.get(f"g{g}r{r}-value", "")}
                 for r in range(int(form.get(f"g{g}-slots", RULE_SLOTS) or RULE_SLOTS))]
        groups.append({"match": form.get(f"g{g}-match", "all"), "rules": rules})
    return groups


def _rules_from_rows(match: str, groups: list[dict]) -> tuple[dict, list[tuple[int, int]]]:
    """The rules' JSON shape from the filled rows, and where each rule came from (group and
    row on the page), to say where a problem is. A "which" of the wrong kind is refused."""
    data, places = {"match": match, "groups": []}, []
    for g, group in enumerate(groups):
        rules = []
        for r, row in enumerate(group["rules"]):
            if not row["condition"]:
                continue
            kind, _, op = row["condition"].partition(":")
            ref_kind, _, ref_id = row["ref"].partition(":")
            if ref_id and REF_KINDS.get(kind) != ref_kind:
                raise InvalidInput(f"groups.{len(data['groups'])}.rules.{len(rules)}.ref_id",
                                   f"Choose a {REF_KINDS.get(kind, 'nothing')} for this rule."
                                   if kind in REF_KINDS else "This rule is not about a list, webinar, automation or field.")
            rules.append({"kind": kind, "op": op, "ref_id": ref_id or None, "value": row["value"]})
            places.append((g, r))
        if rules:
            data["groups"].append({"match": group["match"], "rules": rules})
    return data, places


def _where(error: InvalidInput, data: dict, places: list[tuple[int, int]]) -> str:
    """'Group 2, rule 1: …' for a problem in the compacted rules."""
    parts = error.field.split(".")
    if len(parts) >= 4 and parts[0] == "groups" and parts[2] == "rules":
        g, r = int(parts[1]), int(parts[3])
        index = sum(len(group["rules"]) for group in data["groups"][:g]) + r
        if index < len(places):
            page_g, page_r = places[index]
            return f"Group {page_g + 1}, rule {page_r + 1}: {error.message}"
    return error.message


def _rows_from_rules(rules: segments.Rules) -> list[dict]:
    groups = [{"match": g.match, "rules": [
        {"condition": f"{r.kind}:{r.op}", "ref": f"{REF_KINDS[r.kind]}:{r.ref_id}" if r.ref_id else "",
         "value": "" if r.value is None else str(r.value)} for r in g.rules]} for g in rules.groups]
    return groups


def _padded(groups: list[dict]) -> list[dict]:
    """The groups with empty rows to add rules, and empty groups up to GROUP_SLOTS."""
    empty = {"condition": "", "ref": "", "value": ""}
    padded = [{"match": g["match"], "rules": [r for r in g["rules"] if r["condition"]]} for g in groups]
    padded = [g for g in padded if g["rules"]]
    for g in padded:
        g["rules"] += [dict(empty) for _ in range(max(1, RULE_SLOTS - len(g["rules"])))]
    while len(padded) < GROUP_SLOTS:
        padded.append({"match": "all", "rules": [dict(empty) for _ in range(RULE_SLOTS)]})
    return padded


# Pages --------------------------------------------------------------------------------------

@bp.get("")
@login_required
def index():
    with db_reader() as s:
        rows = [{"segment": seg, "text": segments.describe(s, segments.rules_of(seg)),
                 "issues": s.scalar(sa.select(sa.func.count()).where(Newsletter.segment_id == seg.id))}
                for seg in segments.list_segments(s, archived=True)]
    return render_template("admin/segments/index.html", rows=rows)


def _render_editor(*, segment_id: int | None, name: str, match: str, groups: list[dict],
                   error: InvalidInput | None = None, status: int = 200):
    result = None
    with db_reader() as s:
        choices = _choices(s)
        segment = segments.get_segment(s, segment_id) if segment_id else None
        if error is None:
            try:
                data, places = _rules_from_rows(match, groups)
                try:
                    rules = segments.parse_rules(s, data)
                except InvalidInput as exc:
                    raise InvalidInput(exc.field, _where(exc, data, places)) from None
                now = utcnow()
                result = {"count": segments.count(s, rules, now), "sample": segments.sample(s, rules, now),
                          "text": segments.describe(s, rules)}
            except InvalidInput as exc:
                error = None if not any(r["condition"] for g in groups for r in g["rules"]) else exc
        page = render_template("admin/segments/edit.html", segment=segment, segment_id=segment_id, name=name,
                               match=match, groups=_padded(groups), error=error, result=result,
                               bulk_jobs=jobs.bulk_jobs(s, segment_id) if segment_id else [],
                               open_automations=bulk_views.open_sequences(s) if segment_id else [], **choices)
    if result is not None:
        audit("segment.sample", f"segment {segment_id or '(unsaved)'}: {result['count']} contacts")
    return page, status


@bp.get("/new")
@can_change
def new():
    return _render_editor(segment_id=None, name="", match="all", groups=[])


@bp.get("/<int:segment_id>")
@login_required
def edit(segment_id: int):
    with db_reader() as s:
        segment = segments.get_segment(s, segment_id)
        rules = segments.rules_of(segment)
        name = segment.name
    return _render_editor(segment_id=segment_id, name=name, match=rules.match, groups=_rows_from_rules(rules))


def _save(segment_id: int | None):
    form = request.form
    name, match, groups = form.get("name", ""), form.get("match", "all"), _rows_from_form(form)
    if form.get("action") == "count":
        return _render_editor(segment_id=segment_id, name=name, match=match, groups=groups)
    try:
        data, places = _rules_from_rows(match, groups)
        with db_session() as s:
            try:
                if segment_id:
                    segments.update_segment(s, segment_id, name=name, rules=data, now=utcnow())
                    saved = segment_id
                else:
                    saved = segments.create_segment(s, name=name, rules=data, now=utcnow()).id
            except InvalidInput as exc:
                raise InvalidInput(exc.field, _where(exc, data, places)) from None
    except InvalidInput as exc:
        return _render_editor(segment_id=segment_id, name=name, match=match, groups=groups, error=exc, status=400)
    flash("Segment saved.")
    return redirect(url_for(".edit", segment_id=saved))


@bp.post("/new")
@can_change
def create():
    return _save(None)


@bp.post("/<int:segment_id>")
@can_change
def update(segment_id: int):
    return _save(segment_id)


@bp.post("/count")
@can_change
def count():
    """The live count and sample for the editor's script (JSON), from the form as typed."""
    with db_reader() as s:
        try:
            data, places = _rules_from_rows(request.form.get("match", "all"), _rows_from_form(request.form))
            try:
                rules = segments.parse_rules(s, data)
            except InvalidInput as exc:
                raise InvalidInput(exc.field, _where(exc, data, places)) from None
        except InvalidInput as exc:
            return error_json(exc.code, exc.message, exc.field)
        now = utcnow()
        found, sample = segments.count(s, rules, now), segments.sample(s, rules, now)
        text = segments.describe(s, rules)
    audit("segment.sample", f"segment (editor): {found} contacts")
    return jsonify(count=found, text=text, sample=[{"id": c.id, "email": c.email, "name": c.name,
                                                    "url": url_for("contacts_admin.detail", contact_id=c.id)}
                                                   for c in sample])


@bp.post("/<int:segment_id>/archive")
@can_change
def archive(segment_id: int):
    with db_session() as s:
        segments.archive_segment(s, segment_id, now=utcnow())
    flash("Archived: it can no longer be chosen for a new issue; issues that used it keep it.")
    return redirect(url_for(".index"))


# Bulk actions -------------------------------------------------------------------------------

def _bulk_page_args(segment_id: int, name: str) -> dict:
    return {"about": f"in “{name}”", "back_url": url_for(".edit", segment_id=segment_id),
            "run_url": url_for(".bulk_run", segment_id=segment_id), "hidden": {}}


@bp.post("/<int:segment_id>/bulk")
@can_change
def bulk_confirm(segment_id: int):
    """The confirmation page: what would happen to how many contacts, counted now."""
    asked = bulk_views.requested()
    try:
        with db_reader() as s:
            planned = bulk.plan(s, **asked, segment_id=segment_id, now=utcnow())
            name = segments.get_segment(s, segment_id).name
    except InvalidInput as exc:
        return bulk_views.refused(exc.message, url_for(".edit", segment_id=segment_id))
    return bulk_views.confirm_page(planned, **_bulk_page_args(segment_id, name))


@bp.post("/<int:segment_id>/bulk/run")
@can_change
def bulk_run(segment_id: int):
    """Queue the confirmed action; refused if the count changed meanwhile or (erasing) the
    typed confirmation does not match."""
    asked = bulk_views.requested()
    with db_session() as s:
        try:
            planned = bulk.plan(s, **asked, segment_id=segment_id, now=utcnow())
        except InvalidInput as exc:
            return bulk_views.refused(exc.message, url_for(".edit", segment_id=segment_id))
        name = segments.get_segment(s, segment_id).name
        job_id, page = bulk_views.queue(s, planned, **_bulk_page_args(segment_id, name))
    if page:
        return page
    bulk_views.audited(planned, job_id, action=f"segment.bulk_{planned.action}", subject=f"segment {segment_id}")
    flash(f"Queued: it runs in the background; its progress is below (job {job_id}).")
    return redirect(url_for(".edit", segment_id=segment_id) + "#bulk")


@bp.get("/jobs/<int:job_id>/progress")
@login_required
def bulk_progress(job_id: int):
    with db_reader() as s:
        job = jobs.describe_bulk(jobs.get_bulk_job(s, job_id))
    return jsonify(status=job["status"], finished=job["finished"], value=job["done"], max=job["total"] or 0,
                   figures={"done": job["done"], "changed": job["changed"]})


@bp.get("/<int:segment_id>/export.csv")
@login_required
@role_required(Role.OWNER)
def export(segment_id: int):
    """The segment's contacts as CSV, streamed (owners, as the contacts export)."""
    with db_reader() as s:
        rules = segments.rules_of(segments.get_segment(s, segment_id))
    audit("segment.export", f"segment {segment_id}")
    session_factory, now = mailer().read_sessions, utcnow()

    def chunks():
        with session_factory() as s:
            yield from directory.contacts_csv(directory.export_contacts(
                s, within=segments.contacts_in(s, rules, now)))

    return Response(stream_with_context(chunks()), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="segment-{segment_id}.csv"'})
