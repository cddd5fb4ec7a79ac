"""A bare aiohttp hello world: the reference for httpbin's own overhead (same server settings)."""

import sys

from aiohttp import web


async def plaintext(request: web.Request) -> web.Response:
    return web.Response(text="Hello, World!")


async def hello_json(request: web.Request) -> web.Response:
    return web.json_response({"message": "Hello, World!"})


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/bare/plaintext", plaintext)
    app.router.add_get("/bare/json", hello_json)
    return app


if __name__ == "__main__":
    # httpbin's own server settings (services/httpbin/__main__.py) minus its access log.
    web.run_app(create_app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, keepalive_timeout=75,
                backlog=2048, print=None)
