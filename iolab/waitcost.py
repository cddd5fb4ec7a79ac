"""The cost of one wait call as the number of idle descriptors it watches grows: select vs poll vs epoll.

    python -m iolab.waitcost            a table
    python -m iolab.waitcost --json     the figures, for `make iolab`

n idle UDP sockets are watched for reading, plus one socket with a datagram waiting, so every call returns
at once with one ready descriptor: what is timed is the call's own work. select() and poll() hand the kernel
every descriptor on every call and the kernel checks each one (select also converts the Python list to a
bitmap and back), so their cost grows with n. epoll keeps the interest list in the kernel between calls and
returns only the ready list, so its cost stays flat. select() cannot take a descriptor numbered 1024 or
more at all: that is reported, not hidden.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import statistics
import time
from collections.abc import Callable

from iolab.protocol import raise_fd_limit

COUNTS = (10, 100, 1000, 5000, 10000)
BATCH_S = 0.01  # time each batch of calls long enough that the clock's own cost does not matter
BATCHES = 7


def per_call_seconds(call: Callable[[], object]) -> float:
    """The median, over BATCHES batches, of one call's time."""
    reps, started = 0, time.perf_counter()
    while time.perf_counter() - started < BATCH_S / 10:  # calibrate: how many calls fill a batch
        call()
        reps += 1
    reps = max(1, reps * 10)
    samples = []
    for _ in range(BATCHES):
        started = time.perf_counter()
        for _ in range(reps):
            call()
        samples.append((time.perf_counter() - started) / reps)
    return statistics.median(samples)


def measure(n: int) -> dict[str, float | str]:
    """Seconds per call for each mechanism with n idle descriptors and one ready one (or why it failed)."""
    idle = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    ready = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    ready.bind(("127.0.0.1", 0))
    ready.sendto(b"!", ready.getsockname())  # one datagram queued: readable until read, which we never do
    fds = [sock.fileno() for sock in idle] + [ready.fileno()]
    results: dict[str, float | str] = {}
    try:
        highest = max(fds)
        if highest >= 1024:
            results["select"] = f"fd {highest} >= FD_SETSIZE 1024: select() cannot watch it"
        else:
            assert select.select(fds, [], [], 0)[0] == [ready.fileno()]
            results["select"] = per_call_seconds(lambda: select.select(fds, [], [], 0))
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        assert len(poller.poll(0)) == 1
        results["poll"] = per_call_seconds(lambda: poller.poll(0))
        with select.epoll() as epoll:
            for fd in fds:
                epoll.register(fd, select.EPOLLIN)
            assert len(epoll.poll(0)) == 1
            results["epoll"] = per_call_seconds(lambda: epoll.poll(0))
    finally:
        for sock in (*idle, ready):
            sock.close()
    return results


def run(counts: tuple[int, ...] = COUNTS) -> dict[str, dict[str, float | str]]:
    """{mechanism: {n: seconds per call, or the reason it could not run}} with n as a string (JSON keys)."""
    limit = raise_fd_limit()
    table: dict[str, dict[str, float | str]] = {"select": {}, "poll": {}, "epoll": {}}
    for n in counts:
        if n + 16 > limit:
            for mechanism in table:
                table[mechanism][str(n)] = f"RLIMIT_NOFILE {limit} is too low for {n} descriptors"
            continue
        for mechanism, value in measure(n).items():
            table[mechanism][str(n)] = value
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    table = run()
    if args.json:
        print(json.dumps(table))
        return
    print(f"{'idle fds':>9} " + "".join(f"{name:>12}" for name in table))
    for n in COUNTS:
        cells = [table[name][str(n)] for name in table]
        print(f"{n:>9} " + "".join(f"{c * 1e6:>10.1f}µs" if isinstance(c, float) else f"{'(FD_SETSIZE)':>12}"
                                   for c in cells))


if __name__ == "__main__":
    main()
