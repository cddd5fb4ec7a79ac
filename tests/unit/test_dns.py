"""The stack's DNS server: the resolver's answers, then the real server over UDP and TCP (dnspython client)."""

import subprocess
import sys
import time

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from deploy.topology import ROOT
from services.dns.server import Zone, ZoneResolver, addresses_of
from tests.conftest import free_tcp_udp_port

ZONE = Zone("stack.internal", {"": "127.0.0.1", "web": "127.0.10.11", "local": "localhost"}, ttl=5)


def ask(name, qtype="A"):
    return ZoneResolver(ZONE).resolve(DNSRecord.question(name, qtype), None)


def test_a_record_is_an_authoritative_answer():
    reply = ask("web.stack.internal")
    assert reply.header.aa == 1 and reply.header.rcode == RCODE.NOERROR
    assert [(str(rr.rdata), rr.ttl) for rr in reply.rr] == [("127.0.10.11", 5)]


def test_apex_answers_a_soa_and_ns():
    assert [str(rr.rdata) for rr in ask("stack.internal").rr] == ["127.0.0.1"]
    assert ask("stack.internal", "SOA").rr[0].rtype == QTYPE.SOA
    assert str(ask("stack.internal", "NS").rr[0].rdata) == "dns.stack.internal."


def test_host_name_targets_are_resolved_at_query_time():
    # Compose's records name services; the server asks the system resolver (Docker's DNS there).
    assert [str(rr.rdata) for rr in ask("local.stack.internal").rr] == ["127.0.0.1"]
    assert addresses_of("10.1.2.3") == ["10.1.2.3"]


def test_unknown_name_in_zone_is_nxdomain_with_soa():
    reply = ask("nope.stack.internal")
    assert reply.header.rcode == RCODE.NXDOMAIN and reply.auth[0].rtype == QTYPE.SOA


def test_existing_name_without_that_type_is_nodata():
    reply = ask("web.stack.internal", "AAAA")
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr and reply.auth


def test_names_outside_the_zone_are_refused():
    reply = ask("example.com")
    assert reply.header.rcode == RCODE.REFUSED and reply.header.aa == 0


@pytest.fixture
def dns_server(tmp_path):
    zone_file = tmp_path / "zone.json"
    zone_file.write_text('{"zone": "stack.internal", "ttl": 5, "records": {"web": "127.0.10.11"}}')
    port = free_tcp_udp_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.dns", "--zone-file", str(zone_file), "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    query = dns.message.make_query("web.stack.internal", "A")
    deadline = time.monotonic() + 10
    while True:
        try:
            dns.query.udp(query, "127.0.0.1", port=port, timeout=0.3)
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
    yield port
    proc.terminate()
    assert proc.wait(timeout=10) == 0  # SIGTERM is a clean exit


@pytest.mark.parametrize("transport", [dns.query.udp, dns.query.tcp], ids=["udp", "tcp"])
def test_server_answers_over_udp_and_tcp(dns_server, transport):
    reply = transport(dns.message.make_query("web.stack.internal", "A"), "127.0.0.1", port=dns_server, timeout=2)
    assert reply.rcode() == dns.rcode.NOERROR
    assert [item.address for item in reply.answer[0]] == ["127.0.10.11"]
    assert reply.answer[0].rdtype == dns.rdatatype.A
