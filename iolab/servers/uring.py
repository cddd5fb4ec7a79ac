"""Asynchronous IO with io_uring: ask the kernel to do the IO, and collect the results when done.

The other servers ask "is it ready?" and then do the read themselves. Here the server queues whole
operations (accept, recv into this buffer, send these bytes) as submission queue entries, and the kernel
performs them and posts completion queue entries with their results: the seed's fifth model, where the
process is told when the IO is finished, not when it may start. One io_uring_enter() both submits and
waits. The cost: every pending recv owns its buffer until data arrives (RECV_BUFFER bytes per idle
client), unlike readiness-based servers that allocate only when there is data to read.

Needs Linux >= 5.6 with io_uring allowed (sysctl kernel.io_uring_disabled = 0) and PyPI's `liburing`.
Note: liburing's Python calls hold the GIL while they wait; this server has one thread, so it does not care.
"""

import socket
import time

import liburing as uring

from iolab.protocol import Conn, Timers, announce, command_line, listen, wake_due

ENTRIES = 4096  # submission queue slots; when they run out, submit what is queued and carry on
RECV_BUFFER = 8 * 1024
ACCEPT, RECV, SEND = 1, 2, 3
SHIFT = 48  # user_data = operation << SHIFT | connection id: what a completion is about


class Ring:
    """The submission and completion queues, with the buffers the kernel is using kept alive meanwhile."""

    def __init__(self) -> None:
        self.ring, self.cqe = uring.Ring(), uring.Cqe()
        uring.io_uring_queue_init(ENTRIES, self.ring)
        self.in_flight: dict[int, bytes | bytearray | None] = {}

    def _entry(self, operation: int, cid: int, buffer: bytes | bytearray | None = None) -> object:
        sqe = uring.io_uring_get_sqe(self.ring)
        if sqe is None:  # the submission queue is full: hand it to the kernel to make room
            uring.io_uring_submit(self.ring)
            sqe = uring.io_uring_get_sqe(self.ring)
        sqe.user_data = operation << SHIFT | cid
        self.in_flight[sqe.user_data] = buffer
        return sqe

    def accept(self, listener: int) -> None:
        uring.io_uring_prep_accept(self._entry(ACCEPT, 0), listener)

    def recv(self, cid: int, fd: int, buffer: bytearray) -> None:
        uring.io_uring_prep_recv(self._entry(RECV, cid, buffer), fd, buffer)

    def send(self, cid: int, fd: int, data: bytes) -> None:
        uring.io_uring_prep_send(self._entry(SEND, cid, data), fd, data)

    def complete(self, timeout: float | None) -> list[tuple[int, int, int]]:
        """Submit everything queued, wait for at least one completion (or the timeout), and return each
        (operation, connection id, result): the result is bytes or a descriptor, or -errno."""
        try:
            if timeout is None:
                uring.io_uring_submit_and_wait(self.ring, 1)
            else:
                uring.io_uring_submit_and_wait_timeout(self.ring, self.cqe, 1, uring.timespec(max(timeout, 1e-6)))
        except OSError:  # ETIME: the timeout passed first (an error completion also lands here; read below)
            pass
        done = []
        while uring.io_uring_cq_ready(self.ring):
            try:
                uring.io_uring_peek_cqe(self.ring, self.cqe)
            except OSError:  # the entry is there; its result is an error, read as -errno below
                pass
            entry = self.cqe[0]
            user_data = entry.user_data
            try:
                result = entry.res
            except OSError as error:  # liburing raises when a result is -errno
                result = -(error.errno or 1)
            uring.io_uring_cqe_seen(self.ring, entry)
            self.in_flight.pop(user_data, None)
            done.append((user_data >> SHIFT, user_data & ((1 << SHIFT) - 1), result))
        return done


def main() -> None:
    args = command_line(__doc__)
    server = listen(args.port, args.host)
    ring = Ring()
    conns: dict[int, Conn] = {}  # by descriptor, as in the other servers
    # Completions name a connection id, never a descriptor: a closed descriptor's number is soon reused, and a
    # late completion for the old client must not be taken for the new one.
    fd_of: dict[int, int] = {}
    id_of: dict[int, int] = {}
    buffers: dict[int, bytearray] = {}
    sending: set[int] = set()
    timers = Timers()
    next_id = 1

    def send_outbox(conn: Conn) -> None:  # one send in flight per client keeps the bytes in order
        cid = id_of[conn.fd]
        if conn.outbox and cid not in sending:
            sending.add(cid)
            ring.send(cid, conn.fd, bytes(conn.outbox))

    def close(conn: Conn) -> None:
        cid = id_of.pop(conn.fd)
        del conns[conn.fd], fd_of[cid], buffers[cid]
        sending.discard(cid)
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)  # completes any recv still pending on it
        except OSError:
            pass
        conn.sock.close()

    ring.accept(server.fileno())
    announce(server, "io_uring, completion-based")
    while True:
        for operation, cid, result in ring.complete(timers.timeout(time.monotonic())):
            now = time.monotonic()
            if operation == ACCEPT:
                ring.accept(server.fileno())  # queue the next accept straight away
                if result < 0:
                    continue
                cid, next_id = next_id, next_id + 1
                conns[result], fd_of[cid], id_of[result] = Conn(socket.socket(fileno=result)), result, cid
                buffers[cid] = bytearray(RECV_BUFFER)
                ring.recv(cid, result, buffers[cid])
                continue
            if cid not in fd_of:
                continue  # a completion for a client already closed
            conn = conns[fd_of[cid]]
            if operation == RECV:
                if result < 0:  # an error such as ECONNRESET
                    close(conn)
                    continue
                if result == 0:  # the client's FIN: no more recv; close once every reply owed has gone out
                    conn.eof = True
                    if conn.finished:
                        close(conn)
                    continue
                if conn.received(bytes(buffers[cid][:result]), now):
                    timers.add(conn)
                if conn.overlong:
                    close(conn)
                    continue
                ring.recv(cid, conn.fd, buffers[cid])
                send_outbox(conn)
            elif operation == SEND:
                sending.discard(cid)
                if result < 0:
                    close(conn)
                    continue
                del conn.outbox[:result]  # a short send leaves the rest for the next one
                if conn.finished:
                    close(conn)
                    continue
                send_outbox(conn)
        for conn in wake_due(timers, conns, time.monotonic()):
            send_outbox(conn)


if __name__ == "__main__":
    main()
