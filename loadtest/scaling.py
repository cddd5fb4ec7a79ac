"""Throughput and p99 against instances: the whole native stack at SCALE 1, 2 and 4 of every HTTP service.

    python -m loadtest.scaling [--instances 1,2,4] [--seconds 10] [--endpoint json]
    make scaling [INSTANCES=1,2,4] [SECONDS_PER_CELL=10]

A native stack of its own (127.0.43.x, a free port) starts afresh at each size (`make up SCALE=...`): a running
web instance keeps the worker count it started with, so scaling a running stack would mix sizes. At each size,
wrk drives each service's endpoint through nginx (64 connections) and the CPU each tier used is read from its
processes: nginx, the service's instances together, and wrk itself. The figures are honest about the machine:
on 2 cores wrk, nginx and the service share them, so more instances can only help until the cores are busy;
the CPU columns show where they went. From the same run, the CPU seconds each tier spends per request, which
is what the capacity model (docs/reports/measured.md) multiplies out for N machines.

Bounded: every wrk run has a fixed duration; loopback only; the stack is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from deploy import postgres
from loadtest.compare.servers import Running, free_port
from loadtest.compare.wrk import CONNECTIONS, WRK, parse_wrk
from loadtest.reporting import finish, fmt, machine, markdown_table, plt, report_dir
from stack.topology import HTTP_SERVICES, ROOT, Site, format_scale

NET = "127.0.43"
T = TypeVar("T")
WARMUP_S = 2.0


def stack_env(var: Path, port: int, instances: int) -> dict[str, str]:
    return {**os.environ, "STACK_NET": NET, "STACK_HOST": f"{NET}.1", "STACK_PORT": str(port), "STACK_VAR": str(var),
            "SCALE": " ".join(f"{s.name}={instances}" for s in HTTP_SERVICES), "MODE": "native"}


def deploy(env: dict[str, str], *args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "deploy", *args], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    if result.returncode:
        raise RuntimeError(f"deploy {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def program_tree(var: Path, program: str) -> Running:
    """A supervised program's process tree (gunicorn's master and workers, nginx's master and workers)."""
    ctl = [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(var / "run" / "supervisord.conf"), "pid",
           program]
    pid = int(subprocess.run(ctl, capture_output=True, text=True, check=True).stdout.strip())
    return Running(program, None, 0, root_pid=pid)


def wrk(url: str, seconds: float, script: Path | None = None) -> tuple[dict, float]:
    """wrk's parsed report and the cores it kept busy; `script`: a wrk Lua script (requests other than GET)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    scripted = ["-s", str(script)] if script else []
    result = subprocess.run([str(WRK), "-t", "2", "-c", str(CONNECTIONS), "-d", f"{seconds:g}s", "--latency",
                             *scripted, url], capture_output=True, text=True, timeout=seconds + 30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode:
        raise RuntimeError(f"wrk failed: {result.stdout[-500:]}{result.stderr[-500:]}")
    cores = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / seconds
    return parse_wrk(result.stdout), cores


def on_fresh_stacks(configurations: list[T], env_of: Callable[[T], dict[str, str]],
                    measure_one: Callable[[T, Site], list[dict]], results: dict, out: Path, var: Path,
                    render: Callable[[dict, Path], Path]) -> None:
    """For each configuration: a native stack started afresh with its environment, measured, stopped; the
    results saved after each, the stack stopped whatever happens, then the report rendered."""
    try:
        for configuration in configurations:
            env = env_of(configuration)
            deploy(env, "up", "--mode", "native")
            time.sleep(1)
            results["cells"] += measure_one(configuration, Site.from_env(env))
            (out / "results.json").write_text(json.dumps(results, indent=2))
            deploy(env, "down")
    finally:
        deploy(env_of(configurations[0]), "down")
        postgres.remove_cluster(var)  # STORE=postgres's cluster, wherever it had to live
        shutil.rmtree(var, ignore_errors=True)
    finish(results, out)
    print(f"\nreport {render(results, out)}")


def measure(site: Site, var: Path, instances: int, endpoint: str, seconds: float) -> list[dict]:
    nginx = program_tree(var, "nginx")
    cells = []
    for entry in site.http_services:
        names = entry.instance_names()
        trees = [program_tree(var, name) for name in names]
        url = f"{site.base_url}{entry.prefix}{endpoint}"
        wrk(url, WARMUP_S)  # connections pooled, caches warm
        for tree in (*trees, nginx):
            tree.mark()
        report, wrk_cores = wrk(url, seconds)
        service_cores = sum(tree.cpu_since_mark(seconds) for tree in trees)
        nginx_cores = nginx.cpu_since_mark(seconds)
        good = report["rps"] * (1 - report["failures"] / max(report["requests"], 1))
        cells.append({"service": entry.name, "instances": instances, "rps": good, "p50_ms": report["p50_ms"],
                      "p99_ms": report["p99_ms"], "failures": report["failures"], "service_cores": service_cores,
                      "nginx_cores": nginx_cores, "wrk_cores": wrk_cores,
                      # CPU seconds per request, per tier: what the capacity model multiplies out
                      "service_us_per_request": 1e6 * service_cores / good if good else None,
                      "nginx_us_per_request": 1e6 * nginx_cores / good if good else None})
        print(f"  {entry.name:<8} x{instances}: {good:>8,.0f} req/s  p99 {report['p99_ms']:.1f} ms  cores: "
              f"service {service_cores:.2f}  nginx {nginx_cores:.2f}  wrk {wrk_cores:.2f}", flush=True)
    return cells


def render(results: dict, out: Path) -> Path:
    cells = results["cells"]
    rows = [[c["service"], str(c["instances"]), fmt(c["rps"]), fmt(c["p99_ms"], 1), fmt(c["service_cores"], 2),
             fmt(c["nginx_cores"], 2), fmt(c["wrk_cores"], 2), fmt(c["service_us_per_request"]),
             fmt(c["nginx_us_per_request"]), str(c["failures"])] for c in cells]
    lines = [f"# Scaling: throughput and p99 against instances ({results['endpoint']}, through nginx)", "",
             f"{results['command']} · {results['machine']['cores']} cores ({results['machine']['cpu_model']}) · "
             f"wrk, {CONNECTIONS} connections, {results['seconds']:g} s per cell", "",
             *markdown_table(["service", "instances", "req/s", "p99 ms", "service cores", "nginx cores",
                              "wrk cores", "service µs/req", "nginx µs/req", "failures"], rows), "",
             "Cores are CPU seconds per second of each tier's processes; on this machine they add up to at most "
             f"{results['machine']['cores']}: past that, more instances only share the same cores.", ""]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(c["service"] for c in cells):
        mine = [c for c in cells if c["service"] == name]
        axes[0].plot([c["instances"] for c in mine], [c["rps"] for c in mine], marker="o", label=name)
        axes[1].plot([c["instances"] for c in mine], [c["p99_ms"] for c in mine], marker="o", label=name)
    for axis, title in zip(axes, ("requests per second", "p99 latency (ms)"), strict=True):
        axis.set_xlabel("instances per service")
        axis.set_title(title)
        axis.set_xticks(results["instances"])
        axis.legend()
    figure.tight_layout()
    figure.savefig(out / "scaling.png", dpi=110)
    lines.append("![throughput and p99 against instances](scaling.png)")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", default=os.environ.get("INSTANCES", "1,2,4"))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SECONDS_PER_CELL", "10")))
    parser.add_argument("--endpoint", default="json", choices=["json", "plaintext"])
    args = parser.parse_args(argv)
    if WRK is None:
        print("scaling needs wrk (Debian's package `wrk`)")
        return 2
    sizes = [int(n) for n in args.instances.split(",")]
    started = datetime.now()
    out = report_dir("scaling", started)
    var = Path(tempfile.mkdtemp(prefix="scaling-"))
    port = free_port(f"{NET}.1")
    results = {"started": started.isoformat(timespec="seconds"), "machine": machine(), "instances": sizes,
               "endpoint": args.endpoint, "seconds": args.seconds, "cells": [],
               "command": f"make scaling INSTANCES={args.instances} SECONDS_PER_CELL={args.seconds:g}"}
    def measure_one(instances: int, site: Site) -> list[dict]:
        print(f"[scaling] SCALE={format_scale(site.scale)}", flush=True)
        return measure(site, var, instances, args.endpoint, args.seconds)

    on_fresh_stacks(sizes, lambda instances: stack_env(var, port, instances), measure_one, results, out, var, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
