"""The production shape for tests: real gunicorn workers, real nginx in front, real Redis,
and clients that connect from a chosen loopback address (127.0.0.2, 127.0.0.3, …).

A missing nginx or Redis skips the test locally and fails it in CI (CI=true)."""
from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.smtp_server import free_port

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REDIS_URL = os.environ.get("MAILER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def require(ok: bool, what: str) -> None:
    """Skip locally, fail in CI: CI must run every production-shape test."""
    if not ok:
        if IN_CI:
            pytest.fail(f"{what} is needed in CI (.ci/run installs and starts it)")
        pytest.skip(f"{what} is not available here")


def redis_client():
    """A client for the test Redis, or a skip/failure when none answers."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        require(False, f"Redis at {REDIS_URL}")
    return client


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def gunicorn(env: dict[str, str], log: Path, *, workers: int = 2, extra: list[str] = ()) -> tuple[subprocess.Popen, int]:
    """`gunicorn -w <workers> wsgi:app` on a free port, as the README runs it."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", str(workers), "-b", f"127.0.0.1:{port}", *extra, "wsgi:app"],
            cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log)
    except Exception:
        stop(process)
        raise
    return process, port


def self_signed_certificate(directory: Path, host: str) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={host}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def nginx(site: str, prefix: Path) -> subprocess.Popen:
    """Our own nginx master (not the system service) serving `site` with its own prefix,
    pid file, logs and temp folders under `prefix`."""
    require(os.access(NGINX, os.X_OK), "nginx (Debian package nginx)")
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "site.conf").write_text(site)
    user = "user root;" if os.geteuid() == 0 else ""  # as root, workers must read our 0700 temp dirs
    (prefix / "nginx.conf").write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/site.conf;
}}
""")
    log = prefix / "stderr.log"
    with log.open("wb") as out:
        return subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr"],
                                stdout=out, stderr=subprocess.STDOUT)


def request(url: str, *, source: str, method: str = "GET", form: dict | None = None,
            headers: dict | None = None, host: str | None = None) -> tuple[int, dict, str]:
    """One HTTP(S) request whose socket is bound to the loopback address `source`, so the
    server sees it coming from there. TLS is not verified (a test certificate)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=30, source_address=(source, 0),
                                           context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30, source_address=(source, 0))
    body = urllib.parse.urlencode(form or {}, doseq=True) if form is not None else None
    sent = {"Accept": "text/html", **(headers or {})}
    if host:
        sent["Host"] = host
    if body is not None:
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body, headers=sent)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()} | {
            "set-cookie-all": response.headers.get_all("Set-Cookie") or []}, response.read().decode()
    finally:
        conn.close()
