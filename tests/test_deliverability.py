"""The Deliverability page and its DNS check, against a real DNS server on 127.0.0.1
(tests/dns_server.py) serving good, bad and missing SPF, DKIM and DMARC records."""
from __future__ import annotations

import dataclasses

import pytest

from mailer import create_app
from mailer.delivery import dkim, dns_records
from mailer.settings import load_settings
from tests.conftest import settings_for
from tests.dns_server import DNSServer
from tests.smtp_server import free_port

SELECTOR = "mail2026"


def settings_with_key(tmp_path, domain: str, **extra):
    """Settings for news@<domain> that sign with a key made for it in the instance folder."""
    settings = load_settings({**settings_for(f"sqlite:///{tmp_path / 'x.db'}", tmp_path, dkim_selector=SELECTOR, **extra),
                              "from_addr": f"Clinic <news@{domain}>"})
    dkim.generate_key(dkim.key_path(settings))
    return settings


def good_records(settings) -> dict[str, list[str]]:
    domain = settings.from_domain
    return {domain: ["v=spf1 ip4:192.0.2.10 include:_spf.relay.example ~all", "google-site-verification=abc"],
            f"{SELECTOR}._domainkey.{domain}": [dkim.txt_record(dkim.signer_for(settings).private_pem)],
            f"_dmarc.{domain}": ["v=DMARC1; p=quarantine; rua=mailto:dmarc@" + domain]}


def by_kind(findings):
    return {f.record.kind: f for f in findings}


def test_good_records_pass(tmp_path):
    settings = settings_with_key(tmp_path, "good.example")
    with DNSServer(good_records(settings)) as dns:
        findings = by_kind(dns_records.check(dataclasses.replace(settings, dns_resolver=dns.address)))
    assert {kind: f.status for kind, f in findings.items()} == {"SPF": "ok", "DKIM": "ok", "DMARC": "ok"}
    assert all(not f.problems for f in findings.values())
    assert findings["DKIM"].record.name == f"{SELECTOR}._domainkey.good.example"


@pytest.mark.parametrize("records, expected", [
    ({}, {"SPF": ("missing", "No SPF record"), "DKIM": ("missing", "No DKIM key"), "DMARC": ("missing", "No DMARC")}),
    ({"@": ["v=spf1 mx ~all", "v=spf1 ip4:192.0.2.1 -all"], "dkim": ["v=DKIM1; k=rsa; p="],
      "dmarc": ["v=DMARC1; p=maybe"]},
     {"SPF": ("wrong", "several SPF records"), "DKIM": ("wrong", "revoked"), "DMARC": ("wrong", "must be none")}),
    ({"@": ["v=spf1 +all"], "dkim": ["v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwrong"],
      "dmarc": ["v=DMARC1; p=none", "v=DMARC1; p=reject"]},
     {"SPF": ("wrong", "+all"), "DKIM": ("wrong", "not the one mailer signs with"),
      "DMARC": ("wrong", "several DMARC records")}),
    ({"@": ["v=spf1 mx"], "dmarc": ["v=DMARC1; p=none"]},
     {"SPF": ("wrong", "does not end with ~all"), "DKIM": ("missing", "No DKIM key"),
      "DMARC": ("ok", "No rua= address")}),
])
def test_bad_and_missing_records_are_named(tmp_path, records, expected):
    settings = settings_with_key(tmp_path, "bad.example")
    names = {"@": "bad.example", "dkim": f"{SELECTOR}._domainkey.bad.example", "dmarc": "_dmarc.bad.example"}
    with DNSServer({names[k]: v for k, v in records.items()}) as dns:
        findings = by_kind(dns_records.check(dataclasses.replace(settings, dns_resolver=dns.address)))
    for kind, (status, words) in expected.items():
        assert findings[kind].status == status, (kind, findings[kind])
        assert any(words in problem for problem in findings[kind].problems), (kind, findings[kind].problems)


def test_a_dns_server_that_does_not_answer_is_said_so(tmp_path, monkeypatch):
    settings = settings_with_key(tmp_path, "good.example", dns_resolver=f"127.0.0.1:{free_port()}")
    monkeypatch.setattr(dns_records, "LOOKUP_SECONDS", 0.5)
    findings = by_kind(dns_records.check(settings))
    assert {f.status for f in findings.values()} == {"could not check"}


def test_without_signing_here_dkim_is_explained_not_checked(tmp_path):
    settings = load_settings(settings_for(f"sqlite:///{tmp_path / 'x.db'}", tmp_path))
    with DNSServer({}) as dns:
        findings = by_kind(dns_records.check(dataclasses.replace(settings, dns_resolver=dns.address)))
    assert findings["DKIM"].status == "not used"
    assert "does not sign" in findings["DKIM"].record.note


@pytest.fixture
def app(database_url, smtp_server, tmp_path):
    """The app (conftest's `staff` logs in to it), signing for clinic.example, asking a DNS
    server that holds good records."""
    settings = settings_with_key(tmp_path, "clinic.example")
    with DNSServer(good_records(settings)) as dns:
        app = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url, dkim_selector=SELECTOR,
                                      dns_resolver=dns.address))
        app.config["TESTING"] = True
        yield app
        app.extensions["mailer"].engine.dispose()


def test_owners_see_the_records_and_check_them(app, staff):
    client, token = staff("owner")
    page = client.get("/admin/deliverability")
    assert page.status_code == 200
    assert "v=spf1 mx ~all" in page.text and f"{SELECTOR}._domainkey.clinic.example" in page.text
    assert "v=DMARC1; p=none; rua=mailto:dmarc-reports@clinic.example" in page.text
    checked = client.post("/admin/deliverability/check", data={"csrf_token": token})
    assert checked.status_code == 200
    assert checked.text.count('class="dns-status dns-ok">ok<') == 3
    assert "Published and correct." in checked.text
    assert client.post("/admin/deliverability/check").status_code == 400  # no CSRF token


def test_editors_and_viewers_may_not_see_the_page(app, staff):
    for role in ("editor", "viewer"):
        client, token = staff(role)
        assert client.get("/admin/deliverability").status_code == 403
        assert client.post("/admin/deliverability/check", data={"csrf_token": token}).status_code == 403
    anonymous = app.test_client()
    assert anonymous.get("/admin/deliverability").status_code in (302, 303)


def test_spf_is_asked_of_the_bounce_domain_when_verp_is_on(tmp_path):
    settings = load_settings({**settings_for(f"sqlite:///{tmp_path / 'x.db'}", tmp_path),
                              "bounce_address": "bounce@bounces.clinic.example"})
    spf = next(r for r in dns_records.records_to_publish(settings) if r.kind == "SPF")
    assert spf.name == "bounces.clinic.example"
