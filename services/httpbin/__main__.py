"""Run httpbin with aiohttp's own server: python -m services.httpbin --bind HOST:PORT."""

from __future__ import annotations

import argparse
import logging
import os

from aiohttp import web

from services.httpbin.app import AccessLogger, create_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", default=os.environ.get("HTTPBIN_BIND", "127.0.0.1:8003"))
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(process)d %(message)s")
    # keepalive_timeout (75 s) outlives nginx's upstream keepalive_timeout (60 s): nginx closes idle first.
    web.run_app(
        create_app(), host=host, port=int(port), access_log_class=AccessLogger,
        keepalive_timeout=75, backlog=2048, print=None,
    )


if __name__ == "__main__":
    main()
