"""End to end against the native stack (supervisor), on its own addresses and ports so it never collides
with a stack the user left running."""

from __future__ import annotations

import asyncio
import collections
import csv
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from deploy import postgres, procs
from deploy.stack import Native
from iolab import stack as iolab_stack
from services.catalog.openapi import OPENAPI as CATALOG_OPENAPI
from services.httpbin.openapi import OPENAPI as HTTPBIN_OPENAPI
from services.sockets import protocol
from services.sockets.client import ask_time
from services.web.openapi import OPENAPI as WEB_OPENAPI
from stack.topology import HTTP_SERVICES, ROOT, SERVICES, STREAM_SERVICES, ZONE, Site
from tests.clients import requests_suite
from tests.conftest import free_port
from tests.e2e import readme_examples
from tests.e2e.contract import RunningStack, StackContract, bystander, ps_output
from tests.e2e.http_contract import HttpSemanticsContract, make_subject
from tests.e2e.monitoring_contract import MonitoringContract

pytestmark = pytest.mark.e2e
NET = "127.0.21"


def start_native_stack(var: Path, net: str, settings: dict[str, str] | None = None) -> RunningStack:
    """A native stack of its own (addresses net.x, a free port, state in var), up and healthy."""
    settings = settings or {}
    site = Site(net=net, public_host=f"{net}.1", public_port=free_port(f"{net}.1"), var=var,
                monitoring=settings.get("MONITORING") == "1")
    env = {**os.environ, "STACK_NET": site.net, "STACK_HOST": site.public_host,
           "STACK_PORT": str(site.public_port), "STACK_VAR": str(var), "MODE": "native", **settings}

    by_name = {s.name: s for s in SERVICES}

    def addresses_of(label: str) -> list[str]:
        return [site.public_host] if label in ("", "nginx") else site.instance_addresses(by_name[label])

    stack = RunningStack(site, "native", env, Native(site).log_text, addresses_of)
    result = stack.deploy("up", "--mode", "native")
    if result.returncode:
        stack.deploy("down")
        pytest.fail(f"native up failed:\n{result.stdout}\n{result.stderr}")
    return stack


@pytest.fixture(scope="module")
def native_stack(tmp_path_factory):
    stack = start_native_stack(tmp_path_factory.mktemp("native-var"), NET, {"MONITORING": "1"})
    yield stack
    stack.deploy("down")


@pytest.fixture(scope="module", params=["sync", "gthread"])
def web_under_another_worker_class(request, tmp_path_factory):
    """The stack with web on gunicorn's sync or gthread workers (gevent is the default, tested above)."""
    settings = {"WEB_WORKER_CLASS": request.param, "WEB_WORKERS": "3",
                **({"WEB_THREADS": "4"} if request.param == "gthread" else {})}
    stack = start_native_stack(tmp_path_factory.mktemp(f"native-{request.param}"), "127.0.22", settings)
    yield stack
    stack.deploy("down")


class TestWebContractUnderEveryWorkerClass(HttpSemanticsContract):
    """web's HTTP contract (orders, idempotency, preconditions, restarts) once more per worker class: each
    thread or worker has its own SQLite connection, and sync's one-request-per-process still keeps it."""

    @pytest.fixture
    def stack(self, web_under_another_worker_class):
        result = web_under_another_worker_class.deploy("ps")
        worker_class = web_under_another_worker_class.env["WEB_WORKER_CLASS"]
        assert f"gunicorn {worker_class} workers: 3" in result.stdout, result.stdout
        return web_under_another_worker_class

    @pytest.fixture
    def subject(self, stack):
        return make_subject("web", stack)

    # Not once more per worker class: the keys outlive a process on the default stack already, and replacing web's
    # instances under a client is what this file's changed-worker-class test does (CI's time).
    test_a_retry_with_the_same_idempotency_key_after_a_rolling_restart_makes_one = None


@pytest.fixture(scope="module")
def postgres_stack(tmp_path_factory):
    """The stack with STORE=postgres: Debian's Postgres under supervisord, its cluster in the stack's var/."""
    var = tmp_path_factory.mktemp("native-postgres")
    stack = start_native_stack(var, "127.0.23", {"STORE": "postgres"})
    yield stack
    stack.deploy("down")
    assert postgres.remove_cluster(var)  # pytest's directory is private: the cluster lived in /var/lib/postgresql


class TestEveryServiceContractOnPostgres(HttpSemanticsContract):
    """The HTTP contract of all three services (preconditions, idempotency, pagination, restarts) once more with
    their data in Postgres: web through gevent-cooperative psycopg, catalog and httpbin through async psycopg."""

    @pytest.fixture
    def stack(self, postgres_stack):
        return postgres_stack

    def test_the_data_lives_in_postgres_run_by_its_own_user_and_no_sqlite_file_is_made(self, stack):
        import psycopg

        from stack import credentials

        subject = make_subject("catalog", stack)
        path, _ = self.create(subject)
        site = stack.site
        url = site.database_url
        password = credentials.read(credentials.POSTGRES, site.secrets)
        with psycopg.connect(url, password=password) as conn:
            found = conn.execute("SELECT name FROM catalog.items WHERE id = %s", (int(path.rsplit("/", 1)[1]),))
            assert found.fetchone() == (subject.put_body["name"],)
            schemas = {row[0] for row in conn.execute("SELECT service FROM public.stack_migrations")}
            assert schemas == {s.name for s in HTTP_SERVICES}
        assert not list((site.var / "data").glob("*.sqlite3"))
        postmaster = psutil.Process(int(Native(site).ctl("pid", "postgres").stdout))
        assert postmaster.username() == (postgres.run_as() or psutil.Process().username())
        assert postmaster.cmdline()[:3] == [str(postgres.binaries() / "postgres"), "-D",
                                            str(postgres.data_directory(site.var))]
        assert (postgres.data_directory(site.var) / "PG_VERSION").exists()

    def test_a_session_made_on_one_web_instance_is_seen_by_the_other(self, stack):
        """Two web instances, each its own gunicorn: the session lives in the shared store, so every request of
        one login is recognised whichever instance nginx picks."""
        first, second = list(stack.site.instances(stack.site.scaled(SERVICES[0])).values())[:2]
        email = f"{uuid.uuid4().hex[:8]}@example.com"
        account = {"email": email, "password": "correct horse battery"}
        assert requests.post(f"http://{first}/web/signup", json=account, timeout=10).status_code == 201
        login = requests.post(f"http://{first}/web/login", json=account, timeout=10)
        assert login.status_code == 200 and login.cookies
        me = requests.get(f"http://{second}/web/me", cookies=login.cookies.get_dict(), timeout=10)
        assert me.status_code == 200 and me.json()["email"] == email, me.text
        assert requests.get(f"http://{second}/web/me", timeout=10).status_code == 401  # not without the cookie


    def test_with_postgres_stopped_data_is_a_503_problem_the_rest_answers_and_it_recovers(self, stack):
        """A store outage is the server's condition, not the client's: 503 problem documents (never a 500, never
        a hang), endpoints without data keep answering, and the pools reconnect by themselves afterwards."""
        native = Native(stack.site)
        data_paths = ["/catalog/items", "/httpbin/bins", "/catalog/items/1"]
        native.ctl("stop", "postgres")
        try:
            for path in data_paths:
                for _ in range(3):  # the pools' idle connections are dead first, then no new one can be made
                    started = time.monotonic()
                    response = requests.get(stack.url(path), timeout=30)
                    assert response.status_code == 503, (path, response.status_code, response.text)
                    assert response.headers["Content-Type"].startswith("application/problem+json")
                    assert response.json()["title"] == "Database unavailable"
                    assert time.monotonic() - started < 12, path  # the pool's wait, bounded
            session = requests.get(stack.url("/web/me"), cookies={"sid": "a" * 43}, timeout=30)  # looked up: 503
            assert session.status_code == 503 and session.json()["title"] == "Database unavailable", session.text
            assert requests.get(stack.url("/web/me"), timeout=10).status_code == 401  # no cookie: no lookup
            for path in ("/catalog/json", "/httpbin/json", "/web/json"):
                assert requests.get(stack.url(path), timeout=10).status_code == 200, path
        finally:
            native.ctl("start", "postgres")
        deadline = time.monotonic() + 60
        for path in data_paths[:2]:
            while (status := requests.get(stack.url(path), timeout=30).status_code) != 200:
                assert status == 503 and time.monotonic() < deadline, (path, status)
                time.sleep(0.5)


def wait_for_every_service(stack: RunningStack, timeout: float = 60) -> None:
    """Until every HTTP service answers its health check through nginx (supervisor restarts the killed)."""
    deadline = time.monotonic() + timeout
    for service in HTTP_SERVICES:
        while True:
            try:
                if requests.get(stack.url(service.health_path), timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"{service.name} did not come back"
            time.sleep(0.3)


class TestNativeStack(StackContract, HttpSemanticsContract, MonitoringContract):
    @pytest.fixture
    def stack(self, native_stack):
        return native_stack

    def test_ps_lists_every_supervised_program_running(self, stack):
        out = ps_output(stack)
        for name in ("nginx", *(instance for s in SERVICES for instance in s.instance_names())):
            assert re.search(rf"^{name}\s+RUNNING\s+pid \d+", out, re.M), out
        for service in HTTP_SERVICES:  # each instance: its address, health and (web) worker class and count
            for name, bind in stack.site.instances(service).items():
                workers = r"gunicorn gevent workers: [1-9]" if service.name == "web" else "one process"
                assert re.search(rf"^instance {name}\s+{re.escape(bind)}\s+healthy\s+{workers}", out, re.M), out

    def test_forwarded_headers_count_only_when_nginx_sends_them(self, stack):
        """A local process that connects to a service directly cannot claim to be someone else, or elsewhere."""
        httpbin = next(s for s in HTTP_SERVICES if s.name == "httpbin")
        forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Host": "evil.example",
                  "X-Forwarded-Proto": "https"}
        direct = requests.get(f"http://{stack.site.address(httpbin)}:{httpbin.port}/httpbin/get", headers=forged,
                              timeout=5).json()
        assert direct["origin"] == "127.0.0.1"  # the socket's peer, not the claim
        assert direct["url"].startswith(f"http://{stack.site.address(httpbin)}:{httpbin.port}/")
        proxied = requests.get(stack.url("/httpbin/get"), headers=forged, timeout=5).json()
        assert proxied["origin"] == "127.0.0.1"  # nginx replaced the claim with what it saw
        assert proxied["url"].startswith(stack.site.base_url)

    def request_from(self, stack, source: str, method: str, path: str, body: str | None = None,
                     headers: dict | None = None) -> http.client.HTTPResponse:
        """One request through nginx from a chosen loopback source address (each one a different client)."""
        connection = http.client.HTTPConnection(stack.site.public_host, stack.site.public_port, timeout=20,
                                                source_address=(source, 0))
        try:
            connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            response.body = response.read()
            return response
        finally:
            connection.close()

    def test_one_client_over_its_limits_gets_429s_and_others_do_not(self, stack):
        """Per client address: expensive endpoints 20/s (burst 40), 128 requests at once. This machine's own
        127.0.0.1 is exempt (make loadtest, make compare); 127.0.0.2 and .3 are other clients."""
        def burst(source: str, path: str, n: int) -> list[http.client.HTTPResponse]:
            with ThreadPoolExecutor(16) as pool:
                return list(pool.map(lambda _: self.request_from(stack, source, "GET", path), range(n)))

        limited = burst("127.0.0.2", "/catalog/cpu?n=10", 80)  # 80 at once: more than the burst of 40
        statuses = collections.Counter(r.status for r in limited)
        assert set(statuses) == {200, 429} and statuses[200] >= 40, statuses
        refused = next(r for r in limited if r.status == 429)
        assert refused.getheader("Content-Type") == "application/problem+json"
        assert refused.getheader("Retry-After") == "1"
        assert json.loads(refused.body)["request_id"] == refused.getheader("X-Request-ID")
        assert {r.status for r in burst("127.0.0.1", "/catalog/cpu?n=10", 80)} == {200}  # exempt
        assert self.request_from(stack, "127.0.0.4", "GET", "/catalog/cpu?n=10").status == 200  # someone else
        with ThreadPoolExecutor(140) as pool:  # 140 requests in progress at once from one client: 128 allowed
            held = list(pool.map(lambda _: self.request_from(stack, "127.0.0.3", "GET", "/web/io?ms=1500"),
                                 range(140)))
        statuses = collections.Counter(r.status for r in held)
        assert set(statuses) == {200, 429} and statuses[200] >= 128 - 16, statuses

    def test_one_clients_idempotency_key_never_replays_anothers_bin(self, stack):
        """Bins are anonymous: the key is scoped to the client address nginx saw."""
        key, body = uuid.uuid4().hex, json.dumps({"note": "mine"})

        def post_from(source: str) -> http.client.HTTPResponse:
            connection = http.client.HTTPConnection(stack.site.public_host, stack.site.public_port, timeout=10,
                                                    source_address=(source, 0))
            connection.request("POST", "/httpbin/bins", body, {"Content-Type": "application/json",
                                                               "Idempotency-Key": key})
            response = connection.getresponse()
            response.read()
            return response

        first, replay, other = post_from("127.0.0.2"), post_from("127.0.0.2"), post_from("127.0.0.3")
        assert first.status == replay.status == other.status == 201
        assert replay.getheader("Idempotent-Replayed") == "true"
        assert replay.getheader("Location") == first.getheader("Location")
        assert other.getheader("Idempotent-Replayed") is None  # the other client's own new bin
        assert other.getheader("Location") != first.getheader("Location")

    def test_each_service_answers_directly_on_its_own_loopback_address(self, stack):
        for service in HTTP_SERVICES:
            for address in stack.site.instance_addresses(service):  # every instance
                direct = f"http://{address}:{service.port}{service.prefix}json"
                response = requests.get(direct, headers={"X-Request-ID": "direct-1"}, timeout=5)
                assert response.status_code == 200 and response.json() == {"message": "Hello, World!"}
            assert response.headers["X-Request-ID"] == "direct-1"
            assert response.headers["Server"] != "nginx"  # the framework's own server answered

    def test_raw_http_client_straight_to_each_service_sees_its_own_chunking(self, stack):
        for service in HTTP_SERVICES:
            url = f"http://{stack.site.address(service)}:{service.port}{service.prefix}json"
            result = subprocess.run([sys.executable, "-m", "wire.rawhttp", url], cwd=ROOT, env=stack.env,
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stdout + result.stderr
            assert result.stdout.count("h11: the same request bytes") == 4, service.name
            # the server's own chunks, one per line written (through nginx they are nginx's)
            assert "framing: Transfer-Encoding: chunked: 3 chunks" in result.stdout, service.name
            assert f"ss: TIME-WAIT {stack.site.address(service)}:{service.port} <-> " in result.stdout

    @pytest.mark.skipif(os.geteuid() != 0, reason="capturing packets needs root (CI runs as root)")
    def test_trace_straight_to_a_service_skips_nginx(self, stack, tmp_path):
        web = next(s for s in HTTP_SERVICES if s.name == "web")
        url = f"http://web.{ZONE}:{web.port}/web/json"
        picture = tmp_path / "direct.svg"
        result = subprocess.run([sys.executable, "-m", "wire.trace", url, "--format", "svg", "--out", str(picture)],
                                cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"A {stack.site.address(web)} TTL 5 s" in result.stdout  # the service's own address, from DNS
        assert "nginx: not on this path" in result.stdout
        assert re.search(r"SYN-ACK +seq=", result.stdout) and "the server sent the first FIN" in result.stdout
        # The picture: no nginx lane; every packet between the client and web, and the DNS datagrams.
        lanes = re.findall(r'data-lane="([^"]+)"', picture.read_text())
        assert lanes == ["client", "dns", "web"], lanes
        drawn = re.findall(r'<g class="packet" data-time="[\d.]+" data-src="([^"]+)" data-dst="([^"]+)"',
                           picture.read_text())
        service = f"{stack.site.address(web)}:{web.port}"
        with_web = [pair for pair in drawn if service in pair]
        assert len(with_web) >= 9 and all(":5353" in "".join(pair) for pair in set(drawn) - set(with_web)), drawn

    def test_http3_is_off_natively_exactly_when_nginx_lacks_the_module_and_says_so(self, stack):
        """Debian 12's nginx 1.22 has no http_v3_module: no QUIC listener, no Alt-Svc, and every HTTP/3 command
        says why instead of failing somewhere later."""
        configure = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
        if "--with-http_v3_module" in configure.split():
            pytest.skip("this nginx has HTTP/3: the Compose tests' Http3Contract covers that side")
        http3 = stack.driver().http3()
        said = http3.said
        assert not http3.offered and said.startswith("HTTP/3: off in native mode") and "MODE=compose" in said, said
        urls = stack.deploy("urls")
        assert urls.stdout.count(said) == 1 and "make trace HTTP=3" not in urls.stdout, urls.stdout
        https = requests.get(stack.site.tls_base_url + "/web/json", verify=str(stack.site.tls.ca), timeout=10)
        assert https.status_code == 200 and "Alt-Svc" not in https.headers
        assert " quic" not in (stack.site.var / "run" / "nginx.conf").read_text()
        traced = subprocess.run([sys.executable, "-m", "wire.trace", "--http", "3", "/web/json"], cwd=ROOT,
                                env=stack.env, capture_output=True, text=True, timeout=60)
        assert traced.returncode == 2 and traced.stdout.strip() == said, traced.stdout + traced.stderr
        compared = subprocess.run([sys.executable, "-m", "wire.quic", "compare"], cwd=ROOT, env=stack.env,
                                  capture_output=True, text=True, timeout=60)
        assert compared.returncode == 0, compared.stdout + compared.stderr
        assert re.search(r"TCP: 2 round trips before the request", compared.stdout), compared.stdout
        assert f"UDP: no HTTP/3 answer (recv(): [Errno 111] Connection refused): {said}" in compared.stdout

    @pytest.mark.skipif(os.geteuid() != 0, reason="capturing packets needs root (CI runs as root)")
    def test_tcp_vs_udp_drawn_from_a_capture(self, stack, tmp_path):
        """The picture `make tcp-vs-udp FORMAT=svg` draws: TCP's handshake, data and close against UDP's two
        datagrams, each arrow a captured packet on its transport's lanes."""
        picture = tmp_path / "tcp-vs-udp.svg"
        result = subprocess.run([sys.executable, "-m", "wire.tcp_vs_udp", "--out", str(picture)], cwd=ROOT,
                                env=stack.env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        drawn = re.findall(r'<g class="packet"[^>]*data-kind="(\w+)">.*?fill="#[0-9a-f]+">([^<]+)</text></g>',
                           picture.read_text(), re.DOTALL)
        udp = [label for kind, label in drawn if label.startswith("datagram")]
        tcp = [label for kind, label in drawn if not label.startswith("datagram")]
        assert len(udp) == 2 and udp[0].startswith("datagram: TIME"), drawn  # one out, one back, nothing else
        assert tcp[:3] == ["SYN", "SYN-ACK", "ACK"] and sum(label == "FIN-ACK" for label in tcp) == 2, tcp
        assert any(label.startswith("TIME") for label in tcp) and len(tcp) >= 8, tcp
        assert f"TCP: {len(tcp)} packets" in result.stdout and "UDP: 2 datagrams" in result.stdout

    @pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is not installed")
    def test_trace_without_capture_permission_says_so_and_goes_on(self, stack, tmp_path):
        without_capture = ["setpriv", "--bounding-set=-net_raw"]  # even root cannot open a packet socket then
        picture = tmp_path / "uncaptured.svg"
        result = subprocess.run([*without_capture, sys.executable, "-m", "wire.trace", "/httpbin/json", "--format",
                                 "svg", "--out", str(picture)], cwd=ROOT, env=stack.env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
        assert "Packets: not visible (capturing packets needs root or CAP_NET_RAW" in result.stdout
        assert "(packets not captured)" in result.stdout
        assert "← HTTP/1.1 200 OK" in result.stdout and "nginx closed first" in result.stdout
        assert re.search(r"access line: .* rid=trace-\w+ rt=", result.stdout)  # the logs still tell their part
        # the picture draws what the client's sockets saw instead: the DNS question and answer, connect, the
        # request, the response, close
        labels = re.findall(r'<g class="packet".*?fill="#[0-9a-f]+">([^<]+)</text></g>', picture.read_text(),
                            re.DOTALL)
        assert [label.split(" (")[0].split(" ")[:2] for label in labels] == [
            ["DNS", "query"], ["DNS", "answer"], ["connect():", "SYN"], ["GET", "/httpbin/json"], ["HTTP/1.1", "200"],
            ["close()"]], labels

    def test_a_second_up_with_a_changed_worker_class_applies_it_one_instance_at_a_time(self, stack):
        """`make up` with WEB_WORKER_CLASS=sync on a running stack used to restart web and silently keep gevent;
        now each instance is replaced in turn while the other serves: a client sees no error meanwhile."""
        def ps() -> str:
            result = stack.deploy("ps")
            assert result.returncode == 0, result.stderr
            return result.stdout

        def workers(worker_class: str, count: str = r"\d+") -> list[str]:
            return re.findall(rf"^instance (web-\d)\s.*gunicorn {worker_class} workers: {count}\b", ps(), re.M)

        assert workers("gevent") == ["web-1", "web-2"]
        try:
            with bystander(stack) as seen:
                result = subprocess.run([sys.executable, "-m", "deploy", "up", "--mode", "native"], cwd=ROOT,
                                        env={**stack.env, "WEB_WORKER_CLASS": "sync", "WEB_WORKERS": "2"},
                                        capture_output=True, text=True, timeout=180)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "applying the new settings of web-1" in result.stdout  # one instance, then the other
            assert result.stdout.index("web-1") < result.stdout.index("applying the new settings of web-2")
            assert workers("sync", "2") == ["web-1", "web-2"]
            assert seen and set(seen) == {200}, collections.Counter(seen)
        finally:
            restored = stack.deploy("up", "--mode", "native", timeout=180)  # the fixture's settings again: gevent
            assert restored.returncode == 0, restored.stdout + restored.stderr
        assert workers("gevent") == ["web-1", "web-2"]

    def test_acknowledged_writes_survive_sigkill_and_a_restart_of_the_stack(self, stack):
        """A 201 is a promise: the write must outlive a SIGKILL of its service (SQLite in WAL, synchronous=NORMAL
        is durable across a process crash) and `make down && make up`."""
        tag = uuid.uuid4().hex[:12]
        item = requests.post(stack.url("/catalog/items"), json={"name": f"durable {tag}", "price": 1, "stock": 1},
                             headers=stack.operator, timeout=10)
        account = requests.post(stack.url("/web/signup"), timeout=10,
                                json={"email": f"{tag}@example.com", "password": "correct horse battery"})
        document = requests.put(stack.url(f"/httpbin/bins/{tag}"), json={"tag": tag}, timeout=10)
        assert (item.status_code, account.status_code, document.status_code) == (201, 201, 201)

        def written() -> None:
            assert requests.get(stack.url(item.headers["Location"]), timeout=10).json()["name"] == f"durable {tag}"
            login = requests.post(stack.url("/web/login"), timeout=10,
                                  json={"email": f"{tag}@example.com", "password": "correct horse battery"})
            assert login.status_code == 200
            assert requests.get(stack.url(f"/httpbin/bins/{tag}"), timeout=10).json()["document"] == {"tag": tag}

        supervisord = int((stack.site.var / "run" / "supervisord.pid").read_text())
        for pid in procs.descendants(supervisord):  # every service process, without a chance to flush anything
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            if any(name in command for name in (b"services.catalog", b"services.httpbin", b"gunicorn")):
                os.kill(pid, 9)
        wait_for_every_service(stack)
        written()
        for step in ("down", "up"):
            result = stack.deploy(step, *(("--mode", "native") if step == "up" else ()))
            assert result.returncode == 0, result.stdout + result.stderr
        written()

    def test_a_stopped_http_service_is_a_502_problem_document_from_nginx(self, stack):
        ctl = [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(stack.site.var / "run" /
                                                                              "supervisord.conf")]
        catalog = next(s for s in HTTP_SERVICES if s.name == "catalog")
        subprocess.run([*ctl, "stop", *catalog.instance_names()], check=True, capture_output=True, timeout=60)
        try:
            response = requests.get(stack.url("/catalog/json"), headers={"X-Request-ID": "down-1"}, timeout=10)
            assert response.status_code == 502
            assert response.headers["Content-Type"] == "application/problem+json"
            assert response.json() | {"detail": ""} == {"type": "about:blank", "title": "Bad Gateway", "status": 502,
                                                         "detail": "", "request_id": "down-1"}
        finally:
            subprocess.run([*ctl, "start", *catalog.instance_names()], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 20
        while requests.get(stack.url("/catalog/healthz"), timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "catalog did not come back"
            time.sleep(0.2)

    def test_a_stopped_socket_service_refused_directly_hidden_by_the_proxy(self, stack):
        """The seed's TCP-vs-UDP difference when the server is down, and what a layer-4 proxy makes of it."""
        ctl = [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(stack.site.var / "run" /
                                                                              "supervisord.conf")]
        tcp, udp = (next(s for s in STREAM_SERVICES if s.name == name) for name in ("time-tcp", "time-udp"))
        direct = stack.site.address(tcp), tcp.port
        proxied = stack.site.public_host, stack.site.public_port_of(tcp)
        subprocess.run([*ctl, "stop", "time-tcp", "time-udp"], check=True, capture_output=True, timeout=60)
        try:
            with pytest.raises(ConnectionRefusedError):  # TCP, direct: the kernel's reset
                ask_time(*direct, "tcp", timeout=2)
            with pytest.raises(ConnectionRefusedError):  # UDP, direct: the ICMP port unreachable
                ask_time(*direct, "udp", timeout=2)
            with socket.create_connection(proxied, timeout=5) as sock:  # succeeds: nginx did the handshake
                sock.sendall(protocol.TIME_REQUEST)
                try:
                    assert sock.recv(100) == b""  # then nginx fails upstream and closes, without a byte ...
                except ConnectionResetError:
                    pass  # ... or resets, when our request was still unread in its socket
            try:  # nginx keeps the ICMP error to itself: silence, or (nginx 1.22) an empty datagram
                assert ask_time(*proxied, "udp", timeout=2).reply == b""
            except TimeoutError:
                pass
            assert re.search(rf" TCP :{proxied[1]} -> {re.escape(direct[0])}:{tcp.port} 502 ",
                             stack.logs("nginx-stream"))
            assert "Connection refused) while proxying and reading from upstream, udp client" in \
                stack.logs("nginx-error")
        finally:
            subprocess.run([*ctl, "start", "time-tcp", "time-udp"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if protocol.is_time_reply(ask_time(*proxied, udp.transport, timeout=1).reply):
                    break
            except OSError:
                time.sleep(0.2)
        assert protocol.is_time_reply(ask_time(*proxied, "tcp", timeout=5).reply)

    @pytest.mark.skipif(os.geteuid() != 0, reason="strace attaching to the stack's processes needs root (ptrace)")
    def test_each_server_sleeps_in_the_wait_call_its_io_model_says(self, stack):
        rows = {row["process"]: row for row in iolab_stack.wait_calls(stack.site, seconds=1.0)}
        for event_loop in ("catalog", "httpbin", "echo", "nginx: worker", "web: gunicorn worker"):
            assert "epoll_wait" in rows[event_loop]["calls"], rows[event_loop]
        assert "do_epoll_wait" in rows["catalog"]["idle_in"]
        for polling in ("time-tcp", "time-udp", "dns"):  # socketserver-style loops: poll() with a timeout
            assert "poll" in rows[polling]["calls"] and "poll_schedule_timeout" in rows[polling]["idle_in"]
        assert rows["nginx: master"]["idle_in"] == "sigsuspend"  # it only waits for signals

    def test_many_keep_alive_clients_through_nginx_each_hold_a_service_connection(self, stack):
        labels = iolab_stack.labelled_processes(stack.site.var)
        nginx = [pid for pid, (label, _) in labels.items() if label.startswith("nginx")]
        for service in HTTP_SERVICES:
            pids = [pid for pid, (label, _) in labels.items() if label.split(":")[0] == service.name]
            row = asyncio.run(iolab_stack.through_nginx(stack.site, service, pids, nginx, 300, hold_ms=2000))
            assert (row["ok"], row["errors"]) == (300, {}), row
            assert row["peak_upstream"] >= 250, row  # nearly every request waited in the service at once
            assert row["service_kib_per_connection"] is not None

    def test_the_locustfile_runs_headless_without_a_failure(self, stack, tmp_path):
        """Every scenario checks status, headers and bodies: zero failures means correct under load."""
        out = tmp_path / "load"
        result = subprocess.run(
            [sys.executable, "-m", "loadtest", "headless", "--users", "20", "--rate", "20", "--time", "6s",
             "--classes", "CatalogBrowser Shopper HttpbinCaller BenchUser", "--out", str(out)],
            cwd=ROOT, env={**stack.env, "LOAD_SERVICE": "httpbin", "LOAD_ENDPOINT": "io", "LOAD_IO_MS": "20"},
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        with (out / "locust_stats.csv").open() as stats:
            rows = {row["Name"]: row for row in csv.DictReader(stats)}
        assert int(rows["Aggregated"]["Request Count"]) > 100  # that the load ran (it does thousands), not a speed
        assert int(rows["Aggregated"]["Failure Count"]) == 0
        for name in ("/catalog/items", "/web/orders [POST retry]", "/httpbin/get", "io"):
            assert int(rows[name]["Request Count"]) > 0, name
        assert (out / "report.html").stat().st_size > 10_000
        # which instance answered: nginx balanced each service over every one of its instances
        spread = json.loads((out / "spread.json").read_text())
        for service in HTTP_SERVICES:
            assert set(spread[service.name]) == set(stack.site.instances(service).values()), spread
        assert "which instance answered" in result.stdout


# ---------------------------------------------------------------- the OpenAPI documents, fuzzed

# Left out of fuzzing, explicitly: endpoints whose whole point is to be slow (every example would wait
# seconds) — their contracts are covered by the unit and end-to-end tests above.
SLOW_BY_DESIGN = r"/(io|fanout|delay/\{n\}|drip|stream/\{n\}|sse|jsonl)$"


def five_xx_asked_for(case) -> bool:
    """/status/{codes}: only a code the request listed. /unstable: only when failure_rate is absent or above 0."""
    if case.path.endswith("/status/{codes}"):
        return True  # checked against the codes in validate()
    rate = (case.query or {}).get("failure_rate")
    return rate is None or float(rate) > 0


# The operations that answer 5xx on request (/status/500, /unstable): schemathesis's own 5xx check would fail
# them, so there a stricter one runs instead (five_xx_asked_for, and the codes asked of /status).
FIVE_XX_BY_DESIGN = {"/httpbin/status/{codes}", "/httpbin/unstable"}
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.response_headers_conformance]
FUZZ = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def fuzz(document: dict):
    return schemathesis.openapi.from_dict(document).exclude(path_regex=SLOW_BY_DESIGN)


def validate(case, stack, headers: dict | None = None) -> None:
    chosen = [c for c in CHECKS if not (case.path in FIVE_XX_BY_DESIGN and c is checks.not_a_server_error)]
    response = case.call_and_validate(base_url=stack.site.base_url, checks=chosen, headers=headers)
    if case.path in FIVE_XX_BY_DESIGN and response.status_code >= 500:
        assert five_xx_asked_for(case), (case.path, case.query, response.status_code)
        if case.path.endswith("/status/{codes}"):
            asked = {part.split(":")[0] for part in str(case.path_parameters["codes"]).split(",")}
            assert str(response.status_code) in asked, (case.path_parameters, response.status_code)


@fuzz(CATALOG_OPENAPI).parametrize()
@FUZZ
def test_catalog_conforms_to_its_openapi(case, native_stack):
    validate(case, native_stack, native_stack.operator)  # as the operator: writes get past 401 to their rules


@fuzz(WEB_OPENAPI).parametrize()
@FUZZ
def test_web_conforms_to_its_openapi(case, native_stack):
    validate(case, native_stack)


@fuzz(HTTPBIN_OPENAPI).parametrize()
@FUZZ
def test_httpbin_conforms_to_its_openapi(case, native_stack):
    validate(case, native_stack)


def test_requests_own_test_suite_passes_against_our_httpbin(native_stack, tmp_path):
    """requests' own tests (written against pytest-httpbin's local httpbin.org) against ours through nginx, plain
    and TLS: all pass but the table in tests/clients/requests_suite.py, whose every row still fails for its reason."""
    suite = requests_suite.suite_directory()
    report = tmp_path / "requests-suite.xml"
    site = native_stack.site
    env = {**os.environ, "STACK_SUITE_HTTPBIN_URL": site.base_url + "/httpbin",
           "STACK_SUITE_HTTPBIN_TLS_URL": site.tls_base_url + "/httpbin", "STACK_SUITE_CA": str(site.tls.ca),
           "PYTHONPATH": str(ROOT / "tests" / "clients")}
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env.pop(proxy, None)
    command = [sys.executable, "-m", "pytest", "-p", "stack_httpbin_fixture", "-p", "no:cacheprovider",
               "-o", "addopts=", "-q", "--timeout", "60", f"--junitxml={report}", "tests/test_requests.py",
               *(f"--deselect={test}" for test in requests_suite.NOT_RUN)]
    result = subprocess.run(command, cwd=suite, env=env, capture_output=True, text=True, timeout=600)
    outcomes = junit_outcomes(report)
    failed = {test for test, outcome in outcomes.items() if outcome == "failed"}
    passed = [test for test, outcome in outcomes.items() if outcome == "passed"]
    print(f"requests' suite against our httpbin: {len(passed)} passed, {len(failed)} failed (listed), "
          f"{len(requests_suite.NOT_RUN)} not run")
    assert failed == set(requests_suite.FAILS), (failed ^ set(requests_suite.FAILS), result.stdout[-3000:])
    assert len(passed) >= 300 and not set(outcomes) & set(requests_suite.NOT_RUN)


def test_the_docs_shell_examples_do_what_their_comments_say(native_stack):
    """Every ```sh example of README and the docs pages, in reading order, in one shell, against this stack
    (tests/e2e/readme_examples.py): each exits as it should and shows the statuses its comment claims; the few
    not run say why."""
    everything = readme_examples.all_examples(ROOT)
    runnable = [example for example in everything if not readme_examples.skip_reason(example)]
    env = {**native_stack.env, "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}  # the docs: activate first
    outcomes = readme_examples.run(runnable, native_stack.site, env, ROOT)
    broken = [(f"{example.document}:{example.line}", example.command[:120], wrong, output[-400:])
              for example, output, status in outcomes if (wrong := readme_examples.check(example, output, status))]
    print(f"README and docs/: {len(everything)} shell examples, {len(runnable)} run, {len(broken)} broken")
    assert len(runnable) >= 80 and not broken, broken


def junit_outcomes(report: Path) -> dict[str, str]:
    """pytest's JUnit XML as node id -> passed | failed | skipped."""
    import xml.etree.ElementTree as ElementTree

    outcomes = {}
    for case in ElementTree.parse(report).iter("testcase"):
        module, _, klass = case.get("classname", "").rpartition(".")
        path = module.replace(".", "/") + ".py"
        node = f"{path}::{klass}::{case.get('name')}" if klass[:1].isupper() else \
            f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        kinds = {child.tag for child in case}
        outcomes[node] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return outcomes


class TestNativeShutdown:
    """Runs after the tests above (pytest keeps file order): `make down` must leave no process behind."""

    def test_make_down_stops_every_process(self, native_stack):
        supervisord = int((native_stack.site.var / "run" / "supervisord.pid").read_text())
        tree = procs.descendants(supervisord) | {supervisord}
        assert len(tree) >= 1 + 5 + 5  # supervisord, its five programs, gunicorn's and nginx's workers
        assert procs.marked(native_stack.site.var)
        result = subprocess.run(["make", "--no-print-directory", "down"], cwd=ROOT, env=native_stack.env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert not {pid for pid in tree if procs.alive(pid)}
        assert procs.marked(native_stack.site.var) == set()
        assert not (native_stack.site.var / "mode").exists()


def test_clean_data_says_what_it_deletes_and_make_clean_keeps_the_databases(tmp_path):
    var = tmp_path / "var"
    (var / "data").mkdir(parents=True)
    (var / "log").mkdir()
    (var / "data" / "catalog.sqlite3").write_bytes(b"x" * 10)
    (var / "log" / "nginx-access.log").write_text("a line\n")
    # make clean's own rule for var/, run on this copy: everything but data/ goes.
    makefile = (ROOT / "Makefile").read_text()
    rule = next(line.strip() for line in makefile.splitlines() if "! -name data" in line)
    subprocess.run(["bash", "-c", rule.lstrip("@")], cwd=tmp_path, check=True)
    assert sorted(p.name for p in var.iterdir()) == ["data"]
    env = {**os.environ, "STACK_VAR": str(var), "DOCKER_HOST": "unix:///nonexistent.sock"}  # never a real engine
    result = subprocess.run([sys.executable, "-m", "deploy", "clean-data"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"deleting {var / 'data' / 'catalog.sqlite3'} (10 bytes)" in result.stdout + result.stderr
    assert not (var / "data").exists()
