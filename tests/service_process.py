"""One HTTP service started as its own process on a free loopback port, the way supervisor starts it (tests of
what happens on a service's own port, below nginx: draining, slow and malformed clients)."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.topology import HTTP_SERVICES, ROOT
from tests.conftest import free_port

# The registry's launch command of each HTTP service, and what a test adds to it (one gunicorn worker: the tests
# of one process's behaviour).
LAUNCH = {s.name: s for s in HTTP_SERVICES}
OPTIONS = {"web": ("--workers", "1")}
HOST = "127.0.0.1"


@dataclass
class ServiceProcess:
    service: str
    port: int
    process: subprocess.Popen


@contextmanager
def running(service: str, data: Path, environ: Mapping[str, str] | None = None) -> Iterator[ServiceProcess]:
    """The service, healthy on HOST and a free port, its state in `data`; killed (its whole group) at the end."""
    port = free_port(HOST)
    env = {**os.environ, "STACK_DATA": str(data), "PYTHONPATH": str(ROOT), **(environ or {})}
    command = LAUNCH[service].command(f"{HOST}:{port}", *OPTIONS.get(service, ()))
    process = subprocess.Popen(command, cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                connection = http.client.HTTPConnection(HOST, port, timeout=2)
                connection.request("GET", f"/{service}/healthz")
                if connection.getresponse().status == 200:
                    connection.close()
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and process.poll() is None, f"{service} did not start"
            time.sleep(0.1)
        yield ServiceProcess(service, port, process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
