"""Hostile request bodies and ids: JSON nested deeper than any parser follows answers 400
in the usual error shape, and an id no INTEGER column can hold answers 404, never 500."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from mailer import create_app
from tests.conftest import settings_for

DEEP_ARRAY = "[" * 100_000
DEEP_OBJECT = '{"a":' * 100_000
HUGE = "99999999999999999999999"  # beyond 64 bits: SQLite's driver overflows on it
JUST_OVER = str(2**31)  # beyond PostgreSQL's INTEGER


def assert_error_shape(answer, status: int):
    assert answer.status_code == status, answer.text[:300]
    error = answer.get_json()["error"]
    assert error["code"] and error["message"]
    return error


@pytest.mark.parametrize("body", [DEEP_ARRAY, DEEP_OBJECT], ids=["array", "object"])
def test_deeply_nested_json_answers_400_everywhere_json_is_read(client, tokens, body):
    auth = {"Authorization": f"Bearer {tokens.write}"}
    error = assert_error_shape(client.post("/api/v1/newsletters", data=body, content_type="application/json",
                                           headers=auth), 400)
    assert error["code"] == "malformed_json"
    error = assert_error_shape(client.post("/webhooks/bounces", data=body, content_type="application/json",
                                           headers=auth), 400)
    assert error["field"] == "body"
    # The public forms also take JSON (the embeddable widget posts it).
    error = assert_error_shape(client.post("/subscribe", data=body, content_type="application/json"), 400)
    assert error == {"code": "invalid", "field": "body", "message": "Send a JSON object."}
    error = assert_error_shape(client.post("/webinars/spine-health/register", data=body,
                                           content_type="application/json"), 400)
    assert error["field"] == "body"


def test_json_of_ordinary_depth_still_reaches_the_form(client):
    answer = client.post("/subscribe", json={"email": "ada@example.com", "consent": True, "consent_version": 1,
                                             "lists": ["newsletter"], "name": [[[["not a string"]]]]})
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "pending_confirmation"


def test_a_form_with_a_deeply_nested_key_is_an_ordinary_form(client):
    """Form parsing is flat: `a[b][c]…` is one long, unknown field name, ignored."""
    nested = "a" + "[b]" * 50_000
    answer = client.post("/subscribe", data={"email": "ada@example.com", "name": "Ada", "consent": "yes",
                                             "consent_version": "1", "lists": "newsletter", nested: "1"})
    assert answer.status_code == 200
    assert "Check your inbox" in answer.text
    answer = client.post("/subscribe", data={nested: "1"})
    assert answer.status_code == 400
    assert "Please enter your email address." in answer.text


@pytest.mark.parametrize("number", [HUGE, JUST_OVER])
def test_admin_ids_beyond_the_column_answer_404(staff, number):
    client, csrf = staff("owner")
    for path in (f"/admin/newsletters/{number}", f"/admin/newsletters/{number}/edit",
                 f"/admin/contacts/{number}", f"/admin/webinars/{number}", f"/admin/imports/{number}"):
        answer = client.get(path)
        assert answer.status_code == 404, path
    for path in (f"/admin/newsletters/{number}/cancel", f"/admin/webinars/{number}/publish",
                 f"/admin/users/{number}/disable"):
        assert client.post(path, data={"csrf_token": csrf}).status_code == 404, path
    # The largest id a row can have is an ordinary unknown id.
    assert client.get("/admin/newsletters/2147483647").status_code == 404


@pytest.mark.parametrize("number", [HUGE, JUST_OVER])
def test_api_ids_beyond_the_column_answer_404_for_every_method(client, tokens, number):
    auth = {"Authorization": f"Bearer {tokens.write}"}
    for method, path, body in (("GET", f"/api/v1/newsletters/{number}", None),
                               ("PATCH", f"/api/v1/newsletters/{number}", {"subject": "x"}),
                               ("GET", f"/api/v1/contacts/{number}", None),
                               ("DELETE", f"/api/v1/contacts/{number}", None),
                               ("GET", f"/api/v1/webinars/{number}", None),
                               ("POST", f"/api/v1/webinars/{number}/registrations", {"email": "a@example.com"}),
                               ("GET", f"/api/v1/deliveries/{number}", None),
                               ("DELETE", f"/api/v1/registrations/{number}", None)):
        answer = client.open(path, method=method, json=body, headers=auth)
        error = assert_error_shape(answer, 404)
        assert error["code"] == "not_found", (method, path)


def test_public_ids_beyond_the_column_answer_404(database_url, smtp_server, tmp_path, client):
    tracked = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url, track_opens=True,
                                      track_clicks=True))
    tracked.config["TESTING"] = True
    web = tracked.test_client()
    try:
        for number in (HUGE, JUST_OVER):
            assert client.get(f"/archive/{number}").status_code == 404
            assert client.get(f"/archive/{number}/email.html").status_code == 404
            assert web.get(f"/t/o/{number}.gif").status_code == 404
            assert web.get(f"/t/c/{number}/0000000000000000").status_code == 404
    finally:
        tracked.extensions["mailer"].engine.dispose()


FORM_BODIES = [
    "email=ann%40example.com&name=Ann+Smith&consent=yes&lists=newsletter&lists=clinic",
    "name=&consent=&=orphan&lonely&a=1;b=2",
    "name=J%C3%B6rg&bad=%FF%FE&half=%E2%82&plus=a+b%2Bc&pct=100%25",
    "name=" + "é" * 10 + "&raw=\u00e9",
    "",
    b"email=a%40b.example&name=\xff\xfe&consent=yes",  # not UTF-8: an empty form, then "enter your address"
]


@pytest.mark.parametrize("body", FORM_BODIES, ids=["fields", "blanks", "escapes", "unicode", "empty", "not-utf8"])
def test_a_short_urlencoded_form_is_read_as_werkzeug_reads_it(app, body):
    """mailer.web.Request parses short urlencoded bodies itself: the same fields, values and
    order as werkzeug's own form parser, whatever the escapes."""
    import io

    import flask

    from mailer import web

    raw = body if isinstance(body, bytes) else body.encode()
    with app.test_request_context("/subscribe", method="POST", data=raw,
                                  content_type="application/x-www-form-urlencoded") as ctx:
        ours = ctx.request.form
        assert isinstance(ctx.request, web.Request)
        theirs = flask.Request(dict(ctx.request.environ, **{"wsgi.input": io.BytesIO(raw)})).form
    assert list(ours.items(multi=True)) == list(theirs.items(multi=True))


def test_a_form_not_in_utf8_over_the_size_limit_or_cut_short_is_refused(app, client):
    from werkzeug.exceptions import ClientDisconnected

    undecodable = client.post("/subscribe", data=b"email=a%40b.example&name=\xff&consent=yes",
                              content_type="application/x-www-form-urlencoded")
    assert undecodable.status_code == 400 and "Please enter your email address" in undecodable.text
    app.config["MAX_CONTENT_LENGTH"] = 1000
    answer = client.post("/subscribe", data={"email": "ann@example.com", "name": "x" * 2000, "consent": "yes"})
    assert answer.status_code == 413
    with app.test_request_context("/subscribe", method="POST", data=b"email=ann%40example.com",
                                  content_type="application/x-www-form-urlencoded",
                                  environ_overrides={"CONTENT_LENGTH": "500"}) as ctx:
        with pytest.raises(ClientDisconnected):
            ctx.request.form


def test_a_multipart_signup_still_takes_werkzeugs_parser(client, db):
    """A form posted as multipart/form-data (FormData from a script) is not read here."""
    from mailer.models import SignupRequest

    answer = client.post("/subscribe", content_type="multipart/form-data", data={
        "email": "multi@example.com", "name": "Multi", "consent": "yes", "consent_version": "1",
        "lists": "newsletter"})
    assert answer.status_code == 200 and "Check your inbox" in answer.text
    assert db.scalars(sa.select(SignupRequest.email)) == ["multi@example.com"]
