"""wire/quic.py and wire/quic_trace.py without nginx: aioquic's own HTTP/3 server on loopback, and synthetic packets
for the round-trip counts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent

from stack.topology import Site, free_port
from wire import quic, quic_trace
from wire.capture import ACK, PSH, SYN, Packet


class Answering(QuicConnectionProtocol):
    """An HTTP/3 server that answers every request with its own path, as JSON."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.h3: H3Connection | None = None

    def quic_event_received(self, event: QuicEvent) -> None:
        self.h3 = self.h3 or H3Connection(self._quic)
        for h3_event in self.h3.handle_event(event):
            if isinstance(h3_event, HeadersReceived):
                path = dict(h3_event.headers)[b":path"]
                body = b'{"path": "' + path + b'"}'
                self.h3.send_headers(h3_event.stream_id, [(b":status", b"200"), (b"content-type", b"application/json"),
                                                          (b"content-length", str(len(body)).encode())])
                self.h3.send_data(h3_event.stream_id, body, end_stream=True)
                self.transmit()


@pytest.fixture(scope="module")
def h3_server(tmp_path_factory) -> Iterator[tuple[int, Path]]:
    """aioquic's HTTP/3 server on 127.0.0.1, with a certificate from a CA of its own: (port, the CA's file)."""
    where = tmp_path_factory.mktemp("h3")
    authority = trustme.CA()
    issued = authority.issue_cert("localhost", "127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(where / "server.pem"))
    issued.private_key_pem.write_to_path(str(where / "server-key.pem"))
    authority.cert_pem.write_to_path(str(where / "ca.pem"))
    configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    configuration.load_cert_chain(where / "server.pem", where / "server-key.pem")
    port = free_port(kind=2)  # SOCK_DGRAM
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def run() -> None:
        server = await serve("127.0.0.1", port, configuration=configuration, create_protocol=Answering)
        ready.set()
        await stop.wait()
        server.close()

    thread = threading.Thread(target=lambda: loop.run_until_complete(run()), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield port, where / "ca.pem"
    loop.call_soon_threadsafe(stop.set)
    thread.join(5)
    loop.close()


def test_fetch_speaks_http3_and_keeps_every_datagram_with_its_packets_and_tls_messages(h3_server):
    port, ca = h3_server
    seen = quic.fetch(f"https://localhost:{port}/lesson?x=1", ca, connect_to=("127.0.0.1", port), request_id="r-1")
    assert seen.status == 200 and seen.body == b'{"path": "/lesson?x=1"}', seen.error
    assert seen.alpn == "h3" and seen.cipher and ("x-request-id", "r-1") in seen.request_headers
    first = seen.datagrams[0]
    assert first.sent and first.tls == ["ClientHello"] and len(first.payload) >= 1200  # padded: anti-amplification
    assert [p.kind for p in quic.packets_of(first.payload)] == ["Initial"]
    server_flight = [name for d in seen.datagrams if not d.sent for name in d.tls]
    assert server_flight[:5] == ["ServerHello", "EncryptedExtensions", "Certificate", "CertificateVerify", "Finished"]
    # every datagram's packets, as its headers say, got their frames from the qlog, in step
    for datagram in seen.datagrams:
        assert [p.kind for p in datagram.packets] == [p.kind for p in quic.packets_of(datagram.payload)]
    request = next(d for d in seen.datagrams if d.sent and 0 in d.stream_ids())
    assert "Finished" in request.tls  # the client's Finished and the request leave together
    assert seen.round_trips_before_request() == 1
    assert seen.datagrams[-1].carries("connection_close") and seen.close_code == 0x100  # H3_NO_ERROR
    assert quic_trace.stream_roles(seen)[2] == "HTTP/3 control stream (SETTINGS)"


def test_fetch_reports_a_refused_port_instead_of_raising(tmp_path):
    ca = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    seen = quic.fetch(f"https://127.0.0.1:{free_port(kind=2)}/", ca)
    assert seen.status is None and "Connection refused" in (seen.error or "")


def datagram(sent: bool, *frames: list[str], tls: list[str] | None = None, stream: int | None = None) \
        -> quic.Datagram:
    packets = [quic.Packet("Initial", n, 100, [{"frame_type": f, **({"stream_id": stream} if f == "stream" else {})}
                                               for f in names]) for n, names in enumerate(frames)]
    return quic.Datagram(0.0, sent, b"", packets, tls or [])


def test_round_trips_count_the_flights_the_client_waited_for():
    def trips(*datagrams: quic.Datagram) -> int:
        return quic.Exchange("u", ("", 0), ("", 0), 0.0, list(datagrams), []).round_trips_before_request()

    hello, flight = datagram(True, ["crypto", "padding"]), datagram(False, ["ack", "crypto"])
    request = datagram(True, ["ack"], ["crypto"], ["stream"], stream=0)
    assert trips(hello, flight, request) == 1
    # the client ACKs the first half of a split flight: an ACK is no flight, the second half no round trip
    assert trips(hello, flight, datagram(True, ["ack"]), datagram(False, ["crypto"]), request) == 1
    # a server that asks once more (a Retry, a HelloRetryRequest): two
    assert trips(hello, flight, datagram(True, ["crypto"]), flight, request) == 2


def segment(t: float, src: tuple, flags: int, payload: bytes = b"") -> Packet:
    dst = SERVER if src == CLIENT else CLIENT
    return Packet(t, "lo", "tcp", src, dst, payload, flags)


CLIENT, SERVER = ("127.0.0.1", 40000), ("127.0.0.1", 8443)


def test_tcp_round_trips_count_the_handshakes_and_not_the_session_tickets():
    from wire.trace import Connection

    packets = [segment(1, CLIENT, SYN), segment(2, SERVER, SYN | ACK), segment(3, CLIENT, ACK),
               segment(4, CLIENT, PSH | ACK, b"\x16\x03\x01hello"), segment(5, SERVER, ACK),
               segment(6, SERVER, PSH | ACK, b"\x16\x03\x03server hello"), segment(7, CLIENT, ACK),
               segment(8, CLIENT, PSH | ACK, b"\x14\x03\x03finished"),
               segment(9, SERVER, PSH | ACK, b"\x17\x03\x03session ticket"),  # TLS 1.3's, after the client's Finished
               segment(10, CLIENT, PSH | ACK, b"\x17\x03\x03the request")]
    assert quic_trace.tcp_round_trips(Connection(CLIENT, SERVER, packets), request_at=10) == 2
    assert quic_trace.tcp_round_trips(Connection(CLIENT, SERVER, []), request_at=10) is None


def test_the_story_s_small_words():
    assert quic_trace.stream_kind(0) == "client-initiated, bidirectional"
    assert quic_trace.stream_kind(3) == "server-initiated, unidirectional"
    packet = quic.Packet("1-RTT", 3, 90, [{"frame_type": name} for name in ("ack", "stream", "stream", "padding")])
    assert quic_trace.frames_text(packet) == "ack, stream x2, padding"
    assert list(quic._messages(b"\x01\x00\x00\x02ab\x02\x00\x00\x05abc")) == [("ClientHello", 6)]  # the rest: partial
    assert quic.packets_of(b"") == [] and quic.packets_of(b"\x00garbage") == []


def test_the_picture_draws_the_https_request_then_the_http3_one_each_packet_once():
    """Compose's shape: the client's TCP connection and datagrams reach Docker's port proxy, which opens its own
    TCP connection and sends its own datagrams to nginx's container; nginx's HTTP/1.1 to web carries each id."""
    from wire.rawhttp import Response
    from wire.trace import Exchange, Story, plan_of

    site = Site(net="127.0.42", public_host="127.0.0.1", public_port=8080, var=Path("/nonexistent"))
    rid, tcp_rid = "trace-h3", "trace-tcp"
    client_tcp, proxy = ("127.0.0.1", 40000), ("127.0.0.1", 8443)
    proxy_side, nginx = ("172.18.0.1", 50000), ("172.18.0.12", 8443)
    client_udp, proxy_udp = ("127.0.0.1", 41000), ("172.18.0.1", 52000)
    upstream, web = ("172.18.0.12", 47000), ("172.18.0.7", 8001)

    def tcp_packet(t, src, dst, flags, payload=b""):
        return Packet(t, "lo", "tcp", src, dst, payload, flags, 1, 1, 64)

    def udp(t, src, dst, payload):
        return Packet(t, "lo", "udp", src, dst, payload)

    hello, flight, request, answer = b"\x00hello", b"\x00flight", b"\x00request", b"\x00answer"
    packets = [
        tcp_packet(1.000, client_tcp, proxy, SYN), tcp_packet(1.001, proxy, client_tcp, SYN | ACK),
        tcp_packet(1.002, proxy_side, nginx, SYN), tcp_packet(1.003, nginx, proxy_side, SYN | ACK),
        tcp_packet(1.004, client_tcp, proxy, PSH | ACK, b"\x16\x03\x01clienthello"),
        tcp_packet(1.005, proxy_side, nginx, PSH | ACK, b"\x16\x03\x01clienthello"),
        tcp_packet(1.010, upstream, web, PSH | ACK, f"GET /web/json HTTP/1.1\r\nX-Request-ID: {tcp_rid}\r\n".encode()),
        tcp_packet(1.020, client_tcp, proxy, ACK | 1),  # FIN-ACK
        tcp_packet(1.021, ("127.0.0.1", 40999), proxy, SYN),  # someone else: not drawn
        udp(2.000, client_udp, proxy, hello), udp(2.001, proxy_udp, nginx, hello),
        udp(2.002, nginx, proxy_udp, flight), udp(2.003, proxy, client_udp, flight),
        udp(2.004, client_udp, proxy, request), udp(2.005, proxy_udp, nginx, request),
        tcp_packet(2.006, upstream, web, PSH | ACK, f"GET /web/json HTTP/1.1\r\nX-Request-ID: {rid}\r\n".encode()),
        tcp_packet(2.007, web, upstream, PSH | ACK, b"HTTP/1.1 200 OK\r\n"),  # the same pooled connection
        udp(2.008, nginx, proxy_udp, answer), udp(2.009, proxy, client_udp, answer),
    ]
    plan = plan_of("/web/json", None, None, site, "compose", tls=True)
    seen_tcp = Exchange(b"GET", Response("HTTP/1.1", 200, "OK", [], framing=""), client_tcp, proxy, 1.0, 1.001,
                        1.006, 1.015, None, 1.02)
    seen_tcp.tls = None
    frames = [{"frame_type": "crypto"}]
    seen = quic.Exchange("u", client_udp, proxy, 2.0, [
        quic.Datagram(2.0, True, hello, [quic.Packet("Initial", 0, 6, frames)], ["ClientHello"]),
        quic.Datagram(2.003, False, flight, [quic.Packet("Initial", 0, 7, frames)], ["ServerHello", "Finished"]),
        quic.Datagram(2.004, True, request, [quic.Packet("1-RTT", 1, 8, [{"frame_type": "stream", "stream_id": 0}])],
                      ["Finished"]),
        quic.Datagram(2.009, False, answer, [quic.Packet("1-RTT", 1, 7, [{"frame_type": "stream", "stream_id": 0}])]),
    ], [], headers=[("server-timing", "app;dur=0.5"), ("server-timing", 'edge;desc="nginx";dur=4')])
    diagram = quic_trace.diagram_of(plan, rid, Story(1.0), seen, packets, seen_tcp, tcp_rid)
    assert [lane.key for lane in diagram.lanes] == ["client", "docker", "nginx", "web"]
    drawn = sorted((m.time, m.src, m.dst) for m in diagram.messages)
    expected = sorted((p.time, f"{p.src[0]}:{p.src[1]}", f"{p.dst[0]}:{p.dst[1]}") for p in packets
                      if p.src[1] != 40999)
    assert drawn == expected  # every packet of both requests, once, and no stranger's
    labels = [m.label for m in sorted(diagram.messages, key=lambda m: m.time)]
    assert labels[0] == "TCP SYN" and "TCP TLS records, relayed" in labels
    assert "Initial: ClientHello" in labels and "1-RTT: Finished, HEADERS (the request)" in labels
    # nginx's and the app's spans are the HTTP/3 request's: they start at its own bytes, not the HTTPS one's
    assert {(s.lane, s.start) for s in diagram.spans} == {("nginx", 2.005), ("web", 2.006)}
