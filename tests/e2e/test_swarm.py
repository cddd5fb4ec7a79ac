"""End to end on Docker Swarm, a real multi-node engine, on a one-node swarm this test creates and removes:
the stack file deploy/swarm.py renders from docker-compose.yml, deployed with `docker stack deploy`; then
requests through nginx, a service scaled, and a rolling update of every HTTP service under load.

Runs wherever a Docker engine answers that is not in a swarm already (CI starts a fresh one); it never touches
a swarm it did not create.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import time

import dns.message
import dns.query
import pytest
import requests

from deploy import swarm, tls
from deploy.stack import COMPOSE_FILE, compose_command
from loadtest.chaos import every_instance_answers
from stack import credentials
from stack.topology import HTTP_SERVICES, ROOT, STREAM_SERVICES, ZONE, service
from tests.conftest import alongside, require_docker_engine, site_on_free_ports

pytestmark = [pytest.mark.e2e, pytest.mark.compose]
PROJECT = "pystack-swarm"  # the images' prefix and the stack's name
DEPLOY_TIMEOUT_S = 240


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    result = subprocess.run([shutil.which("docker") or "docker", *args], capture_output=True, text=True,
                            timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr}"
    return result.stdout.strip()


def converged() -> dict[str, str]:
    """Each of the stack's services -> "running/desired" tasks."""
    listing = docker("service", "ls", "--filter", f"label=com.docker.stack.namespace={PROJECT}",
                     "--format", "{{.Name}} {{.Replicas}}")
    return dict(line.split()[:2] for line in listing.splitlines())


def wait_until(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(1)


def answers_200(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def swarm_stack(tmp_path_factory):
    images = require_docker_engine()
    if docker("info", "--format", "{{.Swarm.LocalNodeState}}") != "inactive":
        if os.environ.get("STACK_REQUIRE_DOCKER") == "1":
            pytest.fail("this Docker engine is in a swarm already; the Swarm test needs one it may create")
        pytest.skip("this Docker engine is in a swarm already: the test creates (and leaves) its own")
    var = tmp_path_factory.mktemp("swarm-var")
    site = site_on_free_ports(var)
    credentials.ensure(site.secrets)
    tls.ensure(site)
    build = subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), "build"], cwd=ROOT, capture_output=True,
                           text=True, timeout=900,
                           env={**os.environ, **images, "COMPOSE_PROJECT_NAME": PROJECT, "STACK_VAR": str(var)})
    assert build.returncode == 0, build.stderr[-3000:]
    docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        stack_file = var / "stack.json"
        stack_file.write_text(json.dumps(swarm.render(PROJECT, site), indent=2))
        docker("stack", "deploy", "--compose-file", str(stack_file), PROJECT)
        wait_until(lambda: all(r.split("/")[0] == r.split("/")[1] for r in converged().values())
                   and len(converged()) == len(STREAM_SERVICES) + len(HTTP_SERVICES) + 2,
                   DEPLOY_TIMEOUT_S, "every task running")
        wait_until(lambda: all(answers_200(f"{site.base_url}{s.prefix}json") for s in HTTP_SERVICES),
                   DEPLOY_TIMEOUT_S, "every service answering through nginx")
        yield site
    finally:
        docker("stack", "rm", PROJECT, check=False)
        # Its tasks would each take their stop delay and drain (tested above): remove them outright.
        leftovers = docker("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={PROJECT}", check=False)
        if leftovers:
            docker("rm", "--force", *leftovers.split(), check=False)
        # The stack's network goes once its tasks are gone; leaving the swarm removes the rest.
        deadline = time.monotonic() + 60
        while docker("network", "ls", "--filter", f"label=com.docker.stack.namespace={PROJECT}", "-q",
                     check=False) and time.monotonic() < deadline:
            time.sleep(1)
        while docker("info", "--format", "{{.Swarm.LocalNodeState}}") != "inactive":  # leave can time out
            docker("swarm", "leave", "--force", check=False)
            assert time.monotonic() < deadline + 60, "could not leave the swarm the test created"


def test_the_stack_deploys_on_a_swarm_and_answers_through_nginx(swarm_stack):
    site = swarm_stack
    for entry in HTTP_SERVICES:
        response = requests.get(f"{site.base_url}{entry.prefix}json", timeout=10)
        assert response.status_code == 200 and response.json() == {"message": "Hello, World!"}
    # one task per replica the registry gives, each reached in turn (dnsrr: Docker's DNS answers every task)
    every_instance_answers(site.base_url, service("httpbin").instances)
    reply = dns.query.udp(dns.message.make_query(f"web.{ZONE}", "A"), "127.0.0.1", port=site.dns_port, timeout=5)
    assert len([rr for rrset in reply.answer for rr in rrset]) == service("web").instances  # the stack's DNS


def test_scaling_a_service_adds_tasks_that_nginx_reaches(swarm_stack):
    site = swarm_stack
    name = f"{PROJECT}_httpbin"
    docker("service", "scale", "--detach=false", f"{name}=3", timeout=180)
    try:
        every_instance_answers(site.base_url, 3)
    finally:
        docker("service", "scale", "--detach=false", f"{name}={service('httpbin').instances}", timeout=180)
    every_instance_answers(site.base_url, service("httpbin").instances)


def test_a_rolling_update_under_load_loses_no_request(swarm_stack):
    """Every HTTP service's tasks replaced one at a time (start-first: the new task healthy before the old one
    stops) while four clients keep asking every service; each task waits out nginx's resolver interval before
    it drains, so no request meets a task that is gone."""
    site = swarm_stack

    def one_round(seen: list) -> None:
        for entry in HTTP_SERVICES:
            seen.append(session.get(f"{site.base_url}{entry.prefix}json", timeout=10).status_code)

    with requests.Session() as session:
        tasks_before = {s.name: set(docker("service", "ps", "-q", "--filter", "desired-state=running",
                                           f"{PROJECT}_{s.name}").split()) for s in HTTP_SERVICES}
        with alongside(one_round) as seen:
            for entry in HTTP_SERVICES:  # the three services' updates run side by side, each one task at a time
                docker("service", "update", "--force", "--detach", f"{PROJECT}_{entry.name}")
            wait_until(lambda: all(docker("service", "inspect", "--format", "{{.UpdateStatus.State}}",
                                          f"{PROJECT}_{entry.name}") == "completed" for entry in HTTP_SERVICES),
                       300, "every rolling update completed")
            time.sleep(swarm.STOP_DELAY_S + 2)  # the last old tasks' delay and drain, under load
    for entry in HTTP_SERVICES:
        running = set(docker("service", "ps", "-q", "--filter", "desired-state=running",
                             f"{PROJECT}_{entry.name}").split())
        assert running and not running & tasks_before[entry.name], entry.name  # every task was replaced
    assert len(seen) > 100 and collections.Counter(seen) == {200: len(seen)}, collections.Counter(seen)
