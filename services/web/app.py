"""The Flask application factory, the benchmark endpoints, and the route table of them all.

Every route lives under PREFIX so the app answers identically behind nginx (`/web/...`) and on its own port.
web holds accounts (accounts.py: server-side sessions in SQLite, a random id in the cookie), a cart (cart.py) and
orders (orders_views.py; priced and reserved in catalog over HTTP, concurrently with gevent, by orders.py).
"""

from __future__ import annotations

import functools
import os
import socket
import time
import weakref
from collections.abc import Callable

import gevent
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from services.common import http, metrics, semantics, timing
from services.web import accounts, cart, orders_views, upstream
from services.web.accounts import WWW_AUTHENTICATE, refuse_cross_site
from services.web.openapi import OPENAPI
from services.web.store import SERVICE, Store
from services.web.views import PREFIX, as_json, read_body, read_body_within, settings
from stack import topology
from stack.settings import WebSettings

CLIENT_TIMEOUT_S = http.client_timeout_s()
# Requests served per client socket: gunicorn's async and threaded workers keep the socket across keep-alive
# requests (the sync worker closes it after each response, so it always reports 1).
_requests_per_socket: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------- the benchmark endpoints

def healthz() -> Response:
    return as_json(http.health(SERVICE))


def plaintext() -> Response:
    return Response(http.HELLO, content_type=http.TEXT_PLAIN)


def hello_json() -> Response:
    return as_json(http.hello_json())


def io_wait() -> Response:
    ms = http.io_ms(request.args.get("ms"))
    time.sleep(ms / 1000)  # cooperative under gevent: the worker's monkey-patching made time.sleep yield
    return as_json(http.io_body(ms))


def cpu() -> Response:
    return as_json(http.cpu_body(http.cpu_n(request.args.get("n"))))


def stream(n: str) -> Response:
    """n JSON lines from a generator: no Content-Length, so gunicorn sends each line as one chunk."""
    count = http.stream_n(n)
    return Response((http.stream_line(SERVICE, i) for i in range(count)), content_type=http.JSON)


def server_program() -> str:
    """The program serving this app (gunicorn, uwsgi, granian): how much it can tell about the connection."""
    return topology.WEB_SERVERS[settings().server].program


def _count_request_on_connection(environ: dict) -> None:
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        _requests_per_socket[sock] = _requests_per_socket.get(sock, 0) + 1


def _tcp_peer(environ: dict) -> tuple[str, int] | None:
    """The other end of this TCP connection. Under uWSGI that is read off the connection's descriptor: behind
    uwsgi_pass, REMOTE_ADDR is the client nginx names in the packet, not nginx's connection."""
    if server_program() == "uwsgi":
        import uwsgi  # only inside uWSGI's processes

        with socket.socket(fileno=os.dup(uwsgi.connection_fd())) as sock:
            address, port = sock.getpeername()[:2]
        return address, port
    port = environ.get("REMOTE_PORT")
    return (environ.get("REMOTE_ADDR", ""), int(port)) if port else None


def conn() -> Response:
    environ = request.environ
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        count: int | None = _requests_per_socket.get(sock, 1)
    elif server_program() == "uwsgi":
        count = 1  # uWSGI serves one request per connection
    else:  # granian hands the app neither the connection nor the peer's port: it cannot be told
        count = None
    return as_json(http.connection_info(SERVICE, _tcp_peer(environ), count, environ.get("SERVER_PROTOCOL", ""),
                                      request.headers))


def fanout() -> Response:
    """The seed's gevent example, fixed and measured: N greenlets each fetch httpbin's /delay/D with requests;
    all N wait at once, so the total is about D seconds, not N x D."""
    n = http.int_param(request.args.get("n"), "n", 10, 1, http.FANOUT_MAX)
    delay = http.int_param(request.args.get("delay"), "delay", 1, 0, 3)
    path = f"{topology.service('httpbin').route_prefix}/delay/{delay}"
    request_id = g.request_id  # greenlets do not inherit Flask's request context

    def fetch(i: int) -> dict:
        started = time.perf_counter()
        response = upstream.request("GET", upstream.HTTPBIN_URL, path, request_id)
        return http.fetch_record(i, response.status_code, len(response.content), started)

    started = time.perf_counter()
    jobs = [gevent.spawn(fetch, i) for i in range(n)]
    gevent.joinall(jobs)
    for job in jobs:
        if not job.successful():
            raise job.exception
    return as_json(http.fanout_report("gevent greenlets + requests (monkey-patched sockets)",
                                    upstream.HTTPBIN_URL + path, started, [job.value for job in jobs]))


def openapi() -> Response:
    return as_json(OPENAPI)


# (path under PREFIX, endpoint name, view, methods). GET routes answer HEAD and OPTIONS too (Flask adds them).
ROUTES: list[tuple[str, str, Callable[..., Response], list[str]]] = [
    ("/healthz", "healthz", healthz, ["GET"]),
    ("/plaintext", "plaintext", plaintext, ["GET"]),
    ("/json", "json", hello_json, ["GET"]),
    ("/io", "io", io_wait, ["GET"]),
    ("/cpu", "cpu", cpu, ["GET"]),
    ("/conn", "conn", conn, ["GET"]),
    ("/stream/<n>", "stream", stream, ["GET"]),
    ("/fanout", "fanout", fanout, ["GET"]),
    ("/openapi.json", "openapi", openapi, ["GET"]),
    *accounts.ROUTES,
    *orders_views.ROUTES,
    *cart.ROUTES,
]


# Endpoints whose representations exist only as JSON: an Accept that excludes it gets 406.
JSON_RESOURCES = {"me", "place_order", "list_orders", "get_order", "cart", "cart_item", "signup", "login"}


def _problem_response(problem: http.Problem) -> Response:
    rid = g.get("request_id") or http.request_id(None)
    response = as_json(problem.document(rid, request.path), problem.status, http.PROBLEM_JSON)
    response.headers.update(problem.headers)
    if problem.status == 401:
        response.headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    return response


@functools.cache
def route_label(rule: str) -> str:
    return metrics.route_template(rule)


def serve_metrics() -> Response:
    """Prometheus's scrape (services/common/metrics.py): every worker's counts, on the service's own port only."""
    return Response(metrics.exposition(), content_type=metrics.CONTENT_TYPE)


def create_app(config: dict | None = None, settings: WebSettings | None = None) -> Flask:
    """The app; `settings` default to what the environment says (WebSettings.from_env)."""
    app = Flask(__name__)
    app.extensions["settings"] = settings = settings or WebSettings.from_env()
    app.config.from_mapping({"MAX_CONTENT_LENGTH": semantics.MAX_BODY_BYTES, "DATABASE": None, **(config or {})})
    app.extensions["store"] = Store(app.config["DATABASE"], session_ttl_s=settings.session_ttl_s)
    for path, endpoint, view, methods in ROUTES:
        app.add_url_rule(PREFIX + path, endpoint, view, methods=methods)
    app.add_url_rule(metrics.PATH, "metrics", serve_metrics, methods=["GET"])  # outside the prefix: never proxied
    metrics.describe("web")

    @app.before_request
    def assign_request_id_and_negotiate() -> None:  # one hook, not two: each costs a call per request
        g.started = time.perf_counter()
        metrics.IN_FLIGHT_COUNT.began()
        timing.start_request()
        g.request_id = http.request_id(request.headers.get(http.REQUEST_ID_HEADER))
        _count_request_on_connection(request.environ)
        sock = request.environ.get("gunicorn.socket")
        if request.endpoint in JSON_RESOURCES:
            semantics.require_acceptable(request.headers.get("Accept"))
        if not semantics.METHODS.get(request.method, semantics.METHODS["POST"]).safe:
            refuse_cross_site(request.headers)
        if request.content_length or "HTTP_TRANSFER_ENCODING" in request.environ:
            if sock is not None:
                read_body_within(sock, CLIENT_TIMEOUT_S)
            else:  # uWSGI and granian bound a body's reads themselves (socket-timeout; granian reads it first)
                read_body()

    @app.after_request
    def echo_request_id_and_timing(response: Response) -> Response:
        # gunicorn's access log reads it back from the response (access_logger.py).
        response.headers[http.REQUEST_ID_HEADER] = g.get("request_id") or http.request_id(None)
        started = g.get("started")
        if started is not None:  # before_request ran (it always does, unless Flask failed before it)
            seconds = time.perf_counter() - started
            response.headers[timing.HEADER] = timing.server_timing(seconds)
            metrics.IN_FLIGHT_COUNT.ended()
            rule = request.url_rule
            metrics.observe(route_label(rule.rule) if rule is not None else None, request.method,
                            response.status_code, seconds)
        return response

    @app.errorhandler(http.Problem)
    def on_problem(problem: http.Problem) -> Response:
        return _problem_response(problem)

    @app.errorhandler(upstream.UpstreamError)
    def on_upstream_error(error: upstream.UpstreamError) -> Response:
        return _problem_response(http.Problem(502, "Bad Gateway", str(error)))

    @app.errorhandler(HTTPException)
    def on_http_error(error: HTTPException) -> Response:
        status = error.code or 500
        response = _problem_response(http.Problem(status, http.status_title(status), error.description or ""))
        if error.code == 405 and error.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = semantics.allow_header(list(error.valid_methods))  # type: ignore[attr-defined]
        return response

    return app
