"""HTTP/3 over QUIC through nginx: what a stack whose nginx has http_v3_module (Compose's image) must show.

The client is aioquic (wire/quic.py), not ours: QUIC's packets, TLS 1.3 and QPACK are its. What is ours is the
edge config, the Alt-Svc advertisement, and the claim that nothing a client sends over UDP (garbage, a mutated
Initial, a handshake abandoned halfway, any request head) costs nginx its service or draws a 5xx.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from stack.topology import NGINX, ROOT
from tests.e2e.contract import CONNECTION_SPECIFIC_FIELDS
from wire import quic

DATAGRAMS = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
REQUESTS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
VERSIONS = [b"\x00\x00\x00\x01", b"\x6b\x33\x43\xcf", b"\x00\x00\x00\x00", b"\xfa\xce\xb0\x0c"]  # v1, v2, VN, other


def first_initial(peer: tuple[str, int]) -> bytes:
    """A real client's first datagram: aioquic's Initial with its ClientHello, padded to 1200 bytes."""
    connection = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN,
                                                                server_name="localhost"))
    connection.connect(peer, now=time.time())
    return connection.datagrams_to_send(now=time.time())[0][0]


# What a client can put in a datagram: anything; a long header with any type, version and rest; a short header.
ANY_DATAGRAM = st.one_of(
    st.binary(max_size=1400),
    st.builds(lambda kind, version, rest: bytes([0xC0 | kind << 4]) + version + rest,
              st.integers(0, 3), st.sampled_from(VERSIONS), st.binary(max_size=1300)),
    st.builds(lambda rest: b"\x40" + rest, st.binary(max_size=200)),
)
def mutate(datagram: bytes, edits: list[tuple[int, int]]) -> bytes:
    """`datagram` with each (position, byte) of `edits` written over it."""
    changed = bytearray(datagram)
    for position, value in edits:
        changed[position] = value
    return bytes(changed)


TOKEN = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-"), min_size=1, max_size=20)


class Http3Contract:
    """For a stack fixture whose nginx offers HTTP/3 (the Compose stack: its image's nginx is built with it)."""

    def url(self, stack, path: str) -> str:
        return f"https://{stack.site.public_host}:{stack.site.tls_port}{path}"

    def udp_peer(self, stack) -> tuple[str, int]:
        return stack.site.public_host, stack.site.tls_port

    def assert_serving(self, stack) -> None:
        """An HTTP/3 request, an HTTPS one and a plain one are all answered 200."""
        got = quic.fetch(self.url(stack, "/web/json"), stack.site.tls.ca)
        assert got.status == 200, got.error
        https = requests.get(stack.site.tls_base_url + "/catalog/json", verify=str(stack.site.tls.ca), timeout=10)
        assert https.status_code == 200 and requests.get(stack.url("/httpbin/get"), timeout=10).status_code == 200

    def nginx_started(self, stack) -> tuple[str, int]:
        state = json.loads(subprocess.run(["docker", "inspect", stack.container(NGINX.name)], capture_output=True,
                                          text=True, check=True).stdout)[0]
        return state["State"]["StartedAt"], state["RestartCount"]

    def test_nginx_offers_http3_exactly_because_its_build_has_the_module(self, stack):
        configure = subprocess.run(["docker", "exec", stack.container(NGINX.name), "nginx", "-V"],
                                   capture_output=True, text=True, check=True).stderr
        assert "--with-http_v3_module" in configure.split()  # the images Compose uses (nginx.org's, the stand-in)
        http3 = stack.driver().http3()
        assert http3.offered and http3.said.startswith("HTTP/3: on") and "has http_v3_module" in http3.said, http3
        urls = stack.deploy("urls")
        assert urls.returncode == 0 and urls.stdout.count("over HTTP/3   make trace HTTP=3") == 1, urls.stdout

    def test_alt_svc_names_the_udp_port_on_https_answers_only(self, stack):
        ca = str(stack.site.tls.ca)
        advertised = f'h3=":{stack.site.tls_port}"; ma=86400'
        for path in ("/web/json", "/no-such-page", "/catalog/items/999999"):  # a service's answer, nginx's own 404s
            https = requests.get(stack.site.tls_base_url + path, verify=ca, timeout=10)
            assert https.headers.get("Alt-Svc") == advertised, (path, https.status_code, https.headers)
        assert "Alt-Svc" not in requests.get(stack.url("/web/json"), timeout=10).headers  # plain HTTP: no h3 origin
        over_h3 = quic.fetch(self.url(stack, "/web/json"), stack.site.tls.ca)
        assert over_h3.status == 200 and over_h3.header("alt-svc") is None  # already there

    def test_http3_answers_what_https_answers_in_one_round_trip(self, stack):
        ca = stack.site.tls.ca
        for path in ("/web/json", "/catalog/json", "/httpbin/get?lesson=quic"):
            rid = f"h3-{uuid.uuid4().hex[:12]}"
            got = quic.fetch(self.url(stack, path), ca, request_id=rid)
            https = requests.get(stack.site.tls_base_url + path, verify=str(ca), timeout=10)
            assert got.status == https.status_code == 200, (path, got.error)
            assert got.alpn == "h3" and got.header("x-request-id") == rid
            mine, theirs = json.loads(got.body), https.json()
            if "httpbin" in path:  # the echo: the same arguments, the scheme the client used, our request id
                assert mine["args"] == theirs["args"] == {"lesson": "quic"}
                assert mine["url"] == theirs["url"] and mine["url"].startswith("https://")
                assert mine["headers"]["X-Request-Id"] == rid
            else:
                assert mine == theirs
            assert re.search(rf'"GET {re.escape(path)} HTTP/3\.0" 200 \d+ rid={rid} ', stack.logs("nginx"))
            # QUIC's handshake: ClientHello in the first Initial; ServerHello to Finished in the server's first
            # flight; the client's Finished leaves with the request; one round trip before it; one close frame.
            assert got.round_trips_before_request() == 1
            assert got.datagrams[0].sent and got.datagrams[0].tls == ["ClientHello"]
            assert [p.kind for p in got.datagrams[0].packets] == ["Initial"]
            flight = [name for d in got.datagrams if not d.sent for name in d.tls]
            assert flight[:5] == ["ServerHello", "EncryptedExtensions", "Certificate", "CertificateVerify",
                                  "Finished"]
            request = next(d for d in got.datagrams if d.sent and 0 in d.stream_ids())
            assert "Finished" in request.tls and "1-RTT" in [p.kind for p in request.packets]
            assert got.datagrams[-1].sent and got.datagrams[-1].carries("connection_close")

    @pytest.mark.skipif(os.geteuid() != 0, reason="capturing packets needs root (CI runs as root)")
    def test_trace_over_http3_tells_the_quic_handshake_beside_tcp_and_tls(self, stack, tmp_path):
        picture = tmp_path / "h3.html"
        result = subprocess.run([sys.executable, "-m", "wire.trace", "--http", "3", "/web/json", "--format", "html",
                                 "--out", str(picture)], cwd=ROOT, env=stack.env, capture_output=True, text=True,
                                timeout=90)
        out = result.stdout
        assert result.returncode == 0 and "Traceback" not in result.stderr, out + result.stderr
        rid = re.search(r"request id (trace-[0-9a-f]+);", out).group(1)
        sections = dict(re.findall(r"\n(\d)\. [^\n]*\n(.*?)(?=\n\d\. |\Z)", out, re.DOTALL))
        # 2: TCP and TLS, from the capture: SYN, SYN-ACK, then TLS; two round trips; Alt-Svc read
        assert re.search(r"SYN +seq=", sections["2"]) and re.search(r"SYN-ACK +seq=", sections["2"])
        assert "round trips before the request's first byte: 2 " in sections["2"]
        assert f'Alt-Svc: h3=":{stack.site.tls_port}"' in sections["2"]
        # 3: the datagrams, their packets as the headers say, the TLS messages in them; one round trip
        quic_part = sections["3"]
        assert re.search(r"UDP →  1200 B  Initial #0 \(\d+ B\): crypto.*TLS: ClientHello", quic_part)
        assert re.search(r"UDP ←  *\d+ B  Initial #0 .*\| Handshake #0 .*TLS: ServerHello, EncryptedExtensions, "
                         r"Certificate, CertificateVerify, Finished", quic_part)
        assert re.search(r"UDP →  *\d+ B  .*1-RTT #\d+ .*TLS: Finished   streams: 0 ", quic_part)
        assert "round trips before the request's first byte: 1 " in quic_part
        assert re.search(r"0  client-initiated, bidirectional +the request", sections["4"])
        assert re.search(r"3  server-initiated, unidirectional +HTTP/3 control stream", sections["4"])
        assert re.search(rf'"GET /web/json HTTP/3\.0" 200 27 rid={rid} ', sections["5"])
        assert "nginx → web over TCP, HTTP/1.1" in sections["5"]
        assert ":status: 200" in sections["6"] and '{"message":"Hello, World!"}' in sections["6"]
        assert re.search(r"UDP → \d+ B  1-RTT #\d+ \(\d+ B\): connection_close", sections["7"])
        assert "no FIN, no TIME_WAIT" in sections["7"] and "ss finds no socket" in sections["7"]
        assert re.search(r"round trips before the request +2 +\| +1 ", sections["8"])
        # The picture: every datagram the client sent or received is an arrow, and a table row; the qlog beside it
        page = picture.read_text()
        local = re.search(r"The QUIC handshake over UDP: (\S+) →", out).group(1)
        rows = re.findall(r'<tr class="packet"><td>[^<]+</td><td>([^<]+)</td><td>([^<]+)</td>', page)
        client_rows = [row for row in rows if local in row]
        told = len(re.findall(r"  UDP [→←] ", quic_part)) + len(re.findall(r"  UDP [→←] ", sections["7"]))
        assert len(client_rows) >= told >= 4 and page.count('data-kind="close"') >= 1
        qlog = json.loads(picture.with_suffix(".qlog").read_text())
        names = {event["name"] for trace in qlog["traces"] for event in trace["events"]}
        assert {"transport:packet_sent", "transport:packet_received", "http:frame_created"} <= names

    def test_tcp_vs_udp_compares_the_same_url_over_tcp_and_tls_and_over_quic(self, stack):
        """`make tcp-vs-udp`'s HTTP row, with no capture needed: two round trips before an HTTPS request (connect,
        then TLS 1.3's handshake, counted through memory buffers) against QUIC's one."""
        result = subprocess.run([sys.executable, "-m", "wire.quic", "compare"], cwd=ROOT, env=stack.env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert re.search(r"\n  TCP: 2 round trips before the request \(connect\(\), then the TLS handshake\)",
                         result.stdout), result.stdout
        assert re.search(r"\n  UDP: 1 round trip before the request .*HTTP/3 200 in \d+ datagrams, closed by one "
                         r"CONNECTION_CLOSE", result.stdout), result.stdout

    def test_garbage_datagrams_leave_nginx_serving(self, stack):
        """Generated datagrams, mutated and cut copies of a real Initial: nginx drops or answers each (a Version
        Negotiation, a stateless reset), and goes on serving every protocol."""
        peer = self.udp_peer(stack)
        started = self.nginx_started(stack)
        initial = first_initial(peer)
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:

            @DATAGRAMS
            @given(datagram=st.one_of(
                ANY_DATAGRAM,
                st.integers(0, len(initial)).map(lambda cut: initial[:cut]),
                st.lists(st.tuples(st.integers(0, len(initial) - 1), st.integers(0, 255)), min_size=1,
                         max_size=8).map(lambda edits: mutate(initial, edits)),
            ))
            def send(datagram: bytes) -> None:
                nonlocal sent
                sock.sendto(datagram, peer)
                sent += 1

            send()
        assert sent >= 300
        self.assert_serving(stack)
        assert self.nginx_started(stack) == started  # the same container, never restarted
        assert not re.search(r"exited on signal|worker process \d+ exited", stack.logs("nginx"))

    def test_clients_that_vanish_mid_handshake_leave_nginx_serving(self, stack):
        """Forty clients send their ClientHello and are gone; twenty more read the server's flight and never
        answer it: nginx holds each until its handshake timer ends, and serves everyone else meanwhile."""
        peer = self.udp_peer(stack)
        for number in range(60):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.connect(peer)
                sock.send(first_initial(peer))
                if number >= 40:
                    sock.settimeout(2)
                    assert sock.recv(65_535)  # the server's Initial and Handshake: then silence from here
        for _ in range(10):
            self.assert_serving(stack)

    def test_a_body_too_large_is_a_413_and_one_that_never_comes_holds_up_nobody(self, stack):
        """Bodies over HTTP/3 meet the same edge as over TCP: past client_max_body_size a 413 problem document;
        a client that sends its head and stalls has its stream reset when nginx's body timeout ends (over HTTP/3
        nginx resets rather than answering 408), and everyone else is served meanwhile."""
        ca = stack.site.tls.ca
        large = quic.fetch(self.url(stack, "/httpbin/post"), ca, method=b"POST", body=b"x" * 1_100_000,
                           extra_headers=[(b"content-type", b"application/octet-stream")])
        assert large.status == 413 and json.loads(large.body)["status"] == 413, (large.status, large.error)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            stalled = pool.submit(quic.fetch, self.url(stack, "/httpbin/post"), ca, method=b"POST",
                                  extra_headers=[(b"content-length", b"100")], end_stream=False, timeout=20)
            started = time.monotonic()
            while not stalled.done() and time.monotonic() - started < 5:
                self.assert_serving(stack)
            assert not stalled.done()  # still waiting for its body while the others were served
            answer = stalled.result(timeout=30)
        assert answer.status is None and "reset the request's stream" in (answer.error or ""), answer.error
        assert time.monotonic() - started >= 5

    def test_connection_specific_fields_over_http3_are_a_400(self, stack):
        """RFC 9114 §4.2: an HTTP/3 request with a field that exists only for an HTTP/1.1 connection is
        malformed; the edge answers 400 (nginx alone would pass it on)."""
        for name, value in CONNECTION_SPECIFIC_FIELDS:
            got = quic.fetch(self.url(stack, "/web/json"), stack.site.tls.ca,
                             extra_headers=[(name.encode(), value.encode())])
            assert got.status == 400 and json.loads(got.body)["status"] == 400, (name, got.status, got.body)
        trailers = quic.fetch(self.url(stack, "/web/json"), stack.site.tls.ca, extra_headers=[(b"te", b"trailers")])
        assert trailers.status == 200

    @REQUESTS
    @given(path=st.binary(max_size=60), name=st.one_of(TOKEN, st.binary(min_size=1, max_size=16)),
           value=st.binary(max_size=40), prefix=st.sampled_from(["/web/", "/catalog/", "/httpbin/", "/"]))
    def test_generated_http3_request_heads_never_draw_a_5xx(self, stack, path, name, value, prefix):
        """Any path bytes after a service's prefix, any header name and value (control bytes too), over HTTP/3:
        answered below 500, or refused as malformed (the stream reset), never a server error or no answer."""
        try:
            got = quic.fetch(self.url(stack, "/"), stack.site.tls.ca, path=prefix.encode() + path,
                             extra_headers=[(name, value) if isinstance(name, bytes) else (name.encode(), value)])
        except ValueError:  # aioquic itself refuses to encode it (an empty name): nothing was sent
            reject()
        if got.status is None:
            assert re.match(r"the server (reset the request's stream|closed the connection)", got.error or ""), \
                (prefix, path, name, value, got.error)
        else:
            assert got.status < 500, (prefix, path, name, value, got.status, got.body[:300])
