"""`make trace URL=…`: one request followed through every hop of the stack, as a timed story.

    python -m wire.trace [URL] [--tls] [--keep-alive] [-X METHOD] [-d BODY] [--format svg|html] [--out PATH]
    make trace URL=/catalog/json             (a path: through nginx, by the name stack.internal)
    make trace URL=/catalog/json FORMAT=html (the same story, and a sequence diagram of it: reports/trace-*.html)
    make trace URL=/catalog/json TLS=1       (the same over HTTPS: the TLS handshake between TCP and HTTP)
    make trace URL=http://web.stack.internal:8001/web/json   (native mode: straight to one service)

The seed's list of what happens after you type a URL, each step seen rather than told:
  1. DNS: the URL's name asked of the stack's own DNS server over UDP: question, answer, TTL, time.
  2. The TCP three-way handshake, captured from the wire: SYN, SYN-ACK, ACK with sequence numbers,
     options and the kernel's timestamps. Over HTTPS, then the TLS handshake: its records on the wire, the
     version, cipher suite and ALPN protocol agreed, the certificate nginx showed, and how long it took.
  3. The HTTP request: the exact bytes written to the socket.
  4. nginx, the reverse proxy: its access line for this request id (connect, header and response times
     to the upstream) and the upstream connection that carried the request, new or from its keep-alive pool.
  5. The service (gunicorn, Tornado, aiohttp) and its app: their own access line for the same request id.
  6. The response: status line, headers, and how the body's end was found.
  7. The close: FIN and ACK in order, which side closed first, and the TIME_WAIT it keeps (`ss`).
Packets are captured with an AF_PACKET socket (root or CAP_NET_RAW). Whatever cannot be seen here — no
capture permission, no `ss`, a log line not yet written — is said so, and the story goes on without it.
With --format, the same request is also drawn as a sequence diagram (wire/sequence.py): a lane per party, an
arrow per captured packet with its bytes and time, and each hop's own time from Server-Timing.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import re
import secrets
import socket
import ssl
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

from deploy.stack import choose_mode, driver
from stack.topology import HTTP_SERVICES, NGINX_PORT, WEB_SERVERS, WEB_UWSGI_PORT, ZONE, Service, Site
from wire import sequence, uwsgi
from wire.capture import ACK, FIN, RST, SYN, Capture, CaptureUnavailable, Packet
from wire.rawhttp import (
    ProtocolError,
    Response,
    WireReader,
    build_request,
    print_received,
    print_sent,
    read_response,
    tcp_state,
    time_wait_lines,
)

USER_AGENT = "stack-trace/1"
LOG_WAIT_S = 5.0  # services flush their access lines twice a second


@dataclass
class Plan:
    """What the trace will do, worked out from the URL and the running stack."""

    url: str
    name: str  # the host part of the URL
    port: int
    path: str
    method: str
    body: bytes
    service: Service | None  # the service whose prefix the path falls under
    mode: str
    site: Site
    tls: bool = False  # https: a TLS handshake between TCP's and the request

    @property
    def host_header(self) -> str:
        return f"{self.name}:{self.port}"

    @property
    def direct(self) -> bool:
        """True when the URL names a service's own port: no nginx on this path."""
        return self.service is not None and self.port == self.service.port


def plan_of(url: str, method: str | None, body: str | None, site: Site, mode: str, tls: bool = False) -> Plan:
    if "://" not in url:
        scheme, port = ("https", site.tls_port) if tls else ("http", site.public_port)
        url = f"{scheme}://{ZONE}:{port}{url if url.startswith('/') else '/' + url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"make trace needs an http:// or https:// URL or a path, not {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    matching = [s for s in HTTP_SERVICES if path.startswith(s.prefix)]
    secure = parts.scheme == "https"
    return Plan(url, parts.hostname, parts.port or (site.tls_port if secure else site.public_port), path,
                method or ("POST" if body else "GET"), (body or "").encode(), matching[0] if matching else None,
                mode, site, secure)


@dataclass
class Lookup:
    """The DNS question and answer as the client timed them."""

    server: tuple[str, int]
    sent: float
    received: float
    question: str
    query_bytes: int
    answer: str
    answer_bytes: int


class Story:
    """The trace told as text, step by step; it keeps what the picture needs (the DNS lookup, the log lines)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lookup: Lookup | None = None
        self.lines: dict[str, str] = {}  # program -> its access line for this request

    def at(self, when: float) -> str:
        return f"+{(when - self.t0) * 1000:8.3f} ms"

    @staticmethod
    def section(number: int | str, title: str) -> None:
        print(f"\n{number}. {title}")

    @staticmethod
    def note(text: str) -> None:
        print(f"   {text}")


def endpoint(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


class Connection:
    """The captured packets of one TCP connection, with sequence numbers shown relative after the handshake
    (as tcpdump does)."""

    def __init__(self, client: tuple[str, int], server: tuple[str, int], packets: list[Packet]) -> None:
        self.client, self.server = client, server
        self.packets = [p for p in packets if p.transport == "tcp" and p.between(client, server)]
        # Each side's initial sequence number, from its SYN; for a connection opened before the trace (a
        # pooled one), numbers count from the first byte seen instead.
        self.isn: dict[tuple[str, int], int] = {}
        for packet in self.packets:
            if packet.has(SYN):
                self.isn[packet.src] = packet.seq
            else:
                self.isn.setdefault(packet.src, packet.seq - 1)

    @property
    def opened_here(self) -> bool:
        return any(p.has(SYN) and not p.has(ACK) and p.src == self.client for p in self.packets)

    def describe(self, packet: Packet) -> str:
        if packet.has(SYN):
            numbers = f"seq={packet.seq}" + (f" ack={packet.ack}" if packet.has(ACK) else "")
        else:
            seq = (packet.seq - self.isn[packet.src]) % 2**32
            ack = (packet.ack - self.isn[packet.dst]) % 2**32 if packet.dst in self.isn else packet.ack
            numbers = f"seq={seq} ack={ack}"
        options = f" [{', '.join(packet.options)}]" if packet.has(SYN) and packet.options else ""
        length = f" len={len(packet.payload)}" if packet.payload else ""
        return (f"{endpoint(packet.src):>21} → {endpoint(packet.dst):<21} {packet.flag_names:<8} "
                f"{numbers} win={packet.window}{length}{options}")


def ask_dns(plan: Plan, story: Story) -> str | None:
    """Step 1: the stack's DNS server, over UDP, for the URL's name. The answer, or None."""
    story.section(1, f"DNS: {plan.name} becomes an address")
    try:
        ipaddress.ip_address(plan.name)
        story.note("the URL names an address, so there is nothing to look up")
        return plan.name
    except ValueError:
        pass
    server = plan.site.dns_endpoint(plan.mode)
    query = dns.message.make_query(plan.name, "A")
    sent = time.time()
    try:
        reply = dns.query.udp(query, server[0], port=server[1], timeout=2)
    except (OSError, dns.exception.DNSException) as error:
        story.note(f"{story.at(sent)}  no answer from the stack's DNS server at {endpoint(server)}: {error}")
        return None
    received = time.time()
    story.note(f"{story.at(sent)}  query   UDP → {endpoint(server)}  {plan.name}. IN A   "
               f"(id {query.id}, {len(query.to_wire())} bytes)")
    answers = [(item.address, rrset.ttl) for rrset in reply.answer if rrset.rdtype == 1 for item in rrset]
    flags = "authoritative (AA)" if reply.flags & dns.flags.AA else "not authoritative"
    rcode = dns.rcode.to_text(reply.rcode())
    shown = ", ".join(f"A {address} TTL {ttl} s" for address, ttl in answers) or "no address"
    story.note(f"{story.at(received)}  answer  UDP ← {endpoint(server)}  {shown}; {rcode}, {flags}, "
               f"{len(reply.to_wire())} bytes, {(received - sent) * 1000:.2f} ms round trip")
    story.lookup = Lookup(server, sent, received, f"{plan.name}. IN A", len(query.to_wire()), f"{shown}; {rcode}",
                          len(reply.to_wire()))
    return answers[0][0] if answers else None


def where_to_connect(plan: Plan, answer: str | None, story: Story) -> tuple[str, int]:
    nginx_names = (ZONE, f"nginx.{ZONE}")
    if plan.mode == "compose" and plan.name in nginx_names:
        published = plan.site.tls_port if plan.tls else plan.site.public_port
        if answer:
            story.note(f"(that is nginx's address inside Compose's network; from this host Docker publishes it "
                       f"on {plan.site.public_host}:{published}, so the trace connects there)")
        else:
            story.note(f"(connecting to nginx's published address {plan.site.public_host}:{published})")
        return plan.site.public_host, published
    if answer is None:
        story.note(f"(connecting to the stack's public address {plan.site.public_host} instead)")
        return plan.site.public_host, plan.port
    return answer, plan.port


def log_line(plan: Plan, program: str, rid: str) -> str | None:
    deadline = time.monotonic() + LOG_WAIT_S
    stack = driver(plan.mode, plan.site)
    while True:
        lines = [line for line in stack.log_text(program).splitlines() if rid in line]
        if lines or time.monotonic() > deadline:
            return lines[-1].strip() if lines else None
        time.sleep(0.25)


def explain_nginx_line(line: str) -> str:
    fields = dict(re.findall(r"(rt|uct|uht|urt|ups|conn)=(\S+)", line))
    if "ups" not in fields or fields["ups"] == "-":
        return "nginx answered this itself: no upstream"
    connection, number = (fields.get("conn", "?/?").split("/") + ["?"])[:2]
    return (f"upstream {fields['ups']}: connecting took {fields.get('uct')} s, its headers came after "
            f"{fields.get('uht')} s, the whole exchange {fields.get('urt')} s; nginx's total {fields.get('rt')} s. "
            f"Client connection #{connection}, request {number} on it.")


def tell_nginx_line(plan: Plan, rid: str, story: Story) -> None:
    """nginx's access line for this request id, and what its timings say."""
    line = log_line(plan, "nginx", f"rid={rid}")
    story.note(f"access line: {line}" if line else f"no access line with rid={rid} within {LOG_WAIT_S:g} s")
    if line:
        story.lines["nginx"] = line
        story.note(explain_nginx_line(line))


def upstream_connections(packets: list[Packet], rid: str, mine: tuple[tuple[str, int], tuple[str, int]]) \
        -> list[Connection]:
    """The other TCP connections that carried this request id: nginx's to the service (and, in Compose,
    Docker's proxy to nginx), in the order the request crossed them."""
    servers = {NGINX_PORT, WEB_UWSGI_PORT, *(s.port for s in HTTP_SERVICES)}
    found: list[Connection] = []
    seen: set[frozenset] = {frozenset(mine)}
    for packet in packets:
        if packet.transport == "tcp" and rid.encode() in packet.payload:
            key = frozenset((packet.src, packet.dst))
            if key not in seen:
                seen.add(key)
                # The server is the side on a server's port (the response carries the id too).
                client, server = ((packet.dst, packet.src) if packet.src[1] in servers and
                                  packet.dst[1] not in servers else (packet.src, packet.dst))
                found.append(Connection(client, server, packets))
    return found


def label(server: tuple[str, int], mode: str) -> str:
    if server[1] == WEB_UWSGI_PORT:
        return "nginx → web's uWSGI, in the uwsgi protocol"
    for service in HTTP_SERVICES:
        if server[1] == service.port:
            return f"nginx → {service.name}"
    if server[1] == NGINX_PORT and mode == "compose":
        return "Docker's port proxy → nginx's container"
    return "→ " + endpoint(server)


@dataclass
class Exchange:
    """What the client did and saw, with the times it did it (time.time())."""

    request: bytes
    response: Response
    local: tuple[str, int]
    peer: tuple[str, int]
    connect_started: float
    connected: float
    written: float
    first_byte_at: float | None
    state_after_server_fin: str | None  # TCP_INFO's state once the server's FIN arrived, if it closed first
    closed: float  # when this side's close() was done
    tls: Handshake | None = None


@dataclass
class Handshake:
    """The TLS handshake as the client saw it."""

    started: float
    finished: float
    version: str
    cipher: str
    bits: int
    alpn: str | None
    subject: str
    issuer: str
    names: list[str]
    expires: str


def tls_context(site: Site) -> ssl.SSLContext:
    """A client context that trusts the stack's own CA (and nothing else) and offers HTTP/1.1 by ALPN: the
    trace writes HTTP/1.1 by hand."""
    context = ssl.create_default_context(cafile=str(site.tls.ca))
    context.set_alpn_protocols(["http/1.1"])
    return context


def handshake(sock: socket.socket, plan: Plan) -> tuple[ssl.SSLSocket, Handshake]:
    """The TLS handshake on a connected socket; raises ssl.SSLError (a certificate the stack's CA did not sign,
    a name it does not cover, a version refused)."""
    started = time.time()
    secure = tls_context(plan.site).wrap_socket(sock, server_hostname=plan.name)
    finished = time.time()
    name, version, bits = secure.cipher() or ("?", "?", 0)
    peer = secure.getpeercert() or {}

    def flat(field: str) -> str:
        return ", ".join(f"{key}={value}" for rdn in peer.get(field, ()) for key, value in rdn)

    return secure, Handshake(started, finished, secure.version() or version, name, bits,
                             secure.selected_alpn_protocol(), flat("subject"), flat("issuer"),
                             [value for _, value in peer.get("subjectAltName", ())], str(peer.get("notAfter", "?")))


def alpn_choice(address: tuple[str, int], plan: Plan, offered: list[str]) -> str | None:
    """What nginx picks when a client offers `offered` (a browser offers h2 first): one handshake, no request."""
    context = tls_context(plan.site)
    context.set_alpn_protocols(offered)
    try:
        with socket.create_connection(address, timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=plan.name) as secure:
            return secure.selected_alpn_protocol()
    except (OSError, ssl.SSLError):
        return None


def exchange(plan: Plan, address: tuple[str, int], rid: str, keep_alive: bool, story: Story) -> Exchange | None:
    """Steps 2, 3 and 6 from the client's side: connect, write the request by hand, read the response, close."""
    headers = [("User-Agent", USER_AGENT), ("Accept", "*/*"), ("X-Request-ID", rid)]
    if plan.body:
        headers.append(("Content-Type", "application/json"))
    if not keep_alive:
        headers.append(("Connection", "close"))
    request = build_request(plan.method, plan.path, plan.host_header, headers, plan.body)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        connect_started = time.time()
        try:
            sock.connect(address)
        except OSError as error:
            story.section(2, f"TCP three-way handshake with {endpoint(address)}")
            story.note(f"connect() failed: {error}. Is the stack up? (make up; make ps)")
            return None
        connected = time.time()
        local, peer = sock.getsockname(), sock.getpeername()
        channel, tls = sock, None
        if plan.tls:
            try:
                channel, tls = handshake(sock, plan)
            except (OSError, ssl.SSLError) as error:
                story.section("2b", f"TLS handshake with {endpoint(address)}")
                story.note(f"the handshake failed: {error}. The trace trusts only {plan.site.tls.ca}.")
                return None
        channel.sendall(request)
        written = time.time()
        reader = WireReader(channel)
        try:
            response = read_response(reader, plan.method)
            state = None
            if not keep_alive:
                reader.until_close()  # b"" once the server's FIN has arrived
                state = tcp_state(sock)
        except (OSError, ProtocolError) as error:
            story.note(f"reading the response failed: {error}")
            return None
    return Exchange(request, response, local, peer, connect_started, connected, written, reader.first_byte_at,
                    state, time.time(), tls)


def tell(plan: Plan, rid: str, story: Story, seen: Exchange, packets: list[Packet], captured: bool) -> None:
    """Steps 2 to 7, from the packets, the client's own view and the access logs."""
    mine = Connection(seen.local, seen.peer, packets)
    story.section(2, f"TCP three-way handshake: {endpoint(seen.local)} → {endpoint(seen.peer)}")
    handshake = [p for p in mine.packets if p.time <= seen.written][:3]
    for packet in handshake:
        story.note(f"{story.at(packet.time)}  {mine.describe(packet)}")
    if not handshake:
        story.note("(packets not captured)")
    story.note(f"connect() returned after {(seen.connected - seen.connect_started) * 1000:.3f} ms: one round "
               "trip; the kernel completed the handshake before the server's accept() took the connection")

    if seen.tls:
        tell_handshake(plan, story, seen, mine)
    after = seen.tls.finished if seen.tls else 0.0
    sent = [p for p in mine.packets if p.src == seen.local and p.payload and p.time >= after]
    on_the_wire = sent[0].time if sent else seen.written
    sealed = " inside TLS application-data records (what follows is the plaintext)" if seen.tls else ""
    story.section(3, f"The HTTP request: {len(seen.request)} bytes{sealed}, on the wire at "
                     f"{story.at(on_the_wire).strip()}")
    print_sent(seen.request)
    for packet in sent:
        story.note(f"{story.at(packet.time)}  {mine.describe(packet)}")

    if plan.direct:
        story.section(4, "nginx: not on this path (the URL names the service's own port)")
    else:
        story.section(4, "nginx, the reverse proxy")
        tell_nginx_line(plan, rid, story)
    others = upstream_connections(packets, rid, (seen.local, seen.peer))
    for connection in others:
        verdict = ("a new connection: its SYN is in the capture" if connection.opened_here else
                   "no SYN during this trace: an open connection reused from the keep-alive pool")
        story.note(f"{label(connection.server, plan.mode)}: {endpoint(connection.client)} → "
                   f"{endpoint(connection.server)}, {verdict}")
        for packet in connection.packets:
            story.note(f"  {story.at(packet.time)}  {connection.describe(packet)}")
        if connection.server[1] == WEB_UWSGI_PORT:
            tell_uwsgi_packet(story, connection, seen)
    if captured and not others and not plan.direct and plan.service:
        story.note("(no upstream packet with this request id was captured)")

    if plan.service:
        server = WEB_SERVERS[plan.site.web_server].describe if plan.service.name == "web" else plan.service.server
        story.section(5, f"{plan.service.name}: {plan.service.framework} on {server}")
        line = log_line(plan, plan.service.name, rid)
        story.note(f"access line: {line}" if line else f"no access line with {rid} within {LOG_WAIT_S:g} s")
        if line:
            story.lines[plan.service.name] = line
    else:
        story.section(5, "no service: nginx answered this path itself")

    replies = [p for p in mine.packets if p.src == seen.peer and p.payload and p.time >= on_the_wire]
    first = replies[0].time if replies else seen.first_byte_at or time.time()
    story.section(6, f"The response: first byte at {story.at(first).strip()}, "
                     f"{(first - on_the_wire) * 1000:.3f} ms after the request went out")
    for packet in replies:
        story.note(f"{story.at(packet.time)}  {mine.describe(packet)}")
    print_received(seen.response)

    story.section(7, "The close")
    last_data = max((p.time for p in mine.packets if p.payload), default=first)
    closing = [p for p in mine.packets if p.has(FIN) or (p.time > last_data and not p.payload)]
    for packet in closing:
        story.note(f"{story.at(packet.time)}  {mine.describe(packet)}")
    fins = [p for p in mine.packets if p.has(FIN)]
    server_closed_first = fins[0].src == seen.peer if fins else seen.state_after_server_fin is not None
    closer = ("nginx" if not plan.direct else "the server") if server_closed_first else "the client (this trace)"
    why = " (the request said Connection: close)" if seen.state_after_server_fin else ""
    story.note(f"{closer} sent the first FIN{why}" if fins else f"{closer} closed first{why}")
    if seen.state_after_server_fin:
        story.note(f"after the server's FIN this socket was {seen.state_after_server_fin} until close()")
    waits = time_wait_lines(seen.local, seen.peer)
    for line in waits:
        story.note(f"ss: {line}   (the side that closed first keeps it for 60 s on Linux)")
    if not waits:
        story.note("no TIME_WAIT socket visible from here (`ss` missing, or it lives in another network namespace)")
    ended = closing[-1].time if closing else seen.closed
    print(f"\nFrom the DNS query to the last packet: {(ended - story.t0) * 1000:.3f} ms "
          f"(the trace itself took longer: it waits for the services' access lines).")


def tell_uwsgi_packet(story: Story, connection: Connection, seen: Exchange) -> None:
    """The uwsgi packet nginx sent in place of the HTTP request, decoded (wire/uwsgi.py)."""
    sent = b"".join(p.payload for p in connection.packets if p.src == connection.client and p.payload)
    try:
        packet = uwsgi.decode(sent)
    except uwsgi.PacketError as error:
        story.note(f"the bytes nginx sent are no complete uwsgi packet: {error}")
        return
    story.note(f"what nginx sent instead of the {len(seen.request)}-byte HTTP request: one uwsgi packet of "
               f"{packet.size} bytes (wire/uwsgi.py decodes it). The request line and headers arrive parsed, "
               "under the names the WSGI environ uses, each with its length in front, so uWSGI reads sizes "
               "instead of searching for CRLFs; and with no keep-alive in the protocol, a connection per request:")
    for line in uwsgi.describe(packet):
        story.note(f"  {line}")


def tell_handshake(plan: Plan, story: Story, seen: Exchange, mine: Connection) -> None:
    """Step 2b: the TLS handshake, between TCP's and the request's first byte."""
    shake = seen.tls
    assert shake is not None
    story.section("2b", f"TLS handshake: {shake.version}, {(shake.finished - shake.started) * 1000:.3f} ms")
    for packet in (p for p in mine.packets if p.payload and p.time <= shake.finished):
        story.note(f"{story.at(packet.time)}  {mine.describe(packet)}  (TLS records)")
    story.note(f"{story.at(shake.started)}  ClientHello sent: TLS 1.2 and 1.3, ALPN offers http/1.1, SNI {plan.name}")
    story.note(f"{story.at(shake.finished)}  handshake done: {shake.version}, cipher {shake.cipher} "
               f"({shake.bits}-bit key), ALPN agreed: {shake.alpn or 'none'}")
    story.note(f"certificate: {shake.subject}; issued by {shake.issuer}; valid until {shake.expires}")
    story.note(f"it names: {', '.join(shake.names)}; verified against {plan.site.tls.ca}")
    story.note(f"TCP connected → first request byte: {(seen.written - seen.connected) * 1000:.3f} ms, of which the "
               f"handshake {(shake.finished - shake.started) * 1000:.3f} ms "
               f"({'one round trip: TLS 1.3' if shake.version == 'TLSv1.3' else 'two round trips: TLS 1.2'})")
    h2 = alpn_choice(seen.peer if plan.mode == "native" else (plan.site.public_host, plan.site.tls_port), plan,
                     ["h2", "http/1.1"])
    story.note(f"a client offering h2 first (browsers, curl --http2) is given: {h2 or 'no answer'} — this trace "
               "speaks HTTP/1.1 so that its bytes can be shown")


HTTP_START = re.compile(rb"^(?:[A-Z]+ \S+ HTTP/1\.[01]|HTTP/1\.[01] \d{3}[^\r\n]*)")


def packet_label(packet: Packet, connection: Connection, seen: Exchange) -> tuple[str, str]:
    """What one packet is, in a few words, and its kind (the diagram's colour)."""
    if packet.has(FIN) or packet.has(RST):
        return packet.flag_names, "close"
    if not packet.payload:
        return packet.flag_names, "control"
    mine = connection.client == seen.local
    if mine and seen.tls:
        during = packet.time <= seen.tls.finished
        return ("TLS handshake records" if during else "TLS application data (HTTP inside)"), "tls"
    if connection.server[1] == WEB_UWSGI_PORT and packet.src == connection.client:
        return "uwsgi packet (CGI variables)", "data"
    start = HTTP_START.match(packet.payload)
    if start:
        return start.group(0).decode("latin-1")[:48], "data"
    return f"{packet.flag_names}: more of the message", "data"


def server_timing(headers: Iterable[tuple[str, str]]) -> dict[str, float]:
    """Server-Timing's entries (name -> seconds), from every such header of a response."""
    entries: dict[str, float] = {}
    for name, value in headers:
        if name.lower() == "server-timing":
            for entry in value.split(","):
                match = re.match(r"\s*([\w-]+).*?;\s*dur=([\d.]+)", entry)
                if match:
                    entries[match.group(1)] = float(match.group(2)) / 1000
    return entries


def dns_messages(lookup: Lookup | None, packets: list[Packet]) -> list[sequence.Message]:
    """The DNS question and answer between the "client" and "dns" lanes: the captured datagrams, or without a
    capture the client's own clock."""
    if lookup is None:
        return []
    captured = [p for p in packets if p.transport == "udp" and lookup.server in (p.src, p.dst)]
    messages = []
    for packet in captured:
        asked = packet.dst == lookup.server
        messages.append(sequence.Message(
            packet.time, "client" if asked else "dns", "dns" if asked else "client",
            f"DNS {'query ' + lookup.question if asked else 'answer ' + lookup.answer}"[:60], len(packet.payload),
            f"UDP {endpoint(packet.src)} → {endpoint(packet.dst)}, {len(packet.payload)} bytes", "dns",
            endpoint(packet.src), endpoint(packet.dst)))
    if not captured:
        messages += [
            sequence.Message(lookup.sent, "client", "dns", f"DNS query {lookup.question}", lookup.query_bytes,
                             "UDP, timed by the client", "dns", "client", endpoint(lookup.server)),
            sequence.Message(lookup.received, "dns", "client", f"DNS answer {lookup.answer}"[:60],
                             lookup.answer_bytes, "UDP, timed by the client", "dns", endpoint(lookup.server), "client")]
    return messages


def diagram_of(plan: Plan, rid: str, story: Story, seen: Exchange, packets: list[Packet]) -> sequence.Diagram:
    """The request as a sequence diagram: every packet of every connection that carried it, DNS included."""
    mine = Connection(seen.local, seen.peer, packets)
    others = upstream_connections(packets, rid, (seen.local, seen.peer))
    proxied_by_docker = any(c.server[1] == NGINX_PORT for c in others)
    service_lane = None
    lanes = [sequence.Lane("client", "client (this trace)", endpoint(seen.local))]
    if story.lookup:
        lanes.append(sequence.Lane("dns", "DNS (the stack's own)", endpoint(story.lookup.server)))
    if proxied_by_docker:
        lanes.append(sequence.Lane("docker", "Docker's port proxy", endpoint(seen.peer)))
    if not plan.direct:
        nginx_at = next((endpoint(c.server) for c in others if c.server[1] == NGINX_PORT), endpoint(seen.peer))
        lanes.append(sequence.Lane("nginx", "nginx", nginx_at))
    if plan.service:
        service_lane = plan.service.name
        server = WEB_SERVERS[plan.site.web_server].describe if plan.service.name == "web" else plan.service.server
        lanes.append(sequence.Lane(service_lane, f"{plan.service.name}: {plan.service.framework}", server))
    first_hop = "docker" if proxied_by_docker else (service_lane if plan.direct else "nginx")
    diagram = sequence.Diagram(f"{plan.method} {plan.url} — request id {rid}", story.t0, lanes)

    diagram.messages += dns_messages(story.lookup, packets)

    hops = [(mine, "client", first_hop)]
    for connection in others:
        hops.append((connection, "docker", "nginx") if connection.server[1] == NGINX_PORT
                    else (connection, "nginx", service_lane or "nginx"))
    for connection, client_lane, server_lane in hops:
        for packet in connection.packets:
            forward = packet.src == connection.client
            what, kind = packet_label(packet, connection, seen)
            diagram.messages.append(sequence.Message(
                packet.time, client_lane if forward else server_lane, server_lane if forward else client_lane,
                what, len(packet.payload), connection.describe(packet), kind, endpoint(packet.src),
                endpoint(packet.dst)))
    if not mine.packets:  # no capture: what the client's sockets saw
        peer = endpoint(seen.peer)
        diagram.messages += [
            sequence.Message(seen.connect_started, "client", first_hop, "connect(): SYN →", 0,
                             f"connect() returned after {(seen.connected - seen.connect_started) * 1000:.3f} ms",
                             "control", endpoint(seen.local), peer),
            sequence.Message(seen.written, "client", first_hop, f"{plan.method} {plan.path}"[:48], len(seen.request),
                             "the request, written by sendall()", "data", endpoint(seen.local), peer),
            sequence.Message(seen.first_byte_at or seen.closed, first_hop, "client",
                             f"HTTP/1.1 {seen.response.status} {seen.response.reason}", len(seen.response.raw),
                             seen.response.framing, "data", peer, endpoint(seen.local)),
            sequence.Message(seen.closed, "client", first_hop, "close()", 0, "this side's close() returned",
                             "close", endpoint(seen.local), peer)]
    diagram.messages.sort(key=lambda message: message.time)

    timing = server_timing(seen.response.headers)
    # nginx's clock for a request starts at its first bytes, after any TLS handshake
    arrived = next((m.time for m in diagram.messages if m.target == "nginx" and m.size and
                    (m.kind == "data" or m.label.startswith("TLS application"))), None)
    if arrived is not None and "edge" in timing:
        diagram.spans.append(sequence.Span("nginx", arrived, timing["edge"], "nginx (edge)"))
    reached = next((m.time for m in diagram.messages if m.target == service_lane and m.kind == "data"), None)
    if service_lane and reached is not None:
        if "app" in timing:
            diagram.spans.append(sequence.Span(service_lane, reached, timing["app"], "app"))
        if "db" in timing:
            diagram.spans.append(sequence.Span(service_lane, reached, timing["db"], "db, inside the app"))
    diagram.notes = [f"{program}: {line}" for program, line in story.lines.items()]
    diagram.notes.append(f"response framing: {seen.response.framing}")
    return diagram


def open_capture(instead: str) -> Capture | None:
    """A capture of this host's interfaces, saying so; None, saying why and what the story uses `instead`."""
    try:
        capture = Capture()
    except CaptureUnavailable as reason:
        print(f"Packets: not visible ({reason}); {instead}.")
        return None
    print("Packets: captured from this host's interfaces with an AF_PACKET socket; times are the kernel's.")
    return capture


def trace(plan: Plan, keep_alive: bool, form: str | None = None, out: Path | None = None) -> int:
    rid = f"trace-{secrets.token_hex(8)}"
    print(f"Tracing {plan.method} {plan.url}   ({plan.mode} stack, request id {rid})")
    capture = open_capture("the steps come from the client's sockets and the logs")
    with capture or contextlib.nullcontext():
        story = Story(time.time())
        answer = ask_dns(plan, story)
        seen = exchange(plan, where_to_connect(plan, answer, story), rid, keep_alive, story)
        if seen and capture:
            capture.wait_for(lambda packets: close_complete(packets, seen.local, seen.peer), timeout=2)
    if seen is None:
        return 1
    packets = capture.snapshot() if capture else []
    tell(plan, rid, story, seen, packets, captured=capture is not None)
    if form:
        path = sequence.write(diagram_of(plan, rid, story, seen, packets), form, out, rid)
        print(f"\nThe picture: {path} ({form}: a lane per party, an arrow per packet, time running down)")
    return 0


def close_complete(packets: list[Packet], local: tuple[str, int], peer: tuple[str, int]) -> bool:
    """Both FINs seen, and a last packet after the second (its ACK)."""
    mine = [p for p in packets if p.transport == "tcp" and p.between(local, peer)]
    fins = [p for p in mine if p.has(FIN)]
    return len(fins) >= 2 and mine[-1] is not fins[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", default="/web/json", help="a path on the stack, or an http:// URL")
    parser.add_argument("--tls", action="store_true", help="over HTTPS (nginx's TLS port, the stack's CA)")
    parser.add_argument("--keep-alive", action="store_true", help="no Connection: close; the client closes first")
    parser.add_argument("--http", choices=("1.1", "3"), default="1.1",
                        help="3: over HTTP/3 (QUIC on UDP), beside the same URL over TCP and TLS (wire/quic_trace.py)")
    parser.add_argument("-X", "--method")
    parser.add_argument("-d", "--data", help="a JSON request body")
    parser.add_argument("--format", choices=("text", "svg", "html"), default="text",
                        help="also draw the request as a sequence diagram (text: the story alone)")
    parser.add_argument("--out", type=Path, help="the picture's path (default: reports/<request id>.<format>)")
    args = parser.parse_args(argv)
    site = Site.from_env()
    plan = plan_of(args.url, args.method, args.data, site, choose_mode(None, site), args.tls or args.http == "3")
    if args.http == "3":
        if args.method not in (None, "GET") or args.data:
            parser.error("the HTTP/3 trace sends a GET")
        from wire import quic_trace  # it builds on this module's steps

        return quic_trace.trace(plan, None if args.format == "text" else args.format, args.out)
    return trace(plan, args.keep_alive, None if args.format == "text" else args.format, args.out)


if __name__ == "__main__":
    sys.exit(main())
