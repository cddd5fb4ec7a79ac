"""The Flask application factory and its route table.

Every route lives under PREFIX so the app answers identically behind nginx (`/web/...`) and on its own port.
web holds accounts (server-side sessions in SQLite, a random id in the cookie) and orders (priced and reserved
in catalog over HTTP, concurrently with gevent).
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import time
import weakref
from collections.abc import Callable, Mapping

import gevent
from flask import Flask, Response, current_app, g, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected, HTTPException

from deploy import topology
from services.common import http, metrics, proxy, semantics, timing
from services.common.idempotency import HEADER as IDEMPOTENCY_KEY
from services.common.idempotency import Record, StoredResponse, fingerprint, run_once
from services.web import orders, upstream
from services.web.openapi import OPENAPI
from services.web.store import SERVICE, SESSION_TTL, Store

PREFIX = topology.service("web").route_prefix
COOKIE = "sid"
CLIENT_TIMEOUT_S = http.client_timeout_s()
# The session cookie is Secure whenever the client reached nginx over TLS (client_scheme); 1 makes it Secure on
# plain HTTP too, for a deployment where TLS ends in front of nginx.
COOKIE_SECURE = os.environ.get("WEB_COOKIE_SECURE", "0") == "1"
WWW_AUTHENTICATE = f'Cookie realm="web", form-action="{PREFIX}/login", cookie-name="{COOKIE}"'
# Requests served per client socket: gunicorn's async and threaded workers keep the socket across keep-alive
# requests (the sync worker closes it after each response, so it always reports 1).
_requests_per_socket: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
SERVER_PROGRAM = topology.WEB_SERVERS[os.environ.get("WEB_SERVER") or topology.Site.web_server].program


def _json(body: object, status: int = 200, content_type: str = http.JSON) -> Response:
    return Response(http.to_json(body), status=status, content_type=content_type)


def _send(stored: StoredResponse, replayed: bool = False) -> Response:
    response = Response(stored.body or None, status=stored.status, headers=stored.headers)
    if stored.status in (204, 304):
        del response.headers["Content-Type"]  # no content, so no content type
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def store() -> Store:
    return current_app.extensions["store"]


def read_body_within(sock: socket.socket, seconds: float) -> None:
    """Read the request body now, with each wait for more of it bounded: gunicorn bounds a request head by its
    keep-alive timeout but reads a body without any, so a client sending a byte now and then would hold its
    worker (sync, gthread) or greenlet (gevent) forever. A stalled body gets a 408, a body gunicorn cannot
    parse (bad chunk framing) or one cut short a 400, and the connection ends after the answer."""
    sock.settimeout(seconds)
    try:
        request.get_data(cache=True)
    except ClientDisconnected as error:  # Werkzeug's name for any failed read of the body
        if isinstance(error.__context__, TimeoutError):
            problem = http.Problem(408, "Request Timeout", f"no byte of the body arrived for {seconds:g} s")
        else:
            problem = http.Problem(400, "Invalid body", "the body ended before its announced length")
    except ParseException as error:  # gunicorn's chunked decoding
        problem = http.Problem(400, "Invalid body", str(error))
    else:
        return
    finally:
        sock.settimeout(None)
    # gunicorn keeps HTTP/1.1 connections open and drops an app's Connection header; with our read side shut,
    # its next read (of the body's rest) sees the end, and it closes the connection after this answer. A client
    # that already reset the connection leaves nothing to shut.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    raise problem


def read_body() -> None:
    """Read the request body now, as read_body_within does under gunicorn: a read that fails (uWSGI's
    socket-timeout, a client that went away, a body shorter than announced) is the client's 408 or 400."""
    try:
        request.get_data(cache=True)
    except (ClientDisconnected, OSError) as error:
        # Werkzeug wraps a failed read in ClientDisconnected; under uWSGI the cause is an OSError, "error waiting
        # for wsgi.input data", once its socket-timeout passed with no byte of the body.
        cause = error if isinstance(error, OSError) else error.__context__
        if isinstance(cause, OSError) and not isinstance(cause, ConnectionError):
            raise http.Problem(408, "Request Timeout", f"the body did not arrive: {cause}"[:200]) from None
        raise http.Problem(400, "Invalid body", "the body ended before its announced length") from None


def body() -> object:
    return semantics.json_body(request.content_type, request.get_data(cache=True),
                               content_encoding=request.headers.get("Content-Encoding"))


# ---------------------------------------------------------------- the benchmark endpoints

def healthz() -> Response:
    return _json(http.health(SERVICE))


def plaintext() -> Response:
    return Response(http.HELLO, content_type=http.TEXT_PLAIN)


def hello_json() -> Response:
    return _json(http.hello_json())


def io_wait() -> Response:
    ms = http.io_ms(request.args.get("ms"))
    time.sleep(ms / 1000)  # cooperative under gevent: the worker's monkey-patching made time.sleep yield
    return _json(http.io_body(ms))


def cpu() -> Response:
    return _json(http.cpu_body(http.cpu_n(request.args.get("n"))))


def stream(n: str) -> Response:
    """n JSON lines from a generator: no Content-Length, so gunicorn sends each line as one chunk."""
    count = http.stream_n(n)
    return Response((http.stream_line(SERVICE, i) for i in range(count)), content_type=http.JSON)


def _count_request_on_connection(environ: dict) -> None:
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        _requests_per_socket[sock] = _requests_per_socket.get(sock, 0) + 1


def _tcp_peer(environ: dict) -> tuple[str, int] | None:
    """The other end of this TCP connection. Under uWSGI that is read off the connection's descriptor: behind
    uwsgi_pass, REMOTE_ADDR is the client nginx names in the packet, not nginx's connection."""
    if SERVER_PROGRAM == "uwsgi":
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
    elif SERVER_PROGRAM == "uwsgi":
        count = 1  # uWSGI serves one request per connection
    else:  # granian hands the app neither the connection nor the peer's port: it cannot be told
        count = None
    return _json(http.connection_info(SERVICE, _tcp_peer(environ), count, environ.get("SERVER_PROTOCOL", ""),
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
    return _json(http.fanout_report("gevent greenlets + requests (monkey-patched sockets)",
                                    upstream.HTTPBIN_URL + path, started, [job.value for job in jobs]))


# ---------------------------------------------------------------- accounts and sessions

def _credentials() -> tuple[str, str]:
    document = body()
    if not isinstance(document, dict) or set(document) != {"email", "password"}:
        raise http.Problem(422, "Invalid credentials document", 'send {"email": ..., "password": ...}')
    email, password = document["email"], document["password"]
    if not isinstance(email, str) or "@" not in email or not 3 <= len(email) <= 254:
        raise http.Problem(422, "Invalid email", "email must look like name@domain")
    if not isinstance(password, str) or not 8 <= len(password) <= 128:
        raise http.Problem(422, "Invalid password", "password must be 8 to 128 characters")
    return email.strip(), password


def client_scheme() -> str:
    """How the client reached the stack: nginx's X-Forwarded-Proto ("https" on its TLS port), believed only on a
    connection from nginx; otherwise this connection's own scheme."""
    if proxy.nginx.trusts(request.remote_addr):
        return "https" if request.headers.get("X-Forwarded-Proto", "http").lower() == "https" else "http"
    return request.scheme


def _cookie_secure() -> bool:
    """Secure (RFC 6265 §4.1.2.5: sent back over TLS only) whenever the client came over TLS."""
    return COOKIE_SECURE or client_scheme() == "https"


def refuse_cross_site(headers: Mapping[str, str]) -> None:
    """A browser's unsafe request (POST, PUT, PATCH, DELETE) from another site is refused, cookie or not: it
    would act with the user's session (CSRF), or log them into someone else's account. Browsers say where a
    request comes from (Sec-Fetch-Site, Origin); clients that send neither (curl, scripts) are not browsers
    carrying a victim's cookie, and pass. SameSite=Lax on the session cookie is the first line; this the second."""
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise http.Problem(403, "Cross-site request refused", f"Sec-Fetch-Site: {site[:40]}")
    origin = headers.get("Origin")
    if origin is not None:
        behind_nginx = proxy.nginx.trusts(request.remote_addr)
        host = (headers.get("X-Forwarded-Host") if behind_nginx else None) or headers.get("Host")
        own = f"{client_scheme()}://{host}"
        if origin.lower() != own.lower():
            raise http.Problem(403, "Cross-site request refused", f"Origin {origin[:80]} is not {own[:80]}")


def _unauthorized(detail: str) -> http.Problem:
    return http.Problem(401, "Unauthorized", detail)


def current_user() -> dict:
    user = store().session_user(request.cookies.get(COOKIE))
    if user is None:
        raise _unauthorized("log in first: POST /web/login sets the session cookie" if COOKIE not in request.cookies
                            else "the session expired or was closed; log in again")
    return user


def signup() -> Response:
    user = store().signup(*_credentials())
    response = _json(user, 201)
    response.headers["Location"] = f"{PREFIX}/me"
    return response


def login() -> Response:
    email, password = _credentials()
    user = store().authenticate(email, password)
    if user is None:
        raise _unauthorized("wrong email or password")
    token = store().open_session(user["id"], replacing=request.cookies.get(COOKIE))
    response = _json(user)
    # The cookie carries only a random id; the session itself is a server-side row.
    response.set_cookie(COOKIE, token, max_age=int(SESSION_TTL), path=PREFIX, httponly=True, samesite="Lax",
                        secure=_cookie_secure())
    return response


def logout() -> Response:
    store().close_session(request.cookies.get(COOKIE))
    response = Response(status=204)
    response.delete_cookie(COOKIE, path=PREFIX, httponly=True, samesite="Lax", secure=_cookie_secure())
    return response


def me() -> Response:
    return _json(current_user())


# ---------------------------------------------------------------- orders

def order_response(order: dict, status: int = 200) -> StoredResponse:
    headers = {"Content-Type": http.JSON, "ETag": semantics.strong_etag(order)}
    if status == 201:
        headers["Location"] = f"{PREFIX}/orders/{order['id']}"
    return StoredResponse(status, headers, http.to_json(order).encode())


def place_order() -> Response:
    user = current_user()
    raw = request.get_data(cache=True)

    async def act(record: Record) -> StoredResponse:
        lines = orders.validate_lines(body())
        priced = orders.reserve(lines, g.request_id)  # catalog over HTTP: cooperative under gevent
        created: list[StoredResponse] = []

        async def then(order: dict) -> None:
            created.append(order_response(order, 201))
            await record(created[0])

        store().create_order(user["id"], priced, then=then)
        return created[0]

    stored, replayed = store().run(run_once(store().keys, request.headers.get(IDEMPOTENCY_KEY),
                                            f"user:{user['id']} POST {PREFIX}/orders",
                                            fingerprint("POST", f"{PREFIX}/orders", raw), act))
    return _send(stored, replayed)


def list_orders() -> Response:
    user = current_user()
    limit = http.int_param(request.args.get("limit"), "limit", 20, 1, 100)
    after = http.int_param(request.args.get("cursor"), "cursor", 0, 0, http.MAX_ID)
    page, more = store().orders_page(user["id"], limit, after)
    next_cursor = str(page[-1]["id"]) if more else None
    response = _json({"orders": page, "next_cursor": next_cursor})
    response.headers["Link"] = semantics.page_link(request.path, limit, next_cursor)
    return response


def get_order(order_id: int) -> Response:
    user = current_user()
    order = store().order(order_id)
    if order is None:
        raise http.Problem(404, "Not Found", f"no order {order_id}")
    if order["user_id"] != user["id"]:
        raise http.Problem(403, "Forbidden", "this order belongs to another account")
    stored = order_response(order)
    if semantics.if_none_match_hit(request.headers.get("If-None-Match"), stored.headers["ETag"]):
        return Response(status=304, headers={"ETag": stored.headers["ETag"]})
    return _send(stored)


# ---------------------------------------------------------------- the cart: PUT a quantity, idempotently

def cart_line(document: object) -> dict:
    if not isinstance(document, dict) or set(document) != {"quantity"}:
        raise http.Problem(422, "Invalid cart line", 'send {"quantity": n}')
    quantity = document["quantity"]
    if not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= orders.MAX_QUANTITY:
        raise http.Problem(422, "Invalid cart line", f"quantity must be an integer from 1 to {orders.MAX_QUANTITY}")
    return document


def cart() -> Response:
    user = current_user()
    return _json({"items": store().run(store().documents.list(f"cart:{user['id']}"))})


def cart_item(item_id: int) -> Response:
    user = current_user()
    return _send(store().run(store().documents.handle(request.method, f"cart:{user['id']}", str(item_id),
                                                      request.path, request.headers, request.get_data(cache=True),
                                                      cart_line)))


def openapi() -> Response:
    return _json(OPENAPI)


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
    ("/signup", "signup", signup, ["POST"]),
    ("/login", "login", login, ["POST"]),
    ("/logout", "logout", logout, ["POST"]),
    ("/me", "me", me, ["GET"]),
    ("/orders", "place_order", place_order, ["POST"]),
    ("/orders", "list_orders", list_orders, ["GET"]),
    (f"/orders/<int(min=1, max={http.MAX_ID}):order_id>", "get_order", get_order, ["GET"]),  # else 404
    ("/cart", "cart", cart, ["GET"]),
    (f"/cart/items/<int(min=1, max={http.MAX_ID}):item_id>", "cart_item", cart_item, ["GET", "PUT", "PATCH", "DELETE"]),
]


# Endpoints whose representations exist only as JSON: an Accept that excludes it gets 406.
JSON_RESOURCES = {"me", "place_order", "list_orders", "get_order", "cart", "cart_item", "signup", "login"}


def _problem_response(problem: http.Problem) -> Response:
    rid = g.get("request_id") or http.request_id(None)
    response = _json(problem.document(rid, request.path), problem.status, http.PROBLEM_JSON)
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


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping({"MAX_CONTENT_LENGTH": semantics.MAX_BODY_BYTES, "DATABASE": None, **(config or {})})
    app.extensions["store"] = Store(app.config["DATABASE"])
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
