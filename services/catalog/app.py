"""The Tornado application factory and its route table (paths under PREFIX, as behind nginx).

catalog is the RESTful microservice: items at /catalog/items and /catalog/items/{id} with exact HTTP
semantics (ETag, If-Match, Idempotency-Key, merge patch, pagination), plus the shared benchmark endpoints.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any
from urllib.parse import urlsplit

import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.iostream import StreamClosedError

from services.catalog.openapi import OPENAPI
from services.catalog.store import SERVICE, Items, validate
from services.common import accesslog, drain, http, metrics, proxy, semantics, stack_dns, timing
from services.common.idempotency import HEADER as IDEMPOTENCY_KEY
from services.common.idempotency import Record, StoredResponse, fingerprint, run_once
from stack import credentials, topology

PREFIX = topology.service("catalog").route_prefix
DRAIN = drain.Drain()  # this process's requests in flight, for a graceful stop (services/common/drain.py)
# Requests served per TCP connection (Tornado keeps one IOStream per connection across requests).
_requests_per_stream: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


class BaseHandler(tornado.web.RequestHandler):
    """Request id in and out, JSON helpers, and every error rendered as application/problem+json."""

    request_id: str = ""

    def prepare(self) -> None:
        DRAIN.started()
        self._counted = True
        timing.start_request()
        self.request_id = http.request_id(self.request.headers.get(http.REQUEST_ID_HEADER))
        self.set_header(http.REQUEST_ID_HEADER, self.request_id)
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            _requests_per_stream[stream] = _requests_per_stream.get(stream, 0) + 1

    def on_finish(self) -> None:
        if getattr(self, "_counted", False):
            DRAIN.finished()

    def flush(self, include_footers: bool = False) -> Any:
        """The response's head goes out with the first flush: Server-Timing says how long the service took."""
        if not self._headers_written:
            self.set_header(timing.HEADER, timing.server_timing(self.request.request_time()))
        return super().flush(include_footers)

    def query(self, name: str) -> str | None:
        return self.get_query_argument(name, None)

    def write_json(self, body: dict, content_type: str = http.JSON) -> None:
        self.set_header("Content-Type", content_type)
        self.finish(http.to_json(body))

    def json_body(self, accepted: tuple[str, ...] = (http.JSON,)) -> object:
        return semantics.json_body(self.request.headers.get("Content-Type"), self.request.body, accepted,
                                   self.request.headers.get("Content-Encoding"))

    def allowed(self) -> list[str]:
        return [m for m in self.SUPPORTED_METHODS if self._implements(m)]

    def head(self, *args: str) -> Any:
        """HEAD is GET without the body wherever GET exists (Tornado drops the body of a HEAD response);
        Tornado itself answers HEAD with 405 unless a handler says otherwise, while Allow lists it."""
        if not self._implements("GET"):
            raise tornado.web.HTTPError(405)
        return self.get(*args)

    def options(self, *args: str) -> None:
        self.set_status(204)
        self.set_header("Allow", semantics.allow_header(self.allowed()))
        self.finish()

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, http.Problem):
            return  # an expected client error, rendered by write_error; no traceback in the log
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, http.Problem):
            problem = error
        else:
            reason = self._reason
            detail = error.log_message if isinstance(error, tornado.web.HTTPError) and error.log_message else ""
            problem = http.Problem(status_code, reason, detail or reason)
        self.set_status(problem.status)
        for name, value in problem.headers.items():
            self.set_header(name, value)
        if problem.status == 405:
            self.set_header("Allow", semantics.allow_header(self.allowed()))
        if problem.status == 401:
            self.set_header("WWW-Authenticate", getattr(self, "challenge", 'Bearer realm="catalog"'))
        if problem.status == 415 and self.request.method == "PATCH":
            self.set_header("Accept-Patch", semantics.MERGE_PATCH_JSON)
        if not self.request_id:  # the error happened before prepare() ran
            self.request_id = http.request_id(self.request.headers.get(http.REQUEST_ID_HEADER))
        self.set_header(http.REQUEST_ID_HEADER, self.request_id)  # send_error() cleared the headers
        self.write_json(problem.document(self.request_id, self.request.path), http.PROBLEM_JSON)

    def _implements(self, method: str) -> bool:
        if method == "HEAD":
            return self._implements("GET")
        return getattr(type(self), method.lower()) is not getattr(tornado.web.RequestHandler, method.lower())


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(http.health(SERVICE))


class PlaintextHandler(BaseHandler):
    def get(self) -> None:
        self.set_header("Content-Type", http.TEXT_PLAIN)
        self.finish(http.HELLO)


class JsonHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(http.hello_json())


class IoHandler(BaseHandler):
    async def get(self) -> None:
        ms = http.io_ms(self.query("ms"))
        await asyncio.sleep(ms / 1000)  # yields to the IOLoop: other requests run meanwhile
        self.write_json(http.io_body(ms))


class CpuHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(http.cpu_body(http.cpu_n(self.query("n"))))


class ConnHandler(BaseHandler):
    def get(self) -> None:
        stream = getattr(self.request.connection, "stream", None)
        peer = stream.socket.getpeername()[:2] if stream is not None and stream.socket else None
        self.write_json(http.connection_info(
            SERVICE, peer, _requests_per_stream.get(stream, 1) if stream else 1, self.request.version,
            self.request.headers,
        ))


class StreamHandler(BaseHandler):
    async def get(self, n: str) -> None:
        """n JSON lines, each flushed as it is written: no Content-Length, so Tornado sends chunks."""
        count = http.stream_n(n)
        self.set_header("Content-Type", http.JSON)
        for i in range(count):
            self.write(http.stream_line(SERVICE, i))
            await self.flush()
        self.finish()


class FanoutHandler(BaseHandler):
    """The seed's Tornado APIHandler, fixed and measured: N fetches of httpbin's /delay/D through
    AsyncHTTPClient, all in flight at once on this IOLoop, so the total is about D seconds, not N x D."""

    async def get(self) -> None:
        n = http.int_param(self.query("n"), "n", 10, 1, http.FANOUT_MAX)
        delay = http.int_param(self.query("delay"), "delay", 1, 0, 3)
        base = stack_dns.HTTPBIN_URL
        try:
            addresses = await stack_dns.resolver.addresses_async(urlsplit(base).hostname or "")
        except stack_dns.NameNotFound as error:
            raise http.Problem(502, "Bad Gateway", str(error)) from None
        host = urlsplit(base).netloc
        path = f"{topology.service('httpbin').route_prefix}/delay/{delay}"
        # The shared AsyncHTTPClient runs at most 10 requests at once and queues the rest; a private one
        # sized for the fan-out lets all N wait together.
        client = AsyncHTTPClient(force_instance=True, max_clients=http.FANOUT_MAX)

        async def fetch(i: int) -> dict:
            """Fetch i goes to instance i mod n; an instance that refuses (restarting) passes it on."""
            started = time.perf_counter()
            turn = addresses[i % len(addresses):] + addresses[:i % len(addresses)]
            failure = "no address"
            for address in turn:
                prefix, _ = stack_dns.by_address(base, address)
                # raise_error=False turns only HTTP statuses into responses: a refused connection, a failed
                # lookup or a timeout still raises (and escaped as a 500 before).
                try:
                    response = await client.fetch(prefix + path, raise_error=False, request_timeout=15,
                                                  headers={"Host": host, http.REQUEST_ID_HEADER: self.request_id})
                except (OSError, HTTPClientError, StreamClosedError) as error:
                    failure = f"{type(error).__name__}: {error}"
                    continue  # refused (restarting) or unreachable: the next instance takes it
                if response.code >= 500:
                    raise http.Problem(502, "Bad Gateway", f"GET {base}{path}: {response.code} {response.reason}")
                return http.fetch_record(i, response.code, len(response.body or b""), started)
            raise http.Problem(502, "Bad Gateway", f"GET {base}{path}: {failure}")

        started = time.perf_counter()
        try:
            fetches = await asyncio.gather(*(fetch(i) for i in range(n)))
        finally:
            client.close()
        self.write_json(http.fanout_report("Tornado IOLoop + AsyncHTTPClient", base + path, started, list(fetches)))


# ---------------------------------------------------------------- items

def item_response(item: dict, status: int = 200) -> StoredResponse:
    """The exact bytes and headers of an item response, so an idempotent replay is byte-identical."""
    headers = {"Content-Type": http.JSON, "ETag": semantics.strong_etag(item)}
    if status == 201:
        headers["Location"] = f"{PREFIX}/items/{item['id']}"
    return StoredResponse(status, headers, http.to_json(item).encode())


WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ItemsBase(BaseHandler):
    """Reads are open to anyone; a change needs a credential (stack/credentials.py): the operator's
    for anything, web's only for an item's stock (what placing an order does)."""

    principal: str | None = None

    def prepare(self) -> None:
        super().prepare()
        if self.request.method in WRITES:
            token = credentials.bearer(self.request.headers.get("Authorization"))
            self.principal = credentials.who(token, self.settings["tokens"])
            if self.principal is None:
                self.challenge = 'Bearer realm="catalog"' + (', error="invalid_token"' if token else "")
                raise http.Problem(401, "Unauthorized", "changing the catalog needs the operator's bearer token "
                                   "(var/secrets/catalog_operator)" if not token else "this token is not valid here")
        semantics.require_acceptable(self.request.headers.get("Accept"))

    def only_operator(self) -> None:
        if self.principal != credentials.OPERATOR:
            raise http.Problem(403, "Forbidden", "web's credential may change an item's stock, nothing else")

    def scope(self) -> str:
        """Idempotency-Keys belong to the caller: another credential's key is another key."""
        return f"{self.principal} POST {self.request.path}"

    @property
    def items(self) -> Items:
        return self.application.settings["items"]

    def send(self, response: StoredResponse, replayed: bool = False) -> None:
        self.set_status(response.status)
        for name, value in response.headers.items():
            self.set_header(name, value)
        if replayed:
            self.set_header("Idempotent-Replayed", "true")
        self.finish(response.body)


class ItemsHandler(ItemsBase):
    """The collection: GET pages through it (keyset cursor, RFC 8288 Link), POST creates (Idempotency-Key)."""

    async def get(self) -> None:
        limit = http.int_param(self.query("limit"), "limit", 20, 1, 100)
        after = http.int_param(self.query("cursor"), "cursor", 0, 0, http.MAX_ID)
        page, more = await self.items.page(limit, after)
        next_cursor = str(page[-1]["id"]) if more else None
        self.set_header("Link", semantics.page_link(self.request.path, limit, next_cursor))
        self.write_json({"items": page, "next_cursor": next_cursor})

    async def post(self) -> None:
        async def act(record: Record) -> StoredResponse:
            fields = validate(self.json_body())
            created: list[StoredResponse] = []

            async def then(item: dict) -> None:
                created.append(item_response(item, 201))
                await record(created[0])

            await self.items.create(fields, then=then)
            return created[0]

        self.only_operator()
        response, replayed = await run_once(
            self.items.keys, self.request.headers.get(IDEMPOTENCY_KEY), self.scope(),
            fingerprint("POST", self.request.path, self.request.body), act,
        )
        self.send(response, replayed)


class ItemHandler(ItemsBase):
    """One item: GET/HEAD (If-None-Match → 304), PUT (full replace or create), PATCH (merge patch), DELETE.
    Every change needs If-Match with the current ETag (428 without, 412 when stale)."""

    async def get(self, item_id: str) -> None:
        item = await self.items.get(int(item_id))
        if item is None:
            raise http.Problem(404, "Not Found", f"no item {item_id}")
        response = item_response(item)
        if semantics.if_none_match_hit(self.request.headers.get("If-None-Match"), response.headers["ETag"]):
            self.set_status(304)
            self.set_header("ETag", response.headers["ETag"])
            self.finish()
            return
        self.send(response)

    async def put(self, item_id: str) -> None:
        self.only_operator()
        fields = validate(self.json_body())
        item, created = await self.items.put(
            int(item_id), fields, self.request.headers.get("If-Match"), self.request.headers.get("If-None-Match")
        )
        self.send(item_response(item, 201 if created else 200))

    async def patch(self, item_id: str) -> None:
        patch = self.json_body((semantics.MERGE_PATCH_JSON,))
        if not (isinstance(patch, dict) and set(patch) == {"stock"}):
            self.only_operator()
        item = await self.items.patch(int(item_id), patch, self.request.headers.get("If-Match"))
        self.send(item_response(item))

    async def delete(self, item_id: str) -> None:
        self.only_operator()
        await self.items.delete(int(item_id), self.request.headers.get("If-Match"))
        self.set_status(204)
        self.finish()


class OpenApiHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(OPENAPI)


class MetricsHandler(BaseHandler):
    """Prometheus's scrape (services/common/metrics.py), on the service's own port only."""

    def get(self) -> None:
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.finish(metrics.exposition())


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        super().prepare()
        raise tornado.web.HTTPError(404, "No resource at this path")


ROUTES: list[tuple[str, type[BaseHandler]]] = [
    ("/healthz", HealthHandler),
    ("/plaintext", PlaintextHandler),
    ("/json", JsonHandler),
    ("/io", IoHandler),
    ("/cpu", CpuHandler),
    ("/conn", ConnHandler),
    (r"/stream/([^/]+)", StreamHandler),
    ("/fanout", FanoutHandler),
    ("/openapi.json", OpenApiHandler),
    ("/items", ItemsHandler),
    (r"/items/([0-9]{1,16})", ItemHandler),
]


# Each handler's route template, for the metrics' route label: "/catalog/items/{}" (a regex group is a {}).
ROUTE_OF: dict[type[tornado.web.RequestHandler], str] = {
    handler: metrics.route_template(PREFIX + path) for path, handler in ROUTES}
ROUTE_OF[MetricsHandler] = metrics.PATH


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log line with the request id and the request time, like the other services'; and the request's
    observation in the metrics."""
    request = handler.request
    real_ip = request.headers.get("X-Real-IP") if proxy.nginx.trusts(request.remote_ip) else None
    seconds = request.request_time()
    accesslog.write(http.client_address(real_ip, request.remote_ip),
                    request.method, request.uri, request.version,
                    handler.get_status(), handler._headers.get("Content-Length", "-"),
                    getattr(handler, "request_id", "-") or "-", seconds)
    metrics.observe(ROUTE_OF.get(type(handler)), request.method or "", handler.get_status(), seconds)


def make_app(db_path: str | None = None, tokens: dict[str, str | None] | None = None,
             **settings: Any) -> tornado.web.Application:
    """`tokens`: credential name -> token (default: read from $STACK_SECRETS; a missing one admits nobody)."""
    routes = [(PREFIX + path, handler) for path, handler in ROUTES]
    routes.append((metrics.PATH, MetricsHandler))  # outside the prefix: nginx never proxies it
    metrics.describe(SERVICE)
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        items=Items(db_path),
        tokens=tokens if tokens is not None else {name: credentials.read(name) for name in credentials.TOKENS},
        **settings,
    )
