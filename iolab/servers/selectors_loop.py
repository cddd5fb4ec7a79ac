"""IO multiplexing through the standard library's `selectors`: the epoll server, portable.

selectors.DefaultSelector picks the best mechanism the platform has (epoll on Linux, kqueue on BSD and
macOS, then devpoll, poll, select) behind one register/modify/unregister/select API, and keeps a Python
object (here the Conn) with each registration. asyncio's event loop is built on it.
"""

import selectors
import time

from iolab.protocol import Conn, Timers, announce, command_line, listen, on_ready, wake_due

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


def main() -> None:
    args = command_line(__doc__)
    server = listen(args.port, args.host)
    server.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ, data=None)
    conns: dict[int, Conn] = {}
    timers = Timers()

    def close(conn: Conn) -> None:
        if conn.interest:
            selector.unregister(conn.sock)
        del conns[conn.fd]
        conn.sock.close()

    def watch(conn: Conn) -> None:  # selectors cannot watch for nothing: unregister while waiting on a timer
        want = (0 if conn.eof else READ) | (WRITE if conn.outbox else 0)
        if want == conn.interest:
            return
        if not want:
            selector.unregister(conn.sock)
        elif not conn.interest:
            selector.register(conn.sock, want, data=conn)
        else:
            selector.modify(conn.sock, want, data=conn)
        conn.interest = want

    announce(server, f"selectors.DefaultSelector = {type(selector).__name__}")
    while True:
        ready = selector.select(timers.timeout(time.monotonic()))
        now = time.monotonic()
        for key, events in ready:
            conn = key.data
            if conn is None:  # the listening socket
                try:
                    sock, _ = server.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                conn = conns[sock.fileno()] = Conn(sock)
                selector.register(sock, READ, data=conn)
                conn.interest = READ
                continue
            if on_ready(conn, now, timers, events & READ, events & WRITE):
                watch(conn)
            else:
                close(conn)
        for conn in wake_due(timers, conns, now):
            watch(conn)


if __name__ == "__main__":
    main()
