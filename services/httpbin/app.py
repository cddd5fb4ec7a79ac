"""The aiohttp application factory and its route table (paths under PREFIX, as behind nginx)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

from services.common import http

SERVICE = "httpbin"
PREFIX = "/httpbin"
REQUEST_ID = web.RequestKey("request_id", str)
# aiohttp's access log: %{X-Request-ID}o is the response header, %Tf the request time in seconds.
ACCESS_LOG_FORMAT = '%a "%r" %s %b rid=%{X-Request-ID}o rt=%Tf'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: dict, status: int = 200, content_type: str = http.JSON) -> web.Response:
    return web.Response(
        text=json.dumps(body, separators=(",", ":")), status=status, content_type=content_type
    )


async def healthz(request: web.Request) -> web.Response:
    return _json(http.health(SERVICE))


async def plaintext(request: web.Request) -> web.Response:
    return web.Response(text=http.HELLO, content_type="text/plain", charset="utf-8")


async def hello_json(request: web.Request) -> web.Response:
    return _json(http.hello_json())


async def io_wait(request: web.Request) -> web.Response:
    ms = http.io_ms(request.query.get("ms"))
    await asyncio.sleep(ms / 1000)  # yields to the event loop: other requests run meanwhile
    return _json(http.io_body(ms))


async def cpu(request: web.Request) -> web.Response:
    return _json(http.cpu_body(http.cpu_n(request.query.get("n"))))


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/healthz", healthz),
    ("GET", "/plaintext", plaintext),
    ("GET", "/json", hello_json),
    ("GET", "/io", io_wait),
    ("GET", "/cpu", cpu),
]


def _problem(request: web.Request, problem: http.Problem) -> web.Response:
    return _json(problem.document(request[REQUEST_ID], request.path), problem.status, http.PROBLEM_JSON)


@web.middleware
async def request_id_and_problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Assign the request id, echo it, and render every error as application/problem+json."""
    request[REQUEST_ID] = http.request_id(request.headers.get(http.REQUEST_ID_HEADER))
    try:
        response = await handler(request)
    except http.Problem as problem:
        response = _problem(request, problem)
    except web.HTTPException as error:
        if error.status < 400:
            raise  # redirects and the like pass through untouched
        response = _problem(request, http.Problem(error.status, error.reason, error.text or error.reason))
        if isinstance(error, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ", ".join(sorted(error.allowed_methods))
    response.headers[http.REQUEST_ID_HEADER] = request[REQUEST_ID]
    return response


def create_app() -> web.Application:
    app = web.Application(middlewares=[request_id_and_problems])
    for method, path, handler in ROUTES:
        app.router.add_route(method, PREFIX + path, handler)
    return app


async def app_factory() -> web.Application:
    """Entry point for `gunicorn -k aiohttp.GunicornWebWorker services.httpbin.app:app_factory`."""
    return create_app()
