"""Sequences (automations in the console): a trigger, ordered steps of mail in a layout,
enrolments advanced in bulk by the worker (each step a Delivery queued at its due
time, inside the step's send window in the reader's own zone), and the mail of a step."""
from __future__ import annotations

import dataclasses
import datetime as dt
import re
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from mailer import clock
from mailer.audience import fields, segments
from mailer.campaigns import newsletters
from mailer.db import dialect_insert, take_singleton
from mailer.delivery import outbox
from mailer.delivery.registry import Kind
from mailer.errors import InvalidInput, NotFound
from mailer.models import (NOT_YET_SENT, PENDING_DELIVERY, ConsentAction, ConsentEvent, Contact, Delivery,
                           DeliveryStatus, Enrolment, EnrolmentStatus, MailingList, Priority, Registration,
                           RegistrationStatus, Sequence, SequenceSkip, SequenceStatus, SequenceStep, SequenceTrigger,
                           Segment, StepCondition, Subscription, SubscriptionStatus, Suppression, Webinar,
                           WebinarStatus)

STEP = "sequence_step"
STEP_TEST = "sequence_step_test"  # a "[TEST]" copy staff send themselves; never counted
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_WORDS = {"weekdays": DAYS[:5], "weekends": DAYS[5:], "daily": (), "every day": (), "": ()}
_WINDOW = re.compile(r"^\s*(?P<days>.*?)\s*(?P<start>\d{1,2}:\d{2})\s*[-–]\s*(?P<end>\d{1,2}:\d{2})\s*$")
DELAY_UNITS = {"minutes": 1, "hours": 60, "days": 24 * 60}
# Attendance is marked after a webinar, from the platform's export: "missed" enrols a
# registrant not marked attended this long after the end, not at the end itself.
MISSED_AFTER = dt.timedelta(hours=24)
# Attendance marked this long after a webinar's end no longer enrols anyone.
ATTENDANCE_WITHIN = dt.timedelta(days=30)
# Each run looks at triggers since the last run's time less this much: a confirmation
# stamped just before a run but committed after it is still seen by the next.
TRIGGER_OVERLAP = dt.timedelta(minutes=10)
LIVE = (EnrolmentStatus.ACTIVE, EnrolmentStatus.COMPLETED)
# Bulk UPDATEs of enrolments do not bring the rows they match into Python: SQLAlchemy's
# default ("auto": "fetch" for criteria it cannot evaluate) returns every matched key to
# update loaded objects, 1,000,000 of them for one step (peak RSS 528 MB; bench/sequences.py).
SYNC = False
# A step due for at most this many readers at once goes out with the priority of a
# confirmation (a welcome after a signup, a follow-up: seconds, even while an issue is
# being sent to everyone); a bigger burst (a window opening for a whole list, a step added
# for everyone who finished) is bulk mail like an issue, so it cannot hold up confirmations.
SMALL_BATCH = 1000


# Staff: sequences and their steps -------------------------------------------------------

def create_sequence(session: Session, *, name: str, trigger: str, list_id: int, trigger_list_id: int | None = None,
                    trigger_webinar_id: int | None = None) -> Sequence:
    """A draft sequence whose mail goes out as list mail of `list_id`."""
    sequence = Sequence(status=SequenceStatus.DRAFT)
    _apply(session, sequence, name=name, trigger=trigger, list_id=list_id, trigger_list_id=trigger_list_id,
           trigger_webinar_id=trigger_webinar_id)
    session.add(sequence)
    session.flush()
    return sequence


def update_sequence(session: Session, sequence_id: int, *, name: str, trigger: str, list_id: int,
                    trigger_list_id: int | None = None, trigger_webinar_id: int | None = None) -> Sequence:
    sequence = get_sequence(session, sequence_id)
    if sequence.status == SequenceStatus.ARCHIVED:
        raise InvalidInput("status", "An archived sequence cannot be changed.")
    _apply(session, sequence, name=name, trigger=trigger, list_id=list_id, trigger_list_id=trigger_list_id,
           trigger_webinar_id=trigger_webinar_id)
    return sequence


def _apply(session: Session, sequence: Sequence, *, name, trigger, list_id, trigger_list_id, trigger_webinar_id):
    name = " ".join((name or "").split())
    if not name or len(name) > 200:
        raise InvalidInput("name", "Give the sequence a name of up to 200 characters.")
    if trigger not in set(SequenceTrigger):
        raise InvalidInput("trigger", f"Unknown trigger '{trigger}'; one of: {', '.join(SequenceTrigger)}.")
    if session.get(MailingList, list_id) is None:
        raise InvalidInput("list_id", "Choose the list its mail is sent as (unsubscribing leaves that list).")
    if trigger in (SequenceTrigger.CONFIRMED, SequenceTrigger.IMPORTED):
        if trigger_list_id is None or session.get(MailingList, trigger_list_id) is None:
            what = "confirmations" if trigger == SequenceTrigger.CONFIRMED else "imports"
            raise InvalidInput("trigger_list_id", f"Choose the list whose {what} start the sequence.")
        trigger_webinar_id = None
    elif trigger in (SequenceTrigger.REGISTERED, SequenceTrigger.ATTENDED, SequenceTrigger.MISSED):
        if trigger_webinar_id is not None and session.get(Webinar, trigger_webinar_id) is None:
            raise InvalidInput("trigger_webinar_id", f"No webinar {trigger_webinar_id}.")
        trigger_list_id = None
    else:
        trigger_list_id = trigger_webinar_id = None
    sequence.name, sequence.trigger, sequence.list_id = name, trigger, list_id
    sequence.trigger_list_id, sequence.trigger_webinar_id = trigger_list_id, trigger_webinar_id


def trigger_text(session: Session, sequence: Sequence) -> str:
    """Who the sequence starts for, in plain words (the console and the CLI say this)."""
    listed = session.get(MailingList, sequence.trigger_list_id) if sequence.trigger_list_id else None
    webinar = session.get(Webinar, sequence.trigger_webinar_id) if sequence.trigger_webinar_id else None
    which = f"“{webinar.title}”" if webinar else "any webinar"
    return {
        SequenceTrigger.CONFIRMED: f"Someone confirms their subscription to {listed.name if listed else '?'}",
        SequenceTrigger.REGISTERED: f"Someone takes a seat at {which}",
        SequenceTrigger.ATTENDED: f"Someone is marked attended at {which}",
        SequenceTrigger.MISSED: f"Someone had a seat at {which} and is not marked attended a day after it ends",
        SequenceTrigger.MANUAL: "Staff or the API enrol someone",
        "imported": f"Someone is imported into {listed.name if listed else '?'}",
    }.get(sequence.trigger, sequence.trigger)


def delay_text(step: SequenceStep, first: bool) -> str:
    """'At once', '3 days after the previous step', '2 hours after enrolment'."""
    if not step.delay_minutes:
        return "At enrolment" if first else "Right after the previous step"
    amount, unit = delay_parts(step.delay_minutes)
    unit = unit if amount != 1 else unit[:-1]
    return f"{amount} {unit} after {'enrolment' if first else 'the previous step'}"


def get_sequence(session: Session, sequence_id: int) -> Sequence:
    sequence = session.get(Sequence, sequence_id)
    if sequence is None:
        raise NotFound(f"no sequence {sequence_id}")
    return sequence


def list_sequences(session: Session) -> list[Sequence]:
    """Every sequence, newest first (there are few)."""
    return list(session.scalars(sa.select(Sequence).order_by(Sequence.id.desc())))


def enrolment_counts(session: Session, sequence_ids: list[int]) -> dict[int, dict[str, int]]:
    """Per sequence: its enrolments by status (active, completed, exited), in one query."""
    counts: dict[int, dict[str, int]] = {sequence_id: {} for sequence_id in sequence_ids}
    for sequence_id, status, n in session.execute(
            sa.select(Enrolment.sequence_id, Enrolment.status, sa.func.count())
            .where(Enrolment.sequence_id.in_(sequence_ids)).group_by(Enrolment.sequence_id, Enrolment.status)):
        counts[sequence_id][status] = n
    return counts


def get_step(session: Session, sequence_id: int, step_id: int) -> SequenceStep:
    """A live step of this sequence (NotFound for a deleted one or another sequence's)."""
    step = session.get(SequenceStep, step_id)
    if step is None or step.sequence_id != sequence_id or step.deleted_at is not None:
        raise NotFound(f"no step {step_id} in sequence {sequence_id}")
    return step


def live_steps(session: Session, sequence_id: int) -> list[SequenceStep]:
    return list(session.scalars(sa.select(SequenceStep).where(
        SequenceStep.sequence_id == sequence_id, SequenceStep.deleted_at.is_(None)).order_by(SequenceStep.position)))


def parse_window(text: str | None) -> tuple[str, int | None, int | None]:
    """"weekdays 09:00–11:00", "mon,wed 18:00-20:00", "09:00-11:00" (every day), or
    empty (no window) → (days, start minute, end minute) in the reader's zone."""
    if not (text or "").strip():
        return "", None, None
    match = _WINDOW.match(text.lower())
    if not match:
        raise InvalidInput("window", "Write a window like 'weekdays 09:00-11:00' or 'mon,wed 18:00-20:00'.")
    words = match["days"].strip()
    if words in _DAY_WORDS:
        days = _DAY_WORDS[words]
    else:
        days = tuple(d.strip()[:3] for d in words.split(",") if d.strip())
        if not days or any(d not in DAYS for d in days):
            raise InvalidInput("window", f"Days are weekdays, weekends, daily, or some of {', '.join(DAYS)}.")
    start, end = (_minute(match[part]) for part in ("start", "end"))
    if start >= end:
        raise InvalidInput("window", "The window must end after it starts, on the same day.")
    return ",".join(d for d in DAYS if d in days), start, end


def _minute(text: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if hours > 24 or minutes > 59 or hours * 60 + minutes > 24 * 60:
        raise InvalidInput("window", f"'{text}' is not a time of day.")
    return hours * 60 + minutes


def window_text(step: SequenceStep) -> str:
    """The step's window as staff write it ("" for none); parse_window reads it back."""
    if step.window_start is None:
        return ""
    days = tuple(step.window_days.split(",")) if step.window_days else ()
    label = {DAYS[:5]: "weekdays", DAYS[5:]: "weekends", (): "daily"}.get(days, step.window_days)
    return f"{label} {_hhmm(step.window_start)}-{_hhmm(step.window_end)}"


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def delay_parts(minutes: int) -> tuple[int, str]:
    """A delay in the largest unit that divides it, as staff would write it: 4320 → (3, "days")."""
    for unit in ("days", "hours"):
        if minutes and minutes % DELAY_UNITS[unit] == 0:
            return minutes // DELAY_UNITS[unit], unit
    return minutes, "minutes"


def window_open(step: SequenceStep, zone: str, now: dt.datetime) -> bool:
    """Whether `now` is inside the step's send window for a reader in `zone` (wall-clock
    time there, so DST-correct). Pure."""
    if step.window_start is None:
        return True
    local = now.astimezone(ZoneInfo(zone))
    if step.window_days and DAYS[local.weekday()] not in step.window_days.split(","):
        return False
    return step.window_start <= local.hour * 60 + local.minute < step.window_end


def _step_values(session: Session, *, subject, preheader, body_md, layout, delay, window, condition,
                 condition_ref_id) -> dict:
    subject, preheader = newsletters.check_content(subject=subject, preheader=preheader, body_md=body_md,
                                                   layout=layout, what="A step",
                                                   field_keys=fields.template_keys(session))
    amount, unit = delay if isinstance(delay, tuple) else (delay, "minutes")
    if unit not in DELAY_UNITS or not isinstance(amount, int) or not 0 <= amount * DELAY_UNITS[unit] <= 366 * 1440:
        raise InvalidInput("delay", "The delay is a whole number of minutes, hours or days, up to a year.")
    days, start, end = parse_window(window)
    if condition is not None:
        if condition not in set(StepCondition):
            raise InvalidInput("condition", f"Unknown condition '{condition}'.")
        model = {StepCondition.ON_LIST: MailingList, StepCondition.ATTENDED: Webinar,
                 StepCondition.IN_SEGMENT: Segment}[condition]
        if condition_ref_id is None or session.get(model, condition_ref_id) is None:
            raise InvalidInput("condition_ref_id", "Choose the list or webinar the condition is about.")
    else:
        condition_ref_id = None
    return dict(subject=subject, preheader=preheader, body_md=body_md or "", layout=layout,
                delay_minutes=amount * DELAY_UNITS[unit], window_days=days, window_start=start, window_end=end,
                condition=condition, condition_ref_id=condition_ref_id)


def add_step(session: Session, sequence_id: int, *, subject: str, body_md: str, preheader: str = "",
             layout: str = "default", delay: int | tuple[int, str] = 0, window: str | None = None,
             condition: str | None = None, condition_ref_id: int | None = None) -> SequenceStep:
    """A new last step (template-checked like a newsletter). `delay` is minutes, or
    (amount, "minutes" | "hours" | "days"), after the previous step was queued.
    Enrolments already past the previous last step get it too, when it is due."""
    sequence = get_sequence(session, sequence_id)
    if sequence.status == SequenceStatus.ARCHIVED:
        raise InvalidInput("status", "An archived sequence cannot be changed.")
    values = _step_values(session, subject=subject, preheader=preheader, body_md=body_md, layout=layout, delay=delay,
                          window=window, condition=condition, condition_ref_id=condition_ref_id)
    # After every step ever made, deleted ones too: a position is never reused.
    last = session.scalar(sa.select(sa.func.max(SequenceStep.position)).where(SequenceStep.sequence_id == sequence_id))
    step = SequenceStep(sequence_id=sequence_id, position=(last or 0) + 1, **values)
    session.add(step)
    session.flush()
    return step


def update_step(session: Session, step_id: int, *, subject: str, body_md: str, preheader: str = "",
                layout: str = "default", delay: int | tuple[int, str] = 0, window: str | None = None,
                condition: str | None = None, condition_ref_id: int | None = None) -> SequenceStep:
    """Change a step: mail rendered from now on (queued or not yet) has the new text;
    the delay, window and condition apply to enrolments not yet past it."""
    step = _live_step(session, step_id)
    values = _step_values(session, subject=subject, preheader=preheader, body_md=body_md, layout=layout, delay=delay,
                          window=window, condition=condition, condition_ref_id=condition_ref_id)
    for name, value in values.items():
        setattr(step, name, value)
    return step


def delete_step(session: Session, step_id: int, *, now: dt.datetime) -> SequenceStep:
    """Remove a step (kept, marked deleted): nobody gets it from now on, what was sent
    stays sent, its queued copies are cancelled, and nothing before it is sent again."""
    step = _live_step(session, step_id)
    step.deleted_at = now
    session.execute(sa.update(Delivery).where(
        Delivery.kind == STEP, Delivery.ref_id == step.id, Delivery.status.in_(NOT_YET_SENT),
    ).values(status=DeliveryStatus.CANCELLED, last_error="step deleted"))
    return step


def _live_step(session: Session, step_id: int) -> SequenceStep:
    step = session.get(SequenceStep, step_id)
    if step is None or step.deleted_at is not None:
        raise NotFound(f"no step {step_id}")
    if step.sequence.status == SequenceStatus.ARCHIVED:
        raise InvalidInput("status", "An archived sequence cannot be changed.")
    return step


def activate(session: Session, sequence_id: int, *, now: dt.datetime) -> Sequence:
    """Start a draft: from now on its trigger enrols people (nobody from before)."""
    sequence = get_sequence(session, sequence_id)
    if sequence.status != SequenceStatus.DRAFT:
        raise InvalidInput("status", f"The sequence is {sequence.status}; only a draft can be started.")
    if not live_steps(session, sequence_id):
        raise InvalidInput("steps", "Add a step before starting the sequence.")
    sequence.status, sequence.activated_at = SequenceStatus.ACTIVE, now
    return sequence


def resume(session: Session, sequence_id: int) -> Sequence:
    """Go on after a pause: held mail goes out, and steps that came due meanwhile are
    queued by the next run (each once: the dedupe keys)."""
    sequence = get_sequence(session, sequence_id)
    if sequence.status != SequenceStatus.PAUSED:
        raise InvalidInput("status", f"Only a paused sequence can be resumed; this one is {sequence.status}.")
    sequence.status = SequenceStatus.ACTIVE
    session.execute(sa.update(Delivery).where(
        Delivery.kind == STEP, Delivery.ref_id.in_(_step_ids(sequence_id)), Delivery.status == DeliveryStatus.HELD,
    ).values(status=DeliveryStatus.QUEUED))
    return sequence


def pause(session: Session, sequence_id: int) -> Sequence:
    """Queue nothing more and hold what is queued; resume() sends it, and whatever
    came due meanwhile, once. Triggers go on enrolling people, whose steps wait too."""
    sequence = get_sequence(session, sequence_id)
    if sequence.status != SequenceStatus.ACTIVE:
        raise InvalidInput("status", f"Only an active sequence can be paused; this one is {sequence.status}.")
    sequence.status = SequenceStatus.PAUSED
    session.execute(sa.update(Delivery).where(
        Delivery.kind == STEP, Delivery.ref_id.in_(_step_ids(sequence_id)), Delivery.status.in_(PENDING_DELIVERY),
    ).values(status=DeliveryStatus.HELD))
    return sequence


def archive(session: Session, sequence_id: int) -> Sequence:
    """Stop for good: nothing more is queued or sent."""
    sequence = get_sequence(session, sequence_id)
    sequence.status = SequenceStatus.ARCHIVED
    session.execute(sa.update(Delivery).where(
        Delivery.kind == STEP, Delivery.ref_id.in_(_step_ids(sequence_id)), Delivery.status.in_(NOT_YET_SENT),
    ).values(status=DeliveryStatus.CANCELLED, last_error="sequence archived"))
    return sequence


def _step_ids(sequence_id: int):
    return sa.select(SequenceStep.id).where(SequenceStep.sequence_id == sequence_id)


def report(session: Session, sequence_id: int) -> list[dict]:
    """Per step (deleted ones too): deliveries by status, the condition skips, and the
    unsubscribes it caused: readers who left the sequence's list after this step was the
    last of the sequence's mail they were sent."""
    sequence = get_sequence(session, sequence_id)
    steps = session.scalars(sa.select(SequenceStep).where(SequenceStep.sequence_id == sequence_id)
                            .order_by(SequenceStep.position)).all()
    ids = [s.id for s in steps]
    counts: dict[int, dict[str, int]] = {}
    for step_id, status, n in session.execute(sa.select(Delivery.ref_id, Delivery.status, sa.func.count()).where(
            Delivery.kind == STEP, Delivery.ref_id.in_(ids)).group_by(Delivery.ref_id, Delivery.status)):
        counts.setdefault(step_id, {})[status] = n
    skips = dict(session.execute(sa.select(SequenceSkip.step_id, sa.func.count()).where(
        SequenceSkip.step_id.in_(ids)).group_by(SequenceSkip.step_id)).all())
    unsubscribes = _unsubscribes_by_step(session, sequence, ids)
    return [{"step_id": s.id, "position": s.position, "subject": s.subject, "deleted": s.deleted_at is not None,
             "deliveries": counts.get(s.id, {}), "skipped": skips.get(s.id, 0),
             "unsubscribes": unsubscribes.get(s.id, 0)} for s in steps]


def _unsubscribes_by_step(session: Session, sequence: Sequence, step_ids: list[int]) -> dict[int, int]:
    """Withdrawals from the sequence's list, each counted for the step its reader was
    sent last before it (a reader who leaves and later rejoins and leaves counts once per step)."""
    if not step_ids:
        return {}
    sent, later = aliased(Delivery), aliased(Delivery)
    mine = (sent.kind == STEP, sent.ref_id.in_(step_ids), sent.status == DeliveryStatus.SENT)
    return dict(session.execute(
        sa.select(sent.ref_id, sa.func.count(sa.distinct(ConsentEvent.contact_id)))
        .join(ConsentEvent, ConsentEvent.contact_id == sent.contact_id)
        .where(*mine, ConsentEvent.action == ConsentAction.WITHDRAWN, ConsentEvent.list_id == sequence.list_id,
               ConsentEvent.created_at >= sent.sent_at,
               ~sa.exists().where(later.contact_id == sent.contact_id, later.kind == STEP,
                                  later.ref_id.in_(step_ids), later.status == DeliveryStatus.SENT,
                                  later.sent_at > sent.sent_at, later.sent_at <= ConsentEvent.created_at))
        .group_by(sent.ref_id)).all())


# What a reader gets and when ------------------------------------------------------------

def next_send_time(step: SequenceStep, zone: str, earliest: dt.datetime) -> dt.datetime:
    """The first instant at or after `earliest` inside the step's send window for a reader
    in `zone` (wall-clock there, so DST-correct), as window_open decides it; the worker
    queues the step then, within its few seconds' tick."""
    if step.window_start is None:
        return earliest
    day = earliest.astimezone(ZoneInfo(zone)).date()
    for offset in range(8):  # every window opens on some day of the week
        date = day + dt.timedelta(days=offset)
        if step.window_days and DAYS[date.weekday()] not in step.window_days.split(","):
            continue
        midnight = dt.datetime.combine(date, dt.time())
        opens = clock.reader_local_to_utc(midnight + dt.timedelta(minutes=step.window_start), zone)
        closes = clock.reader_local_to_utc(midnight + dt.timedelta(minutes=step.window_end), zone)
        if earliest < closes:
            return max(earliest, opens)
    raise AssertionError("a send window that never opens")  # parse_window refuses one


@dataclasses.dataclass
class PlannedStep:
    """One step of one reader's way through a sequence: what happened (`state` sent,
    queued, failed, cancelled, skipped) or what will (planned, with `at` in UTC), and a
    `note` for staff (a condition that would skip it today, a window it waits for)."""

    step: SequenceStep
    state: str
    at: dt.datetime | None = None
    note: str = ""


@dataclasses.dataclass
class ReaderPlan:
    """A reader's way through one sequence: their enrolment (None: as if enrolled now),
    the zone their windows follow, why nothing more comes (`stopped`), and each live step."""

    sequence: Sequence
    contact: Contact
    enrolment: Enrolment | None
    zone: str
    stopped: str
    steps: list[PlannedStep]

    @property
    def next_step(self) -> PlannedStep | None:
        return next((s for s in self.steps if s.state in ("planned", "queued")), None)


def plan_for_contact(session: Session, settings, sequence_id: int, contact_id: int, now: dt.datetime) -> ReaderPlan:
    """What one reader has had from a sequence and what comes next, with times: past steps
    from their mail, future ones from the delays and windows in their own zone (the
    organisation's when they have none). Someone not in the sequence is shown as if
    enrolled now, so staff can see what a new reader would get."""
    sequence = get_sequence(session, sequence_id)
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFound(f"no contact {contact_id}")
    enrolment = session.scalar(sa.select(Enrolment).where(Enrolment.sequence_id == sequence_id,
                                                          Enrolment.contact_id == contact_id))
    zone = clock.zone_or(contact.timezone, settings.timezone)
    steps = live_steps(session, sequence_id)
    done: dict[int, PlannedStep] = {}
    if enrolment is not None:
        keys = {f"seq:{enrolment.id}:{step.id}": step for step in steps}
        for delivery in session.scalars(sa.select(Delivery).where(Delivery.dedupe_key.in_(list(keys)))):
            step = keys[delivery.dedupe_key]
            state = {DeliveryStatus.SENT: "sent", DeliveryStatus.FAILED: "failed",
                     DeliveryStatus.SUPPRESSED: "failed", DeliveryStatus.CANCELLED: "cancelled"}.get(
                delivery.status, "queued")
            done[step.id] = PlannedStep(step, state, delivery.sent_at or delivery.next_attempt_at,
                                        delivery.last_error or "" if state in ("failed", "cancelled") else "")
        for step_id, reason, at in session.execute(sa.select(SequenceSkip.step_id, SequenceSkip.reason,
                                                             SequenceSkip.created_at)
                                                   .where(SequenceSkip.enrolment_id == enrolment.id)):
            step = next((s for s in steps if s.id == step_id), None)
            if step is not None:
                done[step.id] = PlannedStep(step, "skipped", at, reason)
    stopped = _stopped(session, sequence, contact, enrolment)
    position = enrolment.last_position if enrolment else 0
    base = max(enrolment.last_at, now) if enrolment and enrolment.last_position else (
        enrolment.enrolled_at if enrolment else now)
    planned: list[PlannedStep] = []
    for step in steps:
        if step.id in done or step.position <= position:
            planned.append(done.get(step.id) or PlannedStep(step, "passed"))
            continue
        if stopped:
            planned.append(PlannedStep(step, "not coming", note=stopped))
            continue
        at = next_send_time(step, zone, max(base + dt.timedelta(minutes=step.delay_minutes), now))
        note = _condition_note(session, step, contact.id, now)
        if at > base + dt.timedelta(minutes=step.delay_minutes) and step.window_start is not None:
            note = " ".join(filter(None, [f"waits for the window ({window_text(step)})", note]))
        planned.append(PlannedStep(step, "planned", at, note))
        base = at
    return ReaderPlan(sequence, contact, enrolment, zone, stopped, planned)


def _stopped(session: Session, sequence: Sequence, contact: Contact, enrolment: Enrolment | None) -> str:
    """Why nothing more of the sequence comes to this reader, in words, or ""."""
    if contact.email is None:
        return "erased"
    if enrolment is not None and enrolment.status == EnrolmentStatus.EXITED:
        return f"left the sequence: {enrolment.exited_reason}"
    if sequence.status == SequenceStatus.ARCHIVED:
        return "the sequence is archived"
    if session.scalar(sa.select(sa.exists().where(Suppression.email_hash == contact.email_hash))):
        return "the address is suppressed"
    subscribed = session.scalar(sa.select(sa.exists().where(
        Subscription.contact_id == contact.id, Subscription.list_id == sequence.list_id,
        Subscription.status == SubscriptionStatus.ACTIVE)))
    if not subscribed:
        return f"not subscribed to {session.get(MailingList, sequence.list_id).name}"
    return ""


def _condition_note(session: Session, step: SequenceStep, contact_id: int, now: dt.datetime) -> str:
    """'skipped unless …' when the step's condition is false for the reader today."""
    condition = _condition(session, step, now, contact_id)
    if condition is None or session.scalar(sa.select(condition)):
        return ""
    return f"skipped unless {condition_text(session, step)} by then"


def condition_text(session: Session, step: SequenceStep) -> str:
    """The step's condition in words ("" for none)."""
    if step.condition == StepCondition.ON_LIST:
        ml = session.get(MailingList, step.condition_ref_id)
        return f"still on {ml.name if ml else 'a deleted list'}"
    if step.condition == StepCondition.ATTENDED:
        webinar = session.get(Webinar, step.condition_ref_id)
        return f"attended {webinar.title if webinar else 'a deleted webinar'}"
    if step.condition == StepCondition.IN_SEGMENT:
        segment = session.get(Segment, step.condition_ref_id)
        return f"in the segment {segment.name if segment else '(deleted)'}"
    return ""


def contact_enrolments(session: Session, settings, contact_id: int, now: dt.datetime) -> list[ReaderPlan]:
    """Every sequence a person is in, with their plan (for their page in the console)."""
    sequence_ids = session.scalars(sa.select(Enrolment.sequence_id).where(Enrolment.contact_id == contact_id)
                                   .order_by(Enrolment.enrolled_at.desc())).all()
    return [plan_for_contact(session, settings, sequence_id, contact_id, now) for sequence_id in sequence_ids]


# Enrolment ---------------------------------------------------------------------------

def enrol(session: Session, sequence_id: int, contact_id: int, now: dt.datetime) -> bool:
    """Add one person by hand (staff). False when they are in it already (see re_enrol).
    The person must be reachable on the sequence's list, since its mail is list mail."""
    sequence = get_sequence(session, sequence_id)
    if sequence.status == SequenceStatus.ARCHIVED:
        raise InvalidInput("status", "The sequence is archived.")
    contact = session.get(Contact, contact_id)
    if contact is None or contact.email is None:
        raise NotFound(f"no contact {contact_id}")
    subscribed = session.scalar(sa.select(sa.exists().where(
        Subscription.contact_id == contact_id, Subscription.list_id == sequence.list_id,
        Subscription.status == SubscriptionStatus.ACTIVE)))
    if not subscribed:
        raise InvalidInput("contact_id", "This person is not subscribed to the sequence's list.")
    stmt = dialect_insert(session, Enrolment).values(
        sequence_id=sequence_id, contact_id=contact_id, enrolled_at=now, last_position=0, last_at=now,
        status=EnrolmentStatus.ACTIVE,
    ).on_conflict_do_nothing(index_elements=["sequence_id", "contact_id"]).returning(Enrolment.id)
    return session.execute(stmt).first() is not None


ENROL_MAX = 10_000  # addresses in one list given by hand (a CSV); more: import them, or use a segment


@dataclasses.dataclass
class BulkEnrolment:
    """What became of a list of addresses given to enrol: counts only (never the addresses)."""

    enrolled: int = 0
    already: int = 0  # in the sequence already (left as they are)
    not_subscribed: int = 0  # a contact, but not an active subscriber of the sequence's list
    unknown: int = 0  # no contact has the address
    invalid: int = 0  # not an email address
    duplicate: int = 0  # given twice

    def line(self) -> str:
        return (f"{self.enrolled} enrolled, {self.already} already in it, {self.not_subscribed} not subscribed to "
                f"its list, {self.unknown} not a contact, {self.invalid} not an address, {self.duplicate} repeated")


def enrol_addresses(session: Session, sequence_id: int, addresses, now: dt.datetime) -> BulkEnrolment:
    """Enrol everyone on a list of addresses (a CSV staff upload) who is subscribed to the
    sequence's list; nobody else, and nobody twice. A few statements per 1,000 addresses."""
    from mailer.audience import contacts

    sequence = get_sequence(session, sequence_id)
    if sequence.status == SequenceStatus.ARCHIVED:
        raise InvalidInput("status", "The sequence is archived.")
    report, wanted = BulkEnrolment(), set()
    for raw in addresses:
        if not (raw or "").strip():
            continue
        try:
            address = contacts.normalise_email(raw)
        except InvalidInput:
            report.invalid += 1
            continue
        if address in wanted:
            report.duplicate += 1
        wanted.add(address)
        if len(wanted) > ENROL_MAX:
            raise InvalidInput("addresses", f"Give at most {ENROL_MAX:,} addresses at once; import more as a "
                                            "list and use its trigger, or enrol them in parts.")
    ordered = sorted(wanted)
    for start in range(0, len(ordered), 1000):
        chunk = ordered[start:start + 1000]
        found = session.execute(sa.select(Contact.id, sa.exists().where(
            Subscription.contact_id == Contact.id, Subscription.list_id == sequence.list_id,
            Subscription.status == SubscriptionStatus.ACTIVE)).where(Contact.email.in_(chunk))).all()
        report.unknown += len(chunk) - len(found)
        subscribed = [contact_id for contact_id, on_list in found if on_list]
        report.not_subscribed += len(found) - len(subscribed)
        if subscribed:
            added = _insert_enrolments(session, sequence_id, sa.select(Contact.id).where(Contact.id.in_(subscribed)),
                                       now)
            report.enrolled += added
            report.already += len(subscribed) - added
    return report


def enrol_segment(session: Session, sequence_id: int, segment_id: int, now: dt.datetime) -> int:
    """Enrol everyone in a segment who is subscribed to the sequence's list (a segment never
    adds anyone a list does not have), in one INSERT … SELECT; returns how many were new."""
    sequence = get_sequence(session, sequence_id)
    if sequence.status == SequenceStatus.ARCHIVED:
        raise InvalidInput("status", "The sequence is archived.")
    segment = segments.get_segment(session, segment_id)
    return enrol_selected(session, sequence_id, segments.contacts_in(session, segments.rules_of(segment), now), now)


def enrol_selected(session: Session, sequence_id: int, picked, now: dt.datetime) -> int:
    """Enrol the contacts `picked` names (an uncorrelated select of contact ids, such as a
    segment's, or a list of ids: a chunk of a bulk job) who are subscribed to the sequence's list, in one INSERT … SELECT; returns how many
    were new. Nobody is enrolled twice; an archived sequence is refused."""
    sequence = get_sequence(session, sequence_id)
    if sequence.status == SequenceStatus.ARCHIVED:
        raise InvalidInput("status", "The sequence is archived.")
    chosen = sa.select(Contact.id).where(Contact.id.in_(picked), sa.exists().where(
        Subscription.contact_id == Contact.id, Subscription.list_id == sequence.list_id,
        Subscription.status == SubscriptionStatus.ACTIVE))
    return _insert_enrolments(session, sequence_id, chosen, now)


def re_enrol(session: Session, sequence_id: int, contact_id: int, now: dt.datetime) -> bool:
    """Start the sequence again from its first step for someone already in it (or not):
    a new enrolment, with a new id, so its mail has new dedupe keys."""
    session.execute(sa.delete(Enrolment).where(Enrolment.sequence_id == sequence_id,
                                               Enrolment.contact_id == contact_id))
    return enrol(session, sequence_id, contact_id, now)


def forget_contact(session: Session, contact_id: int) -> int:
    """Erasure: the person's enrolments go (the skip counts stay, without them)."""
    return session.execute(sa.delete(Enrolment).where(Enrolment.contact_id == contact_id)).rowcount


def enrol_triggered(session: Session, settings, now: dt.datetime) -> int:
    """Enrol everyone whose trigger fired since the sequence was first activated, each
    sequence's trigger in one INSERT … SELECT (per webinar for attended / missed);
    UNIQUE(sequence, contact) with ON CONFLICT DO NOTHING keeps each person in once.
    Paused sequences enrol too (their mail waits); drafts and archived ones do not."""
    enrolled = 0
    sequences = session.scalars(sa.select(Sequence).where(
        Sequence.status.in_([SequenceStatus.ACTIVE, SequenceStatus.PAUSED]),
        Sequence.trigger != SequenceTrigger.MANUAL)).all()
    for sequence in sequences:
        since = sequence.activated_at
        if sequence.triggers_checked_at is not None:
            since = max(since, sequence.triggers_checked_at - TRIGGER_OVERLAP)
        for who in _triggered(session, sequence, since, now):
            enrolled += _insert_enrolments(session, sequence.id, who, now)
        sequence.triggers_checked_at = now
    return enrolled


def _triggered(session: Session, sequence: Sequence, since: dt.datetime, now: dt.datetime):
    """Selects of contact ids whose trigger fired since `since`. Those already enrolled are
    left to the insert's ON CONFLICT (the unique index): a NOT EXISTS here made PostgreSQL,
    planning against an empty enrolments table, re-scan the rows the same INSERT had just
    added (55 s for the first 100,000 enrolments, 1.9 s without it; bench/sequences.py --quick)."""
    eligible = (Contact.email.is_not(None),)
    if sequence.trigger in (SequenceTrigger.CONFIRMED, SequenceTrigger.IMPORTED):
        # A CSV import makes a subscription active at once, confirmed_at the import's time, with an
        # `imported` consent event of that same time (audience/imports.py); a later double opt-in
        # on the same row is a confirmation again. Imports start `imported` sequences only.
        imported = sa.exists().where(ConsentEvent.contact_id == Subscription.contact_id,
                                     ConsentEvent.list_id == Subscription.list_id,
                                     ConsentEvent.action == ConsentAction.IMPORTED,
                                     ConsentEvent.created_at >= Subscription.confirmed_at)
        how = imported if sequence.trigger == SequenceTrigger.IMPORTED else ~imported
        yield sa.select(Contact.id).join(Subscription, Subscription.contact_id == Contact.id).where(
            Subscription.list_id == sequence.trigger_list_id, Subscription.status == SubscriptionStatus.ACTIVE,
            Subscription.confirmed_at >= since, how, *eligible)
        return
    webinar = Registration.webinar_id == sequence.trigger_webinar_id if sequence.trigger_webinar_id else sa.true()
    if sequence.trigger == SequenceTrigger.REGISTERED:
        yield sa.select(Contact.id).join(Registration, Registration.contact_id == Contact.id).where(
            webinar, Registration.status == RegistrationStatus.CONFIRMED,
            # A seat taken since, or given since to someone on the waitlist.
            sa.or_(Registration.created_at >= since, Registration.promoted_at >= since), *eligible)
        return
    # Attended / missed: per webinar that ended after the sequence started and not longer
    # than ATTENDANCE_WITHIN ago (the end is computed here, so no date arithmetic in SQL;
    # a webinar lasts at most a day). Attendance has no time of its own, so these look
    # at the whole (small) audience of those few webinars each time.
    query = sa.select(Webinar).where(Webinar.status == WebinarStatus.PUBLISHED,
                                     Webinar.starts_at >= sequence.activated_at - dt.timedelta(days=1),
                                     Webinar.starts_at >= now - ATTENDANCE_WITHIN - dt.timedelta(days=1),
                                     Webinar.starts_at <= now)
    if sequence.trigger_webinar_id:
        query = query.where(Webinar.id == sequence.trigger_webinar_id)
    for w in session.scalars(query):
        ends = w.starts_at + dt.timedelta(minutes=w.duration_minutes)
        if ends > now or ends < sequence.activated_at or ends < now - ATTENDANCE_WITHIN:
            continue
        seated = (Registration.webinar_id == w.id, Registration.status == RegistrationStatus.CONFIRMED)
        if sequence.trigger == SequenceTrigger.ATTENDED:
            yield sa.select(Contact.id).join(Registration, Registration.contact_id == Contact.id).where(
                *seated, Registration.attended.is_(True), *eligible)
        elif ends + MISSED_AFTER <= now:
            yield sa.select(Contact.id).join(Registration, Registration.contact_id == Contact.id).where(
                *seated, sa.or_(Registration.attended.is_(None), Registration.attended.is_(False)), *eligible)


def _insert_enrolments(session: Session, sequence_id: int, contact_ids, now: dt.datetime) -> int:
    rows = contact_ids.subquery()
    source = sa.select(sa.literal(sequence_id), rows.c.id, sa.literal(now, Enrolment.enrolled_at.type), sa.literal(0),
                       sa.literal(now, Enrolment.last_at.type), sa.literal(EnrolmentStatus.ACTIVE.value)
                       ).where(rows.c.id.is_not(None))  # SQLite reads ON CONFLICT right only after a WHERE
    stmt = dialect_insert(session, Enrolment).from_select(
        ["sequence_id", "contact_id", "enrolled_at", "last_position", "last_at", "status"], source,
    ).on_conflict_do_nothing(index_elements=["sequence_id", "contact_id"])
    return session.execute(stmt.execution_options(preserve_rowcount=True)).rowcount


# Materialising due steps ------------------------------------------------------------------

def run(session: Session, settings, now: dt.datetime) -> int:
    """The worker job: enrol who the triggers name, then queue every step that is due.
    One worker at a time (take_singleton); dedupe keys and conditional updates would
    already keep each step to one mail each. Returns how many mails were queued."""
    if not take_singleton(session, "sequence-mail"):
        return 0
    enrol_triggered(session, settings, now)
    return materialise_due(session, settings, now)


def materialise_due(session: Session, settings, now: dt.datetime) -> int:
    """For every active sequence and each of its live steps in order, the enrolments
    whose next step it is and whose delay has passed, whose reader is still on the list
    and not suppressed, and whose zone (the reader's, or the organisation's) is inside
    the step's window now: queue the step's mail for them in one INSERT … SELECT (or
    record the skip when the step's condition fails) and move them past it in one
    UPDATE. A handful of statements per step, whatever the number of enrolments."""
    queued = 0
    for sequence in session.scalars(sa.select(Sequence).where(Sequence.status == SequenceStatus.ACTIVE)).all():
        steps = live_steps(session, sequence.id)
        previous = 0
        for index, step in enumerate(steps):
            queued += _materialise_step(session, settings, sequence, step, previous,
                                        last=index == len(steps) - 1, now=now)
            previous = step.position
    return queued


def _due(sequence: Sequence, step: SequenceStep, previous: int, now: dt.datetime) -> list:
    """Enrolments (in a statement on `enrolments`) whose next live step is `step`, due now.
    Between two live positions, so a deleted step in between is passed over."""
    return [Enrolment.sequence_id == sequence.id, Enrolment.status.in_(LIVE),
            Enrolment.last_position >= previous, Enrolment.last_position < step.position,
            Enrolment.last_at <= now - dt.timedelta(minutes=step.delay_minutes)]


def _reachable(sequence: Sequence):
    """The enrolment's reader may still get the sequence's list mail."""
    return sa.and_(
        sa.exists().where(Subscription.contact_id == Enrolment.contact_id, Subscription.list_id == sequence.list_id,
                          Subscription.status == SubscriptionStatus.ACTIVE),
        sa.exists().where(Contact.id == Enrolment.contact_id, Contact.email.is_not(None),
                          ~sa.exists().where(Suppression.email_hash == Contact.email_hash)),
    )


def _zone(settings):
    return sa.func.coalesce(Contact.timezone, settings.timezone)


def _condition(session: Session, step: SequenceStep, now: dt.datetime, contact=Enrolment.contact_id):
    """The step's condition for `contact` (the enrolment's reader in a bulk statement, or one id)."""
    if step.condition == StepCondition.IN_SEGMENT:
        segment = session.get(Segment, step.condition_ref_id)
        if segment is None:
            return sa.false()
        return segments.condition(session, segments.rules_of(segment), now, contact=contact)
    if step.condition == StepCondition.ON_LIST:
        return sa.exists().where(Subscription.contact_id == contact,
                                 Subscription.list_id == step.condition_ref_id,
                                 Subscription.status == SubscriptionStatus.ACTIVE)
    if step.condition == StepCondition.ATTENDED:
        return sa.exists().where(Registration.contact_id == contact,
                                 Registration.webinar_id == step.condition_ref_id, Registration.attended.is_(True))
    return None


def _materialise_step(session: Session, settings, sequence: Sequence, step: SequenceStep, previous: int, *,
                      last: bool, now: dt.datetime) -> int:
    due = _due(sequence, step, previous, now)
    # 1. Who is due at all, how many in each zone (one query; nothing due: nothing more to do).
    zone = _zone(settings)
    per_zone = dict(session.execute(sa.select(zone, sa.func.count()).select_from(Enrolment)
                                    .join(Contact, Contact.id == Enrolment.contact_id).where(*due).group_by(zone)).all())
    if not per_zone:
        return 0
    # 2. Who is inside the window now: decided here per zone (zoneinfo), then IN (…) in SQL.
    if step.window_start is not None:
        open_zones = [z for z in per_zone if window_open(step, clock.zone_or(z, settings.timezone), now)]
        if not open_zones:
            return 0
        due.append(sa.exists().where(Contact.id == Enrolment.contact_id, _zone(settings).in_(open_zones)))
        per_zone = {z: per_zone[z] for z in open_zones}
    priority = Priority.TRANSACTIONAL if sum(per_zone.values()) <= SMALL_BATCH else Priority.BULK
    # 3. Those who left the list or were suppressed leave the sequence (when it would reach them).
    erased = ~sa.exists().where(Contact.id == Enrolment.contact_id, Contact.email.is_not(None))
    suppressed = sa.exists().where(Contact.id == Enrolment.contact_id, Suppression.email_hash == Contact.email_hash)
    session.execute(sa.update(Enrolment).where(*due, ~_reachable(sequence)).values(
        status=EnrolmentStatus.EXITED,
        exited_reason=sa.case((erased, "erased"), (suppressed, "suppressed"), else_="unsubscribed"),
    ).execution_options(synchronize_session=SYNC))
    selected = [*due, _reachable(sequence)]
    condition = _condition(session, step, now)
    if condition is not None:
        skip = sa.select(Enrolment.id, sa.literal(step.id), sa.literal(f"condition: {step.condition}"),
                         sa.literal(now, SequenceSkip.created_at.type)).where(*selected, ~condition)
        session.execute(dialect_insert(session, SequenceSkip).from_select(
            ["enrolment_id", "step_id", "reason", "created_at"], skip,
        ).on_conflict_do_nothing(index_elements=["enrolment_id", "step_id"]))
    # 4. The step's mail, one per enrolment and step (the dedupe key), in one INSERT … SELECT.
    rows = sa.select(
        Enrolment.contact_id, sa.literal(sequence.list_id, sa.Integer).label("list_id"),
        sa.literal(step.id, sa.Integer).label("ref_id"),
        (sa.literal("seq:") + sa.cast(Enrolment.id, sa.String) + sa.literal(f":{step.id}")).label("dedupe_key"),
    ).where(*selected, *([condition] if condition is not None else []))
    queued = outbox.enqueue_many(session, rows, kind=STEP, now=now, priority=priority)
    # 5. Past the step, sent or skipped: the same selection, and only if not moved meanwhile.
    session.execute(sa.update(Enrolment).where(*selected).values(
        last_position=step.position, last_at=now,
        status=EnrolmentStatus.COMPLETED if last else EnrolmentStatus.ACTIVE,
    ).execution_options(synchronize_session=SYNC))
    return queued


# The mail ----------------------------------------------------------------------------------

def step_email(batch, delivery: Delivery):
    """The step as it reads now, compiled and sanitised like a newsletter issue; nothing
    for a deleted step or a sequence no longer active (a paused one holds its mail)."""
    key = (SequenceStep, delivery.ref_id)
    if key not in batch.rows:
        batch.rows[key] = batch.session.get(SequenceStep, delivery.ref_id)
    step = batch.rows[key]
    test = delivery.kind == STEP_TEST
    if step is None or step.deleted_at is not None:
        return outbox.Skip(DeliveryStatus.CANCELLED, "step deleted")
    if step.sequence.status != SequenceStatus.ACTIVE and not test:
        return outbox.Skip(DeliveryStatus.CANCELLED, f"sequence {step.sequence.status}")
    note_key = ("footer_note", step.sequence_id)  # once per batch, not per recipient
    if note_key not in batch.rows:
        batch.rows[note_key] = footer_note(batch.session, step.sequence)
    return newsletters.compiled_issue(batch, (STEP, step.id), subject=step.subject, preheader=step.preheader,
                                      body_md=step.body_md, layout=step.layout, test=test, why=batch.rows[note_key])


def footer_note(session: Session, sequence: Sequence) -> str:
    """What a step's footer says instead of a newsletter's "why you get this": which list
    the unsubscribe link leaves (the list, and with it the series)."""
    name = session.get(MailingList, sequence.list_id).name
    return (f"You get this series because you subscribed to {name}. Unsubscribing leaves {name}, "
            "and with it this series.")


def send_test(session: Session, settings, sequence_id: int, step_id: int, addresses: list[str], *,
              now: dt.datetime) -> int:
    """A "[TEST]" copy of a step, as it reads now, to up to 10 addresses (a draft's too)."""
    step = get_step(session, sequence_id, step_id)
    return newsletters.queue_test_copies(session, settings, STEP_TEST, step.id, addresses, now=now)


def step_problems(renderer, settings, step: SequenceStep, upcoming=()) -> list[str]:
    """The pre-flight check of a step: what a newsletter's would say of its text."""
    return newsletters.content_problems(renderer, settings, subject=step.subject, preheader=step.preheader,
                                        body_md=step.body_md, layout=step.layout, upcoming=upcoming)


# The kinds of mail this module makes, for the sender (registered by mailer.build).
MAIL_KINDS = {STEP: Kind(step_email, label="Automation step"), STEP_TEST: Kind(step_email, label="Automation step test")}
