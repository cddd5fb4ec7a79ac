"""A stopping instance loses no request: SIGTERM closes the listener, finishes what is running, answers what
still arrives on open keep-alive connections with Connection: close, and exits once quiet (services/common/drain.py).
The asyncio services do this themselves; gunicorn's gevent worker does it by its own design (checked too).

web's other servers, as they are: uWSGI keeps no connection open (Connection: close on every answer) and its
listener is shut at once by services/web/serve.py; granian closes idle keep-alive connections at once on SIGTERM
(a client, nginx's pool among them, sees the close before it sends: the race RFC 9112 9.3.1's retry covers)."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import threading
import time

import pytest

from services.common import drain
from tests import service_process

# What a stopping instance does with an idle keep-alive connection: answers a late request on it with
# Connection: close ("answers"), closes it at once ("closes"), or never kept one ("none").
IDLE_CONNECTION_AT_STOP = {"web-uwsgi": "none", "web-granian": "closes"}


@pytest.fixture(params=sorted(service_process.LAUNCH))
def instance(request, tmp_path):
    with service_process.running(request.param, tmp_path) as started:
        yield started.service, started.port, started.process, IDLE_CONNECTION_AT_STOP.get(request.param, "answers")


def get(connection: http.client.HTTPConnection, path: str) -> http.client.HTTPResponse:
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response


def test_sigterm_drains_then_exits(instance):
    service, port, process, idle_at_stop = instance
    kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    first = get(kept, f"/{service}/json")
    if idle_at_stop == "none":
        assert first.status == 200 and first.getheader("Connection") == "close"  # said, and done
    else:
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

    if idle_at_stop == "answers":
        late = get(kept, f"/{service}/json")  # arrives on the open connection while stopping: served, then closed
        assert late.status == 200
        assert late.getheader("Connection", "").lower() == "close"
    elif idle_at_stop == "closes":
        assert kept.sock.recv(1) == b""  # closed by the server, before any request of ours was on it
    runner.join(timeout=10)
    assert slow == {"status": 200}  # the request in flight finished
    assert process.wait(timeout=drain.LIMIT_S + 5) == 0
    # Once nothing runs and nothing arrives, it goes (no waiting out the whole limit).
    assert time.monotonic() - signalled < drain.LIMIT_S


# Drain.settle alone: how long a stopping instance keeps answering.

async def timed_settle(stopping: drain.Drain, **kwargs) -> float:
    started = time.monotonic()
    await stopping.settle(**kwargs)
    return time.monotonic() - started


async def test_an_idle_instance_waits_one_quiet_period_then_stops():
    stopping = drain.Drain()
    assert 0.2 <= await timed_settle(stopping, quiet=0.2, limit=5) < 1.5
    assert stopping.active  # from the first moment on, responses close their connections


async def test_a_request_in_flight_and_new_requests_keep_it_serving():
    stopping = drain.Drain()
    stopping.started()

    async def traffic() -> None:
        for step in range(4):  # a quick request every 0.2 s; each start restarts the quiet period
            await asyncio.sleep(0.2)
            stopping.started()
            stopping.finished()
            if step == 2:
                stopping.finished()  # the first request, slow, ends at 0.6 s

    task = asyncio.create_task(traffic())
    elapsed = await timed_settle(stopping, quiet=0.3, limit=5)
    await task
    assert 0.8 + 0.3 <= elapsed < 3  # the last start came at 0.8 s


async def test_a_slow_request_holds_the_stop_past_the_quiet_period():
    stopping = drain.Drain()
    stopping.started()
    asyncio.get_running_loop().call_later(0.8, stopping.finished)
    assert 0.8 <= await timed_settle(stopping, quiet=0.2, limit=5) < 2


async def test_a_server_that_counts_its_own_requests_is_followed_by_its_count():
    count = [0]

    async def traffic() -> None:
        for _ in range(3):
            await asyncio.sleep(0.2)
            count[0] += 1

    task = asyncio.create_task(traffic())
    elapsed = await timed_settle(drain.Drain(), quiet=0.3, limit=5, started_total=lambda: count[0])
    await task
    assert 0.6 + 0.3 <= elapsed < 3


async def test_the_limit_ends_the_wait_whatever_runs():
    stopping = drain.Drain()
    stopping.started()  # never finishes
    assert 0.5 <= await timed_settle(stopping, quiet=0.1, limit=0.5) < 1.5
