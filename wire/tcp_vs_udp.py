"""`make tcp-vs-udp FORMAT=svg|html`: one time request over TCP, then the same over UDP, captured and drawn side by side
as one sequence diagram (wire/sequence.py). TCP's arrows: the three-way handshake, the request, the reply, the
four-way close; UDP's: one datagram out, one back. The picture is the study notes' contrast (a connection and a
byte stream against datagrams) with the kernel's own timestamps.

    python -m wire.tcp_vs_udp [--format svg|html] [--out PATH] [HOST:PORT]

Packet capture needs root or CAP_NET_RAW (as make trace's); without it this says so and draws nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from services.sockets.client import ask_time
from stack.topology import STREAM_SERVICES, Site
from wire import sequence
from wire.capture import FIN, RST, Capture, CaptureUnavailable, Packet

TIME_TCP = next(s for s in STREAM_SERVICES if s.name == "time-tcp")


def _address(packet_end: tuple[str, int]) -> str:
    return f"{packet_end[0]}:{packet_end[1]}"


def diagram_of(packets: list[Packet], tcp_local: tuple[str, int], udp_local: tuple[str, int],
               server: tuple[str, int], t0: float) -> sequence.Diagram:
    """Every packet between each client socket and the server, on lanes of their own."""
    where = _address(server)
    diagram = sequence.Diagram(f"The time service at {where}: TCP, then UDP", t0, [
        sequence.Lane("tcp-client", "TCP client", _address(tcp_local)),
        sequence.Lane("tcp-server", "server, TCP", where),
        sequence.Lane("udp-client", "UDP client", _address(udp_local)),
        sequence.Lane("udp-server", "server, UDP", where),
    ])
    for packet in packets:
        if packet.transport == "tcp" and packet.between(tcp_local, server):
            forward = packet.src == tcp_local
            lanes = ("tcp-client", "tcp-server") if forward else ("tcp-server", "tcp-client")
            closing = packet.has(FIN) or packet.has(RST)
            label = packet.payload.decode("latin-1").strip()[:32] if packet.payload else packet.flag_names
            kind = "close" if closing else "data" if packet.payload else "control"
            detail = f"{packet.flag_names} seq={packet.seq} ack={packet.ack} win={packet.window}"
        elif packet.transport == "udp" and packet.between(udp_local, server):
            forward = packet.src == udp_local
            lanes = ("udp-client", "udp-server") if forward else ("udp-server", "udp-client")
            label = "datagram: " + packet.payload.decode("latin-1").strip()[:24]
            kind, detail = "datagram", f"one UDP datagram of {len(packet.payload)} bytes: no handshake, no close"
        else:
            continue
        diagram.messages.append(sequence.Message(packet.time, *lanes, label, len(packet.payload), detail, kind,
                                                 _address(packet.src), _address(packet.dst)))
    tcp_count = sum(m.source.startswith("tcp") for m in diagram.messages)
    udp_count = len(diagram.messages) - tcp_count
    diagram.notes = [f"TCP: {tcp_count} packets for one request and its reply (handshake, data, ACKs, close)",
                     f"UDP: {udp_count} datagrams: the request and the reply, nothing else"]
    return diagram


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("address", nargs="?", help="HOST:PORT of the time service (default: nginx's stream port)")
    parser.add_argument("--format", choices=("svg", "html"), default="svg")
    parser.add_argument("--out", type=Path, help="default: reports/tcp-vs-udp-<time>.<format>")
    args = parser.parse_args(argv)
    if args.address:
        host, _, port = args.address.rpartition(":")
        server = (host or "127.0.0.1", int(port))
    else:
        site = Site.from_env()
        server = (site.public_host, site.public_port_of(TIME_TCP))
    try:
        capture = Capture()
    except CaptureUnavailable as reason:
        print(f"No picture: {reason}")
        return 1
    with capture:
        t0 = time.time()
        tcp = ask_time(*server, transport="tcp")
        udp = ask_time(*server, transport="udp")
        capture.wait_for(lambda packets: sum(p.has(FIN) for p in packets if p.between(tcp.local, server)) >= 2,
                         timeout=2)
        time.sleep(0.05)  # the last ACK of the close
    diagram = diagram_of(capture.snapshot(), tcp.local, udp.local, server, t0)
    path = sequence.write(diagram, args.format, args.out, f"tcp-vs-udp-{time.strftime('%Y%m%d-%H%M%S')}")
    for note in diagram.notes:
        print(note)
    print(f"The picture: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
