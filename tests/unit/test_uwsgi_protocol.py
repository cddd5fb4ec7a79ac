"""The uwsgi protocol (wire/uwsgi.py) and uWSGI's own socket for it. The codec round-trips any variables and
refuses every truncation with PacketError; uWSGI itself is the reference for the encoding (the app sees what was
packed), and generated packets, well-formed or not, on uWSGI's uwsgi socket never get a 5xx nor stop it
serving."""

from __future__ import annotations

import json
import re
import socket
import string
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.http import CLIENT_TIMEOUT_ENV
from tests import service_process
from wire import uwsgi

keys = st.binary(min_size=0, max_size=40)
values = st.binary(min_size=0, max_size=200)
variables = st.lists(st.tuples(keys, values), max_size=20)


@given(variables, st.binary(max_size=100), st.integers(0, 255), st.integers(0, 255))
def test_a_packet_decodes_to_what_was_encoded(pairs, body, modifier1, modifier2):
    packet = uwsgi.decode(uwsgi.encode(pairs, body, modifier1, modifier2))
    assert (packet.variables, packet.body, packet.modifier1, packet.modifier2) == (tuple(pairs), body, modifier1,
                                                                                    modifier2)


@given(st.lists(st.tuples(keys, values), min_size=1, max_size=10), st.data())
def test_every_truncation_of_a_packet_is_refused_with_packet_error(pairs, data):
    raw = uwsgi.encode(pairs)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(uwsgi.PacketError):
        uwsgi.decode(raw[:cut])


@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_packet_error_only(raw):
    try:
        packet = uwsgi.decode(raw)
    except uwsgi.PacketError:
        return
    assert packet.size <= len(raw)


def test_the_header_is_little_endian_and_the_sizes_are_sixteen_bits():
    raw = uwsgi.encode([("REQUEST_METHOD", "GET")])
    assert raw[:4] == bytes([0, 2 + 14 + 2 + 3, 0, 0])  # modifier1, datasize low byte first, modifier2
    assert raw[4:6] == (14).to_bytes(2, "little") and raw[6:20] == b"REQUEST_METHOD"
    with pytest.raises(uwsgi.PacketError, match="16 bits"):
        uwsgi.encode([("X", "a" * 70_000)])
    with pytest.raises(uwsgi.PacketError, match="datasize"):
        uwsgi.encode([(f"K{i}", "v" * 1000) for i in range(70)])


# --- uWSGI's own uwsgi-protocol socket (web under WEB_SERVER=uwsgi, one worker) -------------------------------

CLIENT_TIMEOUT = 2  # seconds a sender may stay silent (the stack's client timeout, shortened)


@pytest.fixture(scope="module")
def uwsgi_web(tmp_path_factory):
    with service_process.running("web-uwsgi", tmp_path_factory.mktemp("uwsgi"),
                                 {CLIENT_TIMEOUT_ENV: str(CLIENT_TIMEOUT)}) as started:
        yield started


def send_packet(instance: service_process.ServiceProcess, raw: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes to uWSGI's uwsgi socket and read until it closes: the HTTP response it wrote, if any."""
    with socket.create_connection((service_process.HOST, instance.uwsgi_port), timeout=timeout) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)  # all there is: a packet whose datasize overstates it ends here
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
        return reply


def request_variables(path: str, method: str = "GET", **extra: str) -> list[tuple[str, str]]:
    """What nginx's uwsgi_params send for a plain request (deploy/render.py)."""
    return [("REQUEST_METHOD", method), ("REQUEST_URI", path), ("PATH_INFO", path.split("?")[0]),
            ("QUERY_STRING", path.partition("?")[2]), ("SERVER_PROTOCOL", "HTTP/1.1"), ("SERVER_NAME", "stack"),
            ("SERVER_PORT", "8080"), ("REMOTE_ADDR", "127.0.0.1"), ("REMOTE_PORT", "40000"),
            ("HTTP_HOST", "stack.internal"), *extra.items()]


def status_of(reply: bytes) -> int:
    """The status of uWSGI's reply. uWSGI starts its status line with the packet's SERVER_PROTOCOL as sent
    (behind nginx always HTTP/1.x), so the status is the first code followed by a reason phrase."""
    found = re.search(rb"(?:^| )([1-5][0-9][0-9]) [A-Za-z]", reply.partition(b"\r\n")[0])
    assert found, reply[:200]
    return int(found.group(1))


def test_uwsgi_reads_the_packets_this_codec_writes(uwsgi_web):
    """uWSGI as the reference: the variables packed here reach the app as its environ."""
    reply = send_packet(uwsgi_web, uwsgi.encode(request_variables("/web/conn", HTTP_X_REQUEST_ID="pkt-1",
                                                                  HTTP_X_FORWARDED_PROTO="https")))
    head, _, body = reply.partition(b"\r\n\r\n")
    assert status_of(reply) == 200 and b"X-Request-ID: pkt-1" in head, head
    assert json.loads(body)["forwarded"]["X-Forwarded-Proto"] == "https"
    body = uwsgi.encode(request_variables("/web/json"), b"")
    assert status_of(send_packet(uwsgi_web, body)) == 200


cgi_names = st.sampled_from(["REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL", "CONTENT_LENGTH",
                             "CONTENT_TYPE", "HTTP_HOST", "HTTP_COOKIE", "HTTP_TRANSFER_ENCODING", "REQUEST_URI",
                             "HTTP_X_REQUEST_ID", "HTTP_ACCEPT", "SCRIPT_NAME", "UWSGI_SCHEME", "HTTPS"])
text = st.text(alphabet=string.printable + "\x00\xff", max_size=60)
generated_variables = st.lists(st.tuples(st.one_of(cgi_names, st.text(max_size=20)), text), max_size=12)


def _latin1(pairs: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("utf-8"), v.encode("utf-8")) for k, v in pairs]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(["/web/json", "/web/signup", "/web/cart", "/web/io?ms=1", "/web/nope"]),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW", ""]),
       extra=generated_variables, body=st.binary(max_size=64),
       modifiers=st.tuples(st.sampled_from([0, 0, 0, 5, 255]), st.sampled_from([0, 0, 1, 255])),
       overstate=st.sampled_from([0, 0, 0, 1, 500]))
def test_generated_packets_on_uwsgis_socket_never_get_a_5xx(uwsgi_web, base, method, extra, body, modifiers,
                                                            overstate):
    """Whatever variables, modifiers and sizes a sender on uWSGI's socket picks (behind nginx only nginx can;
    this socket is reachable from the stack's network): an answer below 500, or a close, and uWSGI serves on."""
    pairs = [*_latin1(request_variables(base, method)), *_latin1(extra)]
    raw = bytearray(uwsgi.encode(pairs, body, *modifiers))
    if overstate:  # a datasize larger than the block sent
        raw[1:3] = min(int.from_bytes(raw[1:3], "little") + overstate, 0xFFFF).to_bytes(2, "little")
    reply = send_packet(uwsgi_web, bytes(raw))
    if reply:
        assert status_of(reply) < 500, reply[:400]
    assert status_of(send_packet(uwsgi_web, uwsgi.encode(request_variables("/web/json")))) == 200


@pytest.mark.parametrize("sent", [b"\x00\x20", b"\x00\x40\x00\x00\x0e\x00REQUEST_METHOD"],
                         ids=["half a header", "half the variables"])
def test_a_stalled_packet_is_cut_after_the_client_timeout(uwsgi_web, sent):
    """A sender that stops mid-packet holds a core only for the client timeout (uWSGI's socket-timeout)."""
    with socket.create_connection((service_process.HOST, uwsgi_web.uwsgi_port), timeout=CLIENT_TIMEOUT * 5) as sock:
        started = time.monotonic()
        sock.sendall(sent)
        assert sock.recv(65536) == b""  # closed, with nothing said: there is no request to answer
        took = time.monotonic() - started
    assert CLIENT_TIMEOUT - 0.5 <= took < CLIENT_TIMEOUT * 5, took
    assert status_of(send_packet(uwsgi_web, uwsgi.encode(request_variables("/web/json")))) == 200
