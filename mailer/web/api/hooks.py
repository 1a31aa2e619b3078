"""Endpoints for other machines, behind API tokens: the bounce and complaint webhook,
the Prometheus metrics and the details of /healthz (whose bare ok / not ok needs no
token). The views authenticate, call mailer.delivery.bounces or mailer.staff.metrics, and answer."""
from __future__ import annotations

import dataclasses
import logging

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import HTTPException

from mailer.staff import metrics, users
from mailer.delivery.bounces import SUBSCRIBE_URL_MAX, SnsControl, apply_notices, parse_webhook_body
from mailer.db import utcnow
from mailer.errors import InvalidInput
from mailer.logtext import loggable
from mailer.web import db_reader, db_session, error_json, mailer, presented_token

log = logging.getLogger(__name__)

bp = Blueprint("hooks", __name__)

WEBHOOK_SCOPES = frozenset({"write", "webhook"})
# A token in a URL ends up in proxy and access logs: only the scope that opens nothing
# but this webhook may travel there.
QUERY_TOKEN_SCOPE = "webhook"
ANY_SCOPE = frozenset({"read", "write"})
HEALTHY = {True: ("ok", 200), False: ("not ok", 503)}  # what /healthz says, and its status code


# Authentication ----------------------------------------------------------------------

def _authorise(scopes: frozenset[str], now) -> None:
    with db_session() as session:
        users.use_token(session, presented_token(allow_query=False), scopes, now=now)


def _authorise_webhook(now) -> None:
    """A webhook or write token in the Authorization header, or a webhook token in ?token=
    (SNS cannot send headers). A refused token's use is not recorded."""
    header_token = presented_token(allow_query=False)
    with db_session() as session:
        token = users.use_token(session, header_token or presented_token(allow_query=True), WEBHOOK_SCOPES, now=now)
        if header_token is None and token.scope != QUERY_TOKEN_SCOPE:
            raise users.AuthError(403, "forbidden", f"Only a {QUERY_TOKEN_SCOPE}-scope token may be sent as ?token= "
                                  "(URLs end up in logs). Send this token in the Authorization header, or "
                                  f"create a token with scope {QUERY_TOKEN_SCOPE} for the URL.")


def _error(status: int, code: str, message: str, field: str | None = None):
    response, status = error_json(code, message, field, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mailer"'
    return response, status


@bp.errorhandler(users.AuthError)
def _auth_error(exc: users.AuthError):
    return _error(exc.status, exc.code, exc.message, "token")


@bp.errorhandler(InvalidInput)
def _invalid(exc: InvalidInput):
    return _error(400, exc.code, exc.message, exc.field)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException):  # e.g. 413 for a body over MAX_CONTENT_LENGTH
    return _error(exc.code or 500, exc.name.lower().replace(" ", "_"), exc.description or exc.name)


# Views --------------------------------------------------------------------------------

@bp.post("/webhooks/bounces")
def bounces():
    """Bounce and complaint notifications. ?token= (webhook scope only) is accepted because SNS cannot send headers."""
    now = utcnow()
    _authorise_webhook(now)
    parsed = parse_webhook_body(request.get_data(cache=False))
    if isinstance(parsed, SnsControl):
        return _sns_control_answer(parsed)
    with db_session() as session:
        counts = apply_notices(session, mailer().settings, parsed, now=now)
    log.info("bounce webhook: %s suppressed, %s unsubscribed, %s ignored",
             counts.suppressed, counts.unsubscribed, counts.ignored)
    return jsonify(dataclasses.asdict(counts))


def _sns_control_answer(control: SnsControl):
    if control.type == "SubscriptionConfirmation":
        # This machine may not reach AWS, so a person confirms the subscription by hand.
        message = ("Amazon SNS asks to confirm the subscription to this webhook. Open the SubscribeURL "
                   "once in a browser to confirm it; notifications arrive after that.")
        log.warning("SNS subscription to %s awaits confirmation: open this URL once: %s",
                    loggable(control.topic_arn), loggable(control.subscribe_url, limit=SUBSCRIBE_URL_MAX))
        return jsonify(status="confirmation_required", message=message, topic_arn=control.topic_arn,
                       subscribe_url=control.subscribe_url)
    log.warning("SNS says this webhook was unsubscribed from %s", loggable(control.topic_arn))
    return jsonify(status="unsubscribed", message="Amazon SNS unsubscribed this webhook from the topic.",
                   topic_arn=control.topic_arn)


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus text exposition; any API token (read or write) may scrape."""
    now = utcnow()
    _authorise(ANY_SCOPE, now)
    with db_reader() as session:
        body = metrics.render(metrics.collect(session, now))
    return body, 200, {"Content-Type": metrics.CONTENT_TYPE, "Cache-Control": "no-store"}


@bp.get("/healthz")
def healthz():
    """Anyone (a load balancer) learns ok (200) or not ok (503), nothing more; with an
    API token of any scope, also what each check found and the due queue."""
    now = utcnow()
    token = presented_token(allow_query=False)
    health = metrics.check_health(mailer(), now, with_queue=token is not None)
    status, code = HEALTHY[health.healthy]
    headers = {"Cache-Control": "no-store"}
    if token is None or not health.database_ok:  # without the database no token can be checked
        return jsonify(status=status), code, headers
    _authorise(ANY_SCOPE, now)
    return jsonify(status=status, checks=health.checks, queue=health.queue), code, headers
