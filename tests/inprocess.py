"""Each service's app on a real HTTP server in a thread of the test process, on 127.0.0.1 and a port of its own:
its framework parses the bytes a test sends (headers with any octet, bodies of any kind), as in the stack, but
no process, nginx or network namespace is needed. (web's tests use Flask's test client: gunicorn forks.)"""

from __future__ import annotations

import asyncio
import http.client
import io
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# catalog's credentials in every in-process test (make_app's `tokens`): name -> token.
CATALOG_TOKENS = {"catalog_operator": "operator-token", "catalog_web": "web-token"}
CATALOG_OPERATOR = f"Bearer {CATALOG_TOKENS['catalog_operator']}"  # the Authorization that may write


def _in_loop_thread(start: Callable[[], object], stop: Callable[[object], object]) -> Iterator[int]:
    """Run `start()` (a coroutine returning (handle, port)) on an event loop in a daemon thread; yield the port;
    then `stop(handle)` (a coroutine) on that loop and end it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    handle, port = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(stop(handle), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@contextmanager
def httpbin(directory: Path) -> Iterator[int]:
    from aiohttp import web

    from services.httpbin.app import AccessLogger, answer_unparsable_requests_with_problems, create_app

    async def start() -> tuple[web.AppRunner, int]:
        answer_unparsable_requests_with_problems()
        runner = web.AppRunner(create_app(str(directory / "httpbin.sqlite3")), access_log_class=AccessLogger)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(runner: web.AppRunner) -> None:
        await runner.cleanup()

    yield from _in_loop_thread(start, stop)


@contextmanager
def catalog(directory: Path) -> Iterator[int]:
    import tornado.netutil

    from services.catalog.__main__ import HTTPServer
    from services.catalog.app import make_app

    async def start() -> tuple[HTTPServer, int]:
        server = HTTPServer(make_app(db_path=str(directory / "catalog.sqlite3"), tokens=CATALOG_TOKENS))
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        return server, sockets[0].getsockname()[1]

    async def stop(server: HTTPServer) -> None:
        server.stop()
        await server.close_all_connections()

    yield from _in_loop_thread(start, stop)


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class _Received:
    """What a server sent, as the file http.client's response parser reads from."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def raw_exchange(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send one request's bytes on a fresh connection and read until the server closes: every byte it sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def exchange(port: int, request: bytes, timeout: float = 10) -> Answer:
    """Send one request's bytes (it should say Connection: close) on a fresh connection, read until the server
    closes, and parse the answer with http.client's own response parser (chunked bodies included)."""
    return parse(raw_exchange(port, request, timeout), request.split(b" ", 1)[0].decode())


def parse(received: bytes, method: str) -> Answer:
    """A server's bytes parsed by http.client's own response parser (chunked bodies included)."""
    response = http.client.HTTPResponse(_Received(received), method=method)
    response.begin()
    return Answer(response.status, response.headers, response.read())
