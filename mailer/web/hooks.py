"""Endpoints for other machines, behind API tokens: the bounce and complaint webhook
and the Prometheus metrics. The views authenticate, call mailer.bounces or
mailer.metrics, and answer."""
from __future__ import annotations

import dataclasses
import logging

from flask import Blueprint, jsonify, request
from werkzeug.exceptions import HTTPException

from mailer import metrics, users
from mailer.bounces import SnsControl, apply_notices, parse_webhook_body
from mailer.db import utcnow
from mailer.errors import InvalidInput
from mailer.web import db_reader, db_session, error_json, mailer, presented_token

log = logging.getLogger(__name__)

bp = Blueprint("hooks", __name__)

WEBHOOK_SCOPES = frozenset({"write", "webhook"})
ANY_SCOPE = frozenset({"read", "write"})


# Authentication ----------------------------------------------------------------------

def _authorise(scopes: frozenset[str], now, *, allow_query: bool = False) -> None:
    with db_session() as session:
        users.use_token(session, presented_token(allow_query=allow_query), scopes, now=now)


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
    """Bounce and complaint notifications. ?token= is accepted because SNS cannot send headers."""
    now = utcnow()
    _authorise(WEBHOOK_SCOPES, now, allow_query=True)
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
                    control.topic_arn, control.subscribe_url)
        return jsonify(status="confirmation_required", message=message, topic_arn=control.topic_arn,
                       subscribe_url=control.subscribe_url)
    log.warning("SNS says this webhook was unsubscribed from %s", control.topic_arn)
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
