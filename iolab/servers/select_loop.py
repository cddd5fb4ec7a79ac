"""IO multiplexing with select(): one call waits on every socket and says which are ready.

select() takes three sets of descriptor numbers as bitmaps of FD_SETSIZE (1024) bits, copies them into the
kernel and back on every call, and the kernel checks every descriptor up to the highest: the cost of one call
grows with the number watched. A descriptor numbered 1024 or more does not fit the bitmap at all, so this
server refuses such clients with a clear message (CPython's select() would raise ValueError).
"""

import select
import time

from iolab.protocol import Conn, Refusals, Timers, announce, command_line, listen, on_ready, wake_due

FD_SETSIZE = 1024  # glibc's fd_set: a fixed 1024-bit bitmap


def main() -> None:
    args = command_line(__doc__)
    server = listen(args.port, args.host)
    server.setblocking(False)
    conns: dict[int, Conn] = {}
    timers = Timers()
    refusals = Refusals("select() limit: fd >= FD_SETSIZE 1024")
    announce(server, "select()")
    while True:
        readers = [server.fileno(), *(fd for fd, conn in conns.items() if not conn.eof)]
        writers = [fd for fd, conn in conns.items() if conn.outbox]
        readable, writable, _ = select.select(readers, writers, [], timers.timeout(time.monotonic()))
        now = time.monotonic()
        for fd in readable:
            if fd == server.fileno():
                try:
                    sock, _ = server.accept()
                except BlockingIOError:
                    continue
                if sock.fileno() >= FD_SETSIZE:
                    refusals.refuse(sock, f"select() cannot watch fd {sock.fileno()}: FD_SETSIZE is {FD_SETSIZE}")
                    continue
                sock.setblocking(False)
                conns[sock.fileno()] = Conn(sock)
            elif fd in conns and not on_ready(conns[fd], now, timers, readable=True, writable=False):
                conns.pop(fd).sock.close()
        wake_due(timers, conns, now)
        for fd in writable:
            if fd in conns and not on_ready(conns[fd], now, timers, readable=False, writable=True):
                conns.pop(fd).sock.close()


if __name__ == "__main__":
    main()
