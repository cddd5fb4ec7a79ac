"""Run catalog on Tornado's own IOLoop: python -m services.catalog --bind HOST:PORT [--processes N]."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from asyncio import Future

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.process

from services.catalog.app import DRAIN, make_app
from services.common import drain, http, metrics
from stack import topology

# What Tornado writes, then closes, for bytes it cannot parse as a request (http1connection.py: _read_message).
TORNADOS_BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"


class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's server, answering an unparsable request with the stack's problem document instead of a bare
    400 without a body. Tornado has no hook there, so each connection's stream swaps that one write."""

    def handle_stream(self, stream: tornado.iostream.IOStream, address: tuple) -> None:
        write = stream.write

        def write_problem_for_bare_400(data: bytes | memoryview) -> Future[None]:
            if len(data) == len(TORNADOS_BARE_400) and data == TORNADOS_BARE_400:
                data = http.unparsable_request_reply(400, "the request could not be parsed as HTTP/1.1")
            return write(data)

        stream.write = write_problem_for_bare_400  # type: ignore[method-assign]
        super().handle_stream(stream, address)


async def serve(host: str, port: int, reuse_port: bool) -> None:
    # No xheaders=True: Tornado would then validate the forwarded address with getaddrinfo() on every request
    # (a sixth of a hello-world request here); the access line reads X-Real-IP itself (log_request).
    # A silent client is dropped after CLIENT_TIMEOUT_S whether it is idle, mid-head or mid-body (Tornado's own
    # default waits an hour for a head and forever for a body).
    timeout = http.client_timeout_s()
    server = HTTPServer(make_app(), idle_connection_timeout=timeout, body_timeout=timeout)
    # Each process binds its own SO_REUSEPORT socket so the kernel spreads connections across processes
    # (with one shared socket, one process tends to take them all).
    server.add_sockets(tornado.netutil.bind_sockets(port, host, reuse_port=reuse_port, backlog=2048))
    lag = asyncio.create_task(metrics.sample_loop_lag())  # Tornado's IOLoop is asyncio's: one sampler fits both
    signum = await drain.stop_requested()
    lag.cancel()
    logging.getLogger("catalog").info("signal %d: draining, then stopping", signum)
    server.stop()  # no new connections
    server.conn_params.no_keep_alive = True  # each request from now on gets Connection: close
    await DRAIN.settle()
    await server.close_all_connections()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default=os.environ.get("CATALOG_BIND") or topology.service("catalog").default_bind())
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
