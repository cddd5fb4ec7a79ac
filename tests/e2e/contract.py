"""What every running stack must do, whatever its mode: the same tests run against native and Compose."""

from __future__ import annotations

import email.utils
import http.client
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import dns.message
import dns.query
import dns.rcode
import requests

from deploy.topology import HTTP_SERVICES, ROOT, ZONE, Site

HEX32 = re.compile(r"[0-9a-f]{32}")


@dataclass
class RunningStack:
    site: Site
    mode: str
    env: dict[str, str]
    logs: Callable[[str], str]  # service name ("nginx" too) -> its log so far
    address_of: Callable[[str], str]  # DNS label ("" is the apex) -> the address the stack's DNS must answer

    def url(self, path: str) -> str:
        return self.site.base_url + path

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


def wait_for_log(stack: RunningStack, service: str, needle: str, count: int = 1, timeout: float = 10) -> str:
    """The service's log once it holds `needle` `count` times (logs are written after the response is sent)."""
    deadline = time.monotonic() + timeout
    while True:
        text = stack.logs(service)
        if text.count(needle) >= count or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def ps_output(stack: RunningStack) -> str:
    """`ps` output, after checking it reports every hop healthy."""
    result = stack.deploy("ps")
    assert result.returncode == 0, result.stderr
    for name in ("nginx", "dns", *(s.name for s in HTTP_SERVICES)):
        assert re.search(rf"health\s+{name}\s+(HTTP 200|{re.escape(ZONE)} -> )", result.stdout), result.stdout
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

    def test_landing_page_lists_the_services(self, stack):
        response = requests.get(stack.url("/"), timeout=5)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
        for service in HTTP_SERVICES:
            assert f'href="{service.prefix}json"' in response.text
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
        """The seed's three examples: 5 fetches of /delay/1 overlap, so the whole takes far less than their sum."""
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
                assert [item.address for item in reply.answer[0]] == [stack.address_of(label)], name
        reply = dns.query.udp(dns.message.make_query(f"nope.{ZONE}", "A"), host, port=port, timeout=3)
        assert reply.rcode() == dns.rcode.NXDOMAIN

    def test_ps_shows_every_service_healthy(self, stack):
        ps_output(stack)

    def test_second_up_is_harmless(self, stack):
        result = stack.deploy("up", "--mode", stack.mode, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        assert requests.get(stack.url("/web/json"), timeout=5).status_code == 200
