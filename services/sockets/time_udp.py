"""The time server's UDP twin: the same protocol over datagrams (SOCK_DGRAM, recvfrom → sendto).

    python -m services.sockets.time_udp [--bind HOST:PORT]
    printf 'TIME\\n' | nc -u -w1 127.0.0.1 8013      (through nginx's stream proxy)

Against the TCP server: there is no connection (no handshake before the first byte, no FIN after the last),
so there is nothing to accept and nothing to close, and no client can hold the server: one loop serves every
datagram as it comes. Each datagram is one whole request — boundaries are kept, unlike TCP's byte stream —
and at most 65,507 bytes (an IPv4 datagram's limit). Nothing is acknowledged: if this server is down, a
client hears nothing, unless its socket is connected and the kernel relays the ICMP "port unreachable" as
ECONNREFUSED on its next receive.
"""

from __future__ import annotations

import logging
import socket
import threading

from services.sockets import protocol
from services.sockets.serving import POLL_S, command_line, serve_until_signalled

log = logging.getLogger("stack.time-udp")


class TimeUDPServer:
    def __init__(self, host: str, port: int) -> None:
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(POLL_S)  # so the loop notices a stop request
        self.address: tuple[str, int] = self.sock.getsockname()

    def serve_forever(self) -> None:
        log.info("time over UDP on %s:%d", *self.address)
        while not self.stopping.is_set():
            try:
                # A buffer of the largest possible payload: no datagram is ever cut short.
                request, peer = self.sock.recvfrom(65_535)
            except TimeoutError:
                continue
            except OSError as error:  # e.g. an ICMP error for an earlier reply, reported on this socket
                log.warning("receive failed: %s", error)
                continue
            try:
                self.sock.sendto(protocol.reply(request, "udp", peer, 1), peer)
            except OSError as error:
                log.warning("%s:%d reply failed: %s", peer[0], peer[1], error)
                continue
            log.info("%s:%d request=%dB ok", peer[0], peer[1], len(request))
        self.sock.close()

    def shutdown(self) -> None:
        self.stopping.set()


def main(argv: list[str] | None = None) -> None:
    args = command_line("time-udp", __doc__, argv)
    server = TimeUDPServer(*args.bind)
    serve_until_signalled(server)


if __name__ == "__main__":
    main()
