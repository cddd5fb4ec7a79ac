"""The one place that lists every service: its port, URL prefix, health path, how to launch it and its addresses.
Both run modes, the services themselves, the compare harness and the tests read it; the literals that must stay
in docker-compose.yml and the Dockerfiles are checked against it (tests/config/test_compose_and_dockerfiles.py).

Standard library only: the service images and the Dockerfiles' render stages import it too.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZONE = "stack.internal"
NGINX_PORT = 8080  # nginx's listening port inside its container, and the default public port
NGINX_TLS_PORT = 8443  # the same site over TLS (HTTPS, HTTP/2 by ALPN): inside its container, and public
LOCUST_UI_PORT = 8089  # Locust's web UI (make loadtest; Compose's load profile), on loopback
# How many processes (native) or replicas (Compose) of each HTTP service run behind nginx: two, so that one can
# restart while the other serves. A number, not a layout: every config below is rendered from it.
HTTP_INSTANCES = 2
MAX_INSTANCES = 10  # instance k > 1 lives at .(10 x octet + k - 1): ten addresses per service


@dataclass(frozen=True)
class Service:
    name: str  # Compose service name, supervisor program name and DNS label
    framework: str
    server: str
    port: int  # the port it listens on (its own loopback address in native mode, its container in Compose)
    octet: int  # last octet of its native loopback address
    prefix: str | None = None  # URL prefix behind nginx; None for the non-HTTP services
    transport: str = "tcp"  # "tcp" or "udp": what nginx's stream proxy and the health probe speak
    module: str | None = None  # `python -m <module> --bind HOST:PORT` launches it (the socket services)
    public_port: int | None = None  # where nginx's stream {} proxy publishes it on the public host
    probe: str | None = None  # health probe scheme for stack.healthcheck: time+tcp, time+udp, echo
    instances: int = 1  # processes (native) or replicas (Compose) behind the one name
    # The Python argv that starts one instance, before `--bind HOST:PORT`; a module service's is `-m <module>`.
    launch: tuple[str, ...] = ()
    # The same app under other servers (make compare's configurations): server name -> argv, as `launch`.
    alternatives: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not 1 <= self.instances <= MAX_INSTANCES:
            raise ValueError(f"{self.name}: 1 to {MAX_INSTANCES} instances, not {self.instances}")

    def instance_names(self) -> list[str]:
        """Supervisor program names and DNS labels of its instances: web-1, web-2 (the service's own name when
        it runs once)."""
        if self.instances == 1:
            return [self.name]
        return [f"{self.name}-{k}" for k in range(1, self.instances + 1)]

    @property
    def health_path(self) -> str | None:
        return f"{self.prefix}healthz" if self.prefix else None

    @property
    def route_prefix(self) -> str:
        """The prefix as the apps' routes begin: `/httpbin` (the nginx location is `/httpbin/`)."""
        if not self.prefix:
            raise ValueError(f"{self.name} serves no HTTP")
        return self.prefix.rstrip("/")

    def internal_url(self) -> str:
        """How the services reach it natively: its name in the stack's zone (the stack's DNS answers it) and port."""
        return f"http://{self.name}.{ZONE}:{self.port}"

    def command(self, bind: str, *options: str, python: str = sys.executable, server: str | None = None) -> list[str]:
        """The argv that starts one instance listening on `bind` (HOST:PORT), then `options`; under `server`
        (one of `alternatives`) rather than its own."""
        if server is not None:
            if server not in self.alternatives:
                raise KeyError(f"{self.name} has no server {server!r}; it has {', '.join(self.alternatives)}")
            launch = self.alternatives[server]
        else:
            launch = self.launch or ("-m", str(self.module))
        return [python, *launch, "--bind", bind, *options]

    def default_bind(self, environ: Mapping[str, str] = os.environ) -> str:
        """Where an instance listens when not told: its port on $BIND_HOST (127.0.0.1; the images set 0.0.0.0)."""
        return f"{environ.get('BIND_HOST', '127.0.0.1')}:{self.port}"

    def probe_url(self, host: str, port: int) -> str:
        """What `python -m stack.healthcheck` checks for a socket service at host:port."""
        return f"{self.probe}://{host}:{port}"

    @property
    def port_env(self) -> str:
        """The environment variable that moves its public port (a second stack beside yours, in tests)."""
        return f"STACK_{self.name.upper().replace('-', '_')}_PORT"


@dataclass(frozen=True)
class WebServer:
    """One WSGI server web can run under (WEB_SERVER): the same Flask app, the same settings (WEB_WORKER_CLASS,
    WEB_WORKERS, WEB_THREADS), `python -m services.web.serve` picks the server by this entry."""

    name: str
    program: str  # gunicorn | uwsgi | granian: what services/web/serve.py starts
    protocol: str  # what nginx speaks to it: "http" (proxy_pass) or "uwsgi" (uwsgi_pass, the binary uwsgi protocol)
    worker_classes: tuple[str, ...]  # the IO models it offers, its default first
    describe: str
    keepalive: bool = True  # more than one request per connection: nginx keeps a pool of idle ones to it


WEB_SERVERS: dict[str, WebServer] = {s.name: s for s in (
    WebServer("gunicorn", "gunicorn", "http", ("gevent", "sync", "gthread"), "gunicorn, pre-fork, HTTP/1.1 from nginx"),
    WebServer("uwsgi", "uwsgi", "uwsgi", ("gevent", "sync", "gthread"),
              "uWSGI, pre-fork, the uwsgi protocol from nginx (uwsgi_pass)", keepalive=False),
    WebServer("uwsgi-http", "uwsgi", "http", ("gevent", "sync", "gthread"),
              "uWSGI, pre-fork, HTTP from nginx on its http-socket", keepalive=False),
    WebServer("granian", "granian", "http", ("gthread", "sync"),
              "granian (Rust), workers x blocking threads, HTTP/1.1 from nginx"),
)}
# uWSGI listens twice on each web instance's address: HTTP on web's port (health checks, uwsgi-http, and nginx
# while a rolling change of WEB_SERVER passes) and the uwsgi protocol on this one (uwsgi_pass).
WEB_UWSGI_PORT = 8011

# gunicorn as the compare harness and the tests run it: no control socket under $HOME (gunicorn >= 25.1).
_GUNICORN = ("-m", "gunicorn", "--no-control-socket")
HTTP_SERVICES: tuple[Service, ...] = (
    # services/web/serve.py starts the server WEB_SERVER names (WEB_SERVERS), gunicorn by default.
    Service("web", "Flask", "gunicorn, gevent workers", 8001, 11, "/web/",
            instances=HTTP_INSTANCES, launch=("-m", "services.web.serve")),
    Service("catalog", "Tornado", "Tornado HTTPServer, own IOLoop", 8002, 12, "/catalog/", instances=HTTP_INSTANCES,
            launch=("-m", "services.catalog"),
            alternatives={"gunicorn-tornado": (*_GUNICORN, "-k", "tornado", "services.catalog.app:make_app()")}),
    Service("httpbin", "aiohttp", "aiohttp AppRunner", 8003, 13, "/httpbin/", instances=HTTP_INSTANCES,
            launch=("-m", "services.httpbin"),
            # --reuse-port: a listening socket per worker, or one event loop takes most connections (DESIGN.md)
            alternatives={"gunicorn-aiohttp": (*_GUNICORN, "-k", "aiohttp.GunicornWebWorker", "--reuse-port",
                                               "services.httpbin.app:app_factory")}),
)
# The seed's socket programs, behind nginx's stream {} proxy (layer 4: bytes and datagrams, no HTTP).
# time-tcp and time-udp are one service on two transports: the same address and port number, like DNS.
STREAM_SERVICES: tuple[Service, ...] = (
    Service("time-tcp", "socket", "TCP time server, a thread per connection", 8013, 14,
            module="services.sockets.time_tcp", public_port=8013, probe="time+tcp"),
    Service("time-udp", "socket", "UDP time server, one datagram in, one out", 8013, 14, transport="udp",
            module="services.sockets.time_udp", public_port=8013, probe="time+udp"),
    Service("echo", "socket", "selectors echo server, non-blocking", 8007, 17,
            module="services.sockets.echo", public_port=8007, probe="echo"),
)
DNS = Service("dns", "dnslib", "authoritative DNS, UDP and TCP", 5353, 53, module="services.dns")
NGINX = Service("nginx", "nginx", "reverse proxy", NGINX_PORT, 1)
# The shared store when STORE=postgres: Debian's PostgreSQL natively (deploy/postgres.py), a service in Compose.
POSTGRES = Service("postgres", "PostgreSQL", "the shared store (STORE=postgres)", 5432, 54)
STORES = ("sqlite", "postgres")  # the first is the default
# Monitoring (MONITORING=1: deploy/monitoring.py). nginx's stub_status answers on its status port, never published;
# the exporter turns it into Prometheus metrics; Prometheus scrapes every instance and the exporter.
NGINX_STATUS_PORT = 8081
NGINX_STATUS_PATH = "/stub_status"
PROMETHEUS = Service("prometheus", "Prometheus", "metrics: scrapes every instance (MONITORING=1)", 9090, 90,
                     public_port=9090)
NGINX_EXPORTER = Service("nginx-exporter", "Prometheus exporter", "nginx's stub_status as metrics (MONITORING=1)",
                         9113, 91)
MONITORING_SERVICES = (PROMETHEUS, NGINX_EXPORTER)
PROMETHEUS_PREFIX = "/prometheus"  # every Prometheus path begins with it, on its own port and through nginx
PUBLISHED = (*STREAM_SERVICES, PROMETHEUS)  # published on the public host besides nginx's HTTP and HTTPS ports
POSTGRES_ROLE = POSTGRES_DATABASE = "pystack"  # the stack's role and database; each service has its own schema


def postgres_url(host: str, port: int, database: str = POSTGRES_DATABASE) -> str:
    """DATABASE_URL for the stack's role (no password in it: the services read it from the stack's credentials)."""
    return f"postgresql://{POSTGRES_ROLE}@{host}:{port}/{database}"


SERVICES: tuple[Service, ...] = (*HTTP_SERVICES, *STREAM_SERVICES, DNS)


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing is bound to on `host` right now (the kernel's pick), for a stack, benchmark or test started
    beside the default one. Another process may take it before it is used: callers bind it soon."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def service(name: str) -> Service:
    """The registry's entry for `name`."""
    for entry in SERVICES:
        if entry.name == name:
            return entry
    raise KeyError(f"no service {name!r}; the registry has {', '.join(s.name for s in SERVICES)}")


def parse_scale(spec: str) -> dict[str, int]:
    """`SCALE="web=3 catalog=2 httpbin=2"` (spaces or commas) -> {"web": 3, ...}: instances per HTTP service,
    the rest keeping their default. Raises ValueError saying what is wrong."""
    scale: dict[str, int] = {}
    names = [s.name for s in HTTP_SERVICES]
    for entry in filter(None, re.split(r"[\s,]+", spec.strip())):
        match = re.fullmatch(r"([a-z-]+)=(\d{1,3})", entry)
        if not match or match.group(1) not in names:
            raise ValueError(f"SCALE entry {entry!r}: write NAME=COUNT with NAME one of {', '.join(names)}")
        count = int(match.group(2))
        if not 1 <= count <= MAX_INSTANCES:
            raise ValueError(f"SCALE entry {entry!r}: 1 to {MAX_INSTANCES} instances")
        scale[match.group(1)] = count
    return scale


def format_scale(scale: Mapping[str, int]) -> str:
    """Every HTTP service's instance count as SCALE writes it: "web=2 catalog=2 httpbin=2"."""
    return " ".join(f"{s.name}={scale.get(s.name, s.instances)}" for s in HTTP_SERVICES)


@dataclass(frozen=True)
class TlsFiles:
    """Where a site's TLS material lives (deploy/tls.py makes it; nginx and the tests read it)."""

    directory: Path

    @property
    def ca(self) -> Path:
        """The stack's CA certificate: what a client trusts (curl --cacert)."""
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def certificate(self) -> Path:
        """nginx's certificate."""
        return self.directory / "server.pem"

    @property
    def key(self) -> Path:
        return self.directory / "server-key.pem"


@dataclass(frozen=True)
class Site:
    """One running instance of the stack: the user's (defaults) or a test's (its own addresses and ports).

    Environment: STACK_NET (native services' loopback /24), STACK_HOST and STACK_PORT (nginx, public),
    STACK_TLS_PORT (nginx's HTTPS port, public), STACK_DNS_PORT (the DNS server's published port in Compose),
    STACK_VAR (native state: logs, pids),
    STACK_TIME_TCP_PORT, STACK_TIME_UDP_PORT, STACK_ECHO_PORT (nginx's stream ports, public), SCALE (instances
    per HTTP service, parse_scale; without it, the scale the last `make up` saved in $STACK_VAR/scale),
    WEB_SERVER (web's WSGI server, one of WEB_SERVERS; without it, the last `make up`'s, $STACK_VAR/web_server), STORE
    (sqlite or postgres; without it, the store the last `make up` saved in $STACK_VAR/store), MONITORING (1: with
    Prometheus and nginx's exporter; without it, what the last `make up` saved in $STACK_VAR/monitoring).
    """

    net: str = "127.0.10"
    public_host: str = "127.0.0.1"
    public_port: int = NGINX_PORT
    tls_port: int = NGINX_TLS_PORT
    dns_port: int = DNS.port
    var: Path = ROOT / "var"
    # name -> public port, if moved: the socket services (nginx's stream proxy) and Prometheus (MONITORING=1)
    stream_ports: Mapping[str, int] = field(default_factory=dict, hash=False)
    scale: Mapping[str, int] = field(default_factory=dict, hash=False)  # HTTP service -> instances, if not default
    store: str = STORES[0]  # where the HTTP services keep their data: one of STORES
    monitoring: bool = False  # Prometheus and nginx's exporter run too (MONITORING=1)
    web_server: str = "gunicorn"  # web's WSGI server: one of WEB_SERVERS (WEB_SERVER)

    @classmethod
    def from_env(cls, environ: os._Environ[str] | dict[str, str] = os.environ) -> Site:
        var = Path(environ.get("STACK_VAR", cls.var)).resolve()
        saved = var / "scale"
        spec = environ["SCALE"] if "SCALE" in environ else saved.read_text() if saved.exists() else ""
        saved_store = var / "store"
        store = environ.get("STORE") or (saved_store.read_text().strip() if saved_store.exists() else cls.store)
        if store not in STORES:
            raise ValueError(f"STORE={store!r}: use one of {', '.join(STORES)}")
        saved_monitoring = var / "monitoring"
        monitoring = (environ["MONITORING"] if "MONITORING" in environ
                      else saved_monitoring.read_text().strip() if saved_monitoring.exists() else "0")
        if monitoring not in ("0", "1", ""):
            raise ValueError(f"MONITORING={monitoring!r}: use 1 (on) or 0 (off)")
        saved_server = var / "web_server"
        web_server = (environ.get("WEB_SERVER") or (saved_server.read_text().strip() if saved_server.exists() else "")
                      or cls.web_server)
        if web_server not in WEB_SERVERS:
            raise ValueError(f"WEB_SERVER={web_server!r}: use one of {', '.join(WEB_SERVERS)}")
        return cls(
            net=environ.get("STACK_NET", cls.net),
            public_host=environ.get("STACK_HOST", cls.public_host),
            public_port=int(environ.get("STACK_PORT", cls.public_port)),
            tls_port=int(environ.get("STACK_TLS_PORT", cls.tls_port)),
            dns_port=int(environ.get("STACK_DNS_PORT", cls.dns_port)),
            var=var,
            stream_ports={s.name: int(environ[s.port_env]) for s in PUBLISHED if s.port_env in environ},
            scale=parse_scale(spec),
            store=store,
            monitoring=monitoring == "1",
            web_server=web_server,
        )

    def environment(self) -> dict[str, str]:
        """The variables from_env reads for this site's public ports and state (what Compose's file reads too)."""
        return {"STACK_HOST": self.public_host, "STACK_PORT": str(self.public_port),
                "STACK_TLS_PORT": str(self.tls_port), "STACK_DNS_PORT": str(self.dns_port), "STACK_VAR": str(self.var),
                **{s.port_env: str(self.public_port_of(s)) for s in PUBLISHED}}

    def scaled(self, service: Service) -> Service:
        """The service with this site's instance count."""
        count = self.scale.get(service.name, service.instances)
        return service if count == service.instances else replace(service, instances=count)

    @property
    def http_services(self) -> tuple[Service, ...]:
        """HTTP_SERVICES at this site's scale."""
        return tuple(self.scaled(s) for s in HTTP_SERVICES)

    def address(self, service: Service) -> str:
        """The service's own loopback address in native mode (its first instance's)."""
        return f"{self.net}.{service.octet}"

    def instance_addresses(self, service: Service) -> list[str]:
        """Every instance's loopback address in native mode: .octet, then .(10 x octet + 1), + 2, ..."""
        count = self.scaled(service).instances
        return [self.address(service)] + [f"{self.net}.{10 * service.octet + k}" for k in range(1, count)]

    def instances(self, service: Service) -> dict[str, str]:
        """Instance name -> its host:port in native mode."""
        names = self.scaled(service).instance_names()
        return {name: f"{address}:{service.port}"
                for name, address in zip(names, self.instance_addresses(service), strict=True)}

    def public_port_of(self, service: Service) -> int:
        """Where a service is published for clients: a socket service by nginx's stream proxy, Prometheus by
        Compose."""
        if service.public_port is None:
            raise ValueError(f"{service.name} is not published on the public host")
        return self.stream_ports.get(service.name, service.public_port)

    @property
    def secrets(self) -> Path:
        """Where the stack's credentials live (stack/credentials.py); Compose mounts them as secrets."""
        return self.var / "secrets"

    @property
    def tls(self) -> TlsFiles:
        """The stack's CA and nginx's certificate (made by `make up`: deploy/tls.py)."""
        return TlsFiles(self.var / "tls")

    @property
    def database_url(self) -> str:
        """The native services' DATABASE_URL when STORE=postgres."""
        return postgres_url(self.address(POSTGRES), POSTGRES.port)

    @property
    def base_url(self) -> str:
        return f"http://{self.public_host}:{self.public_port}"

    @property
    def tls_base_url(self) -> str:
        """The same site over HTTPS (the stack's CA signs its certificate: deploy/tls.py)."""
        return f"https://{self.public_host}:{self.tls_port}"

    def dns_endpoint(self, mode: str) -> tuple[str, int]:
        """Where a client on the host sends DNS queries."""
        return (self.public_host, self.dns_port) if mode == "compose" else (self.address(DNS), DNS.port)
