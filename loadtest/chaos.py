"""Faults under steady load: does any request fail while the stack is reloaded, restarted or killed?

    python -m loadtest.chaos [--users 20] [--settle 4] [--faults nginx-reload,gunicorn-hup,...]   (make chaos)

Locust runs the locustfile's mix (CatalogBrowser, Shopper, HttpbinCaller) against the running stack for the
whole run, and every fault happens in its own window while it runs: the window opens, the fault is applied and
waited out (a rolling restart returns once every instance is healthy again), then `settle` seconds pass so
requests caught by the fault finish. Requests and failures per window come from Locust's once-a-second
history (--csv-full-history), so a failure is attributed to the fault that caused it. Every Locust check is
strict (status, headers, bodies); a retried POST with the same Idempotency-Key must be replayed, not doubled.

Bounded: one Locust process with a hard --run-time, each fault's own timeout, loopback only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from deploy import procs
from deploy.stack import Compose, Native, choose_mode, driver
from loadtest import reload_window
from loadtest.__main__ import locust_env
from stack.topology import HTTP_SERVICES, ROOT, Site

REPORTS = ROOT / "reports"
MIX = ("CatalogBrowser", "Shopper", "HttpbinCaller")
FAULT_TIMEOUT_S = 150.0
# The request type under which the locustfile counts POSTs it resent with their Idempotency-Key (locustfile.RETRY;
# not imported: importing Locust monkey-patches this process with gevent).
RETRY = "RETRY"


@dataclass
class Window:
    fault: str
    started: float  # Unix time
    ended: float = 0.0
    requests: int = 0
    failures: int = 0


def _gunicorn_master(stack: Native | Compose, instance: str = "web-1") -> int:
    """The host PID of one web instance's gunicorn master."""
    if isinstance(stack, Native):
        return int((stack.site.var / "run" / f"{instance}.pid").read_text())
    container = stack.containers("web")[0]
    init = int(subprocess.run(["docker", "inspect", "--format", "{{.State.Pid}}", container],
                              capture_output=True, text=True, check=True).stdout)
    return _child_of(init)  # docker-init's child: gunicorn's master


def _child_of(init: int) -> int:
    """The one process docker-init started (its direct child), waited for while the container (re)starts."""
    deadline = time.monotonic() + 30
    while True:
        children = [pid for pid in procs.descendants(init) if procs.parent(pid) == init]
        if children or time.monotonic() > deadline:
            return min(children) if children else init
        time.sleep(0.2)


def _instance_main(stack: Native | Compose, service: str) -> int:
    """The host PID of one instance's main process (the one supervisor or docker-init started)."""
    if service == "web":
        return _gunicorn_master(stack)
    if isinstance(stack, Native):
        status = stack.ctl("pid", f"{service}-1", check=False).stdout.strip()
        return int(status)
    container = stack.containers(service)[0]
    init = int(subprocess.run(["docker", "inspect", "--format", "{{.State.Pid}}", container],
                              capture_output=True, text=True, check=True).stdout)
    return _child_of(init)


def _wait_replaced(stack: Native | Compose, old_pid: int, service: str) -> None:
    """After a kill: until supervisor (or Docker's restart policy) has a new healthy instance in its place."""
    deadline = time.monotonic() + FAULT_TIMEOUT_S
    while procs.alive(old_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if isinstance(stack, Native):
        if not stack.instance_healthy(f"{service}-1"):
            raise RuntimeError(f"{service}-1 did not come back")
    elif not all(stack.container_healthy(c) for c in stack.containers(service)):
        raise RuntimeError(f"{service} did not come back")


# What the nginx-reload window did to plain keep-alive clients beside Locust's (loadtest/reload_window.py).
PLAIN_CLIENTS: dict = {}


def nginx_reload(stack: Native | Compose) -> None:
    """nginx reloaded twice, with plain keep-alive clients counted beside Locust's users.

    One client never retries; the other resends once a GET left unanswered on a reused connection (as RFC 9112
    9.3.1 allows). Both keep connections busy through the reloads (loadtest/reload_window.py)."""
    PLAIN_CLIENTS.update(reload_window.measure(stack.site, connections=4, seconds=6, reloads=2,
                                               path="/web/plaintext", reload=stack.reload))
    time.sleep(2)  # the old workers finish their requests and exit


def gunicorn_hup(stack: Native | Compose) -> None:
    """gunicorn re-reads its config and replaces every worker, old ones finishing their requests."""
    master = _gunicorn_master(stack)
    before = procs.descendants(master)
    os.kill(master, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while procs.descendants(master) & before and time.monotonic() < deadline:
        time.sleep(0.2)


def worker_sigkill(stack: Native | Compose) -> None:
    """One gunicorn worker dies without warning (the OOM killer); the master forks a replacement."""
    master = _gunicorn_master(stack)
    deadline = time.monotonic() + 30
    while not (workers := sorted(procs.descendants(master))) and time.monotonic() < deadline:
        time.sleep(0.2)  # a master that is (re)starting forks its workers in a moment
    if not workers:
        raise RuntimeError(f"gunicorn master {master} has no workers to kill")
    os.kill(random.choice(workers), signal.SIGKILL)
    time.sleep(1)


def instance_kill(service: str) -> Callable[[Native | Compose], None]:
    def kill(stack: Native | Compose) -> None:
        pid = _instance_main(stack, service)
        for child in procs.descendants(pid) | {pid}:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_replaced(stack, pid, service)

    kill.__doc__ = f"SIGKILL every process of {service}'s first instance; supervisor (or Docker) starts a new one"
    return kill


def rolling_restart(service: str) -> Callable[[Native | Compose], None]:
    def restart(stack: Native | Compose) -> None:
        if stack.restart([service]):
            raise RuntimeError(f"make restart SERVICE={service} failed")

    restart.__doc__ = f"make restart SERVICE={service}: each instance drained, restarted, healthy, then the next"
    return restart


# Scaled out: one more instance of every HTTP service than the registry's default (3 by default).
SCALED_OUT = {s.name: s.instances + 1 for s in HTTP_SERVICES}


def instance_listing(stack: Native | Compose) -> str:
    """supervisor's status of every program (native), or every HTTP service's containers (Compose)."""
    if isinstance(stack, Native):
        return stack.ctl("status", check=False).stdout
    return "\n".join(f"{s.name}: {' '.join(stack.containers(s.name))}" for s in HTTP_SERVICES)


def instance_counts(stack: Native | Compose) -> dict[str, int]:
    """How many instances (native processes, Compose replicas) of each HTTP service run now."""
    if isinstance(stack, Native):
        # supervisor's programs alive now: web-1, web-2, ... (or web alone). One that answered its health check
        # a moment ago may still be STARTING: supervisor calls it RUNNING once it has lived startsecs (1 s), as
        # its next loop notices.
        listing = instance_listing(stack)
        running = Counter(match.group(1) for match in
                          re.finditer(r"^([a-z-]+?)(?:-\d+)?\s+(?:RUNNING|STARTING)\b", listing, re.M))
        return {s.name: running[s.name] for s in HTTP_SERVICES}
    return {s.name: len(stack.containers(s.name)) for s in HTTP_SERVICES}


def scaled(stack: Native | Compose, scale: dict[str, int]) -> None:
    """`make up SCALE=...` (empty: the registry's default), then each service runs exactly that many instances
    and nginx reaches each of httpbin's."""
    wanted = {s.name: scale.get(s.name, s.instances) for s in HTTP_SERVICES}
    if stack.scale(scale):
        raise RuntimeError(f"make up SCALE={scale} failed")
    if (counts := instance_counts(stack)) != wanted:
        raise RuntimeError(f"make up SCALE={scale} left {counts} running:\n{instance_listing(stack)}")
    every_instance_answers(stack.site.base_url, wanted["httpbin"])


def scale_out(stack: Native | Compose) -> None:
    """make up SCALE="web=3 catalog=3 httpbin=3": the new instances start, join nginx and the DNS zone and serve"""
    scaled(stack, SCALED_OUT)


def scale_in(stack: Native | Compose) -> None:
    """make up (the default scale again): the extra instances leave nginx and the DNS zone, then drain"""
    scaled(stack, {})


def every_instance_answers(base_url: str, count: int, timeout: float = 60) -> None:
    """Until httpbin's /hostname, asked through nginx at base_url, has named exactly `count` distinct instances
    (or Swarm tasks) in its last answers (nginx balances round-robin: each instance answers in turn)."""
    import requests

    prefix = next(s for s in HTTP_SERVICES if s.name == "httpbin").prefix
    deadline = time.monotonic() + timeout
    seen: list[tuple] = []
    while time.monotonic() < deadline:
        answer = requests.get(f"{base_url}{prefix}hostname", timeout=10).json()
        seen = [*seen[-(4 * count) + 1:], (answer["hostname"], answer["instance"], answer["pid"])]
        if len(seen) == 4 * count and len(set(seen)) == count:
            return
        time.sleep(0.05)
    raise RuntimeError(f"httpbin's instances did not settle at {count}: the last answers came from {set(seen)}")


FAULTS: dict[str, Callable[[Native | Compose], None]] = {
    "nginx-reload": nginx_reload,
    "gunicorn-hup": gunicorn_hup,
    "worker-sigkill": worker_sigkill,
    **{f"kill-{s.name}": instance_kill(s.name) for s in HTTP_SERVICES},
    **{f"restart-{s.name}": rolling_restart(s.name) for s in HTTP_SERVICES},
    "scale-out": scale_out,
    "scale-in": scale_in,
}


def _history(path: Path) -> list[tuple[float, int, int]]:
    """(Unix time, requests so far, failures so far) for every second of the run."""
    with path.open() as history:
        return [(float(r["Timestamp"]), int(r["Total Request Count"]), int(r["Total Failure Count"]))
                for r in csv.DictReader(history) if r["Name"] == "Aggregated"]


def _at(history: list[tuple[float, int, int]], when: float) -> tuple[int, int]:
    """Counts at the last sample taken no later than `when`."""
    before = [(requests, failures) for ts, requests, failures in history if ts <= when]
    return before[-1] if before else (0, 0)


def run(stack: Native | Compose, faults: list[str], users: int, settle: float, warmup: float, out: Path) -> dict:
    """Apply `faults` one after another under the mix at `users`; requests and failures per fault."""
    site, mode = stack.site, "native" if isinstance(stack, Native) else "compose"
    PLAIN_CLIENTS.clear()  # this run's nginx-reload window only (a process may run several)
    out.mkdir(parents=True, exist_ok=True)
    budget = int(warmup + len(faults) * (FAULT_TIMEOUT_S + settle) + 30)
    command = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
               "--users", str(users), "--spawn-rate", str(max(1, users)), "--run-time", f"{budget}s",
               "--host", site.base_url, "--csv", str(out / "locust"), "--csv-full-history", "--only-summary",
               "--stop-timeout", "10", *MIX]
    locust = subprocess.Popen(command, cwd=ROOT, env=locust_env(site), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    windows: list[Window] = []
    try:
        time.sleep(warmup)  # users sign up, log in and create their items first
        for name in faults:
            window = Window(name, time.time())
            print(f"[chaos] {name}: {FAULTS[name].__doc__.splitlines()[0] if FAULTS[name].__doc__ else ''}",
                  flush=True)
            FAULTS[name](stack)
            time.sleep(settle)
            window.ended = time.time()
            windows.append(window)
        time.sleep(1.5)  # one more history sample after the last window
    finally:
        locust.send_signal(signal.SIGTERM)  # headless Locust stops its users and writes the CSVs
        try:
            _, stderr = locust.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            locust.kill()
            _, stderr = locust.communicate()
    history = _history(out / "locust_stats_history.csv")
    for window in windows:
        start, end = _at(history, window.started), _at(history, window.ended)
        window.requests, window.failures = end[0] - start[0], end[1] - start[1]
    with (out / "locust_failures.csv").open() as failures_csv:
        failures = [dict(r) for r in csv.DictReader(failures_csv)]
    total_requests, total_failures = (history[-1][1], history[-1][2]) if history else (0, 0)
    with (out / "locust_stats.csv").open() as stats_csv:  # POSTs resent with their Idempotency-Key
        retries = {r["Name"]: int(r["Request Count"]) for r in csv.DictReader(stats_csv) if r["Type"] == RETRY}
    report = {"mode": mode, "users": users, "settle_s": settle, "requests": total_requests,
              "failures": total_failures, "client_retries": retries,
              "windows": [{"fault": w.fault, "seconds": round(w.ended - w.started, 1), "requests": w.requests,
                           "failures": w.failures} for w in windows],
              "failure_messages": failures, "locust_stderr_tail": stderr[-2000:],
              "plain_clients_at_reload": dict(PLAIN_CLIENTS)}
    (out / "chaos.json").write_text(json.dumps(report, indent=2))
    return report


def print_report(report: dict) -> None:
    print(f"\n{'fault':<18} {'seconds':>8} {'requests':>9} {'failures':>9}")
    for w in report["windows"]:
        print(f"{w['fault']:<18} {w['seconds']:>8} {w['requests']:>9} {w['failures']:>9}")
    print(f"{'whole run':<18} {'':>8} {report['requests']:>9} {report['failures']:>9}")
    for name, count in report["client_retries"].items():
        print(f"  {count} x resent with the same Idempotency-Key (counted in requests above): {name}")
    for failure in report["failure_messages"]:
        print(f"  {failure['Occurrences']} x {failure['Method']} {failure['Name']}: {failure['Error'][:160]}")
    plain = report.get("plain_clients_at_reload")
    if plain:
        print(f"  nginx-reload, beside Locust: a client that never retries lost {reload_window.lost(plain, 'plain')} "
              f"of {plain['plain']['requests']} kept-alive GETs; one that retries an unanswered GET once lost "
              f"{reload_window.lost(plain, 'retrying')} of {plain['retrying']['requests']} "
              f"({plain['retrying']['retried']} retried)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=int(os.environ.get("USERS", "20")))
    parser.add_argument("--settle", type=float, default=float(os.environ.get("SETTLE", "4")))
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("--faults", default=os.environ.get("FAULTS", ",".join(FAULTS)))
    args = parser.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    site = Site.from_env()
    mode = choose_mode(None, site)
    report = run(driver(mode, site), faults, args.users, args.settle, args.warmup,
                 REPORTS / f"chaos-{datetime.now():%Y%m%d-%H%M%S}")
    print_report(report)
    return 0 if report["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
