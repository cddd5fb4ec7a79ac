"""The time protocol, shared by the TCP server, its UDP twin and the client.

A request is one line — on TCP everything up to the first LF (or up to the client's half-close), on UDP the
whole datagram. Its content is ignored, as in the seed's server and RFC 867's daytime protocol, so the seed's
own client and `nc` work unchanged; one command is understood:

    INFO [padding]   the time, and what the server saw: transport, peer, request size, receive calls needed

The reply is one line ending in CRLF, `Fri Nov 27 18:22:55 2026\\r\\n` (time.ctime, the seed's format), or
`ERR <reason>\\r\\n`.
"""

from __future__ import annotations

import re
import time

# TCP: a request line may be longer than 64 KiB (a byte stream has no size limit), but not unbounded.
MAX_TCP_REQUEST = 128 * 1024
# UDP: the largest payload an IPv4 datagram can carry is 65,535 - 20 (IP header) - 8 (UDP header).
MAX_UDP_PAYLOAD = 65_507
# A TCP client has this long, in total, to send its request line (a slow drip does not extend it).
REQUEST_TIMEOUT_S = 5.0

TIME_REQUEST = b"TIME\r\n"
CTIME_LINE = re.compile(rb"[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}")


def wants_info(request: bytes) -> bool:
    return request.lstrip()[:4].upper() == b"INFO"


def info_request(size: int) -> bytes:
    """An INFO request padded to exactly `size` bytes, newline included (at least 6)."""
    size = max(size, 6)
    return b"INFO " + b"x" * (size - 6) + b"\n"


def reply(request: bytes, transport: str, peer: tuple[str, int], receive_calls: int) -> bytes:
    """The answer to one request: the time, plus what the server saw when the client asked for INFO."""
    now = time.ctime()
    if not wants_info(request):
        return f"{now}\r\n".encode()
    call = "recv()" if transport == "tcp" else "recvfrom()"
    plural = "" if receive_calls == 1 else "s"
    return (f"{now} | {transport} from {peer[0]}:{peer[1]} | request {len(request)} bytes in "
            f"{receive_calls} {call} call{plural}\r\n").encode()


def error(reason: str) -> bytes:
    return f"ERR {reason}\r\n".encode()


def is_time_reply(data: bytes) -> bool:
    """A well-formed answer: a ctime line (with INFO's details, perhaps) ending in CRLF."""
    return data.endswith(b"\r\n") and CTIME_LINE.match(data) is not None
