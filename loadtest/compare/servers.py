"""Start one configuration's server (and an nginx in front of it) on loopback ports, measure its processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from deploy import render, tls
from loadtest.compare.matrix import CORES, Config
from services.common.http import CLIENT_TIMEOUT_S
from stack.topology import (
    HTTP_SERVICES,
    ROOT,
    STREAM_SERVICES,
    WEB_SERVERS,
    Site,
    WebServer,
    free_port,
    service,
)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# Above nginx's upstream keepalive_timeout (render.UPSTREAM_IDLE_S), as in web's own config; quiet, so logs don't
# cost throughput.
GUNICORN_OPTIONS = ("--keep-alive", str(CLIENT_TIMEOUT_S), "--log-level", "warning")


BARE_FLASK_APP = "loadtest.bare.flask_app:app"


def command_for(config: Config, port: int, uwsgi_port: int | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that serve `config` on 127.0.0.1:port (and, for web under uWSGI, the
    uwsgi protocol on uwsgi_port)."""
    bind = f"127.0.0.1:{port}"
    web = service("web")
    env = {"WEB_BIND": bind, **config.env}
    # web's launcher starts whichever WSGI server config.env's WEB_SERVER names; the bare Flask app runs under
    # the same launcher, so under the same server settings.
    web_options = ["--uwsgi-bind", f"127.0.0.1:{uwsgi_port}"] if uwsgi_port else []
    commands = {
        "web": web.command(bind, *web_options),
        "bare-flask": web.command(bind, *web_options, "--app", BARE_FLASK_APP),
        "tornado": service("catalog").command(bind, "--processes", str(CORES)),
        "gunicorn-tornado": service("catalog").command(bind, "-w", str(CORES), *GUNICORN_OPTIONS,
                                                       server="gunicorn-tornado"),
        "aiohttp": service("httpbin").command(bind),
        "gunicorn-aiohttp": service("httpbin").command(bind, "-w", str(CORES), *GUNICORN_OPTIONS,
                                                       server="gunicorn-aiohttp"),
        "bare-tornado": [sys.executable, "-m", "loadtest.bare.tornado_app", str(port), str(CORES)],
        "bare-aiohttp": [sys.executable, "-m", "loadtest.bare.aiohttp_app", str(port)],
    }
    return commands[config.kind], env


def web_server_of(config: Config) -> WebServer | None:
    """The WSGI server a web or bare-Flask configuration runs under (None for the others)."""
    return WEB_SERVERS[config.env.get("WEB_SERVER", "gunicorn")] if config.kind in ("web", "bare-flask") else None


# The static reference's two answers: files the stack's own `location /` serves (sendfile, open_file_cache).
STATIC_ANSWERS = {"plaintext": "Hello, World!", "json": '{"message":"Hello, World!"}'}


def nginx_conf(listen: int, upstream: int | None, prefix: str, workdir: Path,
               server: WebServer | None = None) -> str:
    """The stack's own edge (deploy/render.py, the native template) listening on 127.0.0.1:listen, with one
    route: `prefix` to the server under test on 127.0.0.1:upstream, or, when upstream is None, static files
    under `prefix` (the reference: what nginx does without a service behind it). Its logs, temp files and
    socket-service listeners (on free ports) live in workdir. `server`: the WSGI server behind it, whose
    protocol (uwsgi_pass or HTTP) and keep-alive nginx uses, as the stack's edge does for web."""
    family = next((s for s in HTTP_SERVICES if s.route_prefix == prefix), None)
    name = family.name if family else "server_under_test"  # the bare apps have no service's name
    by_port: dict[int, int] = {}  # time-tcp and time-udp share a port number, so they share a free one
    stream_ports = {s.name: by_port.setdefault(s.port, free_port()) for s in STREAM_SERVICES}
    site = Site(public_host="127.0.0.1", public_port=listen, tls_port=free_port(), var=workdir,
                stream_ports=stream_ports)
    for sub in ("run", "log", "nginx"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    tls.ensure(site)  # the template's HTTPS listener needs a certificate, as the stack's does
    for directory in (workdir.parent, workdir):  # nginx's workers run as the checkout's owner (render.py)
        directory.chmod(0o755)
    render.write_modules_conf(workdir / "run" / "modules.conf")
    if upstream is None:
        static = workdir / "static"
        (static / prefix.strip("/")).mkdir(parents=True, exist_ok=True)
        for endpoint, body in STATIC_ANSWERS.items():
            (static / prefix.strip("/") / endpoint).write_text(body)
        return render.nginx_conf("native", site, upstreams={}, routes={}, overrides={"STATIC_ROOT": str(static)})
    return render.nginx_conf("native", site, upstreams={name: [f"127.0.0.1:{upstream}"]},
                             routes={f"{prefix}/": name}, servers={name: server} if server else {})


@dataclass
class Running:
    """A started process tree, with CPU accounting across all its processes."""

    name: str
    process: subprocess.Popen | None  # None: a tree this harness did not start (the mixed run's stack)
    port: int
    root_pid: int = 0
    log: Path | None = None
    upstream_port: int = 0  # where nginx reaches it: port, or web's uwsgi-protocol port under uwsgi_pass
    _cpu_mark: float = field(default=0.0)

    def alive(self) -> bool:
        return self.process.poll() is None if self.process is not None else psutil.pid_exists(self.root_pid)

    def log_tail(self, size: int = 800) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log and self.log.exists() else ""

    def __post_init__(self) -> None:
        if self.process is not None:
            self.root_pid = self.process.pid
        self.upstream_port = self.upstream_port or self.port

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.root_pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.tree():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total

    def rss_mb(self) -> float:
        total = 0
        for proc in self.tree():
            try:
                total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total / 2**20

    def mark(self) -> None:
        self._cpu_mark = self.cpu_seconds()

    def cpu_since_mark(self, seconds: float) -> float:
        """Cores busy on average since mark()."""
        return (self.cpu_seconds() - self._cpu_mark) / seconds

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def wait_until_serving(port: int, path: str, process: subprocess.Popen, timeout: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answered http://127.0.0.1:{port}{path} within {timeout} s")


def settle(port: int, path: str, quick_s: float = 0.25, timeout: float = 30) -> float:
    """Wait until `path` answers within quick_s: the previous run's leftovers are served and gone. A blocking
    server (sync: one request per worker) still works through every request queued in its listen backlog
    after the driver left; measuring before they drain would charge their time to the next run. Returns
    the seconds waited."""
    import urllib.request

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        asked = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
                response.read()
        except OSError:
            time.sleep(0.2)
            continue
        if time.monotonic() - asked < quick_s:
            break
    return time.monotonic() - started


def start(config: Config, data_dir: Path) -> Running:
    """The configuration's server, ready to serve (its SQLite files in data_dir)."""
    port = free_port()
    if config.kind == "nginx-static":
        return start_nginx(config.name, None, config.prefix, data_dir)
    server = web_server_of(config)
    uwsgi_port = free_port() if server and server.program == "uwsgi" else None
    command, env = command_for(config, port, uwsgi_port)
    log = data_dir / f"{config.name}.log"  # the server's own output: access logs, and why it died if it did
    with log.open("ab") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "STACK_DATA": str(data_dir), **env},
        )
    upstream = uwsgi_port if server and server.protocol == "uwsgi" else port
    running = Running(config.name, process, port, log=log, upstream_port=upstream)
    try:
        wait_until_serving(port, f"{config.prefix}/json", process)
    except RuntimeError as error:
        running.stop()
        raise RuntimeError(f"{config.name}: {error}; its log ends: {running.log_tail()}") from None
    return running


def start_nginx(name: str, upstream: int | None, prefix: str, data_dir: Path,
                server: WebServer | None = None) -> Running:
    workdir = Path(tempfile.mkdtemp(prefix="nginx-", dir=data_dir))
    port = free_port()
    (workdir / "nginx.conf").write_text(nginx_conf(port, upstream, prefix, workdir, server))
    process = subprocess.Popen([NGINX, "-c", str(workdir / "nginx.conf"), "-e", str(workdir / "error.log"),
                                "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    running = Running(f"nginx for {name}", process, port)
    probe = f"{prefix}/json" if upstream is None else None
    if probe:
        wait_until_serving(port, probe, process)
    else:
        time.sleep(0.5)
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {(workdir / 'error.log').read_text()[-500:]}")
    return running
