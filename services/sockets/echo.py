"""The seed's `selectors` echo server, with the parts the seed leaves out.

    python -m services.sockets.echo [--bind HOST:PORT] [--idle-timeout S]
    nc 127.0.0.1 8007                                (through nginx's stream proxy: type, and it comes back)

One thread, non-blocking sockets, one DefaultSelector (epoll on Linux) telling the loop which socket is ready.
The seed's version calls `conn.send(data)  # Hope it won't block`: on a non-blocking socket send() writes
only what fits in the kernel's send buffer and raises BlockingIOError when nothing does. Here every client
has an outbox: what send() did not take stays there, the socket is re-registered (modify) for EVENT_WRITE,
and the rest goes out when the selector says it is writable. Reading stops while a client's outbox holds
`max_pending` bytes (a client that sends without reading is held back by TCP flow control, not by our
memory); a client idle for `idle_timeout` seconds is closed; at most `max_clients` are served at once.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from dataclasses import dataclass, field

from services.sockets.serving import POLL_S, command_line, serve_until_signalled

log = logging.getLogger("stack.echo")
READ_SIZE = 64 * 1024
ACCEPT_PAUSE_S = 0.5


@dataclass
class Client:
    sock: socket.socket
    peer: tuple[str, int]
    last_active: float
    outbox: bytearray = field(default_factory=bytearray)
    eof: bool = False  # the client half-closed: echo what is pending, then close
    received: int = 0
    sent: int = 0
    partial_writes: int = 0
    events: int = selectors.EVENT_READ


class EchoServer:
    def __init__(self, host: str, port: int, *, idle_timeout: float = 60.0, max_pending: int = 256 * 1024,
                 max_clients: int = 1024, backlog: int = 128, send_buffer: int | None = None) -> None:
        self.idle_timeout, self.max_pending, self.max_clients = idle_timeout, max_pending, max_clients
        self.send_buffer = send_buffer  # SO_SNDBUF per client; small values make partial writes frequent
        self.selector = selectors.DefaultSelector()
        self.clients: dict[socket.socket, Client] = {}
        self.stopping = False
        self.accept_paused_until = 0.0  # set while out of file descriptors
        self.peak_pending = 0  # the most bytes any one outbox ever held: stays <= max_pending
        self.partial_writes = 0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(backlog)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, data=None)
        self.address: tuple[str, int] = self.listener.getsockname()

    # ------------------------------------------------------------ the loop

    def serve_forever(self) -> None:
        log.info("echo on %s:%d (%s)", *self.address, type(self.selector).__name__)
        while not self.stopping:
            for key, mask in self.selector.select(timeout=POLL_S):
                if key.data is None:
                    self.accept()
                else:
                    self.service(key.data, mask)
            self.close_idle()
            if self.accept_paused_until and time.monotonic() >= self.accept_paused_until:
                self.accept_paused_until = 0.0
                self.selector.register(self.listener, selectors.EVENT_READ, data=None)
        for client in list(self.clients.values()):
            self.close(client, "server stopping")
        self.selector.close()
        self.listener.close()

    def shutdown(self) -> None:
        self.stopping = True

    # ------------------------------------------------------------ events

    def accept(self) -> None:
        for _ in range(64):  # take a burst of queued connections per wake-up
            try:
                sock, peer = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # EMFILE/ENFILE: out of descriptors. The connection stays queued, so the
                # listener would wake the loop again at once: stop watching it for a moment instead of spinning.
                log.warning("accept failed: %s; not accepting for %g s", error, ACCEPT_PAUSE_S)
                self.selector.unregister(self.listener)
                self.accept_paused_until = time.monotonic() + ACCEPT_PAUSE_S
                return
            if len(self.clients) >= self.max_clients:
                log.warning("%s:%d refused: %d clients already", peer[0], peer[1], len(self.clients))
                sock.close()
                continue
            sock.setblocking(False)
            if self.send_buffer:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
            client = Client(sock, peer, time.monotonic())
            self.clients[sock] = client
            self.selector.register(sock, selectors.EVENT_READ, data=client)

    def service(self, client: Client, mask: int) -> None:
        if mask & selectors.EVENT_READ and not self.receive(client):
            return
        if mask & selectors.EVENT_WRITE or client.outbox:
            if not self.send(client):
                return
        self.update_interest(client)

    def receive(self, client: Client) -> bool:
        """Read what fits in the outbox's room; False when the client is gone."""
        room = self.max_pending - len(client.outbox)
        if room <= 0:  # recv(0) would return b"" and look like the client's FIN
            return True
        try:
            data = client.sock.recv(min(READ_SIZE, room))
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as error:  # ECONNRESET: the client vanished without a FIN
            self.close(client, f"reset ({type(error).__name__})")
            return False
        client.last_active = time.monotonic()
        if not data:
            client.eof = True
            return True
        client.received += len(data)
        client.outbox += data
        self.peak_pending = max(self.peak_pending, len(client.outbox))
        return True

    def send(self, client: Client) -> bool:
        """Write as much of the outbox as the kernel takes now; False when the client is gone."""
        while client.outbox:
            try:
                sent = client.sock.send(client.outbox)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:  # EPIPE / ECONNRESET: the client left mid-reply
                self.close(client, f"gone mid-reply ({type(error).__name__})")
                return False
            if sent:
                client.last_active = time.monotonic()
                client.sent += sent
                del client.outbox[:sent]
            if client.outbox:  # a partial write: the rest waits for EVENT_WRITE
                client.partial_writes += 1
                self.partial_writes += 1
                break
        return True

    def update_interest(self, client: Client) -> None:
        if client.eof and not client.outbox:
            self.close(client, "done")
            return
        events = 0
        if not client.eof and len(client.outbox) < self.max_pending:
            events |= selectors.EVENT_READ
        if client.outbox:
            events |= selectors.EVENT_WRITE
        if events != client.events:
            self.selector.modify(client.sock, events, data=client)
            client.events = events

    def close_idle(self) -> None:
        cutoff = time.monotonic() - self.idle_timeout
        for client in [c for c in self.clients.values() if c.last_active < cutoff]:
            self.close(client, f"idle for {self.idle_timeout:g} s")

    def close(self, client: Client, why: str) -> None:
        self.selector.unregister(client.sock)
        del self.clients[client.sock]
        client.sock.close()
        log.info("%s:%d closed: %s; in=%dB out=%dB partial_writes=%d", client.peer[0], client.peer[1], why,
                 client.received, client.sent, client.partial_writes)


def main(argv: list[str] | None = None) -> None:
    def options(parser):  # noqa: ANN001
        parser.add_argument("--idle-timeout", type=float, default=60.0, help="close a silent client after S s")
        parser.add_argument("--send-buffer", type=int, help="SO_SNDBUF per client (try 4096: partial writes)")

    args = command_line("echo", __doc__, argv, options)
    server = EchoServer(*args.bind, idle_timeout=args.idle_timeout, send_buffer=args.send_buffer)
    serve_until_signalled(server)


if __name__ == "__main__":
    main()
