"""The native stack with web under each other WSGI server (WEB_SERVER=uwsgi | uwsgi-http | granian; gunicorn, the
default, is test_native.py's): web's HTTP contract through nginx, `make ps` naming the server, nginx's hop in
the server's protocol, faults under load losing nothing, and for uWSGI the uwsgi packet in `make trace`, a
chain reload through its master FIFO and a rolling switch to and from gunicorn under a client.

CI runs this subset per server; STACK_E2E_ALL_SERVERS=1 adds the whole stack contract (TLS, DNS, sockets, the
full chaos list, ...) under each server too, which is about eight minutes more."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from loadtest import chaos, reload_window
from services.web.serve import children_of
from stack.topology import NGINX, ROOT, WEB_SERVERS
from tests.e2e.contract import RunningStack, StackContract, bystander
from tests.e2e.http_contract import HttpSemanticsContract, make_subject
from tests.e2e.test_native import start_native_stack

pytestmark = pytest.mark.e2e
NET = "127.0.24"
OTHER_SERVERS = [name for name in WEB_SERVERS if name != "gunicorn"]
# Faults a WSGI server's own machinery handles: its master re-reading its config and replacing every worker
# (SIGHUP: gunicorn's and uWSGI's graceful reload), a worker SIGKILLed, web's instances restarted in turn.
SERVER_FAULTS = ("gunicorn-hup", "worker-sigkill", "restart-web")


@pytest.fixture(scope="module", params=OTHER_SERVERS)
def server_stack(request, tmp_path_factory):
    stack = start_native_stack(tmp_path_factory.mktemp(f"native-{request.param}"), NET,
                               {"WEB_SERVER": request.param, "WEB_WORKERS": "2"})
    yield stack
    stack.deploy("down")


def server_of(stack: RunningStack) -> str:
    return stack.env["WEB_SERVER"]


class TestWebUnderEveryWsgiServer(HttpSemanticsContract):
    @pytest.fixture
    def stack(self, server_stack):
        return server_stack

    @pytest.fixture
    def subject(self, stack):
        return make_subject("web", stack)

    # Bad input through nginx with this server behind it: the stack contract's own tables (4xx problem
    # documents, a bystander seeing only 200s). nginx's slow-client cut-off is the same whatever serves web.
    test_hostile_input_gets_4xx_problems_and_other_clients_see_nothing = \
        StackContract.test_hostile_input_gets_4xx_problems_and_other_clients_see_nothing
    test_malformed_http_gets_a_problem_or_a_close_from_nginx = \
        StackContract.test_malformed_http_gets_a_problem_or_a_close_from_nginx
    test_bad_query_is_a_400_problem_document_through_nginx = \
        StackContract.test_bad_query_is_a_400_problem_document_through_nginx

    def test_ps_names_the_server_and_its_io_model(self, stack):
        server = WEB_SERVERS[server_of(stack)]
        result = stack.deploy("ps")
        found = re.findall(rf"^instance (web-\d)\s.*{re.escape(server.name)} {server.worker_classes[0]} workers: 2\b",
                           result.stdout, re.M)
        assert found == ["web-1", "web-2"], result.stdout

    def test_nginx_speaks_the_servers_protocol_upstream(self, stack):
        """uWSGI: a new connection from nginx for every request (no keep-alive in the uwsgi protocol, none on
        its HTTP socket); granian: pooled, though the app cannot tell which connection it came on."""
        with requests.Session() as client:
            seen = [client.get(stack.url("/web/conn"), timeout=5).json() for _ in range(6)]
        if WEB_SERVERS[server_of(stack)].program == "uwsgi":
            assert all(s["requests_on_this_connection"] == 1 for s in seen), seen
            assert len({(s["peer"]["address"], s["peer"]["port"]) for s in seen}) == 6, seen  # six connections
            assert all(s["peer"]["address"] == stack.site.address(NGINX) for s in seen), seen
        else:
            assert all(s["requests_on_this_connection"] is None and s["peer"] is None for s in seen), seen
        assert all(s["forwarded"]["X-Forwarded-Proto"] == "http" for s in seen)

    def test_request_ids_and_server_timing_as_under_gunicorn(self, stack):
        response = requests.get(stack.url("/web/json"), headers={"X-Request-ID": "wsgi-server-1"}, timeout=5)
        assert response.headers["X-Request-ID"] == "wsgi-server-1"
        assert re.fullmatch(r"app;dur=\d+(\.\d+)?", response.headers["Server-Timing"].split(",")[0].strip())
        deadline = time.monotonic() + 5
        while "rid=wsgi-server-1" not in stack.logs("web") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert re.search(r'"GET /web/json HTTP/1.1" 200 \d+ rid=wsgi-server-1 rt=', stack.logs("web"))

    def test_the_servers_own_faults_under_load_lose_no_request(self, stack, tmp_path):
        report = chaos.run(stack.driver(), list(SERVER_FAULTS), users=10, settle=2, warmup=4, out=tmp_path)
        assert [w["fault"] for w in report["windows"]] == list(SERVER_FAULTS)
        assert all(w["requests"] > 0 for w in report["windows"]), report["windows"]
        assert report["failures"] == 0, (report["windows"], report["failure_messages"])

    def test_trace_shows_the_uwsgi_packet_nginx_sent(self, stack):
        if WEB_SERVERS[server_of(stack)].protocol != "uwsgi":
            assert "uwsgi packet" not in trace(stack, "/web/json")
            return
        out = trace(stack, "/web/json")
        rid = re.search(r"request id (trace-[0-9a-f]+)", out).group(1)
        assert re.search(r"nginx → web's uWSGI, in the uwsgi protocol: \S+ → \S+:8011, a new connection", out), out
        assert "one uwsgi packet of" in out
        assert re.search(r"header: modifier1=0 \(a WSGI request\), datasize=\d+ \(bytes [0-9a-f]{2} [0-9a-f]{2}, "
                         r"little-endian\), modifier2=0", out), out
        for variable in ("REQUEST_METHOD = GET", "PATH_INFO = /web/json", f"HTTP_X_REQUEST_ID = {rid}",
                         "SERVER_PROTOCOL = HTTP/1.1"):
            assert f"  {variable}\n" in out, variable
        assert "web: Flask on uWSGI, pre-fork, the uwsgi protocol from nginx (uwsgi_pass)" in out

    def test_a_chain_reload_through_the_master_fifo_loses_no_request(self, stack):
        """uWSGI's `c` command replaces its workers one at a time; a client meanwhile sees only 200s."""
        if WEB_SERVERS[server_of(stack)].program != "uwsgi":
            return
        fifo = Path(stack.site.var) / "run" / "web-1.fifo"
        master = int((Path(stack.site.var) / "run" / "web-1.pid").read_text())
        before = set(children_of(master))
        assert len(before) == 2 and fifo.is_fifo()
        with bystander(stack) as seen:
            fifo.write_text("c")
            deadline = time.monotonic() + 60
            while (now := set(children_of(master))) & before or len(now) < 2:
                assert time.monotonic() < deadline, (before, now)
                time.sleep(0.2)
            time.sleep(1)
        assert seen and set(seen) == {200}, collections.Counter(seen)

    def test_switching_web_to_gunicorn_and_back_under_a_client_loses_no_request(self, stack):
        """A changed WEB_SERVER rolls like any setting: each instance in turn, nginx's hop changing from
        uwsgi_pass to proxy_pass with it (an nginx reload), and back. A reload closes idle kept-alive
        connections, so a client that never resends may see one request unanswered (loadtest/reload_window.py);
        one that resends an unanswered GET once, as RFC 9112 9.3.1 allows, loses nothing."""
        if server_of(stack) != "uwsgi":
            return
        try:
            with reload_window.clients_running(stack.site, connections=4, path="/web/json") as seen:
                switched = subprocess.run([sys.executable, "-m", "deploy", "up", "--mode", "native"], cwd=ROOT,
                                          env={**stack.env, "WEB_SERVER": "gunicorn"}, capture_output=True,
                                          text=True, timeout=240)
            assert switched.returncode == 0, switched.stdout + switched.stderr
            assert_only_the_reload_race(seen)
            assert "gunicorn gevent workers: 2" in stack.deploy("ps").stdout
        finally:
            with reload_window.clients_running(stack.site, connections=4, path="/web/json") as seen:
                back = stack.deploy("up", "--mode", "native", timeout=240)
            assert back.returncode == 0, back.stdout + back.stderr
            assert_only_the_reload_race(seen)
        assert "uwsgi gevent workers: 2" in stack.deploy("ps").stdout


def assert_only_the_reload_race(seen: dict) -> None:
    """Both clients were answered throughout; the retrying one lost nothing, the plain one at most requests that
    nginx's reload left unanswered on a reused connection (never a 5xx, a cut answer or a refused connection)."""
    assert seen["plain"]["requests"] > 50 and seen["retrying"]["requests"] > 50, seen
    assert reload_window.lost(seen, "retrying") == 0, seen
    assert set(seen["plain"]["failures"]) <= {reload_window.UNANSWERED}, seen


def trace(stack: RunningStack, path: str) -> str:
    result = subprocess.run([sys.executable, "-m", "wire.trace", path], cwd=ROOT, env=stack.env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr
    return result.stdout


if os.environ.get("STACK_E2E_ALL_SERVERS") == "1":
    class TestWholeStackUnderEveryWsgiServer(StackContract):
        """The full run: every stack-level test once more with web under each other server."""

        @pytest.fixture
        def stack(self, server_stack):
            return server_stack
