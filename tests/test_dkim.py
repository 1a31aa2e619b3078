"""DKIM: `python -m mailer dkim generate` makes the key and prints the DNS record; with
the selector set, every kind of mail leaves signed (relaxed/relaxed) over the headers
RFC 6376 and RFC 8058 name, and dkimpy's verifier accepts it against the printed record."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import dkim as dkimpy
import pytest
import sqlalchemy as sa

from mailer import create_app
from mailer.delivery import dkim
from mailer.models import Delivery
from mailer.settings import load_settings
from tests.conftest import SECRET, settings_for, signup
from tests.mail_samples import KINDS, every_kind_of_mail

ROOT = Path(__file__).resolve().parent.parent
SELECTOR, DOMAIN = "mail2026", "clinic.example"


def run_cli(instance: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    env.update(MAILER_INSTANCE_PATH=str(instance), MAILER_SECRET_KEY=SECRET,
               MAILER_FROM="Spine Clinic <news@clinic.example>")
    return subprocess.run([sys.executable, "-m", "mailer", "dkim", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def printed_record(output: str) -> str:
    return re.search(r"^  value: (v=DKIM1; .*)$", output, re.MULTILINE).group(1)


def dns_serving(record: str):
    """dkimpy's DNS hook, answering as the published record would."""
    def lookup(name: bytes, timeout: int = 5):
        return record.encode() if name.rstrip(b".") == f"{SELECTOR}._domainkey.{DOMAIN}".encode() else None
    return lookup


@pytest.fixture
def generated(tmp_path):
    instance = tmp_path / "instance"
    made = run_cli(instance, "generate", "--selector", SELECTOR, "--domain", DOMAIN)
    assert made.returncode == 0, made.stderr
    return instance, made.stdout


@pytest.fixture
def signing_app(database_url, smtp_server, tmp_path, generated):
    app = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url, dkim_selector=SELECTOR))
    app.config["TESTING"] = True
    yield app
    app.extensions["mailer"].engine.dispose()


def test_generate_makes_a_2048_bit_key_in_the_instance_folder_and_prints_the_record(generated):
    instance, output = generated
    key = instance / "dkim" / f"{SELECTOR}.{DOMAIN}.pem"
    assert key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert key.stat().st_mode & 0o777 == 0o600
    assert f"name:  {SELECTOR}._domainkey.{DOMAIN}" in output
    record = printed_record(output)
    public = dkimpy.crypto.parse_public_key(__import__("base64").b64decode(record.split("p=")[1]))
    assert public["modulus"].bit_length() == 2048
    assert f"MAILER_DKIM_SELECTOR={SELECTOR}" in output
    # The zone-file line splits the value into strings a TXT record can hold.
    zone = re.search(r"IN TXT \( (.*) \)", output).group(1)
    assert all(len(part) <= 255 for part in re.findall(r'"([^"]*)"', zone))
    assert "".join(re.findall(r'"([^"]*)"', zone)) == record


def test_generate_refuses_bad_input_and_never_overwrites_a_key(generated, tmp_path):
    instance, _ = generated
    key = instance / "dkim" / f"{SELECTOR}.{DOMAIN}.pem"
    before = key.read_bytes()
    again = run_cli(instance, "generate", "--selector", SELECTOR, "--domain", DOMAIN)
    assert again.returncode != 0 and "exists already" in again.stderr
    assert key.read_bytes() == before
    for args, message in ((("--selector", "bad selector"), "is not a DKIM selector"),
                          (("--selector", "ok", "--domain", "not a domain"), "is not a domain name"),
                          (("--selector", "ok", "--domain", "localhost"), "is not a domain name")):
        refused = run_cli(instance, "generate", *args)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr
    assert sorted(p.name for p in (instance / "dkim").iterdir()) == [key.name]


def test_record_prints_the_configured_keys_record(generated):
    instance, output = generated
    shown = subprocess.run([sys.executable, "-m", "mailer", "dkim", "record"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env={**{k: v for k, v in os.environ.items() if not k.startswith("MAILER_")},
                                             "MAILER_INSTANCE_PATH": str(instance), "MAILER_SECRET_KEY": SECRET,
                                             "MAILER_FROM": "Clinic <news@clinic.example>",
                                             "MAILER_DKIM_SELECTOR": SELECTOR})
    assert shown.returncode == 0, shown.stderr
    assert printed_record(shown.stdout) == printed_record(output)


def test_every_kind_of_mail_is_signed_and_verifies_against_the_printed_record(signing_app, smtp_server, generated):
    _, output = generated
    lookup = dns_serving(printed_record(output))
    mailer = signing_app.extensions["mailer"]
    samples = every_kind_of_mail(mailer, signing_app.test_client(), smtp_server)
    for kind, data in samples.items():
        assert data.startswith(b"DKIM-Signature: "), kind
        assert dkimpy.verify(data, dnsfunc=lookup), f"{KINDS[kind]} does not verify"
        signature = dkimpy.DKIM(data)
        signature.verify(dnsfunc=lookup)
        fields = dict(signature.signature_fields)
        assert fields[b"c"] == b"relaxed/relaxed" and fields[b"a"] == b"rsa-sha256"
        assert fields[b"d"] == DOMAIN.encode() and fields[b"s"] == SELECTOR.encode()
        signed = set(re.sub(rb"\s", b"", fields[b"h"]).split(b":"))
        assert {b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
                b"list-unsubscribe", b"list-unsubscribe-post"} <= signed, kind
    newsletter = samples["newsletter"]
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in newsletter
    # A relay that rewrites the unsubscribe link, or the body, breaks the signature.
    forged = re.sub(rb"List-Unsubscribe: <[^>]+>", b"List-Unsubscribe: <https://evil.example/u>", newsletter)
    assert forged != newsletter and not dkimpy.verify(forged, dnsfunc=lookup)
    assert not dkimpy.verify(newsletter.replace(b"Hello", b"Hullo", 1) if b"Hello" in newsletter
                             else newsletter + b"x", dnsfunc=lookup)
    # Relaxed canonicalisation: refolded headers and trailing spaces still verify.
    assert dkimpy.verify(newsletter.replace(b"\r\nSubject: ", b"\r\nSubject:    "), dnsfunc=lookup)


def test_a_missing_key_stops_the_worker_before_it_claims_anything(database_url, smtp_server, tmp_path, client, db):
    signup(client, "ada@example.com")
    settings = load_settings(settings_for(database_url, tmp_path, smtp_url=smtp_server.url,
                                          dkim_selector="nokey"))
    app = create_app(settings_for(database_url, tmp_path, smtp_url=smtp_server.url, dkim_selector="nokey"))
    mailer = app.extensions["mailer"]
    with pytest.raises(dkim.DkimError) as refused:
        with mailer.sender() as sender:
            sender.send_batch()
    assert "python -m mailer dkim generate --selector nokey" in str(refused.value)
    assert db.scalars(sa.select(Delivery.status)) == ["queued"]
    assert smtp_server.received == []
    assert dkim.signer_for(dataclasses.replace(settings, dkim_selector="")) is None
    app.extensions["mailer"].engine.dispose()


def test_signing_is_off_without_a_selector(mailer, client, smtp_server):
    signup(client, "ada@example.com")
    with mailer.sender() as sender:
        sender.drain()
    assert b"DKIM-Signature" not in smtp_server.received[0].data


def test_the_signer_is_made_once_per_key_file(database_url, tmp_path):
    """A worker asks for the signer every batch: the key is read again only when its file changes."""
    settings = load_settings(settings_for(database_url, tmp_path, dkim_selector="s1"))
    path = dkim.key_path(settings, "s1", dkim.signing_domain(settings))
    dkim.generate_key(path)
    first = dkim.signer_for(settings)
    assert dkim.signer_for(settings) is first
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    assert dkim.signer_for(settings) is not first  # a replaced file is read again
