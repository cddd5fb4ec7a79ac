"""requests' own test suite (its sdist's tests/test_requests.py, fetched by `make setup`) against our httpbin
through nginx, with pytest-httpbin's fixtures pointed at the stack (stack_httpbin_fixture.py). Every test of
it passes but the ones below, each with its reason; tests/e2e/test_native.py runs the suite and checks that the
tests that fail are exactly FAILS (so the table stays true: a fixed one must leave it), and never runs NOT_RUN."""

from __future__ import annotations

import glob
from pathlib import Path

from stack.topology import ROOT

SUITE_GLOB = ".venv/client-suites/requests-*"

# Tests that leave this machine: the network rule sends test traffic only to 127.0.0.0/8 and ::1.
NOT_RUN: dict[str, str] = {
    **{f"tests/test_requests.py::TestTimeout::{test}[{param}]": "connects to 10.255.255.1 (a tarpit address off "
       "this machine) to time a connect out: the stack's tests send nothing beyond 127.0.0.0/8"
       for test in ("test_connect_timeout", "test_total_timeout_connect") for param in ("timeout0", "timeout1")},
}

# Tests that run and fail against our httpbin, by design.
FAILS: dict[str, str] = {
    "tests/test_requests.py::TestRequests::test_request_with_bytestring_host":
        "sends Host: httpbin.org; nginx answers only the stack's own names and closes on any other (444)",
    "tests/test_requests.py::TestRequests::test_getattr_proxy_stream_follows_redirect":
        "redirects to /post at the root; this httpbin lives under /httpbin/ (its /post is /httpbin/post)",
    "tests/test_requests.py::TestPreparingURLs::test_redirecting_to_bad_url[http://:1-InvalidURL]":
        "expects a 302 to http://:1; /redirect-to refuses a target that is not this host (400, no open redirect)",
}


def suite_directory(root: Path = ROOT) -> Path:
    """The unpacked sdist `make setup` fetched (tests/clients/requests-suite.txt pins it)."""
    found = sorted(glob.glob(str(root / SUITE_GLOB / "tests")))
    if not found:
        raise FileNotFoundError(f"no {SUITE_GLOB}/tests: run make setup (it fetches requests' sdist)")
    return Path(found[-1]).parent
