"""HTTP semantics written once and used by every service through thin framework adapters.

Nothing here imports a web framework: each service maps these plain functions onto Flask, Tornado or aiohttp.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

REQUEST_ID_HEADER = "X-Request-ID"
PROBLEM_JSON = "application/problem+json"
JSON = "application/json"
TEXT_PLAIN = "text/plain; charset=utf-8"
HELLO = "Hello, World!"

# A request id is echoed into logs and headers, so only a safe alphabet is accepted (no log injection);
# nginx applies the same rule at the edge and generates one when the client sent none or a bad one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

# Bounds for the benchmark endpoints: the longest /io wait must stay below nginx's proxy_read_timeout
# and gunicorn's worker timeout (see nginx/nginx.conf.template and services/web/gunicorn_conf.py).
IO_DEFAULT_MS = 50
IO_MAX_MS = 10_000
CPU_DEFAULT_N = 10_000
CPU_MAX_N = 1_000_000

# The largest request body nginx lets through (client_max_body_size in nginx/nginx.conf.template; a config test
# checks they agree). httpbin's echo endpoints take as much; resources with JSON documents keep their own,
# smaller limit (semantics.MAX_BODY_BYTES).
MAX_ID = 2**53 - 1  # the largest id anything here hands out or takes: exact in every JSON client
MAX_REQUEST_BODY_BYTES = 1024 * 1024

# Seconds a service waits on a silent client: an idle keep-alive connection, an unfinished request head, each
# wait for more of a body (then 408 and close). Longer than nginx's upstream keepalive_timeout
# (deploy/render.py's UPSTREAM_IDLE_S), so nginx always closes an idle pooled connection first and never sends a
# request on one a service is closing.
CLIENT_TIMEOUT_S = 75
CLIENT_TIMEOUT_ENV = "STACK_CLIENT_TIMEOUT_S"  # shortens it: the slow-client tests of each service's own port


_IP = re.compile(r"[0-9A-Fa-f:.]{2,45}")
_INTEGER = re.compile(r"-?[0-9]{1,18}")
_DECIMAL = re.compile(r"[0-9]{1,18}(?:\.[0-9]{1,18})?")


def client_address(real_ip: str | None, peer: str | None) -> str:
    """The client for an access line: nginx's X-Real-IP when it looks like an address (it goes into the log,
    so nothing else is accepted), else the socket's peer."""
    if real_ip and _IP.fullmatch(real_ip):
        return real_ip
    return peer or "-"


# json.dumps(..., separators=...) builds a new JSONEncoder on every call; one shared encoder skips that.
_compact_encode = json.JSONEncoder(separators=(",", ":")).encode


def to_json(body: object) -> str:
    """Compact JSON, the body of every JSON response."""
    return _compact_encode(body)


def request_id(incoming: str | None) -> str:
    """Return the client's request id when it is well-formed, else a fresh one."""
    if incoming and well_formed_request_id(incoming):
        return incoming
    return next(fresh_request_ids)


well_formed_request_id = _REQUEST_ID.fullmatch


# A fresh id is 32 random hex digits, the shape of nginx's $request_id. Formatting a number as hex costs more
# than the rest of the request id's work (3,500 instructions: `f"{n:032x}"`), and a getrandom(2) per request
# (uuid4, secrets) costs a system call each: so ids are made REQUEST_IDS_PER_BATCH at a time from one
# os.urandom() read, hexed and cut in C, and `next(fresh_request_ids)` runs no Python frame at all. A forked
# worker starts its own batches (it must not hand out the parent's remaining ids).
REQUEST_IDS_PER_BATCH = 1024


def _request_id_batch(count: int) -> list[str]:
    digits = os.urandom(16 * count).hex()
    return [digits[i:i + 32] for i in range(0, len(digits), 32)]


def _new_request_ids() -> Iterator[str]:
    return itertools.chain.from_iterable(map(_request_id_batch, itertools.repeat(REQUEST_IDS_PER_BATCH)))


def _new_request_ids_in_child() -> None:
    global fresh_request_ids
    fresh_request_ids = _new_request_ids()


fresh_request_ids = _new_request_ids()
os.register_at_fork(after_in_child=_new_request_ids_in_child)


def client_timeout_s(environ: Mapping[str, str] = os.environ) -> int:
    """CLIENT_TIMEOUT_S, or the whole seconds in $STACK_CLIENT_TIMEOUT_S (gunicorn takes whole seconds)."""
    return int(environ.get(CLIENT_TIMEOUT_ENV) or CLIENT_TIMEOUT_S)


@dataclass
class Problem(Exception):
    """An RFC 9457 problem; raised by handlers, rendered by each framework's adapter."""

    status: int
    title: str
    detail: str
    type: str = "about:blank"
    headers: dict[str, str] = field(default_factory=dict)  # response fields the problem calls for (RFC 9110)

    def document(self, request_id: str, instance: str | None = None) -> dict:
        body: dict = {"type": self.type, "title": self.title, "status": self.status, "detail": self.detail}
        if instance:
            body["instance"] = instance
        body["request_id"] = request_id
        return body


# RFC 9110's names where Python 3.11's HTTPStatus still has RFC 7231's.
_RFC9110_TITLES = {413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content"}


def status_title(status: int) -> str:
    """The status code's reason phrase as RFC 9110 writes it."""
    try:
        return _RFC9110_TITLES.get(status) or HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def unparsable_request_problem(status: int, detail: str, rid: str | None = None) -> tuple[str, bytes]:
    """The request id and problem document for bytes a server could not parse as a request (or a request whose
    handler failed outside the service's own error handling). The id is `rid`, the one the request already has,
    else fresh: the client's, if it sent one, was never read. A server error says nothing more than its title:
    what broke is in the server's log, not for the client."""
    rid, title = rid or request_id(None), status_title(status)
    return rid, to_json(Problem(status, title, detail if status < 500 else title).document(rid)).encode()


def unparsable_request_reply(status: int, detail: str) -> bytes:
    """The whole HTTP/1.1 response for that, for servers that write raw bytes before closing the connection.
    Each server's own answer here was HTML (gunicorn), text (aiohttp) or a bodiless 400 (Tornado)."""
    rid, body = unparsable_request_problem(status, detail)
    return (f"HTTP/1.1 {status} {status_title(status)}\r\nContent-Type: {PROBLEM_JSON}\r\n"
            f"Content-Length: {len(body)}\r\n{REQUEST_ID_HEADER}: {rid}\r\nConnection: close\r\n\r\n").encode() + body


def decimal(raw: str, name: str) -> float:
    """A non-negative decimal in ASCII digits ("2", "0.25"). float() alone would also take "nan", "inf", "1e400"
    (infinite), " 5" and other scripts' digits ("٣"): each of those is a 400 problem here."""
    if not _DECIMAL.fullmatch(raw):
        raise Problem(400, "Invalid number", f"{name} must be a non-negative decimal number, got {raw[:40]!r}")
    return float(raw)


def int_param(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    """Parse an integer query parameter within [low, high]; anything else is a 400 problem."""
    if raw is None or raw == "":
        return default
    # int() alone would also take " 5", "1_000" and other scripts' digits ("٣"): only ASCII digits are a number
    # here, and at most 18 of them (past that every bound here is exceeded anyway).
    if not _INTEGER.fullmatch(raw):
        raise Problem(400, "Invalid query parameter", f"{name} must be an integer, got {raw[:40]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise Problem(400, "Invalid query parameter", f"{name} must be between {low} and {high}, got {value}")
    return value


def io_ms(raw: str | None) -> int:
    return int_param(raw, "ms", IO_DEFAULT_MS, 0, IO_MAX_MS)


def cpu_n(raw: str | None) -> int:
    return int_param(raw, "n", CPU_DEFAULT_N, 1, CPU_MAX_N)


# <prefix>/stream/{n}: httpbin.org's bound on n.
STREAM_MAX_N = 100


def stream_n(raw: str) -> int:
    return int_param(raw, "n", 1, 1, STREAM_MAX_N)


def stream_line(service: str, i: int) -> str:
    """Line i of <prefix>/stream/{n} on web and catalog: a JSON document per line, each written as it is made,
    so the size is unknown when the headers go out and the server frames the body with chunked encoding."""
    return to_json({"id": i, "service": service}) + "\n"


def cpu_work(n: int) -> int:
    """Deterministic pure-Python work, O(n): a rolling polynomial hash of 0..n-1 (holds the GIL throughout)."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) % 1_000_000_007
    return acc


def health(service: str) -> dict:
    return {"status": "ok", "service": service}


def hello_json() -> dict:
    return {"message": HELLO}


def io_body(ms: int) -> dict:
    return {"waited_ms": ms}


def cpu_body(n: int) -> dict:
    return {"n": n, "result": cpu_work(n)}


FORWARDED_HEADERS = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-IP", "X-Request-ID")


def connection_info(
    service: str, peer: tuple[str, int] | None, requests_on_connection: int | None, http_version: str,
    headers: Mapping[str, str],
) -> dict:
    """What the server saw of this TCP connection (GET <prefix>/conn): behind nginx the peer is nginx's pooled
    upstream connection, and its request count grows as the pool reuses it. None where the server does not tell
    the app (web under granian: no socket, no peer port in its WSGI environ)."""
    return {
        "service": service,
        "peer": {"address": peer[0], "port": peer[1]} if peer else None,
        "requests_on_this_connection": requests_on_connection,
        "pid": os.getpid(),
        "http_version": http_version,
        "forwarded": {name: headers.get(name) for name in FORWARDED_HEADERS if headers.get(name) is not None},
    }


FANOUT_MAX = 50


def fetch_record(i: int, status: int, size: int, started: float) -> dict:
    """One fetch of a fan-out: its index, status, body size and how long it took."""
    return {"i": i, "status": status, "bytes": size, "ms": round((time.perf_counter() - started) * 1000, 1)}


def fanout_report(model: str, url: str, started: float, fetches: list[dict]) -> dict:
    """The fan-out's answer: when total_ms is close to one fetch and far below sum_of_fetch_ms, the waits
    overlapped."""
    return {
        "model": model, "url": url, "n": len(fetches),
        "total_ms": round((time.perf_counter() - started) * 1000, 1),
        "sum_of_fetch_ms": round(sum(f["ms"] for f in fetches), 1), "fetches": fetches,
    }
