"""web's launcher: `python -m services.web.serve --bind HOST:PORT [--workers N] [--pid FILE] [--app M:CALLABLE]`
starts the Flask app under the WSGI server WEB_SERVER names (stack/topology.py: WEB_SERVERS; gunicorn by
default), with the sizing and IO model of services/web/server_settings.py.

- gunicorn: its own config file, gunicorn_conf.py.
- uWSGI (uwsgi, uwsgi-http): uwsgi.ini, plus two sockets on the bind address: HTTP on its port (one request
  per connection) and the binary uwsgi protocol on `--uwsgi-bind` (default web's WEB_UWSGI_PORT), which nginx's
  uwsgi_pass speaks (one request per connection too: the protocol has no keep-alive).
  Natively a master FIFO ($STACK_VAR/run/<instance>.fifo) takes uWSGI's commands: `echo c > ...` reloads the
  workers one at a time (a chain reload), `q` stops gracefully.
- granian: its command line; HTTP/1.1 only (nginx speaks it upstream), workers x blocking threads.

The launcher replaces itself with gunicorn or granian (exec), so supervisor's and Docker's signals reach the
server's master directly; uWSGI runs as its child (run_uwsgi says why).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from services.common import http
from services.web.middleware import header_shaped
from services.web.server_settings import LISTEN_BACKLOG, WebServerSettings
from stack import topology

HERE = Path(__file__).resolve().parent
APP = "services.web.wsgi:app"
GRANIAN_MAX_HEAD_MS = 60_000
UWSGI_RESIGNAL_S = 2  # a stop's SIGHUP reaches every worker again this often until uWSGI exits (run_uwsgi)


def gunicorn_argv(args: argparse.Namespace, settings: WebServerSettings) -> list[str]:
    argv = [sys.executable, "-m", "gunicorn", "-c", str(HERE / "gunicorn_conf.py"), "--bind", args.bind]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    if args.pid:
        argv += ["--pid", args.pid]
    return [*argv, *args.extra, args.app]


def uwsgi_bind(args: argparse.Namespace) -> str:
    """Where the uwsgi-protocol socket listens: --uwsgi-bind, else the HTTP bind's host on WEB_UWSGI_PORT."""
    return args.uwsgi_bind or f"{args.bind.rsplit(':', 1)[0]}:{topology.WEB_UWSGI_PORT}"


def master_fifo(environ: Mapping[str, str]) -> str | None:
    """A native instance's uWSGI master FIFO (its commands: r, c, q, ...)."""
    if environ.get("STACK_VAR") and environ.get("STACK_INSTANCE"):
        return str(Path(environ["STACK_VAR"]) / "run" / f"{environ['STACK_INSTANCE']}.fifo")
    return None


def uwsgi_args(args: argparse.Namespace, settings: WebServerSettings, environ: Mapping[str, str],
               sockets: tuple[socket.socket, socket.socket]) -> list[str]:
    """uWSGI's options after the ini file: the two listening sockets it inherits, sizing, the IO model."""
    http_socket, uwsgi_socket = sockets
    options = ["--ini", str(HERE / "uwsgi.ini"), "--module", args.app,
               "--http-socket", f"fd://{http_socket.fileno()}", "--socket", f"fd://{uwsgi_socket.fileno()}",
               "--processes", str(args.workers or settings.workers),
               "--chdir", str(topology.ROOT)]
    if settings.worker_class == "gevent":
        # Async cores per worker (gunicorn's worker_connections); the app patches the standard library itself.
        options += ["--gevent", str(settings.worker_connections)]
    elif settings.worker_class == "gthread":
        options += ["--threads", str(settings.threads)]
    # A client silent this long (a stalled head or body) is cut off: the stack's client timeout, as gunicorn's
    # keepalive and the other services'. After --gevent, which raises the timeout to 30 s when it is lower.
    options += ["--socket-timeout", str(http.client_timeout_s())]
    if args.pid:
        options += ["--pidfile", args.pid]
    if fifo := master_fifo(environ):
        options += ["--master-fifo", fifo]
    return [*options, *args.extra]


def listening(bind: str) -> socket.socket:
    host, port = bind.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), int(port)))
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1  # noqa: N806  (linux/prctl.h)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_uwsgi(args: argparse.Namespace, settings: WebServerSettings) -> int:
    """uWSGI as this process's child, on listening sockets this process opened and keeps.

    On a graceful stop uWSGI 2.0 keeps its listening sockets open until its last worker is done: connections
    that arrive meanwhile wait in the backlog and are reset when it exits, a lost request even for a POST
    nginx would never resend. gunicorn and the asyncio services close theirs at once, so a stopping instance
    refuses new connections and nginx tries the next instance. Holding the sockets here does the same for
    uWSGI: on SIGTERM or SIGINT they are shut (new connections refused, at once, in every process that shares
    them), then uWSGI gets the signal and finishes its requests."""
    sockets = (listening(args.bind), listening(uwsgi_bind(args)))
    # In a process group of its own: supervisor and Docker signal this process's whole group, and a uWSGI worker
    # takes SIGTERM as "stop now", not "finish first". Should this process die, the kernel kills uWSGI's master
    # (PR_SET_PDEATHSIG) and the master's death its workers (uwsgi.ini: no-orphans).
    child = subprocess.Popen([sys.executable, "-c", "import sys, pyuwsgi; pyuwsgi.run(*sys.argv[1:])",
                              *uwsgi_args(args, settings, os.environ, sockets)],
                             pass_fds=[sock.fileno() for sock in sockets], start_new_session=True,
                             preexec_fn=_die_with_parent)

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)  # a listening socket stops listening: connect() is refused
        stopping = True
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        try:
            return child.wait(timeout=UWSGI_RESIGNAL_S)  # with a timeout: a signal's EINTR retries wait() as is
        except subprocess.TimeoutExpired:
            if not stopping:
                continue
            # uWSGI's master asks each worker to stop (SIGHUP) once, then waits for it with no time limit. A
            # gevent worker still importing the app (lazy-apps) when that signal came starts its loop anyway and
            # serves on forever. Asked again, with its loop's handler in place, it finishes and exits; a worker
            # already stopping just goes on waiting for its requests.
            for worker in children_of(child.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker, signal.SIGHUP)


def children_of(pid: int) -> list[int]:
    """The pids of a process's children (Linux's /proc), [] once it is gone."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def granian_argv(args: argparse.Namespace, settings: WebServerSettings) -> list[str]:
    host, port = args.bind.rsplit(":", 1)
    threads = settings.threads if settings.worker_class == "gthread" else 1
    argv = [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", host, "--port", port,
            "--workers", str(args.workers or settings.workers), "--blocking-threads", str(threads),
            "--http", "1", "--no-ws", "--backlog", str(LISTEN_BACKLOG),
            # A request head must arrive within the stack's client timeout (milliseconds here; granian allows
            # at most 60 s, below the stack's default 75 s).
            "--http1-header-read-timeout", str(min(int(http.client_timeout_s() * 1000), GRANIAN_MAX_HEAD_MS)),
            # Seconds workers get to finish in-flight requests on SIGTERM (gunicorn's graceful_timeout).
            "--workers-kill-timeout", "20",
            # A worker that dies (the OOM killer) is replaced, as gunicorn's and uWSGI's masters do; granian's
            # default is to shut the whole server down.
            "--respawn-failed-workers",
            # No --backpressure: granian 2.8 holds its permit for a connection's whole life, not per request, so
            # "one per thread" let one idle keep-alive connection (nginx's pool) stall the worker for everyone
            # else (tests/e2e/test_alt_servers.py). Its default (backlog / workers) queues requests in Rust.
            "--log-level", "warning"]
    if args.pid:
        argv += ["--pid-file", args.pid]
    return [*argv, *args.extra, args.app]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bind", default=os.environ.get("WEB_BIND") or topology.service("web").default_bind(),
                        help="HOST:PORT for HTTP")
    parser.add_argument("--uwsgi-bind", help="uWSGI only: HOST:PORT for the uwsgi protocol")
    parser.add_argument("--workers", type=int, help="processes (default: WEB_WORKERS or the machine's share)")
    parser.add_argument("--pid", help="write the master's pid here")
    parser.add_argument("--app", default=APP, help=f"MODULE:CALLABLE, the WSGI app (default {APP}; make compare "
                                                    "runs its bare Flask app under each server this way)")
    parser.add_argument("extra", nargs="*", help="more options for the server itself, after --")
    args = parser.parse_args(argv)
    settings = WebServerSettings.from_env()
    os.environ["WEB_SERVER"] = settings.server.name  # the app and `make ps` read which server runs it
    os.environ["WEB_WORKER_CLASS"] = settings.worker_class
    environment = dict(os.environ)
    if settings.server.program == "gunicorn":
        command = gunicorn_argv(args, settings)
    elif settings.server.program == "granian":
        command = granian_argv(args, settings)
        environment = granian_environment(environment)
    else:
        sys.exit(run_uwsgi(args, settings))
    os.execve(command[0], command, environment)


def granian_environment(environment: dict[str, str]) -> dict[str, str]:
    """The environment without the variables a WSGI app reads as request headers: granian copies its process
    environment into every request's environ, where HTTP_X_FORWARDED_PROTO=https would arrive as a header
    (services/web/middleware.py: ProcessEnvironmentFilter drops the rest)."""
    kept = {name: value for name, value in environment.items() if not header_shaped(name)}
    if dropped := sorted(environment.keys() - kept.keys()):
        print(f"serve: not passed to granian, whose requests would carry them as headers: {', '.join(dropped)}",
              file=sys.stderr)
    return kept


if __name__ == "__main__":
    main()
