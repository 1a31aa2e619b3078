"""A real DNS server for tests (dnslib, UDP and TCP on 127.0.0.1): answers TXT queries from
a dict, NXDOMAIN for anything else."""
from __future__ import annotations

from dnslib import QTYPE, RCODE, RR, TXT
from dnslib.server import BaseResolver, DNSLogger, DNSServer as _Server

from tests.smtp_server import free_port


class _Records(BaseResolver):
    def __init__(self, records: dict[str, list[str]]):
        self.records = {name.rstrip(".").lower(): values for name, values in records.items()}

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.TXT:
            for value in self.records[name]:
                data = value.encode()  # one TXT string holds at most 255 bytes; longer values are split
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, ttl=60,
                                    rdata=TXT([data[i:i + 255] for i in range(0, len(data), 255)])))
        return reply


class DNSServer:
    def __init__(self, records: dict[str, list[str]]):
        self.port = free_port()
        resolver = _Records(records)
        quiet = DNSLogger(log="-recv,-send,-request,-reply,-truncated,-error,-data")
        self.servers = [_Server(resolver, port=self.port, address="127.0.0.1", tcp=tcp, logger=quiet)
                        for tcp in (False, True)]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "DNSServer":
        for server in self.servers:
            server.start_thread()
        return self

    def __exit__(self, *exc) -> None:
        for server in self.servers:
            server.stop()
