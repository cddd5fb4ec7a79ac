"""The uwsgi protocol, the binary one nginx's `uwsgi_pass` speaks to uWSGI instead of HTTP.

A request is one packet: a 4-byte header, then the request's CGI/WSGI variables, then the body as is.

    modifier1  1 byte       what the packet is for: 0 = a WSGI request (uWSGI's Python plugin)
    datasize   2 bytes      little-endian: the size of the variables block that follows (so at most 65535)
    modifier2  1 byte       a sub-type; 0 for a request
    variables  datasize     key/value pairs, each: key size (2 bytes, little-endian), key, value size, value
    body       the rest     CONTENT_LENGTH bytes, unframed

nginx parses the HTTP request once and sends what the app will read (REQUEST_METHOD, PATH_INFO, HTTP_HOST,
...) already named as PEP 3333 names them, so uWSGI parses no header line and builds no names: it reads sizes
and points at bytes. What it costs: there is no keep-alive, one packet per connection, so every request is a new
TCP connection from nginx (services/web/uwsgi.ini, deploy/render.py).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

HEADER = struct.Struct("<BHB")  # modifier1, datasize (little-endian 16 bits), modifier2
SIZE = struct.Struct("<H")
MAX_DATASIZE = 0xFFFF
WSGI_REQUEST = 0  # modifier1 of a WSGI request (uWSGI's Python plugin)


class PacketError(ValueError):
    """Bytes that are no complete uwsgi packet; the message says where they stop making sense."""


@dataclass(frozen=True)
class Packet:
    modifier1: int
    datasize: int
    modifier2: int
    variables: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""

    def get(self, name: str) -> str | None:
        """A variable's value as text (latin-1, as WSGI's native strings), or None."""
        key = name.encode("latin-1")
        return next((value.decode("latin-1") for k, value in self.variables if k == key), None)

    @property
    def size(self) -> int:
        """The packet's bytes on the wire without its body: header and variables."""
        return HEADER.size + self.datasize


def encode(variables: Iterable[tuple[str | bytes, str | bytes]], body: bytes = b"", modifier1: int = WSGI_REQUEST,
           modifier2: int = 0) -> bytes:
    """One packet of `variables` (in order; text as latin-1) and `body`. PacketError when they do not fit the
    16-bit sizes."""
    block = bytearray()
    for key, value in variables:
        for part in (key, value):
            raw = part.encode("latin-1") if isinstance(part, str) else part
            if len(raw) > MAX_DATASIZE:
                raise PacketError(f"a key or value of {len(raw)} bytes: the protocol's sizes are 16 bits")
            block += SIZE.pack(len(raw)) + raw
    if len(block) > MAX_DATASIZE:
        raise PacketError(f"{len(block)} bytes of variables: datasize is 16 bits (at most {MAX_DATASIZE})")
    return HEADER.pack(modifier1, len(block), modifier2) + bytes(block) + body


def decode(data: bytes) -> Packet:
    """The packet at the start of `data` (what follows its variables is the body). PacketError for a short
    header, a datasize beyond the bytes given, or a key or value that runs past its block."""
    if len(data) < HEADER.size:
        raise PacketError(f"{len(data)} bytes: a packet starts with a {HEADER.size}-byte header")
    modifier1, datasize, modifier2 = HEADER.unpack_from(data)
    end = HEADER.size + datasize
    if len(data) < end:
        raise PacketError(f"datasize {datasize}, but only {len(data) - HEADER.size} bytes follow the header")
    variables, at = [], HEADER.size
    while at < end:
        pair = []
        for what in ("key", "value"):
            if at + SIZE.size > end:
                raise PacketError(f"a {what}'s size field runs past the variables block at byte {at}")
            (size,) = SIZE.unpack_from(data, at)
            at += SIZE.size
            if at + size > end:
                raise PacketError(f"a {what} of {size} bytes runs past the variables block at byte {at}")
            pair.append(bytes(data[at:at + size]))
            at += size
        variables.append((pair[0], pair[1]))
    return Packet(modifier1, datasize, modifier2, tuple(variables), bytes(data[end:]))


def describe(packet: Packet, limit: int = 80) -> list[str]:
    """The packet as lines to read: its header fields, then each variable (values cut at `limit`)."""
    kind = "a WSGI request" if packet.modifier1 == WSGI_REQUEST else "not a WSGI request"
    lines = [f"header: modifier1={packet.modifier1} ({kind}), datasize={packet.datasize} "
             f"(bytes {HEADER.pack(packet.modifier1, packet.datasize, packet.modifier2)[1:3].hex(' ')}, "
             f"little-endian), modifier2={packet.modifier2}",
             f"{len(packet.variables)} variables, each a 2-byte key size, the key, a 2-byte value size, the value:"]
    for key, value in packet.variables:
        text = value.decode("latin-1")
        shown = text if len(text) <= limit else text[:limit] + f"… ({len(value)} bytes)"
        lines.append(f"  {key.decode('latin-1')} = {shown}")
    if packet.body:
        lines.append(f"then the body: {len(packet.body)} bytes, unframed")
    return lines
