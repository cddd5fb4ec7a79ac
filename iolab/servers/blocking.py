"""Blocking IO, one thread: accept() one client, serve it until it hangs up, then accept the next.

The simplest server and the seed's first IO model: every call waits. While one client is connected, nobody
else is served (the kernel still completes their handshakes into the listen backlog, so they seem connected).
"""

from iolab.protocol import announce, command_line, handle_blocking, listen


def main() -> None:
    args = command_line(__doc__)
    server = listen(args.port, args.host)
    announce(server, "blocking, one client at a time")
    while True:
        conn, _ = server.accept()  # blocks until a client has connected
        handle_blocking(conn)  # blocks until that client is done: the rest wait


if __name__ == "__main__":
    main()
