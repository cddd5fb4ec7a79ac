"""The AF_PACKET capture (wire/capture.py) on a real loopback connection, checked against tcpdump's reading
of the very same packets. Capturing needs root (or CAP_NET_RAW), as it does for tcpdump."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from wire.capture import FIN, Capture, decode

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="packet capture needs root (CI runs as root)")


def serve_once(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.recv(100)
        conn.sendall(b"pong\n")
    # the server closes first: its FIN leads


def exchange():
    listener = socket.create_server(("127.0.0.1", 0))
    server = listener.getsockname()
    threading.Thread(target=serve_once, args=(listener,), daemon=True).start()
    with Capture() as capture:
        client = socket.create_connection(server, timeout=5)
        local = client.getsockname()
        client.sendall(b"ping\n")
        assert client.recv(100) == b"pong\n"
        assert client.recv(100) == b""
        client.close()
        capture.wait_for(lambda ps: sum(1 for p in ps if p.between(local, server) and p.has(FIN)) >= 2,
                         2.0)
    listener.close()
    return local, server, [p for p in capture.snapshot() if p.transport == "tcp" and p.between(local, server)]


@needs_root
def test_a_connection_is_captured_from_handshake_to_close():
    local, server, packets = exchange()
    names = [p.flag_names for p in packets]
    syn, syn_ack, ack = packets[:3]
    assert names[:3] == ["SYN", "SYN-ACK", "ACK"]
    assert (syn.src, syn_ack.src, ack.src) == (local, server, local)
    assert syn_ack.ack == syn.seq + 1 and ack.ack == syn_ack.seq + 1  # each side acknowledges the other's ISN
    assert any(option.startswith("mss ") for option in syn.options)
    assert [p.payload for p in packets if p.payload] == [b"ping\n", b"pong\n"]
    fins = [p for p in packets if p.has(FIN)]
    assert fins[0].src == server and fins[1].src == local  # the server closed first
    assert len(packets) == len({(p.src, p.seq, p.ack, p.flags, len(p.payload)) for p in packets})  # no copies
    assert all(a.time <= b.time for a, b in zip(packets, packets[1:], strict=False))


@needs_root
@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed (`make up` installs it)")
def test_sequence_numbers_agree_with_tcpdump(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # tcpdump's filter needs the port before the exchange; reuse it right away
    dump = subprocess.Popen(["tcpdump", "-i", "lo", "-nn", "-S", "-l", "-c", "3", f"tcp port {port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # tcpdump opens its capture before the handshake starts
    listener = socket.create_server(("127.0.0.1", port))
    threading.Thread(target=serve_once, args=(listener,), daemon=True).start()
    with Capture() as capture:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            local = client.getsockname()
            client.sendall(b"ping\n")
            client.recv(100)
        capture.wait_for(lambda ps: sum(1 for p in ps if p.between(local, ("127.0.0.1", port))) >= 3, 2)
    listener.close()
    try:
        out, _ = dump.communicate(timeout=10)
    finally:
        if dump.poll() is None:
            dump.send_signal(signal.SIGINT)
            dump.wait(5)
    ours = [p for p in capture.snapshot() if p.transport == "tcp" and p.between(local, ("127.0.0.1", port))][:3]
    # tcpdump -S prints absolute sequence numbers: the SYN's and the SYN-ACK's are each side's ISN.
    theirs = [re.search(r"Flags \[(\S+)\], seq (\d+), ", line).groups() for line in out.splitlines()[:2]]
    assert [(flags, int(seq)) for flags, seq in theirs] == [("S", ours[0].seq), ("S.", ours[1].seq)]
    assert f"ack {ours[1].seq + 1}," in out.splitlines()[2]  # the handshake's last ACK, in both readings


def test_decode_ignores_what_is_not_tcp_or_udp():
    icmp_echo = bytes.fromhex("4500001c0001000040017cdd7f0000017f000001" "0800f7ff00000000")
    assert decode(icmp_echo, 0.0, "lo") is None
    assert decode(b"\x45garbage", 0.0, "lo") is None
