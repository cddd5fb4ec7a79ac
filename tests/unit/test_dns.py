"""The stack's DNS server: the resolver's answers, then the real server over UDP and TCP (dnspython client)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import QTYPE, RCODE, DNSHeader, DNSRecord

from deploy.render import zone
from services.common.stack_dns import NameNotFound, StackResolver
from services.dns.server import UDP_LIMIT_EDNS, Withheld, Zone, ZoneResolver, addresses_of, write_withheld
from stack.topology import HTTP_SERVICES, ROOT, Site
from tests.conftest import free_tcp_udp_port

ZONE = Zone("stack.internal", {"": "127.0.0.1", "web": "127.0.10.11", "local": "localhost"}, ttl=5)
BIG_TXT = [f"record {i} " + "x" * 200 for i in range(8)]  # about 1.8 kB of answer: more than any UDP answer


def ask(name, qtype="A"):
    return ZoneResolver(ZONE).resolve(DNSRecord.question(name, qtype), None)


def test_a_record_is_an_authoritative_answer():
    reply = ask("web.stack.internal")
    assert reply.header.aa == 1 and reply.header.rcode == RCODE.NOERROR
    assert [(str(rr.rdata), rr.ttl) for rr in reply.rr] == [("127.0.10.11", 5)]


def test_a_service_with_instances_has_one_a_record_each_and_each_instance_its_own_name():
    rendered = zone("native")
    resolver = ZoneResolver(Zone(rendered["zone"], rendered["records"], rendered["ttl"], rendered["txt"]))
    web = next(s for s in HTTP_SERVICES if s.name == "web")
    addresses = Site().instance_addresses(web)
    reply = resolver.resolve(DNSRecord.question("web.stack.internal"), None)
    assert [str(rr.rdata) for rr in reply.rr] == addresses and len(addresses) == web.instances >= 2
    for name, address in zip(web.instance_names(), addresses, strict=True):
        assert [str(rr.rdata) for rr in resolver.resolve(DNSRecord.question(f"{name}.stack.internal"), None).rr] \
            == [address]


def test_the_stack_resolver_hands_out_every_instance_in_turn(dns_server):
    resolver = StackResolver(f"127.0.0.1:{dns_server}")
    first, second, third = (resolver.addresses("pair.stack.internal") for _ in range(3))
    assert sorted(first) == ["127.0.10.11", "127.0.10.111"]
    assert second == first[::-1] and third == first  # each call starts at the next instance
    with pytest.raises(NameNotFound):
        resolver.addresses("nope.stack.internal")


def test_apex_answers_a_soa_and_ns():
    assert [str(rr.rdata) for rr in ask("stack.internal").rr] == ["127.0.0.1"]
    assert ask("stack.internal", "SOA").rr[0].rtype == QTYPE.SOA
    assert str(ask("stack.internal", "NS").rr[0].rdata) == "dns.stack.internal."


def test_host_name_targets_are_resolved_at_query_time():
    # Compose's records name services; the server asks the system resolver (Docker's DNS there).
    assert [str(rr.rdata) for rr in ask("local.stack.internal").rr] == ["127.0.0.1"]
    assert addresses_of("10.1.2.3") == ["10.1.2.3"]


def test_a_failed_lookup_of_a_target_is_servfail_never_an_empty_answer(monkeypatch):
    """Compose: when Docker's DNS cannot answer for a moment, an empty answer would make nginx drop every
    replica from its upstream; a SERVFAIL makes it keep them. A name that does not exist stays empty (NODATA)."""
    import socket

    def failing(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", failing)
    reply = ask("local.stack.internal")
    assert reply.header.rcode == RCODE.SERVFAIL and not reply.rr

    def missing(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", missing)
    reply = ask("local.stack.internal")
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr  # NODATA


def test_unknown_name_in_zone_is_nxdomain_with_soa():
    reply = ask("nope.stack.internal")
    assert reply.header.rcode == RCODE.NXDOMAIN and reply.auth[0].rtype == QTYPE.SOA


def test_existing_name_without_that_type_is_nodata():
    reply = ask("web.stack.internal", "AAAA")
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr and reply.auth


def test_names_outside_the_zone_are_refused():
    reply = ask("example.com")
    assert reply.header.rcode == RCODE.REFUSED and reply.header.aa == 0


@contextlib.contextmanager
def serving(zone_file, *options: str, env: dict | None = None):
    """`python -m services.dns` on a free port with that zone file: (port, process) once it answers."""
    port = free_tcp_udp_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.dns", "--zone-file", str(zone_file), "--bind", f"127.0.0.1:{port}",
         *options], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
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
    try:
        yield port, proc
    finally:  # also when the test failed: no server left behind
        proc.terminate()
        code = proc.wait(timeout=10)
    assert code == 0  # SIGTERM is a clean exit


@pytest.fixture
def dns_server(tmp_path):
    zone_file = tmp_path / "zone.json"
    zone_file.write_text(json.dumps({"zone": "stack.internal", "ttl": 5, "records": {"web": "127.0.10.11",
                                                                              "pair": ["127.0.10.11", "127.0.10.111"]},
                                     "txt": {"big": BIG_TXT, "small": ["fits"]}}))
    with serving(zone_file) as (port, _):
        yield port


def test_sighup_reloads_the_zone_file_a_bad_one_keeps_the_old(tmp_path):
    """`make up SCALE=...` rewrites the zone with every instance's address and sends the server a SIGHUP."""
    zone_file = tmp_path / "zone.json"

    def write(records: dict) -> None:
        zone_file.write_text(json.dumps({"zone": "stack.internal", "ttl": 5, "records": records}))

    def answer(port: int) -> list[str]:
        reply = dns.query.udp(dns.message.make_query("web.stack.internal", "A"), "127.0.0.1", port=port, timeout=2)
        return sorted(rr.address for rrset in reply.answer for rr in rrset)

    def until(port: int, wanted: list[str]) -> list[str]:
        deadline = time.monotonic() + 5
        while (got := answer(port)) != wanted and time.monotonic() < deadline:
            time.sleep(0.05)
        return got

    write({"web": ["127.0.10.11", "127.0.10.111"]})
    with serving(zone_file) as (port, proc):
        assert answer(port) == ["127.0.10.11", "127.0.10.111"]
        write({"web": ["127.0.10.11", "127.0.10.111", "127.0.10.112"]})
        proc.send_signal(signal.SIGHUP)
        assert until(port, ["127.0.10.11", "127.0.10.111", "127.0.10.112"]) == [
            "127.0.10.11", "127.0.10.111", "127.0.10.112"]
        zone_file.write_text("{not json")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert proc.poll() is None and answer(port) == ["127.0.10.11", "127.0.10.111", "127.0.10.112"]


PAIR = Zone("stack.internal", {"web": ["127.0.10.11", "127.0.10.111"], "one": "127.0.10.12"}, ttl=5)


def answered(resolver: ZoneResolver, name: str) -> list[str]:
    return [str(rr.rdata) for rr in resolver.resolve(DNSRecord.question(name), None).rr]


def test_withheld_addresses_leave_the_answers_but_never_a_names_last_address(tmp_path):
    listed = tmp_path / "withheld.json"
    resolver = ZoneResolver(PAIR, Withheld(listed))
    assert answered(resolver, "web.stack.internal") == ["127.0.10.11", "127.0.10.111"]  # no file: none withheld
    write_withheld(listed, ["127.0.10.111", "127.0.10.12"])
    assert answered(resolver, "web.stack.internal") == ["127.0.10.11"]  # a replica about to stop is left out
    assert answered(resolver, "one.stack.internal") == ["127.0.10.12"]  # but a name keeps its last address
    write_withheld(listed, [])  # cleared: every address again, read as soon as the file changed
    assert answered(resolver, "web.stack.internal") == ["127.0.10.11", "127.0.10.111"]


def test_an_unreadable_withheld_list_keeps_the_last_good_one_and_says_so_once(tmp_path, caplog):
    listed = tmp_path / "withheld.json"
    resolver = ZoneResolver(PAIR, Withheld(listed))
    write_withheld(listed, ["127.0.10.111"])
    assert answered(resolver, "web.stack.internal") == ["127.0.10.11"]
    for bad in ("{not json", '["not an address"]', '"127.0.10.111"'):
        listed.write_text(bad)
        os.utime(listed, ns=(time.time_ns(), time.time_ns() + 1))  # a change the reader notices
        caplog.clear()
        for _ in range(3):
            assert answered(resolver, "web.stack.internal") == ["127.0.10.11"], bad
        assert [r.levelname for r in caplog.records] == ["ERROR"], bad  # once per change, not per query
    listed.unlink()  # gone: nothing withheld
    assert answered(resolver, "web.stack.internal") == ["127.0.10.11", "127.0.10.111"]


def test_write_withheld_refuses_what_is_not_an_ipv4_address(tmp_path):
    with pytest.raises(ValueError):
        write_withheld(tmp_path / "withheld.json", ["web-2"])
    assert not (tmp_path / "withheld.json").exists()


def test_the_withhold_command_changes_what_the_running_server_answers(tmp_path):
    """What `make up` does before it stops a Compose replica: `python -m services.dns.withhold ADDRESS` in the
    server's container (where $DNS_WITHHELD_FILE names the list), then the same with no address to clear it."""
    zone_file, listed = tmp_path / "zone.json", tmp_path / "withheld.json"
    zone_file.write_text(json.dumps({"zone": "stack.internal", "ttl": 5,
                                     "records": {"web": ["127.0.10.11", "127.0.10.111"]}}))
    env = {**os.environ, "DNS_WITHHELD_FILE": str(listed)}

    def answer(port: int) -> list[str]:
        reply = dns.query.udp(dns.message.make_query("web.stack.internal", "A"), "127.0.0.1", port=port, timeout=2)
        return sorted(rr.address for rrset in reply.answer for rr in rrset)

    def withhold(*addresses: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.dns.withhold", *addresses], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=30)

    with serving(zone_file, env=env) as (port, _):
        assert answer(port) == ["127.0.10.11", "127.0.10.111"]
        assert withhold("127.0.10.111").returncode == 0
        assert answer(port) == ["127.0.10.11"]
        refused = withhold("web-2")
        assert refused.returncode == 2 and "web-2" in refused.stderr
        assert answer(port) == ["127.0.10.11"]  # a refused call changes nothing
        assert withhold().returncode == 0
        assert answer(port) == ["127.0.10.11", "127.0.10.111"]


@pytest.mark.parametrize("transport", [dns.query.udp, dns.query.tcp], ids=["udp", "tcp"])
def test_server_answers_over_udp_and_tcp(dns_server, transport):
    reply = transport(dns.message.make_query("web.stack.internal", "A"), "127.0.0.1", port=dns_server, timeout=2)
    assert reply.rcode() == dns.rcode.NOERROR
    assert [item.address for item in reply.answer[0]] == ["127.0.10.11"]
    assert reply.answer[0].rdtype == dns.rdatatype.A


def test_txt_records_and_a_name_with_only_txt():
    resolver = ZoneResolver(Zone("stack.internal", {}, 5, {"directory": ["a=1", "b=2"]}))
    reply = resolver.resolve(DNSRecord.question("directory.stack.internal", "TXT"), None)
    assert [str(rr.rdata) for rr in reply.rr] == ['"a=1"', '"b=2"']
    nodata = resolver.resolve(DNSRecord.question("directory.stack.internal", "A"), None)
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr


@pytest.mark.parametrize("mode", ["native", "compose"])
def test_the_stacks_directory_is_too_large_for_any_udp_answer(mode):
    """The lesson needs it: the directory record must not fit even an EDNS(0) answer."""
    rendered = zone(mode)
    resolver = ZoneResolver(Zone(rendered["zone"], rendered["records"], rendered["ttl"], rendered["txt"]))
    reply = resolver.resolve(DNSRecord.question("directory.stack.internal", "TXT"), None)
    assert len(reply.pack()) > UDP_LIMIT_EDNS
    names = {text.split()[0] for text in rendered["txt"]["directory"]}
    assert {"service=nginx", "service=web", "service=time-udp", "service=echo", "service=dns"} <= names


def test_udp_answer_too_large_is_truncated_and_tcp_carries_it(dns_server):
    query = dns.message.make_query("big.stack.internal", "TXT")
    udp = dns.query.udp(query, "127.0.0.1", port=dns_server, timeout=2)
    assert udp.flags & dns.flags.TC and not udp.answer  # the question alone, TC set
    assert udp.question == query.question  # still a valid response to this query
    tcp = dns.query.tcp(query, "127.0.0.1", port=dns_server, timeout=2)
    assert not tcp.flags & dns.flags.TC
    assert [s.decode() for rr in tcp.answer[0] for s in rr.strings] == BIG_TXT
    reply, used_tcp = dns.query.udp_with_fallback(query, "127.0.0.1", port=dns_server, timeout=2)
    assert used_tcp and len(reply.answer[0]) == len(BIG_TXT)


def test_edns_raises_the_udp_limit_to_1232_and_is_answered_with_edns(dns_server):
    offered = dns.message.make_query("big.stack.internal", "TXT", use_edns=0, payload=4096)
    reply = dns.query.udp(offered, "127.0.0.1", port=dns_server, timeout=2)
    assert reply.flags & dns.flags.TC and reply.edns == 0 and reply.payload == UDP_LIMIT_EDNS
    small = dns.query.udp(dns.message.make_query("small.stack.internal", "TXT", use_edns=0), "127.0.0.1",
                          port=dns_server, timeout=2)
    assert not small.flags & dns.flags.TC and small.edns == 0 and small.answer
    plain = dns.query.udp(dns.message.make_query("web.stack.internal", "A"), "127.0.0.1", port=dns_server, timeout=2)
    assert plain.edns == -1  # no EDNS asked, none answered


def test_dig_retries_over_tcp_by_itself(dns_server):
    dig = shutil.which("dig")
    if dig is None:
        pytest.skip("dig is not installed (Debian: bind9-dnsutils; `make up` installs it as root)")
    out = subprocess.run([dig, "@127.0.0.1", "-p", str(dns_server), "big.stack.internal", "TXT"],
                         capture_output=True, text=True, timeout=20).stdout
    assert ";; Truncated, retrying in TCP mode." in out
    assert out.count('IN\tTXT\t"record ') == len(BIG_TXT)  # the whole answer, from the TCP retry


def test_the_healthcheck_asks_for_the_type_it_names_and_wants_an_authoritative_answer(dns_server):
    from stack.healthcheck import check

    base = f"dns://127.0.0.1:{dns_server}"
    assert check(f"{base}/stack.internal?type=SOA", 2)  # the server's own probe: its zone alone answers it
    assert check(f"{base}/web.stack.internal", 2)  # A by default
    assert not check(f"{base}/web.stack.internal?type=TXT", 2)  # the name has no TXT record
    assert not check(f"{base}/nowhere.stack.internal", 2)
    assert not check(f"{base}/example.com?type=SOA", 2)  # refused: not our zone


@pytest.mark.parametrize("flag", ["ad", "tc", "z", "ra", "aa"])
def test_no_flag_of_the_query_but_rd_and_cd_comes_back(flag):
    """RFC 1035 4.1.1 and RFC 4035 3.1.6: only the id, opcode, RD and CD are the query's. dnslib's reply()
    copied the whole flags word, so a query with AD set got AD back (validated data, from an unsigned zone)."""
    query = DNSRecord.question("web.stack.internal")
    setattr(query.header, flag, 1)
    query.header.rd, query.header.cd = 1, 1
    reply = ZoneResolver(ZONE).resolve(DNSRecord.parse(query.pack()), None)
    header = reply.header
    assert (header.ad, header.tc, header.z, header.ra, header.aa) == (0, 0, 0, 0, 1)
    assert (header.rd, header.cd, header.id, header.rcode) == (1, 1, query.header.id, RCODE.NOERROR)


def test_a_query_with_an_rcode_or_other_opcode_or_no_question():
    query = DNSRecord.question("web.stack.internal")
    query.header.rcode = RCODE.NXDOMAIN  # a query's rcode means nothing; it must not come back
    assert ZoneResolver(ZONE).resolve(DNSRecord.parse(query.pack()), None).header.rcode == RCODE.NOERROR
    notify = DNSRecord.question("web.stack.internal")
    notify.header.opcode = 4  # NOTIFY
    assert ZoneResolver(ZONE).resolve(DNSRecord.parse(notify.pack()), None).header.rcode == RCODE.NOTIMP
    empty = DNSRecord.parse(DNSRecord(DNSHeader(id=7)).pack())  # a header, no question
    assert empty.header.q == 0
    assert ZoneResolver(ZONE).resolve(empty, None).header.rcode == RCODE.FORMERR


def test_dig_sees_no_ad_flag_from_the_running_server(dns_server):
    """The same through the real server and dnspython: a query with AD set (dig +adflag) gets none back."""
    query = dns.message.make_query("web.stack.internal", "A")
    query.flags |= dns.flags.AD
    answer = dns.query.udp(query, "127.0.0.1", port=dns_server, timeout=5)
    assert not answer.flags & dns.flags.AD and answer.flags & dns.flags.AA
