"""What every running stack must do, whatever its mode: the same tests run against native and Compose."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import dns.message
import dns.query
import dns.rcode
import pytest
import requests

from deploy.stack import Compose, Native, driver
from loadtest import chaos, reload_window
from services.sockets import protocol
from services.sockets.client import ask_time, echo_roundtrip
from stack import credentials
from stack.topology import HTTP_SERVICES, ROOT, STREAM_SERVICES, ZONE, Site
from tests.conftest import alongside

# Header fields that exist only for an HTTP/1.1 connection: malformed in an HTTP/2 or HTTP/3 request.
CONNECTION_SPECIFIC_FIELDS = [("connection", "close"), ("keep-alive", "timeout=5"), ("proxy-connection", "close"),
                              ("transfer-encoding", "chunked"), ("upgrade", "websocket"), ("te", "gzip")]

HEX32 = re.compile(r"[0-9a-f]{32}")


@dataclass
class RunningStack:
    site: Site
    mode: str
    env: dict[str, str]
    logs: Callable[[str], str]  # service name ("nginx" too) -> its log so far
    addresses_of: Callable[[str], list[str]]  # DNS label ("" is the apex) -> the addresses its A records give

    def url(self, path: str) -> str:
        return self.site.base_url + path

    @property
    def operator(self) -> dict[str, str]:
        """The header that lets a request change the catalog (the token `make up` made for this stack)."""
        return {"Authorization": f"Bearer {credentials.read(credentials.OPERATOR, self.site.secrets)}"}

    def driver(self) -> Native | Compose:
        return driver(self.mode, self.site, self.env)

    def deploy(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "deploy", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout)


def assert_framing(response: requests.Response) -> None:
    """TechEmpower-style response rules: Server, a fresh Date, Content-Type, and Content-Length or chunked."""
    headers = response.headers
    assert headers.get("Server"), headers
    sent = email.utils.parsedate_to_datetime(headers["Date"])
    assert abs((datetime.now(UTC) - sent).total_seconds()) < 10, headers["Date"]
    assert headers.get("Content-Type"), headers
    if "Content-Length" in headers:
        assert int(headers["Content-Length"]) == len(response.content)
    else:
        assert headers["Transfer-Encoding"] == "chunked"


@contextmanager
def bystander(stack: RunningStack) -> Iterator[list]:
    """A well-behaved client requesting every service's /json until the block ends: the statuses it saw."""
    with requests.Session() as session:

        def one_round(seen: list) -> None:
            for service in HTTP_SERVICES:
                seen.append(session.get(stack.url(f"{service.prefix}json"), timeout=10).status_code)

        with alongside(one_round) as seen:
            yield seen


def wait_for_log(stack: RunningStack, service: str, needle: str, count: int = 1, timeout: float = 10) -> str:
    """The service's log once it holds `needle` `count` times (logs are written after the response is sent)."""
    deadline = time.monotonic() + timeout
    while True:
        text = stack.logs(service)
        if text.count(needle) >= count or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def ps_output(stack: RunningStack) -> str:
    """`ps` output, after checking it reports every hop healthy (socket services through nginx's stream proxy)."""
    result = stack.deploy("ps")
    assert result.returncode == 0, result.stderr
    for name in ("nginx", "dns", *(s.name for s in HTTP_SERVICES)):
        assert re.search(rf"health\s+{name}\s+(HTTP 200|{re.escape(ZONE)} -> )", result.stdout), result.stdout
    for service in STREAM_SERVICES:
        where = f"{service.transport} {stack.site.public_host}:{stack.site.public_port_of(service)}"
        assert re.search(rf"health\s+{service.name}\s+{re.escape(where)} -> answers", result.stdout), result.stdout
    return result.stdout


class StackContract:
    """Mixed into a Test class that provides a `stack` fixture returning a RunningStack."""

    def test_each_service_answers_json_and_plaintext_through_nginx(self, stack):
        for service in HTTP_SERVICES:
            response = requests.get(stack.url(f"{service.prefix}json"), timeout=5)
            assert response.status_code == 200 and response.json() == {"message": "Hello, World!"}
            assert response.headers["Content-Type"].startswith("application/json")
            assert response.headers["Server"] == "nginx"  # server_tokens off: no version
            assert_framing(response)
            response = requests.get(stack.url(f"{service.prefix}plaintext"), timeout=5)
            assert response.status_code == 200 and response.text == "Hello, World!"
            assert response.headers["Content-Type"].startswith("text/plain")
            assert_framing(response)

    def test_io_cpu_and_health_endpoints_through_nginx(self, stack):
        for service in HTTP_SERVICES:
            assert requests.get(stack.url(f"{service.prefix}io?ms=20"), timeout=5).json() == {"waited_ms": 20}
            assert requests.get(stack.url(f"{service.prefix}cpu?n=10"), timeout=5).json()["n"] == 10
            health = requests.get(stack.url(service.health_path), timeout=5)
            assert health.json() == {"status": "ok", "service": service.name}

    def test_bad_query_is_a_400_problem_document_through_nginx(self, stack):
        for service in HTTP_SERVICES:
            response = requests.get(stack.url(f"{service.prefix}io?ms=soon"), timeout=5)
            assert response.status_code == 400
            assert response.headers["Content-Type"].startswith("application/problem+json")
            problem = response.json()
            assert problem["status"] == 400 and problem["request_id"] == response.headers["X-Request-ID"]

    def test_nginx_answers_its_own_errors_as_problem_documents(self, stack):
        """What nginx refuses before any service sees it is a problem document too, with the request id."""
        url = stack.url
        answers = {
            404: requests.get(url("/no/such/file"), timeout=5),
            405: requests.post(url("/"), data=b"x", timeout=5),  # the static landing page takes GET only
            413: requests.post(url("/httpbin/anything"), data=b"x" * (1024 * 1024 + 1), timeout=10),
            414: requests.get(url("/web/" + "a" * 17_000), timeout=5),
            400: requests.get(url("/"), headers={"X-Big": "a" * 17_000}, timeout=5),  # nginx's 494, sent as 400
        }
        answers[-404] = requests.get(url("/.problem"), timeout=5)  # the internal page is not reachable
        for status, response in answers.items():
            assert response.status_code == abs(status), (status, response.text[:200])
            assert response.headers["Content-Type"] == "application/problem+json"
            problem = response.json()
            assert problem["status"] == abs(status) and problem["title"] and problem["type"] == "about:blank"
            assert problem["request_id"] == response.headers["X-Request-ID"]
        assert answers[413].json()["title"] == "Content Too Large"
        # A request line nginx cannot parse: a 400 document (from the catch-all server), then the close.
        host, port = stack.site.public_host, stack.site.public_port
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(b"GARBAGE\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"Content-Type: application/problem+json" in head
        assert b"Connection: close" in head and json.loads(body)["status"] == 400

    def test_hostile_input_gets_4xx_problems_and_other_clients_see_nothing(self, stack):
        """Bodies and parameters that used to end in a 500 (or a broken response): each a 4xx problem document,
        while a well-behaved client keeps getting 200s."""
        bodies = [b"[" * 5000 + b"]" * 5000, b'{"a": NaN}', b"[1e999]", b"1" * 5000, b'{"a": "\xff"}']
        requests_to_send = [("POST", path, body, {"Content-Type": "application/json", **credential})
                            for path, credential in (("/catalog/items", stack.operator), ("/web/signup", {}),
                                                     ("/httpbin/bins", {})) for body in bodies]
        requests_to_send += [("GET", path, None, {}) for path in (
            "/httpbin/delay/%D9%A3", "/httpbin/delay/inf", "/httpbin/status/200:0", "/httpbin/status/200:nan",
            "/httpbin/status/%D9%A3%D9%A3%D9%A3", "/httpbin/response-headers?Content-Length=1",
            "/httpbin/response-headers?Transfer-Encoding=chunked", "/httpbin/response-headers?X-Accel-Redirect=/")]
        requests_to_send.append(("POST", "/httpbin/post", b"--x\r\n\r\n\r\n--x--\r\n",
                                 {"Content-Type": "multipart/form-data; boundary=x"}))
        with bystander(stack) as seen:
            for method, path, body, headers in requests_to_send:
                response = requests.request(method, stack.url(path), data=body, headers=headers, timeout=10)
                assert 400 <= response.status_code < 500, (path, body and body[:20], response.status_code)
                assert response.headers["Content-Type"].startswith("application/problem+json"), path
                assert response.json()["request_id"] == response.headers["X-Request-ID"]
        assert seen and set(seen) == {200}

    def test_a_crafted_host_header_cannot_steer_absolute_urls_or_redirects(self, stack):
        """nginx routes on the name only: "localhost:80@evil.example" reached the site and its absolute URLs
        (and redirect-to's idea of "this host") pointed at evil.example."""
        crafted = {"Host": "localhost:80@evil.example"}
        response = requests.get(stack.url("/httpbin/get"), headers=crafted, timeout=10)
        if response.status_code == 400:  # newer nginx (Compose's) refuses such a Host outright: fine too
            assert response.headers["Content-Type"] == "application/problem+json"
        else:  # Debian 12's nginx 1.22 routes it: the forwarded Host must be the plain name
            echoed = response.json()["url"]
            assert "evil" not in echoed and echoed.startswith("http://localhost/"), echoed
        redirect = requests.get(stack.url("/httpbin/redirect-to"), params={"url": "http://evil.example/"},
                                headers=crafted, allow_redirects=False, timeout=10)
        assert redirect.status_code == 400
        plain = requests.get(stack.url("/httpbin/get"), headers={"Host": "localhost:8080"}, timeout=10).json()
        assert plain["url"].startswith("http://localhost:8080/")  # a well-formed host[:port] goes through
        assert plain["headers"]["Host"] == "localhost:8080"  # and is echoed as sent, port included (as httpbin.org)

    def test_malformed_http_gets_a_problem_or_a_close_from_nginx(self, stack):
        """Request-line and header abuse, sent raw: nginx answers each with a problem document (4xx, or the
        501/505 RFC 9112 asks for) or closes; a well-behaved client alongside sees only 200s."""
        cases = {
            b"GET /web/json HTTP/1.1\r\nHost: localhost\r\nHost: other\r\n\r\n": 400,  # duplicate Host
            b"POST /web/json HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"
            b"\r\n\r\n0\r\n\r\n": 400,  # CL and TE: a smuggling attempt
            b"GET /web/json HTTP/1.1\r\nHost: localhost\r\nBad Header: x\r\n\r\n": 400,
            b"GET /web/json HTTP/1.1\r\nHost: localhost\r\nX-A: a\r\n b\r\n\r\n": 400,  # obs-fold
            b"GET /web/json HTTP/1.1\r\nHost: localhost\r\nX-A: a\x00b\r\n\r\n": 400,
            b"POST /web/json HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n": 400,
            b"POST /web/json HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1, 2\r\n\r\nx": 400,
            b"POST /web/json HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n": 400,
            b"POST /web/json HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip\r\n\r\n": 501,
            b"GET /web/json HTTP/9.9\r\nHost: localhost\r\n\r\n": 505,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n": 400,
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"x" * 50: 400,  # a TLS hello on the HTTP port
        }
        host, port = stack.site.public_host, stack.site.public_port
        with bystander(stack) as seen:
            for raw, status in cases.items():
                with socket.create_connection((host, port), timeout=10) as sock:
                    sock.sendall(raw)
                    reply = b""
                    while chunk := sock.recv(65536):
                        reply += chunk
                head, _, body = reply.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 %d " % status), (raw[:60], head[:80])
                assert b"Content-Type: application/problem+json" in head, raw[:60]
                assert json.loads(body)["status"] == status
        assert seen and set(seen) == {200}

    def test_slow_clients_are_cut_off_without_stalling_anyone(self, stack):
        """Slowloris: headers a byte at a time never finish; nginx drops the connection once
        client_header_timeout (10 s) passes, and serves everyone else meanwhile."""
        host, port = stack.site.public_host, stack.site.public_port
        slow = [socket.create_connection((host, port), timeout=30) for _ in range(3)]
        started = time.monotonic()
        try:
            with bystander(stack) as seen:
                for sock in slow:
                    sock.sendall(b"GET /web/json HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                ended = []
                while len(ended) < len(slow) and time.monotonic() - started < 25:
                    for sock in slow:
                        if sock in ended:
                            continue
                        try:
                            sock.sendall(b"a")
                            sock.settimeout(0.5)
                            if sock.recv(65536) == b"":
                                ended.append(sock)
                        except TimeoutError:
                            pass
                        except OSError:
                            ended.append(sock)
            assert len(ended) == len(slow), "a slow client was never cut off"
            assert 9 <= time.monotonic() - started < 25  # client_header_timeout, not earlier
            assert seen and set(seen) == {200}
        finally:
            for sock in slow:
                sock.close()

    def test_httpbins_events_stream_through_nginx_as_they_happen(self, stack):
        """Server-sent events one second apart: the first reaches the client while the rest are still to come
        (nginx does not buffer them: X-Accel-Buffering: no). Generous: buffered, the first would arrive with
        the last, two seconds later; the test asks for one second between them."""
        started = time.monotonic()
        with requests.get(stack.url("/httpbin/sse?count=3&duration=3s"), stream=True, timeout=20) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith(b"id:"))
            first_at = time.monotonic() - started
            rest = [line for line in lines if line.startswith(b"id:")]
        assert (first, rest) == (b"id: 1", [b"id: 2", b"id: 3"])
        assert time.monotonic() - started - first_at > 1.0

    def test_httpbins_websocket_echo_upgrades_through_nginx_and_nothing_else_does(self, stack):
        async def talk() -> tuple[str, bytes]:
            async with aiohttp.ClientSession() as session, session.ws_connect(
                    stack.url("/httpbin/websocket/echo")) as socket_:
                await socket_.send_str("through nginx")
                text = (await socket_.receive()).data
                await socket_.send_bytes(b"\x00\x01")
                return text, (await socket_.receive()).data

        assert asyncio.run(talk()) == ("through nginx", b"\x00\x01")
        handshake = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                     "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
        elsewhere = requests.get(stack.url("/httpbin/get"), headers=handshake, timeout=10)
        assert elsewhere.status_code == 200  # the Upgrade was not passed on: a plain answer
        assert "Upgrade" not in elsewhere.json()["headers"]

    def test_httpbin_behind_nginx_answers_as_at_its_root(self, stack):
        """The prefix behaves like a root: the index, absolute URLs with the client's host and port, redirects
        that stay under /httpbin, digest auth signed for the URI the client sent, the request as nginx passed it."""
        index = requests.get(stack.url("/httpbin/"), timeout=10)
        assert index.status_code == 200 and 'href="/httpbin/get"' in index.text
        hop = requests.get(stack.url("/httpbin/absolute-redirect/2"), allow_redirects=False, timeout=10)
        assert hop.headers["Location"] == stack.url("/httpbin/absolute-redirect/1")
        assert requests.get(stack.url("/httpbin/relative-redirect/3"), timeout=10).url == stack.url("/httpbin/get")
        digest = requests.get(stack.url("/httpbin/digest-auth/auth/ada/s3cret/SHA-256"), timeout=10,
                              auth=requests.auth.HTTPDigestAuth("ada", "s3cret"))
        assert digest.status_code == 200 and digest.json() == {"authenticated": True, "user": "ada"}
        dump = requests.post(stack.url("/httpbin/dump/request"), data=b"a=1", timeout=10,
                             headers={"X-Request-ID": "dump-1", "Content-Type": "text/plain"})
        head = dump.text.split("\r\n\r\n")[0].lower()
        assert dump.text.startswith("POST /httpbin/dump/request HTTP/1.1\r\n") and dump.text.endswith("a=1")
        assert "x-request-id: dump-1" in head and "x-forwarded-for: " in head and "\r\nconnection:" not in head
        picture = requests.get(stack.url("/httpbin/image"), headers={"Accept": "image/webp"}, timeout=10)
        assert picture.headers["Content-Type"] == "image/webp" and picture.content[:4] == b"RIFF"
        big = os.urandom(512 * 1024)  # beyond the 64 KiB it once stopped at, within nginx's 1 MiB
        echoed = requests.post(stack.url("/httpbin/anything"), data=big, timeout=20,
                               headers={"Content-Type": "application/octet-stream"}).json()
        assert base64.b64decode(echoed["data"].split(",", 1)[1]) == big

    def test_httpbin_hostname_shows_every_instance_answering(self, stack):
        httpbin = next(service for service in HTTP_SERVICES if service.name == "httpbin")
        answers = [requests.get(stack.url("/httpbin/hostname"), timeout=10).json() for _ in range(12)]
        assert len({(a["hostname"], a["instance"], a["pid"]) for a in answers}) == httpbin.instances  # in turn

    def test_landing_page_lists_the_services(self, stack):
        response = requests.get(stack.url("/"), timeout=5)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
        for service in HTTP_SERVICES:  # the page's own list (tests/config holds it to the registry)
            assert f'prefix: "{service.prefix}"' in response.text
        assert HEX32.fullmatch(response.headers["X-Request-ID"])
        assert_framing(response)

    def test_request_id_round_trip(self, stack):
        rid = f"e2e-{uuid.uuid4().hex}"
        for service in HTTP_SERVICES:
            response = requests.get(stack.url(f"{service.prefix}json"), headers={"X-Request-ID": rid}, timeout=5)
            assert response.headers["X-Request-ID"] == rid
            assert rid in wait_for_log(stack, service.name, rid), f"{service.name} did not log the request id"
        nginx_log = wait_for_log(stack, "nginx", f"rid={rid}", count=len(HTTP_SERVICES))
        lines = [line for line in nginx_log.splitlines() if f"rid={rid}" in line]
        assert len(lines) == len(HTTP_SERVICES)
        for line in lines:  # the timing fields the access log promises
            assert re.search(r" rt=\d+\.\d+ uct=\d+\.\d+ uht=\d+\.\d+ urt=\d+\.\d+ ", line), line

    def test_request_id_is_generated_at_the_edge_when_absent_or_malformed(self, stack):
        for sent in ({}, {"X-Request-ID": "bad id with spaces"}):
            response = requests.get(stack.url("/catalog/json"), headers=sent, timeout=5)
            rid = response.headers["X-Request-ID"]
            assert HEX32.fullmatch(rid), rid
            assert rid in wait_for_log(stack, "catalog", rid)

    def test_one_client_connection_carries_several_requests(self, stack):
        conn = http.client.HTTPConnection(stack.site.public_host, stack.site.public_port, timeout=5)
        rids = [f"ka-{uuid.uuid4().hex}" for _ in range(2)]
        for rid in rids:
            conn.request("GET", "/web/json", headers={"X-Request-ID": rid})
            response = conn.getresponse()
            assert response.status == 200 and response.read()
            assert response.getheader("Connection") == "keep-alive"
        conn.close()
        log = wait_for_log(stack, "nginx", f"rid={rids[1]}")
        conns = [re.search(rf"rid={rid} .* conn=(\d+)/(\d+)", log).groups() for rid in rids]
        assert conns[0][0] == conns[1][0]  # the same TCP connection ...
        assert int(conns[1][1]) == int(conns[0][1]) + 1  # ... its next request

    def test_nginx_reuses_its_pooled_upstream_connections(self, stack):
        """/conn reports the TCP connection the service saw: nginx's pooled upstream connection, reused."""
        with requests.Session() as client:  # one client connection, so one nginx worker and its pool
            for service in HTTP_SERVICES:
                seen = [client.get(stack.url(f"{service.prefix}conn"), timeout=5).json() for _ in range(6)]
                assert max(s["requests_on_this_connection"] for s in seen) >= 2, (service.name, seen)
                assert all(s["forwarded"]["X-Forwarded-Proto"] == "http" for s in seen)

    def test_fanout_waits_concurrently_in_each_concurrency_model(self, stack):
        """The seed's three examples: 5 fetches of /delay/1 overlap, so the whole takes far less than their sum.
        A timing, with a wide margin on purpose: overlapped ≈ 1/5 of the sum, one after another = the sum; the
        bound is half the sum."""
        for service in HTTP_SERVICES:
            report = requests.get(stack.url(f"{service.prefix}fanout?n=5&delay=1"), timeout=30).json()
            assert [f["status"] for f in report["fetches"]] == [200] * 5, report
            assert report["total_ms"] < report["sum_of_fetch_ms"] / 2, report

    def test_login_attempts_are_rate_limited_with_a_429_problem(self, stack):
        bad = {"email": "nobody"}  # rejected (422) before any password hashing, so 40 arrive quickly

        def attempt(_: int) -> requests.Response:
            return requests.post(stack.url("/web/login"), json=bad, timeout=10)

        with ThreadPoolExecutor(8) as pool:  # 40 attempts, bounded: more than the burst of 20 allows
            responses = list(pool.map(attempt, range(40)))
        assert {r.status_code for r in responses} <= {422, 429}
        limited = [r for r in responses if r.status_code == 429]
        assert limited, "nginx let 40 rapid attempts through"
        assert limited[0].headers["Content-Type"] == "application/problem+json"
        assert limited[0].headers["Retry-After"] == "1"
        assert limited[0].json()["request_id"] == limited[0].headers["X-Request-ID"]
        deadline = time.monotonic() + 15  # let the bucket drain so later tests can log in
        while attempt(0).status_code == 429 and time.monotonic() < deadline:
            time.sleep(0.5)

    def test_unknown_host_header_gets_no_response(self, stack):
        with socket.create_connection((stack.site.public_host, stack.site.public_port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: not-ours.example\r\n\r\n")
            assert sock.recv(1024) == b""  # nginx's 444: the connection is closed without a reply

    def test_dns_answers_the_stack_names_over_udp_and_tcp(self, stack):
        host, port = stack.site.dns_endpoint(stack.mode)
        for label in ("", "nginx", "dns", *(s.name for s in HTTP_SERVICES)):
            name = f"{label}.{ZONE}" if label else ZONE
            for transport in (dns.query.udp, dns.query.tcp):
                reply = transport(dns.message.make_query(name, "A"), host, port=port, timeout=3)
                assert reply.rcode() == dns.rcode.NOERROR, name
                assert sorted(item.address for item in reply.answer[0]) == sorted(stack.addresses_of(label)), name
        reply = dns.query.udp(dns.message.make_query(f"nope.{ZONE}", "A"), host, port=port, timeout=3)
        assert reply.rcode() == dns.rcode.NXDOMAIN

    def test_ps_shows_every_service_healthy(self, stack):
        ps_output(stack)

    def test_only_the_operator_changes_the_catalog_and_web_orders_with_its_own_credential(self, stack):
        """Anyone could set an item's price, and web trusted it when placing orders."""
        item = {"name": "Guarded", "price": 700, "stock": 10}
        anonymous = requests.post(stack.url("/catalog/items"), json=item, timeout=10)
        assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")
        assert anonymous.headers["Content-Type"] == "application/problem+json"
        created = requests.post(stack.url("/catalog/items"), json=item, headers=stack.operator, timeout=10)
        assert created.status_code == 201, created.text
        path, etag = created.headers["Location"], created.headers["ETag"]
        cheap = requests.patch(stack.url(path), data=json.dumps({"price": 1}), timeout=10,
                               headers={"Content-Type": "application/merge-patch+json", "If-Match": etag})
        assert cheap.status_code == 401
        with requests.Session() as shopper:  # web still changes stock, with its own credential
            account = {"email": f"{uuid.uuid4().hex[:12]}@example.com", "password": "guarded-pass"}
            assert shopper.post(stack.url("/web/signup"), json=account, timeout=10).status_code == 201
            assert shopper.post(stack.url("/web/login"), json=account, timeout=10).status_code == 200
            order = shopper.post(stack.url("/web/orders"), json={"lines": [{"item_id": created.json()["id"],
                                                                             "quantity": 3}]}, timeout=10)
            assert order.status_code == 201, order.text
            assert order.json()["total"] == 3 * 700
        after = requests.get(stack.url(path), timeout=10).json()
        assert (after["price"], after["stock"]) == (700, 7)

    # ------------------------------------------------------------ operations: faults under load

    CHAOS_FAULTS: tuple[str, ...] = tuple(chaos.FAULTS)  # a mode may run fewer (Compose restarts are slower)

    def test_faults_under_steady_load_lose_no_request(self, stack, tmp_path):
        """make chaos, bounded: Locust's mix at 10 users while nginx reloads, gunicorn re-execs its workers,
        a worker and whole instances are SIGKILLed and every service restarts one instance at a time."""
        report = chaos.run(stack.driver(), list(self.CHAOS_FAULTS), users=10, settle=2, warmup=6, out=tmp_path)
        assert [w["fault"] for w in report["windows"]] == list(self.CHAOS_FAULTS)
        assert all(w["requests"] > 0 for w in report["windows"]), report["windows"]  # load ran through each
        assert report["failures"] == 0, (report["windows"], report["failure_messages"])
        if "nginx-reload" in self.CHAOS_FAULTS:
            # Beside Locust, plain keep-alive clients (loadtest/reload_window.py): the one that never retries may
            # lose a GET nginx's closing worker never read, and only that kind; the one that retries such a GET
            # once (RFC 9112 9.3.1) loses nothing. Both are counted, and shown.
            plain = report["plain_clients_at_reload"]
            print(f"nginx reload: plain client lost {reload_window.lost(plain, 'plain')} of "
                  f"{plain['plain']['requests']}, retrying client {reload_window.lost(plain, 'retrying')} of "
                  f"{plain['retrying']['requests']} ({plain['retrying']['retried']} retried)")
            assert plain["plain"]["requests"] > 0 and plain["retrying"]["requests"] > 0
            assert set(plain["plain"]["failures"]) <= {reload_window.UNANSWERED}, plain
            assert reload_window.lost(plain, "retrying") == 0, plain

    def test_second_up_is_harmless(self, stack):
        result = stack.deploy("up", "--mode", stack.mode, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        assert requests.get(stack.url("/web/json"), timeout=5).status_code == 200

    # ------------------------------------------------------------ layer 4 and the wire

    def stream_address(self, stack: RunningStack, name: str) -> tuple[str, int]:
        (service,) = [s for s in STREAM_SERVICES if s.name == name]
        return stack.site.public_host, stack.site.public_port_of(service)

    def test_socket_services_answer_concurrent_clients_through_nginxs_stream_proxy(self, stack):
        tcp, udp, echo = (self.stream_address(stack, name) for name in ("time-tcp", "time-udp", "echo"))
        payloads = [os.urandom(n) for n in range(1, 60_000, 2_000)]

        def ask(i: int) -> bytes:
            """TCP once; UDP as a UDP client must (DNS's resolvers do the same): a datagram may be lost, on the
            way there or back (Docker's userland proxy drops some under a burst), so ask again, up to 3 times."""
            if i % 2:
                return ask_time(*tcp, "tcp").reply
            for attempt in range(3):
                try:
                    return ask_time(*udp, "udp", timeout=2).reply
                except TimeoutError:
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

        with ThreadPoolExecutor(16) as pool:
            times = list(pool.map(ask, range(60)))
            echoed = list(pool.map(lambda p: echo_roundtrip(*echo, p), payloads))
        assert all(protocol.is_time_reply(reply) for reply in times)
        assert echoed == payloads

    def test_behind_the_stream_proxy_the_peer_is_nginx_and_messages_keep_their_size(self, stack):
        tcp, udp, echo = (self.stream_address(stack, name) for name in ("time-tcp", "time-udp", "echo"))
        # The service sees nginx's own connection, not ours: another source port. Both connections leave from
        # 127.0.0.1 towards different addresses, so the kernel may hand both the same port number now and then
        # (one CI run in many): one exchange of three with another port proves it.
        exchanges = [ask_time(*tcp, request=protocol.info_request(100 * 1024)) for _ in range(3)]
        peer_ports = [int(re.search(rb"tcp from [\d.]+:(\d+) ", e.reply).group(1)) for e in exchanges]
        assert any(peer != e.local[1] for peer, e in zip(peer_ports, exchanges, strict=True)), peer_ports
        assert all(b"request 102400 bytes" in e.reply for e in exchanges)
        assert ask_time(*udp, "udp", request=protocol.info_request(60_000)).reply.endswith(
            b"request 60000 bytes in 1 recvfrom() call\r\n")  # nginx relays a large datagram whole
        payload = os.urandom(1024 * 1024)
        assert echo_roundtrip(*echo, payload, timeout=20) == payload
        # $server_port is where nginx listens: in Compose the container's port, behind Docker's published one.
        listening = {s.transport: s.public_port if stack.mode == "compose" else stack.site.public_port_of(s)
                     for s in STREAM_SERVICES if s.name.startswith("time-")}
        log = wait_for_log(stack, "nginx-stream", f" UDP :{listening['udp']} ")
        assert re.search(rf" TCP :{listening['tcp']} -> \S+ 200 sent=\d+ received=102400 ", log), log[-2000:]
        assert re.search(rf" UDP :{listening['udp']} -> \S+ 200 sent=\d+ received=60000 ", log), log[-2000:]

    def test_netcat_and_socat_speak_to_the_socket_services(self, stack):
        tcp, udp, echo = (self.stream_address(stack, name) for name in ("time-tcp", "time-udp", "echo"))
        nc, socat = shutil.which("nc"), shutil.which("socat")
        if not (nc and socat):
            pytest.skip("nc or socat is not installed (Debian: netcat-openbsd, socat; `make up` installs them)")

        def run(command: list[str], stdin: bytes) -> bytes:
            return subprocess.run(command, input=stdin, capture_output=True, timeout=20).stdout

        assert protocol.is_time_reply(run([nc, "-N", tcp[0], str(tcp[1])], b"TIME\n"))
        assert protocol.is_time_reply(run([nc, "-u", "-w1", udp[0], str(udp[1])], b"TIME\n"))
        assert protocol.is_time_reply(run([socat, "-T2", "-", f"UDP:{udp[0]}:{udp[1]}"], b"TIME\n"))
        assert run([socat, "-", f"TCP:{echo[0]}:{echo[1]}"], b"hello, echo\n") == b"hello, echo\n"

    def test_raw_http_client_through_nginx(self, stack):
        result = subprocess.run([sys.executable, "-m", "wire.rawhttp", stack.url("/catalog/json")], cwd=ROOT,
                                env=stack.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("h11: the same request bytes") == 4
        assert "framing: Transfer-Encoding: chunked" in result.stdout
        assert "this socket is now CLOSE_WAIT" in result.stdout  # the server closed first ...
        assert "ss: TIME-WAIT" in result.stdout  # ... and holds the TIME_WAIT

    @pytest.mark.skipif(os.geteuid() != 0, reason="capturing packets needs root (CI runs as root)")
    def test_trace_follows_one_request_through_every_hop(self, stack, tmp_path):
        picture = tmp_path / "trace.html"
        result = subprocess.run([sys.executable, "-m", "wire.trace", "/catalog/json", "--format", "html", "--out",
                                 str(picture)], cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=60)
        out = result.stdout
        assert result.returncode == 0 and "Traceback" not in result.stderr, out + result.stderr
        rid = re.search(r"request id (trace-[0-9a-f]+)", out).group(1)
        assert f"A {stack.addresses_of('')[0]} TTL 5 s; NOERROR, authoritative (AA)" in out  # 1. the DNS answer
        for flags in ("SYN", "SYN-ACK", "ACK"):  # 2. the handshake, captured
            assert re.search(rf"→ \S+ +{flags} +seq=", out), flags
        assert f"X-Request-ID: {rid}\\r\\n" in out  # 3. the request bytes
        assert re.search(rf"access line: .*rid={rid} rt=", out)  # 4. nginx's line for this request id
        assert re.search(r"nginx → catalog: \S+ → \S+, (a new connection|no SYN during this trace)", out)
        assert re.search(rf"access line: \S+ \S+ \"GET /catalog/json HTTP/1.1\" 200 27 rid={rid} ", out)  # 5.
        assert "← HTTP/1.1 200 OK" in out and "framing: Content-Length: 27" in out  # 6. the response
        assert re.search(r"FIN-ACK", out) and "nginx sent the first FIN" in out  # 7. the close
        assert "ss: TIME-WAIT" in out
        # The picture: every packet the story printed (and every other one of those connections), drawn once as an
        # arrow and listed once in the table, plus the DNS datagrams; lanes for the client, DNS, nginx, the service.
        page = picture.read_text()
        told = set(re.findall(r"\+ *([\d.]+ ms) +(\d[\d.]*:\d+) → (\d[\d.]*:\d+) +[A-Z-]+ +seq=", out))
        listed = re.findall(r'<tr class="packet"><td>\+([\d.]+ ms)</td><td>([^<]+)</td><td>([^<]+)</td>', page)
        assert len(told) >= 10 and told <= set(listed), told - set(listed)
        assert page.count('<g class="packet"') == len(listed)
        # the rest: the same connections' packets the story leaves out (bare ACKs), and DNS over UDP with the
        # server the DNS lane names (in Compose its published port)
        pairs = {frozenset((src, dst)) for _, src, dst in told}
        dns_server = re.search(r'data-lane="dns">.*?fill="#555">([^<]+)</text>', page, re.DOTALL).group(1)
        assert all(frozenset((src, dst)) in pairs or dns_server in (src, dst) for _, src, dst in set(listed) - told)
        assert re.search(r'data-lane="catalog"', page) and 'data-lane="nginx"' in page and 'data-lane="dns"' in page
        assert f"rid={rid}" in page  # nginx's access line under the drawing

    # ------------------------------------------------------------------ TLS and HTTP/2 at nginx

    def tls_handshake(self, stack, *, alpn=("h2", "http/1.1"), version=None, ciphers=None) -> dict:
        """One TLS handshake with nginx's HTTPS port, trusting only the stack's CA; what was agreed."""
        context = ssl.create_default_context(cafile=str(stack.site.tls.ca))
        context.set_alpn_protocols(list(alpn))
        if version is not None:  # pin the client to one version, even one its own defaults refuse
            context.minimum_version = context.maximum_version = version
            context.set_ciphers("ALL:@SECLEVEL=0")
        if ciphers is not None:
            context.set_ciphers(ciphers)
        with socket.create_connection((stack.site.public_host, stack.site.tls_port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as secure:
            return {"version": secure.version(), "cipher": secure.cipher()[0], "alpn": secure.selected_alpn_protocol(),
                    "certificate": secure.getpeercert(binary_form=True)}

    def test_tls_offers_1_2_and_1_3_with_alpn_and_a_certificate_the_stacks_ca_signed(self, stack):
        from cryptography import x509

        agreed = self.tls_handshake(stack)
        assert agreed["version"] == "TLSv1.3" and agreed["alpn"] == "h2"
        assert self.tls_handshake(stack, alpn=("http/1.1",))["alpn"] == "http/1.1"
        tls12 = self.tls_handshake(stack, version=ssl.TLSVersion.TLSv1_2)
        assert tls12["version"] == "TLSv1.2" and tls12["cipher"].startswith("ECDHE-ECDSA-") and "GCM" in tls12["cipher"]
        certificate = x509.load_der_x509_certificate(agreed["certificate"])
        certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(stack.site.tls.ca.read_bytes()))
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {"localhost", "nginx", ZONE} <= set(names.get_values_for_type(x509.DNSName))
        assert stack.site.public_host in {str(a) for a in names.get_values_for_type(x509.IPAddress)}
        # Not trusted by anybody else: the system's CAs refuse it.
        with pytest.raises(ssl.SSLCertVerificationError):
            with socket.create_connection((stack.site.public_host, stack.site.tls_port), timeout=5) as raw:
                ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")

    @pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # deprecated: the point here
    @pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1], ids=["1.0", "1.1"])
    def test_old_tls_versions_are_refused_by_nginx(self, stack, version):
        with pytest.raises(ssl.SSLError) as refused:
            self.tls_handshake(stack, version=version)
        assert "PROTOCOL_VERSION" in str(refused.value).upper()  # nginx's alert, not our client's own refusal

    def test_weak_tls_1_2_suites_are_refused_by_nginx(self, stack):
        for suite in ("AES128-SHA", "ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"):  # no PFS; CBC
            with pytest.raises(ssl.SSLError) as refused:
                self.tls_handshake(stack, version=ssl.TLSVersion.TLSv1_2, ciphers=f"{suite}:@SECLEVEL=0")
            assert "HANDSHAKE_FAILURE" in str(refused.value).upper() or "NO_SHARED_CIPHER" in str(refused.value).upper()

    def test_http2_through_every_prefix_with_hsts_and_the_same_answers(self, stack):
        import httpx

        context = ssl.create_default_context(cafile=str(stack.site.tls.ca))
        with httpx.Client(http2=True, verify=context, base_url=stack.site.tls_base_url, timeout=10) as client:
            for service in HTTP_SERVICES:
                response = client.get(f"{service.prefix}json")
                assert response.http_version == "HTTP/2" and response.status_code == 200
                assert response.json() == {"message": "Hello, World!"}
                assert response.headers["strict-transport-security"] == "max-age=31536000"
                assert "x-request-id" in response.headers
            echoed = client.post("/httpbin/post", json={"over": "h2"})
            assert echoed.http_version == "HTTP/2" and echoed.json()["json"] == {"over": "h2"}
            assert echoed.json()["url"].startswith(f"https://{stack.site.public_host}:{stack.site.tls_port}/")
            assert client.get("/healthz").http_version == "HTTP/2"
            missing = client.get("/no/such/page")
            assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
            assert missing.headers["strict-transport-security"]  # nginx's own answers too
        plain = requests.get(stack.url("/web/json"), timeout=5)
        assert "Strict-Transport-Security" not in plain.headers  # only the HTTPS port says it

    def h2_status(self, stack, fields: list[tuple[str, str]]) -> int | None:
        """One HTTP/2 GET of /web/json with `fields` added as given (h2's own checks off: a client that does not
        care), and the status nginx answers, or None when it reset the stream or ended the connection."""
        import h2.config
        import h2.connection
        import h2.events

        context = ssl.create_default_context(cafile=str(stack.site.tls.ca))
        context.set_alpn_protocols(["h2"])
        config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        connection = h2.connection.H2Connection(config)
        with socket.create_connection((stack.site.public_host, stack.site.tls_port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as sock:
            connection.initiate_connection()
            connection.send_headers(1, [(":method", "GET"), (":scheme", "https"),
                                        (":authority", f"localhost:{stack.site.tls_port}"), (":path", "/web/json"),
                                        *fields], end_stream=True)
            sock.sendall(connection.data_to_send())
            while data := sock.recv(65_535):
                for event in connection.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        return int(dict(event.headers)[b":status"])
                    if isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                        return None
                sock.sendall(connection.data_to_send())
        return None

    def test_connection_specific_fields_over_http2_are_a_400(self, stack):
        """RFC 9113 §8.2.2: HTTP/2 has no Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding or Upgrade,
        and TE only as "trailers"; a request with one is malformed. (HTTP/3's twin: tests/e2e/http3_contract.py.)"""
        for field in CONNECTION_SPECIFIC_FIELDS:
            assert self.h2_status(stack, [field]) == 400, field
        assert self.h2_status(stack, [("te", "trailers")]) == 200
        assert self.h2_status(stack, []) == 200

    def test_plain_http_sent_to_the_tls_port_is_a_400_problem(self, stack):
        response = requests.get(f"http://{stack.site.public_host}:{stack.site.tls_port}/web/json", timeout=5)
        assert response.status_code == 400
        assert response.headers["Content-Type"] == "application/problem+json" and response.json()["status"] == 400

    def test_the_session_cookie_is_secure_over_tls_only(self, stack):
        account = {"email": f"tls-{uuid.uuid4().hex[:8]}@example.com", "password": "correct horse battery"}
        ca = str(stack.site.tls.ca)
        assert requests.post(stack.site.tls_base_url + "/web/signup", json=account, verify=ca, timeout=10
                             ).status_code == 201
        secure = requests.post(stack.site.tls_base_url + "/web/login", json=account, verify=ca, timeout=10)
        plain = requests.post(stack.url("/web/login"), json=account, timeout=10)
        assert secure.status_code == plain.status_code == 200
        assert "; Secure" in secure.headers["Set-Cookie"] and "; Secure" not in plain.headers["Set-Cookie"]
        # A client claiming https on the plain port is not believed: nginx sets X-Forwarded-Proto itself.
        claimed = requests.post(stack.url("/web/login"), json=account, headers={"X-Forwarded-Proto": "https"},
                                timeout=10)
        assert "; Secure" not in claimed.headers["Set-Cookie"]

    @pytest.mark.skipif(os.geteuid() != 0, reason="capturing packets needs root (CI runs as root)")
    def test_trace_over_tls_shows_the_handshake_between_tcp_and_http(self, stack):
        result = subprocess.run([sys.executable, "-m", "wire.trace", "--tls", "/httpbin/json"], cwd=ROOT,
                                env=stack.env, capture_output=True, text=True, timeout=60)
        out = result.stdout
        assert result.returncode == 0 and "Traceback" not in result.stderr, out + result.stderr
        assert re.search(r"2b\. TLS handshake: TLSv1\.3, [\d.]+ ms", out)
        assert re.search(r"handshake done: TLSv1\.3, cipher TLS_\w+ \(\d+-bit key\), ALPN agreed: http/1\.1", out)
        assert re.search(r"TCP connected → first request byte: [\d.]+ ms, of which the handshake [\d.]+ ms", out)
        assert "(TLS records)" in out and "is given: h2" in out
        assert "inside TLS application-data records" in out and "← HTTP/1.1 200 OK" in out

    def test_dns_truncates_the_directory_over_udp_and_answers_it_over_tcp(self, stack):
        result = subprocess.run([sys.executable, "-m", "wire.dns_truncation"], cwd=ROOT, env=stack.env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("TC is set") == 2  # without EDNS, and with EDNS(0) 4096
        assert "udp_with_fallback() does steps 1 and 3 by itself: over TCP: True" in result.stdout
        host, port = stack.site.dns_endpoint(stack.mode)
        reply = dns.query.tcp(dns.message.make_query(f"directory.{ZONE}", "TXT"), host, port=port, timeout=3)
        entries = {s.decode().split()[0] for rr in reply.answer[0] for s in rr.strings}
        assert {f"service={s.name}" for s in (*HTTP_SERVICES, *STREAM_SERVICES)} <= entries
