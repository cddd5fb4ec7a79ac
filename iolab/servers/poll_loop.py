"""IO multiplexing with poll(): like select(), without the 1024 limit.

poll() takes an array of (descriptor, events) pairs, so any descriptor number works, but the kernel still
walks the whole array on every call: the cost of one wait grows with the number of clients, idle or not.
CPython keeps the array between calls and rebuilds it after register()/modify().
"""

import select
import time

from iolab.protocol import Conn, Timers, announce, command_line, listen, on_ready, wake_due

READ, WRITE, GONE_EVENTS = select.POLLIN, select.POLLOUT, select.POLLHUP | select.POLLERR


def main() -> None:
    args = command_line(__doc__)
    server = listen(args.port, args.host)
    server.setblocking(False)
    poller = select.poll()
    poller.register(server, select.POLLIN)
    conns: dict[int, Conn] = {}
    timers = Timers()

    def close(fd: int) -> None:
        poller.unregister(fd)
        conns.pop(fd).sock.close()

    def watch(conn: Conn) -> None:  # only on a change: each modify() makes CPython rebuild the whole array
        want = (0 if conn.eof else READ) | (WRITE if conn.outbox else 0)
        if want != conn.interest:
            poller.modify(conn.fd, want)
            conn.interest = want

    announce(server, "poll()")
    while True:
        timeout = timers.timeout(time.monotonic())
        events = poller.poll(None if timeout is None else timeout * 1000)  # poll() counts milliseconds
        now = time.monotonic()
        for fd, event in events:
            if fd == server.fileno():
                try:
                    sock, _ = server.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                conn = conns[sock.fileno()] = Conn(sock)
                poller.register(sock, READ)
                conn.interest = READ
                continue
            if fd not in conns:
                continue
            if on_ready(conns[fd], now, timers, event & READ, event & WRITE, hangup=event & GONE_EVENTS):
                watch(conns[fd])
            else:  # POLLHUP/POLLERR: reset or fully closed, nobody left to answer; or read/write said GONE
                close(fd)
        for conn in wake_due(timers, conns, now):
            watch(conn)


if __name__ == "__main__":
    main()
