"""What gunicorn does for web and uWSGI and granian do not, as WSGI middleware (services/web/wsgi.py wraps the
app in it under those servers): the stack's access line, a refusal of requests whose request line never
parsed, and (granian) a request environ without the process's environment in it.

uWSGI's HTTP parser passes a line it could not read (a TLS hello, "GARBAGE") to the app with no REQUEST_METHOD,
and its uwsgi protocol carries whatever variables the sender chose; Flask then raised a KeyError (a 500 that
only showed as a closed connection). Here such a request is a 400 problem document, as gunicorn's own parser
answers it (gunicorn_conf.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from services.common import accesslog, http

_RID = http.REQUEST_ID_HEADER.lower()
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")  # RFC 9110 5.6.2: a method is a token
_VERSIONS = frozenset({"HTTP/1.0", "HTTP/1.1"})
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")


def request_line_fault(environ: dict, chunked_input: bool = True) -> tuple[int, str] | None:
    """The status and reason why this environ is no request the app can take, or None. `chunked_input`: the
    server decodes a chunked body (granian does; uWSGI's HTTP socket hands the raw chunks on)."""
    method = environ.get("REQUEST_METHOD")
    if not isinstance(method, str) or not _TOKEN.fullmatch(method):
        return 400, "no valid request method"
    if environ.get("SERVER_PROTOCOL") not in _VERSIONS:
        return 400, "only HTTP/1.0 and HTTP/1.1 are spoken here"
    if not isinstance(environ.get("PATH_INFO", ""), str):
        return 400, "no valid path"
    length = environ.get("CONTENT_LENGTH") or ""
    if length and not _CONTENT_LENGTH.fullmatch(length):
        return 400, "Content-Length must be one decimal number"
    if "HTTP_TRANSFER_ENCODING" in environ:
        if length:  # RFC 9112 6.1: a request smuggling shape; refused, not guessed at
            return 400, "a request must not carry both Content-Length and Transfer-Encoding"
        if not chunked_input:  # RFC 9112 6.3: the server may insist on a length
            return 411, "send the body with a Content-Length"
    return None


class RequestLineGuard:
    """`says_close`: add Connection: close to the refusal (uWSGI's ini adds it to every response already)."""

    def __init__(self, app: Any, chunked_input: bool = True, says_close: bool = True) -> None:
        self.app, self.chunked_input = app, chunked_input
        self.closing = [("Connection", "close")] if says_close else []

    def __call__(self, environ: dict, start_response: Any) -> Any:
        fault = request_line_fault(environ, self.chunked_input)
        if fault is None:
            return self.app(environ, start_response)
        status, reason = fault
        rid, body = http.unparsable_request_problem(status, reason)
        start_response(f"{status} {http.status_title(status)}",
                       [("Content-Type", http.PROBLEM_JSON), ("Content-Length", str(len(body))),
                        (http.REQUEST_ID_HEADER, rid), *self.closing])
        return [body]


# What granian's scope sets on every request: an environment variable of one of these names is overwritten.
_GRANIAN_SCOPE_KEYS = frozenset({"REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL", "REMOTE_ADDR",
                                 "SERVER_NAME", "SERVER_PORT", "SCRIPT_NAME", "GATEWAY_INTERFACE", "SERVER_SOFTWARE"})


def header_shaped(name: str) -> bool:
    """An environment variable that a WSGI app reads as a request header (PEP 3333: HTTP_*, CONTENT_TYPE,
    CONTENT_LENGTH)."""
    return name.startswith("HTTP_") or name in ("CONTENT_TYPE", "CONTENT_LENGTH")


class ProcessEnvironmentFilter:
    """granian 2.8 builds every request's WSGI environ on a copy of the process's environment (granian/wsgi.py:
    `dict(os.environ) | scope`): PATH, HOME, a database URL with its password, all sit beside the request's
    variables for anything that records an environ (an error reporter, a debugger). This drops them. The
    header-shaped ones (HTTP_X_FORWARDED_PROTO=https would reach the app as a header on every request that
    sends none) cannot be told from a client's by name, so services/web/serve.py keeps them out of granian's
    environment altogether."""

    def __init__(self, app: Any, process_environment: Iterable[str]) -> None:
        self.app = app
        self.dropped = tuple(name for name in process_environment
                             if not header_shaped(name) and name not in _GRANIAN_SCOPE_KEYS)

    def __call__(self, environ: dict, start_response: Any) -> Any:
        for name in self.dropped:
            environ.pop(name, None)
        return self.app(environ, start_response)


class AccessLineMiddleware:
    """The same access line for the servers whose own log has another shape (uWSGI, granian: services/web/wsgi.py
    wraps the app in it): written when the server closes the response, with the bytes the app produced."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: Any) -> Any:
        started = time.perf_counter()
        seen: dict[str, Any] = {}

        def recording_start_response(status: str, headers: list, *exc_info: Any) -> Any:
            seen["status"] = int(status.split(None, 1)[0])
            seen["rid"] = next((value for name, value in headers if name.lower() == _RID), "-")
            return start_response(status, headers, *exc_info)

        body = self.app(environ, recording_start_response)
        return _LoggedBody(body, environ, seen, started)


class _LoggedBody:
    def __init__(self, body: Any, environ: dict, seen: dict, started: float) -> None:
        self.body, self.environ, self.seen, self.started, self.sent = body, environ, seen, started, 0

    def __iter__(self) -> Any:
        for chunk in self.body:
            self.sent += len(chunk)
            yield chunk

    def close(self) -> None:
        try:
            if hasattr(self.body, "close"):
                self.body.close()
        finally:
            environ = self.environ
            target = environ.get("REQUEST_URI") or environ.get("RAW_URI") or (
                environ.get("PATH_INFO", "") + (f"?{environ['QUERY_STRING']}" if environ.get("QUERY_STRING") else ""))
            accesslog.write(environ.get("REMOTE_ADDR") or "-", environ.get("REQUEST_METHOD", "-"), target,
                            environ.get("SERVER_PROTOCOL", "-"), self.seen.get("status", 0), self.sent,
                            self.seen.get("rid", "-"), time.perf_counter() - self.started)
