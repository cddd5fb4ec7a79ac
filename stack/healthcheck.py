"""Container healthchecks in Python (slim images have no curl):

    python -m stack.healthcheck http://127.0.0.1:8001/web/healthz
    python -m stack.healthcheck "dns://127.0.0.1:5353/stack.internal?type=SOA"
    python -m stack.healthcheck time+tcp://127.0.0.1:8013    (also time+udp://, echo://)

Exit 0 when the endpoint answers (HTTP 200; an authoritative DNS answer with a record of the type asked, A by
default; the time, or the echo of what was sent), 1 otherwise. The DNS server's own probe asks for the zone's
SOA, which it answers from its zone alone: an A record of a service name would also need Docker's DNS to know
that name, and Swarm lists a task there only once it is healthy.
"""

from __future__ import annotations

import sys
import urllib.request
from urllib.parse import parse_qsl, urlsplit


def check_http(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def check_dns(url: str, timeout: float) -> bool:
    from dnslib import QTYPE, DNSRecord  # only the DNS image needs dnslib

    parts = urlsplit(url)
    qtype = dict(parse_qsl(parts.query)).get("type", "A").upper()
    try:
        packet = DNSRecord.question(parts.path.lstrip("/"), qtype).send(parts.hostname, parts.port or 53,
                                                                        timeout=timeout)
    except OSError:
        return False
    reply = DNSRecord.parse(packet)
    return bool(reply.header.aa) and any(rr.rtype == getattr(QTYPE, qtype) for rr in reply.rr)


def check_socket_service(url: str, timeout: float) -> bool:
    from services.sockets.client import ask_time, echo_roundtrip  # only the sockets image needs it
    from services.sockets.protocol import is_time_reply

    parts = urlsplit(url)
    try:
        if parts.scheme == "echo":
            return echo_roundtrip(parts.hostname, parts.port, b"health\n", timeout) == b"health\n"
        transport = parts.scheme.removeprefix("time+")
        return is_time_reply(ask_time(parts.hostname, parts.port, transport, timeout=timeout).reply)
    except OSError:
        return False


def check(url: str, timeout: float = 2.0) -> bool:
    scheme = urlsplit(url).scheme
    if scheme == "dns":
        return check_dns(url, timeout)
    if scheme in ("time+tcp", "time+udp", "echo"):
        return check_socket_service(url, timeout)
    return check_http(url, timeout)


def main(argv: list[str]) -> int:
    return 0 if check(argv[0]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
