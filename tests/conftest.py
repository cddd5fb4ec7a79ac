"""Shared test helpers: free ports."""

from __future__ import annotations

import os
import socket

import pytest


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """CI (STACK_REQUIRE_DOCKER=1) runs every test: a skip there, for any reason, is a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("STACK_REQUIRE_DOCKER") == "1" and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under STACK_REQUIRE_DOCKER=1, where every test must run: {report.longrepr}"
