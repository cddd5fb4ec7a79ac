"""An authoritative server for the stack's zone (default `stack.internal`).

The zone comes from a JSON file rendered by `deploy/render.py` from the one topology:
  {"zone": "stack.internal", "ttl": 5, "records": {"": "127.0.0.1", "web": "127.0.10.11", ...}}
A record's value is an IPv4 address (native mode: each service's own loopback address) or a host name that is
looked up when a query arrives (Compose: the service name, which Docker's embedded DNS resolves to the
container's current address, so answers follow a recreated container).

Answers are authoritative (AA set). Names outside the zone are REFUSED: this is not a recursive resolver.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from dnslib import NS, QTYPE, RCODE, RR, SOA, A, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSHandler

log = logging.getLogger("stack.dns")


@dataclass(frozen=True)
class Zone:
    origin: str
    records: dict[str, str]
    ttl: int = 5

    @classmethod
    def load(cls, path: str | Path) -> Zone:
        data = json.loads(Path(path).read_text())
        return cls(data["zone"].rstrip("."), dict(data["records"]), int(data.get("ttl", 5)))


def addresses_of(target: str) -> list[str]:
    """The IPv4 addresses of a record's target: the literal, or what the system resolver says now."""
    try:
        ipaddress.IPv4Address(target)
        return [target]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(target, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return sorted({info[4][0] for info in infos})


class ZoneResolver(BaseResolver):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.origin = DNSLabel(zone.origin)
        self.soa = SOA(
            mname=f"dns.{zone.origin}.", rname=f"hostmaster.{zone.origin}.",
            times=(1, 3600, 600, 86400, zone.ttl),
        )

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply(ra=0, aa=1)
        qname, qtype = request.q.qname, QTYPE[request.q.qtype]
        if not qname.matchSuffix(self.origin):
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return reply
        label = str(qname.stripSuffix(self.origin)).rstrip(".")
        if label not in self.zone.records:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(RR(self.origin, QTYPE.SOA, rdata=self.soa, ttl=self.zone.ttl))
            return reply
        if qtype in ("A", "ANY"):
            for address in addresses_of(self.zone.records[label]):
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(address), ttl=self.zone.ttl))
        if label == "" and qtype in ("SOA", "ANY"):
            reply.add_answer(RR(qname, QTYPE.SOA, rdata=self.soa, ttl=self.zone.ttl))
        if label == "" and qtype in ("NS", "ANY"):
            reply.add_answer(RR(qname, QTYPE.NS, rdata=NS(f"dns.{self.zone.origin}."), ttl=self.zone.ttl))
        if not reply.rr:  # the name exists but has no data of this type (e.g. AAAA): NODATA
            reply.add_auth(RR(self.origin, QTYPE.SOA, rdata=self.soa, ttl=self.zone.ttl))
        return reply
