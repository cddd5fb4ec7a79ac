"""What every HTTP service tells Prometheus.

One histogram per service carries rate, errors and duration together (RED: Rate, Errors, Duration):

    http_request_duration_seconds{route, method, code}   _count is the request rate, code=~"5.." the errors
    http_requests_in_flight                               requests begun and not yet answered
    event_loop_lag_seconds                                how late the loop (or gevent's hub) woke for a timer
    stack_service_info{service, framework, server}        1, to tell the services' series apart by name

`route` is the route's template (`/catalog/items/{}`, `/web/orders/{order_id}`), never the path a client typed, so
hostile URLs cannot grow the number of series; unknown methods are counted as "other". Under gunicorn (web) the
values live in prometheus-client's multiprocess files, one per worker, and /metrics adds the workers up; the worker
count is `gunicorn_workers`. Each service serves GET /metrics on its own port, outside its URL prefix: nginx never
proxies it, and the services' ports are reachable only on loopback (native) or the Compose network.

Recording is one histogram observation per request, made as its response is ready (Flask's after_request,
Tornado's log function, aiohttp's route wrapper); STACK_METRICS=0 turns it off (make compare measures what it
costs). The Server-Timing header is services/common/timing.py's.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)

from stack import topology

PATH = "/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST
ENABLED = os.environ.get("STACK_METRICS", "1") != "0"
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
# From a fast hello-world (~0.5 ms) to the longest /io wait nginx allows (10 s).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # the route label of a request no route took (404s, mostly)
LAG_EVERY_S = 0.25  # how often the loop's lag is sampled

REQUEST_SECONDS = Histogram("http_request_duration_seconds", "Time from the request's head to its response, by "
                            "route template, method and status code", ["route", "method", "code"], buckets=BUCKETS)
IN_FLIGHT = Gauge("http_requests_in_flight", "Requests begun and not yet answered", multiprocess_mode="livesum")
LOOP_LAG = Gauge("event_loop_lag_seconds", f"How late the event loop (gevent's hub) ran a {LAG_EVERY_S} s timer, "
                 "the worst in the last sample", multiprocess_mode="livemax")
SERVICE_INFO = Gauge("stack_service_info", "This process's service", ["service", "framework", "server"],
                     multiprocess_mode="livemax")


class InFlight:
    """Requests begun and not yet answered. One event loop's process counts them in a plain int, read when
    Prometheus scrapes (no lock per request); under gunicorn the multiprocess gauge is moved instead, so that
    /metrics can add the workers up."""

    def __init__(self) -> None:
        self.count = 0
        if not MULTIPROCESS:
            IN_FLIGHT.set_function(lambda: self.count)

    def began(self) -> None:
        if not ENABLED:
            return
        if MULTIPROCESS:
            IN_FLIGHT.inc()
        else:
            self.count += 1

    def ended(self) -> None:
        if not ENABLED:
            return
        if MULTIPROCESS:
            IN_FLIGHT.dec()
        else:
            self.count -= 1


IN_FLIGHT_COUNT = InFlight()
_children: dict[tuple[str, str, int], Any] = {}  # (route, method, code) -> its histogram child: no label lookup


def route_template(route: str) -> str:
    """A route as the route label shows it: regex groups (Tornado) and <converter:name> (Flask) become braces,
    as aiohttp writes them itself: /catalog/items/([0-9]{1,16}) -> /catalog/items/{}, /web/orders/<int:id> ->
    /web/orders/{id}."""
    route = re.sub(r"<(?:[^<>:]+:)?([^<>:]+)>", r"{\1}", route)
    return re.sub(r"\((?:[^()]|\([^()]*\))*\)", "{}", route)


def describe(service: str) -> None:
    """Name the service in stack_service_info (called once per process)."""
    entry = topology.service(service)
    SERVICE_INFO.labels(entry.name, entry.framework, entry.server).set(1)


def observe(route: str | None, method: str, code: int, seconds: float) -> None:
    """One finished request."""
    if not ENABLED:
        return
    key = (route or UNMATCHED, method, code)
    child = _children.get(key)
    if child is None:
        child = _children[key] = REQUEST_SECONDS.labels(key[0], method if method in KNOWN_METHODS else "other",
                                                        str(code))
    child.observe(seconds)


def exposition() -> bytes:
    """The text /metrics answers: this process's registry, or every gunicorn worker's files added up."""
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


async def sample_loop_lag(every: float = LAG_EVERY_S, sleep: Callable[[float], Any] | None = None) -> None:
    """Forever: sleep `every` seconds and record how much later than asked the loop woke us."""
    sleep = sleep or asyncio.sleep
    while True:
        asked = time.perf_counter()
        await sleep(every)
        LOOP_LAG.set(max(0.0, time.perf_counter() - asked - every))


def sample_hub_lag(every: float = LAG_EVERY_S) -> None:
    """gevent's version, for a greenlet of its own in each gunicorn worker."""
    import gevent

    while True:
        asked = time.perf_counter()
        gevent.sleep(every)
        LOOP_LAG.set(max(0.0, time.perf_counter() - asked - every))
