"""make trace's reasoning, on synthetic packets and log lines; and what it does when nothing answers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from stack.topology import ROOT, Site
from tests.conftest import free_port
from wire import sequence
from wire.capture import ACK, FIN, PSH, SYN, Packet
from wire.rawhttp import Response
from wire.trace import (
    Connection,
    Exchange,
    Lookup,
    Story,
    diagram_of,
    explain_nginx_line,
    label,
    plan_of,
    upstream_connections,
)

SITE = Site(net="127.0.41", public_host="127.0.41.1", public_port=18080, var=Path("/nonexistent"))
NGINX = ("127.0.0.1", 8080)
CLIENT = ("127.0.0.1", 40000)


def tcp(t: float, src, dst, flags: int, seq: int, ack: int = 0, payload: bytes = b"") -> Packet:
    return Packet(t, "lo", "tcp", src, dst, payload, flags, seq, ack, 64)


def test_a_path_goes_through_nginx_by_the_stacks_name_and_a_service_port_goes_straight():
    plan = plan_of("/catalog/items?limit=2", None, None, SITE, "native")
    assert (plan.name, plan.port, plan.path, plan.method) == ("stack.internal", 18080, "/catalog/items?limit=2", "GET")
    assert plan.service.name == "catalog" and not plan.direct
    direct = plan_of("http://web.stack.internal:8001/web/json", None, '{"a": 1}', SITE, "native")
    assert direct.direct and direct.method == "POST" and direct.body == b'{"a": 1}'
    assert plan_of("/", None, None, SITE, "native").service is None  # nginx answers it itself


def test_sequence_numbers_are_relative_after_the_handshake_and_for_pooled_connections():
    packets = [
        tcp(1.0, CLIENT, NGINX, SYN, 1000),
        tcp(1.1, NGINX, CLIENT, SYN | ACK, 5000, 1001),
        tcp(1.2, CLIENT, NGINX, ACK, 1001, 5001),
        tcp(1.3, CLIENT, NGINX, PSH | ACK, 1001, 5001, b"GET / HTTP/1.1\r\n\r\n"),
        tcp(1.4, NGINX, CLIENT, FIN | ACK, 5001, 1019),
    ]
    connection = Connection(CLIENT, NGINX, packets)
    assert connection.opened_here
    described = [connection.describe(p) for p in packets]
    assert "SYN-ACK  seq=5000 ack=1001" in described[1]  # the handshake keeps absolute numbers
    assert "ACK      seq=1 ack=1" in described[2]
    assert "FIN-ACK  seq=1 ack=19" in described[4]
    pooled = Connection(("127.0.0.1", 51000), ("127.0.10.11", 8001), [
        tcp(2.0, ("127.0.0.1", 51000), ("127.0.10.11", 8001), PSH | ACK, 777, 999, b"x" * 10),
        tcp(2.1, ("127.0.10.11", 8001), ("127.0.0.1", 51000), PSH | ACK, 999, 787, b"y" * 5),
    ])
    assert not pooled.opened_here
    first, reply = (pooled.describe(packet) for packet in pooled.packets)
    assert "seq=1 ack=1 " in first and "seq=1 ack=11 " in reply  # counted from the first byte seen


def test_every_connection_that_carried_the_request_id_is_found_with_its_server_side():
    rid = "trace-0123456789abcdef"
    nginx_side, web = ("127.0.0.1", 51000), ("127.0.10.11", 8001)
    packets = [
        tcp(1.0, CLIENT, NGINX, PSH | ACK, 1, 1, f"X-Request-ID: {rid}".encode()),
        tcp(1.1, web, nginx_side, PSH | ACK, 1, 1, f"X-Request-ID: {rid}".encode()),  # the response came first
        tcp(1.2, nginx_side, ("127.0.10.12", 8002), PSH | ACK, 1, 1, b"X-Request-ID: another"),
    ]
    (found,) = upstream_connections(packets, rid, (CLIENT, NGINX))
    assert (found.client, found.server) == (nginx_side, web)
    assert label(web, "native") == "nginx → web"
    assert label(("172.18.0.9", 8080), "compose") == "Docker's port proxy → nginx's container"


def test_nginxs_line_is_read_in_words():
    line = ('127.0.0.1 "GET /web/json HTTP/1.1" 200 27 rid=x rt=0.002 uct=0.000 uht=0.001 urt=0.002 '
            'ups=127.0.10.11:8001 conn=51/3 ua="t"')
    words = explain_nginx_line(line)
    assert "upstream 127.0.10.11:8001: connecting took 0.000 s" in words and "request 3 on it" in words
    assert explain_nginx_line('1.2.3.4 "GET / HTTP/1.1" 200 5 rid=x rt=0.000 uct=- ups=- conn=1/1') == \
        "nginx answered this itself: no upstream"


def test_nothing_answering_is_told_not_thrown(tmp_path):
    """No stack at all: the DNS step and the connection fail with a note each, and the trace ends (no hang)."""
    env = {**os.environ, "MODE": "native", "STACK_NET": "127.0.41", "STACK_HOST": "127.0.41.1",
           "STACK_PORT": str(free_port("127.0.41.1")), "STACK_VAR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "wire.trace", "/web/json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "no answer from the stack's DNS server at 127.0.41.53:5353" in result.stdout
    assert "connect() failed: [Errno 111] Connection refused. Is the stack up?" in result.stdout


def picture_packets(document: str) -> list[tuple[str, str, str]]:
    """(time, src, dst) of every arrow an SVG (or the SVG inside an HTML page) draws for a packet."""
    import xml.etree.ElementTree as ElementTree

    start, end = document.index("<svg"), document.index("</svg>") + len("</svg>")
    root = ElementTree.fromstring(document[start:end])  # well-formed XML, or this raises
    return [(g.get("data-time"), g.get("data-src"), g.get("data-dst"))
            for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "packet"]


def test_the_picture_draws_every_packet_of_every_connection_that_carried_the_request():
    rid = "trace-00112233445566aa"
    dns_server, nginx_side, web = ("127.0.41.53", 5353), ("127.0.41.1", 51000), ("127.0.41.11", 8001)
    request = f"GET /web/json HTTP/1.1\r\nX-Request-ID: {rid}\r\n\r\n".encode()
    head = f"HTTP/1.1 200 OK\r\nServer-Timing: app;dur=0.5\r\nX-Request-ID: {rid}\r\n\r\n".encode()
    packets = [
        Packet(0.9, "lo", "udp", ("127.0.0.1", 39000), dns_server, b"q" * 32),
        Packet(0.95, "lo", "udp", dns_server, ("127.0.0.1", 39000), b"a" * 48),
        tcp(1.0, CLIENT, NGINX, SYN, 1000),
        tcp(1.001, NGINX, CLIENT, SYN | ACK, 5000, 1001),
        tcp(1.002, CLIENT, NGINX, ACK, 1001, 5001),
        tcp(1.003, CLIENT, NGINX, PSH | ACK, 1001, 5001, request),
        tcp(1.004, nginx_side, web, PSH | ACK, 1, 1, request),  # a pooled upstream connection: no SYN
        tcp(1.006, web, nginx_side, PSH | ACK, 1, 1 + len(request), head),
        tcp(1.007, NGINX, CLIENT, PSH | ACK, 5001, 1001 + len(request), head),
        tcp(1.008, NGINX, CLIENT, FIN | ACK, 5001 + len(head), 1001 + len(request)),
        tcp(1.009, CLIENT, NGINX, FIN | ACK, 1001 + len(request), 5002 + len(head)),
        tcp(1.010, NGINX, CLIENT, ACK, 5002 + len(head), 1002 + len(request)),
        tcp(1.011, ("127.0.0.1", 40001), NGINX, SYN, 1),  # another client: not this request's
    ]
    plan = plan_of("/web/json", None, None, SITE, "native")
    story = Story(0.9)
    story.lookup = Lookup(dns_server, 0.9, 0.95, "stack.internal. IN A", 32, "A 127.0.0.1 TTL 5 s; NOERROR", 48)
    story.lines = {"nginx": f"127.0.0.1 \"GET /web/json HTTP/1.1\" 200 27 rid={rid}"}
    response = Response("HTTP/1.1", 200, "OK", [("Server-Timing", "app;dur=0.5"), ("Server-Timing",
                        'edge;desc="nginx";dur=4')], framing="Content-Length: 0")
    seen = Exchange(request, response, CLIENT, NGINX, 1.0, 1.002, 1.003, 1.007, "CLOSE_WAIT", 1.0095)
    diagram = diagram_of(plan, rid, story, seen, packets)
    assert [lane.key for lane in diagram.lanes] == ["client", "dns", "nginx", "web"]
    drawn = {(m.source, m.target, m.label) for m in diagram.messages}
    assert ("client", "dns", "DNS query stack.internal. IN A") in drawn
    assert ("nginx", "web", "GET /web/json HTTP/1.1") in drawn and ("web", "nginx", "HTTP/1.1 200 OK") in drawn
    assert ("nginx", "client", "FIN-ACK") in drawn and ("client", "nginx", "SYN") in drawn
    assert {(s.lane, s.label, s.duration) for s in diagram.spans} == {("nginx", "nginx (edge)", 0.004),
                                                                        ("web", "app", 0.0005)}
    expected = [(f"{p.time:.6f}", f"{p.src[0]}:{p.src[1]}", f"{p.dst[0]}:{p.dst[1]}") for p in packets[:-1]]
    for form in ("svg", "html"):
        document = sequence.render(diagram, form)
        assert sorted(picture_packets(document)) == sorted(expected), form  # each packet once, no stranger
        assert not re.search(r"\s(?:href|src)=|url\((?!#)|<script", document), form  # self-contained: loads nothing
    assert "rid=" + rid in sequence.render(diagram, "html")  # the access lines under the picture


def test_the_time_axis_keeps_order_and_gives_every_packet_a_row():
    axis = sequence.TimeAxis([1.0, 1.000001, 1.000002, 1.5])
    ys = [axis.y(t) for t in (1.0, 1.000001, 1.000002, 1.5)]
    assert all(b - a >= sequence.ROW for a, b in zip(ys, ys[1:], strict=False))  # microseconds apart: a row each
    assert ys[3] - ys[2] <= sequence.ROW + sequence.GAP_CAP  # half a second: room, but capped
    assert axis.y(1.25) < ys[3] and axis.y(1.25) > ys[2]  # a span's end falls between its neighbours
