"""What `make compare` measures: configurations x workloads x routes (direct, through nginx)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from deploy.topology import service

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
CONFIGS: tuple[Config, ...] = (
    Config("web-sync", "web", f"Flask, gunicorn sync x{SYNC_WORKERS}", WEB_PREFIX, "gunicorn-web",
           {"WEB_WORKER_CLASS": "sync", "WEB_WORKERS": str(SYNC_WORKERS), "WEB_THREADS": "1"},
           slots=SYNC_WORKERS, processes=SYNC_WORKERS),
    Config("web-gthread", "web", "Flask, gunicorn gthread 2x8", WEB_PREFIX, "gunicorn-web",
           {"WEB_WORKER_CLASS": "gthread", "WEB_WORKERS": "2", "WEB_THREADS": "8"}, slots=16, processes=2),
    Config("web-gevent", "web", "Flask, gunicorn gevent x2", WEB_PREFIX, "gunicorn-web",
           {"WEB_WORKER_CLASS": "gevent", "WEB_WORKERS": "2"}, processes=2),
    Config("bare-flask", "reference", "bare Flask, gunicorn gevent x2", "/bare", "gunicorn-bare-flask",
           {"WEB_WORKER_CLASS": "gevent", "WEB_WORKERS": "2"}, processes=2, endpoints=("plaintext", "json")),
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
# Each service beside its framework's bare app under the same server settings: our code's overhead.
BARE_OF = {"web-gevent": "bare-flask", "catalog-tornado": "bare-tornado", "httpbin-aiohttp": "bare-aiohttp"}
# The project's performance targets (benchmarks, not tests).
TARGET_OF_BARE = 0.85  # plaintext and json
TARGET_OF_METRICS_OFF = 0.95  # plaintext and json: metrics cost at most 5% of throughput
TARGET_NGINX_OF_DIRECT = 0.75  # for a configuration that leaves a core free (one process)
TARGET_IO_OF_CEILING = {"blocking": 0.90, "event loop": 0.85}

WORKLOADS = (Workload("plaintext", 64), Workload("json", 64), Workload("io", 200), Workload("cpu", 64))
# QUICK still covers every worker class and server the stack can run under (no bare references).
QUICK_CONFIGS = ("web-sync", "web-gthread", "web-gevent", "catalog-tornado", "catalog-gunicorn", "httpbin-aiohttp",
                 "httpbin-gunicorn", "nginx-static")
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
