"""What the three socket servers share: where to listen, logging, and stopping on SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from collections.abc import Callable
from typing import Protocol

from stack.topology import SERVICES

# How often each server's loop looks up from its wait to notice a stop request (and the echo server, idlers).
POLL_S = 0.2


def parse_bind(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "0.0.0.0", int(port)


def command_line(service_name: str, doc: str, argv: list[str] | None = None,
                 extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """--bind HOST:PORT, defaulting to $BIND_HOST (127.0.0.1; 0.0.0.0 in a container) and the service's port
    from the topology."""
    (service,) = [s for s in SERVICES if s.name == service_name]
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bind", type=parse_bind,
                        default=(os.environ.get("BIND_HOST", "127.0.0.1"), service.port), help="HOST:PORT")
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(process)d %(message)s")
    return args


class Server(Protocol):
    def serve_forever(self) -> None: ...
    def shutdown(self) -> None: ...


def serve_until_signalled(server: Server) -> None:
    """Serve until SIGTERM or SIGINT; the server's loop notices shutdown() within its short wait."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.shutdown())
    server.serve_forever()
