"""The lab's servers, one file per IO model, and the one table that says how to start each and what it shows.

Every server speaks iolab.protocol's line echo and is started as `python -m iolab.servers.<module> --port N`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

# The seed's five IO models (Stevens, UNIX Network Programming, ch. 6).
BLOCKING, NONBLOCKING, MULTIPLEXING, SIGNAL_DRIVEN, ASYNCHRONOUS = (
    "blocking", "non-blocking", "IO multiplexing", "signal-driven", "asynchronous")


def io_uring_unavailable() -> str | None:
    """Why io_uring cannot run here, or None when it can: set up a real ring and tear it down."""
    try:
        import liburing
    except ImportError as error:
        return f"PyPI liburing is not installed ({error})"
    try:
        ring = liburing.Ring()
        liburing.io_uring_queue_init(8, ring)
        liburing.io_uring_queue_exit(ring)
    except OSError as error:
        try:
            with open("/proc/sys/kernel/io_uring_disabled") as setting:
                disabled = f"; sysctl kernel.io_uring_disabled = {setting.read().strip()}"
        except OSError:
            disabled = ""
        return f"io_uring_queue_init failed: {error}{disabled}"
    return None


def module_missing(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            __import__(name)
        except ImportError as error:
            return f"{name} is not installed ({error})"
        return None
    return check


@dataclass(frozen=True)
class LabServer:
    name: str
    module: str  # iolab.servers.<module>
    model: str  # one of the five IO models
    mechanism: str  # how it waits, in a few words
    args: tuple[str, ...] = ()
    # Clients that each server is built to hold, at most: past it the lab does not run the cell and says why.
    max_clients: int | None = None
    limit_reason: str = ""
    unavailable: Callable[[], str | None] = lambda: None  # a reason it cannot run on this machine, or None

    def argv(self, port: int, host: str = "127.0.0.1") -> list[str]:
        return [sys.executable, "-m", f"iolab.servers.{self.module}", "--host", host, "--port", str(port),
                *self.args]


LAB_SERVERS: tuple[LabServer, ...] = (
    LabServer("blocking", "blocking", BLOCKING, "recv() blocks; one client at a time"),
    LabServer("threads", "threads", BLOCKING, "a thread per connection, each blocking"),
    LabServer("fork", "fork", BLOCKING, "a process per connection (fork)", max_clients=1000,
              limit_reason="a Python process per client (~0.6 MiB each here): 10,000 would need ~6 GiB"),
    LabServer("threadpool", "threadpool", BLOCKING, "64 threads take clients from a queue"),
    LabServer("busyloop", "busyloop", NONBLOCKING, "non-blocking sockets polled in a loop (EAGAIN)"),
    LabServer("select", "select_loop", MULTIPLEXING, "select(): bitmaps, O(n) per call"),
    LabServer("poll", "poll_loop", MULTIPLEXING, "poll(): an array, O(n) per call"),
    LabServer("epoll-lt", "epoll_lt", MULTIPLEXING, "epoll, level-triggered: O(ready) per call"),
    LabServer("epoll-et", "epoll_et", MULTIPLEXING, "epoll, edge-triggered: drain until EAGAIN"),
    LabServer("selectors", "selectors_loop", MULTIPLEXING, "selectors.DefaultSelector (epoll here)"),
    LabServer("sigio", "sigio", SIGNAL_DRIVEN, "SIGIO (O_ASYNC, F_SETOWN), then try every socket"),
    LabServer("io_uring", "uring", ASYNCHRONOUS, "io_uring: submit recv/send, reap completions",
              unavailable=io_uring_unavailable),
    LabServer("gevent", "gevent_server", MULTIPLEXING, "greenlets on libev (epoll), monkey-patched blocking code",
              unavailable=module_missing("gevent")),
    LabServer("asyncio", "asyncio_server", MULTIPLEXING, "coroutines on asyncio's selector loop (epoll)"),
    LabServer("uvloop", "asyncio_server", MULTIPLEXING, "the same coroutines on uvloop (libuv, epoll)",
              args=("--uvloop",), unavailable=module_missing("uvloop")),
)
BY_NAME = {server.name: server for server in LAB_SERVERS}
