"""/healthz: anonymous callers (load balancers) learn ok / not ok and nothing else; an API
token shows the checks and the queue; the SMTP check is shared by every probe of a
process for metrics.TRANSPORT_CHECK_SECONDS, against a real SMTP server."""
from __future__ import annotations

import threading

from mailer import create_app
from mailer.staff import metrics
from tests.conftest import settings_for, signup
from tests.smtp_server import SMTPServer


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_anonymous_callers_learn_only_ok(client, smtp_server):
    signup(client)  # one confirmation due in the queue: its figures are not for anonymous eyes
    answer = client.get("/healthz")
    assert answer.status_code == 200
    assert answer.json == {"status": "ok"}
    assert answer.headers["Cache-Control"] == "no-store"
    assert str(smtp_server.port) not in answer.text


def test_details_need_a_live_token(client, tokens):
    signup(client)
    for token in (tokens.read, tokens.write):
        answer = client.get("/healthz", headers=_bearer(token))
        assert answer.status_code == 200
        assert answer.json["status"] == "ok"
        assert answer.json["checks"] == {"database": "ok", "transport": "ok (smtp)"}
        assert answer.json["queue"]["due"] == 1
    for token in (tokens.revoked, "mlr_not-a-token"):
        refused = client.get("/healthz", headers=_bearer(token))
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == 'Bearer realm="mailer"'
        assert "checks" not in refused.json and "queue" not in refused.json
    # A token in the query string (allowed for the bounce webhook only) shows nothing.
    assert client.get(f"/healthz?token={tokens.read}").json == {"status": "ok"}


def test_an_unreachable_database_is_not_ok_and_says_nothing_more(tmp_path, smtp_server):
    app = create_app(settings_for("postgresql+psycopg://nobody@127.0.0.1:1/none", tmp_path,
                                  smtp_url=smtp_server.url))
    client = app.test_client()
    for headers in ({}, _bearer("mlr_any")):  # no token can be checked without the database
        answer = client.get("/healthz", headers=headers)
        assert answer.status_code == 503
        assert answer.json == {"status": "not ok"}
    app.extensions["mailer"].engine.dispose()


def test_probes_within_the_window_share_one_smtp_session(app, mailer, smtp_server):
    assert metrics.TRANSPORT_CHECK_SECONDS >= 5
    now = [1000.0]
    mailer.transport_check.clock = lambda: now[0]
    before = smtp_server.sessions

    answers = []

    def probe(times: int):
        client = app.test_client()
        for _ in range(times):
            answers.append(client.get("/healthz").status_code)

    threads = [threading.Thread(target=probe, args=(5,)) for _ in range(8)]  # 40 probes, 8 at a time
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [200] * 40
    assert smtp_server.sessions - before == 1

    now[0] += metrics.TRANSPORT_CHECK_SECONDS - 0.1
    probe(3)
    assert smtp_server.sessions - before == 1
    now[0] += 0.1  # the window is over: the next probe asks the server again, once
    probe(5)
    assert smtp_server.sessions - before == 2
    assert answers == [200] * 48


def test_a_cached_failure_is_reported_until_the_window_ends(database_url, tmp_path):
    server = SMTPServer()  # not started yet: the port refuses connections
    app = create_app(settings_for(database_url, tmp_path, smtp_url=server.url))
    mailer = app.extensions["mailer"]
    now = [0.0]
    mailer.transport_check.clock = lambda: now[0]
    client = app.test_client()
    try:
        assert client.get("/healthz").status_code == 503
        server.start()
        before = server.sessions
        assert client.get("/healthz").status_code == 503  # still within the window: not asked again
        assert server.sessions == before
        now[0] += metrics.TRANSPORT_CHECK_SECONDS
        assert client.get("/healthz").json == {"status": "ok"}
        assert server.sessions == before + 1
    finally:
        server.stop()
        mailer.engine.dispose()


def test_cached_check_runs_once_for_concurrent_callers():
    started, release, calls = threading.Event(), threading.Event(), []

    def slow_check():
        calls.append(1)
        started.set()
        release.wait(5)

    check = metrics.CachedCheck(slow_check)
    results = []
    threads = [threading.Thread(target=lambda: results.append(check())) for _ in range(10)]
    threads[0].start()
    started.wait(5)
    for thread in threads[1:]:
        thread.start()
    release.set()
    for thread in threads:
        thread.join()
    assert calls == [1] and results == [None] * 10
