"""A stopping instance loses no request: SIGTERM closes the listener, finishes what is running, answers what
still arrives on open keep-alive connections with Connection: close, and exits once quiet (services/common/drain.py).
The asyncio services do this themselves; gunicorn's gevent worker does it by its own design (checked too)."""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time

import pytest

from services.common import drain
from tests import service_process


@pytest.fixture(params=sorted(service_process.LAUNCH))
def instance(request, tmp_path):
    with service_process.running(request.param, tmp_path) as started:
        yield started.service, started.port, started.process


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
