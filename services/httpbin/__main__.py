"""Run httpbin with aiohttp's own server: python -m services.httpbin --bind HOST:PORT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from aiohttp import web

from services.common import drain, http
from services.httpbin.app import DRAIN, AccessLogger, answer_unparsable_requests_with_problems, create_app
from stack import topology


async def serve(host: str, port: int) -> None:
    answer_unparsable_requests_with_problems()
    # keepalive_timeout (CLIENT_TIMEOUT_S) outlives nginx's upstream keepalive_timeout: nginx closes idle first.
    # It also bounds an unfinished request head; a stalled body is app.py's StalledBodyWatch.
    runner = web.AppRunner(create_app(), access_log_class=AccessLogger, keepalive_timeout=http.client_timeout_s(),
                           handle_signals=False, shutdown_timeout=drain.LIMIT_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    signum = await drain.stop_requested()
    logging.getLogger("httpbin").info("signal %d: draining, then stopping", signum)
    await site.stop()  # no new connections
    # Responses say Connection: close until nginx has gone quiet; cleanup waits for the requests still running.
    await DRAIN.settle(started_total=lambda: runner.server.requests_count)
    await runner.cleanup()  # closes the idle connections, waits for any request still running


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default=os.environ.get("HTTPBIN_BIND") or topology.service("httpbin").default_bind())
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(process)d %(message)s")
    asyncio.run(serve(host, int(port)))


if __name__ == "__main__":
    main()
