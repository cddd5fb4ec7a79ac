"""The lab's protocol, and what every lab server shares so that each server file shows only its IO model.

The protocol: the client sends lines; the server answers each line with the same line (an echo, as in
uvloop's echo-server benchmark). A line that starts with `WAIT <ms>` is answered only after that many
milliseconds: the stand-in for a slow database or upstream call, during which a blocking server can do
nothing else and an event loop serves everyone else. Replies keep the order of the requests.

    $ printf 'hello\\nWAIT 200 slow\\n' | nc -q1 127.0.0.1 PORT
    hello
    WAIT 200 slow            (200 ms later)
"""

from __future__ import annotations

import argparse
import heapq
import resource
import socket
import sys
import time

MAX_LINE = 1024 * 1024  # a longer line closes the connection: nobody may make a server buffer without bound
MAX_WAIT_MS = 10_000
RECV_SIZE = 64 * 1024
BACKLOG = 4096  # = net.core.somaxconn here: the kernel finishes this many handshakes before accept() runs


def delay_of(line: bytes) -> float:
    """Seconds to wait before answering `line`: `WAIT <ms>` asks for ms milliseconds; anything else for none."""
    if not line.startswith(b"WAIT "):
        return 0.0
    digits = line[5:].split(b" ", 1)[0].strip()
    if not digits.isdigit() or not digits.isascii():
        return 0.0
    return min(int(digits), MAX_WAIT_MS) / 1000


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard one (10,000 clients need 10,000 descriptors); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def listen(port: int, host: str = "127.0.0.1") -> socket.socket:
    """socket() + setsockopt(SO_REUSEADDR) + bind() + listen(): the listening socket every server starts from."""
    return socket.create_server((host, port), backlog=BACKLOG, reuse_port=False)


def command_line(doc: str | None, extra: dict[str, dict] | None = None) -> argparse.Namespace:
    """`--port` (0: any free port, printed) and `--host`, plus a server's own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    for flag, options in (extra or {}).items():
        parser.add_argument(flag, **options)
    args = parser.parse_args()
    raise_fd_limit()
    return args


def announce(sock: socket.socket, model: str) -> None:
    """One line on stdout when the server is ready: the harness reads the port from it."""
    host, port = sock.getsockname()[:2]
    print(f"listening on {host}:{port} ({model})", flush=True)


def say(message: str) -> None:
    """A server's diagnostic (select's FD_SETSIZE refusal, the busy loop's EAGAIN count): stderr, flushed."""
    print(message, file=sys.stderr, flush=True)


class Refusals:
    """Clients a server turns away at a limit of its own: each gets `ERR <reason>` and a close; the server
    says so on stderr for the first and then every thousandth, so a flood cannot flood the log too."""

    def __init__(self, reason: str) -> None:
        self.reason, self.count = reason, 0

    def refuse(self, conn: socket.socket, detail: str) -> None:
        self.count += 1
        if self.count == 1 or self.count % 1000 == 0:
            say(f"{detail} (refused {self.count} clients so far)")
        try:
            conn.sendall(f"ERR {self.reason}\n".encode())
        except OSError:
            pass
        conn.close()


def handle_blocking(conn: socket.socket) -> None:
    """Serve one client to the end with blocking calls: recv() waits for bytes, sleep() for WAIT, sendall()
    until the reply is out. The code of the blocking, thread, process, pool and gevent servers alike."""
    inbox = bytearray()
    with conn:
        while True:
            try:
                data = conn.recv(RECV_SIZE)  # blocks until bytes arrive, or b"" at the client's FIN
            except OSError:
                return
            if not data:
                return
            inbox += data
            while (end := inbox.find(b"\n")) >= 0:
                line = bytes(inbox[:end + 1])
                del inbox[:end + 1]
                if wait := delay_of(line):
                    time.sleep(wait)
                try:
                    conn.sendall(line)
                except OSError:
                    return
            if len(inbox) > MAX_LINE:
                return


class Conn:
    """One client of a server that juggles many sockets on one thread: bytes in, replies out, and at most one
    WAIT in progress (later lines queue behind it so that replies keep their order)."""

    __slots__ = ("sock", "fd", "inbox", "outbox", "held", "wake_at", "interest", "eof")

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.fd = sock, sock.fileno()
        self.inbox, self.outbox = bytearray(), bytearray()
        self.held: bytes | None = None  # a WAIT line being waited on
        self.wake_at: float | None = None
        self.interest = 0  # the events a poll/epoll loop last asked the kernel to watch for
        self.eof = False  # the client sent FIN: nothing more to read, but replies still owed go out

    def received(self, data: bytes, now: float) -> bool:
        """Take bytes from the socket; True when a WAIT started (the loop must set a timer for it)."""
        self.inbox += data
        return self._advance(now)

    def _advance(self, now: float) -> bool:
        while self.held is None and (end := self.inbox.find(b"\n")) >= 0:
            line = bytes(self.inbox[:end + 1])
            del self.inbox[:end + 1]
            if wait := delay_of(line):
                self.held, self.wake_at = line, now + wait
                return True
            self.outbox += line
        return False

    def wake(self, now: float) -> bool:
        """The WAIT is over: its reply goes out and the lines behind it are processed; True when another
        WAIT started."""
        if self.held is None or self.wake_at is None or now < self.wake_at:
            return False
        self.outbox += self.held
        self.held = self.wake_at = None
        return self._advance(now)

    @property
    def overlong(self) -> bool:
        return len(self.inbox) > MAX_LINE

    @property
    def finished(self) -> bool:
        """The client has half-closed and every reply it is owed has been sent: time to close."""
        return self.eof and self.held is None and not self.outbox


class Timers:
    """WAITs in progress, soonest first: an event loop's timer heap. timeout() is how long the loop may block
    in its wait call before a WAIT falls due (None: no timer, block until IO)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Conn]] = []

    def add(self, conn: Conn) -> None:
        assert conn.wake_at is not None
        heapq.heappush(self._heap, (conn.wake_at, id(conn), conn))

    def timeout(self, now: float) -> float | None:
        return max(0.0, self._heap[0][0] - now) if self._heap else None

    def due(self, now: float) -> list[Conn]:
        ready = []
        while self._heap and self._heap[0][0] <= now:
            ready.append(heapq.heappop(self._heap)[2])
        return ready


GONE = -1  # read_once/write_once: close it (reset, a line past MAX_LINE, or FIN and every reply sent)
WOULD_BLOCK = 0  # nothing to do until the socket is ready again (EAGAIN/EWOULDBLOCK), or a timer fires


def read_once(conn: Conn, now: float, timers: Timers, size: int = RECV_SIZE) -> int:
    """One recv() on a non-blocking socket: the number of bytes read, WOULD_BLOCK, or GONE. After the
    client's FIN (recv() == b""), its pending replies still go out: GONE only once they have."""
    if conn.eof:
        return GONE if conn.finished else WOULD_BLOCK
    try:
        data = conn.sock.recv(size)
    except BlockingIOError:
        return WOULD_BLOCK
    except OSError:
        return GONE
    if not data:
        conn.eof = True
        return GONE if conn.finished else WOULD_BLOCK
    if conn.received(data, now):
        timers.add(conn)
    return GONE if conn.overlong else len(data)


def write_once(conn: Conn) -> int:
    """One send() of as much of the outbox as the socket buffer takes: bytes sent, WOULD_BLOCK, or GONE
    (an error, or the last reply to a client that has half-closed)."""
    try:
        sent = conn.sock.send(conn.outbox)
    except BlockingIOError:
        return WOULD_BLOCK
    except OSError:
        return GONE
    del conn.outbox[:sent]
    return GONE if conn.finished else sent


def on_ready(conn: Conn, now: float, timers: Timers, readable: int, writable: int, hangup: int = 0) -> bool:
    """What a readiness loop does with one report for a client: read, then write, what is ready. False when
    the client must be closed (hang-up or error reported, or read_once/write_once said GONE)."""
    if hangup or readable and read_once(conn, now, timers) == GONE:
        return False
    return not (writable and write_once(conn) == GONE)


def wake_due(timers: Timers, conns: dict[int, Conn], now: float) -> list[Conn]:
    """The connections whose WAIT fell due (still open): each now has a reply in its outbox."""
    woken = []
    for conn in timers.due(now):
        if conns.get(conn.fd) is conn:
            if conn.wake(now):
                timers.add(conn)
            woken.append(conn)
    return woken
