"""Below nginx: what each service does on its own port with clients nginx would have stopped. Malformed requests
get a 4xx problem document with its request id, then the close (or only the close, where the server gives up
on bytes it cannot frame); slow clients are cut once they stay silent for the client timeout (shortened here
to CLIENT_TIMEOUT seconds through $STACK_CLIENT_TIMEOUT_S), and a well-behaved client on the same port sees only
200s meanwhile."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from services.common.http import CLIENT_TIMEOUT_ENV
from tests import service_process
from tests.conftest import alongside

CLIENT_TIMEOUT = 2
# Generous on a busy two-core machine: a cut must come after the timeout and well before this.
CUT_WITHIN = CLIENT_TIMEOUT * 2 + 6


# granian parses HTTP in Rust (hyper) and answers what it cannot parse itself, before the app, with a bodiless
# 400 and Connection: close; there is no hook to make that a problem document. Every other server's answer is one.
BARE_PARSE_ERRORS = {"web-granian"}
# A stalled body: web (gunicorn, uWSGI: the app reads it, services/web/uwsgi.ini) and httpbin answer 408 and
# close; Tornado (catalog) closes. granian 2.8.9 bounds no read of a body: the client keeps its thread until it
# goes (behind nginx it never gets there: nginx reads the whole body first, within 60 s).
STALLED_BODY = {"catalog": "closes", "web-granian": "waits"}


@pytest.fixture(scope="module", params=sorted(service_process.LAUNCH))
def instance(request, tmp_path_factory):
    data = tmp_path_factory.mktemp(request.param)
    with service_process.running(request.param, data, {CLIENT_TIMEOUT_ENV: str(CLIENT_TIMEOUT)}) as started:
        yield started


def assert_bare_4xx_then_close(reply: bytes) -> dict:
    head = reply.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert re.match(r"http/1\.1 4\d\d ", head) and "connection: close" in head and "content-length: 0" in head, head
    return {"status": int(head.split(" ")[1])}


@contextmanager
def bystander(instance: service_process.ServiceProcess) -> Iterator[list]:
    """A keep-alive client requesting the service's /json until the block ends: the statuses it saw."""
    connection = http.client.HTTPConnection(service_process.HOST, instance.port, timeout=10)

    def one_round(seen: list) -> None:
        connection.request("GET", f"/{instance.service}/json")
        response = connection.getresponse()
        response.read()
        seen.append(response.status)
        time.sleep(0.01)

    try:
        with alongside(one_round) as seen:
            yield seen
    finally:
        connection.close()


def exchange(instance: service_process.ServiceProcess, raw: bytes) -> tuple[bytes, float]:
    """Send raw bytes, read until the service closes: what came back and how long the close took."""
    with socket.create_connection((service_process.HOST, instance.port), timeout=CUT_WITHIN) as sock:
        started = time.monotonic()
        sock.sendall(raw)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass  # closed with our bytes unread (a 100 KiB head): the kernel resets instead of closing
        return reply, time.monotonic() - started


def assert_problem_then_close(reply: bytes, statuses: range = range(400, 500)) -> dict:
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}
    status = int(status_line.split(" ")[1])
    assert status in statuses, status_line
    assert headers["content-type"].startswith("application/problem+json"), headers
    problem = json.loads(body)
    assert problem["status"] == status and problem["title"]
    assert problem["request_id"] == headers["x-request-id"]
    return problem


def malformed(path: str) -> dict[str, bytes]:
    return {
        "not HTTP": b"GARBAGE\r\n\r\n",
        "duplicate Host": f"GET {path} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".encode(),
        "space in a header name": f"GET {path} HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n".encode(),
        "NUL in a header value": f"GET {path} HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n".encode(),
        "obs-fold": f"GET {path} HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n".encode(),
        "CL and TE": f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "0\r\n\r\n".encode(),
        "negative Content-Length": f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n".encode(),
        "two Content-Lengths": f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\nx".encode(),
        "bad chunk size": f"POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".encode(),
        "HTTP/9.9": f"GET {path} HTTP/9.9\r\nHost: a\r\n\r\n".encode(),
        "100 KiB header": f"GET {path} HTTP/1.1\r\nHost: a\r\nX-Big: {'a' * 100_000}\r\n\r\n".encode(),
        "100 KiB URL": f"GET {path}?{'a' * 100_000} HTTP/1.1\r\nHost: a\r\n\r\n".encode(),
        "a TLS hello": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"x" * 50,
    }


def test_malformed_requests_get_a_problem_or_a_close_on_the_services_own_port(instance):
    path = f"/{instance.service}/signup" if instance.service == "web" else f"/{instance.service}/anything"
    answered = {}
    with bystander(instance) as seen:
        for name, raw in malformed(path).items():
            reply, _ = exchange(instance, raw)  # returns only once the service closed the connection
            if reply:  # nothing at all is the other allowed answer: the server gave up on unframeable bytes
                answered[name] = (assert_bare_4xx_then_close(reply) if instance.variant in BARE_PARSE_ERRORS
                                  and not reply.lower().count(b"application/problem+json")
                                  else assert_problem_then_close(reply))
    assert seen and set(seen) == {200}
    # Each server answers (not only closes) what it can frame: a bad line or header, CL with TE, bad chunking.
    assert {"not HTTP", "space in a header name", "CL and TE", "bad chunk size"} <= set(answered), answered


def test_a_stalled_request_head_is_cut_after_the_client_timeout(instance):
    with bystander(instance) as seen:
        reply, took = exchange(instance, f"GET /{instance.service}/json HTTP/1.1\r\nHost: a\r\nX-Slow: ".encode())
    assert reply == b"" or assert_problem_then_close(reply, range(408, 409))
    assert CLIENT_TIMEOUT - 0.5 <= took < CUT_WITHIN
    assert seen and set(seen) == {200}


def test_a_stalled_body_is_cut_after_the_client_timeout(instance):
    """Half a body, then silence: STALLED_BODY says what each server does."""
    path = {"web": "/web/signup", "catalog": "/catalog/items", "httpbin": "/httpbin/post"}[instance.service]
    head = f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    behaviour = STALLED_BODY.get(instance.variant, "answers")
    if behaviour == "waits":
        with bystander(instance) as seen, pytest.raises(TimeoutError):
            exchange(instance, head.encode() + b'{"half": ')  # still open after CUT_WITHIN
        assert seen and set(seen) == {200}
        return
    with bystander(instance) as seen:
        reply, took = exchange(instance, head.encode() + b'{"half": ')
    if behaviour == "closes":
        assert reply == b""
    else:
        assert assert_problem_then_close(reply, range(408, 409))["title"] == "Request Timeout"
    assert CLIENT_TIMEOUT - 0.5 <= took < CUT_WITHIN
    assert seen and set(seen) == {200}


def test_an_idle_connection_is_closed_after_the_client_timeout(instance):
    connection = http.client.HTTPConnection(service_process.HOST, instance.port, timeout=CUT_WITHIN)
    connection.request("GET", f"/{instance.service}/json")
    response = connection.getresponse()
    response.read()
    if response.getheader("Connection") == "close":  # uWSGI: one request per connection, said and done
        assert instance.variant == "web-uwsgi" and connection.sock is None
        return
    started = time.monotonic()
    assert connection.sock.recv(1) == b""  # the service closed it
    assert CLIENT_TIMEOUT - 0.5 <= time.monotonic() - started < CUT_WITHIN
