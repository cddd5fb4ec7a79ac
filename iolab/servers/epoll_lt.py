"""IO multiplexing with epoll, level-triggered (the default): register once, then wait for what is ready.

The kernel keeps the interest list (epoll_ctl ADD/MOD/DEL) and a ready list filled by the sockets' own
wake-ups, so one epoll_wait() costs the number of ready sockets, not the number watched: 10,000 idle clients
cost nothing per call. Level-triggered: a socket with unread data is reported again on every wait, so
reading part of it is safe.
"""

import select
import time

from iolab.protocol import Conn, Timers, announce, command_line, listen, on_ready, wake_due

READ, WRITE, GONE_EVENTS = select.EPOLLIN, select.EPOLLOUT, select.EPOLLHUP | select.EPOLLERR


def main() -> None:
    args = command_line(__doc__)
    server = listen(args.port, args.host)
    server.setblocking(False)
    epoll = select.epoll()
    epoll.register(server, select.EPOLLIN)
    conns: dict[int, Conn] = {}
    timers = Timers()

    def close(fd: int) -> None:
        epoll.unregister(fd)
        conns.pop(fd).sock.close()

    def watch(conn: Conn) -> None:  # EPOLLOUT only while there is something to send, else it fires nonstop
        want = (0 if conn.eof else READ) | (WRITE if conn.outbox else 0)  # after FIN, EPOLLIN would too
        if want != conn.interest:
            epoll.modify(conn.fd, want)
            conn.interest = want

    announce(server, "epoll, level-triggered")
    while True:
        timeout = timers.timeout(time.monotonic())
        events = epoll.poll(-1 if timeout is None else timeout)
        now = time.monotonic()
        for fd, event in events:
            if fd == server.fileno():
                try:
                    sock, _ = server.accept()  # one per wake-up: still ready? the next wait says so again
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                conn = conns[sock.fileno()] = Conn(sock)
                epoll.register(sock, READ)
                conn.interest = READ
                continue
            if fd not in conns:
                continue
            if on_ready(conns[fd], now, timers, event & READ, event & WRITE, hangup=event & GONE_EVENTS):
                watch(conns[fd])
            else:  # EPOLLHUP/EPOLLERR: reset or fully closed, nobody left to answer; or read/write said GONE
                close(fd)
        for conn in wake_due(timers, conns, now):
            watch(conn)


if __name__ == "__main__":
    main()
