"""What web's views share: JSON and stored responses, the store, and the request body read with its bounds.
The route tables live beside their views: app.py (benchmark endpoints), accounts.py, orders_views.py, cart.py."""

from __future__ import annotations

import contextlib
import socket

from flask import Response, current_app, request
from gunicorn.http.errors import ParseException
from werkzeug.exceptions import ClientDisconnected

from services.common import http, semantics
from services.common.idempotency import StoredResponse
from services.web.store import Store
from stack import topology
from stack.settings import WebSettings

PREFIX = topology.service("web").route_prefix


def as_json(body: object, status: int = 200, content_type: str = http.JSON) -> Response:
    return Response(http.to_json(body), status=status, content_type=content_type)


def send(stored: StoredResponse, replayed: bool = False) -> Response:
    response = Response(stored.body or None, status=stored.status, headers=stored.headers)
    if stored.status in (204, 304):
        del response.headers["Content-Type"]  # no content, so no content type
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def store() -> Store:
    return current_app.extensions["store"]


def settings() -> WebSettings:
    """The settings create_app was given."""
    return current_app.extensions["settings"]


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
