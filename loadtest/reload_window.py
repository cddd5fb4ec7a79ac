"""What an nginx reload costs a plain HTTP/1.1 client on kept-alive connections, and what a careful one loses.

    python -m loadtest.reload_window [--connections 8] [--seconds 20] [--reloads 5] [--path /web/plaintext]

Each of `connections` threads holds one kept-alive connection to nginx and sends GETs back to back for `seconds`,
while nginx is reloaded `reloads` times (evenly spread). On a reload the old workers finish the requests in
progress (their answers say Connection: close) and close every idle kept-alive connection at once: HTTP/1.1 has
no way to tell an idle client first (HTTP/2 has GOAWAY). A client that sends its next request in the instant
between that close and the FIN reaching it gets no answer at all, the request never read: RFC 9112 9.3.1 and
RFC 9110 9.2.2 let it resend an idempotent request then, and browsers, urllib3/requests and curl do.

Two clients run side by side, each on half the connections, with the same load:
- plain: http.client with no retry at all (the issue's "client that does not retry"): each such loss is counted;
- retrying: the same, but a GET that got no byte of an answer on a reused connection is sent once more on a new
  one (what RFC 9112 allows), so it should lose nothing.
Every failure is classified: "unanswered on a reused connection" (retry-safe: nothing was processed) or anything
else (a reset mid-answer, a 5xx, a wrong body), which is a real loss for either client.

Bounded: loopback only, a fixed run time, each request with a 10 s timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from deploy.stack import choose_mode, driver
from stack.topology import Site

UNANSWERED = "unanswered on a reused connection"  # the request was sent; no byte came back, the peer closed


@dataclass
class Tally:
    requests: int = 0
    retried: int = 0
    failures: Counter[str] = field(default_factory=Counter)


def lost(report: dict, client: str) -> int:
    """The requests one client lost (failures of any kind)."""
    return sum(report[client]["failures"].values())


def _one_request(conn: http.client.HTTPConnection, path: str) -> tuple[str | None, bool]:
    """Send one GET; (failure kind or None, whether the connection can be kept)."""
    try:
        conn.request("GET", path, headers={"User-Agent": "reload-window/1"})
        response = conn.getresponse()
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        return UNANSWERED, False  # closed (FIN or RST) before the status line: nothing of an answer came
    except (OSError, http.client.HTTPException) as error:
        return type(error).__name__, False
    try:
        body = response.read()
    except (OSError, http.client.HTTPException) as error:
        return f"cut mid-answer ({type(error).__name__})", False
    if response.status >= 500 or not body:
        return f"status {response.status}", False
    return None, not response.will_close


def client(site: Site, path: str, retrying: bool, until: list[float], tally: Tally, lock: threading.Lock) -> None:
    """Send GETs until the monotonic time in until[0] (which the caller may move) passes, tallying each."""
    conn: http.client.HTTPConnection | None = None
    reused = False
    while time.monotonic() < until[0]:
        if conn is None:
            conn, reused = http.client.HTTPConnection(site.public_host, site.public_port, timeout=10), False
        failure, keep = _one_request(conn, path)
        retried = False
        if failure == UNANSWERED and reused and retrying:
            conn.close()
            conn, reused = http.client.HTTPConnection(site.public_host, site.public_port, timeout=10), False
            failure, keep = _one_request(conn, path)  # a second loss here is on a new connection: no excuse
            retried = True
        if failure == UNANSWERED and not reused:
            failure = "unanswered on a new connection"  # not the reload's race: nothing excuses it
        with lock:
            tally.requests += 1
            tally.retried += retried
            if failure:
                tally.failures[failure] += 1
        if keep:
            reused = True
        else:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()


@contextlib.contextmanager
def clients_running(site: Site, connections: int, path: str) -> Iterator[dict]:
    """Both clients, half the connections each, sending GETs until the block ends; then the dict yielded holds
    each client's tally ("plain", "retrying": requests, retried, failures by kind)."""
    tallies = {"plain": Tally(), "retrying": Tally()}
    report: dict = {}
    lock = threading.Lock()
    stop = [float("inf")]
    kinds = ["plain", "retrying"] * max(1, connections // 2)
    threads = [threading.Thread(target=client, args=(site, path, kind == "retrying", stop, tallies[kind], lock),
                                daemon=True) for kind in kinds]
    for thread in threads:
        thread.start()
    try:
        yield report
    finally:
        stop[0] = time.monotonic()
        for thread in threads:
            thread.join(timeout=30)
        report.update({kind: {"requests": t.requests, "retried": t.retried, "failures": dict(t.failures)}
                       for kind, t in tallies.items()})


def measure(site: Site, connections: int, seconds: float, reloads: int, path: str,
            reload: Callable[[], object] | None = None) -> dict:
    """Run both clients for `seconds`, reloading nginx `reloads` times (with `reload`, else this site's driver)."""
    reload = reload or driver(choose_mode(None, site), site).reload
    with clients_running(site, connections, path) as report:
        for _ in range(reloads):
            time.sleep(seconds / (reloads + 1))
            reload()
        time.sleep(seconds / (reloads + 1))
    return report | {"reloads": reloads, "seconds": seconds, "connections": connections, "path": path}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--path", default="/web/plaintext")
    args = parser.parse_args()
    report = measure(Site.from_env(), max(2, min(args.connections, 64)), min(args.seconds, 300), args.reloads,
                     args.path)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
