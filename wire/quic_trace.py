"""`make trace HTTP=3 URL=…`: one request over HTTP/3, beside the same request over HTTP/1.1 on TCP and TLS 1.3.

    python -m wire.trace --http 3 [URL] [--format svg|html] [--out PATH]

The seed's TCP-vs-UDP lesson as browsers live it: a browser first reaches a site over TCP, reads Alt-Svc, and
moves to HTTP/3, which runs on UDP datagrams and rebuilds inside QUIC what TCP gave (connections, ordering,
retransmission) with TLS 1.3 built in. The trace does the same, and shows:
  1. DNS, as for any request.
  2. The same URL over TCP + TLS 1.3 (HTTP/1.1): its handshakes counted in round trips, and the Alt-Svc header.
  3. The QUIC handshake: every datagram, with the packets coalesced in it (Initial, Handshake, 1-RTT: read from
     their headers on the wire) and what the client's qlog says is inside each (CRYPTO frames carrying the TLS
     1.3 messages, ACKs, streams), and the round trips before the request's first byte: 1, against TCP's 2.
  4. The request on its own stream (bidirectional stream 0), HTTP/3's control and QPACK streams beside it.
  5. nginx's and the service's access lines for the request id (nginx logs it as HTTP/3.0; to the service it
     is plain HTTP/1.1 over TCP again, from nginx's pool).
  6. The response, and 7. the close: one CONNECTION_CLOSE frame, no FIN, no TIME_WAIT.
  8. Both side by side: round trips, packets, bytes and times.
The client's qlog (aioquic's, the qlog schema that qvis draws) is written beside the picture.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from deploy.stack import driver
from stack.topology import NGINX_TLS_PORT, ROOT, WEB_SERVERS
from wire import quic, sequence
from wire.capture import ACK, SYN, Packet
from wire.trace import (
    Connection,
    Exchange,
    Plan,
    Story,
    ask_dns,
    dns_messages,
    endpoint,
    exchange,
    label,
    log_line,
    open_capture,
    packet_label,
    server_timing,
    tell_nginx_line,
    upstream_connections,
    where_to_connect,
)

TLS_HANDSHAKE_RECORD = 0x16  # a TLS record of type handshake (ClientHello, ServerHello) starts with this byte
STREAM_ROLES = {"control": "HTTP/3 control stream (SETTINGS)", "qpack_encoder": "QPACK encoder stream",
                "qpack_decoder": "QPACK decoder stream", "push": "server push stream"}


@dataclass
class Side:
    """One transport's figures for the side-by-side table."""

    name: str
    round_trips: int | None  # before the request's first byte; None when not measurable here
    to_request_ms: float  # from the first packet to the request's first byte
    to_response_ms: float  # from the first packet to the response's first byte
    packets: int
    wire_bytes: int  # payload bytes both ways (TCP segments' or UDP datagrams'), the close included
    close: str


def tcp_round_trips(connection: Connection, request_at: float) -> int | None:
    """How many times the client waited for the server's handshake flight before the request's first byte: each
    SYN or payload the client sent, answered by a SYN-ACK or a TLS handshake record. None without packets."""
    if not connection.packets:
        return None
    trips, waiting = 0, False
    for packet in connection.packets:
        if packet.time >= request_at and packet.src == connection.client and packet.payload:
            break
        if packet.src == connection.client and (packet.has(SYN) or packet.payload):
            waiting = True
        elif packet.src == connection.server and waiting and (
                packet.has(SYN) or packet.payload[:1] == bytes([TLS_HANDSHAKE_RECORD])):
            trips, waiting = trips + 1, False
    return trips


def wire_time(datagram: quic.Datagram, captured: list[Packet], seen: quic.Exchange) -> float:
    """The kernel's timestamp for one of the client's datagrams (the same bytes between the same addresses), or
    the client's own clock when there is no capture."""
    ends = (seen.local, seen.peer) if datagram.sent else (seen.peer, seen.local)
    for packet in captured:
        if packet.transport == "udp" and (packet.src, packet.dst) == ends and packet.payload == datagram.payload:
            return packet.time
    return datagram.time


def relays(captured: list[Packet], seen: quic.Exchange) -> list[Packet]:
    """Docker's port proxy passing the client's datagrams on to nginx's container and back: the same payloads
    between other addresses (a userland proxy sends each from a socket of its own)."""
    payloads = {datagram.payload for datagram in seen.datagrams}
    mine = {seen.local, seen.peer}
    return [p for p in captured if p.transport == "udp" and p.payload in payloads and {p.src, p.dst} != mine]


def frames_text(packet: quic.Packet) -> str:
    """`ack, crypto x4, padding`: a packet's frames in order, repeats counted."""
    out: list[str] = []
    for name in packet.frame_names():
        if out and re.fullmatch(rf"{name}( x\d+)?", out[-1]):
            count = int(out[-1].split(" x")[1]) + 1 if " x" in out[-1] else 2
            out[-1] = f"{name} x{count}"
        else:
            out.append(name)
    return ", ".join(out) or "(frames not logged)"


def datagram_text(datagram: quic.Datagram, streams: dict[int, str]) -> str:
    """One datagram's packets, their frames and the TLS messages in them, for the story and the table."""
    parts = [f"{packet.kind} #{packet.number} ({packet.length} B): {frames_text(packet)}"
             for packet in datagram.packets]
    if not parts:  # qlog out of step: what the headers alone say
        parts = [f"{p.kind} ({p.length} B)" for p in quic.packets_of(datagram.payload)]
    text = " | ".join(parts)
    spare = len(datagram.payload) - sum(p.length for p in quic.packets_of(datagram.payload))
    if spare > 0:  # a client pads its Initial datagrams to 1200 bytes: a server answers at most 3x what it got
        text += f" + {spare} B of zeros after the packets"
    if datagram.tls:
        text += f"   TLS: {', '.join(datagram.tls)}"
    ids = datagram.stream_ids()
    if ids:
        text += "   streams: " + ", ".join(f"{i} ({streams.get(i, 'request' if i == 0 else 'stream')})" for i in ids)
    return text


def datagram_label(datagram: quic.Datagram) -> tuple[str, str]:
    """A few words for the picture's arrow, and its colour."""
    kinds = "+".join(dict.fromkeys(p.kind for p in datagram.packets)) or "QUIC"
    messages = list(dict.fromkeys(datagram.tls))
    said = messages if len(messages) <= 2 else [f"{messages[0]} … {messages[-1]} ({len(messages)} TLS messages)"]
    if 0 in datagram.stream_ids():
        said.append("HEADERS (the request)" if datagram.sent else "the response")
    if datagram.carries("connection_close"):
        return f"{kinds}: CONNECTION_CLOSE", "close"
    if said:
        return f"{kinds}: {', '.join(said)}"[:64], "data" if 0 in datagram.stream_ids() else "tls"
    return f"{kinds}: {frames_text(datagram.packets[0]) if datagram.packets else 'packet'}"[:64], "datagram"


def stream_roles(seen: quic.Exchange) -> dict[int, str]:
    """What each HTTP/3 stream carries, from the qlog's stream_type_set events (stream 0: the request)."""
    roles = {0: "the request and its response"}
    for trace in seen.qlog.get("traces", []):
        for event in trace.get("events", []):
            if event["name"] == "http:stream_type_set":
                roles[event["data"]["stream_id"]] = STREAM_ROLES.get(event["data"]["new"], event["data"]["new"])
    return roles


def stream_kind(stream_id: int) -> str:
    """RFC 9000 §2.1: the two low bits of a stream id say who opened it and whether both sides may send."""
    return (f"{'client' if stream_id % 2 == 0 else 'server'}-initiated, "
            f"{'unidirectional' if stream_id & 2 else 'bidirectional'}")


def tell_tcp(plan: Plan, story: Story, tcp: Exchange, packets: list[Packet]) -> Side:
    """Step 2: the same URL over TCP and TLS 1.3, counted."""
    mine = Connection(tcp.local, tcp.peer, packets)
    story.section(2, f"The same URL over TCP + TLS ({tcp.tls.version if tcp.tls else '?'}): "
                     f"{endpoint(tcp.local)} → {endpoint(tcp.peer)}")
    after = tcp.tls.finished if tcp.tls else tcp.connected
    request_at = next((p.time for p in mine.packets if p.src == tcp.local and p.payload and p.time >= after),
                      tcp.written)
    for packet in (p for p in mine.packets if p.time <= request_at):
        story.note(f"{story.at(packet.time)}  {mine.describe(packet)}")
    trips = tcp_round_trips(mine, request_at)
    if trips is None:
        story.note("(packets not captured: run as root to count the round trips on the wire)")
    else:
        story.note(f"round trips before the request's first byte: {trips} (TCP's SYN → SYN-ACK, then TLS's "
                   "ClientHello → ServerHello…Finished)")
    alt_svc = next((value for name, value in tcp.response.headers if name.lower() == "alt-svc"), None)
    story.note(f"HTTP/1.1 {tcp.response.status}; Alt-Svc: {alt_svc or '(none: this nginx offers no HTTP/3)'}")
    first = mine.packets[0].time if mine.packets else tcp.connect_started
    # The client's own time for the response's first byte: TLS 1.3's session tickets come first on the wire,
    # in records that look like the response's.
    return Side("HTTP/1.1, TLS 1.3, TCP", trips, (request_at - first) * 1000,
                ((tcp.first_byte_at or tcp.closed) - first) * 1000,
                len(mine.packets), sum(len(p.payload) for p in mine.packets),
                "FIN each way; TIME_WAIT kept by the side that closed first")


def alt_svc_port(tcp: Exchange | None, default: int) -> int:
    """The UDP port Alt-Svc names (h3=":8443"), else `default`."""
    value = next((v for name, v in tcp.response.headers if name.lower() == "alt-svc"), "") if tcp else ""
    found = re.search(r'h3=":(\d{1,5})"', value)
    return int(found.group(1)) if found else default


def tell_quic(plan: Plan, story: Story, seen: quic.Exchange, packets: list[Packet]) -> Side:
    """Step 3 and 4: the QUIC handshake, datagram by datagram, and the streams."""
    roles = stream_roles(seen)
    story.section(3, f"The QUIC handshake over UDP: {endpoint(seen.local)} → {endpoint(seen.peer)}")
    story.note("Initial packets are sealed with keys anyone can derive from the connection id (they hide nothing "
               "from the path); Handshake packets with keys from the TLS handshake; 1-RTT with the session's keys.")
    times = [wire_time(d, packets, seen) for d in seen.datagrams]
    request_at = next((t for d, t in zip(seen.datagrams, times, strict=True) if d.sent and 0 in d.stream_ids()),
                      seen.request_sent or seen.started)
    for datagram, when in zip(seen.datagrams, times, strict=True):
        if when > request_at:
            break
        arrow = "→" if datagram.sent else "←"
        story.note(f"{story.at(when)}  UDP {arrow} {len(datagram.payload):>5} B  {datagram_text(datagram, roles)}")
    trips = seen.round_trips_before_request()
    story.note(f"round trips before the request's first byte: {trips} (the ClientHello rides in the first "
               "Initial; the client's Finished and the request leave together, in one datagram)")
    story.note(f"negotiated: ALPN {seen.alpn}, TLS 1.3 (QUIC allows nothing older), {seen.cipher}")

    story.section(4, "The request: HEADERS on stream 0, QPACK-compressed")
    for name, value in seen.request_headers:
        story.note(f"  {name}: {value}")
    story.note("streams of this connection (one connection, many streams: a lost packet stalls only its own):")
    for stream_id in sorted({i for d in seen.datagrams for i in d.stream_ids()}):
        story.note(f"  {stream_id:>3}  {stream_kind(stream_id):<36} {roles.get(stream_id, 'stream')}")
    first = times[0] if times else seen.started
    answer = next((t for d, t in zip(seen.datagrams, times, strict=True) if not d.sent and 0 in d.stream_ids()),
                  seen.first_response_at or seen.closed or first)
    return Side("HTTP/3, QUIC (TLS 1.3 inside), UDP", trips, (request_at - first) * 1000, (answer - first) * 1000,
                len(seen.datagrams), sum(len(d.payload) for d in seen.datagrams),
                "one CONNECTION_CLOSE frame; no FIN, no TIME_WAIT")


def tell_after(plan: Plan, rid: str, story: Story, seen: quic.Exchange, packets: list[Packet]) -> None:
    """Steps 5 to 7: the access lines, the response and the close."""
    story.section(5, "nginx, then the service")
    tell_nginx_line(plan, rid, story)
    for connection in upstream_connections(packets, rid, (seen.local, seen.peer)):
        verdict = "a new connection" if connection.opened_here else "reused from nginx's keep-alive pool"
        story.note(f"{label(connection.server, plan.mode)} over TCP, HTTP/1.1: {endpoint(connection.client)} → "
                   f"{endpoint(connection.server)}, {verdict}")
    if plan.service:
        service_line = log_line(plan, plan.service.name, rid)
        server = WEB_SERVERS[plan.site.web_server].describe if plan.service.name == "web" else plan.service.server
        story.note(f"{plan.service.name} ({server}): {service_line or 'no access line with ' + rid}")
        if service_line:
            story.lines[plan.service.name] = service_line

    story.section(6, f"The response: HTTP/3 {seen.status}, {len(seen.body)} body bytes in DATA frames on stream 0")
    for name, value in seen.headers:
        story.note(f"  {name}: {value}")
    story.note(f"  {seen.body[:200].decode('utf-8', 'replace')}")

    story.section(7, "The close")
    closing = [d for d in seen.datagrams if d.carries("connection_close")]
    for datagram in closing:
        story.note(f"{story.at(wire_time(datagram, packets, seen))}  UDP → {len(datagram.payload)} B  "
                   f"{datagram_text(datagram, {})}")
    story.note(f"the client sent CONNECTION_CLOSE (H3_NO_ERROR, {seen.close_code:#x}) and forgot the connection; "
               "nginx drains it for a moment and answers nothing more" if closing else "no CONNECTION_CLOSE was sent")
    left = udp_sockets(seen.local)
    story.note("no FIN, no TIME_WAIT: UDP keeps no connection in the kernel, the QUIC state lived in the two "
               f"processes ({'ss finds no socket on ' + endpoint(seen.local) if not left else 'ss: ' + left})")


def udp_sockets(local: tuple[str, int]) -> str:
    """What `ss` still shows on the client's UDP address ('' when nothing: the socket is gone)."""
    try:
        out = subprocess.run(["ss", "-Hanu", "src", endpoint(local)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def side_by_side(sides: list[Side]) -> list[str]:
    rows = [("round trips before the request", lambda s: "?" if s.round_trips is None else str(s.round_trips)),
            ("first packet → request's first byte", lambda s: f"{s.to_request_ms:.3f} ms"),
            ("first packet → response's first byte", lambda s: f"{s.to_response_ms:.3f} ms"),
            ("TCP segments / UDP datagrams, the close included", lambda s: str(s.packets)),
            ("payload bytes both ways", lambda s: str(s.wire_bytes)),
            ("the close", lambda s: s.close)]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':<{width}}  " + "  |  ".join(s.name for s in sides)]
    lines += [f"{name:<{width}}  " + "  |  ".join(f"{show(s):<{len(s.name)}}" for s in sides) for name, show in rows]
    return lines


def tcp_hops(tcp: Exchange, tcp_rid: str, packets: list[Packet], first_hop: str) \
        -> list[tuple[Connection, str, str]]:
    """The HTTPS request's TCP connections, with the lanes each joins: the client's, Docker's own to nginx's TLS
    port (found by its SYN during the exchange: its bytes are TLS, so no request id shows), and nginx's to the
    service (whose HTTP/1.1 carries the id; its lane is "service")."""
    hops = [(Connection(tcp.local, tcp.peer, packets), "client", first_hop)]
    if first_hop == "docker":
        hops += [(Connection(p.src, p.dst, packets), "docker", "nginx") for p in packets
                 if p.transport == "tcp" and p.has(SYN) and not p.has(ACK) and p.dst[1] == NGINX_TLS_PORT
                 and p.dst != tcp.peer and tcp.connect_started - 0.05 <= p.time <= tcp.closed]
    return hops + [(c, "nginx", "service") for c in upstream_connections(packets, tcp_rid, (tcp.local, tcp.peer))]


def tcp_messages(connection: Connection, client_lane: str, server_lane: str, tcp: Exchange | None) \
        -> list[sequence.Message]:
    """One TCP connection's packets as arrows between two lanes."""
    messages = []
    for packet in connection.packets:
        forward = packet.src == connection.client
        what, kind = packet_label(packet, connection, tcp) if tcp else (packet.flag_names, "data")
        if client_lane == "docker" and packet.payload:  # Docker's copy of the client's TLS bytes
            what, kind = "TLS records, relayed", "tls"
        messages.append(sequence.Message(
            packet.time, client_lane if forward else server_lane, server_lane if forward else client_lane,
            f"TCP {what}", len(packet.payload), connection.describe(packet), kind, endpoint(packet.src),
            endpoint(packet.dst)))
    return messages


def diagram_of(plan: Plan, rid: str, story: Story, seen: quic.Exchange, packets: list[Packet],
               tcp: Exchange | None, tcp_rid: str = "") -> sequence.Diagram:
    """The request as a sequence diagram: first over HTTPS (TCP, its SYN to its FIN), then over HTTP/3 (the
    client's datagrams, Docker's relay of each, nginx's TCP upstream), on the same lanes and time axis."""
    relayed = relays(packets, seen)
    lanes = [sequence.Lane("client", "client (this trace)", f"udp {endpoint(seen.local)}")]
    if story.lookup:
        lanes.append(sequence.Lane("dns", "DNS (the stack's own)", endpoint(story.lookup.server)))
    if relayed:
        lanes.append(sequence.Lane("docker", "Docker's port proxy", f"udp {endpoint(seen.peer)}"))
    lanes.append(sequence.Lane("nginx", "nginx (HTTP/3)", relayed[0].dst[0] if relayed else endpoint(seen.peer)))
    service_lane = plan.service.name if plan.service else None
    if plan.service:
        lanes.append(sequence.Lane(plan.service.name, f"{plan.service.name}: {plan.service.framework}",
                                   "HTTP/1.1 from nginx's pool"))
    first_hop = "docker" if relayed else "nginx"
    diagram = sequence.Diagram(f"GET {plan.url} over HTTPS (TCP), then over HTTP/3 (QUIC) — request id {rid}",
                               story.t0, lanes)
    diagram.messages += dns_messages(story.lookup, packets)
    roles = stream_roles(seen)
    by_payload = {d.payload: d for d in seen.datagrams}
    for datagram in seen.datagrams:
        what, kind = datagram_label(datagram)
        source, target = ("client", first_hop) if datagram.sent else (first_hop, "client")
        ends = (endpoint(seen.local), endpoint(seen.peer))
        diagram.messages.append(sequence.Message(
            wire_time(datagram, packets, seen), source, target, what, len(datagram.payload),
            datagram_text(datagram, roles), kind, *(ends if datagram.sent else ends[::-1])))
    for packet in relayed:
        datagram = by_payload[packet.payload]
        what, kind = datagram_label(datagram)
        source, target = ("docker", "nginx") if datagram.sent else ("nginx", "docker")
        diagram.messages.append(sequence.Message(packet.time, source, target, what, len(packet.payload),
                                                 "relayed: " + datagram_text(datagram, roles), kind,
                                                 endpoint(packet.src), endpoint(packet.dst)))
    # TCP: the HTTPS request's connections, then nginx's to the service for the HTTP/3 one (a pooled connection
    # that carried both requests is drawn once)
    hops = tcp_hops(tcp, tcp_rid, packets, first_hop) if tcp else []
    hops += [(c, "nginx", "service") for c in upstream_connections(packets, rid, (seen.local, seen.peer))]
    drawn: set[frozenset] = set()
    for connection, client_lane, server_lane in hops:
        if frozenset((connection.client, connection.server)) not in drawn:
            drawn.add(frozenset((connection.client, connection.server)))
            server_lane = service_lane or "nginx" if server_lane == "service" else server_lane
            diagram.messages += tcp_messages(connection, client_lane, server_lane, tcp)
    diagram.messages.sort(key=lambda message: message.time)
    timing = server_timing(seen.headers)  # the HTTP/3 request's: its spans start at its own first bytes
    after = seen.datagrams[0].time if seen.datagrams else 0.0
    arrived = next((m.time for m in diagram.messages if m.target == "nginx" and m.kind == "data" and m.time >= after),
                   None)
    if arrived is not None and "edge" in timing:
        diagram.spans.append(sequence.Span("nginx", arrived, timing["edge"], "nginx (edge)"))
    reached = next((m.time for m in diagram.messages if m.target == service_lane and m.kind == "data"
                    and m.time >= after), None)
    if service_lane and reached is not None and "app" in timing:
        diagram.spans.append(sequence.Span(service_lane, reached, timing["app"], "app"))
    diagram.notes = [f"{program}: {line}" for program, line in story.lines.items()]
    return diagram


def trace(plan: Plan, form: str | None = None, out: Path | None = None) -> int:
    """The whole story; 0 when the HTTP/3 request was answered, 2 when this stack's nginx offers no HTTP/3."""
    http3 = driver(plan.mode, plan.site).http3()
    if not http3.offered:
        print(http3.said)
        return 2
    rid, tcp_rid = f"trace-{secrets.token_hex(8)}", f"trace-{secrets.token_hex(8)}"
    print(f"Tracing GET {plan.url} over HTTP/3   ({plan.mode} stack, request id {rid}; over TCP first: {tcp_rid})")
    capture = open_capture("times are the client's")
    with capture or contextlib.nullcontext():
        story = Story(time.time())
        answer = ask_dns(plan, story)
        address = where_to_connect(plan, answer, story)
        tcp = exchange(plan, address, tcp_rid, keep_alive=False, story=story)
        seen = quic.fetch(plan.url, plan.site.tls.ca, connect_to=(address[0], alt_svc_port(tcp, address[1])),
                          request_id=rid)
        time.sleep(0.2)  # the last datagrams' and FINs' echoes through Docker's proxy
    packets = capture.snapshot() if capture else []
    sides = [tell_tcp(plan, story, tcp, packets)] if tcp else []
    if seen.status is None:
        story.section(3, "The QUIC handshake")
        story.note(f"no HTTP/3 answer: {seen.error}")
        return 1
    sides.append(tell_quic(plan, story, seen, packets))
    tell_after(plan, rid, story, seen, packets)
    story.section(8, "Side by side, the same URL")
    for line in side_by_side(sides):
        story.note(line)
    story.note("on loopback a round trip costs microseconds and these times are the programs' own work; across a "
               "network each round trip is the distance there and back: at 50 ms, TCP + TLS 1.3 waits 100 ms "
               "before the request leaves, QUIC 50 ms")
    if form:
        path = sequence.write(diagram_of(plan, rid, story, seen, packets, tcp, tcp_rid), form, out, rid)
        qlog = path.with_suffix(".qlog")
        qlog.write_text(json.dumps(seen.qlog, indent=1))
        print(f"\nThe picture: {path} ({form}: a lane per party, an arrow per datagram and packet)")
        print(f"The client's qlog: {qlog.relative_to(ROOT) if qlog.is_relative_to(ROOT) else qlog}")
    return 0
