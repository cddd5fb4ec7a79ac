"""The socket services in-process (each server in a thread on an ephemeral loopback port): their protocols
under concurrent clients, and the hostile clients none of them may stall or crash on."""

from __future__ import annotations

import errno
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.sockets import protocol
from services.sockets.client import ask_time, compare, echo_roundtrip, free_local_port
from services.sockets.echo import EchoServer
from services.sockets.time_tcp import TimeTCPServer
from services.sockets.time_udp import TimeUDPServer
from stack.topology import ROOT
from tests.conftest import free_tcp_udp_port


@pytest.fixture
def serve():
    """Start a server in a thread; every server started is stopped at the end of the test."""
    running = []

    def start(server):
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        return server

    yield start
    for server, thread in running:
        server.shutdown()
        thread.join(5)
        assert not thread.is_alive()


def connect(server, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(server.address, timeout=timeout)


def reset(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): the client vanishes without a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# ---------------------------------------------------------------- the protocol

def test_reply_is_the_seeds_ctime_line_and_info_adds_what_the_server_saw():
    assert protocol.is_time_reply(protocol.reply(b"anything at all\n", "tcp", ("127.0.0.1", 5), 1))
    info = protocol.reply(protocol.info_request(100), "udp", ("10.0.0.1", 53), 1).decode()
    assert info.endswith(" | udp from 10.0.0.1:53 | request 100 bytes in 1 recvfrom() call\r\n")
    assert len(protocol.info_request(100)) == 100 and protocol.wants_info(b"  info\n")
    assert not protocol.is_time_reply(b"ERR busy\r\n")


# ---------------------------------------------------------------- TCP time server

def test_tcp_time_is_one_line_then_the_servers_fin(serve):
    server = serve(TimeTCPServer("127.0.0.1", 0))
    exchange = ask_time(*server.address)
    assert protocol.is_time_reply(exchange.reply)
    assert exchange.receive_sizes[-1] == 0  # the server closed first: recv() returned b""


def test_tcp_time_serves_many_concurrent_clients(serve):
    server = serve(TimeTCPServer("127.0.0.1", 0))
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda _: ask_time(*server.address).reply, range(200)))
    assert all(protocol.is_time_reply(reply) for reply in replies)


def test_tcp_request_in_pieces_is_framed_by_its_newline(serve):
    server = serve(TimeTCPServer("127.0.0.1", 0))
    with connect(server) as sock:
        for piece in (b"IN", b"FO", b"\n"):
            sock.sendall(piece)
            time.sleep(0.05)
        reply = read_all(sock).decode()
    size, calls = map(int, re.search(r"request (\d+) bytes in (\d+) recv\(\) calls", reply).groups())
    assert size == 5 and calls >= 2  # one request, read in several recv() calls: a stream has no boundaries


def test_tcp_carries_a_request_larger_than_any_datagram(serve):
    server = serve(TimeTCPServer("127.0.0.1", 0))
    reply = ask_time(*server.address, request=protocol.info_request(100 * 1024)).reply
    assert b"| tcp from 127.0.0.1:" in reply and b"request 102400 bytes in " in reply


def test_idle_clients_do_not_stall_the_others(serve):
    server = serve(TimeTCPServer("127.0.0.1", 0, timeout=30))
    idle = [connect(server) for _ in range(20)]  # connected, saying nothing
    try:
        assert protocol.is_time_reply(ask_time(*server.address, timeout=3).reply)
    finally:
        for sock in idle:
            sock.close()


def test_a_silent_client_gets_an_error_at_the_deadline_and_a_clean_close(serve):
    server = serve(TimeTCPServer("127.0.0.1", 0, timeout=0.3))
    with connect(server) as sock:
        sock.sendall(b"no newline, ever")
        assert read_all(sock) == b"ERR no complete request line within 0.3 s (end it with a newline)\r\n"


def test_garbage_gets_the_time_and_an_unterminated_request_ends_at_the_half_close(serve):
    server = serve(TimeTCPServer("127.0.0.1", 0))
    with connect(server) as sock:
        sock.sendall(os.urandom(500).replace(b"\n", b"") + b"\n")
        assert protocol.is_time_reply(read_all(sock))
    with connect(server) as sock:
        sock.sendall(b"\x00\xff binary, no newline")
        sock.shutdown(socket.SHUT_WR)  # our FIN: the request is complete
        assert protocol.is_time_reply(read_all(sock))


def test_one_mib_request_is_refused_with_an_error_not_a_reset(serve):
    server = serve(TimeTCPServer("127.0.0.1", 0))
    with connect(server) as sock:
        sender = threading.Thread(target=lambda: sock.sendall(b"x" * (1024 * 1024)), daemon=True)
        sender.start()
        reply = read_all(sock)  # a reset would raise ConnectionResetError here
        sender.join(5)
    assert reply == f"ERR request longer than {protocol.MAX_TCP_REQUEST} bytes\r\n".encode()
    assert protocol.is_time_reply(ask_time(*server.address).reply)


def test_a_client_that_vanishes_leaves_the_server_serving(serve):
    server = serve(TimeTCPServer("127.0.0.1", 0, timeout=1))
    for request in (b"", b"TIME\n", b"INFO " + b"x" * 50_000):
        sock = connect(server)
        sock.sendall(request)
        reset(sock)
    assert protocol.is_time_reply(ask_time(*server.address).reply)


def test_clients_past_the_limit_are_told_busy(serve):
    server = serve(TimeTCPServer("127.0.0.1", 0, timeout=5, max_clients=2))
    held = [connect(server) for _ in range(2)]
    try:
        time.sleep(0.2)  # both accepted and waiting for their requests
        with connect(server) as third:
            assert read_all(third) == b"ERR busy, try again\r\n"
    finally:
        for sock in held:
            sock.close()


# ---------------------------------------------------------------- UDP time server

def test_udp_time_serves_many_concurrent_clients(serve):
    server = serve(TimeUDPServer("127.0.0.1", 0))
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda _: ask_time(*server.address, "udp").reply, range(200)))
    assert all(protocol.is_time_reply(reply) for reply in replies)


def test_udp_each_datagram_is_a_whole_request_even_an_empty_one(serve):
    server = serve(TimeUDPServer("127.0.0.1", 0))
    assert protocol.is_time_reply(ask_time(*server.address, "udp", request=b"").reply)
    reply = ask_time(*server.address, "udp", request=protocol.info_request(60_000)).reply
    assert reply.endswith(b"request 60000 bytes in 1 recvfrom() call\r\n")


def test_udp_cannot_carry_a_64_kib_message(serve):
    server = serve(TimeUDPServer("127.0.0.1", 0))
    with pytest.raises(OSError) as raised:
        ask_time(*server.address, "udp", request=protocol.info_request(70_000))
    assert raised.value.errno == errno.EMSGSIZE


def test_udp_reply_read_with_a_small_buffer_is_truncated_not_continued(serve):
    server = serve(TimeUDPServer("127.0.0.1", 0))
    exchange = ask_time(*server.address, "udp", recv_size=8)
    assert len(exchange.reply) == 8 and exchange.truncated  # the rest of the datagram is gone
    stream = ask_time(*serve(TimeTCPServer("127.0.0.1", 0)).address, recv_size=8)
    assert protocol.is_time_reply(stream.reply) and len(stream.receive_sizes) > 2  # TCP: the rest comes next


def test_udp_garbage_does_not_stop_the_server(serve):
    server = serve(TimeUDPServer("127.0.0.1", 0))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for size in (1, 500, 65_507):
            sock.sendto(os.urandom(size), server.address)
    assert protocol.is_time_reply(ask_time(*server.address, "udp").reply)


def test_the_tcp_vs_udp_lessons_say_what_each_transport_did(serve, capsys):
    port = free_tcp_udp_port()  # one service, two transports, one port number
    serve(TimeTCPServer("127.0.0.1", port))
    serve(TimeUDPServer("127.0.0.1", port))
    assert compare("127.0.0.1", port) == 0
    out = capsys.readouterr().out
    for expected in ("UDP: none: the first datagram is the request",
                     "TCP: one reply; the server framed it: request 18 bytes in",
                     "UDP: 3 replies: each datagram is a whole request",
                     "TCP: request 102400 bytes in", "UDP: EMSGSIZE",
                     "TCP: whole reply (26 bytes) in", "UDP: 8 bytes, then MSG_TRUNC=True",
                     "TCP: ECONNREFUSED", "UDP: timed out: silence", "connected socket: ECONNREFUSED"):
        assert expected in out, expected


def test_a_server_that_is_down_refused_over_tcp_silence_over_udp():
    with pytest.raises(ConnectionRefusedError):  # the kernel answered the SYN with a reset
        ask_time("127.0.0.1", free_local_port("tcp"), "tcp", timeout=1)
    with pytest.raises(ConnectionRefusedError):  # a connected UDP socket hears the ICMP port-unreachable
        ask_time("127.0.0.1", free_local_port("udp"), "udp", timeout=1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(TimeoutError):
        sock.settimeout(0.5)  # an unconnected one hears nothing at all
        sock.sendto(b"TIME\n", ("127.0.0.1", free_local_port("udp")))
        sock.recvfrom(100)


# ---------------------------------------------------------------- selectors echo server

def test_echo_serves_many_concurrent_clients_byte_for_byte(serve):
    server = serve(EchoServer("127.0.0.1", 0))
    payloads = [os.urandom(size) for size in range(1, 200_000, 6_700)]
    with ThreadPoolExecutor(30) as pool:
        echoed = list(pool.map(lambda p: echo_roundtrip(*server.address, p), payloads))
    assert echoed == payloads


def test_echo_of_one_mib(serve):
    server = serve(EchoServer("127.0.0.1", 0, max_pending=64 * 1024))
    payload = os.urandom(1024 * 1024)
    assert echo_roundtrip(*server.address, payload) == payload
    assert server.peak_pending <= 64 * 1024


def test_partial_writes_to_a_slow_reader_lose_nothing(serve):
    server = serve(EchoServer("127.0.0.1", 0, max_pending=32 * 1024, send_buffer=4096))
    payload = os.urandom(512 * 1024)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: send() can take only part
    sock.settimeout(10)
    sock.connect(server.address)
    threading.Thread(target=lambda: (sock.sendall(payload), sock.shutdown(socket.SHUT_WR)), daemon=True).start()
    received = bytearray()
    while chunk := sock.recv(2048):
        received += chunk
        time.sleep(0.0005)
    sock.close()
    assert bytes(received) == payload
    assert server.partial_writes > 0 and server.peak_pending <= 32 * 1024


def test_a_client_that_never_reads_is_held_back_without_stalling_others(serve):
    server = serve(EchoServer("127.0.0.1", 0, max_pending=64 * 1024))
    hog = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hog.connect(server.address)
    hog.setblocking(False)
    pushed, deadline, block = 0, time.monotonic() + 2, os.urandom(65536)
    while time.monotonic() < deadline and pushed < 16 * 1024 * 1024:
        try:
            pushed += hog.send(block)
        except BlockingIOError:
            time.sleep(0.01)
    try:
        assert pushed < 16 * 1024 * 1024  # TCP flow control stopped it: the server stopped reading
        assert server.peak_pending <= 64 * 1024  # and our memory for it stayed bounded
        assert echo_roundtrip(*server.address, b"still here\n", timeout=3) == b"still here\n"
    finally:
        reset(hog)


def test_a_client_that_leaves_mid_reply_is_cleaned_up(serve):
    server = serve(EchoServer("127.0.0.1", 0))
    for _ in range(5):
        sock = connect(server)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(os.urandom(256 * 1024))
        reset(sock)  # gone while the echo is still being written
    deadline = time.monotonic() + 5
    while server.clients and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.clients
    assert echo_roundtrip(*server.address, b"ok\n") == b"ok\n"


def test_idle_clients_are_closed_after_the_idle_timeout(serve):
    server = serve(EchoServer("127.0.0.1", 0, idle_timeout=0.3))
    with connect(server) as sock:
        started = time.monotonic()
        assert sock.recv(10) == b""  # the server's FIN
        assert time.monotonic() - started >= 0.3
    assert not server.clients


def test_clients_past_the_limit_are_closed_at_once(serve):
    server = serve(EchoServer("127.0.0.1", 0, max_clients=2))
    held = [connect(server) for _ in range(2)]
    try:
        with connect(server) as third:
            assert third.recv(10) == b""  # accepted, then closed at once: no room
        held[0].sendall(b"first\n")
        assert held[0].recv(100) == b"first\n"
    finally:
        for sock in held:
            sock.close()


# ---------------------------------------------------------------- out of file descriptors

def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


@pytest.mark.parametrize("module", ["services.sockets.echo", "services.sockets.time_tcp"])
def test_out_of_descriptors_the_server_neither_spins_nor_dies(module):
    """More clients than the process may have descriptors: accept() fails with EMFILE while the connections
    stay queued. The server must wait (not spin on a listener that is always readable) and recover."""
    port = free_local_port("tcp")
    server = subprocess.Popen(
        [sys.executable, "-m", module, "--bind", f"127.0.0.1:{port}"], cwd=ROOT,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.1)
        held += [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(60)]  # past the limit
        time.sleep(0.5)
        before = cpu_seconds(server.pid)
        time.sleep(1.0)
        assert cpu_seconds(server.pid) - before < 0.5  # waiting, not spinning
        assert server.poll() is None
        for sock in held:
            sock.close()
        held.clear()
        deadline = time.monotonic() + 10
        while True:  # recovered: a new client is served once descriptors are free again
            try:
                if module.endswith("echo"):
                    assert echo_roundtrip("127.0.0.1", port, b"back\n", timeout=2) == b"back\n"
                else:
                    assert protocol.is_time_reply(ask_time("127.0.0.1", port, timeout=2).reply)
                break
            except (OSError, AssertionError):
                assert time.monotonic() < deadline
                time.sleep(0.2)
    finally:
        for sock in held:
            sock.close()
        server.terminate()
        assert server.wait(10) == 0  # SIGTERM: a clean stop
