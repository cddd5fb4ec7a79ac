"""An authoritative server for the stack's zone (default `stack.internal`).

The zone comes from a JSON file rendered by `deploy/render.py` from the one topology:
  {"zone": "stack.internal", "ttl": 5, "records": {"": "127.0.0.1", "web": ["127.0.10.11", "127.0.10.111"], ...}}
A record's value is an IPv4 address (native mode: each instance's own loopback address; a list when a service
runs several instances, one A record each) or a host name that is looked up when a query arrives (Compose: the
service name, which Docker's embedded DNS resolves to every replica's current address, so answers follow a
recreated container).

Some addresses may be withheld for a while (a JSON list in the file $DNS_WITHHELD_FILE, read again whenever it
changes; `python -m services.dns.withhold ADDRESS...` writes it): replicas that are about to stop. Docker's DNS
drops a container only as its address disappears, so nginx, which asks again every few seconds, would go on
connecting to an address nobody answers at; withheld first, a replica leaves nginx's peers while it still serves,
and only then stops (deploy/stack.py's Compose driver). A name never loses its last address this way.

A zone may also carry TXT records (`"txt": {"directory": ["...", ...]}`): the stack's directory lists every
service, and is deliberately larger than a UDP answer may be — DNS's own lesson in TCP vs UDP.

Answers are authoritative (AA set). Names outside the zone are REFUSED: this is not a recursive resolver.
Over UDP an answer is at most 512 bytes (RFC 1035 §4.2.1), or what the client offers with EDNS(0), up to
1232 (RFC 6891; the 2020 DNS flag day's size, which avoids IP fragmentation). A longer answer goes out as
its question alone with the TC (truncated) bit set, and the client asks again over TCP, where a 2-byte
length prefix frames a message of up to 65,535 bytes.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from dnslib import EDNS0, NS, OPCODE, QTYPE, RCODE, RR, SOA, TXT, A, DNSHeader, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSHandler

log = logging.getLogger("stack.dns")
UDP_LIMIT_CLASSIC = 512  # RFC 1035: a client without EDNS(0) gets no more over UDP
UDP_LIMIT_EDNS = 1232  # the most we send over UDP, whatever a client's EDNS(0) offers


@dataclass(frozen=True)
class Zone:
    origin: str
    records: dict[str, str | list[str]]
    ttl: int = 5
    txt: dict[str, list[str]] | None = None  # label -> one TXT record per string

    @classmethod
    def load(cls, path: str | Path) -> Zone:
        data = json.loads(Path(path).read_text())
        return cls(data["zone"].rstrip("."), dict(data["records"]), int(data.get("ttl", 5)),
                   dict(data.get("txt", {})))


class Withheld:
    """The addresses left out of answers, from a JSON list in `path` (none when there is no such file). The file
    is read again when it changes (another inode, size or mtime: a writer renames a new file into place)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._seen: tuple[int, int, int] | None = None
        self._addresses: frozenset[str] = frozenset()

    def addresses(self) -> frozenset[str]:
        if self.path is None:
            return self._addresses
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            stat = None
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns) if stat else None
        if seen != self._seen:
            try:
                listed = json.loads(self.path.read_text()) if stat else []
                addresses = frozenset(str(ipaddress.IPv4Address(a)) for a in listed)
            except (OSError, ValueError, TypeError) as error:  # keep what was withheld: a bad file changes nothing
                log.error("withheld addresses unreadable in %s, keeping %s: %s", self.path, sorted(self._addresses),
                          error)
                self._seen = seen  # said once per change of the file, not once per query
                return self._addresses
            if addresses != self._addresses:
                log.info("withholding %s", ", ".join(sorted(addresses)) or "nothing")
            self._seen, self._addresses = seen, addresses
        return self._addresses


def write_withheld(path: str | Path, addresses: list[str]) -> None:
    """Replace the withheld list at `path` whole (a new file renamed into place: a reader sees one list)."""
    path = Path(path)
    listed = sorted({str(ipaddress.IPv4Address(a)) for a in addresses})
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(listed) + "\n")
    partial.replace(path)


class LookupFailed(Exception):
    """The system resolver could not say (a timeout, a server failure): not the same as "no such name"."""


# What the system resolver says when a name has no IPv4 address: an empty answer, not a failure.
NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def addresses_of(target: str) -> list[str]:
    """The IPv4 addresses of a record's target: the literal, or what the system resolver says now (none when
    the name does not exist; LookupFailed when the resolver could not tell)."""
    try:
        ipaddress.IPv4Address(target)
        return [target]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(target, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as error:
        if error.errno in NO_SUCH_NAME:
            return []
        raise LookupFailed(f"{target}: {error}") from None
    return sorted({info[4][0] for info in infos})


def reply_to(request: DNSRecord) -> DNSRecord:
    """An authoritative answer's skeleton. Of the query's header only the id, opcode, RD and CD come back
    (RFC 1035 4.1.1, RFC 4035 3.1.6). dnslib's request.reply() copies the whole flags word, so a query with
    AD, TC, Z or an rcode set got them echoed: AD claims DNSSEC-validated data, which an unsigned zone never is."""
    query = request.header
    header = DNSHeader(id=query.id, qr=1, opcode=query.opcode, aa=1, tc=0, rd=query.rd, ra=0, z=0, ad=0,
                       cd=query.cd, rcode=RCODE.NOERROR)
    return DNSRecord(header, q=request.q)


class ZoneResolver(BaseResolver):
    def __init__(self, zone: Zone, withheld: Withheld | None = None) -> None:
        self.zone = zone
        self.withheld = withheld or Withheld(None)
        self.origin = DNSLabel(zone.origin)
        self.soa = SOA(
            mname=f"dns.{zone.origin}.", rname=f"hostmaster.{zone.origin}.",
            times=(1, 3600, 600, 86400, zone.ttl),
        )

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        zone = self.zone  # once: a reload (SIGHUP) swaps the whole zone
        reply = reply_to(request)
        if request.header.opcode != OPCODE.QUERY or request.header.qr:
            reply.header.rcode = RCODE.NOTIMP  # only standard queries (RFC 1035 4.1.1); never answer an answer
            return reply
        if request.header.q != 1:
            reply.header.rcode = RCODE.FORMERR  # one question per message, as every resolver sends (RFC 9619)
            return reply
        qname, qtype = request.q.qname, QTYPE[request.q.qtype]
        if not qname.matchSuffix(self.origin):
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return reply
        label = str(qname.stripSuffix(self.origin)).rstrip(".")
        texts = (zone.txt or {}).get(label)
        if label and label not in zone.records and texts is None:  # the apex always exists: its SOA, NS
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(RR(self.origin, QTYPE.SOA, rdata=self.soa, ttl=zone.ttl))
            return reply
        if qtype in ("A", "ANY") and label in zone.records:
            targets = zone.records[label]
            try:
                addresses = list(dict.fromkeys(a for t in ([targets] if isinstance(targets, str) else targets)
                                               for a in addresses_of(t)))
            except LookupFailed as error:
                # SERVFAIL, never an empty answer: nginx keeps its peers on a failure, but an empty answer would
                # take every replica out of its upstream.
                log.warning("answering SERVFAIL: %s", error)
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            withheld = self.withheld.addresses()
            for address in [a for a in addresses if a not in withheld] or addresses:
                reply.add_answer(RR(qname, QTYPE.A, rdata=A(address), ttl=zone.ttl))
        if qtype in ("TXT", "ANY") and texts:
            for text in texts:
                reply.add_answer(RR(qname, QTYPE.TXT, rdata=TXT(text.encode()), ttl=zone.ttl))
        if label == "" and qtype in ("SOA", "ANY"):
            reply.add_answer(RR(qname, QTYPE.SOA, rdata=self.soa, ttl=zone.ttl))
        if label == "" and qtype in ("NS", "ANY"):
            reply.add_answer(RR(qname, QTYPE.NS, rdata=NS(f"dns.{zone.origin}."), ttl=zone.ttl))
        if not reply.rr:  # the name exists but has no data of this type (e.g. AAAA): NODATA
            reply.add_auth(RR(self.origin, QTYPE.SOA, rdata=self.soa, ttl=zone.ttl))
        return reply


def edns_payload(request: DNSRecord) -> int | None:
    """The UDP payload size the client offered with EDNS(0), or None when it sent no OPT record."""
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return int(rr.rclass)
    return None


class SizeLimitedHandler(DNSHandler):
    """dnslib's handler sends every UDP answer whole, however long. This one keeps UDP answers within the
    client's limit (512 bytes, or its EDNS(0) offer up to 1232), answers EDNS(0) with EDNS(0), and sends an
    answer that does not fit as the bare question with TC set, so the client retries over TCP."""

    def get_reply(self, data: bytes) -> bytes:
        request = DNSRecord.parse(data)
        self.server.logger.log_request(self, request)
        reply = self.server.resolver.resolve(request, self)
        offered = edns_payload(request)
        if offered is not None:
            reply.add_ar(EDNS0(udp_len=UDP_LIMIT_EDNS))
        self.server.logger.log_reply(self, reply)
        packed = reply.pack()
        limit = UDP_LIMIT_CLASSIC if offered is None else min(max(offered, UDP_LIMIT_CLASSIC), UDP_LIMIT_EDNS)
        if self.protocol == "udp" and len(packed) > limit:
            header = reply.header
            truncated = DNSRecord(DNSHeader(id=header.id, qr=1, aa=header.aa, ra=header.ra, rd=header.rd, tc=1,
                                            rcode=header.rcode), q=request.q)
            if offered is not None:
                truncated.add_ar(EDNS0(udp_len=UDP_LIMIT_EDNS))
            self.server.logger.log_truncated(self, truncated)
            packed = truncated.pack()
        return packed
