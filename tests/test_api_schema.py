"""Property-based run of the JSON API against its own OpenAPI document (schemathesis):
every operation, with valid and invalid inputs generated from the document, must answer
without a server error and as the document says.

The document is loaded from an app built at import time (it is the same for every app;
schemathesis.pytest.from_fixture, the lazy loader, does not run on pytest 9.2: it sets
the removed Node._nodeid). Each operation's requests then go to the test's own app and
database, passed as `app=` to call_and_validate."""
from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, ignored_auth, negative_data_rejection,
                                               response_headers_conformance, response_schema_conformance,
                                               status_code_conformance, unsupported_method)

from mailer import create_app
from mailer.campaigns import newsletters, sequences, webinars
from mailer.staff import users
from mailer.audience.consent import RequestContext
from mailer.db import session_scope, utcnow
from tests.audience import BODY, make_audience
from tests.conftest import settings_for

MAX_EXAMPLES = 25
# positive_data_acceptance is left out on purpose: a document cannot say which mailing
# lists exist or which templates render, so valid-looking input is sometimes refused (422).
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection, ignored_auth, unsupported_method]

_document_app = create_app(settings_for("sqlite://", Path(tempfile.gettempdir()) / "mailer-openapi-unused"))
schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", _document_app)
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True, database="none")


@pytest.fixture
def write_token(mailer):
    """A write token, one newsletter (id 1) with an audience, one published webinar (id 1)
    with a registrant and one sequence (id 1) with a step (id 1), so that generated ids
    reach real rows as well as missing ones."""
    list_id = make_audience(mailer, 2)
    with session_scope(mailer.sessions) as session:
        user = users.create_user(session, "fuzz@clinic.example", "correct horse battery staple")
        token = users.create_token(session, user, "schemathesis", "write")
        newsletters.create_newsletter(session, subject="Spine Health", body_md=BODY, lists=["newsletter"])
        webinar = webinars.save_webinar(session, slug="spine-health", title="Spine Health",
                                        starts_local=dt.datetime(2099, 3, 26, 18, 0), timezone="Europe/London",
                                        join_url="https://meet.example.com/s", now=utcnow())
        webinars.publish(session, webinar.id)
        webinars.register(session, mailer.settings, "spine-health", email="ann@example.com",
                          context=RequestContext(), now=utcnow())
        sequence = sequences.create_sequence(session, name="Welcome", trigger="manual", list_id=list_id)
        sequences.add_step(session, sequence.id, subject="Welcome", body_md=BODY)
    return token


@schema.parametrize()
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
def test_every_operation_answers_as_documented(case, app, write_token):
    # One app and database per operation; the examples of one operation share them.
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {write_token}"}, checks=CHECKS)
