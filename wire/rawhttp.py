"""HTTP/1.1 over a raw socket, written and read by hand: the seed's "send an HTTP request with a socket", exact.

    python -m wire.rawhttp [URL] [--demo keepalive|chunked|close|all] [--chunked-path PATH]
    make rawhttp URL=http://127.0.0.1:8080/web/json

The seed sends `GET / HTTP/1.1\\r\\nHost: …\\r\\n\\r\\n` and prints one recv(1024): whatever happened to arrive.
This client writes the request byte by byte the same way, then reads the response the way RFC 9112 says a
client must: the status line, header lines up to the empty line, then the body framed by exactly one of
  - no body at all (a HEAD request; 1xx, 204 and 304 answers),
  - Transfer-Encoding: chunked (hex size lines, the last one 0, then optional trailers),
  - Content-Length: N (exactly N bytes, and the connection stays usable for the next request),
  - neither: the body runs until the server closes the connection.
Every byte sent and received is printed with its CR LF visible. h11, the field's sans-IO HTTP/1.1 library,
then checks the work: it must produce the very same request bytes and parse the same response.

Demos: two requests on one kept-alive connection; a chunked response decoded by hand next to h11's parse;
`Connection: close`, and who closes first (the one that does keeps the TIME_WAIT, as `ss` shows).
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

from stack.topology import Site

USER_AGENT = "stack-rawhttp/1"
CRLF = b"\r\n"
MAX_LINE = 64 * 1024  # a status or header line longer than this is refused
# Linux TCP states (include/net/tcp_states.h), as TCP_INFO's first byte reports them.
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


class ProtocolError(Exception):
    """The peer's bytes are not valid HTTP/1.1."""


# ---------------------------------------------------------------- writing a request

def build_request(method: str, target: str, host: str, headers: list[tuple[str, str]] | None = None,
                  body: bytes = b"") -> bytes:
    """The request, byte by byte: request line, Host, the other headers, an empty line, the body."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# ---------------------------------------------------------------- reading a response

class WireReader:
    """A socket read through a buffer, so exactly one message is consumed and the next stays for later."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.eof = False
        self.recv_calls = 0
        self.first_byte_at: float | None = None  # time.time() when the first bytes arrived

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.sock.recv(65536)
        self.recv_calls += 1
        if not chunk:
            self.eof = True
            return False
        if self.first_byte_at is None:
            self.first_byte_at = time.time()
        self.buffer += chunk
        return True

    def line(self) -> bytes:
        """One line, CR LF included."""
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > MAX_LINE:
                raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
            if not self._fill():
                raise ProtocolError("the connection closed in the middle of a line")
        line = bytes(self.buffer[: end + 1])
        del self.buffer[: end + 1]
        return line

    def exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise ProtocolError(f"the connection closed after {len(self.buffer)} of {n} body bytes")
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    def until_close(self) -> bytes:
        while self._fill():
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


@dataclass
class Response:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]  # as sent: original case and order
    body: bytes = b""
    framing: str = ""  # how the end of the body was found, in words
    chunk_sizes: list[int] = field(default_factory=list)
    trailers: list[tuple[str, str]] = field(default_factory=list)
    wire: list[tuple[bytes, str]] = field(default_factory=list)  # every received piece, with what it means

    @property
    def raw(self) -> bytes:
        return b"".join(piece for piece, _ in self.wire)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


def _header_lines(reader: WireReader, wire: list[tuple[bytes, str]], end_note: str) -> list[tuple[str, str]]:
    headers = []
    while True:
        line = reader.line()
        if line in (b"\r\n", b"\n"):
            wire.append((line, end_note))
            return headers
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip() or line[:1] in b" \t":
            raise ProtocolError(f"malformed header line {line!r}")
        headers.append((name, value.strip()))
        wire.append((line, ""))


def read_response(reader: WireReader, method: str = "GET") -> Response:
    """Read exactly one response from the reader, framed as RFC 9112 §6.3 says."""
    status_line = reader.line()
    match = re.fullmatch(rb"HTTP/(\d\.\d) (\d{3})(?: ([^\r\n]*))?\r?\n", status_line)
    if not match:
        raise ProtocolError(f"not an HTTP/1.x status line: {status_line!r}")
    response = Response(match[1].decode(), int(match[2]), (match[3] or b"").decode("latin-1"), [])
    response.wire.append((status_line, "status line"))
    response.headers = _header_lines(reader, response.wire, "end of the headers")

    transfer_encoding = (response.header("Transfer-Encoding") or "").lower()
    length = response.header("Content-Length")
    if method == "HEAD" or response.status < 200 or response.status in (204, 304):
        response.framing = f"no body: a response to {method}" if method == "HEAD" else \
            f"no body: a {response.status} never has one"
    elif transfer_encoding:
        if transfer_encoding.rsplit(",", 1)[-1].strip() != "chunked":
            raise ProtocolError(f"Transfer-Encoding {transfer_encoding!r} does not end in chunked")
        _read_chunked(reader, response)
    elif length is not None:
        if not re.fullmatch(r"\d{1,18}", length):
            raise ProtocolError(f"invalid Content-Length {length!r}")
        response.body = reader.exact(int(length))
        response.wire.append((response.body, f"{len(response.body)} body bytes"))
        closing = "close" in (response.header("Connection") or "").lower()
        after = "the server closes next (Connection: close)" if closing else "the connection stays usable"
        response.framing = f"Content-Length: {length}: exactly {length} bytes read, {after}"
    else:
        response.body = reader.until_close()
        response.wire.append((response.body, f"{len(response.body)} body bytes"))
        response.framing = "neither Content-Length nor chunked: the body ended when the server closed"
    return response


def _read_chunked(reader: WireReader, response: Response) -> None:
    body = bytearray()
    while True:
        size_line = reader.line()
        match = re.fullmatch(rb"([0-9A-Fa-f]{1,16})(;[^\r\n]*)?\r?\n", size_line)
        if not match:
            raise ProtocolError(f"malformed chunk-size line {size_line!r}")
        size = int(match[1], 16)
        if size == 0:
            response.wire.append((size_line, "chunk size 0: the last chunk"))
            break
        response.wire.append((size_line, f"chunk size 0x{match[1].decode()} = {size} bytes follow"))
        data = reader.exact(size)
        if reader.exact(2) != b"\r\n":
            raise ProtocolError("a chunk's data is not followed by CR LF")
        response.wire.append((data + b"\r\n", f"{size} bytes of data, then CR LF"))
        response.chunk_sizes.append(size)
        body += data
    response.trailers = _header_lines(reader, response.wire, "end of the chunked body (no more trailers)")
    response.body = bytes(body)
    count = len(response.chunk_sizes)
    response.framing = (f"Transfer-Encoding: chunked: {count} chunk{'' if count == 1 else 's'} "
                        f"({' + '.join(map(str, response.chunk_sizes))} = {len(body)} bytes), then a 0-size chunk")


# ---------------------------------------------------------------- h11, the independent check

@dataclass
class H11Parse:
    request_bytes: bytes
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    trailers: list[tuple[str, str]]


def parse_with_h11(method: str, target: str, host: str, headers: list[tuple[str, str]], body: bytes,
                   response_raw: bytes, closed: bool) -> H11Parse:
    """What h11 makes of the same exchange: the request bytes it would write, and its parse of the response.
    `closed`: the server closed after the response (h11 needs the EOF to end a close-delimited body)."""
    conn = h11.Connection(h11.CLIENT)
    all_headers = [("Host", host), *headers] + ([("Content-Length", str(len(body)))] if body else [])
    request_bytes = conn.send(h11.Request(method=method, target=target, headers=all_headers))
    request_bytes += conn.send(h11.Data(data=body)) if body else b""
    request_bytes += conn.send(h11.EndOfMessage())
    conn.receive_data(response_raw)
    if closed:
        conn.receive_data(b"")
    status, response_headers, data, trailers = 0, [], bytearray(), []
    while True:
        event = conn.next_event()
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            response_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()]
        elif isinstance(event, h11.Data):
            data += event.data
        elif isinstance(event, h11.EndOfMessage):
            trailers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers.raw_items()]
            break
        elif event is h11.NEED_DATA:
            raise ProtocolError("h11 needs more bytes than the response had")
        else:
            raise ProtocolError(f"h11 saw {event!r}")
    return H11Parse(request_bytes, status, response_headers, bytes(data), trailers)


def agreement(response: Response, parse: H11Parse, request: bytes) -> list[str]:
    """The differences between the hand-made exchange and h11's; empty when they agree."""
    problems = []
    if parse.request_bytes != request:
        problems.append(f"h11 would write other request bytes: {parse.request_bytes!r}")
    if parse.status != response.status:
        problems.append(f"status {response.status} by hand, {parse.status} by h11")
    if parse.headers != response.headers:
        problems.append("the header lists differ")
    if parse.body != response.body:
        problems.append(f"bodies differ: {len(response.body)} bytes by hand, {len(parse.body)} by h11")
    if parse.trailers != response.trailers:
        problems.append("the trailers differ")
    return problems


# ---------------------------------------------------------------- showing it

def visible(data: bytes, limit: int = 160) -> str:
    """Bytes as text with CR and LF shown, long runs cut."""
    text = data[:limit].decode("latin-1").replace("\r", "\\r").replace("\n", "\\n")
    return text + (f"… (+{len(data) - limit} bytes)" if len(data) > limit else "")


def print_sent(request: bytes) -> None:
    head, _, body = request.partition(b"\r\n\r\n")
    for line in (head + b"\r\n").splitlines(keepends=True):
        print(f"  → {visible(line)}")
    print(f"  → {visible(CRLF)}")
    if body:
        print(f"  → {visible(body)}")


def print_received(response: Response) -> None:
    for piece, note in response.wire:
        text = visible(piece, 100)
        print(f"  ← {text:<60} {('  # ' + note) if note else ''}".rstrip())
    print(f"  framing: {response.framing}")


def tcp_state(sock: socket.socket) -> str:
    """This socket's TCP state, from the kernel (TCP_INFO), e.g. CLOSE_WAIT once the peer's FIN arrived."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except OSError:
        return "unknown"
    return TCP_STATES.get(info[0], str(info[0]))


def time_wait_lines(a: tuple[str, int], b: tuple[str, int], wait: float = 1.0) -> list[str]:
    """`ss` lines for a TIME_WAIT socket between a and b (either side), polling briefly for it to appear."""
    ss = shutil.which("ss")
    if not ss:
        return []
    flt = f"( sport = :{a[1]} and dport = :{b[1]} ) or ( sport = :{b[1]} and dport = :{a[1]} )"
    deadline = time.monotonic() + wait
    while True:
        out = subprocess.run([ss, "-Htan", "state", "time-wait", flt], capture_output=True, text=True).stdout
        # Columns: Recv-Q Send-Q Local Peer (a state filter drops the State column, so it is put back).
        lines = [f"TIME-WAIT {fields[2]} <-> {fields[3]}" for fields in map(str.split, out.splitlines())
                 if len(fields) >= 4]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# ---------------------------------------------------------------- the demos

@dataclass
class Target:
    host: str  # where to connect
    port: int
    host_header: str
    path: str


def exchange(sock: socket.socket, reader: WireReader, target: Target, path: str, method: str = "GET",
             headers: list[tuple[str, str]] | None = None, quiet: bool = False) -> tuple[bytes, Response, list[str]]:
    """Send one request, read one response, check both against h11; print them unless quiet."""
    headers = [("User-Agent", USER_AGENT), ("Accept", "*/*"), *(headers or [])]
    request = build_request(method, path, target.host_header, headers)
    sock.sendall(request)
    response = read_response(reader, method)
    closed = reader.eof
    problems = agreement(response, parse_with_h11(method, path, target.host_header, headers, b"", response.raw,
                                                  closed), request)
    if not quiet:
        print_sent(request)
        print_received(response)
        print("  h11: " + ("; ".join(problems) if problems else
                          "the same request bytes, and the same status, headers and body from its own parse"))
    return request, response, problems


def demo_keepalive(target: Target) -> list[str]:
    print(f"\n== Two requests on one kept-alive connection: {target.host}:{target.port} ==")
    with socket.create_connection((target.host, target.port), timeout=10) as sock:
        local = sock.getsockname()
        print(f"connect(): handshake done; this connection is {local[0]}:{local[1]} → {target.host}:{target.port}")
        reader = WireReader(sock)
        _, first, problems = exchange(sock, reader, target, target.path, headers=[("X-Request-ID", "rawhttp-1")])
        print(f"\nthe same socket, the same local port {local[1]}: no new handshake")
        _, second, more = exchange(sock, reader, target, target.path, headers=[("X-Request-ID", "rawhttp-2")])
        print(f"\n{reader.recv_calls} recv() calls for both responses; TCP state now {tcp_state(sock)}")
    if "close" in (second.header("Connection") or "").lower():
        problems.append("the server closed the connection after the second request")
    return problems + more


def demo_chunked(target: Target, path: str) -> list[str]:
    print(f"\n== A chunked response, decoded by hand, then by h11: {target.host}:{target.port}{path} ==")
    with socket.create_connection((target.host, target.port), timeout=10) as sock:
        _, response, problems = exchange(sock, WireReader(sock), target, path)
    if not response.chunk_sizes:
        problems.append(f"{path} was not chunked ({response.framing})")
    return problems


def demo_close(target: Target) -> list[str]:
    print(f"\n== Connection: close, and who closes first: {target.host}:{target.port} ==")
    with socket.create_connection((target.host, target.port), timeout=10) as sock:
        local, peer = sock.getsockname(), sock.getpeername()
        reader = WireReader(sock)
        _, response, problems = exchange(sock, reader, target, target.path, headers=[("Connection", "close")])
        after = reader.until_close()  # b"" at once: the server's FIN has arrived
        state = tcp_state(sock)
        print(f"recv() → {after!r}: the server sent its FIN first; this socket is now {state}")
        if after or state != "CLOSE_WAIT":
            problems.append(f"expected the server to close first, socket state {state}")
    print("close() → our FIN; the side that closed first waits in TIME_WAIT (2×MSL) before the port is reusable:")
    lines = time_wait_lines(local, peer)
    for line in lines:
        print(f"  ss: {line}")
    if not lines:
        print("  (no TIME_WAIT socket visible here: `ss` is missing, or the server lives in another network "
              "namespace, e.g. a container)")
    return problems


def target_of(url: str) -> Target:
    parts = urlsplit(url if "://" in url else Site.from_env().base_url + url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"an http:// URL is needed, not {url!r}")
    port = parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.hostname, port, parts.netloc, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="?", default="/web/json",
                        help="http://HOST:PORT/PATH, or a path on the stack's nginx (default /web/json)")
    parser.add_argument("--demo", choices=["keepalive", "chunked", "close", "all"], default="all")
    parser.add_argument("--chunked-path", help="a path answered with a chunked body "
                                               "(default: <the URL's service prefix>stream/3)")
    args = parser.parse_args(argv)
    target = target_of(args.url)
    prefix = "/" + target.path.strip("/").split("/")[0] + "/" if target.path.strip("/") else "/httpbin/"
    chunked_path = args.chunked_path or f"{prefix}stream/3"
    problems: list[str] = []
    try:
        if args.demo in ("keepalive", "all"):
            problems += demo_keepalive(target)
        if args.demo in ("chunked", "all"):
            problems += demo_chunked(target, chunked_path)
        if args.demo in ("close", "all"):
            problems += demo_close(target)
    except (OSError, ProtocolError) as error:
        print(f"\nfailed: {type(error).__name__}: {error}")
        return 1
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
