"""Greenlets on an event loop (gevent): the thread-per-connection server, monkey-patched.

monkey.patch_all() swaps socket, time.sleep and friends for cooperative versions: a recv() with no data
parks the greenlet and switches to the hub, whose loop (libev; epoll on Linux) wakes it when data arrives.
The blocking code is unchanged, the IO model underneath is multiplexing.
"""

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402

from iolab.protocol import announce, command_line, handle_blocking, listen  # noqa: E402


def main() -> None:
    args = command_line(__doc__)
    server = listen(args.port, args.host)
    announce(server, f"gevent greenlets, hub loop backend {gevent.get_hub().loop.backend}")
    while True:
        conn, _ = server.accept()  # parks this greenlet until a client connects
        gevent.spawn(handle_blocking, conn)


if __name__ == "__main__":
    main()
