"""HTTP/3 over QUIC from the client's side, with every datagram kept: what `make trace HTTP=3` tells and draws.

    python -m wire.quic [get] [URL]     (default https://127.0.0.1:8443/web/json: status, headers and body)
    python -m wire.quic compare [URL]   (make tcp-vs-udp: round trips before the request, TCP + TLS vs QUIC)

aioquic (RFC 9000 QUIC, RFC 9114 HTTP/3) is sans-IO: it is given datagrams and the time, and hands back the
datagrams to send and the events that happened. `fetch` runs that loop itself over one UDP socket, so it sees
each datagram as it goes out or comes in, and it keeps aioquic's qlog (the frames inside each packet, which only
the endpoints can read) and the TLS 1.3 handshake messages QUIC carries in its CRYPTO frames.

`packets_of` reads a datagram's QUIC packets from its bytes, as anyone on the path could: the long header's
type (Initial, Handshake) is in the clear; a 1-RTT packet's short header says only whom it is for.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from aioquic import tls
from aioquic.buffer import Buffer, BufferReadError
from aioquic.h3.connection import H3_ALPN, ErrorCode, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamReset
from aioquic.quic.logger import QuicLogger
from aioquic.quic.packet import QuicPacketType, pull_quic_header

USER_AGENT = "stack-trace/1 (HTTP/3)"
TIMEOUT_S = 10.0
# RFC 8446's handshake message types, as QUIC carries them in CRYPTO frames (RFC 9001 §4).
TLS_MESSAGES = {1: "ClientHello", 2: "ServerHello", 4: "NewSessionTicket", 8: "EncryptedExtensions",
                11: "Certificate", 13: "CertificateRequest", 15: "CertificateVerify", 20: "Finished",
                24: "KeyUpdate"}
PACKET_NAMES = {QuicPacketType.INITIAL: "Initial", QuicPacketType.ZERO_RTT: "0-RTT",
                QuicPacketType.HANDSHAKE: "Handshake", QuicPacketType.RETRY: "Retry",
                QuicPacketType.VERSION_NEGOTIATION: "Version Negotiation", QuicPacketType.ONE_RTT: "1-RTT"}
QLOG_NAMES = {"initial": "Initial", "handshake": "Handshake", "0RTT": "0-RTT", "1RTT": "1-RTT", "retry": "Retry"}


@dataclass(frozen=True)
class WirePacket:
    """One QUIC packet of a datagram, as its header shows it on the wire."""

    kind: str  # Initial, Handshake, 1-RTT, ...
    length: int  # bytes, header included


def packets_of(datagram: bytes) -> list[WirePacket]:
    """The QUIC packets coalesced in one datagram (RFC 9000 §12.2), from their headers alone. A datagram that
    is not QUIC (garbage, a truncated header) gives what could be read before it went wrong. A 1-RTT packet
    runs to the datagram's end; its connection id's length is known only to the endpoint it names, and is not
    needed for that."""
    found: list[WirePacket] = []
    buf = Buffer(data=datagram)
    while not buf.eof():
        start = buf.tell()
        try:
            header = pull_quic_header(buf, host_cid_length=0)
        except (ValueError, BufferReadError):
            break
        found.append(WirePacket(PACKET_NAMES[header.packet_type], header.packet_length))
        buf.seek(start + header.packet_length)
        if header.packet_type in (QuicPacketType.ONE_RTT, QuicPacketType.VERSION_NEGOTIATION):
            break  # runs to the datagram's end
    return found


@dataclass
class Packet:
    """One QUIC packet the client sent or received: its header, and the frames inside (from the qlog)."""

    kind: str
    number: int
    length: int
    frames: list[dict]

    def frame_names(self) -> list[str]:
        return [frame["frame_type"] for frame in self.frames]

    @property
    def ack_eliciting(self) -> bool:
        """Carries something besides ACK and PADDING (RFC 9002: the peer must answer it)."""
        return any(name not in ("ack", "padding") for name in self.frame_names())


@dataclass
class Datagram:
    """One UDP datagram of the connection, as the client's socket sent or received it."""

    time: float  # time.time() when sent, or when recv() returned it
    sent: bool
    payload: bytes
    packets: list[Packet] = field(default_factory=list)
    tls: list[str] = field(default_factory=list)  # TLS messages written to it (sent) or completed by it

    def carries(self, frame_type: str) -> bool:
        return any(frame_type in packet.frame_names() for packet in self.packets)

    def stream_ids(self) -> list[int]:
        return sorted({frame["stream_id"] for packet in self.packets for frame in packet.frames
                       if frame["frame_type"] == "stream"})


@dataclass
class Exchange:
    """One HTTP/3 request over a new QUIC connection, as the client saw it."""

    url: str
    local: tuple[str, int]
    peer: tuple[str, int]
    started: float
    datagrams: list[Datagram]
    request_headers: list[tuple[str, str]]
    handshake_done: float | None = None
    request_sent: float | None = None
    first_response_at: float | None = None
    closed: float | None = None
    status: int | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    alpn: str | None = None
    cipher: str | None = None
    error: str | None = None  # why it ended without a response
    close_code: int | None = None  # the CONNECTION_CLOSE this client sent
    qlog: dict = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name.lower()), None)

    def round_trips_before_request(self) -> int:
        """How many times the client had to wait for the server's handshake flight before its request's
        first byte went out: each ack-eliciting client flight answered by server datagrams with CRYPTO."""
        trips, waiting = 0, False
        for datagram in self.datagrams:
            if datagram.sent and 0 in datagram.stream_ids():
                break
            if datagram.sent and any(p.ack_eliciting for p in datagram.packets):
                waiting = True
            elif not datagram.sent and waiting and datagram.carries("crypto"):
                trips, waiting = trips + 1, False
        return trips


class _TlsObserver:
    """The TLS handshake messages aioquic's TLS 1.3 writes and reads for this thread's connection. aioquic has no
    hook for them: its message entry point is wrapped once (a pass-through for every other caller, a server in
    the same process included), and reports to the observer the calling thread has set. Sent messages are read
    from the per-epoch output buffers; received ones from the concatenated CRYPTO stream, as aioquic reassembles
    it."""

    _current = threading.local()
    _installed = False
    _installing = threading.Lock()

    def __init__(self) -> None:
        self.written: list[str] = []  # since the last flush
        self.completed: list[str] = []  # since the last datagram was handled
        self._received = b""

    @classmethod
    def _install(cls) -> None:
        with cls._installing:
            if not cls._installed:
                cls._wrap()
                cls._installed = True

    @classmethod
    def _wrap(cls) -> None:
        original = tls.Context.handle_message

        def handle_message(context: tls.Context, input_data: bytes, output_buf: dict) -> None:
            original(context, input_data, output_buf)
            observer = getattr(cls._current, "observer", None)
            if observer is not None:
                observer._read(input_data)
                for buf in output_buf.values():
                    observer.written += [name for name, _ in _messages(buf.data)]

        tls.Context.handle_message = handle_message

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        self._install()
        self._current.observer = self
        try:
            yield
        finally:
            self._current.observer = None

    def _read(self, data: bytes) -> None:
        self._received += data
        for name, size in _messages(self._received):
            self.completed.append(name)
            self._received = self._received[size:]


def _messages(data: bytes) -> Iterator[tuple[str, int]]:
    """The complete TLS handshake messages at the start of `data`: (name, size with its 4-byte header)."""
    offset = 0
    while len(data) - offset >= 4:
        size = 4 + int.from_bytes(data[offset + 1:offset + 4], "big")
        if len(data) - offset < size:
            return
        yield TLS_MESSAGES.get(data[offset], f"type {data[offset]}"), size
        offset += size


def _attach_qlog(datagrams: list[Datagram], qlog: dict) -> None:
    """Give each datagram its packets with their frames: the qlog lists the packets sent and received in order,
    and each datagram's wire headers say how many it holds and of which kinds."""
    events = [event for trace in qlog.get("traces", []) for event in trace.get("events", [])]
    logged = {True: [], False: []}
    for event in events:
        if event["name"] in ("transport:packet_sent", "transport:packet_received"):
            header = event["data"]["header"]
            logged[event["name"].endswith("sent")].append(
                Packet(QLOG_NAMES.get(header["packet_type"], header["packet_type"]), header.get("packet_number", -1),
                       event["data"].get("raw", {}).get("length", 0), event["data"].get("frames", [])))
    for sent in (True, False):
        queue = iter(logged[sent])
        for datagram in (d for d in datagrams if d.sent == sent):
            for wire in packets_of(datagram.payload):
                packet = next(queue, None)
                if packet is None or packet.kind != wire.kind:
                    return  # out of step (a packet the client could not decrypt was dropped): keep what matched
                datagram.packets.append(packet)


def fetch(url: str, ca: Path, *, connect_to: tuple[str, int] | None = None, request_id: str | None = None,
          method: bytes = b"GET", path: bytes | None = None, extra_headers: Sequence[tuple[bytes, bytes]] = (),
          body: bytes = b"", end_stream: bool = True, timeout: float = TIMEOUT_S, close_after: bool = True) -> Exchange:
    """`method` `url` over HTTP/3 on a new QUIC connection that trusts only the CA file `ca`, then close it with
    CONNECTION_CLOSE (H3_NO_ERROR). `connect_to`: the UDP address to send to (default: the URL's host and
    port); `path` and `extra_headers`: sent as given, bytes a client controls (generated-input tests);
    `end_stream=False` leaves the request unfinished (a client that stalls mid-body). Never raises for the
    network: a failure is the Exchange's `error`."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    peer = connect_to or (socket.gethostbyname(host), port)
    if path is None:
        path = ((parts.path or "/") + (f"?{parts.query}" if parts.query else "")).encode()
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # an IPv6 literal keeps its brackets
    headers = [(b":method", method), (b":scheme", b"https"), (b":authority", authority.encode()),
               (b":path", path), (b"user-agent", USER_AGENT.encode()), (b"accept", b"*/*")]
    if request_id:
        headers.append((b"x-request-id", request_id.encode()))
    headers += extra_headers
    logger = QuicLogger()
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=host,
                                      quic_logger=logger)
    configuration.load_verify_locations(cafile=str(ca))
    quic = QuicConnection(configuration=configuration)
    h3 = H3Connection(quic)
    observer = _TlsObserver()
    datagrams: list[Datagram] = []
    seen = Exchange(url, ("", 0), peer, time.time(), datagrams,
                    [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, observer.watching():
        sock.connect(peer)
        seen.local = sock.getsockname()

        def flush() -> None:
            out = quic.datagrams_to_send(now=time.time())
            for number, (data, _) in enumerate(out):
                try:
                    sock.send(data)
                except OSError as error:  # an ICMP error from an earlier datagram, reported on this one
                    seen.error = seen.error or f"send(): {error}"
                    return
                datagrams.append(Datagram(time.time(), True, data, tls=observer.written if number == 0 else []))
            if out:
                observer.written = []

        seen.started = time.time()
        quic.connect(peer, now=seen.started)
        flush()
        deadline = seen.started + timeout
        stream_id: int | None = None
        ended = False
        while not ended and time.time() < deadline:
            timer = quic.get_timer()
            wait = max(0.0, min(deadline, timer if timer is not None else deadline) - time.time())
            readable, _, _ = select.select([sock], [], [], wait)
            now = time.time()
            if readable:
                try:
                    data = sock.recv(65_535)
                except OSError as error:  # ICMP port unreachable: nothing listens on that UDP port
                    seen.error = f"recv(): {error}"
                    break
                datagrams.append(Datagram(now, False, data))
                quic.receive_datagram(data, peer, now=now)
                datagrams[-1].tls, observer.completed = observer.completed, []
            elif timer is not None and now >= timer:
                quic.handle_timer(now=now)
            while (event := quic.next_event()) is not None:
                if isinstance(event, HandshakeCompleted):
                    seen.handshake_done, seen.alpn = now, event.alpn_protocol
                    schedule = quic.tls.key_schedule
                    seen.cipher = schedule.cipher_suite.name if schedule else None
                    stream_id = quic.get_next_available_stream_id()
                    h3.send_headers(stream_id, headers, end_stream=end_stream and not body)
                    if body:
                        h3.send_data(stream_id, body, end_stream=end_stream)
                    seen.request_sent = now
                elif isinstance(event, StreamReset) and event.stream_id == stream_id:
                    seen.error = f"the server reset the request's stream (error {event.error_code:#x})"
                    ended = True
                elif isinstance(event, ConnectionTerminated):
                    why = event.reason_phrase or event.error_code
                    seen.error = seen.error or f"the server closed the connection: {why}"
                    ended = True
                for h3_event in h3.handle_event(event):
                    if isinstance(h3_event, HeadersReceived) and h3_event.stream_id == stream_id:
                        seen.first_response_at = seen.first_response_at or now
                        seen.headers += [(k.decode("latin-1"), v.decode("latin-1")) for k, v in h3_event.headers]
                        ended = ended or h3_event.stream_ended
                    elif isinstance(h3_event, DataReceived) and h3_event.stream_id == stream_id:
                        seen.body += h3_event.data
                        ended = ended or h3_event.stream_ended
            flush()
        status = dict(seen.headers).get(":status")
        seen.status = int(status) if status and status.isdigit() else None
        if seen.status is None and seen.error is None:
            seen.error = f"no response within {timeout:g} s"
        if close_after:
            seen.close_code = ErrorCode.H3_NO_ERROR
            quic.close(error_code=ErrorCode.H3_NO_ERROR, reason_phrase="done")
            flush()
        seen.closed = time.time()
    seen.qlog = logger.to_dict()
    _attach_qlog(datagrams, seen.qlog)
    return seen


def tcp_tls_round_trips(address: tuple[str, int], server_name: str, ca: Path) -> tuple[int, float]:
    """Round trips before an HTTPS request's first byte can go out over TCP, counted without packet capture:
    connect() is one (SYN, SYN-ACK), then the TLS handshake through memory buffers, one more each time the
    client sent a flight and had to wait for the server's. Returns the count and the milliseconds it took."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["http/1.1"])
    started = time.perf_counter()
    with socket.create_connection(address, timeout=5) as sock:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        channel = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
        trips, waiting = 1, False
        while True:
            try:
                channel.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            flight = outgoing.read()
            if flight:
                sock.sendall(flight)
                waiting = True
            if done:
                return trips, (time.perf_counter() - started) * 1000
            data = sock.recv(65_535)
            if not data:
                raise ConnectionError("the server closed the connection during the TLS handshake")
            incoming.write(data)
            if waiting:
                trips, waiting = trips + 1, False


def compare(url: str, ca: Path, unavailable: str) -> int:
    """`make tcp-vs-udp`'s HTTP row: the same URL's set-up over TCP + TLS 1.3 and over QUIC, in round trips."""
    parts = urlsplit(url)
    address = (socket.gethostbyname(parts.hostname or "127.0.0.1"), parts.port or 443)
    print(f"HTTP on each: GET {url}, over TCP + TLS 1.3 (HTTP/1.1) and over QUIC on UDP (HTTP/3)")
    try:
        trips, took = tcp_tls_round_trips(address, parts.hostname or "127.0.0.1", ca)
        print(f"  TCP: {trips} round trips before the request (connect(), then the TLS handshake): {took:.2f} ms")
    except (OSError, ssl.SSLError) as error:
        print(f"  TCP: no HTTPS answer: {error}")
    seen = fetch(url, ca)
    if seen.status is None:
        print(f"  UDP: no HTTP/3 answer ({seen.error}): {unavailable}\n")
        return 0
    took = ((seen.request_sent or seen.started) - seen.started) * 1000
    print(f"  UDP: {seen.round_trips_before_request()} round trip before the request (QUIC's handshake carries TLS "
          f"1.3): {took:.2f} ms; HTTP/3 {seen.status} in {len(seen.datagrams)} datagrams, closed by one "
          "CONNECTION_CLOSE\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    from deploy.stack import choose_mode, driver  # the stack's CA, TLS port and mode; fetch needs none of them
    from stack.topology import Site

    site = Site.from_env()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("get", "compare"), default="get",
                        help="get: print the answer; compare: the set-up's round trips over TCP and over QUIC")
    parser.add_argument("url", nargs="?", default=f"https://{site.public_host}:{site.tls_port}/web/json")
    args = parser.parse_args(argv)
    if args.command == "compare":
        return compare(args.url, site.tls.ca, driver(choose_mode(None, site), site).http3().said)
    seen = fetch(args.url, site.tls.ca)
    if seen.status is None:
        print(f"no HTTP/3 answer from {args.url}: {seen.error}", file=sys.stderr)
        return 1
    print(f"HTTP/3 {seen.status}   ({seen.alpn}, {seen.cipher}, "
          f"{seen.round_trips_before_request()} round trip before the request)")
    for name, value in seen.headers:
        if not name.startswith(":"):
            print(f"{name}: {value}")
    print()
    sys.stdout.write(seen.body.decode("utf-8", "replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
