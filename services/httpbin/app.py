"""The aiohttp application factory and its route table (paths under PREFIX, as behind nginx)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import html
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web, web_protocol
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http import HttpVersion11
from multidict import istr

from services.common import accesslog, db, drain, http, metrics, semantics, timing
from services.common.documents import Documents
from services.common.idempotency import StoredResponse
from services.httpbin import digest, endpoints, live
from services.httpbin.endpoints import SETTINGS
from services.httpbin.openapi import OPENAPI
from stack.settings import HttpbinSettings

SERVICE = "httpbin"
PREFIX = endpoints.PREFIX
REQUEST_ID = endpoints.REQUEST_ID
ALLOW = web.RequestKey("allow", str)  # the Allow value unrouted() worked out, for its 405
UNROUTED = "unrouted"  # the name of the last route, which takes what no other route did
# When this request's handler began: the service's own time in Server-Timing ends when the headers go out.
REQUEST_STARTED: contextvars.ContextVar[float] = contextvars.ContextVar("request_started")


# Header names as multidict's istr: aiohttp's headers look such a key up without case-folding it first.
REQUEST_ID_HEADER = istr(http.REQUEST_ID_HEADER)
SERVER_TIMING = istr(timing.HEADER)


class AccessLogger(AbstractAccessLogger):
    """One line per request with the request id and time, written directly (services/common/accesslog.py)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        version = request.version  # the parser's own HttpVersion11 for nearly every request
        # The peer straight from the transport: request.remote computes the same through two cached properties.
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        accesslog.write(  # raw_path: the request target as sent (nginx's $request has it too), no URL parsing
            peer[0] if isinstance(peer, tuple) else "-", request.method, request.raw_path,
            "HTTP/1.1" if version is HttpVersion11 else f"HTTP/{version.major}.{version.minor}",
            response.status, response.body_length, REQUEST_ID.get("-"), time,
        )

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: dict, status: int = 200, content_type: str = http.JSON) -> web.Response:
    return web.Response(
        text=http.to_json(body), status=status, content_type=content_type
    )


async def healthz(request: web.Request) -> web.Response:
    return _json(http.health(SERVICE))


async def plaintext(request: web.Request) -> web.Response:
    return web.Response(text=http.HELLO)  # text/plain; charset=utf-8 is the default


async def hello_json(request: web.Request) -> web.Response:
    return _json(http.hello_json())


async def io_wait(request: web.Request) -> web.Response:
    ms = http.io_ms(request.query.get("ms"))
    await asyncio.sleep(ms / 1000)  # yields to the event loop: other requests run meanwhile
    return _json(http.io_body(ms))


async def cpu(request: web.Request) -> web.Response:
    return _json(http.cpu_body(http.cpu_n(request.query.get("n"))))


async def conn(request: web.Request) -> web.Response:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    version = f"HTTP/{request.version.major}.{request.version.minor}"
    # aiohttp counts the requests it has parsed on each connection (pipelined ones already read count too);
    # counting them here instead would cost every request a lookup by connection.
    served = request.protocol._request_count
    return _json(http.connection_info(SERVICE, peer[:2] if peer else None, served, version, request.headers))


async def fanout(request: web.Request) -> web.Response:
    """The seed's asyncio example, fixed (gather, not "gether") and measured: N coroutines share one
    ClientSession and each fetch /httpbin/delay/D from this very server; they all wait at once."""
    n = http.int_param(request.query.get("n"), "n", 10, 1, http.FANOUT_MAX)
    delay = http.int_param(request.query.get("delay"), "delay", 1, 0, 3)
    host, port = request.transport.get_extra_info("sockname")[:2]
    url = f"http://{host}:{port}{PREFIX}/delay/{delay}"

    async def fetch(session: aiohttp.ClientSession, i: int) -> dict:
        started = time.perf_counter()
        async with session.get(url, headers={http.REQUEST_ID_HEADER: REQUEST_ID.get()}) as response:
            body = await response.read()
        return http.fetch_record(i, response.status, len(body), started)

    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        fetches = await asyncio.gather(*(fetch(session, i) for i in range(n)))
    return _json(http.fanout_report("asyncio coroutines + aiohttp.ClientSession (asyncio.gather)", url, started,
                                    list(fetches)))


# ---------------------------------------------------------------- bins: JSON documents to PUT and read back

DOCUMENTS = web.AppKey("documents", Documents)
BIN_NAME = r"[A-Za-z0-9._-]{1,64}"
# Anyone may store bins: they are bounded. A bin not changed for a week goes; at 10,000 bins a new one is a 507.


def bin_document(document: object) -> dict:
    if not isinstance(document, dict):
        raise http.Problem(422, "Invalid bin document", "a bin holds a JSON object")
    return document


def _send(stored: StoredResponse, replayed: bool = False) -> web.Response:
    response = web.Response(status=stored.status, headers=stored.headers, body=stored.body or None)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


async def bins(request: web.Request) -> web.Response:
    semantics.require_acceptable(endpoints.field(request, "Accept"))
    documents = request.app[DOCUMENTS]
    if request.method == "POST":
        # Bins are anonymous: the caller is the client's address (as nginx saw it), so its keys are its own.
        stored, replayed = await documents.create("bins", lambda key: f"{PREFIX}/bins/{key}", request.headers,
                                                  await request.read(), request.path, bin_document,
                                                  caller=endpoints.origin(request))
        return _send(stored, replayed)
    limit = http.int_param(request.query.get("limit"), "limit", 20, 1, 100)
    after = request.query.get("cursor", "")
    if after and not re.fullmatch(BIN_NAME, after):
        raise http.Problem(400, "Invalid query parameter", "cursor must be a bin name from a next_cursor")
    page, more = await documents.page("bins", limit, after)
    next_cursor = page[-1]["key"] if more else None
    response = _json({"bins": page, "next_cursor": next_cursor})
    response.headers["Link"] = semantics.page_link(request.path, limit, next_cursor)
    return response


async def one_bin(request: web.Request) -> web.Response:
    semantics.require_acceptable(endpoints.field(request, "Accept"))
    stored = await request.app[DOCUMENTS].handle(request.method, "bins", request.match_info["name"], request.path,
                                                 request.headers, await request.read(), bin_document)
    return _send(stored)


async def openapi(request: web.Request) -> web.Response:
    return _json(OPENAPI)


def _index_page() -> str:
    """Every endpoint, from the OpenAPI document (one list to keep): method, path (a link when it takes no
    parameters) and what it does."""
    rows = []
    for path, operations in OPENAPI["paths"].items():
        for method, operation in operations.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue  # path-level "parameters"
            shown = html.escape(path)
            if method == "get" and "{" not in path:
                shown = f'<a href="{html.escape(path)}">{shown}</a>'
            rows.append(f"<tr><td>{method.upper()}</td><td><code>{shown}</code></td>"
                        f"<td>{html.escape(operation.get('summary', ''))}</td></tr>")
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>httpbin</title></head><body>\n"
            "<h1>httpbin</h1><p>A self-hosted httpbin on aiohttp: the endpoints of httpbin.org and some of "
            f'go-httpbin\'s. Machine-readable: <a href="{PREFIX}/openapi.json">openapi.json</a>.</p>\n'
            "<table><tr><th>method</th><th>path</th><th>what it does</th></tr>\n" + "\n".join(rows)
            + "\n</table></body></html>\n")


INDEX = _index_page()


async def index(request: web.Request) -> web.Response:
    return web.Response(text=INDEX, content_type="text/html")


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/", index),
    ("GET", "/healthz", healthz),
    ("GET", "/plaintext", plaintext),
    ("GET", "/json", hello_json),
    ("GET", "/io", io_wait),
    ("GET", "/cpu", cpu),
    ("GET", "/conn", conn),
    ("GET", "/fanout", fanout),
    ("GET", "/openapi.json", openapi),
    ("GET", "/bins", bins),
    ("POST", "/bins", bins),
    *((method, f"/bins/{{name:{BIN_NAME}}}", one_bin) for method in ("GET", "PUT", "PATCH", "DELETE")),
    *endpoints.ROUTES,  # the httpbin clone
    *digest.ROUTES,
    *live.ROUTES,
]


DRAIN = drain.Drain()  # a graceful stop (services/common/drain.py): aiohttp counts the requests itself
CLIENT_TIMEOUT_S = http.client_timeout_s()


class BodyTimeout(Exception):
    """No byte of a request body arrived for CLIENT_TIMEOUT_S."""


class StalledBodyWatch:
    """aiohttp bounds an idle connection (keepalive_timeout) and a request head, but waits for a body's bytes
    forever, holding the handler. Every `seconds` this checks that more of the body arrived; when none did, the
    body's pending and future reads raise BodyTimeout (guarded answers 408 and closes)."""

    def __init__(self, body: aiohttp.StreamReader, seconds: float) -> None:
        self.body, self.seconds, self.seen = body, seconds, body.total_bytes
        self.timer = asyncio.get_running_loop().call_later(seconds, self.check)

    def check(self) -> None:
        if self.body.is_eof():
            return
        if self.body.total_bytes == self.seen:
            self.body.set_exception(BodyTimeout())
            return
        self.seen = self.body.total_bytes
        self.timer = asyncio.get_running_loop().call_later(self.seconds, self.check)

    def cancel(self) -> None:
        self.timer.cancel()


def _problem(request: web.Request, problem: http.Problem) -> web.Response:
    response = _json(problem.document(REQUEST_ID.get(), request.path), problem.status, http.PROBLEM_JSON)
    response.headers.update(problem.headers)
    return response


def guarded(handler: Handler) -> Handler:
    """The handler, with the request id assigned and echoed and every error rendered as
    application/problem+json. A wrapper per route rather than an aiohttp middleware: any middleware makes
    aiohttp run its own extra layer and machinery for every request, together a tenth of a hello world here."""

    async def run(request: web.Request) -> web.StreamResponse:
        rid = request.headers.get(REQUEST_ID_HEADER)  # http.request_id(), inlined: it runs for every request
        if rid is None or not http.well_formed_request_id(rid):
            rid = next(http.fresh_request_ids)
        REQUEST_ID.set(rid)
        started = time.perf_counter()
        REQUEST_STARTED.set(started)
        timing.start_request()
        metrics.IN_FLIGHT_COUNT.began()
        # Most bodies are whole before the handler runs (nginx sends them buffered): only a partial one is watched.
        watch = None
        if request.body_exists and not request.content.is_eof():
            watch = StalledBodyWatch(request.content, CLIENT_TIMEOUT_S)
        try:
            response = await handler(request)
        except BodyTimeout:
            response = _problem(request, http.Problem(408, "Request Timeout",
                                                      f"no byte of the body arrived for {CLIENT_TIMEOUT_S:g} s"))
            response.force_close()
        except http.Problem as problem:
            response = _problem(request, problem)
            if problem.status == 405 and ALLOW in request:
                response.headers["Allow"] = request[ALLOW]
        except web.HTTPException as error:
            if error.status < 400:  # redirects and the like: aiohttp sends the exception itself as the response
                error.headers[REQUEST_ID_HEADER] = rid
                metrics.observe(route(request), request.method, error.status, time.perf_counter() - started)
                raise
            response = _problem(request, http.Problem(error.status, error.reason, error.text or error.reason))
        except Exception:  # aiohttp answers it with a 500 (answer_unparsable_requests_with_problems)
            metrics.observe(route(request), request.method, 500, time.perf_counter() - started)
            raise
        finally:
            metrics.IN_FLIGHT_COUNT.ended()
            if watch is not None:
                watch.cancel()
        response.headers[REQUEST_ID_HEADER] = rid
        if DRAIN.active and not response.prepared:
            response.force_close()  # stopping: nginx retires this connection after this response
        metrics.observe(route(request), request.method, response.status, time.perf_counter() - started)
        return response

    template: list[str | None] = []  # the route's template, looked up by its first request

    def route(request: web.Request) -> str | None:
        if not template:
            resource = request.match_info.route.resource
            template.append(None if resource is None or resource.name == UNROUTED else resource.canonical)
        return template[0]

    return functools.update_wrapper(run, handler)


async def unrouted(request: web.Request) -> web.Response:
    """The last route, for every method and path no other route took: 404, 405 with Allow, or the OPTIONS
    answer (aiohttp has no automatic OPTIONS, and its own 404/405 are text/plain). Only requests that miss
    come here, so asking every resource which methods it has for this path costs nothing on the hot path."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not request.match_info.route.resource:
            allowed |= (await resource.resolve(request))[1]
    if not allowed:
        raise http.Problem(404, "Not Found", f"nothing is served at {request.path}")
    request[ALLOW] = semantics.allow_header(sorted(allowed))
    if request.method == "OPTIONS":
        return web.Response(status=204, headers={"Allow": request[ALLOW]})
    raise http.Problem(405, "Method Not Allowed", f"{request.path} answers {request[ALLOW]}")


async def _close_store(app: web.Application) -> None:
    await app[DOCUMENTS].database.aclose()


async def _add_server_timing(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """Every response's Server-Timing, as its headers go out (streamed ones too)."""
    started = REQUEST_STARTED.get(None)
    if started is not None:
        response.headers[SERVER_TIMING] = timing.server_timing(time.perf_counter() - started)


async def _sample_loop_lag(app: web.Application) -> AsyncIterator[None]:
    sampler = asyncio.create_task(metrics.sample_loop_lag())
    yield
    sampler.cancel()


async def serve_metrics(request: web.Request) -> web.Response:
    return web.Response(body=metrics.exposition(), headers={"Content-Type": metrics.CONTENT_TYPE})


def create_app(db_path: str | None = None, settings: HttpbinSettings | None = None) -> web.Application:
    """The app; `settings` default to what the environment says (HttpbinSettings.from_env)."""
    settings = settings or HttpbinSettings.from_env()
    # auto_decompress off: aiohttp would otherwise decode a request body by its Content-Encoding (a bad gzip body
    # then failed as a 500, a br one arrived empty); httpbin echoes the bytes sent instead (endpoints.with_body).
    app = web.Application(client_max_size=http.MAX_REQUEST_BODY_BYTES, handler_args={"auto_decompress": False})
    app[SETTINGS] = settings
    app[DOCUMENTS] = Documents(db.open_database(SERVICE, db_path, asynchronous=True), ttl_s=settings.bin_ttl_s,
                               max_per_collection=settings.max_bins)
    app.on_cleanup.append(_close_store)
    app.on_response_prepare.append(_add_server_timing)
    app.cleanup_ctx.append(_sample_loop_lag)
    metrics.describe(SERVICE)
    for method, path, handler in ROUTES:
        if method == "GET":
            app.router.add_get(PREFIX + path, guarded(handler))  # answers HEAD too
        else:
            app.router.add_route(method, PREFIX + path, guarded(handler))
    app.router.add_get(metrics.PATH, guarded(serve_metrics))  # outside the prefix: nginx never proxies it
    # tried last: the router walks prefixes down to /
    # [\s\S], not ".": a decoded path may hold a newline (%0A), which "." does not match (aiohttp's text 404)
    app.router.add_route("*", r"/{path:[\s\S]*}", guarded(unrouted), name=UNROUTED)
    return app


def answer_unparsable_requests_with_problems() -> None:
    """Bytes aiohttp cannot parse as a request (or a handler's escaped exception) never reach a route: aiohttp's
    connection handler answers them itself, as text/plain or HTML, through RequestHandler.handle_error, which
    has no setting. Wrapped once per process: aiohttp's checks and logging run, then the answer is the stack's
    problem document, and the connection still closes after it."""
    original = web_protocol.RequestHandler.handle_error
    if getattr(original, "answers_problems", False):
        return

    def handle_error(self: web_protocol.RequestHandler, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
        original(self, request, status, exc, message)  # logs; raises when a response already started
        detail = (message or getattr(exc, "message", None) or str(exc or "")).strip().splitlines()
        # A handler's escaped exception keeps its request's id; bytes that never became a request get a fresh one,
        # set for the access line too.
        rid, body = http.unparsable_request_problem(status, detail[0] if detail else http.status_title(status),
                                                    REQUEST_ID.get(None))
        REQUEST_ID.set(rid)
        response = web.Response(status=status, body=body,
                                headers={http.REQUEST_ID_HEADER: rid, "Content-Type": http.PROBLEM_JSON})
        response.force_close()
        return response

    handle_error.answers_problems = True  # type: ignore[attr-defined]
    web_protocol.RequestHandler.handle_error = handle_error  # type: ignore[method-assign]


async def app_factory() -> web.Application:
    """Entry point for `gunicorn -k aiohttp.GunicornWebWorker services.httpbin.app:app_factory`."""
    answer_unparsable_requests_with_problems()
    return create_app()
