"""A bare Tornado hello world: the reference for catalog's own overhead (one process per core, reuse-port)."""

import asyncio
import sys

import tornado.netutil
import tornado.process
import tornado.web


class Plaintext(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        self.write("Hello, World!")


class Json(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"message": "Hello, World!"})


async def serve(port: int) -> None:
    app = tornado.web.Application([("/bare/plaintext", Plaintext), ("/bare/json", Json)])
    # catalog's own server settings (services/catalog/__main__.py).
    server = tornado.httpserver.HTTPServer(app, idle_connection_timeout=75)
    server.add_sockets(tornado.netutil.bind_sockets(port, "127.0.0.1", reuse_port=True, backlog=2048))
    await asyncio.Event().wait()


if __name__ == "__main__":
    import tornado.httpserver

    port, processes = int(sys.argv[1]), int(sys.argv[2])
    if processes > 1:
        tornado.process.fork_processes(processes)
    asyncio.run(serve(port))
