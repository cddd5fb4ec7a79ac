"""The stack on Docker Swarm: a stack file rendered from docker-compose.yml, for `docker stack deploy`.

    python -m deploy.swarm up       (make swarm-up) build the images, render var/swarm/stack.json, deploy "pystack"
    python -m deploy.swarm down     (make swarm-down) remove the stack
    python -m deploy.swarm render --images PREFIX --out FILE

docker-compose.yml stays the one description of the containers (commands, healthchecks, environment, secrets,
hardening); this adds what Swarm needs and drops what it cannot use:
- images by name: Swarm does not build. `docker compose build` tags them <project>-<service>.
- an overlay network, and each service's replicas with `endpoint_mode: dnsrr`: Docker's DNS answers every task's
  address (this engine has no IPVS for a virtual IP), and nginx balances over them as in Compose.
- published ports in host mode (no routing mesh without IPVS), on every interface: Swarm has no host address.
- `update_config` with `order: start-first`: a new task is running and healthy before an old one stops, one at
  a time, rolled back if it never becomes healthy.
- a memory limit where Compose had mem_limit, a tmpfs mount where it had tmpfs (which Swarm ignores).
- Every HTTP task waits STOP_DELAY_S after its SIGTERM before draining. Swarm takes a stopping task out of its
  DNS answer first, but nginx asks again only every 10 s: until then it still opens connections to the task's
  address, which would time out once the task is gone. Serving through that delay, then draining, loses none.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from deploy import tls
from deploy.render import NGINX_RESOLVES_WITHIN_S
from deploy.stack import COMPOSE_FILE, Compose, base_images, compose_command
from stack import credentials
from stack.topology import HTTP_SERVICES, ROOT, Site

NETWORK = "stack"
STOP_DELAY_S = NGINX_RESOLVES_WITHIN_S  # until nginx has asked again
# Keys docker-compose.yml uses that `docker stack deploy` ignores (it warns about each) or rejects; tmpfs becomes
# a mount below.
NOT_FOR_SWARM = ("build", "profiles", "depends_on", "restart", "mem_limit", "shm_size", "pids_limit",
                 "container_name", "security_opt", "networks", "tmpfs")


def compose_config(site: Site) -> dict[str, Any]:
    """docker-compose.yml as Compose resolves it (anchors merged, variables filled), without the load profile."""
    # The site's published ports and secrets directory, as Compose would have them.
    environ = Compose(site, {"PATH": "/usr/bin:/bin"}).env
    result = subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
                            capture_output=True, text=True, cwd=ROOT, check=True, env=environ)
    return json.loads(result.stdout)


def delayed_stop(service: dict[str, Any], image_cmd: list[str]) -> list[str]:
    """The service's command behind a shell that keeps it serving STOP_DELAY_S after SIGTERM, then passes the
    signal on and waits for the drain. docker-init (init: true) runs the shell as PID 1's child."""
    command = service.get("command") or image_cmd
    script = (f"{shlex.join(command)} & child=$!; "
              f"trap 'sleep {STOP_DELAY_S}; kill -TERM $child' TERM; "
              "wait $child; trap - TERM; wait $child")
    return ["sh", "-c", script]


def stack_file(config: dict[str, Any], images: str, site: Site, image_cmds: dict[str, list[str]]) -> dict:
    """The Swarm stack for `config` (compose_config), its images named <images>-<service>."""
    http = {s.name: site.scaled(s) for s in HTTP_SERVICES}
    services = {}
    for name, compose in config["services"].items():
        service = {key: value for key, value in compose.items() if key not in NOT_FOR_SWARM and value is not None}
        service["image"] = f"{images}-{name}:latest"
        # Compose's network aliases (the DNS server's name in its zone) on the stack's one network
        aliases = [alias for network in (compose.get("networks") or {}).values() for alias in
                   ((network or {}).get("aliases") or [])]
        service["networks"] = {NETWORK: {"aliases": aliases}} if aliases else [NETWORK]
        # Swarm ignores `tmpfs:`; a tmpfs mount is how it gives a read-only container its writable /tmp.
        service["volumes"] = [*compose.get("volumes", []), *({"type": "tmpfs", "target": path}
                                                             for path in compose.get("tmpfs", []))]
        deploy: dict[str, Any] = {
            "replicas": http[name].instances if name in http else 1,
            "endpoint_mode": "dnsrr",
            "update_config": {"parallelism": 1, "order": "start-first", "failure_action": "rollback",
                              "monitor": "10s"},
            "rollback_config": {"parallelism": 1, "order": "start-first"},
            "restart_policy": {"condition": "any", "delay": "1s"},
        }
        if "mem_limit" in compose:
            deploy["resources"] = {"limits": {"memory": compose["mem_limit"]}}
        service["deploy"] = deploy
        if name in http:
            service["command"] = delayed_stop(compose, image_cmds[name])
            # the delay, then gunicorn's or the drain's 20 s, within Swarm's patience
            grace = int(compose["stop_grace_period"].rstrip("s"))
            service["stop_grace_period"] = f"{grace + STOP_DELAY_S}s"
        if "ports" in compose:
            service["ports"] = [{"target": p["target"], "published": int(p["published"]),
                                 "protocol": p.get("protocol", "tcp"), "mode": "host"} for p in compose["ports"]]
        services[name] = service
    secrets = {key: {"file": value["file"]} for key, value in config.get("secrets", {}).items()}
    return {"version": "3.8", "services": services, "networks": {NETWORK: {"driver": "overlay", "attachable": True}},
            "volumes": {key: {} for key in config.get("volumes", {})}, "secrets": secrets}


def image_command(image: str) -> list[str]:
    """The CMD an image runs when the Compose service gives no command (the HTTP services' Dockerfiles)."""
    result = subprocess.run(["docker", "image", "inspect", "--format", "{{json .Config.Cmd}}", image],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def render(images: str, site: Site) -> dict:
    config = compose_config(site)
    commands = {s.name: image_command(f"{images}-{s.name}:latest") for s in HTTP_SERVICES}
    return stack_file(config, images, site, commands)


def project_name() -> str:
    """docker-compose.yml's project name (`name:`): the Swarm stack's name and its images' prefix."""
    return compose_config(Site.from_env())["name"]


def up(site: Site) -> int:
    """Build the images as Compose does, render the stack file under $STACK_VAR/swarm and deploy it."""
    state = subprocess.run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"], capture_output=True,
                           text=True).stdout.strip()
    if state != "active":
        print("[swarm] this engine is not in a swarm: docker swarm init --advertise-addr 127.0.0.1")
        return 1
    credentials.ensure(site.secrets)
    tls.ensure(site)
    stack = project_name()
    environ = {**Compose(site).env, **base_images(dict(os.environ)), "COMPOSE_PROJECT_NAME": stack}
    if subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), "build"], cwd=ROOT, env=environ).returncode:
        return 1
    out = site.var / "swarm" / "stack.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(render(stack, site), indent=2) + "\n")
    code = subprocess.run(["docker", "stack", "deploy", "--compose-file", str(out), stack]).returncode
    if not code:
        print(f"[swarm] deployed {out} as {stack}: docker stack ps {stack}; nginx answers on {site.base_url}/ once "
              "its tasks are healthy")
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "render"])
    parser.add_argument("--images", help="render: image name prefix, <prefix>-<service>:latest (default: the "
                        "Compose project's name)")
    parser.add_argument("--out", type=Path, help="render: where to write the stack file")
    args = parser.parse_args()
    site = Site.from_env()
    if args.command == "up":
        return up(site)
    if args.command == "down":
        return subprocess.run(["docker", "stack", "rm", project_name()]).returncode
    if not args.out:
        parser.error("render needs --out")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(render(args.images or project_name(), site), indent=2) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
