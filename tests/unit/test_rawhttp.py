"""The hand-written HTTP/1.1 client (wire/rawhttp.py) against h11, on bytes delivered through a real socket
pair: every framing rule, and generated chunked bodies that the hand decoding and h11 must agree on."""

from __future__ import annotations

import socket
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wire.rawhttp import (
    ProtocolError,
    WireReader,
    agreement,
    build_request,
    parse_with_h11,
    read_response,
)

REQUEST = build_request("GET", "/x", "example.test", [("Accept", "*/*")])


def deliver(raw: bytes, close: bool = True) -> WireReader:
    """A reader whose socket receives `raw` (written by another thread), then the peer's FIN if close."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)

    def write() -> None:
        theirs.sendall(raw)
        if close:
            theirs.close()

    threading.Thread(target=write, daemon=True).start()
    reader = WireReader(ours)
    if not close:
        reader.peer = theirs  # keep it open (and referenced) for the test's lifetime
    return reader


def chunked(pieces: list[bytes], extension: str = "", trailers: bytes = b"") -> bytes:
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), extension.encode(), p) for p in pieces if p)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"0\r\n" + trailers + b"\r\n"


def h11_agrees(response, raw: bytes, closed: bool = True, method: str = "GET") -> list[str]:
    parse = parse_with_h11(method, "/x", "example.test", [("Accept", "*/*")], b"", raw, closed)
    return agreement(response, parse, build_request(method, "/x", "example.test", [("Accept", "*/*")]))


def test_the_request_is_byte_for_byte_what_h11_writes():
    headers = [("User-Agent", "t/1"), ("X-Request-ID", "abc"), ("Connection", "close")]
    for method, body in (("GET", b""), ("POST", b'{"a": 1}'), ("PUT", b"x" * 1000)):
        ours = build_request(method, "/p?q=1", "h:8080", headers, body)
        parse = parse_with_h11(method, "/p?q=1", "h:8080", headers, body,
                               b"HTTP/1.1 204 No Content\r\n\r\n", closed=False)
        assert parse.request_bytes == ours


def test_content_length_reads_exactly_and_leaves_the_next_response_on_the_connection():
    first = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"
    second = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nnop"
    reader = deliver(first + second, close=False)
    one, two = read_response(reader), read_response(reader)
    assert (one.status, one.body, one.header("x-a")) == (200, b"hello", "1")
    assert (two.status, two.reason, two.body) == (404, "Not Found", b"nop")
    assert one.raw == first and two.raw == second and not reader.eof
    assert h11_agrees(one, one.raw, closed=False) == [] and h11_agrees(two, two.raw, closed=False) == []


def test_chunked_with_extensions_and_trailers():
    raw = chunked([b"Wiki", b"pedia ", b"in \r\n\r\nchunks."], extension=";name=value",
                  trailers=b"Expires: never\r\nX-Sum: 22\r\n")
    response = read_response(deliver(raw))
    assert response.body == b"Wikipedia in \r\n\r\nchunks." and response.chunk_sizes == [4, 6, 14]
    assert response.trailers == [("Expires", "never"), ("X-Sum", "22")]
    assert response.raw == raw and h11_agrees(response, raw) == []


def test_a_body_without_length_or_chunking_runs_until_the_close():
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
    response = read_response(deliver(raw))
    assert response.body == b"until the end" and "closed" in response.framing
    assert h11_agrees(response, raw) == []


@pytest.mark.parametrize(("method", "head"), [
    ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\n"),
    ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
    ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 27\r\nETag: \"x\"\r\n\r\n"),
])
def test_responses_that_never_have_a_body(method, head):
    response = read_response(deliver(head, close=False), method)
    assert response.body == b"" and response.framing.startswith("no body")
    assert h11_agrees(response, head, closed=False, method=method) == []


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # the peer closed before the length
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # not hex
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",  # no CRLF after data
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",  # chunked must be the final coding
    b"HTTP/1.1 200 OK\r\n folded: header\r\n\r\n",
    b"SSH-2.0-OpenSSH\r\n",
])
def test_malformed_responses_are_refused(raw):
    with pytest.raises(ProtocolError):
        read_response(deliver(raw))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(st.binary(min_size=1, max_size=3000), max_size=12),
       trailers=st.lists(st.tuples(st.from_regex(r"X-[A-Za-z]{1,8}", fullmatch=True),
                                   st.from_regex(r"[a-z0-9]{0,12}", fullmatch=True)), max_size=3))
def test_hand_decoded_chunks_match_h11_and_the_original(pieces, trailers):
    raw = chunked(pieces, trailers=b"".join(f"{k}: {v}\r\n".encode() for k, v in trailers))
    response = read_response(deliver(raw))
    assert response.body == b"".join(pieces)
    assert response.chunk_sizes == [len(p) for p in pieces]
    assert h11_agrees(response, raw) == []


def test_h11_is_a_real_second_opinion():
    """If the hand parser got the body wrong, the comparison would say so."""
    raw = chunked([b"abc", b"def"])
    response = read_response(deliver(raw))
    response.body = b"abcdeX"
    assert h11_agrees(response, raw) == ["bodies differ: 6 bytes by hand, 6 by h11"]
