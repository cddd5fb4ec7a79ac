"""Packet capture with an AF_PACKET socket: the TCP segments and UDP datagrams that one trace sends and causes.

Linux only, and root (or CAP_NET_RAW): `Capture()` raises CaptureUnavailable with the reason otherwise.
An AF_PACKET socket of type SOCK_DGRAM bound to every protocol (ETH_P_ALL: a socket for IPv4 alone would
miss what this host sends out and what a Docker bridge forwards between containers) receives every frame
that any interface of this network namespace sees, without its link-layer header; the IPv4 ones are kept.
The kernel stamps each with its arrival time (SO_TIMESTAMPNS).
dpkt decodes the IP, TCP and UDP headers.

Two kinds of copies are dropped, as libpcap does: on the loopback interface every packet is seen twice (once
sent, PACKET_OUTGOING, once received), and a packet crossing a Docker bridge is seen on each interface it
passes (the container's veth, the bridge): a packet already seen with the same IP id, addresses and TCP
sequence numbers is the same packet.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import dpkt

ETH_P_ALL = 0x0003  # every protocol: only such sockets also see packets this host sends and bridges
ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python's socket module may not name it
FIN, SYN, RST, PSH, ACK = dpkt.tcp.TH_FIN, dpkt.tcp.TH_SYN, dpkt.tcp.TH_RST, dpkt.tcp.TH_PUSH, dpkt.tcp.TH_ACK
TCP_FLAG_NAMES = ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (ACK, "ACK"))


class CaptureUnavailable(Exception):
    """Packets cannot be captured here; the message says why."""


@dataclass(frozen=True)
class Packet:
    time: float  # the kernel's arrival timestamp, seconds since the epoch
    interface: str
    transport: str  # "tcp" or "udp"
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes
    flags: int = 0  # TCP only, from here on
    seq: int = 0
    ack: int = 0
    window: int = 0
    options: tuple[str, ...] = ()

    @property
    def flag_names(self) -> str:
        """SYN, SYN-ACK, ACK, PSH-ACK, FIN-ACK, RST-ACK …"""
        return "-".join(name for bit, name in TCP_FLAG_NAMES if self.flags & bit) or "none"

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    def between(self, a: tuple[str, int], b: tuple[str, int]) -> bool:
        return {self.src, self.dst} == {a, b}


def tcp_options(raw: bytes) -> tuple[str, ...]:
    """The options a SYN negotiates, in tcpdump's words: mss 65495, sackOK, TS val 1 ecr 0, wscale 7."""
    names = []
    for kind, data in dpkt.tcp.parse_opts(raw):
        if kind == dpkt.tcp.TCP_OPT_MSS and len(data) == 2:
            names.append(f"mss {struct.unpack('!H', data)[0]}")
        elif kind == dpkt.tcp.TCP_OPT_WSCALE and len(data) == 1:
            names.append(f"wscale {data[0]}")
        elif kind == dpkt.tcp.TCP_OPT_SACKOK:
            names.append("sackOK")
        elif kind == dpkt.tcp.TCP_OPT_TIMESTAMP and len(data) == 8:
            names.append("TS val {} ecr {}".format(*struct.unpack("!II", data)))
    return tuple(names)


def decode(data: bytes, arrived: float, interface: str) -> Packet | None:
    """One IPv4 packet as a Packet, or None for anything but TCP and UDP (and for fragments)."""
    try:
        ip = dpkt.ip.IP(data)
    except (dpkt.UnpackError, struct.error):
        return None
    if ip.offset:  # a later fragment: no transport header to read
        return None
    src, dst = socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst)
    layer = ip.data
    if isinstance(layer, dpkt.tcp.TCP):
        return Packet(arrived, interface, "tcp", (src, layer.sport), (dst, layer.dport), bytes(layer.data),
                      layer.flags, layer.seq, layer.ack, layer.win, tcp_options(layer.opts))
    if isinstance(layer, dpkt.udp.UDP):
        return Packet(arrived, interface, "udp", (src, layer.sport), (dst, layer.dport), bytes(layer.data))
    return None


class Capture:
    """Capture in a background thread while the `with` block runs; `packets` holds what was seen."""

    def __init__(self, max_packets: int = 100_000) -> None:
        self.max_packets = max_packets
        self.packets: list[Packet] = []
        self._seen: set[tuple] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        except AttributeError:
            raise CaptureUnavailable("this system has no AF_PACKET sockets (Linux only)") from None
        except PermissionError:
            raise CaptureUnavailable("capturing packets needs root or CAP_NET_RAW (try: sudo make trace)") from None
        except OSError as error:
            raise CaptureUnavailable(f"no packet socket: {error}") from None
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self.sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def __enter__(self) -> Capture:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def _run(self) -> None:
        space = socket.CMSG_SPACE(16)
        while not self._stop.is_set() and len(self.packets) < self.max_packets:
            try:
                data, ancillary, _, address = self.sock.recvmsg(65_535, space)
            except TimeoutError:
                continue
            except OSError:
                return
            interface, protocol, pkttype = address[0], address[1], address[2]
            if protocol != ETH_P_IP:
                continue
            if interface == "lo" and pkttype == PACKET_OUTGOING:
                continue  # seen again as it is received
            arrived = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    arrived = seconds + nanoseconds / 1e9
            packet = decode(data, arrived, interface)
            if packet is None:
                continue
            ip_id = struct.unpack("!H", data[4:6])[0]
            key = (ip_id, packet.src, packet.dst, packet.seq, packet.ack, packet.flags, len(packet.payload))
            with self._lock:
                if key in self._seen:
                    continue
                self._seen.add(key)
                self.packets.append(packet)

    def snapshot(self) -> list[Packet]:
        with self._lock:
            return sorted(self.packets, key=lambda p: p.time)

    def wait_for(self, predicate: Callable[[list[Packet]], bool], timeout: float) -> bool:
        """Wait until the packets seen so far satisfy `predicate` (e.g. both FINs arrived), or the timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):
                return True
            time.sleep(0.02)
        return predicate(self.snapshot())
