"""Stopping an instance without losing a request: the asyncio services' SIGTERM (gunicorn's gevent worker does
the same by itself).

nginx keeps idle connections to every instance in its pool. Closing one of those at the moment nginx sends a
request on it loses that request (nginx retries a GET on another instance, but never a POST). So a stopping
instance, on SIGTERM:
1. stops listening: nginx's next new connection is refused, and nginx takes the instance out of rotation
   (max_fails) and retries that request elsewhere;
2. keeps serving the connections it has, answering each request with `Connection: close`, so nginx retires
   every pooled connection after one more response instead of racing our close;
3. once no request is in flight and none has started for QUIET_S (nginx has stopped sending here), or after
   LIMIT_S, closes what is left and exits.
"""

from __future__ import annotations

import asyncio
import signal
import time

QUIET_S = 1.0
LIMIT_S = 20.0  # as gunicorn's graceful_timeout; supervisor and Compose wait 25 s before SIGKILL


class Drain:
    def __init__(self) -> None:
        self.active = False  # once True, every response closes its connection
        self.in_flight = 0
        self.last_start = 0.0

    def started(self) -> None:
        self.in_flight += 1
        self.last_start = time.monotonic()

    def finished(self) -> None:
        self.in_flight -= 1

    async def settle(self, quiet: float = QUIET_S, limit: float = LIMIT_S) -> None:
        """Turn on Connection: close and wait until the instance is idle (or `limit` seconds pass)."""
        self.active = True
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.in_flight <= 0 and time.monotonic() - self.last_start >= quiet:
                return
            await asyncio.sleep(0.05)


async def stop_requested() -> int:
    """Wait for SIGTERM or SIGINT (supervisor's and Docker's stop, Ctrl-C); the signal's number."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda s=signum: received.done() or received.set_result(s))
    return await received
