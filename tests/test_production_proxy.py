"""Behind a reverse proxy: real nginx (deploy/nginx.conf, as shipped) or Caddy (deploy/Caddyfile)
in front of real gunicorn with two workers. Visitors connect from their own loopback
addresses; the consent ledger and the rate limits see the visitor, never the proxy."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import sqlalchemy as sa

from mailer import build
from mailer.models import ConsentEvent, Contact
from mailer.settings import load_settings
from tests.conftest import SECRET
from tests.production import ROOT, free_port, gunicorn, nginx, request, require, self_signed_certificate, stop, \
    wait_for_port

HOST = "news.example.org"
SIGNUP = {"consent": "yes", "consent_version": "1", "lists": "newsletter", "name": "Reader"}


def _env(database_url, smtp_server, tmp_path, **extra) -> dict[str, str]:
    env = {"MAILER_DATABASE_URL": database_url, "MAILER_SECRET_KEY": SECRET,
           "MAILER_INSTANCE_PATH": str(tmp_path / "instance"), "MAILER_SMTP_URL": smtp_server.url,
           "MAILER_BASE_URL": f"https://{HOST}", "MAILER_REDIS_URL": ""}
    env.update({f"MAILER_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def _ledger(database_url, tmp_path) -> dict[str, tuple[str, str]]:
    """Run the worker's signup step, then read the ledger: address -> (ip, source URL)."""
    mailer = build(load_settings({"database_url": database_url, "secret_key": SECRET,
                                  "instance_path": str(tmp_path / "instance")}))
    try:
        mailer.process_signups()
        with mailer.read_sessions() as session:
            rows = session.execute(sa.select(Contact.email, ConsentEvent.ip, ConsentEvent.source_url)
                                   .join(ConsentEvent, ConsentEvent.contact_id == Contact.id)).all()
    finally:
        mailer.engine.dispose()
    return {email: (ip, source) for email, ip, source in rows}


def _shipped_site(path: str, replacements: list[tuple[str, str]]) -> str:
    """The deploy file as shipped, with only addresses, ports and certificate paths changed."""
    text = (ROOT / path).read_text()
    for old, new in replacements:
        assert text.count(old) == 1, f"{path} no longer contains {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture
def app_server(database_url, smtp_server, tmp_path):
    """gunicorn -w 2 behind one proxy (MAILER_PROXY_COUNT=1), at most 3 signups a minute per visitor."""
    process, port = gunicorn(_env(database_url, smtp_server, tmp_path, proxy_count=1, signup_rate_limit=3),
                             tmp_path / "gunicorn.log")
    yield port
    stop(process)


def _check_visitors_behind_proxy(base: str, database_url, tmp_path) -> None:
    # A visitor who forges X-Forwarded-For gets recorded with the address they connect from.
    status, _, page = request(f"{base}/subscribe", source="127.0.0.2", method="POST", host=HOST,
                              form={**SIGNUP, "email": "ann@example.com"},
                              headers={"X-Forwarded-For": "203.0.113.9"})
    assert status == 200, page
    assert "Almost done" in page
    status, _, _ = request(f"{base}/subscribe", source="127.0.0.3", method="POST", host=HOST,
                           form={**SIGNUP, "email": "bob@example.com"})
    assert status == 200

    # https at the proxy: the session cookie is Secure, and the ledger's page address is https.
    status, headers, _ = request(f"{base}/admin/login", source="127.0.0.2", host=HOST)
    assert status == 200
    session_cookie = [c for c in headers["set-cookie-all"] if c.startswith("session=")]
    assert session_cookie and "Secure" in session_cookie[0]

    # The limit is per visitor: 127.0.0.2 spends its 3 signups a minute, 127.0.0.3 is unaffected.
    codes = [request(f"{base}/subscribe", source="127.0.0.2", method="POST", host=HOST,
                     form={**SIGNUP, "email": f"ann{i}@example.com"})[0] for i in range(2)]
    assert codes == [200, 200]
    status, headers, page = request(f"{base}/subscribe", source="127.0.0.2", method="POST", host=HOST,
                                    form={**SIGNUP, "email": "ann9@example.com"})
    assert status == 429 and "Too many signups" in page
    assert 1 <= int(headers["retry-after"]) <= 60
    status, _, _ = request(f"{base}/subscribe", source="127.0.0.3", method="POST", host=HOST,
                           form={**SIGNUP, "email": "bob2@example.com"})
    assert status == 200

    ledger = _ledger(database_url, tmp_path)
    assert ledger["ann@example.com"] == ("127.0.0.2", f"https://{HOST}/subscribe")
    assert ledger["bob@example.com"] == ("127.0.0.3", f"https://{HOST}/subscribe")
    assert "ann9@example.com" not in ledger


def test_nginx_in_front_of_gunicorn_records_each_visitor(app_server, database_url, tmp_path):
    cert, key = self_signed_certificate(tmp_path, HOST)
    https_port, http_port = free_port(), free_port()
    site = _shipped_site("deploy/nginx.conf", [
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{app_server};"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen [::]:80;", ""),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
        ("listen [::]:443 ssl http2;", ""),
        (f"/etc/letsencrypt/live/{HOST}/fullchain.pem", str(cert)),
        (f"/etc/letsencrypt/live/{HOST}/privkey.pem", str(key)),
    ])
    proxy = nginx(site, tmp_path / "nginx")
    try:
        wait_for_port(https_port, proxy, tmp_path / "nginx" / "stderr.log")
        # Plain http is sent to https.
        status, headers, _ = request(f"http://127.0.0.1:{http_port}/subscribe", source="127.0.0.2", host=HOST)
        assert status == 301 and headers["location"] == f"https://{HOST}/subscribe"
        _check_visitors_behind_proxy(f"https://127.0.0.1:{https_port}", database_url, tmp_path)
    finally:
        stop(proxy)


def test_caddy_in_front_of_gunicorn_records_each_visitor(app_server, database_url, tmp_path):
    caddy = shutil.which("caddy")
    require(caddy is not None, "caddy (Debian package caddy)")
    https_port, http_port = free_port(), free_port()
    site = _shipped_site("deploy/Caddyfile", [
        ("reverse_proxy 127.0.0.1:8000", f"reverse_proxy 127.0.0.1:{app_server}"),
        (f"{HOST} {{", f"{HOST}:{https_port} {{\n    tls internal"),
    ])
    # Our own Caddy: no admin endpoint, state under tmp_path, no system trust store.
    config = tmp_path / "Caddyfile"
    config.write_text(f"{{\n    admin off\n    skip_install_trust\n    default_sni {HOST}\n    http_port {http_port}\n"
                      f"    https_port {https_port}\n    storage file_system {tmp_path / 'caddy'}\n}}\n\n{site}")
    log = tmp_path / "caddy.log"
    with log.open("wb") as out:
        proxy = subprocess.Popen([caddy, "run", "--config", str(config), "--adapter", "caddyfile"],
                                 env={**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data"),
                                      "XDG_CONFIG_HOME": str(tmp_path / "config")},
                                 stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(https_port, proxy, log)
        _check_visitors_behind_proxy(f"https://127.0.0.1:{https_port}", database_url, tmp_path)
    finally:
        stop(proxy)


def test_without_proxies_forwarded_headers_are_ignored(database_url, smtp_server, tmp_path):
    """MAILER_PROXY_COUNT=0 (the default): whoever connects is the client, whatever they claim."""
    process, port = gunicorn(_env(database_url, smtp_server, tmp_path, base_url="http://127.0.0.1"),
                             tmp_path / "gunicorn.log")
    try:
        forged = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
        status, _, _ = request(f"http://127.0.0.1:{port}/subscribe", source="127.0.0.2", method="POST",
                               form={**SIGNUP, "email": "cy@example.com"}, headers=forged)
        assert status == 200
        status, headers, _ = request(f"http://127.0.0.1:{port}/admin/login", source="127.0.0.2", headers=forged)
        assert not any("Secure" in c for c in headers["set-cookie-all"])
    finally:
        stop(process)
    assert _ledger(database_url, tmp_path)["cy@example.com"] == ("127.0.0.2", f"http://127.0.0.1:{port}/subscribe")
