"""make trace's reasoning, on synthetic packets and log lines; and what it does when nothing answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deploy.topology import ROOT, Site
from tests.conftest import free_port
from wire.capture import ACK, FIN, PSH, SYN, Packet
from wire.trace import Connection, explain_nginx_line, label, plan_of, upstream_connections

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
