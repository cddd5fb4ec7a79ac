"""Non-blocking IO, no readiness API: ask every socket again and again, and take EAGAIN for "not yet".

Every socket is set non-blocking, so accept(), recv() and send() return at once: with data, or failing with
EAGAIN/EWOULDBLOCK (BlockingIOError in Python). With nothing telling it which socket is ready, the loop
polls them all, forever: it answers quickly and burns a whole core while nobody is talking. The count of
EAGAINs is printed every five seconds.
"""

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
    say,
    wake_due,
    write_once,
)


def main() -> None:
    args = command_line(__doc__)
    server = listen(args.port, args.host)
    server.setblocking(False)
    conns: dict[int, Conn] = {}
    timers = Timers()
    eagain, reported = 0, time.monotonic()
    announce(server, "non-blocking, busy loop")
    while True:
        now = time.monotonic()
        try:
            sock, _ = server.accept()
            sock.setblocking(False)
            conns[sock.fileno()] = Conn(sock)
        except BlockingIOError:  # errno EAGAIN (== EWOULDBLOCK on Linux): no client waiting
            eagain += 1
        wake_due(timers, conns, now)
        for conn in list(conns.values()):
            got = read_once(conn, now, timers)
            eagain += got == WOULD_BLOCK
            if got != GONE and conn.outbox:
                sent = write_once(conn)
                eagain += sent == WOULD_BLOCK
                got = min(got, sent)
            if got == GONE:
                del conns[conn.fd]
                conn.sock.close()
        if now - reported >= 5:
            say(f"EAGAIN {eagain / (now - reported):,.0f}/s with {len(conns)} clients")
            eagain, reported = 0, now


if __name__ == "__main__":
    main()
