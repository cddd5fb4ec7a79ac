"""A stopping instance loses no request: SIGTERM closes the listener, finishes what is running, answers what
still arrives on open keep-alive connections with Connection: close, and exits once quiet (services/common/drain.py).
The asyncio services do this themselves; gunicorn's gevent worker does it by its own design (checked too)."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from deploy.topology import ROOT
from services.common import drain
from tests.conftest import free_port

LAUNCH = {
    "catalog": [sys.executable, "-m", "services.catalog", "--bind"],
    "httpbin": [sys.executable, "-m", "services.httpbin", "--bind"],
    "web": [sys.executable, "-m", "gunicorn", "-c", "services/web/gunicorn_conf.py", "--workers", "1",
            "services.web.wsgi:app", "--bind"],
}


@pytest.fixture(params=sorted(LAUNCH))
def instance(request, tmp_path):
    service = request.param
    port = free_port()
    env = {**os.environ, "STACK_DATA": str(tmp_path), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([*LAUNCH[service], f"127.0.0.1:{port}"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", f"/{service}/healthz")
            if connection.getresponse().status == 200:
                connection.close()
                break
        except OSError:
            pass
        assert time.monotonic() < deadline and process.poll() is None, f"{service} did not start"
        time.sleep(0.1)
    yield service, port, process
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def get(connection: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response


def test_sigterm_drains_then_exits(instance):
    service, port, process = instance
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    first = get(kept, f"/{service}/json")
    assert first.status == 200 and first.getheader("Connection") != "close"  # a keep-alive connection, idle now

    slow: dict[str, int] = {}

    def slow_request() -> None:  # in flight when the signal arrives
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        slow["status"] = get(connection, f"/{service}/io?ms=1500").status

    runner = threading.Thread(target=slow_request)
    runner.start()
    time.sleep(0.3)
    signalled = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)

    deadline = time.monotonic() + 3
    while True:  # the listener closes at once: nginx gets a refusal and tries another instance
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
        time.sleep(0.05)

    late = get(kept, f"/{service}/json")  # arrives on the open connection while stopping: served, then closed
    assert late.status == 200
    assert late.getheader("Connection", "").lower() == "close"
    runner.join(timeout=10)
    assert slow == {"status": 200}  # the request in flight finished
    assert process.wait(timeout=drain.LIMIT_S + 5) == 0
    # Once nothing runs and nothing arrives, it goes (no waiting out the whole limit).
    assert time.monotonic() - signalled < drain.LIMIT_S
