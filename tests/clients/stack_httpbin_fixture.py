"""A pytest plugin with pytest-httpbin's fixtures (`httpbin`, `httpbin_secure`, `httpbin_ca_bundle`), pointing at
the stack's own httpbin through nginx instead of a local copy of httpbin.org: a client's test suite written
against pytest-httpbin runs unchanged against ours. The stack's addresses come from the environment the test
that runs the suite sets (tests/e2e/test_native.py): $STACK_SUITE_HTTPBIN_URL, $STACK_SUITE_HTTPBIN_TLS_URL
and $STACK_SUITE_CA (the stack's CA, which signs nginx's certificate)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest


@dataclass(frozen=True)
class Server:
    """What pytest-httpbin's fixture objects offer: url, host, port (and str() is the url)."""

    url: str

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (443 if self.url.startswith("https") else 80)

    def __str__(self) -> str:
        return self.url

    def __add__(self, other: str) -> str:
        return self.url + other


@pytest.fixture(scope="session")
def httpbin() -> Server:
    return Server(os.environ["STACK_SUITE_HTTPBIN_URL"])


@pytest.fixture(scope="session")
def httpbin_secure() -> Server:
    return Server(os.environ["STACK_SUITE_HTTPBIN_TLS_URL"])


@pytest.fixture(scope="session")
def httpbin_ca_bundle() -> str:
    return os.environ["STACK_SUITE_CA"]
