"""DKIM (RFC 6376) for installs that send directly or through a relay that does not sign:
the key (made with openssl, kept in the instance folder or MAILER_DKIM_KEY_FILE, never in
the database), its DNS record, and signing a finished message's bytes with dkimpy."""
from __future__ import annotations

import base64
import dataclasses
import os
import re
import subprocess
import threading
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils as asym_utils
from dkim.crypto import UnparsableKeyError, parse_pem_private_key

from mailer.settings import Settings

KEY_BITS = 2048
# Signed header fields (RFC 6376 §5.4; RFC 8058 §4 requires List-Unsubscribe and
# List-Unsubscribe-Post to be covered). A field listed but absent is signed as absent, so it
# cannot be added later without breaking the signature.
SIGNED_HEADERS = (b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"mime-version",
                  b"content-type", b"content-transfer-encoding", b"list-unsubscribe", b"list-unsubscribe-post")
CANONICALIZE = (b"relaxed", b"relaxed")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class DkimError(Exception):
    """DKIM is configured but cannot be used (no key file, a key that is not RSA...)."""


def check_selector(selector: str) -> str:
    """A selector is one or more DNS labels (RFC 6376 §3.1)."""
    if not selector or len(selector) > 63 * 4 or not all(_LABEL.match(p) for p in selector.split(".")):
        raise DkimError(f"{selector!r} is not a DKIM selector: use letters, digits and hyphens, such as mail2026")
    return selector


def check_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    try:
        ascii_domain = domain.encode("idna").decode()
    except UnicodeError:
        raise DkimError(f"{domain!r} is not a domain name") from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(p) for p in labels):
        raise DkimError(f"{domain!r} is not a domain name")
    return ascii_domain


def signing_domain(settings: Settings) -> str:
    return check_domain(settings.dkim_domain or settings.from_domain)


def key_path(settings: Settings, selector: str | None = None, domain: str | None = None) -> Path:
    """MAILER_DKIM_KEY_FILE, else instance/dkim/<selector>.<domain>.pem."""
    if settings.dkim_key_file:
        return Path(settings.dkim_key_file)
    selector = check_selector(selector or settings.dkim_selector)
    return Path(settings.instance_path) / "dkim" / f"{selector}.{domain or signing_domain(settings)}.pem"


def record_name(selector: str, domain: str) -> str:
    return f"{selector}._domainkey.{domain}"


def generate_key(path: Path) -> bytes:
    """A new 2048-bit RSA key (PKCS#1 PEM, which dkimpy reads) written to `path`, readable
    by its owner only; an existing file is never overwritten. Returns the PEM bytes."""
    if path.exists():
        raise DkimError(f"{path} exists already: a key in use is never overwritten (choose a new selector "
                        "to rotate keys)")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        result = subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(temporary), str(KEY_BITS)],
                                capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise DkimError("openssl is needed to make the key (Debian: apt-get install openssl)") from None
    if result.returncode != 0:
        temporary.unlink(missing_ok=True)
        raise DkimError(f"openssl could not make the key: {result.stderr.strip()[-300:]}")
    os.chmod(temporary, 0o600)
    try:
        os.link(temporary, path)  # fails rather than replace a key made meanwhile
    except FileExistsError:
        raise DkimError(f"{path} exists already") from None
    finally:
        temporary.unlink(missing_ok=True)
    return path.read_bytes()


def public_key_base64(private_pem: bytes) -> str:
    """The p= value: the SubjectPublicKeyInfo (DER) of the key, base64."""
    result = subprocess.run(["openssl", "rsa", "-pubout", "-outform", "DER"], input=private_pem,
                            capture_output=True, timeout=60)
    if result.returncode != 0:
        raise DkimError("the key file is not an RSA private key openssl can read")
    return base64.b64encode(result.stdout).decode()


def txt_record(private_pem: bytes) -> str:
    """The TXT record's value (RFC 6376 §3.6.1)."""
    return f"v=DKIM1; k=rsa; p={public_key_base64(private_pem)}"


def zone_line(selector: str, domain: str, value: str) -> str:
    """The record as a zone-file line, the value split into strings of at most 255
    characters (one TXT string's limit; resolvers join them)."""
    chunks = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    return f"{record_name(selector, domain)}. IN TXT ( {chunks} )"


class _OpenSSLSigner(dkim.DKIM):
    """dkimpy's signer (parsing, canonicalisation, the header's tags and folding), with the
    RSA private-key operation done by OpenSSL through `cryptography`: 0.7 ms instead of
    dkimpy's pure-Python 13 ms per message on the project's machine. Only gen_header differs
    from dkimpy 1.1.8's (the digest is signed by `key`); tests/test_dkim.py verifies every
    kind of mail with dkimpy's own verifier, so a dkimpy upgrade that changes this is caught."""

    def __init__(self, message: bytes, key: rsa.RSAPrivateKey):
        super().__init__(message, linesep=b"\r\n")
        self.key = key

    def gen_header(self, fields, include_headers, canon_policy, header_name, pk, standardize=False):
        value = dkim.fold(b"; ".join(b"=".join(x) for x in fields), namelen=len(header_name), linesep=b"\r\n")
        header = (header_name, b" " + dkim.RE_BTAG.sub(b"\\1", value))
        hashed = dkim.HashThrough(self.hasher(), self.debug_content)
        self.signed_headers = dkim.hash_headers(hashed, canon_policy, canon_policy.canonicalize_headers(self.headers),
                                                include_headers, header, dict(fields))
        signature = self.key.sign(hashed.digest(), padding.PKCS1v15(), asym_utils.Prehashed(hashes.SHA256()))
        fields = [(b"b", base64.b64encode(signature)) if name == b"b" else (name, v) for name, v in fields]
        return dkim.fold(b"; ".join(b"=".join(x) for x in fields) + self.linesep, namelen=len(header_name),
                         linesep=self.linesep)


@dataclasses.dataclass(frozen=True)
class Signer:
    """Signs finished messages with one key: the key file is read and checked once."""

    selector: bytes
    domain: bytes
    private_pem: bytes
    key: rsa.RSAPrivateKey = dataclasses.field(repr=False, compare=False, default=None)

    def sign(self, message: bytes) -> bytes:
        """`message` with a DKIM-Signature field in front (relaxed/relaxed, rsa-sha256)."""
        signature = _OpenSSLSigner(message, self.key).sign(
            self.selector, self.domain, self.private_pem, canonicalize=CANONICALIZE,
            include_headers=list(SIGNED_HEADERS))
        return signature + message


_cache: dict[tuple, Signer] = {}
_cache_lock = threading.Lock()


def signer_for(settings: Settings) -> Signer | None:
    """The signer these settings ask for (None: DKIM is off), made once per key file and
    its modification time, so a worker reads the key once and picks up a replaced file."""
    if not settings.dkim_selector:
        return None
    selector, domain = check_selector(settings.dkim_selector), signing_domain(settings)
    path = key_path(settings, selector, domain)
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as exc:
        raise DkimError(f"MAILER_DKIM_SELECTOR is {selector!r} but the key {path} cannot be read: "
                        f"{exc.strerror} (make it with: python -m mailer dkim generate --selector {selector} "
                        f"--domain {domain})") from None
    key = (str(path), stamp, selector, domain)
    with _cache_lock:
        signer = _cache.get(key)
        if signer is None:
            pem = path.read_bytes()
            try:
                parse_pem_private_key(pem)
                private_key = serialization.load_pem_private_key(pem, password=None)
            except (UnparsableKeyError, ValueError, TypeError) as exc:
                raise DkimError(f"the DKIM key {path} is not a PEM RSA private key (PKCS#1): {exc}") from None
            if not isinstance(private_key, rsa.RSAPrivateKey) or private_key.key_size < 1024:
                raise DkimError(f"the DKIM key {path} is not an RSA key of at least 1024 bits")
            signer = Signer(selector.encode(), domain.encode(), pem, private_key)
            _cache.clear()
            _cache[key] = signer
    return signer
