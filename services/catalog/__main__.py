"""Run catalog on Tornado's own IOLoop: python -m services.catalog --bind HOST:PORT [--processes N]."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

import tornado.httpserver
import tornado.netutil
import tornado.process

from services.catalog.app import DRAIN, make_app
from services.common import drain


async def serve(host: str, port: int, reuse_port: bool) -> None:
    # No xheaders=True: Tornado would then validate the forwarded address with getaddrinfo() on every request
    # (a sixth of a hello-world request here); the access line reads X-Real-IP itself (log_request).
    server = tornado.httpserver.HTTPServer(make_app(), idle_connection_timeout=75)
    # Each process binds its own SO_REUSEPORT socket so the kernel spreads connections across processes
    # (with one shared socket, one process tends to take them all).
    server.add_sockets(tornado.netutil.bind_sockets(port, host, reuse_port=reuse_port, backlog=2048))
    signum = await drain.stop_requested()
    logging.getLogger("catalog").info("signal %d: draining, then stopping", signum)
    server.stop()  # no new connections
    server.conn_params.no_keep_alive = True  # each request from now on gets Connection: close
    await DRAIN.settle()
    await server.close_all_connections()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default=os.environ.get("CATALOG_BIND", "127.0.0.1:8002"))
    parser.add_argument(
        "--processes", type=int, default=int(os.environ.get("CATALOG_PROCESSES", "1")),
        help="processes to fork (0 = one per core)",
    )
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(process)d %(message)s")
    processes = args.processes or os.cpu_count() or 1
    if processes > 1:
        tornado.process.fork_processes(processes)
    asyncio.run(serve(host, int(port), reuse_port=processes > 1))


if __name__ == "__main__":
    main()
