"""The one place that lists every service, its port and its addresses. Both run modes read it.

Standard library only: the Dockerfiles' render stages import it too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZONE = "stack.internal"
NGINX_PORT = 8080  # nginx's listening port inside its container, and the default public port


@dataclass(frozen=True)
class Service:
    name: str  # Compose service name, supervisor program name and DNS label
    framework: str
    server: str
    port: int  # the port it listens on (its own loopback address in native mode, its container in Compose)
    octet: int  # last octet of its native loopback address
    prefix: str | None = None  # URL prefix behind nginx; None for the non-HTTP services

    @property
    def health_path(self) -> str | None:
        return f"{self.prefix}healthz" if self.prefix else None


HTTP_SERVICES: tuple[Service, ...] = (
    Service("web", "Flask", "gunicorn, gevent workers", 8001, 11, "/web/"),
    Service("catalog", "Tornado", "Tornado HTTPServer, own IOLoop", 8002, 12, "/catalog/"),
    Service("httpbin", "aiohttp", "aiohttp web.run_app", 8003, 13, "/httpbin/"),
)
DNS = Service("dns", "dnslib", "authoritative DNS, UDP and TCP", 5353, 53)
NGINX = Service("nginx", "nginx", "reverse proxy", NGINX_PORT, 1)
SERVICES: tuple[Service, ...] = (*HTTP_SERVICES, DNS)


@dataclass(frozen=True)
class Site:
    """One running instance of the stack: the user's (defaults) or a test's (its own addresses and ports).

    Environment: STACK_NET (native services' loopback /24), STACK_HOST and STACK_PORT (nginx, public),
    STACK_DNS_PORT (the DNS server's published port in Compose), STACK_VAR (native state: logs, pids).
    """

    net: str = "127.0.10"
    public_host: str = "127.0.0.1"
    public_port: int = NGINX_PORT
    dns_port: int = DNS.port
    var: Path = ROOT / "var"

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] = os.environ) -> Site:
        return cls(
            net=environ.get("STACK_NET", cls.net),
            public_host=environ.get("STACK_HOST", cls.public_host),
            public_port=int(environ.get("STACK_PORT", cls.public_port)),
            dns_port=int(environ.get("STACK_DNS_PORT", cls.dns_port)),
            var=Path(environ.get("STACK_VAR", cls.var)).resolve(),
        )

    def address(self, service: Service) -> str:
        """The service's own loopback address in native mode."""
        return f"{self.net}.{service.octet}"

    @property
    def base_url(self) -> str:
        return f"http://{self.public_host}:{self.public_port}"

    def dns_endpoint(self, mode: str) -> tuple[str, int]:
        """Where a client on the host sends DNS queries."""
        return (self.public_host, self.dns_port) if mode == "compose" else (self.address(DNS), DNS.port)
