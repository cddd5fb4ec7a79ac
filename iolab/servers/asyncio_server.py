"""Coroutines on asyncio's event loop (or on uvloop's, with --uvloop): the blocking code, with `await`.

Each client gets a coroutine that reads a line and writes it back; `await` hands control to the loop while
the socket has nothing to read. The default loop is a selectors loop (epoll here) written in Python;
uvloop is a drop-in loop on libuv (epoll too), written in Cython, that users reach for when asyncio's own
loop is the bottleneck.
"""

import asyncio

from iolab.protocol import BACKLOG, MAX_LINE, announce, command_line, delay_of


async def serve_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readuntil(b"\n"):  # parks this coroutine until a whole line has arrived
            if wait := delay_of(line):
                await asyncio.sleep(wait)  # a timer on the loop: other clients are served meanwhile
            writer.write(line)
            await writer.drain()  # waits only when the socket's buffer is full (flow control)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(host: str, port: int, loop_name: str) -> None:
    server = await asyncio.start_server(serve_client, host, port, limit=MAX_LINE, backlog=BACKLOG)
    loop = asyncio.get_running_loop()
    selector = getattr(loop, "_selector", None)
    announce(server.sockets[0], f"{loop_name}: {type(loop).__module__}.{type(loop).__name__}"
             + (f" on {type(selector).__name__}" if selector else ""))
    await server.serve_forever()


if __name__ == "__main__":
    args = command_line(__doc__, {"--uvloop": {"action": "store_true", "help": "run on uvloop's loop"}})
    if args.uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main(args.host, args.port, "uvloop"))
    else:
        asyncio.run(main(args.host, args.port, "asyncio"))
