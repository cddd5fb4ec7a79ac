"""DNS's own lesson in UDP vs TCP: an answer too large for a datagram comes back truncated, then over TCP.

    python -m wire.dns_truncation [NAME] [TYPE]        (default: directory.stack.internal TXT)
    make trace-dns
    dig @127.0.10.53 -p 5353 directory.stack.internal TXT   (dig: ";; Truncated, retrying in TCP mode.")

DNS speaks UDP first: one datagram out, one back, no handshake. An answer over UDP may be at most 512
bytes (RFC 1035), or what the client offers with EDNS(0) — this server sends at most 1232. When the answer is
longer, the server sends only the question with the TC (truncated) bit set, and the client asks again over
TCP, where each message is framed by a 2-byte length. The stack's directory record is larger than both.
"""

from __future__ import annotations

import argparse
import sys
import time

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype

from deploy.stack import choose_mode
from stack.topology import ZONE, Site


def describe(reply: dns.message.Message) -> str:
    flags = dns.flags.to_text(reply.flags).lower()
    records = sum(len(rrset) for rrset in reply.answer)
    return f"{len(reply.to_wire())} bytes, flags [{flags}], {records} answer record{'' if records == 1 else 's'}"


def lesson(name: str, rdtype: str, server: tuple[str, int]) -> int:
    host, port = server
    print(f"DNS over UDP, then TCP: {name} {rdtype} at {host}:{port}\n")
    steps = [
        ("UDP without EDNS (a classic client: answers up to 512 bytes)", dns.query.udp,
         dns.message.make_query(name, rdtype)),
        ("UDP with EDNS(0), offering 4096 bytes", dns.query.udp,
         dns.message.make_query(name, rdtype, use_edns=0, payload=4096)),
        ("TCP: what a client does after TC (a connection, a 2-byte length before each message)", dns.query.tcp,
         dns.message.make_query(name, rdtype)),
    ]
    truncated_over_udp = False
    for number, (title, send, query) in enumerate(steps, 1):
        started = time.perf_counter()
        try:
            reply = send(query, host, port=port, timeout=3)
        except (OSError, dns.exception.DNSException) as error:
            print(f"{number}. {title}\n   no answer: {error}\n")
            return 1
        took = (time.perf_counter() - started) * 1000
        print(f"{number}. {title}\n   query {len(query.to_wire())} bytes → reply {describe(reply)}, {took:.2f} ms")
        if reply.flags & dns.flags.TC:
            truncated_over_udp = True
            print("   TC is set: the answer did not fit, only the question came back. Retry over TCP.")
        elif send is dns.query.tcp and truncated_over_udp:
            size = len(reply.to_wire())
            print(f"   the whole answer, {size} bytes: more than a UDP answer from this server may hold")
        elif send is dns.query.udp:
            print("   the answer fits a datagram: no TC, so no TCP is needed")
        print()
    reply, used_tcp = dns.query.udp_with_fallback(dns.message.make_query(name, rdtype), host, port=port, timeout=3)
    print(f"dnspython's udp_with_fallback() does steps 1 and 3 by itself: over TCP: {used_tcp}, {describe(reply)}")
    print(f"dig does too:  dig @{host} -p {port} {name} {rdtype}      (+tcp: TCP from the start; "
          "+ignore: keep the truncated UDP answer)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", default=f"directory.{ZONE}")
    parser.add_argument("type", nargs="?", default="TXT", type=str.upper,
                        choices=sorted(dns.rdatatype.RdataType.__members__))
    args = parser.parse_args(argv)
    site = Site.from_env()
    return lesson(args.name, args.type, site.dns_endpoint(choose_mode(None, site)))


if __name__ == "__main__":
    sys.exit(main())
