"""The same apps under the other servers the comparisons use: catalog under `gunicorn -k tornado`, httpbin under
`aiohttp.GunicornWebWorker`, web under every gunicorn worker class the config can select."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time

import pytest
import requests

from stack.topology import ROOT, WEB_SERVERS, service
from tests.conftest import free_port

pytestmark = pytest.mark.e2e
WEB = service("web")


def serve(command: list[str], port: int, prefix: str, env: dict[str, str] | None = None):
    data = tempfile.mkdtemp(prefix="stack-data-")  # the services' SQLite files, away from the checkout
    proc = subprocess.Popen(command, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "STACK_DATA": data, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}{prefix}"
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                requests.get(url + "healthz", timeout=5)
                return proc, url
            except (requests.ConnectionError, requests.Timeout):  # not listening yet; or workers still booting
                time.sleep(0.2)                                    # (a busy machine: 8 sync workers on 2 cores)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)  # whatever went wrong, leave no server (nor its workers) behind
        raise
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"{command} did not start:\n{proc.communicate()[0]}")


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the server and its workers: none outlives a failed test
        pytest.fail(f"still running 30 s after SIGTERM:\n{proc.communicate()[0][-3000:]}")
    assert proc.returncode == 0, out  # a graceful exit on SIGTERM
    return out


def check_app(url: str, service: str) -> requests.Response:
    assert requests.get(url + "json", timeout=5).json() == {"message": "Hello, World!"}
    assert requests.get(url + "healthz", timeout=5).json()["service"] == service
    response = requests.get(url + "io?ms=x", headers={"X-Request-ID": "alt-1"}, timeout=5)
    assert response.status_code == 400 and response.headers["X-Request-ID"] == "alt-1"
    return requests.get(url + "plaintext", timeout=5)


def test_catalog_under_gunicorn_tornado_worker():
    # One worker: gunicorn 27's tornado worker sets alive=True when its loop starts, so a SIGTERM that lands
    # while a second worker is still booting is forgotten and that worker only dies at graceful_timeout.
    # With one worker, the health check proves its loop runs before we stop it.
    port = free_port()
    command = service("catalog").command(f"127.0.0.1:{port}", "--workers", "1", server="gunicorn-tornado")
    proc, url = serve(command, port, service("catalog").prefix)
    try:
        response = check_app(url, "catalog")
        assert "Gunicorn" in response.headers["Server"]  # gunicorn's tornado worker tags the Server header
    finally:
        stop(proc)


def test_httpbin_under_aiohttp_gunicorn_web_worker():
    port = free_port()
    command = service("httpbin").command(f"127.0.0.1:{port}", "--workers", "2", server="gunicorn-aiohttp")
    proc, url = serve(command, port, service("httpbin").prefix)
    try:
        assert "aiohttp" in check_app(url, "httpbin").headers["Server"]
    finally:
        stop(proc)


@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent"])
def test_web_under_each_worker_class_from_the_environment(worker_class):
    port = free_port()
    # Threads only for gthread: gunicorn quietly turns a sync worker with threads > 1 into gthread.
    threads = "4" if worker_class == "gthread" else "1"
    env = {"WEB_WORKER_CLASS": worker_class, "WEB_WORKERS": "2", "WEB_THREADS": threads}
    proc, url = serve(WEB.command(f"127.0.0.1:{port}"), port, WEB.prefix, env)
    try:
        assert check_app(url, "web").headers["Server"] == "gunicorn"
    finally:
        log = stop(proc)
    assert f"Using worker: {worker_class}" in log
    assert "rid=alt-1" in log  # the access log carries the request id
    assert "MonkeyPatchWarning" not in log


OTHER_WEB_SERVERS = [(name, worker_class) for name, server in WEB_SERVERS.items() if server.program != "gunicorn"
                     for worker_class in server.worker_classes]


@pytest.mark.parametrize(("server", "worker_class"), OTHER_WEB_SERVERS)
def test_web_under_each_other_server_and_io_model(server, worker_class):
    """uWSGI and granian run web the way gunicorn does: the app's answers, a bad query's 400 with the request
    id, the stack's access line in the log, a clean exit on SIGTERM; and variables of the server's own
    environment never reach the app as request headers (granian copies its environment into every environ)."""
    port = free_port()
    env = {"WEB_SERVER": server, "WEB_WORKER_CLASS": worker_class, "WEB_WORKERS": "2", "WEB_THREADS": "2",
           "HTTP_X_FORWARDED_PROTO": "https", "HTTP_X_REQUEST_ID": "from-the-environment"}
    options = ["--uwsgi-bind", f"127.0.0.1:{free_port()}"] if WEB_SERVERS[server].program == "uwsgi" else []
    proc, url = serve(WEB.command(f"127.0.0.1:{port}", *options), port, WEB.prefix, env)
    try:
        check_app(url, "web")
        response = requests.get(url + "conn", timeout=5)
        info = response.json()
        assert response.headers["X-Request-ID"] != "from-the-environment"
        assert "X-Forwarded-Proto" not in info["forwarded"], info
        # uWSGI: one request per connection; granian does not tell the app which connection a request came on.
        assert info["requests_on_this_connection"] == (1 if WEB_SERVERS[server].program == "uwsgi" else None)
        sent = requests.get(url + "conn", headers={"X-Forwarded-Proto": "https"}, timeout=5).json()
        assert sent["forwarded"]["X-Forwarded-Proto"] == "https"  # a client's own header still arrives
    finally:
        log = stop(proc)
    # The stack's access line, as gunicorn writes it (services/common/accesslog.py).
    assert re.search(r'"GET /web/io\?ms=x HTTP/1.1" 400 \d+ rid=alt-1 rt=', log), log
    assert "Traceback" not in log


@pytest.mark.parametrize("worker_class", WEB_SERVERS["uwsgi"].worker_classes)
def test_uwsgi_stopped_while_its_workers_boot_exits_promptly(worker_class):
    """uWSGI's master asks each worker once to stop and then waits for it without a limit; a gevent worker still
    importing the app then served on forever (services/web/serve.py asks again). Stopped as soon as the first
    worker answers, three times: each exits cleanly within the graceful timeout's fraction."""
    for _ in range(3):
        port = free_port()
        env = {"WEB_SERVER": "uwsgi", "WEB_WORKER_CLASS": worker_class, "WEB_WORKERS": "2"}
        proc, _url = serve(WEB.command(f"127.0.0.1:{port}", "--uwsgi-bind", f"127.0.0.1:{free_port()}"),
                           port, WEB.prefix, env)
        started = time.monotonic()
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"uWSGI still running 15 s after SIGTERM:\n{proc.communicate()[0][-3000:]}")
        assert proc.returncode == 0, out
        assert time.monotonic() - started < 15


def test_many_sync_workers_boot_together_on_a_fresh_data_directory():
    """Eight workers creating the schema at once once made one exit with "database is locked" and gunicorn's
    master shut down ("Worker failed to boot"). Three fresh boots; every worker must come up and stay."""
    import psutil

    for _ in range(3):
        port = free_port()
        command = WEB.command(f"127.0.0.1:{port}", "--workers", "8")  # gunicorn_conf.py: no control socket
        proc, url = serve(command, port, WEB.prefix, {"WEB_WORKER_CLASS": "sync", "WEB_WORKERS": "8"})
        deadline = time.monotonic() + 20
        while len(psutil.Process(proc.pid).children()) < 8 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # a worker that fails to boot exits within this, and its master with it
        assert proc.poll() is None and len(psutil.Process(proc.pid).children()) == 8
        assert requests.get(url + "healthz", timeout=5).status_code == 200
        stop(proc)
