"""What `make compare` measures: configurations x workloads x routes (direct, through nginx)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from stack.topology import service

CORES = os.cpu_count() or 1
IO_MS = 50


@dataclass(frozen=True)
class Config:
    name: str
    family: str  # web | catalog | httpbin | reference
    label: str  # what runs, for the report
    prefix: str  # where its benchmark endpoints live
    kind: str  # how servers.py starts it
    env: dict[str, str] = field(default_factory=dict)
    slots: int | None = None  # requests it can hold at once on blocking I/O; None: an event loop (users)
    processes: int = 1
    endpoints: tuple[str, ...] = ("plaintext", "json", "io", "cpu")


@dataclass(frozen=True)
class Workload:
    name: str  # plaintext | json | io | cpu | mixed
    users: int

    def path(self, prefix: str) -> str:
        return {"plaintext": f"{prefix}/plaintext", "json": f"{prefix}/json", "io": f"{prefix}/io?ms={IO_MS}",
                "cpu": f"{prefix}/cpu?n=10000"}[self.name]


@dataclass(frozen=True)
class Cell:
    config: Config
    workload: Workload
    route: str  # direct | nginx

    @property
    def key(self) -> str:
        return f"{self.config.name}/{self.workload.name}/{self.route}"


SYNC_WORKERS = 2 * CORES + 1
WEB_PREFIX, CATALOG_PREFIX, HTTPBIN_PREFIX = (service(name).route_prefix for name in ("web", "catalog", "httpbin"))
BARE_ENDPOINTS = ("plaintext", "json")


def _web(name: str, server: str, worker_class: str, workers: int, threads: int = 1, bare: bool = False,
         endpoints: tuple[str, ...] = ("plaintext", "json", "io", "cpu")) -> Config:
    """web (or the bare Flask app) under `server` (stack/topology.py: WEB_SERVERS) and an IO model. Its label
    names the server, the model and processes x threads; slots are the waits it can hold at once (None: an
    event loop)."""
    program = {"gunicorn": "gunicorn", "uwsgi": "uWSGI", "uwsgi-http": "uWSGI", "granian": "granian"}[server]
    model = {"gevent": "gevent", "sync": "sync" if program != "uWSGI" else "prefork",
             "gthread": "gthread" if program == "gunicorn" else "threads"}[worker_class]
    route = {"uwsgi": ", uwsgi_pass", "uwsgi-http": ", HTTP socket"}.get(server, "")
    shape = f"{workers}x{threads}" if threads > 1 else f"x{workers}"
    label = f"{'bare Flask' if bare else 'Flask'}, {program} {model} {shape}{route}"
    env = {"WEB_SERVER": server, "WEB_WORKER_CLASS": worker_class, "WEB_WORKERS": str(workers),
           "WEB_THREADS": str(threads)}
    slots = None if worker_class == "gevent" else workers * threads
    return Config(name, "reference" if bare else "web", label, "/bare" if bare else WEB_PREFIX,
                  "bare-flask" if bare else "web", env, slots=slots, processes=workers,
                  endpoints=BARE_ENDPOINTS if bare else endpoints)


CONFIGS: tuple[Config, ...] = (
    _web("web-sync", "gunicorn", "sync", SYNC_WORKERS),
    _web("web-gthread", "gunicorn", "gthread", 2, 8),
    _web("web-gevent", "gunicorn", "gevent", 2),
    _web("bare-flask", "gunicorn", "gevent", 2, bare=True),
    # uWSGI: the same three IO models; nginx speaks the uwsgi protocol to it (uwsgi_pass), or, as a second
    # variant, HTTP to its HTTP socket (direct runs are the HTTP socket in both).
    _web("web-uwsgi-prefork", "uwsgi", "sync", SYNC_WORKERS),
    _web("web-uwsgi-threads", "uwsgi", "gthread", 2, 8),
    _web("web-uwsgi-gevent", "uwsgi", "gevent", 2),
    _web("web-uwsgi-http-gevent", "uwsgi-http", "gevent", 2, endpoints=BARE_ENDPOINTS),
    _web("bare-flask-uwsgi", "uwsgi", "gevent", 2, bare=True),
    # granian: Rust's HTTP/1.1 and a pool of blocking Python threads per worker (no gevent).
    _web("web-granian-sync", "granian", "sync", SYNC_WORKERS),
    _web("web-granian-threads", "granian", "gthread", 2, 8),
    _web("bare-flask-granian", "granian", "gthread", 2, 8, bare=True),
    Config("catalog-tornado", "catalog", f"Tornado, own IOLoop x{CORES}", CATALOG_PREFIX, "tornado",
           processes=CORES),
    Config("bare-tornado", "reference", f"bare Tornado, own IOLoop x{CORES}", "/bare", "bare-tornado",
           processes=CORES, endpoints=("plaintext", "json")),
    Config("catalog-gunicorn", "catalog", f"Tornado, gunicorn -k tornado x{CORES}", CATALOG_PREFIX,
           "gunicorn-tornado", processes=CORES),
    Config("httpbin-aiohttp", "httpbin", "aiohttp, AppRunner x1", HTTPBIN_PREFIX, "aiohttp"),
    Config("bare-aiohttp", "reference", "bare aiohttp, web.run_app x1", "/bare", "bare-aiohttp",
           endpoints=("plaintext", "json")),
    Config("httpbin-gunicorn", "httpbin", f"aiohttp, gunicorn GunicornWebWorker x{CORES}", HTTPBIN_PREFIX,
           "gunicorn-aiohttp", processes=CORES),
    # References: the ceiling of anything behind the proxy (and each framework bare, above: right after its
    # service, since ours ÷ bare is the figure and the host's speed drifts over minutes).
    Config("nginx-static", "reference", "nginx, a static 200", "/static", "nginx-static",
           endpoints=("plaintext", "json")),
)
# Each service once more with its metrics off (STACK_METRICS=0), right after it: what the metrics cost.
METRICS_OFF_OF = {"web-gevent": "web-gevent-nometrics", "catalog-tornado": "catalog-tornado-nometrics",
                  "httpbin-aiohttp": "httpbin-aiohttp-nometrics"}
CONFIGS = tuple(variant for config in CONFIGS for variant in (
    config, *([replace(config, name=METRICS_OFF_OF[config.name], label=f"{config.label}, metrics off",
                       env={**config.env, "STACK_METRICS": "0"}, endpoints=("plaintext", "json"))]
              if config.name in METRICS_OFF_OF else [])))
BY_NAME = {config.name: config for config in CONFIGS}
# Each service beside its framework's bare app under the same server settings: our code's overhead; web once
# per WSGI server.
BARE_OF = {"web-gevent": "bare-flask", "web-uwsgi-gevent": "bare-flask-uwsgi",
           "web-granian-threads": "bare-flask-granian", "catalog-tornado": "bare-tornado",
           "httpbin-aiohttp": "bare-aiohttp"}
# The same app behind nginx's two ways to a uWSGI: the uwsgi protocol against HTTP to its HTTP socket.
UWSGI_PASS_VS_HTTP = ("web-uwsgi-gevent", "web-uwsgi-http-gevent")
# The project's performance targets (benchmarks, not tests).
TARGET_OF_BARE = {"web": 0.90, "catalog": 0.85, "httpbin": 0.85}  # plaintext and json, by family
TARGET_OF_METRICS_OFF = 0.95  # plaintext and json: metrics cost at most 5% of throughput
TARGET_NGINX_OF_DIRECT = 0.75  # for a configuration that leaves a core free (one process)
TARGET_IO_OF_CEILING = {"blocking": 0.90, "event loop": 0.85}

WORKLOADS = (Workload("plaintext", 64), Workload("json", 64), Workload("io", 200), Workload("cpu", 64))
# QUICK still covers every worker class and server the stack can run under (no bare references).
QUICK_CONFIGS = ("web-sync", "web-gthread", "web-gevent", "web-uwsgi-gevent", "web-granian-threads",
                 "catalog-tornado", "catalog-gunicorn", "httpbin-aiohttp", "httpbin-gunicorn", "nginx-static")
QUICK_WORKLOADS = ("json", "io")


def expand(quick: bool = False, only_configs: Sequence[str] = (), only_workloads: Sequence[str] = ()) -> list[Cell]:
    """Every cell to measure, grouped by configuration (each configuration's servers start once); `only_*`
    narrow the full (or QUICK) set to the named configurations and workloads."""
    if unknown := (set(only_configs) - set(BY_NAME)) | (set(only_workloads) - {w.name for w in WORKLOADS}):
        raise ValueError(f"unknown configurations or workloads: {', '.join(sorted(unknown))}; "
                         f"configurations: {', '.join(BY_NAME)}; workloads: {', '.join(w.name for w in WORKLOADS)}")
    configs = [BY_NAME[name] for name in QUICK_CONFIGS] if quick else list(CONFIGS)
    configs = [config for config in configs if not only_configs or config.name in only_configs]
    workloads = [w for w in WORKLOADS if not quick or w.name in QUICK_WORKLOADS]
    workloads = [w for w in workloads if not only_workloads or w.name in only_workloads]
    cells = []
    for config in configs:
        for workload in workloads:
            if workload.name not in config.endpoints:
                continue
            routes = ["direct"] if config.kind == "nginx-static" else ["direct", "nginx"]
            if quick and workload.name == "io":
                routes = ["direct"]
            cells += [Cell(config, workload, route) for route in routes]
    return cells


def io_ceiling(config: Config, users: int, wait_ms: int = IO_MS) -> float:
    """Requests per second a configuration can at best serve when each request waits `wait_ms`:
    concurrency slots / wait. Blocking workers have a fixed number of slots (processes x threads); an
    event loop holds as many waits as there are users."""
    slots = config.slots if config.slots is not None else users
    return min(slots, users) / (wait_ms / 1000)
