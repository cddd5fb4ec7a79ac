"""go-httpbin's additions: responses that unfold over time or over a connection (server-sent events, JSON lines,
a WebSocket echo, trailers), and views of what arrived (the request as received, which instance answered,
seeded failures for retry tests)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import socket
import time

from aiohttp import WSMsgType, web

from services.common import http
from services.httpbin.endpoints import (
    MAX_BYTES,
    MAX_DELAY,
    SETTINGS,
    basics,
    header_value,
    reply,
    sandboxed,
    streaming,
)

_DURATION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,9})?)(ms|s)?")
MAX_EVENTS = 100


def seconds(raw: str | None, name: str, default: float) -> float:
    """A duration as go-httpbin writes it ("2s", "500ms") or in plain seconds ("2", "0.5"), at most MAX_DELAY."""
    if raw is None:
        return default
    match = _DURATION.fullmatch(raw)
    if not match:
        raise http.Problem(400, "Invalid duration", f"{name} is seconds (2, 0.5, 2s) or milliseconds (500ms)")
    value = float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)
    if value > MAX_DELAY:
        raise http.Problem(400, "Invalid duration", f"{name} is at most {MAX_DELAY} s")
    return value


async def sse(request: web.Request) -> web.StreamResponse:
    """count server-sent events spread over duration after delay: `id`, `event` and a JSON `data` line each.
    A reconnecting client's Last-Event-ID makes the ids go on from there; retry=ms asks it to wait that long."""
    count = http.int_param(request.query.get("count"), "count", 10, 1, MAX_EVENTS)
    duration = seconds(request.query.get("duration"), "duration", 5.0)
    delay = seconds(request.query.get("delay"), "delay", 0.0)
    if duration + delay > MAX_DELAY:
        raise http.Problem(400, "Invalid duration", f"duration and delay add up to at most {MAX_DELAY} s")
    event = re.sub(r"[\r\n]", "", request.query.get("event", "ping"))[:64] or "ping"
    retry = http.int_param(request.query.get("retry"), "retry", 0, 0, 3_600_000)
    last_id = http.int_param(request.headers.get("Last-Event-ID"), "Last-Event-ID", 0, 0, 2**31)
    await asyncio.sleep(delay)
    response = await streaming(request, "text/event-stream")
    if retry:
        await response.write(f"retry: {retry}\n\n".encode())
    pause = duration / count
    for i in range(count):
        data = json.dumps({"id": last_id + 1 + i, "timestamp": int(time.time() * 1000)})
        await response.write(f"id: {last_id + 1 + i}\nevent: {event}\ndata: {data}\n\n".encode())
        if i < count - 1:
            await asyncio.sleep(pause)
    await response.write_eof()
    return response


async def jsonl(request: web.Request) -> web.StreamResponse:
    """count JSON documents, one per line (application/jsonl), spread over duration: the request as received,
    numbered."""
    count = http.int_param(request.query.get("count"), "count", 10, 1, MAX_EVENTS)
    duration = seconds(request.query.get("duration"), "duration", 0.0)
    response = await streaming(request, "application/jsonl")
    base = basics(request)
    for i in range(count):
        await response.write((json.dumps({**base, "id": i}) + "\n").encode())
        if duration and i < count - 1:
            await asyncio.sleep(duration / count)
    await response.write_eof()
    return response


async def websocket_echo(request: web.Request) -> web.StreamResponse:
    """Every text or binary message sent back as it came, until the client closes or MAX_DELAY x 6 seconds
    pass. max_message_size bounds a message (1009 Message Too Big beyond it)."""
    max_message = http.int_param(request.query.get("max_message_size"), "max_message_size", MAX_BYTES, 1, MAX_BYTES)
    http.int_param(request.query.get("max_fragment_size"), "max_fragment_size", max_message, 1, max_message)
    socket_ = web.WebSocketResponse(max_msg_size=max_message, heartbeat=None)
    if not socket_.can_prepare(request).ok:
        raise http.Problem(400, "Not a WebSocket handshake",
                           "send GET with Upgrade: websocket, Connection: Upgrade and Sec-WebSocket-Key/Version")
    await socket_.prepare(request)
    try:
        async with asyncio.timeout(MAX_DELAY * 6):
            async for message in socket_:
                if message.type == WSMsgType.TEXT:
                    await socket_.send_str(message.data)
                elif message.type == WSMsgType.BINARY:
                    await socket_.send_bytes(message.data)
    except TimeoutError:
        await socket_.close(message=b"time is up")
    return socket_


async def hostname(request: web.Request) -> web.Response:
    """Which instance answered: the host (a container's id in Compose), the stack's instance number natively
    (its instances share the host), and the process."""
    return reply({"hostname": socket.gethostname(), "instance": request.app[SETTINGS].instance,
                  "pid": os.getpid()})


async def dump_request(request: web.Request) -> web.Response:
    """The request as this service received it (behind nginx: after nginx rewrote its headers), in HTTP/1.1
    wire form: the request line, the header fields in their order and spelling, the body."""
    version = f"HTTP/{request.version.major}.{request.version.minor}"
    head = [f"{request.method} {request.raw_path} {version}".encode()]
    head += [name + b": " + value for name, value in request.raw_headers]
    body = await request.read()
    return sandboxed(web.Response(body=b"\r\n".join(head) + b"\r\n\r\n" + body, content_type="text/plain",
                                  charset="utf-8"))


async def trailers(request: web.Request) -> web.StreamResponse:
    """The query's fields sent as trailers after a chunked JSON body (RFC 9112 7.1.2), announced in Trailer.
    aiohttp writes no trailers, so this response frames its own chunks. nginx does not pass trailers on:
    see them on the service's own port."""
    fields = []
    for name, value in request.query.items():
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name) or name.lower() in (
                "content-length", "transfer-encoding", "trailer", "host", "authorization", "set-cookie"):
            raise http.Problem(400, "Trailer not allowed", f"{name!r} cannot be a trailer field")
        fields.append((name, header_value(value, name)))
    body = (json.dumps(basics(request)) + "\n").encode()
    announced = {"Trailer": ", ".join(name for name, _ in fields)} if fields else {}
    response = await streaming(request, "application/json", headers=announced)
    writer = await response.prepare(request)  # the same writer, the head already sent
    writer.chunked = False  # type: ignore[attr-defined]  # the chunks below are framed here, trailers included
    trailer_block = "".join(f"{name}: {value}\r\n" for name, value in fields).encode("latin-1", "replace")
    await response.write(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n" + trailer_block + b"\r\n")
    await response.write_eof()
    return response


async def unstable(request: web.Request) -> web.Response:
    """200, or a 500 with probability failure_rate (default 0.5): for testing a client's retries. seed makes the
    outcome repeatable."""
    rate = http.decimal(request.query.get("failure_rate", "0.5"), "failure_rate")
    if rate > 1:
        raise http.Problem(400, "Invalid number", "failure_rate is between 0 and 1")
    seed = request.query.get("seed")
    rng = random.Random(http.int_param(seed, "seed", 0, 0, 2**63 - 1)) if seed is not None else random
    if rng.random() < rate:
        raise http.Problem(500, "Internal Server Error", f"an unstable failure, as asked (failure_rate={rate:g})")
    return reply(basics(request))


ROUTES = [
    ("GET", "/sse", sse),
    ("GET", "/jsonl", jsonl),
    ("GET", "/websocket/echo", websocket_echo),
    ("GET", "/hostname", hostname),
    ("*", "/dump/request", dump_request),
    ("GET", "/trailers", trailers),
    ("*", "/unstable", unstable),
]
