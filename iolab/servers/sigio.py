"""Signal-driven IO: the kernel sends SIGIO when a socket changes state (O_ASYNC + F_SETOWN).

Each socket is made non-blocking and O_ASYNC, with this process as its owner (F_SETOWN), so the kernel
raises SIGIO whenever any of them gets a connection, data, a FIN or buffer space. The signal is kept blocked
and taken synchronously with sigtimedwait(), which cannot miss one that arrives mid-loop. What SIGIO does
not say is which socket: ordinary signals do not queue and carry no descriptor (F_SETSIG with a real-time
signal would, but Python's siginfo has no si_fd), so every signal means "try them all", and the cost of a
wake-up grows with the number of clients. That is why servers use epoll, and SIGIO suits UDP or few sockets.
"""

import fcntl
import os
import signal
import socket
import time

from iolab.protocol import GONE, Conn, Timers, announce, command_line, listen, read_once, wake_due, write_once


def signal_driven(sock: socket.socket) -> None:
    """fcntl(F_SETOWN, getpid()) and O_ASYNC|O_NONBLOCK: SIGIO to this process on every state change."""
    fcntl.fcntl(sock, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(sock, fcntl.F_SETFL, fcntl.fcntl(sock, fcntl.F_GETFL) | os.O_ASYNC | os.O_NONBLOCK)


def main() -> None:
    args = command_line(__doc__)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGIO})  # pending until sigtimedwait() takes it
    server = listen(args.port, args.host)
    signal_driven(server)
    conns: dict[int, Conn] = {}
    timers = Timers()
    announce(server, "signal-driven (SIGIO)")
    while True:
        timeout = timers.timeout(time.monotonic())
        signal.sigtimedwait({signal.SIGIO}, 3600 if timeout is None else timeout)
        now = time.monotonic()
        while True:  # SIGIO said "something changed": accept everyone waiting...
            try:
                sock, _ = server.accept()
            except BlockingIOError:
                break
            signal_driven(sock)
            conns[sock.fileno()] = Conn(sock)
        wake_due(timers, conns, now)
        for conn in list(conns.values()):  # ...and try every client, since the signal named none
            got = read_once(conn, now, timers)
            while got > 0:
                got = read_once(conn, now, timers)
            while got != GONE and conn.outbox and (sent := write_once(conn)) != 0:
                got = min(got, sent)
            if got == GONE:
                del conns[conn.fd]
                conn.sock.close()


if __name__ == "__main__":
    main()
