"""docker-compose.yml and the Dockerfiles: Compose's own validation, hadolint, and agreement with the topology."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.render import STOP_GRACE_SECONDS
from deploy.stack import COMPOSE_FILE, compose_command
from services.web import gunicorn_conf
from stack.topology import (
    DNS,
    HTTP_SERVICES,
    LOCUST_UI_PORT,
    NGINX_PORT,
    NGINX_TLS_PORT,
    ROOT,
    SERVICES,
    STREAM_SERVICES,
    WEB_UWSGI_PORT,
    ZONE,
)
from stack.topology import service as service_named

DOCKERFILES = [*sorted(ROOT.glob("services/*/Dockerfile")), ROOT / "nginx" / "Dockerfile",
               ROOT / "loadtest" / "Dockerfile", ROOT / "deploy" / "prometheus" / "Dockerfile"]
HADOLINT = Path(sys.executable).parent / "hadolint"


def compose_config(*profiles: str, overlays: tuple[Path, ...] = ()) -> dict:
    files = [option for path in (COMPOSE_FILE, *overlays) for option in ("-f", str(path))]
    result = subprocess.run(
        [*compose_command(), *files, *(f"--profile={p}" for p in profiles), "config", "--format", "json"],
        capture_output=True, text=True, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "STACK_PORT": "8080"},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_is_valid():
    result = subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_the_postgres_overlay_points_every_http_service_and_the_migration_at_the_registrys_postgres():
    from deploy.stack import POSTGRES_OVERLAY
    from stack.topology import HTTP_SERVICES, POSTGRES, postgres_url

    services = compose_config(overlays=(POSTGRES_OVERLAY,))["services"]
    url = postgres_url(POSTGRES.name, POSTGRES.port)  # Compose's DNS name for it is the service's name
    for name in [s.name for s in HTTP_SERVICES] + ["migrate"]:
        environment = services[name]["environment"]
        assert (environment["STORE"], environment["DATABASE_URL"]) == ("postgres", url), name
        assert "postgres" in {secret["source"] for secret in services[name]["secrets"]}, name
    for s in HTTP_SERVICES:  # after the migrations, and still with their own credentials
        assert services[s.name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["catalog"]["secrets"] and {"catalog_operator", "catalog_web"} <= {
        secret["source"] for secret in services["catalog"]["secrets"]}
    assert services["migrate"]["command"] == ["python", "-m", "services.common.migrate"]
    assert services["postgres"]["environment"]["POSTGRES_USER"] == url.split("//")[1].split("@")[0]
    assert "postgres" not in compose_config()["services"]  # SQLite, the default, runs no Postgres


def test_locust_runs_only_in_the_load_profile_with_its_ui_on_loopback():
    services = compose_config("load")["services"]
    assert {"locust-master", "locust-worker"} <= set(services)
    assert "locust-master" not in compose_config()["services"]
    (port,) = services["locust-master"]["ports"]
    assert (port["host_ip"], port["target"]) == ("127.0.0.1", LOCUST_UI_PORT)
    assert "--worker" in services["locust-worker"]["command"]


def test_every_service_is_healthchecked_non_root_capable_and_init():
    services = compose_config()["services"]
    assert set(services) == {"nginx", *(s.name for s in SERVICES)}
    for name, service in services.items():
        assert service.get("init") is True, name
        assert service["healthcheck"]["test"][0] == "CMD", name
        if name != "nginx":
            assert service["healthcheck"]["test"][1] == "python", name
    assert {dep: cond["condition"] for dep, cond in services["nginx"]["depends_on"].items()} == {
        s.name: "service_healthy" for s in SERVICES
    }


def test_every_container_is_hardened():
    """No capabilities, no privilege gain, bounded processes and memory, a read-only root filesystem."""
    for name, service in compose_config()["services"].items():
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert 0 < service["pids_limit"] <= 4096, name
        assert 0 < int(service["mem_limit"]) <= 2**30, name
        assert service["read_only"] is True, name


def test_http_services_run_their_topology_instances_and_stop_gracefully():
    """Replicas as many as stack/topology.py says; a stop is a drain that Docker does not cut short."""
    services = compose_config()["services"]
    for service in HTTP_SERVICES:
        assert services[service.name]["deploy"]["replicas"] == service.instances >= 2, service.name
    web = next(s for s in HTTP_SERVICES if s.name == "web")  # its replicas share the worker budget
    assert services["web"]["environment"]["STACK_INSTANCES"] == str(web.instances)
    for name, service in services.items():
        assert service["stop_grace_period"] == f"{STOP_GRACE_SECONDS}s", name
    assert services["nginx"]["stop_signal"] == "SIGQUIT"  # graceful; SIGTERM would drop requests in flight
    assert STOP_GRACE_SECONDS > gunicorn_conf.graceful_timeout


def test_published_ports_are_loopback_only_and_match_the_topology():
    services = compose_config()["services"]
    published = {
        (name, port["target"], port.get("protocol", "tcp"), port["host_ip"])
        for name, service in services.items() for port in service.get("ports", [])
    }
    assert published == {
        ("nginx", NGINX_PORT, "tcp", "127.0.0.1"),
        ("nginx", NGINX_TLS_PORT, "tcp", "127.0.0.1"),
        ("nginx", NGINX_TLS_PORT, "udp", "127.0.0.1"),  # HTTP/3 over QUIC, the same number
        *(("nginx", s.public_port, s.transport, "127.0.0.1") for s in STREAM_SERVICES),  # the stream proxy
        ("dns", DNS.port, "udp", "127.0.0.1"),
        ("dns", DNS.port, "tcp", "127.0.0.1"),
    }
    # Each published stream port can be moved (a second stack beside yours) by the variable the topology names.
    text = COMPOSE_FILE.read_text()
    for transport in ("tcp", "udp"):  # HTTPS and HTTP/3 on one public number, the one Alt-Svc names
        assert f'"127.0.0.1:${{STACK_TLS_PORT:-{NGINX_TLS_PORT}}}:{NGINX_TLS_PORT}/{transport}"' in text
    for service in STREAM_SERVICES:
        port = service.public_port
        mapping = f'"127.0.0.1:${{{service.port_env}:-{port}}}:{port}/{service.transport}"'
        assert mapping in text, mapping
    for service in HTTP_SERVICES:  # each healthcheck probes the port the topology gives the service
        assert f":{service.port}{service.prefix}healthz" in services[service.name]["healthcheck"]["test"][-1]
    for name, entry in services.items():  # services call each other by Compose name on the registry's port
        for variable, url in (entry.get("environment") or {}).items():
            if variable.startswith("STACK_") and variable.endswith("_URL"):
                callee = variable.removeprefix("STACK_").removesuffix("_URL").lower()
                assert url == f"http://{callee}:{service_named(callee).port}", (name, variable, url)


def test_every_port_docker_compose_yml_writes_is_the_registrys():
    """Ports must stay literal in YAML (healthchecks, published targets, commands): each one a service writes
    is its own registry port, or one it calls (nginx's, Locust's UI) — a port changed in stack/topology.py
    and not here fails."""
    import re

    services = compose_config("load")["services"]
    own = {s.name: {s.port} for s in SERVICES}
    own["nginx"] = {NGINX_PORT, NGINX_TLS_PORT, *(s.public_port for s in STREAM_SERVICES)}
    own["locust-master"] = {LOCUST_UI_PORT, NGINX_PORT}
    own["locust-worker"] = set()
    for name, entry in services.items():
        text = json.dumps({key: entry.get(key) for key in ("command", "healthcheck", "ports", "environment")})
        written = {int(port) for port in re.findall(r'(?::|"target": )(\d{4,5})\b', text)}
        # http://catalog:8002 is a call to another service, checked against the callee above
        called = {int(port) for port in re.findall(r"http://[a-z-]+:(\d+)", text)}
        assert written - called <= own[name], (name, written - called - own[name])
        if name != "locust-worker":
            assert written & own[name], name  # its own port is written somewhere (a healthcheck at least)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([str(HADOLINT), "--no-color", str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_takes_its_base_from_a_build_arg_and_drops_root(dockerfile):
    text = dockerfile.read_text()
    assert "ARG PYTHON_IMAGE=python:3.12-slim" in text
    # numeric: runtimes can verify it is not root (10001 ours; 65534, nobody, Prometheus's own)
    assert re.search(r"\nUSER (10001|65534)\n", text)
    if dockerfile.parent.name == "nginx":
        assert "ARG NGINX_IMAGE=" in text and "FROM ${NGINX_IMAGE}" in text


@pytest.mark.parametrize("service", [*HTTP_SERVICES, DNS], ids=lambda s: s.name)
def test_each_dockerfile_exposes_its_topology_port_and_runs_its_topology_launch_command(service):
    """A service image starts the registry's launch command with no port of its own: the service reads its port
    from the registry (copied into the image) and listens on BIND_HOST=0.0.0.0."""
    text = (ROOT / "services" / service.name / "Dockerfile").read_text()
    exposed = text.split("\nEXPOSE ")[1].split("\n")[0].split()
    extra = {str(WEB_UWSGI_PORT)} if service.name == "web" else set()  # uWSGI's uwsgi-protocol socket
    assert {port.split("/")[0] for port in exposed} == {str(service.port), *extra}
    cmd = json.loads(text.split("\nCMD ")[1].split("\n")[0])
    assert cmd[0] == "python" and service.command("HOST:PORT", python="python")[:-2] == cmd
    assert "BIND_HOST=0.0.0.0" in text and "COPY stack/ stack/" in text
    assert f":{service.port}" not in text.replace(f"EXPOSE {service.port}", "")  # no second copy of the port


@pytest.mark.parametrize("service", STREAM_SERVICES, ids=lambda s: s.name)
def test_each_socket_service_runs_its_topology_module_and_probe(service):
    """The literals docker-compose.yml must carry for the socket services agree with the topology."""
    compose = compose_config()["services"][service.name]
    assert compose["command"] == ["python", "-m", service.module]
    assert compose["build"]["dockerfile"] == "services/sockets/Dockerfile"
    assert compose["healthcheck"]["test"] == ["CMD", "python", "-m", "stack.healthcheck",
                                              service.probe_url("127.0.0.1", service.port)]
    exposed = (ROOT / "services" / "sockets" / "Dockerfile").read_text().split("\nEXPOSE ")[1].split("\n")[0]
    assert f"{service.port}/{service.transport}" in exposed.split()


def test_the_monitoring_profile_runs_what_deploy_monitoring_renders():
    """Prometheus's and the exporter's flags are the registry's (deploy/monitoring.py), Prometheus is published on
    loopback only by its port variable, and neither starts without the profile."""
    from deploy import monitoring
    from deploy.stack import MONITORING_PROFILE
    from stack.topology import NGINX_EXPORTER, PROMETHEUS

    assert {PROMETHEUS.name, NGINX_EXPORTER.name}.isdisjoint(compose_config()["services"])
    services = compose_config(MONITORING_PROFILE)["services"]
    prometheus, exporter = services[PROMETHEUS.name], services[NGINX_EXPORTER.name]
    listen = f"0.0.0.0:{PROMETHEUS.port}"
    assert prometheus["command"] == monitoring.prometheus_options(
        f"{monitoring.COMPOSE_CONFIG_DIR}/{monitoring.CONFIG_FILE}", "/prometheus", listen)
    assert exporter["command"] == monitoring.exporter_options("nginx", f"0.0.0.0:{NGINX_EXPORTER.port}")
    assert [(p["target"], p["host_ip"]) for p in prometheus["ports"]] == [(PROMETHEUS.port, "127.0.0.1")]
    assert f'"127.0.0.1:${{{PROMETHEUS.port_env}:-{PROMETHEUS.port}}}:{PROMETHEUS.port}"' in COMPOSE_FILE.read_text()
    assert "ports" not in exporter  # Prometheus reaches it on the Compose network
    assert prometheus["read_only"] and exporter["read_only"] and prometheus["cap_drop"] == ["ALL"]


def test_the_dns_server_answers_to_the_name_nginxs_resolver_asks_for():
    """nginx's resolver in Compose is the stack's DNS server by its own name in the zone (deploy/render.py):
    a network alias gives the container that name in Docker's DNS."""
    from deploy.render import nginx_conf

    services = compose_config()["services"]
    assert services[DNS.name]["networks"]["default"]["aliases"] == [f"{DNS.name}.{ZONE}"]
    resolver = re.search(r"^\s*resolver (\S+)", nginx_conf("compose"), re.MULTILINE)
    assert resolver and resolver.group(1) == f"{DNS.name}.{ZONE}:{DNS.port}"
    # the withheld list the server reads is where `docker exec … services.dns.withhold` writes it: one ENV
    dockerfile = (ROOT / "services" / "dns" / "Dockerfile").read_text()
    assert re.search(r"\bDNS_WITHHELD_FILE=/tmp/", dockerfile)  # /tmp: the container's one writable place
    assert "/tmp" in services[DNS.name]["tmpfs"]


def test_nginx_gets_the_certificate_and_key_deploy_tls_makes_where_its_config_reads_them():
    """docker-compose.yml's TLS secrets are the files deploy/tls.py writes under STACK_VAR, mounted at the paths
    the rendered config names (render.COMPOSE_TLS: /run/secrets/<secret>)."""
    from deploy.render import COMPOSE_TLS
    from stack.topology import Site

    config = compose_config()
    files = Site(var=ROOT / "var").tls  # STACK_VAR unset: ./var beside docker-compose.yml
    secrets = {name: Path(entry["file"]) for name, entry in config["secrets"].items()}
    mounted = {Path("/run/secrets") / name: secrets[name] for name in
               (entry["source"] for entry in config["services"]["nginx"]["secrets"])}
    certificate, key = (Path(path) for path in COMPOSE_TLS)
    assert (mounted[certificate], mounted[key]) == (files.certificate, files.key)
