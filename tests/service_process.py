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

from stack import topology
from stack.topology import HTTP_SERVICES, ROOT, WEB_SERVERS
from tests.conftest import free_port

# The registry's launch command of each HTTP service, web once per WSGI server (name -> (service, environment)),
# and what a test adds to it (one worker: the tests of one process's behaviour).
LAUNCH = {s.name: (s.name, {}) for s in HTTP_SERVICES} | {
    f"web-{name}": ("web", {"WEB_SERVER": name}) for name in WEB_SERVERS if name not in ("gunicorn", "uwsgi-http")}
OPTIONS = {"web": ("--workers", "1")}
HOST = "127.0.0.1"


@dataclass
class ServiceProcess:
    service: str
    port: int
    process: subprocess.Popen
    uwsgi_port: int | None = None  # web under uWSGI: its uwsgi-protocol socket
    variant: str = ""  # the LAUNCH entry it runs


@contextmanager
def running(variant: str, data: Path, environ: Mapping[str, str] | None = None) -> Iterator[ServiceProcess]:
    """The service (a LAUNCH variant), healthy on HOST and a free port, its state in `data`; killed (its whole
    group) at the end."""
    service, variant_env = LAUNCH[variant]
    port = free_port(HOST)
    env = {**os.environ, "STACK_DATA": str(data), "PYTHONPATH": str(ROOT), **variant_env, **(environ or {})}
    options = list(OPTIONS.get(service, ()))
    uwsgi_port = None
    if WEB_SERVERS[env.get("WEB_SERVER") or "gunicorn"].program == "uwsgi" and service == "web":
        uwsgi_port = free_port(HOST)
        options += ["--uwsgi-bind", f"{HOST}:{uwsgi_port}"]
    command = topology.service(service).command(f"{HOST}:{port}", *options)
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
        yield ServiceProcess(service, port, process, uwsgi_port, variant)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
