"""The lab's load driver: N connections to one lab server, A of them active, the rest idle; prints JSON.

    python -m iolab.driver --port P --pid PID --connections 1000 --active 10 --size 1024 --seconds 2

Phases, each bounded in time: connect all N; send one short line on each and wait for its echo (a client
whose line comes back is "served"; a blocking server leaves the others unanswered, which is what it does);
measure the server's memory with every served client held; then the active clients send `--size`-byte lines
in a closed loop (send, wait for the whole echo, send again) for a warm-up and a measured window. Finally
every connection is aborted (RST), so that runs do not pile up TIME-WAIT sockets on loopback.

The driver runs on uvloop (asyncio's loop when uvloop is missing), in its own process: its CPU use is
reported beside the server's, because on a small machine the driver can be the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter
from pathlib import Path

import psutil

from iolab.protocol import raise_fd_limit

CONNECT_TIMEOUT_S = 5.0
CONNECT_PARALLEL = 500  # connects in flight at once: more only overflows the listen backlog sooner


class Client(asyncio.Protocol):
    """One connection: send a line, wait for exactly that line back."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.inbox = bytearray()
        self.expected = b""
        self.waiter: asyncio.Future | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.inbox += data
        whole = len(self.inbox) >= len(self.expected) or (self.inbox.startswith(b"ERR ") and b"\n" in self.inbox)
        if whole and self.waiter and not self.waiter.done():
            self.waiter.set_result(bytes(self.inbox))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter and not self.waiter.done():
            reply = bytes(self.inbox)
            self.waiter.set_exception(ServerRefused(reply) if reply.startswith(b"ERR ") else
                                      ConnectionResetError("closed by the server"))
        self.transport = None

    async def echo(self, line: bytes, timeout: float) -> None:
        """Send `line` and wait for it to come back whole; raises on a wrong reply, a close or a timeout."""
        if self.transport is None:
            raise ConnectionResetError("closed by the server")
        self.inbox.clear()
        self.expected = line
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(line)
        reply = await asyncio.wait_for(self.waiter, timeout)
        if reply.startswith(b"ERR "):
            raise ServerRefused(reply)
        if reply != line:
            raise ValueError(f"wrong echo: {reply[:40]!r}")

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class ServerRefused(Exception):
    """The server answered `ERR ...` (select's FD_SETSIZE, fork's --max-children) instead of the echo."""

    def __init__(self, reply: bytes) -> None:
        super().__init__(reply.decode(errors="replace").strip())


def error_name(error: BaseException) -> str:
    if isinstance(error, ServerRefused):
        return str(error)
    if isinstance(error, TimeoutError):
        return "no answer (timeout)"
    return type(error).__name__


def server_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def server_memory_mb(pid: int) -> float:
    """RSS of a one-process server; for a process tree (fork) the sum of PSS, which shares the pages the
    processes share instead of counting them once per process."""
    total = 0
    procs = server_tree(pid)
    for proc in procs:
        try:
            total += proc.memory_full_info().pss if len(procs) > 1 else proc.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def _runtime_s(pid: int) -> float:
    """CPU seconds the process's live threads have run, from the scheduler's exact count (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def server_cpu_s(pid: int) -> float:
    """CPU seconds of the server and its children, the exited (reaped) ones included. Per process the larger
    of two counts: utime+stime are sampled at timer ticks and read 0 for a thousand forked children that
    each run in short bursts; schedstat is exact but forgets threads that have exited."""
    total = 0.0
    for index, proc in enumerate(server_tree(pid)):
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += max(times.user + times.system, _runtime_s(proc.pid))
        if index == 0:
            total += times.children_user + times.children_system
    return total


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(host: str, port: int, pid: int, connections: int, active: int, size: int, warmup_s: float,
              seconds: float, timeout: float) -> dict:
    loop = asyncio.get_running_loop()
    errors: Counter[str] = Counter()
    baseline_mb = server_memory_mb(pid)

    gate = asyncio.Semaphore(CONNECT_PARALLEL)

    async def connect() -> Client | None:
        async with gate:
            try:
                _, client = await loop.create_connection(Client, host, port)
                return client
            except OSError as error:
                errors[f"connect: {error_name(error)}"] += 1
                return None

    # One deadline for all connects: past a full listen backlog the kernel drops SYNs and each connect()
    # retries for a minute; those clients count as not connected.
    started = time.monotonic()
    attempts = [asyncio.ensure_future(connect()) for _ in range(connections)]
    _, late = await asyncio.wait(attempts, timeout=CONNECT_TIMEOUT_S)
    for attempt in late:
        attempt.cancel()
    if late:
        errors["connect: no answer (timeout)"] += len(late)
        await asyncio.gather(*late, return_exceptions=True)
    clients = [c for attempt in attempts if not attempt.cancelled() and (c := attempt.result()) is not None]
    connect_s = time.monotonic() - started

    async def ping(client: Client) -> bool:
        try:
            await client.echo(b"ping\n", timeout)
            return True
        except Exception as error:  # noqa: BLE001 - every failure is a finding
            errors[f"first line: {error_name(error)}"] += 1
            return False

    served_flags = await asyncio.gather(*(ping(client) for client in clients))
    served = [client for client, ok in zip(clients, served_flags, strict=True) if ok]
    await asyncio.sleep(0.2)
    held_mb = server_memory_mb(pid)

    # The active clients, spread over the connection order, among those the server answered.
    step = max(1, len(clients) // max(active, 1))
    chosen = [client for client, ok in list(zip(clients, served_flags, strict=True))[::step] if ok][:active]
    line = b"x" * (size - 1) + b"\n"
    latencies: list[float] = []
    measuring = False
    stop_at = time.monotonic() + warmup_s + seconds

    async def work(client: Client) -> None:
        while time.monotonic() < stop_at:
            sent = time.perf_counter()
            try:
                await client.echo(line, timeout)
            except Exception as error:  # noqa: BLE001
                errors[f"request: {error_name(error)}"] += 1
                return
            if measuring:
                latencies.append(time.perf_counter() - sent)

    me = psutil.Process()
    workers = [asyncio.ensure_future(work(client)) for client in chosen]
    await asyncio.sleep(warmup_s)
    measuring = True
    cpu_server, cpu_driver, window = server_cpu_s(pid), sum(me.cpu_times()[:2]), time.monotonic()
    await asyncio.sleep(seconds)
    measuring = False
    elapsed = time.monotonic() - window
    server_cpu = (server_cpu_s(pid) - cpu_server) / elapsed
    driver_cpu = (sum(me.cpu_times()[:2]) - cpu_driver) / elapsed
    requests = len(latencies)
    await asyncio.gather(*workers)
    for client in clients:
        client.abort()
    return {
        "connections": connections, "connected": len(clients), "connect_s": round(connect_s, 3),
        "served": len(served), "active": len(chosen), "size": size,
        "baseline_mb": round(baseline_mb, 2), "held_mb": round(held_mb, 2),
        "kib_per_connection": round((held_mb - baseline_mb) * 1024 / len(served), 2) if served else None,
        "requests": requests, "rps": round(requests / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3) if latencies else None,
        "server_cpu": round(server_cpu, 3), "driver_cpu": round(driver_cpu, 3),
        "errors": dict(errors),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="the server's process, for its memory and CPU")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--active", type=int, default=10)
    parser.add_argument("--size", type=int, default=1024, help="bytes per line, newline included")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for one echo")
    args = parser.parse_args(argv)
    raise_fd_limit()
    coroutine = run(args.host, args.port, args.pid, args.connections, args.active, args.size, args.warmup,
                    args.seconds, args.timeout)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coroutine)
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(coroutine)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
