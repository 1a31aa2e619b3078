"""Signed tokens for links in mail: confirm a signup, unsubscribe from a list."""
from __future__ import annotations

import binascii
import functools

from itsdangerous import BadSignature, SignatureExpired, Serializer, URLSafeSerializer, URLSafeTimedSerializer

__all__ = ["BadSignature", "SignatureExpired", "dumps", "loads"]


class _URLSafe(URLSafeSerializer):
    """URLSafeSerializer's tokens, without its zlib attempt where it cannot win: the
    shortest zlib stream is 9 bytes (header 2, a block of one literal and its end 3,
    checksum 4) and one of 11 or 12 bytes would need the block to hold 10 or more
    characters, brackets included, in 22 bits; so a payload of 12 bytes or fewer (an
    unsubscribe link's [contact, list] up to contact 99,999,999) is never compressed,
    and a zlib stream set up per token cost 60 µs. Same tokens (tests/test_send_path.py)."""

    def dump_payload(self, obj) -> bytes:
        if type(obj) is list and all(type(item) is int for item in obj):
            json = f"[{','.join(map(str, obj))}]".encode()  # what the compact JSON serializer writes
        else:
            json = Serializer.dump_payload(self, obj)
        if len(json) <= 12:
            return _base64(json)
        return super().dump_payload(obj)

    def dumps(self, obj, salt=None) -> str:
        """The stock dumps, with its signer and derived key made once and the HMAC made by
        hmac.digest: a send batch signs two tokens a message (13 µs each with the stock
        dumps, which makes a signer and derives its key for every token; 4 µs so)."""
        if salt is not None:
            return super().dumps(obj, salt)
        made = self.__dict__.get("_made")
        if made is None:
            signer = self.make_signer()
            made = self._made = (signer.sep, *_hmac_pads(signer.derive_key(), signer.digest_method))
        sep, inner, outer = made
        payload = self.dump_payload(obj)
        mac = inner.copy()
        mac.update(payload)
        mac, digest = outer.copy(), mac.digest()
        mac.update(digest)
        return (payload + sep + _base64(mac.digest())).decode("utf-8")


def _hmac_pads(key: bytes, digest_method):
    """HMAC (RFC 2104) with the key's inner and outer pads hashed once; each token then
    costs two hash copies. (hmac.digest, twice as slow, also lets go of the GIL for every
    token, and the send loop then waits for the thread that records outcomes.)"""
    block = digest_method().block_size
    if len(key) > block:
        key = digest_method(key).digest()
    key = key.ljust(block, b"\0")
    return (digest_method(bytes(b ^ 0x36 for b in key)), digest_method(bytes(b ^ 0x5C for b in key)))


_URL_SAFE = bytes.maketrans(b"+/", b"-_")


def _base64(data: bytes) -> bytes:
    """itsdangerous's base64_encode (URL-safe, no padding), without its checks and copies."""
    return binascii.b2a_base64(data, newline=False).translate(_URL_SAFE).rstrip(b"=")


@functools.lru_cache(maxsize=64)
def _serializer(secret_key: str, purpose: str, timed: bool):
    """One serializer per key and purpose, made once (a send batch signs two tokens per message)."""
    cls = URLSafeTimedSerializer if timed else _URLSafe
    return cls(secret_key, salt=f"mailer.{purpose}")


def dumps(secret_key: str, purpose: str, payload, *, timed: bool = False) -> str:
    return _serializer(secret_key, purpose, timed).dumps(payload)


def loads(secret_key: str, purpose: str, token: str, *, max_age: int | None = None):
    """Raises SignatureExpired when older than max_age, BadSignature when forged."""
    if max_age is not None:
        return _serializer(secret_key, purpose, True).loads(token, max_age=max_age)
    return _serializer(secret_key, purpose, False).loads(token)
