"""Addresses on the wire: domains as IDNA A-labels (RFC 5891), local parts that need
SMTPUTF8 (RFC 6531) when they are not ASCII. Pure functions, shared by the message
builder (the To header) and the SMTP transport (the envelope)."""
from __future__ import annotations

import idna


class AddressError(ValueError):
    """The address cannot be written on the wire (its domain is not valid IDNA)."""


def ascii_domain(domain: str) -> str:
    """`exämple.com` → `xn--exmple-cua.com`; an ASCII domain is returned as it is."""
    if domain.isascii():
        return domain
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise AddressError(f"the domain '{domain}' is not a valid international domain name: {exc}") from None


def wire_address(address: str) -> str:
    """The address as it goes out: the domain in A-labels, the local part unchanged."""
    local, at, domain = address.rpartition("@")
    if not at:
        raise AddressError(f"'{address}' has no domain")
    return f"{local}@{ascii_domain(domain)}"


def needs_smtputf8(address: str) -> bool:
    """Only a non-ASCII local part needs SMTPUTF8: a domain can always go as A-labels."""
    return not address.rpartition("@")[0].isascii()
