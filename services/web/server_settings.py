"""web's server settings, whichever WSGI server runs it: read from the environment once, by gunicorn_conf.py,
services/web/serve.py (uWSGI, granian) and wsgi.py, so the three servers size and choose their IO model alike.

  WEB_SERVER         gunicorn (default) | uwsgi | uwsgi-http | granian (stack/topology.py: WEB_SERVERS)
  WEB_WORKER_CLASS   gevent | sync | gthread: the IO model (default: the server's first, gevent where it has it)
  WEB_WORKERS        processes; default 2 x cores + 1, capped at 8, shared by web's instances on this machine
                     (at least 2 each)
  WEB_THREADS        threads per process for gthread (default 1; granian's default is 8)
  WEB_WORKER_CONNECTIONS  concurrent clients per gevent process (default 1000)
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Mapping
from dataclasses import dataclass

from stack import topology

# Pending connections the kernel queues before accept(), under every server; beyond it clients see SYN retries.
LISTEN_BACKLOG = 2048

# granian's threads run the app's blocking calls (its WSGI has no event loop for the app): with one, a worker
# holds one request at a time; eight per worker is what its documentation's examples use for I/O-bound apps.
GRANIAN_THREADS = 8


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "")
    return int(value) if value.strip() else default


@dataclass(frozen=True)
class WebServerSettings:
    server: topology.WebServer
    worker_class: str
    workers: int
    threads: int
    worker_connections: int

    @property
    def cooperative(self) -> bool:
        """gevent: the standard library must be patched before the app is imported (wsgi.py)."""
        return self.worker_class == "gevent"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> WebServerSettings:
        name = environ.get("WEB_SERVER") or topology.Site.web_server
        if name not in topology.WEB_SERVERS:
            raise SystemExit(f"WEB_SERVER={name!r}: use one of {', '.join(topology.WEB_SERVERS)}")
        server = topology.WEB_SERVERS[name]
        worker_class = environ.get("WEB_WORKER_CLASS") or server.worker_classes[0]
        if server.program != "gunicorn" and worker_class not in server.worker_classes:
            raise SystemExit(f"WEB_WORKER_CLASS={worker_class!r}: {name} offers {', '.join(server.worker_classes)}")
        # How many instances share the machine: STACK_INSTANCES (Compose sets it), else the running native stack's
        # scale ($STACK_VAR/scale, which `make up` writes before it starts an instance).
        instances = _int(environ, "STACK_INSTANCES", 0) or (
            topology.Site.from_env(dict(environ)).scaled(topology.service("web")).instances
            if "STACK_VAR" in environ else 1)
        workers = _int(environ, "WEB_WORKERS", max(2, min(2 * multiprocessing.cpu_count() + 1, 8) // instances))
        threads = _int(environ, "WEB_THREADS", GRANIAN_THREADS if server.program == "granian" else 1)
        return cls(server, worker_class, workers, threads, _int(environ, "WEB_WORKER_CONNECTIONS", 1000))
