"""web's HTTP calls to the other services, by name.

Native mode: names like catalog.stack.internal are resolved by asking the stack's own DNS server ($STACK_DNS,
host:port) — the first hop of every request, made visible. Compose: $STACK_DNS is unset and the system
resolver asks Docker's DNS for the Compose service name (WEB_CATALOG_URL=http://catalog:8002).
Under gevent the sockets are cooperative, so many calls can wait at once in one worker.
"""

from __future__ import annotations

import os
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import dns.message
import dns.query
import dns.rdatatype
import requests
from requests.adapters import HTTPAdapter

CATALOG_URL = os.environ.get("WEB_CATALOG_URL", "http://catalog.stack.internal:8002")
HTTPBIN_URL = os.environ.get("WEB_HTTPBIN_URL", "http://httpbin.stack.internal:8003")
TIMEOUT = (2.0, 15.0)  # connect, read


class UpstreamError(Exception):
    """The other service could not be reached or answered 5xx: the client gets 502, never 500."""


class StackResolver:
    """A-record lookups against the stack's DNS server, cached for the record's TTL."""

    def __init__(self, server: str | None) -> None:
        self.server = server
        self._cache: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def address(self, name: str) -> str:
        if not self.server:
            return name  # let the system resolver (Docker's DNS in Compose) do it
        with self._lock:
            cached = self._cache.get(name)
        if cached and cached[1] > time.monotonic():
            return cached[0]
        host, _, port = self.server.rpartition(":")
        reply = dns.query.udp(dns.message.make_query(name, "A"), host, port=int(port), timeout=2)
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.A:
                address = rrset[0].address
                with self._lock:
                    self._cache[name] = (address, time.monotonic() + rrset.ttl)
                return address
        raise UpstreamError(f"{name} does not resolve at the stack's DNS server {self.server}")


resolver = StackResolver(os.environ.get("STACK_DNS"))
# One pooled session per worker process, shared by its greenlets (or threads): connections to each service are
# kept alive and reused. (Not a threading.local: gevent's patching would make that one session per greenlet.)
_session = requests.Session()
_session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=100))


def session() -> requests.Session:
    return _session


def request(method: str, base: str, path: str, request_id: str, **kwargs: object) -> requests.Response:
    """Call another service: resolve its name through the stack's DNS, keep its name in the Host header."""
    parts = urlsplit(base)
    address = resolver.address(parts.hostname or "")
    url = urlunsplit((parts.scheme, f"{address}:{parts.port or 80}", path, "", ""))
    headers = {"Host": parts.netloc, "X-Request-ID": request_id, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    try:
        response = session().request(method, url, headers=headers, timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]
    except requests.RequestException as error:
        raise UpstreamError(f"{method} {base}{path} failed: {error}") from None
    if response.status_code >= 500:
        raise UpstreamError(f"{method} {base}{path} answered {response.status_code}")
    return response
