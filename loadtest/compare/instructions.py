"""Where a request's time goes in the httpbin service, counted rather than timed.

Run: python -m loadtest.compare.instructions [--requests N] [--endpoint json|plaintext] [--connections C]
                                             [--variants bare,httpbin+log]

wrk's requests per second move by ±15 % between runs on a shared 2-core VM, more than the differences this looks
for. Instructions do not: each variant runs under valgrind's callgrind twice, answering N and 6 x N keep-alive
requests sent over C connections at once, and the difference divided by 5 x N is what one more request costs,
startup excluded. The variants add httpbin's parts one at a time to the bare aiohttp app `make compare` uses as
the reference:

  bare          loadtest/bare/aiohttp_app.py, no access log
  bare+log      the same with httpbin's access log (services/httpbin/app.py: AccessLogger)
  httpbin       httpbin's application (request ids, problem documents), no access log
  httpbin+log   httpbin as it runs in the stack

Needs valgrind (Debian: apt-get install valgrind). About 10 minutes for all four.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.compare import wrk
from stack.topology import ROOT, free_port

VARIANTS = ("bare", "bare+log", "httpbin", "httpbin+log")
# As many connections as `make compare`'s wrk: the event loop then handles several requests per wakeup, and its
# own cost per request (epoll_wait, scheduling) shrinks. One client sending one request at a time would pay the
# whole loop per request and make every layer above it look smaller than it is under load.
CONNECTIONS = wrk.CONNECTIONS
# Started under callgrind: the bare app or httpbin's, with or without httpbin's access log, on one port.
SERVER = """
import sys
from aiohttp import web
from loadtest.bare.aiohttp_app import create_app as bare_app
from services.httpbin.app import AccessLogger, create_app
variant, port, database = sys.argv[1], int(sys.argv[2]), sys.argv[3]
app = bare_app() if variant.startswith("bare") else create_app(database)
log = {"access_log_class": AccessLogger} if variant.endswith("+log") else {"access_log": None}
web.run_app(app, host="127.0.0.1", port=port, keepalive_timeout=75, print=None, **log)
"""


def send(port: int, path: str, count: int, connections: int = 1) -> None:
    """`count` GETs over `connections` keep-alive connections at once, each sending its share one after another
    and reading each answer whole."""
    if connections > 1:
        with concurrent.futures.ThreadPoolExecutor(connections) as pool:
            shares = [count // connections + (i < count % connections) for i in range(connections)]
            for done in [pool.submit(send, port, path, share) for share in shares]:
                done.result()
        return
    deadline = time.monotonic() + 120  # startup under valgrind is slow
    while True:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=60)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    request, buffer = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), b""
    with sock:
        for _ in range(count):
            sock.sendall(request)
            while True:
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    length = int(re.search(rb"content-length: *(\d+)", buffer[:end].lower()).group(1))
                    if len(buffer) >= end + 4 + length:
                        buffer = buffer[end + 4 + length:]
                        break
                buffer += sock.recv(65536)


def instructions(variant: str, endpoint: str, count: int, connections: int, workdir: Path) -> int:
    """Instructions the server process executed from start to exit, having answered `count` requests."""
    port = free_port()
    path = f"/{'bare' if variant.startswith('bare') else 'httpbin'}/{endpoint}"
    log = workdir / f"{variant}-{count}.log"
    with log.open("w") as errors:
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir / f'{variant}-{count}.out'}",
             sys.executable, "-c", SERVER, variant, str(port), str(workdir / "httpbin.sqlite3")],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            send(port, path, count, connections)
        finally:
            server.send_signal(2)  # SIGINT: run_app stops cleanly, callgrind writes its totals
            server.wait(timeout=120)
    return int(re.search(r"Collected : (\d+)", log.read_text()).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="N: the runs answer N and 6 x N requests")
    parser.add_argument("--endpoint", choices=("json", "plaintext"), default="json")
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="concurrent keep-alive clients")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="a comma-separated subset of "
                        + ", ".join(VARIANTS))
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind: apt-get install valgrind")
    per_request = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in variants:
            small = instructions(variant, args.endpoint, args.requests, args.connections, Path(tmp))
            large = instructions(variant, args.endpoint, 6 * args.requests, args.connections, Path(tmp))
            per_request[variant] = (large - small) / (5 * args.requests)
            print(f"{variant:<12} {per_request[variant]:>9,.0f} instructions per request", flush=True)
    if set(per_request) != set(VARIANTS):
        return  # the comparisons below need every variant
    bare = per_request["bare"]
    print(f"\naccess log      {per_request['bare+log'] - bare:>+9,.0f}  ({(per_request['bare+log'] / bare - 1):+.1%})")
    print(f"httpbin's layer {per_request['httpbin'] - bare:>+9,.0f}  ({(per_request['httpbin'] / bare - 1):+.1%})")
    print(f"httpbin as run: {bare / per_request['httpbin+log']:.0%} of the bare app's requests per instruction")


if __name__ == "__main__":
    main()
