"""The DNS records a sender's domain publishes so receivers trust its mail (SPF, DKIM,
DMARC): what to publish for the From domain, and a check (dnspython) of what is there."""
from __future__ import annotations

import dataclasses
import re
from email.utils import parseaddr

import dns.exception
import dns.resolver

from mailer.delivery import dkim
from mailer.settings import Settings

LOOKUP_SECONDS = 4.0
OK, MISSING, WRONG, UNKNOWN, NOT_USED = "ok", "missing", "wrong", "could not check", "not used"


@dataclasses.dataclass(frozen=True)
class Record:
    """One record to publish: its kind, the DNS name, a suggested value and what it is for."""

    kind: str
    name: str
    suggested: str
    purpose: str
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Finding:
    record: Record
    status: str
    found: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


def records_to_publish(settings: Settings) -> list[Record]:
    """SPF and DMARC for the From domain, and the DKIM key's record when this install signs."""
    domain = dkim.check_domain(settings.from_domain)
    # SPF is checked against the envelope sender: the VERP bounce address's domain when set.
    envelope = parseaddr(settings.bounce_address)[1].rpartition("@")[2] if settings.bounce_address else ""
    records = [Record(
        "SPF", dkim.check_domain(envelope) if envelope else domain, "v=spf1 mx ~all",
        "Lists the servers allowed to send mail for the domain. Receivers check the envelope sender "
        "(the bounce address) against it.",
        "Replace mx with what really sends: your relay's include: (its documentation names it, e.g. "
        "include:_spf.relay.example) or this server's ip4:/ip6: address. Keep one SPF record only; end it "
        "with ~all (or -all once you are sure).")]
    if settings.dkim_selector:
        signer = dkim.signer_for(settings)
        records.append(Record(
            "DKIM", dkim.record_name(signer.selector.decode(), signer.domain.decode()),
            dkim.txt_record(signer.private_pem),
            "The public half of the key mailer signs every message with: a receiver checks the signature "
            "against it, so it knows the mail is from you and unchanged (the one-click unsubscribe header "
            "included)."))
    else:
        records.append(Record(
            "DKIM", f"<selector>._domainkey.{domain}", "",
            "The public key receivers check a message's signature against.",
            "This install does not sign (MAILER_DKIM_SELECTOR is not set): your relay must sign for your "
            "domain, with the record it gives you; or make a key with python -m mailer dkim generate."))
    records.append(Record(
        "DMARC", f"_dmarc.{domain}", f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}",
        "Tells receivers what to do with mail that fails SPF and DKIM for your domain, and where to send "
        "reports. Gmail and Yahoo require one from bulk senders.",
        "Start with p=none and read the reports; move to p=quarantine once they show only your own "
        "servers."))
    return records


def resolver_for(settings: Settings) -> dns.resolver.Resolver:
    """The system's resolver, or the server MAILER_DNS_RESOLVER names ("host" or "host:port")."""
    if not settings.dns_resolver:
        resolver = dns.resolver.Resolver()
    else:
        host, _, port = settings.dns_resolver.rpartition(":") if settings.dns_resolver.count(":") == 1 \
            else (settings.dns_resolver, "", "53")
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = int(port or 53)
    resolver.lifetime = resolver.timeout = LOOKUP_SECONDS
    return resolver


def txt(resolver: dns.resolver.Resolver, name: str) -> tuple[str, ...] | None:
    """The TXT records at `name` (each one's strings joined); () when there are none; None
    when the lookup failed (no answer in time, no server)."""
    try:
        answer = resolver.resolve(name, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return ()
    except (dns.exception.DNSException, OSError):
        return None
    return tuple(b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer)


def check(settings: Settings, resolver: dns.resolver.Resolver | None = None) -> list[Finding]:
    """Look each record up and say what is missing or wrong (does network I/O)."""
    resolver = resolver or resolver_for(settings)
    findings = []
    for record in records_to_publish(settings):
        if record.kind == "DKIM" and not record.suggested:
            findings.append(Finding(record, NOT_USED))
            continue
        found = txt(resolver, record.name)
        if found is None:
            findings.append(Finding(record, UNKNOWN, problems=("The DNS lookup failed: try again later.",)))
            continue
        judge = {"SPF": spf_problems, "DKIM": dkim_problems, "DMARC": dmarc_problems}[record.kind]
        status, problems = judge(record, found)
        findings.append(Finding(record, status, found, tuple(problems)))
    return findings


def _tags(value: str) -> dict[str, str]:
    tags = {}
    for part in value.split(";"):
        name, sep, tag_value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = "".join(tag_value.split())
    return tags


def spf_problems(record: Record, found: tuple[str, ...]) -> tuple[str, list[str]]:
    spf = [value for value in found if value.lower().split(" ", 1)[0] == "v=spf1"]
    if not spf:
        return MISSING, [f"No SPF record at {record.name}."]
    if len(spf) > 1:
        return WRONG, ["There are several SPF records: receivers then treat SPF as broken (RFC 7208 §4.5). "
                       "Merge them into one."]
    terms = spf[0].lower().split()[1:]
    if any(term in ("all", "+all") for term in terms):
        return WRONG, ["The record ends with +all, which lets every server on the internet send as you. "
                       "Use ~all or -all."]
    if not any(term in ("-all", "~all", "?all") or term.startswith("redirect=") for term in terms):
        return WRONG, ["The record does not end with ~all or -all, so it does not say which servers may not "
                       "send."]
    if "?all" in terms:
        return WRONG, ["?all says nothing about other servers; use ~all or -all."]
    return OK, []


def dkim_problems(record: Record, found: tuple[str, ...]) -> tuple[str, list[str]]:
    keys = [value for value in found if "p=" in value]
    if not keys:
        return MISSING, [f"No DKIM key at {record.name}: receivers cannot check the signatures."]
    if len(keys) > 1:
        return WRONG, ["There are several DKIM records at this name; publish one."]
    published, expected = _tags(keys[0]), _tags(record.suggested)
    if not published.get("p"):
        return WRONG, ["The record's key is empty (p=): the key is revoked, signatures fail."]
    if published.get("v", "DKIM1") != "DKIM1" or published.get("k", "rsa") != "rsa":
        return WRONG, ["The record is not a DKIM1 RSA key (v=DKIM1; k=rsa)."]
    if published["p"] != expected["p"]:
        return WRONG, ["The published key is not the one mailer signs with: signatures fail. Publish the "
                       "value shown."]
    return OK, []


_POLICIES = ("none", "quarantine", "reject")


def dmarc_problems(record: Record, found: tuple[str, ...]) -> tuple[str, list[str]]:
    dmarc = [value for value in found if re.match(r"\s*v\s*=\s*DMARC1\b", value)]
    if not dmarc:
        return MISSING, [f"No DMARC record at {record.name}."]
    if len(dmarc) > 1:
        return WRONG, ["There are several DMARC records: receivers then ignore them all (RFC 7489 §6.6.3)."]
    tags = _tags(dmarc[0])
    if tags.get("p", "").lower() not in _POLICIES:
        return WRONG, ["The policy p= must be none, quarantine or reject."]
    problems = []
    if not tags.get("rua"):
        problems.append("No rua= address: you will get no reports of who sends as your domain.")
    return OK, problems
