"""The Tornado application factory and its route table (paths under PREFIX, as behind nginx)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import tornado.web

from services.common import http

SERVICE = "catalog"
PREFIX = "/catalog"
access_log = logging.getLogger("tornado.access")


class BaseHandler(tornado.web.RequestHandler):
    """Request id in and out, JSON helpers, and every error rendered as application/problem+json."""

    request_id: str = ""

    def prepare(self) -> None:
        self.request_id = http.request_id(self.request.headers.get(http.REQUEST_ID_HEADER))
        self.set_header(http.REQUEST_ID_HEADER, self.request_id)

    def query(self, name: str) -> str | None:
        return self.get_query_argument(name, None)

    def write_json(self, body: dict, content_type: str = http.JSON) -> None:
        self.set_header("Content-Type", content_type)
        self.finish(json.dumps(body, separators=(",", ":")))

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
        if problem.status == 405:
            self.set_header("Allow", ", ".join(m for m in self.SUPPORTED_METHODS if self._implements(m)))
        if not self.request_id:  # the error happened before prepare() ran
            self.request_id = http.request_id(self.request.headers.get(http.REQUEST_ID_HEADER))
        self.set_header(http.REQUEST_ID_HEADER, self.request_id)  # send_error() cleared the headers
        self.write_json(problem.document(self.request_id, self.request.path), http.PROBLEM_JSON)

    def _implements(self, method: str) -> bool:
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
]


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log line with the request id and the request time, like the other services'."""
    request = handler.request
    access_log.info(
        '%s "%s %s %s" %d rid=%s rt=%.6f',
        request.remote_ip,
        request.method,
        request.uri,
        request.version,
        handler.get_status(),
        getattr(handler, "request_id", "-") or "-",
        request.request_time(),
    )


def make_app(**settings: Any) -> tornado.web.Application:
    routes = [(PREFIX + path, handler) for path, handler in ROUTES]
    return tornado.web.Application(
        routes,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        xheaders=True,  # trust X-Real-IP/X-Forwarded-For from nginx for remote_ip
        **settings,
    )
