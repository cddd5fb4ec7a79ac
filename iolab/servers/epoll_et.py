"""IO multiplexing with epoll, edge-triggered (EPOLLET): told once per change, so drain until EAGAIN.

With EPOLLET the kernel reports a socket when its state changes (new bytes arrived, buffer space freed),
not while it stays ready. Each wake-up must therefore read until recv() fails with EAGAIN, and accept until
accept() does, or the rest waits for a next edge that may never come. --no-drain reads once per wake-up, to
show that bug: a line longer than one read (or two clients connecting at once) then hangs.
Watching EPOLLIN|EPOLLOUT from the start is fine here: an edge for "writable" comes only when space frees.
"""

import select
import time

from iolab.protocol import (
    GONE,
    WOULD_BLOCK,
    Conn,
    Timers,
    announce,
    command_line,
    listen,
    read_once,
    wake_due,
    write_once,
)

EDGE = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET


def main() -> None:
    args = command_line(__doc__, {
        "--no-drain": {"action": "store_true", "help": "the bug: one read per edge"},
        "--read-size": {"type": int, "default": 64 * 1024, "help": "bytes per recv()"},
    })
    server = listen(args.port, args.host)
    server.setblocking(False)
    epoll = select.epoll()
    epoll.register(server, select.EPOLLIN | select.EPOLLET)
    conns: dict[int, Conn] = {}
    timers = Timers()

    def flush(conn: Conn) -> int:  # send until done or EAGAIN (then an EPOLLOUT edge follows)
        sent = 1
        while conn.outbox and sent > 0:
            sent = write_once(conn)
        return GONE if sent == GONE or conn.finished else WOULD_BLOCK

    def close(fd: int) -> None:
        epoll.unregister(fd)
        conns.pop(fd).sock.close()

    announce(server, "epoll, edge-triggered" + (" (no drain: buggy)" if args.no_drain else ""))
    while True:
        timeout = timers.timeout(time.monotonic())
        events = epoll.poll(-1 if timeout is None else timeout)
        now = time.monotonic()
        for fd, _event in events:  # whatever the edge (in, out, hang-up): read and send what we can
            if fd == server.fileno():
                while True:  # accept every waiting client: this edge will not be reported again
                    try:
                        sock, _ = server.accept()
                    except BlockingIOError:
                        break
                    sock.setblocking(False)
                    conns[sock.fileno()] = Conn(sock)
                    epoll.register(sock, EDGE)
                    if args.no_drain:
                        break
                continue
            if fd not in conns:
                continue
            conn = conns[fd]
            got = read_once(conn, now, timers, args.read_size)
            while got > 0 and not args.no_drain:  # drain: read until EAGAIN (or the client is gone)
                got = read_once(conn, now, timers, args.read_size)
            if got == GONE or flush(conn) == GONE:
                close(fd)
        for conn in wake_due(timers, conns, now):
            if flush(conn) == GONE:
                close(conn.fd)


if __name__ == "__main__":
    main()
