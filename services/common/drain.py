"""Stopping an instance without losing a request: the asyncio services' SIGTERM (gunicorn's gevent worker does
the same by itself).

nginx keeps idle connections to every instance in its pool. Closing one of those at the moment nginx sends a
request on it loses that request (nginx retries a GET on another instance, but never a POST). So a stopping
instance, on SIGTERM:
1. stops listening: nginx's next new connection is refused, and nginx takes the instance out of rotation
   (max_fails) and retries that request elsewhere;
2. keeps serving the connections it has, answering each request with `Connection: close`, so nginx retires
   every pooled connection after one more response instead of racing our close;
3. once no request is in flight and none has started for QUIET_S since the signal (nginx has stopped sending
   here), or after LIMIT_S, closes what is left and exits.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

QUIET_S = 1.0
LIMIT_S = 20.0  # as gunicorn's graceful_timeout; supervisor and Compose wait 25 s before SIGKILL


class Drain:
    def __init__(self) -> None:
        self.active = False  # once True, every response closes its connection
        self.in_flight = 0
        self.started_total = 0  # a count, not a clock: no time lookup per request

    def started(self) -> None:
        self.in_flight += 1
        self.started_total += 1

    def finished(self) -> None:
        self.in_flight -= 1

    async def settle(self, quiet: float = QUIET_S, limit: float = LIMIT_S,
                     started_total: Callable[[], int] | None = None) -> None:
        """Turn on Connection: close and wait until the instance is idle (or `limit` seconds pass).

        A server that counts its requests itself passes that count as `started_total` and calls neither
        started() nor finished(): then only the quiet is waited for here (aiohttp's own cleanup waits for the
        requests still running)."""
        self.active = True
        count = started_total or (lambda: self.started_total)
        now = time.monotonic()
        # Whether a request started just before is unknown (no clock per request): quiet is counted from now.
        deadline, seen, last_start = now + limit, count(), now
        while now < deadline:
            if count() != seen:
                seen, last_start = count(), now
            if self.in_flight <= 0 and now - last_start >= quiet:
                return
            await asyncio.sleep(0.05)
            now = time.monotonic()


async def stop_requested() -> int:
    """Wait for SIGTERM or SIGINT (supervisor's and Docker's stop, Ctrl-C); the signal's number."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda s=signum: received.done() or received.set_result(s))
    return await received
