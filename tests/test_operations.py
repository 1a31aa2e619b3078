"""Operations: purge of unconfirmed signups, the CLI, and the newcomer's `serve --demo`."""
from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import sqlalchemy as sa
import time_machine
from click.testing import CliRunner

from mailer import demo
from mailer.audience import consent, contacts
from mailer.campaigns import sequences
from mailer.cli import main
from mailer.audience.consent import RequestContext
from mailer.db import session_scope, utcnow
from mailer.models import ConsentEvent, Contact, Delivery, Sequence, Subscription, Webinar
from tests.conftest import SECRET, links_in, signup
from tests.smtp_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def _env(database_url, tmp_path, **extra):
    return {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
            "MAILER_INSTANCE_PATH": str(tmp_path / "instance"), **extra}


def test_unconfirmed_signups_are_purged_after_the_window_and_the_person_forgotten(mailer, db):
    old = utcnow() - dt.timedelta(days=8)
    with session_scope(mailer.sessions) as session:
        for address, when in (("old@example.com", old), ("new@example.com", utcnow())):
            contacts.subscribe(session, mailer.settings, email=address, consent_given=True,
                               context=RequestContext(ip="192.0.2.1"), now=when)
    with session_scope(mailer.sessions) as session:
        assert contacts.purge_expired_pending(session, mailer.settings, utcnow()) == 1
    assert db.scalars(sa.select(Contact.email).where(Contact.email.is_not(None))) == ["new@example.com"]
    assert db.scalar(sa.select(sa.func.count()).select_from(Subscription)) == 1
    statuses = db.scalars(sa.select(Delivery.status).order_by(Delivery.id))
    assert statuses == ["cancelled", "queued"]
    forgotten = db.scalar(sa.select(Contact).where(Contact.email.is_(None)))
    assert forgotten.name == "" and forgotten.erased_at is not None
    events = db.scalars(sa.select(ConsentEvent).where(ConsentEvent.contact_id == forgotten.id).order_by(ConsentEvent.id))
    # The ledger records the redaction of the forgotten person's events.
    assert [e.action for e in events] == ["requested", "expired", "redacted"]
    assert all(e.ip is None for e in events)
    with mailer.read_sessions() as session:
        assert consent.verify_chain(session).intact


def test_expired_confirmation_link_says_so(client, mailer, db):
    with session_scope(mailer.sessions) as session:
        contacts.subscribe(session, mailer.settings, email="late@example.com", consent_given=True,
                           context=RequestContext(), now=utcnow())
    with mailer.read_sessions() as session:
        sub = session.scalar(sa.select(Subscription))
        token = contacts.confirm_token(mailer.settings, sub)
        with time_machine.travel(utcnow() - dt.timedelta(days=8)):
            stale = contacts.confirm_token(mailer.settings, sub)
    answer = client.get(f"/confirm/{stale}")
    assert answer.status_code == 404
    assert "This link has expired. Please sign up again." in answer.text
    assert client.get(f"/confirm/{token}").status_code == 200


def test_worker_drain_cli_sends_and_reports(client, smtp_server, database_url, tmp_path):
    signup(client, "a@example.com")
    result = CliRunner().invoke(main, ["worker", "--drain"],
                                env=_env(database_url, tmp_path, MAILER_SMTP_URL=smtp_server.url))
    assert result.exit_code == 0, result.output
    assert "sent 1, deferred 0, failed 0, skipped 0" in result.output
    assert len(smtp_server.received) == 1


def test_mailto_unsubscribe_request_is_handled(client, mailer, smtp_server, database_url, tmp_path, db):
    signup(client, "a@example.com")
    mailer.drain()
    mailto = smtp_server.received[0].message["List-Unsubscribe"].split(",")[1].strip(" <>")
    subject = mailto.split("subject=", 1)[1].replace("%20", " ")
    request = f"From: a@example.com\r\nTo: unsubscribe@example.com\r\nSubject: {subject}\r\n\r\n".encode()
    result = CliRunner().invoke(main, ["unsubscribe-mail"], input=request, env=_env(database_url, tmp_path))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "unsubscribed"
    assert db.scalar(sa.select(Subscription.status)) == "unsubscribed"


def test_create_user_cli_refuses_a_short_password(database_url, tmp_path):
    env = _env(database_url, tmp_path, MAILER_NEW_PASSWORD="short")
    result = CliRunner().invoke(main, ["create-user", "boss@clinic.example"], env=env)
    assert result.exit_code == 1
    assert "at least 12 characters" in result.output
    env["MAILER_NEW_PASSWORD"] = "a much longer password"
    assert CliRunner().invoke(main, ["create-user", "boss@clinic.example"], env=env).exit_code == 0
    token = CliRunner().invoke(main, ["create-token", "boss@clinic.example", "--name", "website"], env=env)
    assert token.exit_code == 0 and token.output.startswith("mlr_")


def test_newcomer_serve_demo_shows_login_demo_content_and_mail(tmp_path):
    """`python -m mailer serve --demo` on an empty instance: migrates, seeds, prints a login,
    and the confirmation mail of a signup reaches the dev mailbox through the in-process worker."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_INSTANCE_PATH=str(tmp_path / "instance"), MAILER_SEND_INTERVAL_SECONDS="1")
    proc = subprocess.Popen([sys.executable, "-m", "mailer", "serve", "--demo", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output = ""
        while "Staff login" not in output:
            line = proc.stdout.readline()
            assert line, f"serve exited early:\n{output}"
            output += line
        email, password = re.search(r"(admin@example\.com) / (\S+)", output).groups()
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/livez", timeout=1)
                break
            except OSError:
                time.sleep(0.1)

        import http.cookiejar

        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        data = b"email=newcomer%40example.com&name=Nia&consent=yes&consent_version=1&lists=newsletter"
        assert "Check your inbox" in opener.open(f"{base}/subscribe", data=data).read().decode()
        login_page = opener.open(f"{base}/admin/login").read().decode()
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', login_page).group(1)
        form = urllib.parse.urlencode({"email": email, "password": password, "csrf_token": csrf}).encode()
        dashboard = opener.open(f"{base}/admin/login", data=form).read().decode()
        assert "Spine Health: understanding and easing back pain" in dashboard
        assert "Spine Health monthly: three habits for a happier back" in dashboard
        for _ in range(50):
            mailbox = opener.open(f"{base}/admin/mailbox").read().decode()
            if "newcomer@example.com" in mailbox:
                break
            time.sleep(0.2)
        assert "Please confirm your subscription to Monthly newsletter" in mailbox
        message = opener.open(base + re.search(r'href="(/admin/mailbox/\d+)"', mailbox).group(1)).read().decode()
        confirm = re.search(rf"({re.escape(base)}/confirm/[^\s<\"]+)", message).group(1)
        assert "You are now subscribed to Monthly newsletter" in opener.open(confirm).read().decode()
        # The demo's welcome series: its first step reaches the dev mailbox within seconds
        # (the sequence job runs every 4 s and wakes the sender; the bound allows a loaded machine).
        confirmed = time.monotonic()
        while time.monotonic() - confirmed < 15:
            mailbox = opener.open(f"{base}/admin/mailbox").read().decode()
            if "Welcome to Spine Health, Nia" in mailbox:
                break
            time.sleep(0.2)
        waited = time.monotonic() - confirmed
        print(f"\nwelcome mail in the dev mailbox {waited:.1f} s after the confirmation")
        assert "Welcome to Spine Health, Nia" in mailbox
        assert waited < 7, f"the welcome took {waited:.1f} s"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_second_demo_seed_keeps_the_owners_password_and_serve_help_documents_host_and_port(mailer):
    """Restarting `serve --demo` must not lock out an owner who changed the demo password."""
    from mailer.models import User
    from mailer.staff import users

    with session_scope(mailer.sessions) as session:
        first = demo.seed_demo(session, mailer.settings.timezone, utcnow())
    assert first and len(first) >= 12
    with session_scope(mailer.sessions) as session:
        user = session.scalar(sa.select(User).where(User.email == demo.DEMO_USER))
        users.set_password(session, user, "the owner's own long password")
    with session_scope(mailer.sessions) as session:
        assert demo.seed_demo(session, mailer.settings.timezone, utcnow()) is None
    with session_scope(mailer.sessions) as session:
        assert users.authenticate(session, demo.DEMO_USER, "the owner's own long password", now=utcnow(),
                                  max_failures=5, lockout_seconds=60).email == demo.DEMO_USER
    help_text = CliRunner().invoke(main, ["serve", "--help"]).output
    assert "--host" in help_text and "default: 127.0.0.1" in help_text
    assert "--port" in help_text and "default: 5000" in help_text


def test_demo_seeds_a_welcome_series_and_a_replay_sequence_once_and_a_confirmation_gets_the_welcome(
        client, mailer, smtp_server, db):
    """The demo's sequences (made through sequences.py, active, made once however often the
    demo is seeded); a signup confirmed in the demo is enrolled and queued the welcome mail."""
    for _ in range(2):
        with session_scope(mailer.sessions) as session:
            demo.seed_demo(session, mailer.settings.timezone, utcnow())
    with mailer.read_sessions() as session:
        found = {s.name: s for s in session.scalars(sa.select(Sequence))}
        assert set(found) == {demo.WELCOME_SERIES, demo.REPLAY_SEQUENCE}
        welcome, replay = found[demo.WELCOME_SERIES], found[demo.REPLAY_SEQUENCE]
        assert (welcome.status, welcome.trigger, replay.status, replay.trigger) == ("active", "confirmed",
                                                                                   "active", "missed")
        assert replay.trigger_webinar_id == session.scalar(sa.select(Webinar.id).where(Webinar.slug == "spine-health"))
        steps = sequences.live_steps(session, welcome.id)
        assert [(s.delay_minutes, sequences.window_text(s)) for s in steps] == [
            (0, ""), (2 * 1440, "weekdays 09:00-11:00"), (3 * 1440, "weekdays 09:00-11:00")]
        first_step = steps[0].id
        assert len(sequences.live_steps(session, replay.id)) == 1
        # A custom field and a segment, each once.
        from mailer.models import Field, Segment
        assert session.scalars(sa.select(Field.key)).all() == ["clinic"]
        assert session.scalars(sa.select(Segment.name)).all() == [demo.DEMO_SEGMENT]

    signup(client, email="nia@example.com", name="Nia")
    mailer.drain()
    [confirmation] = [r.message for r in smtp_server.received if r.rcpt_tos == ["nia@example.com"]]
    link = [l for l in links_in(confirmation.get_body(("plain",)).get_content()) if "/confirm/" in l][0]
    assert "You are now subscribed" in client.get(link.removeprefix("https://news.example.org")).text
    with session_scope(mailer.sessions) as session:
        assert sequences.run(session, mailer.settings, utcnow()) == 1
    contact_id = db.scalar(sa.select(Contact.id).where(Contact.email == "nia@example.com"))
    assert db.execute(sa.select(Delivery.kind, Delivery.ref_id, Delivery.status).where(
        Delivery.contact_id == contact_id, Delivery.kind == sequences.STEP)) == [(sequences.STEP, first_step, "queued")]
    mailer.drain()
    subjects = [r.message["Subject"] for r in smtp_server.received if r.rcpt_tos == ["nia@example.com"]]
    assert subjects[-1] == "Welcome to Spine Health, Nia"


def test_worker_drain_cli_also_sends_due_sequence_steps(client, mailer, smtp_server, database_url, tmp_path):
    """`python -m mailer worker --drain` (cron) queues what is due as the worker's jobs do,
    sequence steps included: a confirmation in the demo gets its welcome mail from it."""
    with session_scope(mailer.sessions) as session:
        demo.seed_demo(session, mailer.settings.timezone, utcnow())
    signup(client, email="nia@example.com", name="Nia")
    mailer.drain()
    [confirmation] = [r.message for r in smtp_server.received if r.rcpt_tos == ["nia@example.com"]]
    link = [l for l in links_in(confirmation.get_body(("plain",)).get_content()) if "/confirm/" in l][0]
    assert "You are now subscribed" in client.get(link.removeprefix("https://news.example.org")).text
    result = CliRunner().invoke(main, ["worker", "--drain"],
                                env=_env(database_url, tmp_path, MAILER_SMTP_URL=smtp_server.url))
    assert result.exit_code == 0, result.output
    assert "sent 1, deferred 0, failed 0" in result.output
    subjects = [r.message["Subject"] for r in smtp_server.received if r.rcpt_tos == ["nia@example.com"]]
    assert len(subjects) == 2 and subjects[1] == "Welcome to Spine Health, Nia"
