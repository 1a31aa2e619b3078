"""The Deliverability page (owners): the SPF, DKIM and DMARC records to publish for the
From domain, and a check of what the DNS holds (mailer.delivery.dns_records)."""
from __future__ import annotations

from flask import Blueprint, render_template

from mailer.delivery import dkim, dns_records
from mailer.models import Role
from mailer.web import mailer
from mailer.web.admin.auth import login_required, role_required

bp = Blueprint("deliverability_admin", __name__, url_prefix="/admin")


def _page(findings=None, error: str = "", status: int = 200):
    settings = mailer().settings
    try:
        records = dns_records.records_to_publish(settings)
    except dkim.DkimError as exc:  # a selector without a readable key: say so instead of failing
        return render_template("admin/deliverability.html", records=[], findings=None, error=str(exc),
                               domain=settings.from_domain), 200
    return render_template("admin/deliverability.html", records=records, findings=findings, error=error,
                           domain=settings.from_domain), status


@bp.get("/deliverability")
@login_required
@role_required(Role.OWNER)
def index():
    return _page()


@bp.post("/deliverability/check")
@login_required
@role_required(Role.OWNER)
def check():
    try:
        findings = dns_records.check(mailer().settings)
    except dkim.DkimError as exc:
        return _page(error=str(exc))
    return _page(findings)
