"""Hostile request bodies and ids: JSON nested deeper than any parser follows answers 400
in the usual error shape, and an id no INTEGER column can hold answers 404, never 500."""
from __future__ import annotations

import pytest

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
