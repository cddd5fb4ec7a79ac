"""`make compare`: run the matrix on this machine, write reports/compare-<time>/ (results.json, report.md,
charts), and show progress while it runs. QUICK=1 runs a small subset in about two minutes."""

from __future__ import annotations

import itertools
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from loadtest.compare import drivers, report, servers
from loadtest.compare.matrix import Cell, expand, io_ceiling
from loadtest.compare.wrk import CONNECTIONS as WRK_CONNECTIONS
from loadtest.compare.wrk import WRK
from loadtest.reporting import finish, machine, report_dir
from loadtest.reporting import progress as progress_bar
from stack.topology import ROOT, Site


@dataclass(frozen=True)
class Settings:
    warmup_s: float
    measure_s: float
    repetitions: int
    wrk: bool
    wrk_connections: int = WRK_CONNECTIONS
    wrk_s: float = 2.0  # wrk needs less time per run than Locust; three short runs beat one long one


FULL = Settings(warmup_s=1.0, measure_s=4.0, repetitions=3, wrk=WRK is not None)
QUICK = Settings(warmup_s=1.0, measure_s=2.0, repetitions=1, wrk=WRK is not None, wrk_s=2.0)


def versions() -> dict[str, str]:
    found = {name: metadata.version(name) for name in ("gunicorn", "gevent", "flask", "tornado", "aiohttp", "locust")}
    found["python"] = platform.python_version()
    found["nginx"] = subprocess.run([servers.NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    if WRK:
        found["wrk"] = subprocess.run([WRK, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return found


def measure(cell: Cell, server: servers.Running, nginx: servers.Running | None, settings: Settings,
            progress: Progress, task: object) -> dict:
    target = nginx if cell.route == "nginx" else server
    url = f"http://127.0.0.1:{target.port}"
    path = cell.workload.path(cell.config.prefix)
    users = cell.workload.users
    behind = nginx if cell.route == "nginx" else None
    runs = []
    for _ in range(settings.repetitions):
        servers.settle(server.port, f"{cell.config.prefix}/json")
        runs.append(drivers.locust_run(url, path, users, settings.warmup_s, settings.measure_s, server, behind)
                    .as_dict())
        progress.advance(task)
    wrk_runs = []
    if settings.wrk:
        connections = users if cell.workload.name == "io" else settings.wrk_connections
        for _ in range(settings.repetitions):
            servers.settle(server.port, f"{cell.config.prefix}/json")
            wrk_runs.append(drivers.wrk_run(url + path, connections, settings.wrk_s, server, behind).as_dict())
            progress.advance(task)
    # The quoted wrk figure is the median run itself (its CPU split belongs to the same run).
    wrk = sorted(wrk_runs, key=lambda run: run["rps"])[len(wrk_runs) // 2] if wrk_runs else None
    ceiling = io_ceiling(cell.config, users) if cell.workload.name == "io" else None
    return {"config": cell.config.name, "label": cell.config.label, "family": cell.config.family,
            "workload": cell.workload.name, "route": cell.route, "users": users, "path": path,
            "ceiling_rps": ceiling, "runs": runs, "wrk": wrk, "wrk_runs": wrk_runs}


MIXED_USERS = 100


def mixed(settings: Settings, progress: Progress, task: object) -> dict:
    """The locustfile's realistic mix (catalog browsers, shoppers, httpbin callers) against a whole native
    stack of its own (web on gevent workers), through nginx."""
    from loadtest import locustfile  # the scenario classes; imported here, in the harness process only

    data = Path(tempfile.mkdtemp(prefix="compare-mixed-"))
    env = {**os.environ, "STACK_NET": "127.0.41", "STACK_HOST": "127.0.41.1", "STACK_PORT": str(servers.free_port()),
           "STACK_VAR": str(data)}
    site = Site.from_env(env)
    deploy = [sys.executable, "-m", "deploy"]
    try:
        subprocess.run([*deploy, "up", "--mode", "native"], env=env, cwd=ROOT, check=True, capture_output=True)
        stack = servers.Running("stack", None, site.public_port,
                                int((data / "run" / "supervisord.pid").read_text()))
        classes = [locustfile.CatalogBrowser, locustfile.Shopper, locustfile.HttpbinCaller]
        progress.update(task, description="mixed (whole stack, 100 users)")
        runs = []
        for _ in range(settings.repetitions):
            runs.append(drivers.locust_run(site.base_url, "", MIXED_USERS, settings.warmup_s * 5,
                                           settings.measure_s * 3, stack, None, classes).as_dict())
            progress.advance(task)
    finally:
        subprocess.run([*deploy, "down"], env=env, cwd=ROOT, capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
    return {"config": "stack-gevent", "label": "whole stack (web on gevent x5)", "family": "stack",
            "workload": "mixed", "route": "nginx", "users": MIXED_USERS, "path": "locustfile mix",
            "ceiling_rps": None, "runs": runs, "wrk": None}


def main(quick: bool = False, only_configs: Sequence[str] = (), only_workloads: Sequence[str] = ()) -> int:
    # Locust warns about spawning every user at once: that is deliberate here (the warm-up absorbs it).
    logging.getLogger("locust").setLevel(logging.ERROR)
    # The servers run in sessions of their own (a Ctrl-C in the terminal must not hit them mid-cell), so only
    # the finally blocks below stop them: a TERM must unwind like Ctrl-C does, not kill this process outright.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    settings = QUICK if quick else FULL
    cells = expand(quick, only_configs, only_workloads)
    narrowed = bool(only_configs or only_workloads)
    started = datetime.now()
    out = report_dir("compare", started)
    results = {
        "started": started.isoformat(timespec="seconds"),
        "command": "make compare" + (" QUICK=1" if quick else "")
                   + (f" CONFIGS={','.join(only_configs)}" if only_configs else "")
                   + (f" WORKLOADS={','.join(only_workloads)}" if only_workloads else ""),
        "machine": machine(), "versions": versions(),
        "settings": {**settings.__dict__, "workloads": list(dict.fromkeys(c.workload.name for c in cells))},
        "cells": [],
        "errors": [],
    }
    console = Console()
    with_mixed = not quick and not narrowed  # the whole-stack run belongs to the full comparison only
    steps = len(cells) * settings.repetitions * (2 if settings.wrk else 1) + (settings.repetitions if with_mixed else 0)
    with progress_bar(console) as progress:
        task = progress.add_task("starting", total=steps)
        for config, group in itertools.groupby(cells, key=lambda cell: cell.config):
            group = list(group)
            data = Path(tempfile.mkdtemp(prefix="compare-"))
            server = servers.start(config, data)
            nginx = servers.start_nginx(config.name, server.upstream_port, config.prefix, data,
                                        servers.web_server_of(config)) if any(
                c.route == "nginx" for c in group) else None
            try:
                for cell in group:
                    progress.update(task, description=cell.key)
                    try:
                        if not server.alive():
                            raise RuntimeError(f"the server died before this cell: {server.log_tail()}")
                        results["cells"].append(measure(cell, server, nginx, settings, progress, task))
                    except Exception as error:  # noqa: BLE001 - record it and go on: one broken cell must not lose the rest
                        console.print(f"[red]{cell.key}: {error}[/red]")
                        results["errors"].append({"cell": cell.key, "error": str(error)})
                    (out / "results.json").write_text(json.dumps(results, indent=2))
            finally:
                for running in (nginx, server):
                    if running:
                        running.stop()
                shutil.rmtree(data, ignore_errors=True)
        if with_mixed:
            results["cells"].append(mixed(settings, progress, task))
            results["settings"]["workloads"].append("mixed")
    path = report.render(finish(results, out))
    console.print(f"\n[bold]report[/bold] {path}\n[bold]data[/bold]   {out / 'results.json'}")
    failures = sum(run["failures"] for cell in results["cells"] for run in cell["runs"])
    if failures or results["errors"]:
        console.print(f"[red]{failures} failed requests, {len(results['errors'])} cells not measured[/red]")
    return 1 if failures or results["errors"] else 0
