"""The seed's TCP time server: socket → bind → listen → accept → recv → send → close, made safe for many clients.

    python -m services.sockets.time_tcp [--bind HOST:PORT]
    printf 'TIME\\n' | nc 127.0.0.1 8013            (through nginx's stream proxy; INFO tells you more)

What the seed's loop gets wrong, and what this one does instead:
- It serves one client at a time, so one client that connects and says nothing stalls everyone. Here every
  accepted connection gets its own thread (at most `max_clients` at once; past that a client is told
  `ERR busy` at once), and every request has a total deadline.
- It trusts one recv(1024) to hold the whole request. TCP is a byte stream without message boundaries: a
  request may arrive in pieces, so it is read until its newline (or the client's half-close), with a bound
  on its size.
- It calls send(), which may write only part of the reply; sendall() loops until all of it is written.
- It closes straight away. Closing a socket whose receive buffer still holds unread bytes makes the kernel
  send a reset instead of a FIN, and the client may lose the reply: the server shuts down its side first
  (its FIN), then reads and discards what the client still sends until the client's FIN, for at most a
  second, and only then closes.
The server closes first, so the TIME_WAIT state is on its side (see `ss -tan state time-wait`).
"""

from __future__ import annotations

import logging
import socket
import threading
import time

from services.sockets import protocol
from services.sockets.serving import POLL_S, command_line, serve_until_signalled

log = logging.getLogger("stack.time-tcp")
LINGER_S = 1.0  # how long to read and discard a client's surplus bytes after an error
LINGER_BYTES = 4 * 1024 * 1024


class RequestProblem(Exception):
    """The request could not be read: the reason goes back to the client as `ERR <reason>`."""


def read_request(conn: socket.socket, timeout: float, max_size: int) -> tuple[bytes, int]:
    """Receive until the first newline or the client's half-close: (the request, number of recv() calls)."""
    deadline = time.monotonic() + timeout
    buffer = bytearray()
    calls = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RequestProblem(f"no complete request line within {timeout:g} s (end it with a newline)")
        conn.settimeout(remaining)
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue  # the deadline check above reports it
        calls += 1
        if not chunk:  # the client half-closed: what it sent is the whole request (possibly nothing)
            return bytes(buffer), calls
        newline = chunk.find(b"\n")
        if newline >= 0:
            buffer += chunk[: newline + 1]  # anything after the first line is ignored
        else:
            buffer += chunk
        if len(buffer) > max_size:
            raise RequestProblem(f"request longer than {max_size} bytes")
        if newline >= 0:
            return bytes(buffer), calls


def linger_and_close(conn: socket.socket) -> None:
    """Send our FIN, then drain what the client still sends (bounded), so close() does not reset."""
    try:
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(LINGER_S)
        deadline, drained = time.monotonic() + LINGER_S, 0
        while time.monotonic() < deadline and drained < LINGER_BYTES:
            chunk = conn.recv(65536)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass
    finally:
        conn.close()


class TimeTCPServer:
    def __init__(self, host: str, port: int, *, timeout: float = protocol.REQUEST_TIMEOUT_S,
                 max_request: int = protocol.MAX_TCP_REQUEST, max_clients: int = 256, backlog: int = 128) -> None:
        self.timeout, self.max_request = timeout, max_request
        self.slots = threading.BoundedSemaphore(max_clients)
        self.stopping = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # 1. socket
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebind despite old TIME_WAITs
        self.listener.bind((host, port))  # 2. bind
        self.listener.listen(backlog)  # 3. listen: the kernel now completes handshakes and queues them
        self.listener.settimeout(POLL_S)  # so the accept loop notices a stop request
        self.address: tuple[str, int] = self.listener.getsockname()

    def serve_forever(self) -> None:
        log.info("time over TCP on %s:%d", *self.address)
        while not self.stopping.is_set():
            try:
                conn, peer = self.listener.accept()  # 4. accept: one queued, completed handshake
            except TimeoutError:
                continue
            except OSError as error:
                if self.stopping.is_set():
                    break
                # EMFILE/ENFILE: out of descriptors. Wait for clients to finish instead of spinning on accept().
                log.warning("accept failed: %s", error)
                time.sleep(POLL_S)
                continue
            if self.slots.acquire(blocking=False):
                threading.Thread(target=self.handle, args=(conn, peer), daemon=True).start()
            else:
                self.refuse(conn, peer)
        self.listener.close()

    def refuse(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        """Runs in the accept loop, so it must not wait: a short reply into an empty send buffer, then close."""
        log.warning("%s:%d refused: every slot is busy", *peer)
        try:
            conn.setblocking(False)
            conn.send(protocol.error("busy, try again"))
        except OSError:
            pass
        conn.close()

    def handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        started, outcome, size = time.monotonic(), "ok", 0
        try:
            try:
                request, calls = read_request(conn, self.timeout, self.max_request)  # 5. recv
            except RequestProblem as problem:
                outcome = "error"
                conn.sendall(protocol.error(str(problem)))
                linger_and_close(conn)
                return
            size = len(request)
            conn.settimeout(self.timeout)
            conn.sendall(protocol.reply(request, "tcp", peer, calls))  # 6. send, all of it
            linger_and_close(conn)  # 7. close: our FIN first, then the socket once the client's FIN arrives
        except OSError as error:  # the client vanished mid-exchange (reset, broken pipe, timeout)
            outcome = f"gone ({type(error).__name__})"
            conn.close()
        finally:
            self.slots.release()
            log.info("%s:%d request=%dB %s in %.1f ms", peer[0], peer[1], size, outcome,
                     (time.monotonic() - started) * 1000)

    def shutdown(self) -> None:
        self.stopping.set()


def main(argv: list[str] | None = None) -> None:
    args = command_line("time-tcp", __doc__, argv)
    server = TimeTCPServer(*args.bind)
    serve_until_signalled(server)


if __name__ == "__main__":
    main()
