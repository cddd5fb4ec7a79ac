"""Finding another service by name — the first hop of every internal call, made visible.

Native mode: names like catalog.stack.internal are asked of the stack's own DNS server ($STACK_DNS, host:port).
Compose: $STACK_DNS is unset and the system resolver asks Docker's DNS for the Compose service name
($STACK_CATALOG_URL=http://catalog:8002). Answers are cached for their TTL.
"""

from __future__ import annotations

import os
import threading
import time
from urllib.parse import urlsplit

import dns.asyncquery
import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from stack import topology

# Native defaults, from the registry: the name the stack's DNS answers for, and the service's port.
CATALOG_URL = os.environ.get("STACK_CATALOG_URL") or topology.service("catalog").internal_url()
HTTPBIN_URL = os.environ.get("STACK_HTTPBIN_URL") or topology.service("httpbin").internal_url()


class NameNotFound(Exception):
    """The name is not in the stack's zone (or its DNS server did not answer)."""


class StackResolver:
    """Every A record of a name (one per instance), handed out in turn: each call starts at the next one, so
    callers spread their connections over the instances and try the others when one refuses."""

    def __init__(self, server: str | None) -> None:
        self.server = server
        self._cache: dict[str, tuple[list[str], float]] = {}
        self._turn: dict[str, int] = {}
        self._lock = threading.Lock()

    def _in_turn(self, name: str, addresses: list[str]) -> list[str]:
        with self._lock:
            turn = self._turn[name] = self._turn.get(name, -1) + 1
        start = turn % len(addresses)
        return addresses[start:] + addresses[:start]

    def _cached(self, name: str) -> list[str] | None:
        with self._lock:
            hit = self._cache.get(name)
        return self._in_turn(name, hit[0]) if hit and hit[1] > time.monotonic() else None

    def _remember(self, name: str, reply: dns.message.Message) -> list[str]:
        rrsets = [rrset for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A]
        addresses = [record.address for rrset in rrsets for record in rrset]
        if not addresses:
            raise NameNotFound(f"{name} does not resolve at the stack's DNS server {self.server}")
        with self._lock:
            self._cache[name] = (addresses, time.monotonic() + min(rrset.ttl for rrset in rrsets))
        return self._in_turn(name, addresses)

    def _where(self) -> tuple[str, int]:
        host, _, port = (self.server or "").rpartition(":")
        return host, int(port)

    def addresses(self, name: str) -> list[str]:
        """Blocking lookup (cooperative under gevent)."""
        if not self.server:
            return [name]  # the system resolver (Docker's DNS in Compose) resolves it at connect time
        if cached := self._cached(name):
            return cached
        host, port = self._where()
        try:
            reply = dns.query.udp(dns.message.make_query(name, "A"), host, port=port, timeout=2)
        except (OSError, dns.exception.DNSException) as error:
            raise NameNotFound(f"the stack's DNS server {self.server} did not answer: {error}") from None
        return self._remember(name, reply)

    async def addresses_async(self, name: str) -> list[str]:
        """Lookup for asyncio code (Tornado, aiohttp)."""
        if not self.server:
            return [name]
        if cached := self._cached(name):
            return cached
        host, port = self._where()
        try:
            reply = await dns.asyncquery.udp(dns.message.make_query(name, "A"), host, port=port, timeout=2)
        except (OSError, dns.exception.DNSException) as error:
            raise NameNotFound(f"the stack's DNS server {self.server} did not answer: {error}") from None
        return self._remember(name, reply)


resolver = StackResolver(os.environ.get("STACK_DNS"))


def by_address(base: str, address: str) -> tuple[str, str]:
    """(URL prefix that connects to `address`, Host header that keeps the service's name)."""
    parts = urlsplit(base)
    return f"{parts.scheme}://{address}:{parts.port or 80}", parts.netloc
