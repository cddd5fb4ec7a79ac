"""End to end against the Compose stack: wherever a Docker engine answers (CI starts one), else skipped.

Runs under its own project name and ports, so a stack the user left running is untouched. Base images come
from PYTHON_IMAGE/NGINX_IMAGE when set (CI points them at stand-ins built from Debian packages).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import dns.message
import dns.query
import pytest
import requests

from deploy.render import COMPOSE_RESOLVE_S, NGINX_RESOLVES_WITHIN_S
from deploy.stack import COMPOSE_FILE, MONITORING_PROFILE, Compose, compose_command
from stack.topology import DNS, HTTP_SERVICES, MONITORING_SERVICES, NGINX_EXPORTER, ROOT, SERVICES, ZONE
from tests.conftest import require_docker_engine, site_on_free_ports
from tests.e2e.contract import RunningStack, StackContract, bystander, ps_output
from tests.e2e.http3_contract import Http3Contract
from tests.e2e.http_contract import HttpSemanticsContract
from tests.e2e.monitoring_contract import MonitoringContract

pytestmark = [pytest.mark.e2e, pytest.mark.compose]
PROJECT = "pystack-e2e"


def docker(*args: str) -> str:
    result = subprocess.run([shutil.which("docker") or "docker", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def container_logs(container: str, needle: str, timeout: float = 10) -> str:
    """The container's output (stdout and stderr) once it contains `needle`, or as it is at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run([shutil.which("docker") or "docker", "logs", container], capture_output=True,
                                text=True, timeout=60)
        output = result.stdout + result.stderr
        if needle in output or time.monotonic() > deadline:
            return output
        time.sleep(0.3)


def inspect(container: str) -> dict:
    return json.loads(docker("inspect", container))[0]


def network_addresses(network: str) -> set[str]:
    """The IPv4 addresses the network's containers hold now."""
    containers = json.loads(docker("network", "inspect", network))[0]["Containers"] or {}
    return {entry["IPv4Address"].split("/")[0] for entry in containers.values()}


def address(container: str) -> str:
    (network,) = inspect(container)["NetworkSettings"]["Networks"].values()
    return network["IPAddress"]


@contextlib.contextmanager
def holding(addresses: set[str], image: str) -> Iterator[None]:
    """Placeholder containers on the stack's network hold `addresses` (just freed by a removed container) while the
    block runs, so a container created meanwhile gets another address. Docker releases a removed container's
    address a moment after `rm` returns and hands out the lowest free one: placeholders are started until they
    hold every one of them (lower gaps earlier tests left go first)."""
    network = f"{PROJECT}_default"
    deadline = time.monotonic() + 15
    while addresses & network_addresses(network) and time.monotonic() < deadline:
        time.sleep(0.2)
    placeholders: list[str] = []
    held: set[str] = set()
    try:
        while not addresses <= held and len(placeholders) < 24:
            placeholders.append(docker("run", "--detach", "--rm", "--network", network, "--entrypoint",
                                       "python", image, "-c", "import time; time.sleep(300)"))
            held.add(address(placeholders[-1]))
        assert addresses <= held, (addresses, held)
        yield
    finally:
        if placeholders:
            docker("rm", "--force", *placeholders)


@pytest.fixture(scope="module")
def compose_stack(tmp_path_factory):
    require_docker_engine()
    var = tmp_path_factory.mktemp("compose-var")
    site = dataclasses.replace(site_on_free_ports(var), monitoring=True)
    env = {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT, "MODE": "compose", "MONITORING": "1",
           "COMPOSE_PROFILES": MONITORING_PROFILE, **site.environment()}

    def compose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=600)

    def containers(service: str) -> list[str]:
        """Every replica's container id."""
        return compose("ps", "-q", service).stdout.split()

    def container(service: str) -> str:
        return containers(service)[0]

    def addresses_of(label: str) -> list[str]:
        return [address(c) for c in containers(label or "nginx")]

    stack = RunningStack(site, "compose", env, Compose(site, env).log_text, addresses_of)
    stack.compose = compose
    stack.container = container
    stack.containers = containers
    result = stack.deploy("up", "--mode", "compose", timeout=900)
    if result.returncode:
        compose("down", "--volumes", "--remove-orphans")
        pytest.fail(f"compose up failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    yield stack
    stack.deploy("down")
    compose("down", "--volumes", "--remove-orphans")


class TestComposeStack(StackContract, HttpSemanticsContract, MonitoringContract, Http3Contract):
    # Each Compose restart waits on Docker's 2 s healthcheck interval: the native run covers every service.
    # Scaling out and in (`make up SCALE=...`): replicas added, then the surplus withheld from the stack's DNS,
    # let go by nginx and drained, each service's count checked, all under Locust's mix.
    CHAOS_FAULTS = ("nginx-reload", "gunicorn-hup", "worker-sigkill", "kill-catalog", "restart-httpbin",
                    "scale-out", "scale-in")

    @pytest.fixture
    def stack(self, compose_stack):
        return compose_stack

    def test_ps_lists_every_container_healthy(self, stack):
        ps_output(stack)
        listing = stack.compose("ps", "--format", "json").stdout
        states = [json.loads(line) for line in listing.splitlines() if line.strip()]
        # The exporter's image has nothing to probe with (no shell, no client): Prometheus's up{job="nginx"}
        # is its health (the monitoring tests). Every other container has a healthcheck, and passes it.
        assert {s["Health"] for s in states if s["Service"] != NGINX_EXPORTER.name} == {"healthy"}
        assert {s["State"] for s in states} == {"running"}
        replicas = collections.Counter(s["Service"] for s in states)
        assert replicas == {"nginx": 1, **{s.name: s.instances for s in (*SERVICES, *MONITORING_SERVICES)}}

    def test_the_stack_dns_withholds_a_replica_the_driver_is_about_to_stop(self, stack):
        """What nginx's resolver sees: every web replica, less the ones `make up` withholds before stopping them
        (deploy/stack.py Compose.retire); cleared, every replica again."""
        host, port = stack.site.dns_endpoint("compose")

        def answer() -> list[str]:
            reply = dns.query.udp(dns.message.make_query(f"web.{ZONE}", "A"), host, port=port, timeout=3)
            return sorted(item.address for rrset in reply.answer for item in rrset)

        replicas = stack.containers("web")
        driver = stack.driver()
        assert answer() == sorted(address(c) for c in replicas) and len(replicas) >= 2
        try:
            assert driver.withhold(replicas[1:])
            assert answer() == [address(replicas[0])]
            assert driver.withhold(replicas)  # never every address: a name keeps them all rather than none
            assert answer() == sorted(address(c) for c in replicas)
        finally:
            assert driver.withhold([])
        assert answer() == sorted(address(c) for c in replicas)
        logged = container_logs(stack.container(DNS.name), "withholding nothing")
        assert f"withholding {', '.join(sorted(address(c) for c in replicas[1:]))}" in logged

    def test_make_up_points_nginx_at_a_dns_server_created_anew_at_another_address(self, stack, capsys):
        """nginx looks its resolver (the stack's DNS server) up by name only as it starts or reloads. When `make
        up` creates the server anew at another address, it reloads nginx, which then asks the new server: a
        replica withheld there leaves nginx's peers. (Without the reload nginx would keep asking the old address,
        where nothing answers now, and keep every peer it had.)"""
        old = stack.container(DNS.name)
        old_address, image, nginx_before = address(old), inspect(old)["Image"], stack.container("nginx")
        assert stack.compose("rm", "--stop", "--force", DNS.name).returncode == 0
        driver = stack.driver()
        with holding({old_address}, image):
            assert driver.up() == 0
        assert address(stack.container(DNS.name)) != old_address
        assert stack.container("nginx") == nginx_before  # reloaded, not recreated
        assert "nginx reloads" in capsys.readouterr().out
        kept, *withheld = stack.containers("httpbin")
        try:
            assert withheld and driver.withhold(withheld)
            time.sleep(NGINX_RESOLVES_WITHIN_S)
            answered = {requests.get(stack.url("/httpbin/hostname"), timeout=5).json()["hostname"]
                        for _ in range(4 * len(withheld) + 4)}  # nginx takes turns: each peer would show
            assert answered == {inspect(kept)["Config"]["Hostname"]}, answered
        finally:
            assert driver.withhold([])

    @staticmethod
    def every_container(stack: RunningStack) -> list[tuple[str, str]]:
        """(service, container id) for every container of the stack, each replica."""
        return [(service, c) for service in ("nginx", *(s.name for s in SERVICES)) for c in stack.containers(service)]

    def test_containers_run_as_non_root(self, stack):
        for service, container in self.every_container(stack):
            assert inspect(container)["Config"]["User"] == "10001", service
            # What runs, not only what the image asks for: every process of the container, workers included.
            processes = docker("top", container, "-eo", "pid,uid,comm").splitlines()[1:]  # docker top needs pid
            assert processes and {line.split()[1] for line in processes} == {"10001"}, (service, processes)

    def test_containers_run_without_capabilities_and_within_limits(self, stack):
        for service, container in self.every_container(stack):
            host = inspect(container)["HostConfig"]
            assert host["CapDrop"] == ["ALL"] and any("no-new-privileges" in o for o in host["SecurityOpt"]), service
            assert host["Memory"] > 0 and host["PidsLimit"] > 0 and host["ReadonlyRootfs"], service
            status = docker("exec", container, "cat", "/proc/1/status")  # the kernel's view of the main process
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            assert int(fields["CapEff"], 16) == 0 and fields["NoNewPrivs"].strip() == "1", (service, fields)

    def test_a_second_up_with_a_changed_worker_class_replaces_the_replicas_with_no_error(self, stack):
        """Compose's own `up` recreates every replica of a changed service at once; the stack's `up` starts as
        many new replicas beside the old, waits until nginx sends them requests, then drains the old ones."""
        def web_workers(worker_class: str) -> list[str]:
            listing = stack.deploy("ps").stdout
            return re.findall(rf"^instance (\S*web\S*)\s+\S+\s+healthy\s+gunicorn {worker_class} workers: \d+$",
                              listing, re.M)

        def up(**settings: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "deploy", "up", "--mode", "compose"], cwd=ROOT,
                                  env={**stack.env, **settings}, capture_output=True, text=True, timeout=600)

        before = stack.containers("web")
        assert len(web_workers("gevent")) == len(before) == 2
        try:
            with bystander(stack) as seen:
                result = up(WEB_WORKER_CLASS="gthread")
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            assert "replacing web's 2 replicas" in result.stdout
            after = stack.containers("web")
            assert len(after) == 2 and not set(after) & set(before)  # all new, and no more than two left
            assert len(web_workers("gthread")) == 2
            # Not one request lost: the old replicas left nginx's peers (withheld from the stack's DNS) before
            # they stopped.
            assert seen and set(seen) == {200}, collections.Counter(seen)
        finally:
            restored = up()  # the fixture's settings again: gevent
            assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
        assert len(web_workers("gevent")) == 2

    def test_nginx_reaches_a_recreated_container_without_a_restart(self, stack):
        nginx_before = inspect(stack.container("nginx"))
        old = stack.containers("catalog")
        old_ips, image = {address(c) for c in old}, inspect(old[0])["Image"]
        assert stack.compose("rm", "--stop", "--force", "catalog").returncode == 0
        with holding(old_ips, image):  # as after a real reschedule: the new replicas surely get other addresses
            result = stack.compose("up", "--detach", "--no-deps", "--wait", "catalog")
            assert result.returncode == 0, result.stderr
            new = stack.containers("catalog")
            assert not set(new) & set(old) and not {address(c) for c in new} & old_ips, old_ips
            deadline, reached = time.monotonic() + 2 * COMPOSE_RESOLVE_S + 10, None  # nginx asks DNS again
            while time.monotonic() < deadline and reached is None:
                rid = f"recreated-{uuid.uuid4().hex}"
                response = requests.get(stack.url("/catalog/json"), headers={"X-Request-ID": rid}, timeout=5)
                if response.status_code == 200:
                    reached = rid
                else:
                    time.sleep(0.5)
            assert reached, "nginx never reached the recreated catalog container"
            # A new container served it (either replica).
            assert any(reached in container_logs(c, reached, timeout=3) for c in stack.containers("catalog"))
        nginx_after = inspect(stack.container("nginx"))
        assert nginx_after["Id"] == nginx_before["Id"]
        assert nginx_after["State"]["StartedAt"] == nginx_before["State"]["StartedAt"]  # never restarted
        assert nginx_after["RestartCount"] == nginx_before["RestartCount"]


def test_store_postgres_in_compose_migrates_once_and_keeps_every_replicas_data_there(tmp_path):
    """STORE=postgres adds deploy/compose.postgres.yml: the Postgres service (the stand-in built from Debian's
    package here, the official image elsewhere), a one-shot migration before the services, and the services'
    data in Postgres, not in their volumes: one replica's session is the other's."""
    require_docker_engine()
    project = "pystack-e2e-pg"
    site = dataclasses.replace(site_on_free_ports(tmp_path), store="postgres")
    env = {**os.environ, "COMPOSE_PROJECT_NAME": project, "STORE": "postgres", "MODE": "compose", **site.environment()}
    stack = RunningStack(site, "compose", env, Compose(site, env).log_text, lambda label: [])
    compose = Compose(site, env)
    try:
        result = stack.deploy("up", "--mode", "compose", timeout=900)
        assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        (migrate,) = compose.run("ps", "--all", "--quiet", "migrate", capture=True).stdout.split()
        assert docker_inspect_state(migrate) == ("exited", 0)
        first, second = (address(c) for c in compose.containers("web")[:2])
        account = {"email": f"{uuid.uuid4().hex[:8]}@example.com", "password": "correct horse battery"}
        assert requests.post(stack.url("/web/signup"), json=account, timeout=10).status_code == 201
        login = requests.post(f"http://{first}:8001/web/login", json=account, timeout=10)
        assert login.status_code == 200
        me = requests.get(f"http://{second}:8001/web/me", cookies=login.cookies.get_dict(), timeout=10)
        assert me.status_code == 200 and me.json()["email"] == account["email"], me.text
        (postgres,) = compose.containers("postgres")
        users = docker("exec", postgres, "psql", "-U", "pystack", "-d", "pystack", "-tAc",
                       "SELECT count(*) FROM web.users")
        assert users == "1"
        for service in HTTP_SERVICES:  # nothing written to the volumes SQLite would use
            assert docker("exec", compose.containers(service.name)[0], "ls", "/data") == "", service.name
        # make clean-data (after make down) names the volumes it deletes, and they are gone.
        assert stack.deploy("down").returncode == 0
        cleaned = stack.deploy("clean-data")
        assert cleaned.returncode == 0, cleaned.stderr
        said = cleaned.stdout + cleaned.stderr
        assert re.search(r"deleting Compose volumes: .*postgres-data", said), said
        assert not docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={project}")
    finally:
        stack.deploy("down")
        compose.run("down", "--volumes", "--remove-orphans", check=False, capture=True)


def docker_inspect_state(container: str) -> tuple[str, int]:
    state = inspect(container)["State"]
    return state["Status"], state["ExitCode"]
