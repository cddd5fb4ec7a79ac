"""Render the per-mode configs from the one topology and the shared templates.

    python -m deploy.render --mode compose --nginx-out FILE   # nginx's Dockerfile build stage
    python -m deploy.render --mode compose --zone-out FILE    # the DNS Dockerfile
    python -m deploy.render --mode native                     # every native config into $STACK_VAR/run

Standard library only, so it runs in any Python image.
"""

from __future__ import annotations

import argparse
import configparser
import functools
import grp
import io
import json
import os
import pwd
import re
import resource
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from stack.topology import (
    DNS,
    HTTP_SERVICES,
    MONITORING_SERVICES,
    NGINX,
    NGINX_PORT,
    NGINX_STATUS_PATH,
    NGINX_STATUS_PORT,
    NGINX_TLS_PORT,
    POSTGRES,
    PROMETHEUS,
    PROMETHEUS_PREFIX,
    ROOT,
    STREAM_SERVICES,
    WEB_SERVERS,
    WEB_UWSGI_PORT,
    ZONE,
    Service,
    Site,
    WebServer,
)

NGINX_TEMPLATE = ROOT / "nginx" / "nginx.conf.template"
MODES = ("native", "compose")  # the run modes `make up` knows
# Kubernetes (deploy/kubernetes/): the manifests' namespace, and the cluster DNS nginx asks for every pod of a
# headless Service. nginx's resolver applies no search domains: upstreams are named in full.
KUBERNETES_NAMESPACE = "pystack"
KUBERNETES_DNS = "kube-dns.kube-system.svc.cluster.local"
RENDER_TARGETS = (*MODES, "kubernetes")
# Per-client limits (nginx's limit_req and limit_conn; the template explains who is exempt). Over one: 429.
CREDENTIALS_LIMIT = "5 per second, bursts of 20"  # login and signup: password guessing
EXPENSIVE_RATE, EXPENSIVE_BURST = "20r/s", 40  # /fanout (N upstream calls each) and /cpu on every service
WRITE_RATE, WRITE_BURST = "100r/s", 200  # POST, PUT, PATCH and DELETE anywhere
CONNECTIONS_PER_CLIENT = 128  # requests in progress at once
EXPENSIVE_PATHS = ("fanout", "cpu")
# Exact paths with their own limit: path -> (upstream, limit_req zone, burst).
RATE_LIMITED = {
    **{f"{s.prefix}{path}": (s.name, "credentials", 20) for s in HTTP_SERVICES if s.name == "web"
       for path in ("login", "signup")},
    **{f"{s.prefix}{path}": (s.name, "expensive", EXPENSIVE_BURST) for s in HTTP_SERVICES for path in EXPENSIVE_PATHS},
}
LIMITS = (f"per client: login and signup {CREDENTIALS_LIMIT}; fanout and cpu {EXPENSIVE_RATE[:-4]} per second; "
          f"writes {WRITE_RATE[:-4]} per second; {CONNECTIONS_PER_CLIENT} requests at once")
# The errors nginx answers itself, as problem+json, with RFC 9110's titles (429 has its own location, with
# Retry-After). 494 is nginx's "request header too large", which goes out as a 400. 501 (a transfer coding it
# does not implement) and 505 (HTTP/2+ in an HTTP/1 request line) are what RFC 9112 asks for there.
EDGE_ERRORS = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
               408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
               431: "Request Header Fields Too Large", 494: None, 500: "Internal Server Error",
               501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
               505: "HTTP Version Not Supported"}
PROBLEM_PATH = "/.problem"  # internal: only error_page reaches it
# Prometheus's query API through the edge (MONITORING=1), for the landing page's live numbers.
PROMETHEUS_API = f"{PROMETHEUS_PREFIX}/api/v1/"
# The paths where nginx passes a WebSocket upgrade on (httpbin's echo); everywhere else Upgrade is dropped.
WEBSOCKET_PATHS = [f"{s.prefix}websocket/echo" for s in HTTP_SERVICES if s.name == "httpbin"]
COMPOSE_RESOLVE_S = 10  # how often nginx asks the stack's DNS again in Compose (see nginx_conf)
# A change of the answer reaches nginx's peers within this: nginx asks again 1 s after an answer's validity ends
# (its upstream zone's timer), and a second of margin.
NGINX_RESOLVES_WITHIN_S = COMPOSE_RESOLVE_S + 2
# Compose: the nginx image's build writes the load_module line there when its nginx has a dynamic stream
# module (Debian's), and leaves the file empty when the module is built in (nginx.org's images).
COMPOSE_MODULES_CONF = "/etc/stack/modules.conf"
STREAM_MODULE_SCRIPT = ROOT / "nginx" / "stream-module.sh"
# TCP sessions end after this long without a byte either way: longer than any socket service's own idle
# limit (the echo server's 60 s), so the service, not the proxy, decides when a quiet client goes.
STREAM_TCP_TIMEOUT = "75s"
# A UDP "session" is one request datagram and its one reply (proxy_responses 1); no reply within 3 s ends it.
STREAM_UDP_TIMEOUT = "3s"


def _fill(template: str, values: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        return values[match.group(1)]

    return re.sub(r"@@([A-Z0-9_]+)@@", replace, template)


# Passive health checks: one failed connection takes an instance out of rotation for this long, after which
# nginx tries it again with one request (a restarting instance refuses connections; nothing is lost, because
# a refused connection is retried on the next instance, whatever the method: nothing was sent).
UPSTREAM_FAIL_TIMEOUT_S = 2
# How long an idle pooled connection to a service stays open. Short: gunicorn's gevent worker, told to stop,
# waits for every open connection, idle ones included, up to its graceful_timeout (20 s); with 60 s here each
# instance of a rolling restart took those 20 s, now about this. Under load the pool's connections are never
# idle this long, so nothing is re-handshaken; and it stays far below the services' own idle timeout (75 s),
# so nginx always closes first.
UPSTREAM_IDLE_S = 2


def _upstream(name: str, servers: list[str], keepalive: bool = True) -> str:
    """An upstream with passive health checks and a pool of idle connections; none without `keepalive` (uWSGI:
    the uwsgi protocol has no keep-alive, and its HTTP socket closes after each response)."""
    lines = "".join(f"        server {server} max_fails=1 fail_timeout={UPSTREAM_FAIL_TIMEOUT_S}s;\n"
                    for server in servers)
    pool = (f"        keepalive 32;\n        keepalive_timeout {UPSTREAM_IDLE_S}s;\n        keepalive_requests 1000;\n"
            if keepalive else "        # no keepalive: uWSGI serves one request per connection\n")
    return f"    upstream {name} {{\n        zone upstream_{name} 64k;\n{lines}{pool}    }}\n"


def _pass(upstream: str, servers: Mapping[str, WebServer]) -> str:
    """The directive that hands a request to `upstream`: HTTP/1.1, or the uwsgi protocol's CGI variables."""
    uwsgi = upstream in servers and servers[upstream].protocol == "uwsgi"
    return f"uwsgi_pass {upstream};" if uwsgi else f"proxy_pass http://{upstream};"


def _pooled(upstream: str, servers: Mapping[str, WebServer]) -> bool:
    return upstream not in servers or servers[upstream].keepalive


# Compose mounts nginx's certificate and key as secrets; Kubernetes from a kubernetes.io/tls Secret.
COMPOSE_TLS = ("/run/secrets/tls_certificate", "/run/secrets/tls_key")
KUBERNETES_TLS = ("/etc/stack/tls/tls.crt", "/etc/stack/tls/tls.key")
# HTTP/3 needs nginx built with it (`nginx -V`): nginx.org's images and Debian's 1.30 are; Debian 12's 1.22 is not.
HTTP3_MODULE_FLAG = "--with-http_v3_module"
# Alt-Svc (RFC 7838) tells a client that came over TCP that the same origin answers HTTP/3 on a UDP port: the
# port of the Host it used (the stack publishes UDP on the same number as its TLS port, in every mode), for a day.
# Only on the HTTPS port: a plain-HTTP origin has no HTTP/3.
# Not on an answer that came over HTTP/3 itself ($http3 is "h3" there).
ALT_SVC_MAP = ('    map "$https:$http3:$http_host" $stack_alt_svc {\n'
               "        \"~^on::.*:(?<port>[0-9]{1,5})$\" 'h3=\":$port\"; ma=86400';\n"
               "        \"~^on::\" 'h3=\":443\"; ma=86400';\n"
               '        default "";\n    }\n')
NO_ALT_SVC_MAP = '    map $https $stack_alt_svc {\n        default "";\n    }\n'  # nginx without HTTP/3 has no $http3
# The Host the client used ($http_host) when well-formed, else the name nginx matched. Over HTTP/3 nginx puts
# :authority's name in $host and leaves $http_host empty (nginx ticket 2281) unless the client also sent Host: the
# port it dropped is the published TLS port, the one the client's datagrams reached.
FORWARDED_HOST_MAP = ('    map $http_host $forwarded_host {\n'
                      '        "~^[A-Za-z0-9.-]+(:[0-9]{1,5})?$" $http_host;\n'
                      '        default $host;\n    }\n')
FORWARDED_HOST_MAP_HTTP3 = ('    map "$http3|$http_host" $forwarded_host {\n'
                            '        "~^(h3)?\\|(?<given_host>[A-Za-z0-9.-]+(:[0-9]{1,5})?)$" $given_host;\n'
                            '        "h3|" $host:@@PORT@@;\n'
                            '        default $host;\n    }\n')
# nginx 1.25.1 moved HTTP/2 from a `listen` parameter to its own directive (the old form is deprecated there).
HTTP2_DIRECTIVE_SINCE = (1, 25, 1)


@functools.cache
def nginx_build(nginx: str | None = None) -> str:
    """What this machine's nginx (native mode) says of its build (`nginx -V`: its version, then its configure
    arguments); "" when there is none. Read once per process: the binary does not change under it."""
    nginx = nginx or shutil.which("nginx") or "/usr/sbin/nginx"
    try:
        return subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    except OSError:
        return ""


def nginx_version(nginx: str | None = None) -> tuple[int, ...]:
    """The version of this machine's nginx, e.g. (1, 22, 1); (0,) when there is none."""
    found = re.search(r"nginx/(\d+(?:\.\d+)*)", nginx_build(nginx))
    return tuple(int(part) for part in found.group(1).split(".")) if found else (0,)


def nginx_has_http3(nginx: str | None = None) -> bool:
    """Whether this machine's nginx was built with http_v3_module (Debian 12's 1.22 was not)."""
    return HTTP3_MODULE_FLAG in nginx_build(nginx).split()


def tls_values(listen: str, certificate: str, key: str, version: tuple[int, ...], http3: bool,
               public_tls_port: int) -> dict[str, str]:
    """The template's TLS values: HTTPS on `listen`, with HTTP/2 offered by ALPN as this nginx version spells it,
    and with `http3` HTTP/3 over QUIC on the same port number in UDP, which clients reach at
    `public_tls_port`."""
    values = {"TLS_LISTEN": f"{listen} ssl", "HTTP2": "        http2 on;\n",
              "TLS_CERTIFICATE": certificate, "TLS_KEY": key}
    if version < HTTP2_DIRECTIVE_SINCE:
        values.update(TLS_LISTEN=f"{listen} ssl http2", HTTP2="")
    # QUIC: nginx's workers share the UDP port with reuseport (set once per address, on the default server):
    # the kernel then hands each client's datagrams, by their addresses, to the one worker that holds its
    # connection.
    values["QUIC"] = f"{listen} quic" if http3 else ""
    values["ALT_SVC"] = ALT_SVC_MAP if http3 else NO_ALT_SVC_MAP
    values["FORWARDED_HOST"] = (FORWARDED_HOST_MAP_HTTP3.replace("@@PORT@@", str(public_tls_port)) if http3
                                else FORWARDED_HOST_MAP)
    return values


def write_modules_conf(path: Path) -> None:
    """The include that loads nginx's stream module, written by nginx/stream-module.sh (the same script the
    nginx image runs). Raises SystemExit with what to install when the module is missing."""
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}  # nginx lives in sbin
    result = subprocess.run(["sh", str(STREAM_MODULE_SCRIPT), str(path)], capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"[stack] {result.stderr.strip()}")


def _stream_upstream(service: Service, server: str) -> str:
    return (f"    upstream {service.name} {{\n        zone stream_{service.name} 64k;\n"
            f"        server {server};\n    }}\n")


def _stream_server(service: Service, listen: str) -> str:
    """One proxy per socket service: TCP copies bytes both ways; UDP relays one datagram and its one reply."""
    if service.transport == "udp":
        listen = f"{listen} udp"
        extra = f"        proxy_responses 1;\n        proxy_timeout {STREAM_UDP_TIMEOUT};\n"
    else:
        # A client's FIN (shutdown(SHUT_WR): "I have sent everything") reaches the service, and the service's
        # answer still flows back; by default nginx would end the whole session on the first FIN.
        extra = f"        proxy_timeout {STREAM_TCP_TIMEOUT};\n        proxy_half_close on;\n"
    return (f"    server {{  # {service.name}: {service.server}\n        listen {listen};\n"
            f"        proxy_pass {service.name};\n{extra}    }}\n")


def user_directive() -> str:
    """Native nginx started as root runs its workers as the checkout's owner: they read the static files and
    write request bodies under $STACK_VAR, which a checkout in a private (0700) directory would otherwise deny
    to Debian's default worker user. Not root: nginx keeps the invoking user and needs no directive."""
    if os.geteuid() != 0:
        return ""
    owner = ROOT.stat()
    return f"user {pwd.getpwuid(owner.st_uid).pw_name} {grp.getgrgid(owner.st_gid).gr_name};\n"


def edge_headers(indent: int) -> str:
    """The headers nginx adds to every answer, its own and the services': HSTS and Alt-Svc (on the HTTPS port)
    and its Server-Timing entries. Written into the server and into each location with an add_header of its own (one
    add_header in a location and nginx forgets the server's)."""
    pad = " " * indent
    return "".join(f"{pad}add_header {name} {value} always;\n" for name, value in (
        ("Strict-Transport-Security", "$strict_transport_security"),
        ("Alt-Svc", "$stack_alt_svc"),
        ("Server-Timing", "$server_timing_edge"),
        ("Server-Timing", "$server_timing_upstream"),
    ))


def _default_server(listen: str, http2: str, access_log: str, quic: str = "") -> str:
    """The catch-all server of one port (the template explains it), and of its QUIC twin when there is one."""
    quic = f"        listen {quic} reuseport default_server;\n" if quic else ""
    return (f"    server {{\n        listen {listen} default_server;\n{quic}{http2}        server_name _;\n"
            f"{edge_headers(8)}        access_log {access_log} stack;\n"
            "        location / {\n            return 444;\n        }\n"
            "        error_page 404 = @drop;  # /.problem asked for from outside: no answer either\n"
            "        location @drop {\n            return 444;\n        }\n"
            f"{_edge_errors([code for code in EDGE_ERRORS if code != 404])}    }}\n")


def _problem_titles() -> str:
    return "".join(f'        {code} "{title}";\n' for code, title in EDGE_ERRORS.items() if title)


def _edge_errors(codes: list[int]) -> str:
    """error_page for nginx's own errors, and the internal location that writes the problem document."""
    body = ('{"type":"about:blank","title":"$problem_title","status":$status,'
            '"detail":"answered by nginx, before any service","request_id":"$stack_request_id"}')
    return (f"        error_page {' '.join(map(str, codes))} {PROBLEM_PATH};\n"
            # nginx's 497: plain HTTP sent to the HTTPS port. The client gets a 400 saying so.
            f"        error_page 497 =400 {PROBLEM_PATH};\n"
            f"        location = {PROBLEM_PATH} {{\n"
            "            internal;\n"
            "            default_type application/problem+json;\n"
            "            add_header X-Request-ID $stack_request_id always;\n"
            "            add_header Cache-Control no-store always;\n"
            f"{edge_headers(12)}"
            f"            return 200 '{body}';  # the status stays the error's\n"
            "        }\n")


@dataclass
class EdgeValues:
    """What differs between the modes' nginx configs: how upstreams are found, where files and logs go."""

    resolver: str
    upstream_blocks: str
    prometheus: str  # Prometheus's server line, proxied for the landing page
    stream_upstreams: str
    stream_servers: str
    values: dict[str, str]


def _orchestrated_edge(mode: str, site: Site, servers: Mapping[str, WebServer], uwsgi: set[str],
                       upstreams: Mapping[str, Sequence[str]] | None, http3: bool) -> EdgeValues:
    """Compose's and Kubernetes's: every upstream a name in the platform's DNS, re-resolved while running."""
    # Upstreams named in the stack's zone and re-resolved while running (`resolve`, nginx >= 1.27.3): a
    # recreated container with a new address is reached without a reload.
    # Compose: nginx asks the stack's DNS server, which answers each name with what Docker's DNS says of the
    # Compose service (every replica) minus the addresses the Compose driver withholds: replicas it is about
    # to stop leave nginx's peers while they still serve (Docker's DNS drops a container only as its address
    # disappears, and a connect to a vanished address hangs until its timeout). nginx looks the server's own
    # name up once, as it starts (docker-compose.yml gives the server that name as a network alias); `make up`
    # reloads nginx when it recreated the server elsewhere.
    # Every 10 s, not 2: each change of the answer starts a new peer list, and a request whose attempt was
    # failing while it changed is not retried on the other replica (nginx: a request keeps its peer list's
    # generation). A killed container vanishes from Docker's answer for a moment as it restarts in place;
    # polled every 2 s that moment was seen often enough to cost requests a 504.
    # Kubernetes: the same, through the cluster's DNS, each HTTP service a headless Service (every pod's
    # address, as Docker's DNS answers every replica's).
    dns, host = ((f"{DNS.name}.{ZONE}:{DNS.port}", f"{{}}.{ZONE}") if mode == "compose"
                 else (KUBERNETES_DNS, f"{{}}.{KUBERNETES_NAMESPACE}.svc.cluster.local"))
    resolver = f"    resolver {dns} valid={COMPOSE_RESOLVE_S}s ipv6=off;\n    resolver_timeout 2s;\n"
    # One name, every replica: the DNS answers each replica's address and nginx balances over them.
    if upstreams:
        raise ValueError(f"{mode}'s upstreams are its services, found through its DNS")
    upstream_blocks = "".join(
        _upstream(s.name, [f"{host.format(s.name)}:{WEB_UWSGI_PORT if s.name in uwsgi else s.port} resolve"],
                  keepalive=_pooled(s.name, servers)) for s in HTTP_SERVICES)
    prometheus = f"{host.format(PROMETHEUS.name)}:{PROMETHEUS.port} resolve"  # none until MONITORING=1: a 502
    stream_upstreams = "".join(_stream_upstream(s, f"{host.format(s.name)}:{s.port} resolve")
                               for s in STREAM_SERVICES)
    stream_servers = "".join(_stream_server(s, str(s.public_port)) for s in STREAM_SERVICES)
    values = {
        "LOAD_MODULES": f"include {COMPOSE_MODULES_CONF};",
        "USER": "",  # the image runs nginx as a non-root user
        "LISTEN": str(NGINX_PORT),
        "PID_FILE": "/tmp/nginx.pid",
        "ERROR_LOG": "stderr",
        "ACCESS_LOG": "/dev/stdout",
        "STREAM_ACCESS_LOG": "/dev/stdout",
        "TEMP_DIR": "/tmp",  # a tmpfs in Compose (the root filesystem is read-only)
        "STATIC_ROOT": "/srv/stack/static",
        "PROXY_BIND": "",  # the services know nginx by name (services/common/proxy.py)
        "SERVER_NAMES": f"localhost 127.0.0.1 nginx {ZONE} nginx.{ZONE}",
        "STATUS_LISTEN": str(NGINX_STATUS_PORT),
        # The exporter's address is not known in advance: the private ranges container networks use.
        "STATUS_ALLOW": "".join(f"            allow {net};\n" for net in (
            "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
        # Both images carry nginx >= 1.27.3 (`resolve` above needs it).
        # HTTP/3 in Compose (the nginx image's build keeps it only if its nginx has the module: nginx/http3.sh);
        # not in Kubernetes, whose manifests publish no UDP port for it.
        **tls_values(str(NGINX_TLS_PORT), *(COMPOSE_TLS if mode == "compose" else KUBERNETES_TLS),
                     version=HTTP2_DIRECTIVE_SINCE, http3=http3 and mode == "compose", public_tls_port=site.tls_port),
    }
    return EdgeValues(resolver, upstream_blocks, prometheus, stream_upstreams, stream_servers, values)


def _native_edge(site: Site, servers: Mapping[str, WebServer], uwsgi: set[str],
                 upstreams: Mapping[str, Sequence[str]] | None, http3: bool) -> EdgeValues:
    """Local processes: every instance on its own loopback address, files under the site's var/."""
    resolver = ""
    if upstreams is None:
        upstreams = {s.name: [f"{address}:{WEB_UWSGI_PORT}" for address in site.instance_addresses(s)]
                     if s.name in uwsgi else list(site.instances(s).values()) for s in HTTP_SERVICES}
    upstream_blocks = "".join(_upstream(name, list(addresses), keepalive=_pooled(name, servers))
                              for name, addresses in upstreams.items())
    prometheus = f"{site.address(PROMETHEUS)}:{PROMETHEUS.port}"
    stream_upstreams = "".join(_stream_upstream(s, f"{site.address(s)}:{s.port}") for s in STREAM_SERVICES)
    stream_servers = "".join(
        _stream_server(s, f"{site.public_host}:{site.public_port_of(s)}") for s in STREAM_SERVICES
    )
    values = {
        "LOAD_MODULES": f"include {site.var / 'run' / 'modules.conf'};",  # render_native writes it
        "USER": user_directive(),
        "LISTEN": f"{site.public_host}:{site.public_port}",
        "PID_FILE": str(site.var / "run" / "nginx.pid"),
        "ERROR_LOG": str(site.var / "log" / "nginx-error.log"),
        "ACCESS_LOG": str(site.var / "log" / "nginx-access.log"),
        "STREAM_ACCESS_LOG": str(site.var / "log" / "nginx-stream.log"),
        "TEMP_DIR": str(site.var / "nginx"),
        "STATIC_ROOT": str(ROOT / "nginx" / "static"),
        # Upstream connections leave from nginx's own address, which the services trust for X-Forwarded-*
        # and X-Real-IP (services/common/proxy.py); anything else connecting to them comes from elsewhere.
        "PROXY_BIND": f"    proxy_bind {site.address(NGINX)};\n    uwsgi_bind {site.address(NGINX)};\n",
        "SERVER_NAMES": " ".join(
            dict.fromkeys(["localhost", "127.0.0.1", site.public_host, ZONE, f"nginx.{ZONE}"])
        ),
        **tls_values(f"{site.public_host}:{site.tls_port}", str(site.tls.certificate), str(site.tls.key),
                     nginx_version(), http3=http3 and nginx_has_http3(), public_tls_port=site.tls_port),
        "STATUS_LISTEN": f"{site.address(NGINX)}:{NGINX_STATUS_PORT}",
        # The exporter connects from 127.0.0.1 whatever its own address (the kernel picks the source): loopback.
        "STATUS_ALLOW": "            allow 127.0.0.0/8;\n",
    }
    return EdgeValues(resolver, upstream_blocks, prometheus, stream_upstreams, stream_servers, values)


def _locations(routes: Mapping[str, str], servers: Mapping[str, WebServer], monitoring_api: bool) -> str:
    """Every proxied location: one per route prefix, the rate-limited exact paths, and Prometheus's query API."""
    # Prefix locations ending in "/" also redirect the bare prefix (/web -> /web/) with a 301.
    writes = f"            limit_req zone=writes burst={WRITE_BURST} nodelay;\n"
    locations = "".join(
        f"\n        location {prefix} {{\n{writes}            {_pass(name, servers)}\n        }}\n"
        for prefix, name in routes.items()
    )
    locations += "".join(
        f"\n        location = {path} {{\n            limit_req zone={zone} burst={burst} nodelay;\n{writes}"
        f"            {_pass(upstream, servers)}\n        }}\n"
        for path, (upstream, zone, burst) in RATE_LIMITED.items() if upstream in routes.values()
    )
    if monitoring_api:
        # Read-only: GET (and HEAD) of the query API, nothing of Prometheus's UI or admin; limited like /cpu.
        locations += (f"\n        location {PROMETHEUS_API} {{\n"
                      "            limit_except GET {\n                deny all;\n            }\n"
                      f"            limit_req zone=expensive burst={EXPENSIVE_BURST} nodelay;\n"
                      f"            proxy_pass http://{PROMETHEUS.name};\n        }}\n")
    return locations


def nginx_conf(mode: str, site: Site | None = None, *, upstreams: Mapping[str, Sequence[str]] | None = None,
               routes: Mapping[str, str] | None = None, overrides: Mapping[str, str] | None = None,
               servers: Mapping[str, WebServer] | None = None, http3: bool = True) -> str:
    """The stack's nginx config for `mode`, with HTTP/3 where `http3` and the mode's nginx offers it.
    `upstreams` (name -> host:port servers; native only) and `routes`
    (location prefix -> upstream name) replace the services' own, `servers` says which upstreams run a
    WSGI server of WEB_SERVERS (its protocol and keep-alive; default: web's, WEB_SERVER), and `overrides`
    replace any template value: how make compare puts the stack's edge, unchanged otherwise, in front of one
    server under test."""
    site = site or Site()
    servers = {"web": WEB_SERVERS[site.web_server]} if servers is None else servers
    uwsgi = {name for name, server in servers.items() if server.protocol == "uwsgi"}
    # The stack's own edge (not make compare's) also answers Prometheus's query API for the landing page.
    monitoring_api = routes is None and mode in MODES
    routes = routes if routes is not None else {s.prefix: s.name for s in HTTP_SERVICES if s.prefix}
    if mode in ("compose", "kubernetes"):
        edge = _orchestrated_edge(mode, site, servers, uwsgi, upstreams, http3)
    elif mode == "native":
        edge = _native_edge(site, servers, uwsgi, upstreams, http3)
    else:
        raise ValueError(f"unknown mode {mode!r}; expected one of {RENDER_TARGETS}")
    values = edge.values
    upstream_blocks = edge.upstream_blocks + (_upstream(PROMETHEUS.name, [edge.prometheus]) if monitoring_api else "")
    locations = _locations(routes, servers, monitoring_api)
    values.update(WEBSOCKET_PATHS=", ".join(WEBSOCKET_PATHS),
                  WEBSOCKET_MAP="".join(f'        "~*^websocket:{re.escape(path)}$" "websocket";\n'
                                        for path in WEBSOCKET_PATHS))
    values.update(EXPENSIVE_RATE=EXPENSIVE_RATE, WRITE_RATE=WRITE_RATE, LIMITS=LIMITS,
                  CONNECTIONS_PER_CLIENT=str(CONNECTIONS_PER_CLIENT))
    values.update(EDGE_HEADERS=edge_headers(8), LOCATION_EDGE_HEADERS=edge_headers(12), STATUS_PATH=NGINX_STATUS_PATH)
    values.update(RESOLVER=edge.resolver, UPSTREAMS=upstream_blocks, LOCATIONS=locations,
                  PROBLEM_TITLES=_problem_titles(), PROBLEM_PATH=PROBLEM_PATH,
                  EDGE_ERRORS=_edge_errors(list(EDGE_ERRORS)),
                  # The catch-all servers answer only what they cannot parse; 404 there means "no answer".
                  DEFAULT_SERVERS=_default_server(values["LISTEN"], "", values["ACCESS_LOG"]) + "\n"
                  + _default_server(values["TLS_LISTEN"], values["HTTP2"], values["ACCESS_LOG"], values["QUIC"]),
                  QUIC_LISTEN=f"        listen {values['QUIC']};\n" if values["QUIC"] else "",
                  STREAM_UPSTREAMS=edge.stream_upstreams, STREAM_SERVERS=edge.stream_servers)
    values.update(overrides or {})
    return _fill(NGINX_TEMPLATE.read_text(), values)


def zone(mode: str, site: Site | None = None) -> dict:
    """The DNS zone: native names map to loopback addresses; Compose names to Compose service names.

    `directory.stack.internal` holds one TXT record per service: a small service directory, and on purpose
    too large for a UDP answer (see services/dns/server.py)."""
    site = site or Site()
    services = (*HTTP_SERVICES, *STREAM_SERVICES, DNS)
    if mode == "compose":
        records = {s.name: s.name for s in (*services, PROMETHEUS)}  # Prometheus: only with MONITORING=1
        records.update({"": "nginx", "nginx": "nginx"})
    else:
        records = {}
        for s in services:
            addresses = site.instance_addresses(s)
            records[s.name] = addresses if len(addresses) > 1 else addresses[0]
            if len(addresses) > 1:  # web-1, web-2: one instance by name (make restart waits on each)
                records.update(zip(site.scaled(s).instance_names(), addresses, strict=True))
        records.update({"": site.public_host, "nginx": site.public_host})
    directory = [
        f"service=nginx name=nginx.{ZONE} transport=http+tcp+udp address={records['nginx']}:{NGINX_PORT} "
        f"public={site.public_host}:{site.public_port} role=the edge: reverse proxy and stream proxy"
    ]
    for s in services:
        if s.prefix:
            public = f" public={site.base_url}{s.prefix}"
        elif s.public_port:
            public = f" public={site.public_host}:{site.public_port_of(s)}/{s.transport}"
        else:
            public = ""
        transport = "http" if s.prefix else "udp+tcp" if s is DNS else s.transport
        targets = records[s.name] if isinstance(records[s.name], list) else [records[s.name]]
        directory.append(f"service={s.name} name={s.name}.{ZONE} transport={transport} "
                         f"address={','.join(f'{t}:{s.port}' for t in targets)}{public} "
                         f"framework={s.framework} server={s.server}")
    return {"zone": ZONE, "ttl": 5, "records": records, "txt": {"directory": directory}}


# Seconds a stopping service gets before SIGKILL: above gunicorn's graceful_timeout (20 s), so in-flight
# requests finish (supervisor's stopwaitsecs, Compose's stop_grace_period, `docker restart --time`).
STOP_GRACE_SECONDS = 25
SERVICE_FDS = 65536
# web's gunicorn settings (services/web/gunicorn_conf.py reads them). Written into web's program entry so that a
# second `make up` with a changed value changes that entry, and supervisor's `update` restarts web with it
# (inherited from supervisord's own start, a new value never arrived: web kept its first worker class).
WEB_SETTINGS = ("WEB_WORKER_CLASS", "WEB_WORKERS", "WEB_THREADS", "WEB_WORKER_CONNECTIONS")
_SETTING_VALUE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def web_settings(environ: Mapping[str, str]) -> str:
    """supervisor's environment entries for the WEB_* settings that are set (a bad value stops `make up`)."""
    entries = []
    for name in WEB_SETTINGS:
        value = environ.get(name, "").strip()
        if not value:
            continue
        if not _SETTING_VALUE.fullmatch(value):
            raise SystemExit(f"{name}={value!r}: use letters, digits, '.', '_', ':' or '-'")
        entries.append(f'{name}="{value}"')
    return ",".join(entries)


def service_fd_limit() -> int:
    """The descriptors each supervised process may open: 65,536, or the hard limit if that is lower
    (supervisord refuses to start when minfds is above what it can get)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return SERVICE_FDS if hard == resource.RLIM_INFINITY else min(SERVICE_FDS, hard)


def supervisord_conf(site: Site, python: str = sys.executable) -> str:
    """supervisord's config for the native process set; every path inside the site's var directory."""
    run, logs = site.var / "run", site.var / "log"
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    addr = {s.name: f"{site.address(s)}:{s.port}" for s in (*STREAM_SERVICES, DNS)}
    # gunicorn's pid file, per instance: `make ps` reads its workers from it.
    options = {"web": lambda name: ("--pid", str(run / f"{name}.pid"))}
    programs = {
        "dns": shlex.join(DNS.command(addr["dns"], "--zone-file", str(run / "zone.json"), python=python)),
        # One program per instance (web-1, web-2, ...), each on its own address.
        **{name: shlex.join(s.command(bind, *options.get(s.name, lambda name: ())(name), python=python))
           for s in HTTP_SERVICES for name, bind in site.instances(s).items()},
        **{s.name: shlex.join(s.command(addr[s.name], python=python)) for s in STREAM_SERVICES},
        "nginx": f"{nginx} -c {run / 'nginx.conf'} -e {logs / 'nginx-error.log'} -g 'daemon off;'",
    }
    if site.monitoring:  # Debian's prometheus and prometheus-nginx-exporter (deploy/monitoring.py)
        from deploy import monitoring  # stdlib only, like this file

        programs.update({name: shlex.join(argv) for name, argv in monitoring.native_programs(site).items()})
    if site.store == "postgres":  # first to start, last to stop
        from deploy import postgres  # native only: the images' render stage copies topology.py and this file

        programs = {"postgres": shlex.join(postgres.command(postgres.data_directory(site.var), site.address(POSTGRES),
                                                            POSTGRES.port)), **programs}
    service_of = {name: s for s in site.http_services for name in s.instance_names()}
    # Services reach each other by name, resolved through the stack's DNS server.
    by_name = f'STACK_DNS="{addr["dns"]}",' + ",".join(
        f'STACK_{s.name.upper()}_URL="{s.internal_url()}"' for s in HTTP_SERVICES
    )
    conf = configparser.ConfigParser(interpolation=None)
    conf["unix_http_server"] = {"file": str(run / "supervisor.sock"), "chmod": "0700"}
    conf["supervisord"] = {
        "logfile": str(logs / "supervisord.log"),
        "pidfile": str(run / "supervisord.pid"),
        "childlogdir": str(logs),
        "identifier": f"stack:{site.var}",
        "nodaemon": "false",
        "silent": "true",
        # Raise the soft descriptor limit the services inherit (often 1024): C10k needs 10,000 sockets.
        "minfds": str(service_fd_limit()),
    }
    conf["rpcinterface:supervisor"] = {
        "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"
    }
    conf["supervisorctl"] = {"serverurl": f"unix://{run / 'supervisor.sock'}"}
    # Start order, dns first and nginx last, by kind, not position: a new instance (SCALE) must not renumber, and
    # so restart, every program after it.
    priorities = {"postgres": 5, "dns": 10, **dict.fromkeys(service_of, 100), **{s.name: 200 for s in STREAM_SERVICES},
                  "nginx": 900, **{s.name: 950 for s in MONITORING_SERVICES}}
    # The HTTP services' store: STORE=postgres points them at the stack's cluster (they wait for its migrations).
    store = f'STORE="postgres",DATABASE_URL="{site.database_url}"' if site.store == "postgres" else None
    for name, command in programs.items():
        conf[f"program:{name}"] = {
            "command": command,
            "directory": str(ROOT),
            # STACK_VAR marks every process of this instance, so `down` can prove none is left behind.
            "environment": ",".join(filter(None, [
                f'PYTHONPATH="{ROOT}",PYTHONUNBUFFERED="1",STACK_VAR="{site.var}",STACK_DATA="{site.var / "data"}",'
                f'STACK_SECRETS="{site.secrets}",STACK_PROXY="{site.address(NGINX)}"',
                # Not the instance count: a program whose entry changes restarts, and SCALE must only add or
                # remove instances (web reads the count from $STACK_VAR/scale: services/web/gunicorn_conf.py).
                *((by_name, f'STACK_INSTANCE="{name}"', store) if name in service_of else ()),
                *((f'WEB_SERVER="{site.web_server}"', web_settings(os.environ))
                  if name in service_of and service_of[name].name == "web" else ()),
            ])),
            "priority": str(priorities[name]),
            "autostart": "true",
            "autorestart": "true",
            "startsecs": "1",
            # nginx: graceful; gunicorn: graceful on TERM; Postgres: "fast" (TERM waits for every pooled client).
            "stopsignal": {"nginx": "QUIT", "postgres": "INT"}.get(name, "TERM"),
            "stopwaitsecs": str(STOP_GRACE_SECONDS),  # above gunicorn's graceful_timeout
            "stopasgroup": "true",
            "killasgroup": "true",
            "redirect_stderr": "true",
            "stdout_logfile": str(logs / f"{name}.log"),
            "stdout_logfile_maxbytes": "10MB",
            "stdout_logfile_backups": "2",
        }
    if site.store == "postgres" and os.geteuid() == 0:
        conf["program:postgres"]["user"] = "postgres"  # Postgres refuses to run as root (deploy/postgres.py)
    out = io.StringIO()
    conf.write(out)
    return out.getvalue()


def render_native(site: Site) -> Path:
    """Write every native config under $STACK_VAR/run and create the directories they name."""
    run = site.var / "run"
    for sub in ("run", "log", "nginx"):
        (site.var / sub).mkdir(parents=True, exist_ok=True)
    write_modules_conf(run / "modules.conf")
    (run / "nginx.conf").write_text(nginx_conf("native", site))
    (run / "zone.json").write_text(json.dumps(zone("native", site), indent=2) + "\n")
    (run / "supervisord.conf").write_text(supervisord_conf(site))
    if site.monitoring:
        from deploy import monitoring

        monitoring.write(run / "prometheus", "native", site)
        (site.var / "prometheus").mkdir(exist_ok=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=RENDER_TARGETS, required=True)
    parser.add_argument("--nginx-out", type=Path, help="write nginx.conf here")
    parser.add_argument("--zone-out", type=Path, help="write the DNS zone (JSON) here")
    parser.add_argument("--no-http3", action="store_true", help="nginx.conf without HTTP/3 (an nginx without it)")
    args = parser.parse_args()
    site = Site.from_env()
    if not (args.nginx_out or args.zone_out):
        if args.mode != "native":
            parser.error(f"--nginx-out or --zone-out is required for {args.mode}")
        print(render_native(site))
    for path, text in (
        (args.nginx_out, lambda: nginx_conf(args.mode, site, http3=not args.no_http3)),
        (args.zone_out, lambda: json.dumps(zone(args.mode, site), indent=2) + "\n"),
    ):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text())


if __name__ == "__main__":
    main()
