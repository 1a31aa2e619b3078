"""`python -m mailer …`: the command line. Each command calls the same domain
functions as the web pages and the API."""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time

import click
import sqlalchemy as sa

from mailer import build, clock, privacy
from mailer.audience import consent, contacts
from mailer.campaigns import newsletters, sequences, webinars
from mailer.delivery import outbox
from mailer.staff import jobs, users
from mailer.db import migrate as run_migrations, session_scope, utcnow
from mailer.errors import InvalidInput, NotFound
from mailer.models import SequenceTrigger
from mailer.settings import SettingsError, load_settings

log = logging.getLogger("mailer")


def _mailer(stored: bool = True):
    """The Mailer, with what owners set on the settings page unless `stored` is False
    (before migrating, the settings table may not exist yet)."""
    try:
        m = build(load_settings())
    except SettingsError as exc:
        raise click.ClickException(str(exc))
    if stored:
        m.refresh_settings()
        m.anchor_ledger()
    return m


def _migrate(m) -> None:
    from mailer.demo import ensure_default_list

    run_migrations(m.settings.database_url)
    with session_scope(m.sessions) as session:
        ensure_default_list(session)
    if m.anchor_ledger():
        click.echo("consent ledger re-anchored under the keyed chain (once, after the upgrade)")


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """mailer: newsletters and webinar mail."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    m = _mailer(stored=False)
    _migrate(m)
    click.echo("database is up to date")


@main.command("create-user")
@click.argument("email")
@click.option("--role", default="owner", type=click.Choice(["owner", "editor", "viewer"]))
@click.password_option(help="Prompted for when not given (or set MAILER_NEW_PASSWORD).", envvar="MAILER_NEW_PASSWORD")
def create_user(email: str, role: str, password: str) -> None:
    """Add a staff user who can log in at /admin."""
    m = _mailer()
    _run(m, lambda s: users.add_user(s, email, role, password, actor_id=None))
    click.echo(f"created {role} {email}")


@main.command("create-token")
@click.argument("email")
@click.option("--name", required=True, help="What the token is for, e.g. 'website'.")
@click.option("--scope", default="read", type=click.Choice(["read", "write", "webhook"]))
def create_token(email: str, name: str, scope: str) -> None:
    """Create an API token for a staff user; it is shown only once."""
    m = _mailer()
    click.echo(_run(m, lambda s: users.issue_token(s, users.find_user(s, email), name, scope, actor_id=None)))


@main.command("list-tokens")
@click.option("--user", "email", help="Only this user's tokens.")
def list_tokens(email: str | None) -> None:
    """API tokens: id, scope, owner, created, last used, revoked, name."""
    m = _mailer()

    def when(moment):
        return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"

    rows = _run(m, lambda s: users.list_tokens(s, users.find_user(s, email) if email else None))
    for t in rows:
        click.echo(f"{t.id}\t{t.scope}\t{t.user_email}\tcreated {when(t.created_at)}\tused {when(t.last_used_at)}\t"
                   f"{'revoked ' + when(t.revoked_at) if t.revoked_at else 'active'}\t{t.name}")


@main.command("revoke-token")
@click.argument("token_id", type=int)
def revoke_token(token_id: int) -> None:
    """Revoke an API token for good (see list-tokens for ids)."""
    m = _mailer()
    name = _run(m, lambda s: users.revoke_token(s, token_id, actor=None, now=utcnow()).name)
    click.echo(f"token {token_id} ({name}) revoked")


@main.group("settings")
def settings_group() -> None:
    """What owners can also change on the settings page (sender, address, time zone, rate limits)."""


@settings_group.command("show")
def settings_show() -> None:
    """Each setting: name, value in use, and where it comes from."""
    from mailer.staff import site_settings

    m = _mailer()
    with m.read_sessions() as session:
        for row in site_settings.rows(session, m.base_settings, os.environ):
            click.echo(f"{row.field.key}\t{row.effective}\t{row.source}")


@settings_group.command("set")
@click.argument("key")
@click.argument("value")
def settings_set(key: str, value: str) -> None:
    """Set KEY to VALUE (the default's value removes the override); workers and web apps
    pick it up within seconds."""
    from mailer.staff import site_settings

    if key not in site_settings.EDITABLE:
        raise click.ClickException(f"{key} cannot be set here; choose one of: {', '.join(site_settings.EDITABLE)}")
    m = _mailer()
    changes = _run(m, lambda s: site_settings.save(s, {key: value}, base=m.base_settings, actor_id=None, now=utcnow()))
    click.echo(f"{key} set" if changes else f"{key} unchanged")


@settings_group.command("check-feed")
def settings_check_feed() -> None:
    """Read the blog feed (blog_feed_url) now, as "Check the feed now" does: its posts go
    into the cache; prints the newest, or the reason it cannot be used (exit 1)."""
    from mailer.campaigns import blog

    m = _mailer()
    found = blog.refresh(m.sessions, m.settings, now=utcnow(), force=True)
    if found is None:
        raise click.ClickException("No blog feed is set: settings set blog_feed_url https://…/feed.xml")
    if found.error:
        raise click.ClickException(found.error)
    click.echo(f"{len(found.posts)} post(s)")
    for post in found.posts[:5]:
        click.echo(f"{post.published_at:%Y-%m-%d}\t{post.title}\t{post.link}")


@main.group("users")
def users_group() -> None:
    """Staff accounts: list, change role, disable, enable, reset a password (create-user adds one)."""


@users_group.command("list")
def users_list() -> None:
    """Every staff user: email, role, status, last login."""
    m = _mailer()
    now = utcnow()
    with m.read_sessions() as session:
        for u in users.list_users(session):
            status = ("disabled" if u.disabled_at else
                      "locked" if u.locked_until and u.locked_until > now else "active")
            last = u.last_login_at.strftime("%Y-%m-%d %H:%M") if u.last_login_at else "never"
            click.echo(f"{u.email}\t{u.role}\t{status}\tlast login {last}")


@users_group.command("set-role")
@click.argument("email")
@click.argument("role", type=click.Choice(["owner", "editor", "viewer"]))
def users_set_role(email: str, role: str) -> None:
    """Change a user's role (the last active owner stays an owner)."""
    m = _mailer()
    old = _run(m, lambda s: users.set_role(s, users.find_user(s, email), role, actor_id=None))
    click.echo(f"{email}: {old} -> {role}")


@users_group.command("disable")
@click.argument("email")
def users_disable(email: str) -> None:
    """No more logins, sessions or API tokens for this user; the audit trail stays."""
    m = _mailer()
    _run(m, lambda s: users.disable_user(s, users.find_user(s, email), actor_id=None, now=utcnow()))
    click.echo(f"{email} disabled")


@users_group.command("enable")
@click.argument("email")
def users_enable(email: str) -> None:
    """Let a disabled user log in again."""
    m = _mailer()
    _run(m, lambda s: users.enable_user(s, users.find_user(s, email), actor_id=None))
    click.echo(f"{email} enabled")


@users_group.command("reset-password")
@click.argument("email")
def users_reset_password(email: str) -> None:
    """Give a user a new generated password (printed once); their sessions end."""
    m = _mailer()
    click.echo(_run(m, lambda s: users.reset_password(s, users.find_user(s, email), actor_id=None)))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 answers other machines too (development only).")
@click.option("--port", default=5000, type=int, show_default=True, help="TCP port to listen on.")
@click.option("--demo", is_flag=True, help="Add demo content (once) and print a staff login; on a restart "
                                           "the login's password is left as it is.")
def serve(host: str, port: int, demo: bool) -> None:
    """Web app and worker in one process, for development."""
    from mailer import create_app
    from mailer.demo import DEMO_USER, seed_demo
    from mailer.scheduler import build_scheduler

    # Links in mail must point at this server unless a public address is configured.
    os.environ.setdefault("MAILER_BASE_URL", f"http://{host}:{port}")
    m = _mailer(stored=False)
    _migrate(m)
    m.refresh_settings()
    if demo:
        with session_scope(m.sessions) as session:
            password = seed_demo(session, m.settings.timezone, utcnow())
        shown = password or f"(password unchanged; `python -m mailer users reset-password {DEMO_USER}` makes a new one)"
        click.echo(f"\n  Staff login: {m.settings.base_url}/admin  {DEMO_USER} / {shown}")
    click.echo(f"  Signup form: {m.settings.base_url}/subscribe")
    click.echo(f"  Mail goes to: {'SMTP ' + m.transport.host if m.settings.smtp_url else 'the dev mailbox at /admin/mailbox'}\n")
    app = create_app()
    sender = app.extensions["mailer"].sender()
    scheduler = build_scheduler(app.extensions["mailer"], sender, blocking=False)
    scheduler.start()
    try:
        app.run(host=host, port=port, threaded=True, use_reloader=False)
    finally:
        sender.request_stop()
        scheduler.shutdown(wait=True)
        sender.close()


@main.command()
@click.option("--drain", is_flag=True, help="Send everything due now, then exit.")
def worker(drain: bool) -> None:
    """The scheduler and sender (run one or more beside the web app). SIGTERM
    finishes the messages in flight, gives back unsent claims and exits."""
    from mailer.scheduler import build_scheduler

    m = _mailer()
    sender = m.sender()
    if drain:
        signal.signal(signal.SIGTERM, lambda signum, _frame: sender.request_stop())
        m.process_signups()
        ran = jobs.run_due(m.sessions, m.settings, owner=sender.worker_id, clock=utcnow)
        if ran:
            click.echo(f"ran {ran} console jobs (imports)")
        m.queue_due(utcnow())
        with m.read_sessions() as session:
            due = outbox.count_due(session, utcnow())
        progress = DrainProgress(due, sys.stderr)
        with sender:
            result = sender.drain(progress=progress)
        progress(result, final=True)
        with session_scope(m.sessions) as session:
            newsletters.finish_sent(session, utcnow())
        click.echo(f"sent {result.sent}, deferred {result.deferred}, failed {result.failed}, "
                   f"skipped {result.skipped}, released {result.released}")
        return
    scheduler = build_scheduler(m, sender, blocking=True)

    def stop(signum, _frame):
        log.info("signal %s: finishing the messages in flight, then stopping", signum)
        sender.request_stop()
        scheduler.shutdown(wait=True)

    signal.signal(signal.SIGTERM, stop)
    log.info("worker %s started", sender.worker_id)
    try:
        scheduler.start()
    except KeyboardInterrupt:
        sender.request_stop()
    finally:
        sender.close()
        log.info("worker %s stopped", sender.worker_id)


class DrainProgress:
    """sent / deferred / failed, rate and ETA: a bar on a terminal, a log line every
    few seconds otherwise."""

    def __init__(self, due: int, stream, *, interval: float = 5.0):
        self.due = max(due, 1)
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = interval
        self.started = self.last = time.monotonic()

    def __call__(self, total, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and not self.tty and now - self.last < self.interval:
            return
        self.last = now
        done = total.sent + total.failed + total.skipped
        rate = done / max(now - self.started, 1e-6)
        eta = max(self.due - done, 0) / rate if rate else 0
        figures = (f"sent {total.sent} deferred {total.deferred} failed {total.failed} | "
                   f"{rate:.0f}/s | ETA {int(eta // 60)}:{int(eta % 60):02d}")
        if self.tty:
            filled = int(30 * min(done / self.due, 1))
            end = "\n" if final else ""
            self.stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.due} {figures}   {end}")
        else:
            self.stream.write(f"progress: {done}/{self.due} {figures}\n")
        self.stream.flush()


@main.group("list")
def list_group() -> None:
    """Mailing lists: list, create, edit, archive, consent wording versions."""


def _wording_text(text: str | None, text_file) -> str | None:
    if text is not None and text_file is not None:
        raise click.UsageError("give the wording as --wording or --wording-file, not both")
    return text_file.read() if text_file is not None else text


def _list_line(summary) -> str:
    ml, counts = summary.mailing_list, summary.counts
    state = "archived" if ml.archived_at else "public" if ml.public else "private"
    shown = ", ".join(f"{counts[status]} {status}" for status in counts)
    version = f"wording v{summary.wording.version}" if summary.wording else "no wording"
    return f"{ml.id}\t{ml.slug}\t{state}\t{shown}\t{version}\t{ml.name}"


@list_group.command("list")
def list_list() -> None:
    """Every list: id, slug, public/private/archived, subscribers per status, wording version, name."""
    from mailer.audience import lists

    m = _mailer()
    with m.read_sessions() as session:
        for summary in lists.list_lists(session):
            click.echo(_list_line(summary))


@list_group.command("create")
@click.argument("slug")
@click.option("--name", required=True)
@click.option("--description", default="")
@click.option("--wording", help="The consent wording people agree to when they join (version 1).")
@click.option("--wording-file", type=click.File("r", encoding="utf-8"), help="The wording from a file; - for stdin.")
@click.option("--private", is_flag=True, help="Not offered on public forms or the preferences page.")
def list_create(slug, name, description, wording, wording_file, private) -> None:
    """Create a list with its consent wording."""
    from mailer.audience import lists

    m = _mailer()
    text = _wording_text(wording, wording_file)

    def create(session):
        summary = lists.create_list(session, slug=slug, name=name, description=description, wording=text or "",
                                    public=not private, now=utcnow())
        users.record(session, None, "list_create", f"list {slug}")
        return _list_line(summary)

    click.echo(f"created: {_run(m, create)}")


@list_group.command("edit")
@click.argument("slug")
@click.option("--name")
@click.option("--description")
@click.option("--public/--private", default=None, help="Offered on public forms or not.")
def list_edit(slug, name, description, public) -> None:
    """Change a list's name, description or visibility (what is not given stays)."""
    from mailer.audience import lists

    m = _mailer()

    def edit(session):
        summary = lists.update_list(session, lists.list_id_for(session, slug), name=name, description=description,
                                    public=public)
        changed = [field for field, value in (("name", name), ("description", description), ("public", public))
                   if value is not None]
        users.record(session, None, "list_edit", f"list {slug}: {', '.join(changed) or 'nothing'}")
        return _list_line(summary)

    click.echo(_run(m, edit))


@list_group.command("archive")
@click.argument("slug")
def list_archive(slug) -> None:
    """Close a list to new signups (form, API, imports); its subscribers and their history
    stay. Refused while a newsletter or automation still plans mail for it."""
    from mailer.audience import lists

    m = _mailer()

    def archive(session):
        lists.archive_list(session, lists.list_id_for(session, slug), now=utcnow())
        users.record(session, None, "list_archive", f"list {slug}")

    _run(m, archive)
    click.echo(f"list {slug} archived: it takes no new signups")


@list_group.command("wording")
@click.argument("slug")
@click.option("--wording", help="The new consent wording.")
@click.option("--wording-file", type=click.File("r", encoding="utf-8"), help="The new wording from a file; - for stdin.")
def list_wording(slug, wording, wording_file) -> None:
    """Without --wording: every version of the list's consent wording, newest first, with
    the consent events that used it. With it: a new version, shown from now on (earlier
    versions never change)."""
    from mailer.audience import lists

    m = _mailer()
    text = _wording_text(wording, wording_file)
    if text is None:
        with m.read_sessions() as session:
            try:
                versions = lists.wording_versions(session, lists.list_id_for(session, slug))
            except InvalidInput as exc:
                raise click.ClickException(exc.message)
            for v in versions:
                click.echo(f"version {v.wording.version}\t{v.wording.created_at:%Y-%m-%d %H:%M} UTC\t"
                           f"{v.events} consent events\n  {v.wording.text}")
        return

    def add(session):
        new = lists.add_wording(session, lists.list_id_for(session, slug), text, now=utcnow())
        users.record(session, None, "list_wording", f"list {slug}: consent wording version {new.version}")
        return new.version

    click.echo(f"list {slug}: consent wording version {_run(m, add)} is now shown to new signups")


@main.group("newsletter")
def newsletter_group() -> None:
    """Compose, check, schedule and cancel newsletters."""


def _run(m, action):
    """Run one domain call in a unit of work; its refusals become clear CLI errors."""
    try:
        with session_scope(m.sessions) as session:
            return action(session)
    except (InvalidInput, NotFound) as exc:
        raise click.ClickException(getattr(exc, "message", str(exc)))


@newsletter_group.command("create")
@click.option("--subject", required=True)
@click.option("--body-file", required=True, type=click.File("r", encoding="utf-8"), help="Markdown; - for stdin.")
@click.option("--list", "lists", multiple=True, default=[contacts.DEFAULT_LIST], show_default=True)
@click.option("--preheader", default="")
@click.option("--layout", default="default", show_default=True)
@click.option("--segment", "segment_id", type=int, help="Only the readers of the lists in this segment (segment list).")
def newsletter_create(subject, body_file, lists, preheader, layout, segment_id) -> None:
    """Create a draft; its templates are checked first."""
    m = _mailer()
    newsletter_id = _run(m, lambda s: newsletters.create_newsletter(
        s, subject=subject, body_md=body_file.read(), lists=list(lists), preheader=preheader, layout=layout,
        segment_id=segment_id).id)
    click.echo(f"created newsletter {newsletter_id} (draft)")


@newsletter_group.command("schedule")
@click.argument("newsletter_id", type=int)
@click.option("--at", "at", help="Local date and time, e.g. '2027-03-02 09:00'.")
@click.option("--zone", help="Time zone of --at (default: the organisation's, MAILER_TIMEZONE).")
@click.option("--each-reader", is_flag=True,
              help="Read --at in each reader's own time zone (readers without one: --zone or the organisation's).")
@click.option("--now", "send_now", is_flag=True, help="Send at once.")
def newsletter_schedule(newsletter_id, at, zone, each_reader, send_now) -> None:
    """Schedule a draft for a local date and time, or for now."""
    import datetime as dt

    m = _mailer()
    zone = zone or m.settings.timezone
    if send_now == bool(at):
        raise click.ClickException("give either --at or --now")
    if each_reader and send_now:
        raise click.ClickException("--each-reader goes with --at")
    now = utcnow()
    try:
        local = None if send_now else dt.datetime.fromisoformat(at)
        when = now if send_now else (None if each_reader else clock.local_to_utc(local, zone))
    except ValueError:
        raise click.ClickException(f"--at {at!r} is not a date and time like 2027-03-02 09:00")
    except InvalidInput as exc:
        raise click.ClickException(exc.message)
    if each_reader:
        def in_reader_zones(s):
            newsletter = newsletters.schedule_in_reader_zones(s, newsletter_id, local, fallback_zone=zone, now=now)
            return newsletters.local_time_span(s, newsletter)

        first, last = _run(m, in_reader_zones)
        click.echo(f"newsletter {newsletter_id} scheduled for {local:%Y-%m-%d %H:%M} in each reader's time zone:"
                   f" from {first:%Y-%m-%d %H:%M} UTC to {last:%Y-%m-%d %H:%M} UTC")
        return
    _run(m, lambda s: newsletters.schedule(s, newsletter_id, when, now=now))
    click.echo(f"newsletter {newsletter_id} scheduled for {when:%Y-%m-%d %H:%M} UTC"
               f" ({clock.format_local(when, zone)})")


@newsletter_group.command("cancel")
@click.argument("newsletter_id", type=int)
def newsletter_cancel(newsletter_id) -> None:
    """Cancel a scheduled issue, or stop one that is sending."""
    m = _mailer()
    _run(m, lambda s: newsletters.cancel(s, newsletter_id))
    click.echo(f"newsletter {newsletter_id} cancelled")


@newsletter_group.command("duplicate")
@click.argument("newsletter_id", type=int)
def newsletter_duplicate(newsletter_id) -> None:
    """Copy an issue (text, layout, lists, segment) as a new draft."""
    m = _mailer()
    copy_id = _run(m, lambda s: newsletters.duplicate_newsletter(s, newsletter_id).id)
    click.echo(f"created newsletter {copy_id} (draft), a copy of {newsletter_id}")


@newsletter_group.command("delete")
@click.argument("newsletter_id", type=int)
def newsletter_delete(newsletter_id) -> None:
    """Delete a draft (other issues are cancelled, and kept)."""
    m = _mailer()
    _run(m, lambda s: newsletters.delete_newsletter(s, newsletter_id))
    click.echo(f"deleted draft {newsletter_id}")


@newsletter_group.command("pause")
@click.argument("newsletter_id", type=int)
def newsletter_pause(newsletter_id) -> None:
    """Hold the rest of an issue that is sending."""
    m = _mailer()
    _run(m, lambda s: newsletters.pause(s, newsletter_id))
    click.echo(f"newsletter {newsletter_id} paused")


@newsletter_group.command("resume")
@click.argument("newsletter_id", type=int)
def newsletter_resume(newsletter_id) -> None:
    """Send what was held."""
    m = _mailer()
    _run(m, lambda s: newsletters.resume(s, newsletter_id))
    click.echo(f"newsletter {newsletter_id} resumed")


@newsletter_group.command("test")
@click.argument("newsletter_id", type=int)
@click.argument("addresses", nargs=-1, required=True)
def newsletter_test(newsletter_id, addresses) -> None:
    """Send a "[TEST]" copy to up to 10 addresses (the worker sends it)."""
    m = _mailer()
    count = _run(m, lambda s: newsletters.send_test(s, m.settings, newsletter_id, list(addresses), now=utcnow()))
    click.echo(f"queued {count} test copies")


@newsletter_group.command("check")
@click.argument("newsletter_id", type=int)
def newsletter_check(newsletter_id) -> None:
    """The pre-flight check: what to fix before scheduling."""
    m = _mailer()
    problems = _run(m, lambda s: newsletters.preflight(s, m.renderer, m.settings, newsletter_id))
    for problem in problems:
        click.echo(f"- {problem}")
    click.echo("ready to send" if not problems else f"{len(problems)} problem(s)")
    if problems:
        sys.exit(1)


@newsletter_group.command("report")
@click.argument("newsletter_id", type=int)
def newsletter_report(newsletter_id) -> None:
    """Audience and outcomes of one issue."""
    m = _mailer()
    report = _run(m, lambda s: newsletters.report(s, newsletter_id, now=utcnow()))
    for key in ("subject", "status", "audience", "sent", "queued", "held", "deferred", "failed", "suppressed",
                "cancelled", "unsubscribes", "opens"):
        click.echo(f"{key}: {report[key]}")
    if report["local_time"]:
        click.echo(f"waiting: {report['waiting']} (queued, for {report['local_time'][11:]} in their own time zone)")
    for url, clicks in report["clicks"]:
        click.echo(f"clicks {clicks}: {url}")


@newsletter_group.command("rhythm")
@click.option("--name", default="Monthly newsletter", show_default=True)
@click.option("--day", required=True, help="e.g. '1st tue', 'last fri', '15'.")
@click.option("--at", "at", required=True, help="Local time, e.g. 09:00.")
@click.option("--zone", help="Default: MAILER_TIMEZONE.")
@click.option("--fill-from-blog", is_flag=True, help="With no issue ready 24 h before and new blog posts, draft a "
                                                     "digest for staff to approve.")
def newsletter_rhythm(name, day, at, zone, fill_from_blog) -> None:
    """Create a monthly send time, e.g. --day '1st tue' --at 09:00."""
    m = _mailer()
    try:
        hour, minute = (int(part) for part in at.split(":"))
    except ValueError:
        raise click.ClickException(f"--at {at!r} is not a time like 09:00")
    rhythm_id = _run(m, lambda s: newsletters.create_rhythm(s, name=name, day=day, hour=hour, minute=minute,
                                                            timezone=zone or m.settings.timezone,
                                                            fill_from_blog=fill_from_blog).id)
    click.echo(f"created rhythm {rhythm_id}")


@newsletter_group.command("ready")
@click.argument("newsletter_id", type=int)
@click.option("--rhythm", "rhythm_id", required=True, type=int)
@click.option("--month", required=True, help="e.g. 2027-03")
def newsletter_ready(newsletter_id, rhythm_id, month) -> None:
    """Mark an issue as the one for a month of a rhythm: it goes out at that month's time."""
    m = _mailer()
    when = _run(m, lambda s: newsletters.mark_ready(s, newsletter_id, rhythm_id, month, now=utcnow()).send_at)
    click.echo(f"newsletter {newsletter_id} goes out {clock.format_local(when, m.settings.timezone)}")


@newsletter_group.command("list")
def newsletter_list() -> None:
    """Every newsletter with its status and send time."""
    import sqlalchemy as sa

    from mailer.models import Newsletter

    m = _mailer()
    with m.read_sessions() as session:
        for n in session.scalars(sa.select(Newsletter).order_by(Newsletter.id)):
            when = f"{n.send_at:%Y-%m-%d %H:%M} UTC" if n.send_at else "-"
            click.echo(f"{n.id}\t{n.status}\t{when}\t{n.subject}")


@main.group("webinar")
def webinar_group() -> None:
    """Create, publish, reschedule and cancel webinars; registrants and attendance."""


def _local(value: str):
    """A wall-clock date and time given on the command line."""
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.ClickException(f"{value!r} is not a date and time like 2027-03-25 18:00")


@webinar_group.command("create")
@click.option("--slug", required=True)
@click.option("--title", required=True)
@click.option("--start", required=True, help="Local date and time, e.g. '2027-03-25 18:00'.")
@click.option("--zone", help="Time zone of --start (default: MAILER_TIMEZONE).")
@click.option("--duration", default=60, show_default=True, type=int, help="Minutes.")
@click.option("--capacity", type=int, help="Seats; no limit when left out.")
@click.option("--join-url", default="", help="Sent only to confirmed registrants.")
@click.option("--description-file", type=click.File("r", encoding="utf-8"), help="Markdown.")
@click.option("--reminders", default="1440,60", show_default=True, help="Minutes before the start.")
@click.option("--publish", is_flag=True, help="Open registration at once.")
def webinar_create(slug, title, start, zone, duration, capacity, join_url, description_file, reminders, publish):
    """Create a webinar (a draft unless --publish)."""
    m = _mailer()

    def create(session):
        webinar = webinars.save_webinar(
            session, slug=slug, title=title, starts_local=_local(start), timezone=zone or m.settings.timezone,
            duration_minutes=duration, capacity=capacity, join_url=join_url,
            description_md=description_file.read() if description_file else "", reminder_offsets=reminders,
            now=utcnow())
        if publish:
            webinars.publish(session, webinar.id)
        return webinar.id, webinar.status

    webinar_id, status = _run(m, create)
    click.echo(f"created webinar {webinar_id} ({status}): {m.settings.base_url}/webinars/{slug}")


@webinar_group.command("publish")
@click.argument("webinar_id", type=int)
def webinar_publish(webinar_id):
    """Open registration."""
    m = _mailer()
    slug = _run(m, lambda s: webinars.publish(s, webinar_id).slug)
    click.echo(f"webinar {webinar_id} published: {m.settings.base_url}/webinars/{slug}")


@webinar_group.command("list")
def webinar_list():
    """Every webinar with its status, start and seats taken."""
    import sqlalchemy as sa

    from mailer.models import Webinar

    m = _mailer()
    with m.read_sessions() as session:
        for w in session.scalars(sa.select(Webinar).order_by(Webinar.starts_at)):
            seats = f"{webinars.seats_taken(session, w.id)}" + (f"/{w.capacity}" if w.capacity else "")
            click.echo(f"{w.id}\t{w.status}\t{clock.format_local(w.starts_at, w.timezone)}\t{seats}\t{w.title}")


@webinar_group.command("reschedule")
@click.argument("webinar_id", type=int)
@click.option("--start", required=True, help="New local date and time.")
def webinar_reschedule(webinar_id, start):
    """Move a webinar; registrants get the new time and an updated invite."""
    m = _mailer()

    def move(session):
        w = webinars.get_webinar(session, webinar_id)
        webinars.save_webinar(session, w, slug=w.slug, title=w.title, starts_local=_local(start), timezone=w.timezone,
                              duration_minutes=w.duration_minutes, capacity=w.capacity, join_url=w.join_url,
                              replay_url=w.replay_url, description_md=w.description_md,
                              reminder_offsets=w.reminder_offsets, now=utcnow())
        return clock.format_local(w.starts_at, w.timezone)

    click.echo(f"webinar {webinar_id} now starts {_run(m, move)}")


@webinar_group.command("cancel")
@click.argument("webinar_id", type=int)
def webinar_cancel(webinar_id):
    """Cancel a webinar; registrants get a calendar cancellation."""
    m = _mailer()
    _run(m, lambda s: webinars.cancel_webinar(s, webinar_id, now=utcnow()))
    click.echo(f"webinar {webinar_id} cancelled")


@webinar_group.command("attendance")
@click.argument("webinar_id", type=int)
@click.argument("csv_file", type=click.File("r", encoding="utf-8-sig"))
def webinar_attendance(webinar_id, csv_file):
    """Mark who attended, from a CSV with an 'email' column."""
    m = _mailer()
    marked, unknown = _run(m, lambda s: webinars.import_attendance(s, webinar_id, csv_file.read()))
    click.echo(f"marked {marked} as attended; not registered or not valid: {len(unknown)}")
    for address in unknown:
        click.echo(f"  {address}")


@main.group("sequence")
def sequence_group() -> None:
    """Sequences (automations): create, add, edit and delete steps, list, show, start, pause, resume,
    archive, enrol, report."""


def _counts(counts: dict[str, int]) -> str:
    enrolled = sum(counts.values())
    return f"{enrolled} enrolled, {counts.get('active', 0)} active, {counts.get('completed', 0)} completed"


def _delay(step) -> str:
    if not step.delay_minutes:
        return "at once"
    amount, unit = sequences.delay_parts(step.delay_minutes)
    return f"after {amount} {unit.rstrip('s') if amount == 1 else unit}"


@sequence_group.command("list")
def sequence_list() -> None:
    """Every sequence: id, status, trigger, list, enrolments, name."""
    from mailer.models import MailingList

    m = _mailer()
    with m.read_sessions() as session:
        rows = sequences.list_sequences(session)
        counts = sequences.enrolment_counts(session, [s.id for s in rows])
        slugs = dict(session.execute(sa.select(MailingList.id, MailingList.slug)).all())
        for s in rows:
            click.echo(f"{s.id}\t{s.status}\t{s.trigger}\t{slugs[s.list_id]}\t{_counts(counts[s.id])}\t{s.name}")


@sequence_group.command("create")
@click.option("--name", required=True)
@click.option("--trigger", required=True, type=click.Choice([t.value for t in SequenceTrigger]),
              help="imported: people a CSV import adds to --trigger-list (confirmed never enrols them).")
@click.option("--list", "list_slug", default=contacts.DEFAULT_LIST, show_default=True,
              help="The list its mail is sent as.")
@click.option("--trigger-list", help="For --trigger confirmed or imported: the list whose confirmations, or imports, "
                                     "enrol people.")
@click.option("--trigger-webinar", type=int, help="For the webinar triggers: the webinar (default: any).")
def sequence_create(name, trigger, list_slug, trigger_list, trigger_webinar) -> None:
    """Create a draft sequence; add steps with add-step, then activate it."""
    from mailer.audience import lists

    m = _mailer()
    sequence_id = _run(m, lambda s: sequences.create_sequence(
        s, name=name, trigger=trigger, list_id=lists.list_id_for(s, list_slug),
        trigger_list_id=lists.list_id_for(s, trigger_list) if trigger_list else None,
        trigger_webinar_id=trigger_webinar).id)
    click.echo(f"created sequence {sequence_id} (draft)")


@sequence_group.command("add-step")
@click.argument("sequence_id", type=int)
@click.option("--subject", required=True)
@click.option("--body-file", required=True, type=click.File("r", encoding="utf-8"), help="Markdown; - for stdin.")
@click.option("--preheader", default="")
@click.option("--layout", default="default", show_default=True)
@click.option("--delay", default=0, show_default=True, type=int, help="After the previous step, in --unit.")
@click.option("--unit", default="days", show_default=True, type=click.Choice(list(sequences.DELAY_UNITS)))
@click.option("--window", default="", help="e.g. 'weekdays 09:00-11:00', in the reader's zone.")
def sequence_add_step(sequence_id, subject, body_file, preheader, layout, delay, unit, window) -> None:
    """Add a last step; its templates are checked first."""
    m = _mailer()
    position = _run(m, lambda s: sequences.add_step(
        s, sequence_id, subject=subject, body_md=body_file.read(), preheader=preheader, layout=layout,
        delay=(delay, unit), window=window).position)
    click.echo(f"added step {position} to sequence {sequence_id}")


def _step_at(session, sequence_id: int, position: int):
    """The live step numbered `position` in `sequence show` (positions are never reused)."""
    sequences.get_sequence(session, sequence_id)  # an unknown sequence is named as such
    for step in sequences.live_steps(session, sequence_id):
        if step.position == position:
            return step
    raise NotFound(f"no step {position} in sequence {sequence_id}")


@sequence_group.command("edit-step")
@click.argument("sequence_id", type=int)
@click.argument("step", type=int)
@click.option("--subject")
@click.option("--body-file", type=click.File("r", encoding="utf-8"), help="Markdown; - for stdin.")
@click.option("--preheader")
@click.option("--layout")
@click.option("--delay", type=int, help="After the previous step, in --unit (default: the unit `show` gives).")
@click.option("--unit", type=click.Choice(list(sequences.DELAY_UNITS)))
@click.option("--window", help="e.g. 'weekdays 09:00-11:00', in the reader's zone; '' for none.")
def sequence_edit_step(sequence_id, step, subject, body_file, preheader, layout, delay, unit, window) -> None:
    """Change step STEP (its number in `sequence show`); what is not given keeps its value.
    Mail not yet sent carries the new text; the delay and window apply to readers not yet past it."""
    given = dict(subject=subject, body_md=body_file.read() if body_file else None, preheader=preheader,
                 layout=layout, window=window)
    if all(v is None for v in (*given.values(), delay, unit)):
        raise click.ClickException("Nothing to change: give --subject, --body-file, --preheader, --layout, "
                                   "--delay, --unit or --window.")
    m = _mailer()

    def edit(session):
        current = _step_at(session, sequence_id, step)
        amount, shown_unit = sequences.delay_parts(current.delay_minutes)
        kept = dict(subject=current.subject, body_md=current.body_md, preheader=current.preheader,
                    layout=current.layout, window=sequences.window_text(current))
        return sequences.update_step(
            session, current.id, **{k: kept[k] if v is None else v for k, v in given.items()},
            delay=(amount if delay is None else delay, unit or shown_unit),
            condition=current.condition, condition_ref_id=current.condition_ref_id).position

    click.echo(f"changed step {_run(m, edit)} of sequence {sequence_id}")


@sequence_group.command("delete-step")
@click.argument("sequence_id", type=int)
@click.argument("step", type=int)
def sequence_delete_step(sequence_id, step) -> None:
    """Delete step STEP (its number in `sequence show`): nobody gets it from now on, its queued
    copies are cancelled, what was sent stays sent, and no earlier step is sent again."""
    m = _mailer()
    _run(m, lambda s: sequences.delete_step(s, _step_at(s, sequence_id, step).id, now=utcnow()))
    click.echo(f"deleted step {step} of sequence {sequence_id}")


@sequence_group.command("show")
@click.argument("sequence_id", type=int)
def sequence_show(sequence_id) -> None:
    """One sequence and its steps in order, with their delay and send window."""

    m = _mailer()

    def describe(session):
        s = sequences.get_sequence(session, sequence_id)
        lines = [f"{s.name} ({s.status}, trigger {s.trigger})"]
        for step in sequences.live_steps(session, sequence_id):
            window = sequences.window_text(step)
            lines.append(f"  {step.position}. {step.subject} ({_delay(step)}{', ' + window if window else ''})")
        return lines

    for line in _run(m, describe):
        click.echo(line)


def _sequence_state_command(name: str, change, help_text: str) -> None:
    """`sequence NAME ID`: one change of state, answered with the new status."""
    @sequence_group.command(name, help=help_text)
    @click.argument("sequence_id", type=int)
    def command(sequence_id) -> None:
        m = _mailer()
        status = _run(m, lambda s: change(s, sequence_id).status)
        click.echo(f"sequence {sequence_id} {status}")


_sequence_state_command("activate", lambda s, i: sequences.activate(s, i, now=utcnow()),
                        "Start a draft: from now on its trigger enrols people.")
_sequence_state_command("pause", sequences.pause, "Queue nothing more and hold what is queued.")
_sequence_state_command("resume", sequences.resume, "Send what was held, and go on.")
_sequence_state_command("archive", sequences.archive, "Stop for good: mail not yet sent is cancelled.")


@sequence_group.command("enrol")
@click.argument("sequence_id", type=int)
@click.argument("email")
@click.option("--restart", is_flag=True, help="Someone already in it starts again from the first step.")
def sequence_enrol(sequence_id, email, restart) -> None:
    """Add one person (subscribed to the sequence's list) by hand."""
    from mailer.audience import directory

    m = _mailer()

    def enrol(session):
        contact_id = directory.contact_id_for_email(session, email)
        if restart:
            return sequences.re_enrol(session, sequence_id, contact_id, utcnow())
        return sequences.enrol(session, sequence_id, contact_id, utcnow())

    if not _run(m, enrol):
        raise click.ClickException(f"{email} is in sequence {sequence_id} already; --restart starts them again")
    click.echo(f"{email} {'restarted' if restart else 'enrolled'} in sequence {sequence_id}")


@sequence_group.command("enrol-csv")
@click.argument("sequence_id", type=int)
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
def sequence_enrol_csv(sequence_id, file) -> None:
    """Enrol the subscribers of its list among the addresses in FILE (a CSV with an email
    column, or one address a line; - for stdin; up to 10,000)."""
    from mailer.audience import imports

    m = _mailer()
    report = _run(m, lambda s: sequences.enrol_addresses(s, sequence_id, imports.read_addresses(file), utcnow()))
    click.echo(report.line())


@sequence_group.command("enrol-segment")
@click.argument("sequence_id", type=int)
@click.argument("segment_id", type=int)
def sequence_enrol_segment(sequence_id, segment_id) -> None:
    """Enrol everyone in a segment who is subscribed to the sequence's list."""
    m = _mailer()
    added = _run(m, lambda s: sequences.enrol_segment(s, sequence_id, segment_id, utcnow()))
    click.echo(f"{added} enrolled in sequence {sequence_id}")


@sequence_group.command("report")
@click.argument("sequence_id", type=int)
def sequence_report(sequence_id) -> None:
    """Enrolments, and each step's mail by delivery status and its condition skips."""

    m = _mailer()

    def figures(session):
        s = sequences.get_sequence(session, sequence_id)
        return s.name, s.status, sequences.enrolment_counts(session, [sequence_id])[sequence_id], \
            sequences.report(session, sequence_id)

    name, status, counts, steps = _run(m, figures)
    click.echo(f"{name} ({status}): {_counts(counts)}, {counts.get('exited', 0)} exited")
    for row in steps:
        outcomes = [f"{key} {n}" for key, n in sorted(row["deliveries"].items())]
        if row["skipped"]:
            outcomes.append(f"skipped {row['skipped']}")
        if row["unsubscribes"]:
            outcomes.append(f"unsubscribes {row['unsubscribes']}")
        deleted = " (deleted)" if row["deleted"] else ""
        click.echo(f"  {row['position']}. {row['subject']}{deleted}: {', '.join(outcomes) or 'nothing yet'}")


@main.group("segment")
def segment_group() -> None:
    """Segments: saved rules that pick contacts (list, show, count, create, archive)."""


@segment_group.command("list")
def segment_list() -> None:
    """Every segment: id, status, name, its rules in words."""
    from mailer.audience import segments

    m = _mailer()
    with m.read_sessions() as session:
        for row in segments.list_segments(session, archived=True):
            status = "archived" if row.archived_at else "in use"
            click.echo(f"{row.id}\t{status}\t{row.name}\t{segments.describe(session, segments.rules_of(row))}")


@segment_group.command("create")
@click.option("--name", required=True)
@click.option("--rules-file", required=True, type=click.File("r", encoding="utf-8"),
              help='JSON: {"match": "all", "groups": [{"match": "any", "rules": [{"kind": …, "op": …}]}]}; - for stdin.')
def segment_create(name, rules_file) -> None:
    """Create a segment; its rules are checked first."""
    from mailer.audience import segments

    m = _mailer()
    segment_id = _run(m, lambda s: segments.create_segment(s, name=name, rules=rules_file.read(), now=utcnow()).id)
    click.echo(f"created segment {segment_id}")


@segment_group.command("count")
@click.argument("segment_id", type=int)
def segment_count(segment_id) -> None:
    """How many contacts the segment picks now, and its rules in words."""
    from mailer.audience import segments

    m = _mailer()

    def counted(session):
        rules = segments.rules_of(segments.get_segment(session, segment_id))
        return segments.count(session, rules, utcnow()), segments.describe(session, rules)

    found, text = _run(m, counted)
    click.echo(f"{found} contacts: {text}")


@segment_group.command("archive")
@click.argument("segment_id", type=int)
def segment_archive(segment_id) -> None:
    """No longer offered for new issues; issues that used it keep it."""
    from mailer.audience import segments

    m = _mailer()
    _run(m, lambda s: segments.archive_segment(s, segment_id, now=utcnow()))
    click.echo(f"archived segment {segment_id}")


@main.group("field")
def field_group() -> None:
    """Custom contact fields (list, create, update, archive) and a contact's values (show, set)."""


@field_group.command("list")
def field_list() -> None:
    """Every field: id, status, key, type, label (and a choice field's choices)."""
    from mailer.audience import fields

    m = _mailer()
    with m.read_sessions() as session:
        for row in fields.list_fields(session, archived=True):
            choices = fields.choices_of(row)
            click.echo(f"{row.id}\t{'archived' if row.archived_at else 'in use'}\t{row.key}\t{row.type}\t{row.label}"
                       + (f"\t{' | '.join(choices)}" if choices else ""))


@field_group.command("create")
@click.option("--key", required=True, help="Used in mail as {{ contact.fields.<key> }}.")
@click.option("--label", required=True)
@click.option("--type", "field_type", default="text", show_default=True,
              type=click.Choice(["text", "number", "date", "yes_no", "choice"]))
@click.option("--choice", "choices", multiple=True, help="An allowed value of a choice field (repeat).")
def field_create(key, label, field_type, choices) -> None:
    """Create a custom field."""
    from mailer.audience import fields
    from mailer.staff import users

    m = _mailer()

    def create(session):
        field = fields.create_field(session, key=key, label=label, type=field_type, choices=choices, now=utcnow())
        users.record(session, None, "field.create", f"field {field.key}")
        return field.id

    click.echo(f"created field {_run(m, create)}")


@field_group.command("update")
@click.argument("field_id", type=int)
@click.option("--label")
@click.option("--choice", "choices", multiple=True, help="The full new set of a choice field's values (repeat).")
def field_update(field_id, label, choices) -> None:
    """Change a field's label or (a choice field) its choices; the key and type stay."""
    from mailer.audience import fields
    from mailer.staff import users

    m = _mailer()

    def update(session):
        field = fields.update_field(session, field_id, label=label, choices=list(choices) or None, now=utcnow())
        users.record(session, None, "field.update", f"field {field.key}")

    _run(m, update)
    click.echo(f"updated field {field_id}")


@field_group.command("archive")
@click.argument("field_id", type=int)
def field_archive(field_id) -> None:
    """No longer offered for editing or imports; the values stay."""
    from mailer.audience import fields
    from mailer.staff import users

    m = _mailer()

    def archive(session):
        users.record(session, None, "field.archive", f"field {fields.archive_field(session, field_id, now=utcnow()).key}")

    _run(m, archive)
    click.echo(f"archived field {field_id}")


@field_group.command("show")
@click.argument("email")
def field_show(email) -> None:
    """A contact's values, one key=value a line (audited: personal data)."""
    from mailer.audience import directory, fields
    from mailer.staff import users

    m = _mailer()

    def show(session):
        contact_id = directory.contact_id_for_email(session, email)
        users.record(session, None, "contact.fields.view", f"contact {contact_id}")
        return fields.values_of(session, contact_id)

    for key, value in _run(m, show).items():
        click.echo(f"{key}={value}")


@field_group.command("set")
@click.argument("email")
@click.argument("values", nargs=-1, required=True, metavar="KEY=VALUE...")
def field_set(email, values) -> None:
    """Set a contact's values (KEY= clears one); each is checked by its field's type."""
    from mailer.audience import directory, fields
    from mailer.staff import users

    pairs = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.ClickException(f"'{item}' is not KEY=VALUE.")
        pairs[key.strip()] = value
    m = _mailer()

    def apply(session):
        contact_id = directory.contact_id_for_email(session, email)
        changes = fields.set_values(session, contact_id, pairs)
        if changes:
            users.record(session, None, "contact.fields", f"contact {contact_id}: {fields.change_text(changes)}")
        return changes

    changes = _run(m, apply)
    click.echo(f"{len(changes)} value{'' if len(changes) == 1 else 's'} changed")


@main.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--list", "list_slug", default=contacts.DEFAULT_LIST, show_default=True)
@click.option("--consent-note", required=True, help="How these people gave their consent (kept as evidence).")
def import_command(csv_file, list_slug, consent_note) -> None:
    """Import existing subscribers from a CSV with an 'email' (and optional 'name') column."""
    from mailer.audience import imports

    m = _mailer()
    started = time.monotonic()

    def progress(report):
        rate = report.rows / max(time.monotonic() - started, 1e-6)
        end = "\r" if sys.stderr.isatty() else "\n"
        sys.stderr.write(f"{report.line()} | {rate:.0f} rows/s{end}")
        sys.stderr.flush()

    with click.open_file(csv_file, "r", encoding="utf-8-sig") as lines:
        try:
            report = imports.import_csv(m.sessions, m.settings, lines, list_slug=list_slug, consent_note=consent_note,
                                        source=f"import:{csv_file}", now=utcnow(), progress=progress)
        except InvalidInput as exc:
            raise click.ClickException(exc.message)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    click.echo(report.line())
    for example in report.examples["invalid"]:
        click.echo(f"  invalid: {example}")


@main.command()
def purge() -> None:
    """Delete unconfirmed signups older than the opt-in window now."""
    m = _mailer()
    with session_scope(m.sessions) as session:
        count = contacts.purge_expired_pending(session, m.settings, utcnow())
        trimmed = jobs.forget_old_examples(session, utcnow())
    click.echo(f"purged {count} unconfirmed signups; trimmed {trimmed} old import reports")


@main.command()
@click.option("--contact", "email", required=True, help="Export all data held about this address.")
def export(email: str) -> None:
    """Export one person's data and consent history as JSON."""
    m = _mailer()
    try:
        with session_scope(m.sessions) as session:
            data = privacy.export_contact(session, email)
    except InvalidInput as exc:
        raise click.ClickException(exc.message)
    if data is None:
        raise click.ClickException(f"no contact with the address {email}")
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@main.command()
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def erase(email: str, yes: bool) -> None:
    """Erase one person's personal data (GDPR Art. 17); the address stays suppressed."""
    from mailer.audience import directory

    m = _mailer()
    try:
        address = contacts.normalise_email(email)
    except InvalidInput as exc:
        raise click.ClickException(exc.message)
    with m.read_sessions() as session:
        found = directory.search_contacts(session, q=address, limit=1)
    if not found:
        raise click.ClickException(f"no contact with the address {address}")
    if not yes:
        click.confirm(f"Erase all personal data of {address}? This cannot be undone.", abort=True)
    with session_scope(m.sessions) as session:
        report = privacy.erase_contact(session, m.settings, found[0].id, now=utcnow())
    click.echo(f"erased contact {report.contact_id}: {report.deliveries_cancelled} unsent messages cancelled, "
               f"{report.subscriptions_ended} subscriptions ended, {report.registrations_cancelled} registrations "
               f"cancelled; the address is suppressed")


@main.group("contact")
def contact_group() -> None:
    """The front desk: add a contact, correct their name or zone, unsubscribe, invite again.
    CONTACT is a contact's id or address; --by names the staff user acting (their login),
    the source in the consent ledger and the audit log."""


def _contact_id(session, ref: str) -> int:
    from mailer.audience import directory

    if "@" in ref:
        return directory.contact_id_for_email(session, ref)
    try:
        return directory.get_contact(session, int(ref)).id
    except ValueError:
        raise InvalidInput("contact", f"{ref!r} is neither a contact id nor an address.") from None


def _staff(session, by: str):
    from mailer.audience import frontdesk

    return frontdesk.staff_by_email(session, by, "command line")


BY = click.option("--by", required=True, help="The login of the staff user who acts (e.g. front@clinic.example).")


@contact_group.command("add")
@click.argument("email")
@click.option("--name", default="")
@click.option("--timezone", help="IANA zone, e.g. Europe/Berlin.")
@click.option("--list", "lists", multiple=True, help="A list to join (slug); repeat for more.")
@click.option("--consent-note", help="How and when they gave consent, e.g. 'signed the paper form on 3 March'.")
@click.option("--send-confirmation", is_flag=True, help="Instead of --consent-note: double opt-in by mail.")
@BY
def contact_add(email, name, timezone, lists, consent_note, send_confirmation, by) -> None:
    """Add a person; joining lists needs --consent-note or --send-confirmation."""
    from mailer.audience import frontdesk

    m = _mailer()
    added = _run(m, lambda s: frontdesk.add_contact(
        s, m.settings, _staff(s, by), email=email, name=name, timezone=timezone, lists=list(lists),
        consent_note=consent_note, send_confirmation=send_confirmation, now=utcnow()))
    click.echo(f"added contact {added.contact_id}"
               + (f"; joined {', '.join(added.joined)}" if added.joined else "")
               + (f"; confirmation mail {'queued' if added.confirmation_queued else 'NOT queued (daily limit)'} "
                  f"for {', '.join(added.invited)}" if added.invited else ""))


@contact_group.command("edit")
@click.argument("contact")
@click.option("--name", help="The corrected name ('' for none).")
@click.option("--timezone", help="IANA zone ('' for none).")
@BY
def contact_edit(contact, name, timezone, by) -> None:
    """Correct a name or time zone (audited with old and new values)."""
    from mailer.audience import frontdesk

    changes = {key: value for key, value in (("name", name), ("timezone", timezone)) if value is not None}
    m = _mailer()
    done = _run(m, lambda s: frontdesk.edit_contact(s, _staff(s, by), _contact_id(s, contact), **changes,
                                                    now=utcnow()))
    click.echo("; ".join(done) if done else "nothing changed")


@contact_group.command("unsubscribe")
@click.argument("contact")
@click.option("--list", "list_slug", help="The list (slug).")
@click.option("--all", "everything", is_flag=True, help="From every list.")
@click.option("--note", default="", help="How they asked, e.g. 'phoned the desk'.")
@BY
def contact_unsubscribe(contact, list_slug, everything, note, by) -> None:
    """Unsubscribe from one list or all, as their unsubscribe link would; queued mail is cancelled."""
    from mailer.audience import frontdesk

    if bool(list_slug) == everything:
        raise click.UsageError("give either --list or --all")
    m = _mailer()
    withdrawn = _run(m, lambda s: frontdesk.unsubscribe_contact(
        s, m.settings, _staff(s, by), _contact_id(s, contact), list_slug=None if everything else list_slug,
        note=note, now=utcnow()))
    click.echo(f"unsubscribed from {', '.join(withdrawn)}" if withdrawn else "nothing to unsubscribe from")


@contact_group.command("invite")
@click.argument("contact")
@click.option("--list", "list_slug", required=True, help="The list (slug).")
@BY
def contact_invite(contact, list_slug, by) -> None:
    """Send the confirmation mail of double opt-in for a list (or resend a pending one)."""
    from mailer.audience import frontdesk

    m = _mailer()
    outcome = _run(m, lambda s: frontdesk.invite(s, m.settings, _staff(s, by), _contact_id(s, contact),
                                                 list_slug=list_slug, now=utcnow()))
    click.echo({"sent": "confirmation mail queued", "already_active": "already on the list",
                "too_soon": "a confirmation went out recently: not resent yet",
                "capped": "not sent: daily limit of confirmation mails reached"}[outcome])


@main.command("export-contacts")
@click.option("--list", "list_slug", help="Only contacts on this list (slug).")
@click.option("--status", type=click.Choice(["pending", "active", "unsubscribed"]),
              help="Only this subscription status (on --list, or on any list).")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
def export_contacts(list_slug, status, fmt) -> None:
    """Write every contact (not erased) to standard output, streamed."""
    from mailer.audience import directory
    from mailer.models import MailingList

    m = _mailer()
    with m.read_sessions() as session:
        list_id = None
        if list_slug:
            list_id = session.scalar(sa.select(MailingList.id).where(MailingList.slug == list_slug))
            if list_id is None:
                raise click.ClickException(f"no list '{list_slug}'")
        rows = directory.export_contacts(session, list_id=list_id, status=status)
        for chunk in (directory.contacts_csv(rows) if fmt == "csv" else directory.contacts_json(rows)):
            sys.stdout.write(chunk)
    sys.stdout.flush()


@main.group("consent")
def consent_group() -> None:
    """The consent ledger."""


@consent_group.command("verify")
@click.option("--checkpoint", "checkpoint_text", metavar="TEXT",
              help="A checkpoint printed by `consent checkpoint` (or mailed to the owners): also report events "
                   "removed at or before it.")
def consent_verify(checkpoint_text: str | None) -> None:
    """Check that no consent event was changed or removed."""
    m = _mailer()
    with m.read_sessions() as session:
        try:
            checkpoint = consent.parse_checkpoint(session, checkpoint_text) if checkpoint_text is not None else None
        except InvalidInput as exc:
            raise click.ClickException(exc.message)
        report = consent.verify_chain(session, checkpoint=checkpoint)
    if report.intact:
        against = f"; it holds the checkpoint of {checkpoint.at}" if checkpoint else ""
        click.echo(f"consent ledger intact: {report.events} events verified{against}")
        if not report.keyed:
            click.echo("warning: the ledger is not keyed yet: run `python -m mailer migrate`", err=True)
        return
    where = f" at event {report.broken_event_id}" if report.broken_event_id is not None else ""
    click.echo(f"consent ledger BROKEN{where}: {report.reason}", err=True)
    sys.exit(1)


@consent_group.command("checkpoint")
def consent_checkpoint() -> None:
    """Print a signed checkpoint of the ledger (event count, head hash, time). Keep it
    outside the database: `consent verify --checkpoint` then detects removed events."""
    m = _mailer()
    with m.read_sessions() as session:
        click.echo(consent.make_checkpoint(session, utcnow()).text)


@main.command("unsubscribe-mail")
def unsubscribe_mail() -> None:
    """Handle one List-Unsubscribe mailto request read from standard input
    (for an MTA pipe, e.g. Postfix: `unsubscribe: "|python -m mailer unsubscribe-mail"`)."""
    from email import message_from_binary_file, policy

    message = message_from_binary_file(sys.stdin.buffer, policy=policy.default)
    subject = str(message.get("Subject", ""))
    token = subject.split()[-1] if subject.split() else ""
    m = _mailer()
    with session_scope(m.sessions) as session:
        result = contacts.unsubscribe(session, m.settings, token,
                                      context=consent.RequestContext(source_url="mailto", note="List-Unsubscribe mailto"),
                                      now=utcnow())
    click.echo(result.outcome.value)
    if result.outcome == contacts.LinkOutcome.INVALID:
        sys.exit(1)


@main.group("dkim")
def dkim_group() -> None:
    """DKIM signing keys (README "Deliverability")."""


def _settings():
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc))


def _echo_record(selector: str, domain: str, pem: bytes) -> None:
    from mailer.delivery import dkim

    value = dkim.txt_record(pem)
    click.echo(f"Publish this TXT record in the DNS of {domain}:\n")
    click.echo(f"  name:  {dkim.record_name(selector, domain)}")
    click.echo(f"  value: {value}\n")
    click.echo("As a zone-file line:\n")
    click.echo(f"  {dkim.zone_line(selector, domain, value)}\n")


@dkim_group.command("generate")
@click.option("--selector", required=True, help="A name for this key, e.g. mail2026 (a new one to rotate keys).")
@click.option("--domain", help="The domain that signs: that of MAILER_FROM unless given.")
def dkim_generate(selector: str, domain: str | None) -> None:
    """Make a 2048-bit RSA key and print the DNS TXT record to publish. The key is written
    to instance/dkim/<selector>.<domain>.pem (or MAILER_DKIM_KEY_FILE), never to the database."""
    from mailer.delivery import dkim

    settings = _settings()
    try:
        selector = dkim.check_selector(selector)
        domain = dkim.check_domain(domain) if domain else dkim.signing_domain(settings)
        path = dkim.key_path(settings, selector, domain)
        pem = dkim.generate_key(path)
    except dkim.DkimError as exc:
        raise click.ClickException(str(exc))
    click.echo(f"Made a {dkim.KEY_BITS}-bit RSA key: {path}\n")
    _echo_record(selector, domain, pem)
    click.echo("Once the record is published (check it on the Deliverability page), sign with it by setting:\n")
    click.echo(f"  MAILER_DKIM_SELECTOR={selector}")
    if domain != dkim.signing_domain(settings):
        click.echo(f"  MAILER_DKIM_DOMAIN={domain}")
    if settings.dkim_key_file:
        click.echo(f"  MAILER_DKIM_KEY_FILE={path}")


@dkim_group.command("record")
def dkim_record() -> None:
    """Print the DNS TXT record of the key MAILER_DKIM_SELECTOR names."""
    from mailer.delivery import dkim

    settings = _settings()
    try:
        signer = dkim.signer_for(settings)
    except dkim.DkimError as exc:
        raise click.ClickException(str(exc))
    if signer is None:
        raise click.ClickException("MAILER_DKIM_SELECTOR is not set: mail is not signed here")
    _echo_record(signer.selector.decode(), signer.domain.decode(), signer.private_pem)


@main.command("read-bounces")
def read_bounces() -> None:
    """Read the bounce mailbox (MAILER_BOUNCE_MAILBOX_URL) once, as the worker does every minute."""
    from mailer.delivery import bounce_mailbox

    m = _mailer()
    if not m.settings.bounce_mailbox_url:
        raise click.ClickException("MAILER_BOUNCE_MAILBOX_URL is not set")
    try:
        counts = bounce_mailbox.read_bounce_mailbox(m.sessions, m.settings, clock=utcnow)
    except bounce_mailbox.MailboxError as exc:
        raise click.ClickException(str(exc))
    click.echo(f"read {counts.read}: hard bounces {counts.hard} (suppressed), soft {counts.soft}, "
               f"policy {counts.policy}, matching no delivery {counts.unmatched}, not bounces {counts.not_bounces}")


@main.group("media")
def media_group() -> None:
    """The media library: images for newsletters (add, list, alt, delete)."""


@media_group.command("add")
@click.argument("file", type=click.File("rb"))
@click.option("--alt", default="", help="What the image shows, for readers who cannot see it.")
def media_add(file, alt) -> None:
    """Add an image (PNG, JPEG, GIF or WebP); prints its id and the Markdown that shows it."""
    from mailer.campaigns import media

    m = _mailer()
    limit = m.settings.media_max_bytes

    def add(session):
        image, created = media.add_image(session, file.read(limit + 1), alt=alt, filename=os.path.basename(file.name),
                                         user_id=None, max_bytes=limit, max_pixels=m.settings.media_max_pixels,
                                         now=utcnow())
        if created:
            users.record(session, None, "media.upload", f"image {image.id} ({image.width} × {image.height})")
        return (f"{'added' if created else 'already in the library:'} image {image.id} "
                f"({image.width} × {image.height}, {image.mime})\n{media.markdown_snippet(m.settings.base_url, image)}")

    click.echo(_run(m, add))


@media_group.command("list")
def media_list() -> None:
    """Every image, newest first: id, size, type, alt text, address."""
    from mailer.campaigns import media

    m = _mailer()
    with m.read_sessions() as session:
        for image in media.list_images(session):
            click.echo(f"{image.id}\t{image.width}x{image.height}\t{image.mime}\t{image.alt or '(no alt text)'}\t"
                       f"{media.image_url(m.settings.base_url, image)}")


@media_group.command("alt")
@click.argument("image_id", type=int)
@click.argument("alt")
def media_alt(image_id, alt) -> None:
    """Change an image's alt text."""
    from mailer.campaigns import media

    m = _mailer()

    def change(session):
        media.set_alt(session, image_id, alt)
        users.record(session, None, "media.alt", f"image {image_id}")

    _run(m, change)
    click.echo(f"alt text of image {image_id} saved")


@media_group.command("delete")
@click.argument("image_id", type=int)
def media_delete(image_id) -> None:
    """Delete an image no unsent newsletter or automation uses."""
    from mailer.campaigns import media

    m = _mailer()

    def delete(session):
        _, sent = media.delete_image(session, image_id)
        users.record(session, None, "media.delete", f"image {image_id}")
        return sent

    sent = _run(m, delete)
    click.echo(f"deleted image {image_id}" + (f"; sent mail no longer shows it: {'; '.join(sent)}" if sent else ""))
