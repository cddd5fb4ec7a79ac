"""The rendered nginx configs: `nginx -t` in both modes, and their properties asserted on crossplane's parse."""

from __future__ import annotations

import configparser
import dataclasses
import inspect
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import crossplane
import pytest

from deploy import tls
from deploy.render import (
    COMPOSE_MODULES_CONF,
    COMPOSE_TLS,
    CONNECTIONS_PER_CLIENT,
    EDGE_ERRORS,
    PROBLEM_PATH,
    RATE_LIMITED,
    STREAM_TCP_TIMEOUT,
    UPSTREAM_FAIL_TIMEOUT_S,
    WEBSOCKET_PATHS,
    nginx_conf,
    supervisord_conf,
    write_modules_conf,
    zone,
)
from deploy.stack import base_images, docker_answers
from services.common.http import CLIENT_TIMEOUT_S, IO_MAX_MS, MAX_REQUEST_BODY_BYTES
from services.sockets.echo import EchoServer
from stack.topology import DNS, HTTP_SERVICES, PROMETHEUS, ROOT, STREAM_SERVICES, WEB_UWSGI_PORT, ZONE, Site

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SITE = Site(net="127.0.31", public_host="127.0.31.1", public_port=18080, var=Path("/tmp/stack-config-test"))


def parse(mode: str, tmp_path: Path) -> list[dict]:
    path = tmp_path / f"{mode}.conf"
    path.write_text(nginx_conf(mode, SITE))
    payload = crossplane.parse(str(path), single=True, check_ctx=False, check_args=False, comments=False)
    assert payload["status"] == "ok", payload["errors"]
    return payload["config"][0]["parsed"]


def find(block: list[dict], name: str) -> list[dict]:
    return [d for d in block if d["directive"] == name]


def one(block: list[dict], name: str) -> list[str]:
    (directive,) = find(block, name)
    return directive["args"]


def is_default_server(server: list[dict]) -> bool:
    """True for the catch-all server (every listen of it says default_server)."""
    listens = [d["args"] for d in find(server, "listen")]
    assert all("default_server" in args for args in listens) or not any("default_server" in a for a in listens)
    return "default_server" in listens[0]


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, None: 1, "m": 60}[unit]


@pytest.fixture(params=["native", "compose"])
def mode(request):
    return request.param


@pytest.fixture
def http_block(mode, tmp_path):
    return find(parse(mode, tmp_path), "http")[0]["block"]


def test_server_tokens_off_and_sane_limits(http_block):
    assert one(http_block, "server_tokens") == ["off"]
    # The same limit as the services that take big bodies (httpbin echoes up to it).
    assert one(http_block, "client_max_body_size") == [f"{MAX_REQUEST_BODY_BYTES // 1024 // 1024}m"]
    for timeout in ("client_header_timeout", "client_body_timeout", "send_timeout", "keepalive_timeout"):
        assert seconds(one(http_block, timeout)[0]) > 0


def test_proxy_read_timeout_outlasts_the_longest_io_wait(http_block):
    assert seconds(one(http_block, "proxy_read_timeout")[0]) > IO_MAX_MS / 1000


def test_upstreams_keep_connections_alive_over_http11(http_block, mode):
    upstreams = {d["args"][0]: d["block"] for d in find(http_block, "upstream")}
    assert set(upstreams) == {s.name for s in HTTP_SERVICES} | {PROMETHEUS.name}  # its query API: the landing page
    for service in HTTP_SERVICES:
        block = upstreams[service.name]
        assert int(one(block, "keepalive")[0]) > 0
        # Shorter than the services' own idle timeout (gunicorn keepalive, aiohttp, Tornado): nginx closes first.
        assert seconds(one(block, "keepalive_timeout")[0]) < CLIENT_TIMEOUT_S
        servers = [d["args"] for d in find(block, "server")]
        # Passive health checks: one refused connection takes an instance out of rotation for a few seconds.
        health = ["max_fails=1", f"fail_timeout={UPSTREAM_FAIL_TIMEOUT_S}s"]
        if mode == "native":  # every instance on its own address
            assert servers == [[bind, *health] for bind in SITE.instances(service).values()]
            assert len(servers) == service.instances >= 2
        else:  # one name in the stack's zone; the stack's DNS answers every replica's address (Docker's)
            assert servers == [[f"{service.name}.{ZONE}:{service.port}", "resolve", *health]]
            assert zone("compose")["records"][service.name] == service.name  # the Compose service, at query time
            # nginx asks the stack's DNS server (which can withhold a retiring replica), not Docker's directly
            assert one(http_block, "resolver")[0] == f"{DNS.name}.{ZONE}:{DNS.port}"
    # Another instance is tried only when this one could not be reached or timed out: never for a POST that was
    # sent (no non_idempotent), never on a 5xx (httpbin's /status/503 is an answer, not a dead instance).
    assert one(http_block, "proxy_next_upstream") == ["error", "timeout"]
    assert one(http_block, "proxy_http_version") == ["1.1"]
    headers = {d["args"][0]: d["args"][1] for d in find(http_block, "proxy_set_header")}
    # Connection is cleared (the pool works) but for a WebSocket handshake to a WebSocket path.
    assert (headers["Connection"], headers["Upgrade"]) == ("$upstream_connection", "$upstream_upgrade")
    maps = {tuple(d["args"]): {e["directive"]: e["args"] for e in d["block"]} for d in find(http_block, "map")}
    upgrade = maps[("$http_upgrade:$uri", "$upstream_upgrade")]
    assert upgrade.pop("default") == [""] and len(upgrade) == len(WEBSOCKET_PATHS) >= 1
    assert all(key.startswith("~*^websocket:") and value == ["websocket"] for key, value in upgrade.items())
    assert maps[("$upstream_upgrade", "$upstream_connection")] == {"default": ["upgrade"], "": [""]}
    assert headers["X-Forwarded-For"] == "$remote_addr"
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["X-Forwarded-Host"] == "$forwarded_host"  # the client's Host when plain (see the map)
    # Host too, port included, as the client sent it: $host drops the port (httpbin echoed 127.0.0.1 for a
    # request to 127.0.0.1:8080, where the reference echoes what came).
    assert headers["Host"] == "$forwarded_host"
    assert headers["X-Request-ID"] == "$stack_request_id"


def test_credentials_expensive_endpoints_and_writes_are_limited_per_client_with_429(http_block):
    assert one(http_block, "limit_req_status") == ["429"] and one(http_block, "limit_conn_status") == ["429"]
    zones = {d["args"][1].split(":")[0].removeprefix("zone="): d["args"] for d in find(http_block, "limit_req_zone")}
    assert zones["credentials"][0] == "$binary_remote_addr"  # every client, loopback included
    assert zones["expensive"][0] == "$stack_limited_client" and zones["writes"][0] == "$stack_writing_client"
    (exempt,) = [g for g in find(http_block, "geo") if g["args"] == ["$stack_limit_exempt"]]
    assert {tuple(d["args"]) if d["args"] else (d["directive"],) for d in exempt["block"]} >= {("0",), ("1",)}
    assert {d["directive"] for d in exempt["block"]} == {"default", "127.0.0.1", "::1"}  # this machine only
    (writing,) = [m for m in find(http_block, "map") if m["args"] == ["$request_method", "$stack_writing_client"]]
    assert [d["directive"] for d in writing["block"]] == ["~^(POST|PUT|PATCH|DELETE)$", "default"]
    servers = [d["block"] for d in find(http_block, "server")]
    (site_server,) = [s for s in servers if not is_default_server(s) and find(s, "server_name")]
    assert one(site_server, "limit_conn") == ["perclient", str(CONNECTIONS_PER_CLIENT)]
    locations = {tuple(d["args"]): d["block"] for d in find(site_server, "location")}
    for path, (upstream, limit_zone, burst) in RATE_LIMITED.items():
        limits = [d["args"] for d in find(locations[("=", path)], "limit_req")]
        assert [f"zone={limit_zone}", f"burst={burst}", "nodelay"] in limits, path
        assert one(locations[("=", path)], "proxy_pass") == [f"http://{upstream}"]
    assert {p for p, (_, zone, _) in RATE_LIMITED.items() if zone == "expensive"} == {
        f"{s.prefix}{name}" for s in HTTP_SERVICES for name in ("fanout", "cpu")}
    for service in HTTP_SERVICES:  # writes, on every prefix
        assert find(locations[(service.prefix,)], "limit_req")[0]["args"][0] == "zone=writes"
    assert ["429", "=", "@too_many_requests"] in [d["args"] for d in find(site_server, "error_page")]


def test_request_id_is_generated_when_absent(http_block):
    (mapping,) = [m for m in find(http_block, "map") if m["args"][0] == "$http_x_request_id"]
    assert mapping["args"] == ["$http_x_request_id", "$stack_request_id"]
    assert one(mapping["block"], "default") == ["$request_id"]


def test_access_log_records_timings_and_the_request_id(http_block):
    (log_format,) = find(http_block, "log_format")
    line = "".join(log_format["args"][1:])
    for variable in ("$request_time", "$upstream_connect_time", "$upstream_header_time",
                     "$upstream_response_time", "$stack_request_id"):
        assert variable in line
    assert one(http_block, "access_log")[1] == "stack"


def test_default_server_drops_unknown_hosts(http_block):
    servers = [d["block"] for d in find(http_block, "server")]
    plain, tls = [s for s in servers if is_default_server(s)]  # one per port
    tcp_listen = [d["args"] for d in find(tls, "listen") if "quic" not in d["args"]]
    assert "ssl" not in one(plain, "listen") and "ssl" in tcp_listen[0] and len(tcp_listen) == 1
    for default in (plain, tls):
        locations = {tuple(d["args"]): d["block"] for d in find(default, "location")}
        assert one(locations[("/",)], "return") == ["444"]
        assert one(locations[("@drop",)], "return") == ["444"]  # /.problem asked for from outside: no answer
        assert ["404", "=", "@drop"] in [d["args"] for d in find(default, "error_page")]
    # HTTP/2 on the HTTPS port only: the plain port's default server (which decides before any Host is known)
    # never enables it, whichever way this nginx spells it.
    assert not find(plain, "http2") and "http2" not in one(plain, "listen")
    assert find(tls, "http2") == [] and "http2" in tcp_listen[0] or one(tls, "http2") == ["on"]


def test_nginx_answers_its_own_errors_with_problem_documents(http_block):
    titles = {d["directive"]: d["args"][0] for d in
              next(m for m in find(http_block, "map") if m["args"] == ["$status", "$problem_title"])["block"]}
    assert titles["413"] == "Content Too Large" and titles["502"] == "Bad Gateway"
    for server in (d["block"] for d in find(http_block, "server") if find(d["block"], "server_name")):
        pages = [d["args"] for d in find(server, "error_page") if d["args"][-1] == PROBLEM_PATH]
        codes, plain_http_on_the_tls_port = pages
        assert plain_http_on_the_tls_port == ["497", "=400", PROBLEM_PATH]
        expected = {str(code) for code in EDGE_ERRORS} - ({"404"} if is_default_server(server)
                                                          else set())
        assert set(codes[:-1]) == expected
        (problem,) = [d["block"] for d in find(server, "location") if d["args"] == ["=", PROBLEM_PATH]]
        assert one(problem, "internal") == []
        assert one(problem, "default_type") == ["application/problem+json"]
        status, body = one(problem, "return")
        assert status == "200"  # nginx keeps the error's status for an error_page target
        assert '"status":$status' in body and '"request_id":"$stack_request_id"' in body


def test_each_prefix_is_proxied_to_its_upstream(http_block):
    servers = [d["block"] for d in find(http_block, "server")]
    (site_server,) = [s for s in servers if not is_default_server(s) and find(s, "server_name")]
    locations = {d["args"][-1]: d["block"] for d in find(site_server, "location")}
    for service in HTTP_SERVICES:
        assert one(locations[service.prefix], "proxy_pass") == [f"http://{service.name}"]
    assert "/" in locations and "/healthz" in locations


def nginx_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "-v"], capture_output=True, text=True).stderr
    return tuple(int(x) for x in re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out).groups())


def usable_nginx_image() -> str | None:
    try:
        return base_images(dict(os.environ))["NGINX_IMAGE"]
    except SystemExit:
        return None


@pytest.mark.parametrize("web_server", ["gunicorn", "uwsgi"])
def test_native_config_passes_nginx_t(tmp_path, web_server):
    """nginx -t accepts the native config, with web reached by proxy_pass (gunicorn) or uwsgi_pass (uWSGI)."""
    site = Site(net="127.0.31", public_host="127.0.31.1", public_port=18080, var=tmp_path, web_server=web_server)
    for sub in ("run", "log", "nginx"):
        (tmp_path / sub).mkdir()
    conf = tmp_path / "nginx.conf"
    write_modules_conf(tmp_path / "run" / "modules.conf")
    tls.ensure(site)
    conf.write_text(nginx_conf("native", site))
    result = subprocess.run([NGINX, "-t", "-c", str(conf), "-e", str(tmp_path / "log" / "error.log")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert ("uwsgi_pass web;" in conf.read_text()) == (web_server == "uwsgi")


def test_compose_config_passes_nginx_t(tmp_path):
    """Compose's config needs nginx >= 1.27.3 (`server ... resolve`): the host's when new enough, else the
    Compose nginx base image under Docker."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf("compose", SITE))
    certificate = tls.ensure(Site(var=tmp_path))  # what Compose mounts as secrets (docker-compose.yml)
    # nginx looks its resolver's name (the stack's DNS server) up as it reads the config: Docker's DNS answers it
    # in Compose; here a hosts entry.
    if nginx_version(NGINX) >= (1, 27, 3):
        conf.write_text(conf.read_text().replace(COMPOSE_TLS[0], str(certificate.certificate))
                        .replace(COMPOSE_TLS[1], str(certificate.key))
                        .replace(f"resolver {DNS.name}.{ZONE}:", "resolver 127.0.0.1:"))
        command = [NGINX, "-t", "-c", str(conf), "-e", "stderr"]
    elif docker_answers() and (image := usable_nginx_image()):
        # What the nginx image's build runs: stream-module.sh, then http3.sh keeps the config its nginx can run
        # (the one with HTTP/3, where it has the module), which nginx -t then reads.
        (tmp_path / "nginx-tcp.conf").write_text(nginx_conf("compose", SITE, http3=False))
        command = ["docker", "run", "--rm", "--add-host", f"{DNS.name}.{ZONE}:127.0.0.1",
                   "-v", f"{tmp_path}:/in:ro",
                   "-v", f"{certificate.certificate}:{COMPOSE_TLS[0]}:ro",
                   "-v", f"{certificate.key}:{COMPOSE_TLS[1]}:ro",
                   "-v", f"{ROOT / 'nginx'}:/scripts:ro", image, "sh", "-c",
                   f"sh /scripts/stream-module.sh {COMPOSE_MODULES_CONF} && mkdir /tmp/stack "
                   "&& cp /in/nginx.conf /in/nginx-tcp.conf /tmp/stack/ && sh /scripts/http3.sh /tmp/stack "
                   "&& nginx -t -c /tmp/stack/nginx.conf -e stderr && nginx -V 2>&1"]
    else:
        pytest.skip(f"host nginx {nginx_version(NGINX)} predates `resolve`, and no Docker engine has an nginx image")
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    if command[0] == "docker":
        offers = "--with-http_v3_module" in result.stdout.split()
        assert result.stdout.startswith("HTTP/3: on" if offers else "HTTP/3: off"), result.stdout


# ---------------------------------------------------------------- HTTP/3

def fake_nginx(tmp_path: Path, configure: str) -> dict[str, str]:
    """A PATH whose `nginx -V` prints `configure`: http3.sh's two answers without two nginx builds."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nginx").write_text(f"#!/bin/sh\nprintf 'nginx version: nginx/9.9\\nconfigure arguments: "
                                   f"{configure}\\n' >&2\n")
    (bin_dir / "nginx").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.mark.parametrize("configure,offered", [("--with-http_ssl_module --with-http_v3_module", True),
                                               ("--with-http_ssl_module --with-http_v2_module", False)])
def test_the_nginx_image_keeps_the_config_its_nginx_can_run(tmp_path, configure, offered):
    """nginx/http3.sh: with http_v3_module the HTTP/3 config stays; without it, the TCP-only one replaces it."""
    stack_dir = tmp_path / "stack"
    stack_dir.mkdir()
    (stack_dir / "nginx.conf").write_text(nginx_conf("compose", SITE))
    (stack_dir / "nginx-tcp.conf").write_text(nginx_conf("compose", SITE, http3=False))
    result = subprocess.run(["sh", str(ROOT / "nginx" / "http3.sh"), str(stack_dir)], capture_output=True,
                            text=True, env=fake_nginx(tmp_path, configure))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in stack_dir.iterdir()) == ["http3.txt", "nginx.conf"]
    said = (stack_dir / "http3.txt").read_text()
    assert said.startswith("HTTP/3: on" if offered else "HTTP/3: off") and "nginx/9.9" in said
    assert (" quic" in (stack_dir / "nginx.conf").read_text()) == offered


def test_http3_listens_on_the_tls_port_in_udp_once_per_address(tmp_path):
    """Compose: every server on the TLS port also listens for QUIC there, reuseport once (on the catch-all),
    Alt-Svc from the Host's port and the published port for HTTP/3's Host; without HTTP/3, no trace of it."""
    path = tmp_path / "compose.conf"
    path.write_text(nginx_conf("compose", SITE))
    text = path.read_text()
    quic_listens = re.findall(r"listen (\S+) quic( reuseport)?( default_server)?;", text)
    assert sorted(quic_listens) == sorted([("8443", "", ""), ("8443", " reuseport", " default_server")])
    assert 'map "$https:$http3:$http_host" $stack_alt_svc' in text and "h3=\":$port\"; ma=86400" in text
    assert f'"h3|" $host:{SITE.tls_port};' in text
    plain = nginx_conf("compose", SITE, http3=False)
    assert " quic" not in plain and "$http3" not in plain and 'h3="' not in plain
    native = nginx_conf("native", SITE)  # this host's nginx (Debian 12's 1.22) has no http_v3_module
    assert (" quic" in native) == ("--with-http_v3_module" in subprocess.run(
        [NGINX, "-V"], capture_output=True, text=True).stderr.split())
    assert nginx_conf("kubernetes", SITE).count(" quic") == 0  # its manifests publish no UDP port for it


def test_connection_specific_fields_are_refused_after_http1_only(tmp_path):
    """The map the edge's 400 reads (RFC 9113 §8.2.2, RFC 9114 §4.2), matched as nginx matches it (PCRE)."""
    text = nginx_conf("compose", SITE)
    block = re.search(r'map "\$server_protocol\|[^"]+" \$stack_connection_field_after_http1 \{\n(.*?)\n    \}',
                      text, re.DOTALL).group(1)
    rules = [(re.compile(pattern), value) for pattern, value in re.findall(r'"~([^"]+)" (\d);', block)]

    def refused(protocol: str, connection="", keep_alive="", proxy="", transfer="", upgrade="", te="") -> bool:
        key = "|".join((protocol, connection, keep_alive, proxy, transfer, upgrade, te))
        return next((value for pattern, value in rules if pattern.search(key)), "0") == "1"

    for protocol in ("HTTP/2.0", "HTTP/3.0"):
        assert not refused(protocol) and not refused(protocol, te="trailers")
        assert refused(protocol, connection="close") and refused(protocol, te="gzip")
        assert refused(protocol, upgrade="websocket") and refused(protocol, transfer="chunked")
        assert refused(protocol, keep_alive="|") and refused(protocol, te="||trailers")  # a "|" in a value
    assert not refused("HTTP/1.1", connection="keep-alive", upgrade="websocket", te="trailers")
    assert f"    map $uri $stack_refuse_connection_field {{\n        volatile;\n        {PROBLEM_PATH} 0;" in text


# ---------------------------------------------------------------- layer 4: the stream {} proxy

@pytest.fixture
def parsed(mode, tmp_path):
    return parse(mode, tmp_path)


def test_stream_module_is_loaded_by_the_file_the_script_writes(parsed, mode, tmp_path):
    """Both modes include a file nginx/stream-module.sh writes (the image's build, or render_native)."""
    expected = COMPOSE_MODULES_CONF if mode == "compose" else str(SITE.var / "run" / "modules.conf")
    assert one(parsed, "include") == [expected]
    write_modules_conf(tmp_path / "modules.conf")  # this host: Debian's nginx, a dynamic module
    line = (tmp_path / "modules.conf").read_text().strip()
    assert line.startswith("load_module ") and Path(line.split()[1].rstrip(";")).exists()


def test_every_socket_service_is_proxied_on_its_public_port(parsed, mode):
    (stream,) = find(parsed, "stream")
    block = stream["block"]
    upstreams = {d["args"][0]: d["block"] for d in find(block, "upstream")}
    servers = {tuple(one(d["block"], "listen")): d["block"] for d in find(block, "server")}
    assert set(upstreams) == {s.name for s in STREAM_SERVICES}
    for service in STREAM_SERVICES:
        if mode == "native":
            assert one(upstreams[service.name], "server") == [f"{SITE.address(service)}:{service.port}"]
            listen = [f"{SITE.public_host}:{SITE.public_port_of(service)}"]
        else:  # re-resolved through the stack's DNS, like the HTTP upstreams
            assert one(upstreams[service.name], "server") == [f"{service.name}.{ZONE}:{service.port}", "resolve"]
            listen = [str(service.public_port)]
        if service.transport == "udp":
            server = servers[(*listen, "udp")]
            assert one(server, "proxy_responses") == ["1"]  # one datagram answers one request
        else:
            server = servers[tuple(listen)]
            assert one(server, "proxy_half_close") == ["on"]  # a client's FIN must not cut the reply off
        assert one(server, "proxy_pass") == [service.name]
        assert seconds(one(server, "proxy_timeout")[0]) > 0
    assert one(block, "access_log")[1] == "stream_line"
    if mode == "compose":
        assert one(block, "resolver")[0] == f"{DNS.name}.{ZONE}:{DNS.port}"
        for service in STREAM_SERVICES:
            (upstream,) = [d["block"] for d in find(block, "upstream") if d["args"] == [service.name]]
            assert one(upstream, "server")[0] == f"{service.name}.{ZONE}:{service.port}"


def test_stream_tcp_timeout_outlasts_the_echo_servers_idle_limit():
    idle_default = inspect.signature(EchoServer).parameters["idle_timeout"].default
    assert seconds(STREAM_TCP_TIMEOUT) > idle_default


def test_the_landing_page_names_every_stream_port():
    page = (ROOT / "nginx" / "static" / "index.html").read_text()
    for service in STREAM_SERVICES:
        assert f"{service.public_port}" in page, service.name


def test_c10k_fits_one_worker_and_its_descriptors(parsed):
    """10,000 proxied clients are 20,000 connections, and nothing makes nginx spread them over its workers."""
    (events,) = find(parsed, "events")
    assert int(one(events["block"], "worker_connections")[0]) >= 20_000 + 1_000
    assert int(one(parsed, "worker_rlimit_nofile")[0]) >= 2 * 20_000


def test_supervised_services_may_open_enough_descriptors_for_c10k():
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(supervisord_conf(SITE))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert int(conf["supervisord"]["minfds"]) == (65536 if hard == resource.RLIM_INFINITY else min(65536, hard))
    assert int(conf["supervisord"]["minfds"]) > 10_000 or hard <= 10_000


# gixy reads nginx's stream {} TCP and UDP servers on one port as two servers sharing a socket (they are two
# sockets, and nginx 1.22's stream servers have no default_server to mark): that check is skipped, by name.
GIXY_SKIPS = "default_server_flag"


def test_gixy_finds_nothing_in_the_rendered_config(mode, tmp_path):
    path = tmp_path / f"{mode}.conf"
    path.write_text(nginx_conf(mode, SITE))
    gixy = Path(sys.executable).parent / "gixy"
    skips = GIXY_SKIPS
    if mode == "compose":
        # gixy-ng's resolver_external takes `dns.stack.internal:5353` for an outside server: it matches the name's
        # suffix (.internal is one it trusts) with the port still attached. The resolver is the stack's own
        # server on the stack's private network, and only that (asserted here instead).
        resolvers = set(re.findall(r"^\s*resolver (\S+)", path.read_text(), re.MULTILINE))
        assert resolvers == {f"{DNS.name}.{ZONE}:{DNS.port}"}
        skips += ",resolver_external"
    result = subprocess.run([str(gixy), "--skips", skips, "-f", "json", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_only_a_plain_host_and_port_is_forwarded(http_block, mode):
    """$forwarded_host: the client's Host when a plain name[:port], else the name nginx matched; over HTTP/3 (no
    Host, only :authority, whose port nginx drops) the name with the published TLS port."""
    (mapping,) = [m for m in find(http_block, "map") if m["args"][1:] == ["$forwarded_host"]]
    http3 = mapping["args"][0] == "$http3|$http_host"
    assert http3 == (mode == "compose")  # native: Debian 12's nginx has no HTTP/3 (and no $http3)

    def forwarded(host: str, over_h3: bool = False) -> str:
        """What nginx's map gives (exact keys, then regexes in order, then the default), with captures."""
        key = f"{'h3' if over_h3 else ''}|{host}" if http3 else host
        for rule in mapping["block"]:
            name, value = rule["directive"], rule["args"][0]
            value = value.replace("$http_host", host)
            if name == key:
                return value
            if name.startswith("~") and (found := re.search(name[1:].replace("(?<", "(?P<"), key)):
                return re.sub(r"\$(\w+)", lambda m: found.groupdict().get(m.group(1)) or m.group(0), value)
        return one(mapping["block"], "default")[0]

    for good in ("localhost", "127.0.0.1:8080", "nginx.stack.internal"):
        assert forwarded(good) == good
    for bad in ("localhost:80@evil.example", "a b", "localhost:8080/x", "[::1]:8080", ""):
        assert forwarded(bad) == "$host", bad
    if http3:
        assert forwarded("", over_h3=True) == f"$host:{SITE.tls_port}"
        assert forwarded("localhost:9443", over_h3=True) == "localhost:9443"  # a client that sent Host too
        assert forwarded("localhost:80@evil.example", over_h3=True) == "$host"
    assert ["X-Forwarded-Host", "$forwarded_host"] in [d["args"] for d in find(http_block, "proxy_set_header")]


def test_web_settings_reach_webs_program_entry(monkeypatch):
    monkeypatch.setenv("WEB_WORKER_CLASS", "gthread")
    monkeypatch.setenv("WEB_THREADS", "4")
    monkeypatch.delenv("WEB_WORKERS", raising=False)
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(supervisord_conf(SITE))
    for instance in ("web-1", "web-2"):  # every instance gets them, and says which instance it is
        environment = conf[f"program:{instance}"]["environment"]
        assert 'WEB_WORKER_CLASS="gthread"' in environment
        assert 'WEB_THREADS="4"' in environment
        assert "WEB_WORKERS" not in environment
        assert f'STACK_INSTANCE="{instance}"' in environment
        assert f"--pid {SITE.var / 'run' / instance}.pid" in conf[f"program:{instance}"]["command"]
    assert "WEB_WORKER_CLASS" not in conf["program:catalog-1"]["environment"]
    binds = [conf[f"program:{name}"]["command"].split("--bind ")[1].split()[0]
             for name in ("web-1", "web-2", "catalog-1", "catalog-2", "httpbin-1", "httpbin-2")]
    assert len(set(binds)) == 6  # each instance on its own address
    monkeypatch.setenv("WEB_WORKERS", '2",EVIL="1')  # a value cannot inject another variable
    with pytest.raises(SystemExit):
        supervisord_conf(SITE)


def _http_block(text: str, tmp_path: Path) -> list[dict]:
    path = tmp_path / "parse.conf"
    path.write_text(text)
    payload = crossplane.parse(str(path), single=True, check_ctx=False, check_args=False, comments=False)
    assert payload["status"] == "ok", payload["errors"]
    (http,) = find(payload["config"][0]["parsed"], "http")
    return http["block"]


def _without_lines(directives: list[dict]) -> list[dict]:
    return [{"directive": d["directive"], "args": d["args"], "block": _without_lines(d.get("block", []))}
            for d in directives]


@pytest.mark.parametrize("config_name", ["httpbin-aiohttp", "bare-tornado", "nginx-static"])
def test_make_compare_puts_the_stacks_own_edge_in_front_of_the_server_under_test(tmp_path, config_name):
    """Its "through nginx" figures are the stack's nginx: the same template and settings (request ids, limits,
    keep-alive pool, access log), one route to the server under test, and it passes `nginx -t`."""
    from loadtest.compare import servers
    from loadtest.compare.matrix import BY_NAME

    config = BY_NAME[config_name]
    upstream = None if config.kind == "nginx-static" else 45678
    workdir = tmp_path / "compare"
    workdir.mkdir()
    text = servers.nginx_conf(18181, upstream, config.prefix, workdir)
    http = _http_block(text, tmp_path)
    # Everything in http {} but the upstreams and servers is the stack's own.
    stack = _http_block(nginx_conf("native", Site(public_host="127.0.0.1", public_port=18181, var=workdir)), tmp_path)
    assert _without_lines([d for d in http if d["directive"] not in ("upstream", "server")]) == _without_lines(
        [d for d in stack if d["directive"] not in ("upstream", "server")])
    upstreams = find(http, "upstream")
    if upstream is None:
        assert upstreams == []
        assert (workdir / "static" / config.prefix.strip("/") / "json").read_text() == '{"message":"Hello, World!"}'
    else:
        (pool,) = upstreams
        assert [d["args"][0] for d in find(pool["block"], "server")] == [f"127.0.0.1:{upstream}"]
        assert one(pool["block"], "keepalive") == ["32"]
        site_server = [s for s in find(http, "server")
                       if "127.0.0.1" in sum((d["args"] for d in find(s["block"], "server_name")), [])][0]
        routes = {d["args"][-1]: d for d in find(site_server["block"], "location")}
        assert one(routes[f"{config.prefix}/"]["block"], "proxy_pass") == [f"http://{pool['args'][0]}"]
    conf = workdir / "nginx.conf"
    conf.write_text(text)
    result = subprocess.run([NGINX, "-t", "-c", str(conf), "-e", str(workdir / "log" / "error.log")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_landing_pages_service_list_is_the_registrys():
    """The page is a static file (nginx serves it as it is): its list of services must be the registry's, and it
    loads nothing from another origin (no CDN: the stack runs offline)."""
    page = (ROOT / "nginx" / "static" / "index.html").read_text()
    listed = re.findall(r'\{name: "([^"]+)", prefix: "([^"]+)", framework: "([^"]+)", server: "([^"]+)"\}', page)
    assert listed == [(s.name, s.prefix, s.framework, s.server) for s in HTTP_SERVICES]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)


@pytest.mark.parametrize("render_mode", ["native", "compose"])
def test_web_under_uwsgi_is_reached_with_uwsgi_pass_and_the_same_forwarded_headers(render_mode, tmp_path):
    """WEB_SERVER=uwsgi: web's locations speak the uwsgi protocol to its uwsgi socket, with no pool (the
    protocol has none), and the CGI variables nginx sets say what proxy_set_header says to HTTP servers."""
    site = dataclasses.replace(SITE, web_server="uwsgi")
    path = tmp_path / "nginx.conf"
    path.write_text(nginx_conf(render_mode, site))
    (http_block,) = [d["block"] for d in crossplane.parse(str(path), single=True, comments=False)["config"][0]["parsed"]
                     if d["directive"] == "http"]
    upstreams = {d["args"][0]: d["block"] for d in find(http_block, "upstream")}
    web = upstreams["web"]
    assert not find(web, "keepalive")
    ports = {d["args"][0].rsplit(":", 1)[1] for d in find(web, "server")}
    assert ports == {str(WEB_UWSGI_PORT)}
    assert find(upstreams["catalog"], "keepalive")  # the others keep their pools
    (site_server,) = [s["block"] for s in find(http_block, "server")
                      if not is_default_server(s["block"]) and find(s["block"], "location")
                      and any(d["args"] == ["/web/"] for d in find(s["block"], "location"))]
    passes = {tuple(d["args"]): [(e["directive"], e["args"]) for e in d["block"]
                                 if e["directive"] in ("uwsgi_pass", "proxy_pass")]
              for d in find(site_server, "location")}
    web_locations = {args: found for args, found in passes.items() if "/web/" in " ".join(args)}
    assert web_locations and all(found == [("uwsgi_pass", ["web"])] for found in web_locations.values())
    assert passes[("/catalog/",)] == [("proxy_pass", ["http://catalog"])]
    params = {d["args"][0]: d["args"][1:] for d in find(http_block, "uwsgi_param")}
    headers = {d["args"][0]: d["args"][1] for d in find(http_block, "proxy_set_header")}
    for header in ("Host", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-ID"):
        assert params["HTTP_" + header.upper().replace("-", "_")] == [headers[header]], header
    for variable in ("REQUEST_METHOD", "REQUEST_URI", "PATH_INFO", "QUERY_STRING", "CONTENT_LENGTH", "CONTENT_TYPE",
                     "SERVER_PROTOCOL", "REMOTE_ADDR", "SERVER_NAME", "SERVER_PORT"):
        assert variable in params, variable  # what uWSGI builds the WSGI environ from
    assert params["HTTPS"] == ["$https", "if_not_empty"]
    assert one(http_block, "uwsgi_next_upstream") == one(http_block, "proxy_next_upstream")
    assert one(http_block, "uwsgi_read_timeout") == one(http_block, "proxy_read_timeout")


def test_web_server_reaches_webs_program_entry_and_is_checked(monkeypatch):
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(supervisord_conf(dataclasses.replace(SITE, web_server="granian")))
    assert 'WEB_SERVER="granian"' in conf["program:web-1"]["environment"]
    assert "WEB_SERVER" not in conf["program:catalog-1"]["environment"]
    monkeypatch.setenv("WEB_SERVER", "apache")
    with pytest.raises(ValueError, match="WEB_SERVER='apache'"):
        Site.from_env()
