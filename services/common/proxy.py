"""Forwarded headers (X-Forwarded-For/-Proto/-Host, X-Real-IP) are nginx's word about the client; from anyone
else they are a claim anybody can make. A service honours them only on connections that come from nginx.

$STACK_PROXY says who nginx is: comma-separated addresses or names. Natively it is nginx's own source address
(nginx binds its upstream connections to the stack's .1 address, deploy/render.py), so a local process that
connects to a service directly from 127.0.0.1 is not nginx. In Compose it is the name `nginx`, looked up
through Docker's DNS (again every few seconds: a recreated container gets a new address). Unset: nobody.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time

REFRESH_S = 5.0


class TrustedProxy:
    def __init__(self, spec: str | None) -> None:
        self.names = [part.strip() for part in (spec or "").split(",") if part.strip()]
        self._addresses: frozenset[str] = frozenset()
        self._expires = 0.0
        self._lock = threading.Lock()

    def literals(self) -> list[str]:
        """The entries that are addresses already (gunicorn's forwarded_allow_ips takes only those)."""
        return [name for name in self.names if _is_address(name)]

    def addresses(self) -> frozenset[str]:
        if time.monotonic() < self._expires:
            return self._addresses
        with self._lock:
            found: set[str] = set()
            for name in self.names:
                if _is_address(name):
                    found.add(name)
                    continue
                try:  # blocking, at most once per REFRESH_S (a loopback or Docker DNS answer: about a millisecond)
                    found.update(info[4][0] for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM))
                except OSError:
                    pass  # nginx not there yet: trust nobody until it is
            self._addresses, self._expires = frozenset(found), time.monotonic() + REFRESH_S
        return self._addresses

    def trusts(self, peer: str | None) -> bool:
        """True when the connection's peer address is nginx's."""
        if not peer or not self.names:
            return False
        return peer.removeprefix("::ffff:") in self.addresses()


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


nginx = TrustedProxy(os.environ.get("STACK_PROXY"))
