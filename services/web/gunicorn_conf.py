"""gunicorn settings for the web service, each one explained (in the spirit of gunicorn's example_config.py).

Worker class and sizing come from the environment so comparisons switch them without editing files; they are
read by services/web/server_settings.py, which uWSGI and granian share (WEB_WORKER_CLASS -> worker_class,
WEB_WORKERS -> workers, WEB_THREADS -> threads, WEB_WORKER_CONNECTIONS -> worker_connections).
  WEB_BIND           host:port to listen on (default: web's port in stack/topology.py on $BIND_HOST or 127.0.0.1)
"""

import os
import shutil
import socket
import tempfile
from typing import Any

from gunicorn import util

from services.common import http
from services.common.proxy import TrustedProxy
from services.web.server_settings import LISTEN_BACKLOG, WebServerSettings
from stack import topology

_settings = WebServerSettings.from_env()

# Where to listen. nginx reaches it by this address (native: the service's own loopback address, given by
# --bind; Compose: the registry's port on BIND_HOST=0.0.0.0 inside the container, reachable only on the Compose
# network). WEB_BIND overrides it (the compare harness).
bind = os.environ.get("WEB_BIND") or topology.service("web").default_bind()

# Pending connections the kernel queues before accept() (server_settings.py).
backlog = LISTEN_BACKLOG

# The IO model. gevent: one process runs many greenlets, switching on every socket wait, so one worker
# serves up to worker_connections requests at once. sync: one request per process at a time.
worker_class = _settings.worker_class

# Processes. The classic rule is 2 x cores + 1 for sync workers, per machine: the instances of web on this
# machine share it (2 instances on 2 cores: 2 workers each, not 5: ten processes on two cores put web's p99.9
# at 23-30 ms under `make soak`, four at 18-21 ms). Capped because each worker costs memory and, on a small
# machine, more processes than cores only add context switches for event-loop workers.
# Running instances keep their count until they restart.
workers = _settings.workers

# Threads per worker, for the gthread class. Keep 1 for sync: gunicorn silently runs a "sync" worker with
# threads > 1 as gthread, which would mislabel a comparison.
threads = _settings.threads

# Concurrent clients per gevent worker.
worker_connections = _settings.worker_connections

# Seconds a worker may be silent before the master kills and replaces it. Longer than the longest /io wait
# (services/common/http.py: IO_MAX_MS) so a legitimate slow request is never killed.
timeout = 30

# Seconds workers get to finish in-flight requests after SIGTERM before they are killed.
graceful_timeout = 20

# Seconds an idle keep-alive connection stays open, and (async workers) how long a request head may take:
# services/common/http.py's CLIENT_TIMEOUT_S, longer than nginx's upstream keepalive_timeout so nginx always
# closes an idle pooled connection first. (The sync worker ignores this: it closes after every response.)
# A body's reads get the same bound in the app (services/web/app.py: read_body_within).
keepalive = http.client_timeout_s()

# Heartbeat files are touched on every loop iteration; on tmpfs that costs no disk I/O and cannot stall on
# a slow disk (which would get healthy workers killed). /dev/shm exists on Linux and in containers.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

# gunicorn >= 25.1 opens a control socket under $HOME/.gunicorn by default; we do not use it, and a
# container's non-root user may have no writable home.
control_socket_disable = True

# Trust X-Forwarded-Proto (wsgi.url_scheme) only on connections from nginx: $STACK_PROXY's addresses
# (services/common/proxy.py). A name (Compose's "nginx") cannot be listed here; the app checks it per request.
forwarded_allow_ips = ",".join(TrustedProxy(os.environ.get("STACK_PROXY")).literals()) or "127.0.0.1,::1"

# Access log on stdout with the request id (echoed in the response) and the request time in seconds, in
# the same line format as the other services and written without the logging module (access_logger.py
# explains why); "-" turns it on, access_log_format is not used. Errors keep gunicorn's own logger.
accesslog = "-"
logger_class = "services.web.access_logger.AccessLineLogger"
errorlog = "-"
loglevel = os.environ.get("WEB_LOG_LEVEL", "info")

# Name in `ps` output.
proc_name = "stack-web"


def _write_problem(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    util.write_nonblock(sock, http.unparsable_request_reply(status_int, mesg))


# A request gunicorn cannot parse (bad request line or header, CL with TE, an oversized head) never reaches
# Flask: gunicorn answers it itself, with an HTML page. gunicorn has no setting for that page; its workers call
# util.write_error at that point (workers/base.py: handle_error), so the one function is replaced here, before
# the workers fork, by one that sends the stack's problem document.
util.write_error = _write_problem


# Metrics (services/common/metrics.py): every worker writes its counts to files in one directory, which /metrics
# (served by any worker) adds up: prometheus-client's multiprocess mode. A directory per master, on tmpfs, made
# as the master starts (not when this file is imported: a test importing it must not inherit it) and before any
# worker imports prometheus-client; emptied of a dead worker's live gauges, removed on exit.
_metrics_directory: str | None = None


def on_starting(server: Any) -> None:
    global _metrics_directory
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # one the environment names is used as it is
        _metrics_directory = tempfile.mkdtemp(prefix="stack-web-metrics-",
                                              dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_directory


def post_worker_init(worker: Any) -> None:
    """In each new worker: count the worker, and under gevent watch the hub's lag."""
    from prometheus_client import Gauge

    from services.common import metrics

    Gauge("gunicorn_workers", "gunicorn's live worker processes", ["worker_class"],
          multiprocess_mode="livesum").labels(worker_class).set(1)
    if worker_class == "gevent":
        import gevent

        gevent.spawn(metrics.sample_hub_lag)


def child_exit(server: Any, worker: Any) -> None:
    """A worker is gone: its live gauges (in flight, lag, the worker count) leave the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    if _metrics_directory:  # ours, not one the environment named
        shutil.rmtree(_metrics_directory, ignore_errors=True)
