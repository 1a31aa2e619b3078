"""Rate limits per client IP that every process shares: in the database by default, in
Redis with MAILER_REDIS_URL; 429 with Retry-After and the usual error bodies."""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import random
import re
import time
import uuid

import pytest
import sqlalchemy as sa

from mailer import create_app
from mailer.models import RateLimitCounter
from mailer.web.ratelimit import DatabaseStorage, Limit, Limiter, redis_storage
from tests.conftest import STAFF_PASSWORD, settings_for
from tests.production import REDIS_URL, gunicorn, redis_client, request, stop

SIGNUP = {"consent": "yes", "consent_version": "1", "lists": "newsletter"}


class Clock:
    """Starts at the real time (limits reports the window's end against time.time())."""

    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


def test_database_counter_allows_the_limit_then_tells_how_long_to_wait(mailer):
    clock = Clock()
    limiter = Limiter(DatabaseStorage(mailer.engine, clock=clock))
    limit = Limit("signup", 3, 60)
    assert [limiter.hit(limit, "203.0.113.1") for _ in range(3)] == [None, None, None]
    wait = limiter.hit(limit, "203.0.113.1")
    assert wait is not None and 1 <= wait <= 60
    assert limiter.hit(limit, "203.0.113.2") is None  # another client has its own count
    assert limiter.hit(Limit("login", 3, 60), "203.0.113.1") is None  # and another limit too
    clock.now += 61  # the window has ended: the next request starts a new one
    assert limiter.hit(limit, "203.0.113.1") is None
    with mailer.read_sessions() as session:
        assert session.scalar(sa.select(RateLimitCounter.hits).where(
            RateLimitCounter.key.like("signup/203.0.113.1/%"))) == 1


def test_redis_counter_allows_the_limit_then_tells_how_long_to_wait():
    client = redis_client()
    prefix = f"mailer-test-{uuid.uuid4().hex}"
    limiter = Limiter(redis_storage(REDIS_URL, key_prefix=prefix))
    try:
        limit = Limit("signup", 3, 60)
        assert [limiter.hit(limit, "203.0.113.1") for _ in range(3)] == [None, None, None]
        wait = limiter.hit(limit, "203.0.113.1")
        assert wait is not None and 1 <= wait <= 60
        assert limiter.hit(limit, "203.0.113.2") is None
        assert client.ttl(f"{prefix}:signup/203.0.113.1/3/60/second") in range(55, 61)
    finally:
        keys = client.keys(f"{prefix}:*")
        if keys:
            client.delete(*keys)


def test_an_unreachable_redis_lets_requests_through():
    """The limit protects the forms; it must not take them down with Redis."""
    limiter = Limiter(redis_storage("redis://127.0.0.1:1/0"))
    assert limiter.hit(Limit("signup", 1, 60), "203.0.113.1") is None


def _limited_app(database_url, smtp_server, tmp_path, **extra):
    settings = settings_for(database_url, tmp_path, smtp_url=smtp_server.url)
    settings.update(extra)
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


def test_signup_answers_429_with_retry_after_in_html_and_json(database_url, smtp_server, tmp_path):
    app = _limited_app(database_url, smtp_server, tmp_path, signup_rate_limit=2)
    client = app.test_client()
    for i in range(2):
        assert client.post("/subscribe", data={**SIGNUP, "email": f"a{i}@example.com"}).status_code == 200
    page = client.post("/subscribe", data={**SIGNUP, "email": "late@example.com"})
    assert page.status_code == 429 and 1 <= int(page.headers["Retry-After"]) <= 60
    assert "Too many signups from your network" in page.text and "late@example.com" in page.text  # input kept
    answer = client.post("/subscribe", json={**SIGNUP, "lists": ["newsletter"], "consent": True,
                                             "email": "late@example.com"})
    assert answer.status_code == 429 and 1 <= int(answer.headers["Retry-After"]) <= 60
    assert answer.json["error"]["field"] == "rate" and "Too many signups" in answer.json["error"]["message"]
    # Another client address has its own count.
    other = client.post("/subscribe", data={**SIGNUP, "email": "b@example.com"},
                        environ_base={"REMOTE_ADDR": "192.0.2.44"})
    assert other.status_code == 200
    app.extensions["mailer"].engine.dispose()


def _publish_webinar(app) -> None:
    """A published webinar at /webinars/spine-health, in 2031."""
    from mailer.campaigns import webinars
    from mailer.db import session_scope, utcnow

    with session_scope(app.extensions["mailer"].sessions) as session:
        webinar = webinars.save_webinar(
            session, slug="spine-health", title="Spine Health", starts_local=dt.datetime(2031, 3, 25, 18, 0),
            timezone="Europe/London", duration_minutes=45, capacity=None, description_md="Desk exercises.",
            join_url="https://meet.example.com/x", replay_url="", reminder_offsets="1440,60", now=utcnow())
        webinars.publish(session, webinar.id)


def test_webinar_registration_and_login_are_limited(database_url, smtp_server, tmp_path):
    from mailer.staff import users
    from mailer.db import session_scope

    app = _limited_app(database_url, smtp_server, tmp_path, signup_rate_limit=1)
    client = app.test_client()
    _publish_webinar(app)
    answers = [client.post("/webinars/spine-health/register", data={"email": "a@example.com", "name": "Ann"})
               for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 429]
    assert 1 <= int(answers[1].headers["Retry-After"]) <= 60
    assert "Too many requests from your network" in answers[1].text
    with session_scope(app.extensions["mailer"].sessions) as session:
        users.create_user(session, "owner@clinic.example", STAFF_PASSWORD, "owner")
    app.config["WTF_CSRF_ENABLED"] = False
    answers = [client.post("/admin/login", data={"email": "owner@clinic.example", "password": "wrong"},
                           environ_base={"REMOTE_ADDR": "192.0.2.9"}) for _ in range(11)]
    assert answers[-1].status_code == 429 and int(answers[-1].headers["Retry-After"]) <= 60
    assert "Too many login attempts from your network" in answers[-1].text
    # The limit is per address: the owner, elsewhere, still gets in.
    ok = client.post("/admin/login", data={"email": "owner@clinic.example", "password": STAFF_PASSWORD},
                     environ_base={"REMOTE_ADDR": "192.0.2.10"})
    assert ok.status_code in (302, 400)  # 400 only if the per-account back-off (users.authenticate) holds it
    app.extensions["mailer"].engine.dispose()


def test_webinar_requests_that_keep_nothing_count_too(database_url, smtp_server, tmp_path):
    """The count and the registration share one transaction (webinar_pages.register): a
    refused address, a bot's honeypot and an unknown webinar count all the same."""
    from mailer.db import session_scope
    from mailer.models import RegistrationRequest

    app = _limited_app(database_url, smtp_server, tmp_path, signup_rate_limit=3)
    client = app.test_client()
    _publish_webinar(app)
    answers = [client.post("/webinars/spine-health/register", data={"email": "not an address", "name": "Ann"}),
               client.post("/webinars/spine-health/register", data={"email": "bot@example.com", "website": "x"}),
               client.post("/webinars/no-such-webinar/register", data={"email": "a@example.com"}),
               client.post("/webinars/spine-health/register", data={"email": "a@example.com", "name": "Ann"})]
    assert [a.status_code for a in answers] == [400, 200, 404, 429]
    with session_scope(app.extensions["mailer"].sessions) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(RegistrationRequest)) == 0
    app.extensions["mailer"].engine.dispose()


@pytest.mark.parametrize("storage", ["database", "redis"])
def test_the_limit_holds_across_gunicorn_workers(storage, database_url, smtp_server, tmp_path):
    """gunicorn -w 2: 4 signups a minute from one address means 4 in all, not 4 per worker."""
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": "x" * 40, "MAILER_SMTP_URL": smtp_server.url,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance"), "MAILER_SIGNUP_RATE_LIMIT": "4",
           "MAILER_REDIS_URL": ""}
    if storage == "redis":
        redis_client()
        env["MAILER_REDIS_URL"] = REDIS_URL
    # A random loopback address: runs sharing the Redis never share a count.
    source = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    access = tmp_path / "access.log"
    # Each worker is replaced after 3 requests (--max-requests; --preload makes that cheap), so the
    # 10 requests meet several processes: a count kept in process memory would let them all through.
    process, port = gunicorn(env, tmp_path / "gunicorn.log", workers=2,
                             extra=["--preload", "--max-requests", "3", "--access-logfile", str(access),
                                    "--access-logformat", "%(p)s %(s)s"])
    try:
        def post(i):
            return request(f"http://127.0.0.1:{port}/subscribe", source=source, method="POST",
                           form={**SIGNUP, "email": f"p{i}@example.com"})[0]

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(post, range(10)))
    finally:
        stop(process)
    assert sorted(codes) == [200] * 4 + [429] * 6
    # With --preload the workers are forked from a process that already used the database:
    # each must open its own connections (a shared socket fails open or answers 500).
    log = (tmp_path / "gunicorn.log").read_text()
    assert "Traceback" not in log and "not checked" not in log, log
    served_by = {line.split()[0] for line in access.read_text().splitlines() if re.match(r"<\d+> ", line)}
    assert len(served_by) >= 3, f"the signups were answered by {len(served_by)} processes"
