"""The client for the stack's socket services, and a side-by-side TCP vs UDP lesson.

    python -m services.sockets.client time [HOST:PORT] [--udp] [--info] [--size N] [--recv-size N]
    python -m services.sockets.client echo [HOST:PORT] [MESSAGE] [--size N]
    python -m services.sockets.client compare [--host HOST] [--port PORT]

Without HOST:PORT it talks to nginx's stream proxy on the stack's public address (stack/topology.py).
Every step prints the system call it made and what came back, so you can see the transport at work.
"""

from __future__ import annotations

import argparse
import errno
import functools
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from services.sockets import protocol
from stack.topology import STREAM_SERVICES, Site

BY_NAME = {s.name: s for s in STREAM_SERVICES}


@dataclass
class Exchange:
    """What one request and its reply looked like on the wire, from the client's side."""

    transport: str
    sent: int = 0
    reply: bytes = b""
    receive_sizes: list[int] = field(default_factory=list)  # bytes returned by each recv()/recvfrom()
    truncated: bool = False  # a datagram was longer than the receive buffer: the rest is gone
    connect_ms: float | None = None
    local: tuple[str, int] | None = None


def ask_time(host: str, port: int, transport: str = "tcp", request: bytes = protocol.TIME_REQUEST,
             timeout: float = 3.0, recv_size: int = 65_535) -> Exchange:
    """Send one time request and read the whole reply (TCP: until the server's FIN; UDP: one datagram).

    Raises OSError as the socket reports it: ConnectionRefusedError, TimeoutError, EMSGSIZE, ..."""
    if transport == "udp":
        return _ask_time_udp(host, port, request, timeout, recv_size)
    exchange = Exchange("tcp")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    with sock:
        started = time.perf_counter()
        sock.connect((host, port))  # returns once the three-way handshake is done
        exchange.connect_ms = (time.perf_counter() - started) * 1000
        exchange.local = sock.getsockname()
        sock.sendall(request)
        exchange.sent = len(request)
        while len(exchange.reply) <= protocol.MAX_TCP_REQUEST:
            chunk = sock.recv(recv_size)
            exchange.receive_sizes.append(len(chunk))
            if not chunk:  # the server's FIN: the reply is complete
                break
            exchange.reply += chunk
    return exchange


def _ask_time_udp(host: str, port: int, request: bytes, timeout: float, recv_size: int) -> Exchange:
    exchange = Exchange("udp")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    with sock:
        # connect() on UDP sends nothing: it fixes the peer, so ICMP errors for it are reported to us.
        sock.connect((host, port))
        exchange.local = sock.getsockname()
        exchange.sent = sock.send(request)  # the whole datagram or an error, never part of it
        data, _, flags, _ = sock.recvmsg(recv_size)
        exchange.receive_sizes.append(len(data))
        exchange.reply = data
        exchange.truncated = bool(flags & socket.MSG_TRUNC)
    return exchange


def echo_roundtrip(host: str, port: int, payload: bytes, timeout: float = 5.0) -> bytes:
    """Send `payload` to the echo server while reading its echo (both at once: a large payload would
    otherwise fill both directions' buffers and stall), then half-close and read the rest."""
    sock = socket.create_connection((host, port), timeout=timeout)
    received = bytearray()
    failure: list[BaseException] = []

    def send_all() -> None:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)  # our FIN: the server echoes what is left, then closes
        except OSError as error:
            failure.append(error)

    sender = threading.Thread(target=send_all, daemon=True)
    with sock:
        sender.start()
        while chunk := sock.recv(65536):  # until the server's FIN, after the last echoed byte
            received += chunk
        sender.join(timeout)
    if failure:
        raise failure[0]
    return bytes(received)


def free_local_port(transport: str) -> int:
    """A loopback port nobody listens on right now (for the 'server is down' lesson)."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- command line

def show(data: bytes, limit: int = 100) -> str:
    text = repr(data[:limit])
    return text + (f" … ({len(data)} bytes)" if len(data) > limit else "")


def run_time(host: str, port: int, transport: str, request: bytes, recv_size: int) -> int:
    kind = "SOCK_DGRAM" if transport == "udp" else "SOCK_STREAM"
    print(f"socket(AF_INET, {kind}) → {host}:{port}")
    try:
        exchange = ask_time(host, port, transport, request, recv_size=recv_size)
    except OSError as error:
        print(f"  failed: {explain(error, transport)}")
        return 1
    if transport == "tcp":
        print(f"  connect(): three-way handshake done in {exchange.connect_ms:.2f} ms, "
              f"local address {exchange.local[0]}:{exchange.local[1]}")
        print(f"  sendall(): {exchange.sent} bytes {show(request)}")
        for number, size in enumerate(exchange.receive_sizes, 1):
            print(f"  recv({recv_size}) #{number}: " + (f"{size} bytes" if size else "0 bytes: the server's FIN"))
    else:
        print("  connect(): no packet sent, only the peer fixed; "
              f"local address {exchange.local[0]}:{exchange.local[1]}")
        print(f"  send(): one datagram of {exchange.sent} bytes {show(request)}")
        print(f"  recvmsg({recv_size}): {exchange.receive_sizes[0]} bytes"
              + ("; MSG_TRUNC: the datagram was longer, the rest is discarded" if exchange.truncated else ""))
    print(f"reply: {show(exchange.reply, 300)}")
    return 0 if exchange.reply else 1


def explain(error: OSError, transport: str) -> str:
    if isinstance(error, ConnectionRefusedError):
        return ("ECONNREFUSED: nothing listens there; the kernel answered the SYN with a reset" if transport == "tcp"
                else "ECONNREFUSED: an ICMP port-unreachable came back, reported to this connected UDP socket")
    if isinstance(error, TimeoutError):
        return "timed out: silence (a lost datagram, or nobody there: UDP cannot tell which)"
    if error.errno == errno.EMSGSIZE:
        return (f"EMSGSIZE, {error.strerror}: a UDP datagram carries at most {protocol.MAX_UDP_PAYLOAD} bytes "
                "(TCP has no such limit: it is a stream)")
    return f"{type(error).__name__}: {error}"


def run_echo(host: str, port: int, payload: bytes) -> int:
    print(f"connect() → {host}:{port}, then send {len(payload)} bytes while reading the echo")
    try:
        echoed = echo_roundtrip(host, port, payload)
    except OSError as error:
        print(f"  failed: {explain(error, 'tcp')}")
        return 1
    verdict = "identical" if echoed == payload else f"DIFFERENT ({len(echoed)} bytes)"
    print(f"echoed {len(echoed)} bytes, {verdict}: {show(echoed)}")
    return 0 if echoed == payload else 1


# ---------------------------------------------------------------- TCP vs UDP, lesson by lesson
# Each lesson runs against host:port over one transport and says in words what happened.

def lesson_setup(host: str, port: int, transport: str) -> str:
    if transport == "udp":
        return "none: the first datagram is the request"
    exchange = ask_time(host, port, "tcp")
    return f"connect() = SYN, SYN-ACK, ACK: {exchange.connect_ms:.2f} ms before the first byte"


def lesson_pieces(host: str, port: int, transport: str) -> str:
    pieces = (b"IN", b"FO ", b"three pieces\n")
    if transport == "tcp":
        with socket.create_connection((host, port), timeout=3) as sock:
            for piece in pieces:
                sock.sendall(piece)
                time.sleep(0.05)
            reply = sock.recv(4096)
        return f"one reply; the server framed it: {reply.decode().split(' | ')[-1].strip()}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.connect((host, port))
        for piece in pieces:
            sock.send(piece)
        replies = [sock.recv(4096) for _ in pieces]
    return f"{len(replies)} replies: each datagram is a whole request (boundaries kept)"


def lesson_large(host: str, port: int, transport: str) -> str:
    reply = ask_time(host, port, transport, protocol.info_request(100 * 1024)).reply
    return reply.decode().split(" | ")[-1].strip()


def lesson_small_reads(host: str, port: int, transport: str) -> str:
    exchange = ask_time(host, port, transport, recv_size=8)
    if transport == "tcp":
        return f"whole reply ({len(exchange.reply)} bytes) in {len(exchange.receive_sizes) - 1} recv(8) calls"
    return f"{len(exchange.reply)} bytes, then MSG_TRUNC={exchange.truncated}: the rest of the datagram is lost"


def lesson_server_down(host: str, port: int, transport: str) -> str:
    """Against a loopback port nobody listens on (not the stack's: its servers stay up)."""
    if transport == "tcp":
        return attempt("tcp", lambda: ask_time("127.0.0.1", free_local_port("tcp"), timeout=1.0) and "answered?")

    def unconnected() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(1.0)
            sock.sendto(protocol.TIME_REQUEST, ("127.0.0.1", free_local_port("udp")))
            sock.recvfrom(4096)
        return "answered?"

    connected = attempt("udp", lambda: ask_time("127.0.0.1", free_local_port("udp"), "udp", timeout=1.0)
                        and "answered?")
    return f"{attempt('udp', unconnected)} / connected socket: {connected}"


def attempt(transport: str, action: Callable[[], str]) -> str:
    try:
        return action()
    except OSError as error:
        return explain(error, transport)


LESSONS: tuple[tuple[str, Callable[[str, int, str], str]], ...] = (
    ("set-up before the first byte", lesson_setup),
    ("a request sent in three pieces", lesson_pieces),
    ("a 100 KiB request", lesson_large),
    ("reading the reply 8 bytes at a time", lesson_small_reads),
    ("the server is down (a port nobody listens on)", lesson_server_down),
)


def compare(host: str, port: int) -> int:
    """TCP and UDP side by side on the same service: every lesson, with both transports."""
    print(f"TCP vs UDP against the time service at {host}:{port}\n")
    for title, lesson in LESSONS:
        tcp, udp = (attempt(t, functools.partial(lesson, host, port, t)) for t in ("tcp", "udp"))
        print(f"{title}\n  TCP: {tcp}\n  UDP: {udp}\n")
    return 0


def endpoint(value: str | None, service: str) -> tuple[str, int]:
    if value:
        host, _, port = value.rpartition(":")
        return host or "127.0.0.1", int(port)
    site = Site.from_env()
    return site.public_host, site.public_port_of(BY_NAME[service])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    time_cmd = commands.add_parser("time", help="ask the time server (TCP, or --udp)")
    time_cmd.add_argument("address", nargs="?", help="HOST:PORT (default: nginx's stream port)")
    time_cmd.add_argument("--udp", action="store_true")
    time_cmd.add_argument("--info", action="store_true", help="ask what the server saw (INFO)")
    time_cmd.add_argument("--size", type=int,
                          help="pad the INFO request to N bytes (try 100000 with and without --udp)")
    time_cmd.add_argument("--recv-size", type=int, default=65_535, help="bytes per recv() (try 8)")
    echo_cmd = commands.add_parser("echo", help="send bytes to the echo server and check they come back")
    echo_cmd.add_argument("address", nargs="?")
    echo_cmd.add_argument("message", nargs="?", default="hello, echo\n")
    echo_cmd.add_argument("--size", type=int, help="send N random bytes instead of MESSAGE")
    compare_cmd = commands.add_parser("compare", help="TCP vs UDP on the time service, side by side")
    compare_cmd.add_argument("--host")
    compare_cmd.add_argument("--port", type=int)
    args = parser.parse_args(argv)

    if args.command == "time":
        transport = "udp" if args.udp else "tcp"
        host, port = endpoint(args.address, f"time-{transport}")
        request = protocol.info_request(args.size) if args.size else b"INFO\r\n" if args.info else protocol.TIME_REQUEST
        return run_time(host, port, transport, request, args.recv_size)
    if args.command == "echo":
        host, port = endpoint(args.address, "echo")
        return run_echo(host, port, os.urandom(args.size) if args.size else args.message.encode())
    host, port = endpoint(None, "time-tcp")
    return compare(args.host or host, args.port or port)


if __name__ == "__main__":
    sys.exit(main())
