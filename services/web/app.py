"""The Flask application factory and its route table.

Every route lives under PREFIX so the app answers identically behind nginx (`/web/...`) and on its own port.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from services.common import http

SERVICE = "web"
PREFIX = "/web"


def _json(body: dict, status: int = 200, content_type: str = http.JSON) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, content_type=content_type)


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


# (path under PREFIX, endpoint name, view, methods). GET routes answer HEAD and OPTIONS too (Flask adds them).
ROUTES: list[tuple[str, str, Callable[[], Response], list[str]]] = [
    ("/healthz", "healthz", healthz, ["GET"]),
    ("/plaintext", "plaintext", plaintext, ["GET"]),
    ("/json", "json", hello_json, ["GET"]),
    ("/io", "io", io_wait, ["GET"]),
    ("/cpu", "cpu", cpu, ["GET"]),
]


def _problem_response(problem: http.Problem) -> Response:
    rid = g.get("request_id") or http.request_id(None)
    return _json(problem.document(rid, request.path), problem.status, http.PROBLEM_JSON)


def create_app(config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(config or {})
    for path, endpoint, view, methods in ROUTES:
        app.add_url_rule(PREFIX + path, endpoint, view, methods=methods)

    @app.before_request
    def assign_request_id() -> None:
        g.request_id = http.request_id(request.headers.get(http.REQUEST_ID_HEADER))

    @app.after_request
    def echo_request_id(response: Response) -> Response:
        # gunicorn's access log reads it back from the response (%({x-request-id}o)s).
        response.headers[http.REQUEST_ID_HEADER] = g.get("request_id") or http.request_id(None)
        return response

    @app.errorhandler(http.Problem)
    def on_problem(problem: http.Problem) -> Response:
        return _problem_response(problem)

    @app.errorhandler(HTTPException)
    def on_http_error(error: HTTPException) -> Response:
        response = _problem_response(http.Problem(error.code or 500, error.name, error.description or ""))
        if error.code == 405 and error.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return response

    return app
