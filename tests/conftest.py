"""Shared test helpers: free ports, a well-behaved client running alongside a test."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from stack.topology import Site, free_port


def free_tcp_udp_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP (the DNS server listens on both)."""
    for _ in range(50):
        port = free_port(host)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind((host, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free for both TCP and UDP")


def require_docker_engine() -> dict[str, str]:
    """Skip (fail where CI sets STACK_REQUIRE_DOCKER=1: there the engine tests must run) unless a Docker engine
    answers and the base images are there; the base images' build args."""
    from deploy.stack import base_images, docker_answers

    required = os.environ.get("STACK_REQUIRE_DOCKER") == "1"
    if not docker_answers():
        if required:
            pytest.fail("STACK_REQUIRE_DOCKER=1 but no Docker engine answers")
        pytest.skip("no Docker engine answers: start dockerd (as .ci/run does) to run the engine tests")
    try:
        return base_images(dict(os.environ))
    except SystemExit as missing:
        if required:
            raise
        pytest.skip(str(missing))


@pytest.fixture(params=["sqlite", "postgres"])
def store_at(request, tmp_path) -> Iterator[Callable[[str], str]]:
    """Both stores, one test each: store_at(service) is where that service keeps its data, a SQLite file in
    tmp_path or a fresh database of a throwaway Postgres cluster (tests/postgres_cluster.py)."""
    if request.param == "sqlite":
        yield lambda service: str(tmp_path / f"{service}.sqlite3")
        return
    from tests import postgres_cluster

    url = postgres_cluster.fresh_database()
    yield lambda service: url
    postgres_cluster.drop(url)


@contextmanager
def alongside(one_round: Callable[[list], None]) -> Iterator[list]:
    """Run `one_round(seen)` over and over in a thread until the block ends (each round appends the statuses it
    got to `seen`); yields `seen`, for the test to check what a well-behaved client saw meanwhile. A round that
    raises (a reset, a timeout) is recorded in `seen` by its exception's name, so it counts as a failure too."""
    stop, seen = threading.Event(), []

    def rounds() -> None:
        while not stop.is_set():
            try:
                one_round(seen)
            except Exception as error:  # noqa: BLE001 - whatever broke, the test must see it
                seen.append(type(error).__name__)
                time.sleep(0.1)

    thread = threading.Thread(target=rounds)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(30)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """CI (STACK_REQUIRE_DOCKER=1) runs every test: a skip there, for any reason, is a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("STACK_REQUIRE_DOCKER") == "1" and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under STACK_REQUIRE_DOCKER=1, where every test must run: {report.longrepr}"


def site_on_free_ports(var: Path) -> Site:
    """A site whose published ports are free on 127.0.0.1: six distinct ones (the kernel may hand out a
    just-released port twice), the TCP and UDP time services sharing one number."""
    while True:
        ports = (free_tcp_udp_port(), free_port(), free_port(), free_port(), free_port(), free_tcp_udp_port())
        if len(set(ports)) == len(ports):
            break
    time_port, echo_port, prometheus_port, public_port, tls_port, dns_port = ports
    return Site(public_port=public_port, tls_port=tls_port, dns_port=dns_port, var=var,
                stream_ports={"time-tcp": time_port, "time-udp": time_port, "echo": echo_port,
                              "prometheus": prometheus_port})
