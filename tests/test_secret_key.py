"""One secret key for every process: generated atomically on a fresh SQLite instance
(gunicorn workers without --preload and a worker starting together all sign with the same
bytes), given from the environment or a file, required on PostgreSQL, never short."""
from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from mailer.db import ROOT, make_engine, make_session_factory, session_scope
from mailer.demo import ensure_default_list
from mailer.settings import SettingsError, _instance_secret, load_settings
from tests.conftest import BACKEND
from tests.smtp_server import free_port

MAKE_KEY = 'python -c "import secrets; print(secrets.token_urlsafe(48))"'
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/mailer_never_reached"


def _clean_environ(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(extra)
    return env


def _race_for_key(instance: str, start_at: float, results) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    try:
        results.put(_instance_secret(Path(instance)))
    except Exception as exc:  # reported to the test, which fails on it
        results.put(f"error: {exc!r}")


def test_processes_racing_for_a_fresh_key_all_get_the_same_full_key(tmp_path):
    context = multiprocessing.get_context("fork")
    for round_ in range(10):
        instance = tmp_path / f"instance{round_}"
        results = context.Queue()
        start_at = time.time() + 0.3
        racers = [context.Process(target=_race_for_key, args=(str(instance), start_at, results)) for _ in range(8)]
        for racer in racers:
            racer.start()
        keys = [results.get(timeout=30) for _ in racers]
        for racer in racers:
            racer.join(timeout=30)
        assert len(set(keys)) == 1, keys
        assert len(keys[0]) >= 32 and not keys[0].startswith("error")
        assert (instance / "secret_key").read_text().strip() == keys[0]
        assert [p.name for p in instance.iterdir()] == ["secret_key"]  # no temporary files left behind
        assert (instance / "secret_key").stat().st_mode & 0o077 == 0


def test_a_key_from_a_file_and_short_keys_refused(tmp_path):
    key_file = tmp_path / "mailer.key"
    key_file.write_text("k" * 40 + "\n")
    settings = load_settings(environ={"MAILER_SECRET_KEY_FILE": str(key_file), "MAILER_DATABASE_URL": PG_URL,
                                      "MAILER_INSTANCE_PATH": str(tmp_path / "instance")})
    assert settings.secret_key == "k" * 40
    assert not (tmp_path / "instance" / "secret_key").exists()
    refusals = [
        ({"MAILER_SECRET_KEY": "short"}, "MAILER_SECRET_KEY holds a secret key of 5 characters; at least 32"),
        ({"MAILER_SECRET_KEY_FILE": str(tmp_path / "missing.key")}, "cannot be read"),
    ]
    key_file.write_text("\n")
    refusals.append(({"MAILER_SECRET_KEY_FILE": str(key_file)}, "holds a secret key of 0 characters"))
    for environ, message in refusals:
        with pytest.raises(SettingsError, match=re.escape(message)):
            load_settings(environ={"MAILER_INSTANCE_PATH": str(tmp_path / "instance"), **environ})
    # An empty key file in the instance folder is refused, not used.
    (tmp_path / "instance").mkdir(exist_ok=True)
    (tmp_path / "instance" / "secret_key").write_text("")
    with pytest.raises(SettingsError, match="at least 32"):
        load_settings(environ={"MAILER_INSTANCE_PATH": str(tmp_path / "instance")})


def test_postgresql_without_a_key_refuses_to_start(tmp_path):
    env = _clean_environ(MAILER_DATABASE_URL=PG_URL, MAILER_INSTANCE_PATH=str(tmp_path / "instance"))
    commands = [[sys.executable, "-m", "mailer", "worker"], [sys.executable, "-m", "mailer", "migrate"],
                [sys.executable, "-m", "mailer", "consent", "verify"],
                [sys.executable, "-m", "gunicorn", "-w", "1", "-b", f"127.0.0.1:{free_port()}", "wsgi:app"]]
    for command in commands:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        assert "MAILER_SECRET_KEY or MAILER_SECRET_KEY_FILE must be set when the database is not SQLite" in output
        assert MAKE_KEY in output
    assert not (tmp_path / "instance" / "secret_key").exists()


# Four gunicorn workers and a worker on a fresh instance ------------------------------------

ROUNDS = 10
ADDRESSES = 4


@pytest.fixture
def seeded_template(migrated_database, tmp_path):
    if BACKEND != "sqlite":
        pytest.skip("the generated key is for one host with SQLite; PostgreSQL requires a given key")
    path = tmp_path / "seeded.db"
    shutil.copy(migrated_database, path)
    engine = make_engine(f"sqlite:///{path}")
    with session_scope(make_session_factory(engine)) as session:
        ensure_default_list(session)
    engine.dispose()
    return path


def _http(url: str, data: dict | None = None) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Connection": "close"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait(condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def _answers(url: str) -> bool:
    try:
        _http(url)
        return True
    except OSError:
        return False


def test_gunicorn_workers_and_a_worker_on_a_fresh_instance_share_one_key(seeded_template, smtp_server, tmp_path):
    for round_ in range(ROUNDS):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        shutil.copy(seeded_template, folder / "mailer.db")
        instance = folder / "instance"  # does not exist yet: every process finds no key
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = _clean_environ(MAILER_DATABASE_URL=f"sqlite:///{folder / 'mailer.db'}",
                             MAILER_INSTANCE_PATH=str(instance), MAILER_SMTP_URL=smtp_server.url,
                             MAILER_BASE_URL=base, MAILER_SIGNUP_RATE_LIMIT="1000", MAILER_SEND_INTERVAL_SECONDS="1")
        processes = [
            subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "4", "-b", f"127.0.0.1:{port}", "wsgi:app"],
                             cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
            subprocess.Popen([sys.executable, "-m", "mailer", "worker"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
        ]
        try:
            _wait(lambda: _answers(f"{base}/healthz"))
            sent_before = len(smtp_server.received)
            addresses = [f"r{round_}n{n}@example.com" for n in range(ADDRESSES)]
            for address in addresses:
                status, _ = _http(f"{base}/subscribe", {"email": address, "name": "Reader", "consent": "yes",
                                                        "consent_version": "1", "lists": "newsletter"})
                assert status == 200
            _wait(lambda: len(smtp_server.received) - sent_before >= ADDRESSES)
            links = []
            for received in list(smtp_server.received)[sent_before:]:
                text = received.message.get_body(preferencelist=("plain",)).get_content()
                links += re.findall(rf"{re.escape(base)}/confirm/\S+", text)
            assert len(links) == ADDRESSES
            # Each link several times over new connections: the workers take turns.
            for link in links * 4:
                status, page = _http(link)
                assert status == 200 and ("Subscription confirmed" in page or "Already confirmed" in page), page
        finally:
            processes[0].send_signal(signal.SIGQUIT)  # gunicorn's quick shutdown
            processes[1].send_signal(signal.SIGTERM)
            errors = [process.communicate(timeout=60)[1] for process in processes]
        key = (instance / "secret_key").read_text().strip()
        assert len(key) >= 32
        assert sorted(p.name for p in instance.iterdir()) == ["secret_key"], errors


# MAILER_INSTANCE_PATH ---------------------------------------------------------------------

def _listing(folder: Path) -> dict | None:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.exists() else None


def test_cli_worker_and_web_app_keep_their_files_under_mailer_instance_path(tmp_path):
    """With only MAILER_INSTANCE_PATH set, the default SQLite database and the generated key
    are made there (not in ./instance nor in the source tree's instance/), and every kind of
    process finds them: migrate, the worker, the web app."""
    instance, cwd = tmp_path / "var" / "mailer", tmp_path / "cwd"
    cwd.mkdir()
    env = _clean_environ(MAILER_INSTANCE_PATH=str(instance), PYTHONPATH=str(ROOT))
    source_instance = _listing(ROOT / "instance")

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run("-m", "mailer", "migrate")
    key = (instance / "secret_key").read_text().strip()
    assert len(key) >= 32 and (instance / "mailer.db").exists()
    run("-m", "mailer", "create-user", "owner@clinic.example", "--password", "correct horse battery staple")
    run("-m", "mailer", "worker", "--drain")
    web = run("-c", "from mailer import create_app; app = create_app(); s = app.extensions['mailer'].settings; "
                    "print(app.instance_path); print(s.database_url); print(s.secret_key)").split()
    assert web == [str(instance), f"sqlite:///{instance / 'mailer.db'}", key]
    assert (instance / "secret_key").read_text().strip() == key  # generated once, kept
    assert sorted(p.name for p in instance.iterdir() if not p.name.startswith("mailer.db-")) == ["mailer.db",
                                                                                                 "secret_key"]
    assert list(cwd.iterdir()) == []
    assert _listing(ROOT / "instance") == source_instance
