"""Staff login: one answer, in the same time, for an unknown address, a wrong password and
an account backing off; wrong passwords make the account wait exponentially longer, but a
browser its owner logged in from before is never held up; each client IP has stepped limits."""
from __future__ import annotations

import datetime as dt
import re
import statistics
import time

import sqlalchemy as sa

from mailer.staff import users
from mailer.db import session_scope, utcnow
from mailer.models import User
from tests.conftest import STAFF_PASSWORD

OWNER = "owner@clinic.example"


def attempt(client, email, password, ip="192.0.2.50"):
    page = client.get("/admin/login", environ_base={"REMOTE_ADDR": ip}).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    return client.post("/admin/login", data={"email": email, "password": password, "csrf_token": token},
                       environ_base={"REMOTE_ADDR": ip})


def error_of(answer) -> str:
    return re.search(r'<p class="error"[^>]*>(.*?)</p>', answer.text, re.S).group(1).strip()


def make_owner(mailer) -> None:
    with session_scope(mailer.sessions) as session:
        users.create_user(session, OWNER, STAFF_PASSWORD, "owner")
        users.create_user(session, "locked@clinic.example", STAFF_PASSWORD, "editor")
        session.execute(sa.update(User).where(User.email == "locked@clinic.example")
                        .values(failed_logins=9, locked_until=utcnow() + dt.timedelta(hours=1)))


def test_unknown_address_wrong_password_and_backing_off_look_and_take_the_same(app, mailer):
    make_owner(mailer)
    cases = {"unknown": ("nobody@clinic.example", "whatever it is"),
             "wrong": (OWNER, "not the password"),
             "backing off": ("locked@clinic.example", STAFF_PASSWORD)}  # even the right one
    answers, seconds = {}, {name: [] for name in cases}
    for round_ in range(5):
        for name, (email, password) in cases.items():
            client = app.test_client()
            started = time.perf_counter()
            answers[name] = attempt(client, email, password, ip=f"192.0.2.{10 + round_}")
            seconds[name].append(time.perf_counter() - started)
            if name == "wrong":  # keep the owner's account out of its own back-off
                with session_scope(mailer.sessions) as session:
                    session.execute(sa.update(User).where(User.email == OWNER).values(failed_logins=0,
                                                                                   locked_until=None))
    assert {name: (a.status_code, error_of(a)) for name, a in answers.items()} == {
        name: (400, "Wrong email or password.") for name in cases}
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    # Every case checks one password hash (scrypt, tens of ms); skipping it in any case
    # would make that case many times faster than the others.
    assert max(medians.values()) < 2 * min(medians.values()), medians


def test_wrong_passwords_back_off_exponentially_then_the_right_one_works(app, mailer, db):
    make_owner(mailer)
    assert [users.backoff_seconds(n, max_failures=5, longest=900) for n in range(1, 16)] == \
        [0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900]
    client = app.test_client()
    for _ in range(5):
        assert attempt(client, OWNER, "not the password").status_code == 400
    locked_until = db.scalar(sa.select(User.locked_until).where(User.email == OWNER))
    assert dt.timedelta(0) < locked_until.replace(tzinfo=dt.timezone.utc) - utcnow() <= dt.timedelta(seconds=1)
    assert error_of(attempt(client, OWNER, STAFF_PASSWORD)) == "Wrong email or password."  # still waiting
    time.sleep(1.1)
    assert attempt(client, OWNER, STAFF_PASSWORD).status_code == 302  # not a 15-minute ban
    assert db.scalar(sa.select(User.failed_logins).where(User.email == OWNER)) == 0


def test_an_attacker_cannot_lock_the_owner_out_of_their_own_browser(app, mailer, db):
    make_owner(mailer)
    owners_browser = app.test_client()
    assert attempt(owners_browser, OWNER, STAFF_PASSWORD, ip="198.51.100.7").status_code == 302
    owners_browser.post("/admin/logout", data={"csrf_token": re.search(
        r'name="csrf_token" value="([^"]+)"', owners_browser.get("/admin/").text).group(1)})
    attacker = app.test_client()
    for i in range(9):  # from several addresses, so the per-IP limit does not stop them first
        assert attempt(attacker, OWNER, f"guess {i}", ip=f"203.0.113.{i}").status_code == 400
        if i < 8:  # the attacker waits out each back-off (attempts during one are not even tried)
            db.write(sa.update(User).where(User.email == OWNER).values(locked_until=None))
    waiting = db.scalar(sa.select(User.locked_until).where(User.email == OWNER))
    assert waiting.replace(tzinfo=dt.timezone.utc) - utcnow() > dt.timedelta(seconds=10)  # 16 s after 9
    # A new browser, even with the right password, waits; the owner's own browser does not.
    assert error_of(attempt(app.test_client(), OWNER, STAFF_PASSWORD, ip="198.51.100.7")) == \
        "Wrong email or password."
    assert attempt(owners_browser, OWNER, STAFF_PASSWORD, ip="198.51.100.7").status_code == 302
    assert owners_browser.get("/admin/").status_code == 200
    assert db.scalar(sa.select(User.failed_logins).where(User.email == OWNER)) == 9  # others still wait
    # A device cookie of another account, or a forged one, does not help.
    forged = app.test_client()
    forged.set_cookie("mailer_device", "eyJ1c2VyIjoxfQ.forged.signature", path="/admin/login")
    assert error_of(attempt(forged, OWNER, STAFF_PASSWORD, ip="203.0.113.99")) == "Wrong email or password."


def test_login_attempts_per_ip_wait_longer_the_longer_they_go_on(app, mailer):
    make_owner(mailer)
    client = app.test_client()
    answers = [attempt(client, f"x{i}@clinic.example", "guess", ip="192.0.2.77") for i in range(11)]
    assert [a.status_code for a in answers] == [400] * 10 + [429]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
    # Another address is not affected.
    assert attempt(client, OWNER, STAFF_PASSWORD, ip="192.0.2.78").status_code == 302
