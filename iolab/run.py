"""`make iolab`: every lab server under the same loads, side by side; reports/iolab-<time>/ with results.json,
report.md and charts. QUICK=1 runs a subset in about two minutes.

Each cell starts a fresh server (so its memory baseline is its own), runs iolab.driver against it in a
separate process, and stops it. Loopback only; every cell is bounded in time.
"""

from __future__ import annotations

import json
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path

from rich.console import Console

from iolab import report
from iolab.protocol import raise_fd_limit
from iolab.servers import BY_NAME, LAB_SERVERS, LabServer
from loadtest.compare.servers import Running
from loadtest.reporting import finish, machine, progress, report_dir
from stack.topology import ROOT

IDLE_HEAVY, ACTIVE, SIZES = "idle-heavy", "active", "sizes"
ACTIVE_SHARE = 0.01  # the idle-heavy mix: 1% of the connections send, the rest only stay open
START_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Settings:
    connections: tuple[int, ...]  # the idle-heavy sweep's connection counts
    active_connections: tuple[int, ...]  # the all-active sweep's
    sizes: tuple[int, ...]  # message sizes, in bytes, at size_connections all active
    size_connections: int
    warmup_s: float
    seconds: float
    timeout_s: float  # the longest a client waits for one echo before it counts the server as stalled
    through_stack: bool  # also measure the stack's own servers (which selector; C10k through nginx)


FULL = Settings(connections=(10, 100, 1000, 5000, 10000), active_connections=(10, 100, 1000, 5000, 10000),
                sizes=(1024, 10 * 1024, 100 * 1024), size_connections=10, warmup_s=0.5, seconds=2.0,
                timeout_s=2.0, through_stack=True)
QUICK = Settings(connections=(2000,), active_connections=(100,), sizes=(100 * 1024,), size_connections=10,
                 warmup_s=0.3, seconds=1.0, timeout_s=1.0, through_stack=False)


@dataclass(frozen=True)
class Cell:
    server: LabServer
    mix: str
    connections: int
    active: int
    size: int

    @property
    def key(self) -> str:
        return f"{self.server.name} {self.mix} {self.connections}x{self.size}B"


def cells(settings: Settings, servers: tuple[LabServer, ...] = LAB_SERVERS) -> list[Cell]:
    plan = []
    for server in servers:
        plan += [Cell(server, IDLE_HEAVY, n, max(1, round(n * ACTIVE_SHARE)), 1024) for n in settings.connections]
        plan += [Cell(server, ACTIVE, n, n, 1024) for n in settings.active_connections]
        plan += [Cell(server, SIZES, settings.size_connections, settings.size_connections, size)
                 for size in settings.sizes]
    return plan


class LabProcess:
    """One lab server, started in its own session; its stderr (diagnostics) goes to a file."""

    def __init__(self, server: LabServer, workdir: Path) -> None:
        self.server = server
        self.log = workdir / f"{server.name}.stderr"
        with self.log.open("w") as stderr:
            self.process = subprocess.Popen(server.argv(0), stdout=subprocess.PIPE, stderr=stderr, text=True,
                                            cwd=ROOT, start_new_session=True)
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT_S)
        self.announce = self.process.stdout.readline().strip() if ready else ""
        if not self.announce.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"{server.name} did not start: {self.messages() or self.announce or 'no output'}")
        self.port = int(self.announce.split()[2].rsplit(":", 1)[1])

    def messages(self) -> list[str]:
        """What the server said on stderr, each distinct line once, the last few."""
        lines = list(dict.fromkeys(self.log.read_text(errors="replace").splitlines())) if self.log.exists() else []
        return lines[-4:]

    def stop(self) -> None:
        """TERM to its whole session (a fork server's children too), KILL if it lingers."""
        Running(self.server.name, self.process, 0).stop()
        if self.process.stdout:
            self.process.stdout.close()


def measure(cell: Cell, settings: Settings, workdir: Path) -> dict:
    base = {"server": cell.server.name, "model": cell.server.model, "mechanism": cell.server.mechanism,
            "mix": cell.mix, "connections": cell.connections, "active": cell.active, "size": cell.size}
    if reason := cell.server.unavailable():
        return {**base, "skipped": f"cannot run on this machine: {reason}"}
    if cell.server.max_clients and cell.connections > cell.server.max_clients:
        return {**base, "skipped": f"not run past {cell.server.max_clients:,} clients: {cell.server.limit_reason}"}
    server = LabProcess(cell.server, workdir)
    command = [sys.executable, "-m", "iolab.driver", "--port", str(server.port), "--pid", str(server.process.pid),
               "--connections", str(cell.connections), "--active", str(cell.active), "--size", str(cell.size),
               "--warmup", str(settings.warmup_s), "--seconds", str(settings.seconds),
               "--timeout", str(settings.timeout_s)]
    # Bounded: connects (5 s) + first lines + the window + one timeout, with room to spare.
    limit = 30 + settings.warmup_s + settings.seconds + 3 * settings.timeout_s
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=limit)
        if done.returncode != 0:
            raise RuntimeError(f"driver failed: {done.stderr.strip()[-400:]}")
        result = json.loads(done.stdout)
    finally:
        server.stop()
    return {**base, **result, "announce": server.announce, "messages": server.messages()}


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "kernel": platform.release()}
    for name in ("gevent", "uvloop", "liburing", "psutil"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def chosen(names: str) -> tuple[LabServer, ...]:
    """SERVERS=epoll-lt,io_uring picks some; empty: all."""
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown lab servers {unknown}; known: {', '.join(BY_NAME)}")
    return tuple(BY_NAME[name] for name in wanted) or LAB_SERVERS


def main(quick: bool = False, servers: tuple[LabServer, ...] = LAB_SERVERS, settings: Settings | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwind: stop the servers
    settings = settings or (QUICK if quick else FULL)
    limit = raise_fd_limit()  # the servers and the driver inherit it
    started = datetime.now()
    out = report_dir("iolab", started)
    plan = cells(settings, servers)
    results = {
        "started": started.isoformat(timespec="seconds"),
        "command": "make iolab" + (" QUICK=1" if quick else ""),
        "machine": {**machine(), "rlimit_nofile": limit}, "versions": versions(),
        "settings": {**asdict(settings), "active_share": ACTIVE_SHARE},
        "servers": [{"name": s.name, "model": s.model, "mechanism": s.mechanism, "module": s.module,
                     "unavailable": s.unavailable()} for s in servers],
        "cells": [], "errors": [],
    }
    console = Console()
    with progress(console) as bar, tempfile.TemporaryDirectory(prefix="iolab-") as workdir:
        task = bar.add_task("starting", total=len(plan) + 1 + (1 if settings.through_stack else 0))
        bar.update(task, description="wait cost: select vs poll vs epoll")
        done = subprocess.run([sys.executable, "-m", "iolab.waitcost", "--json"], capture_output=True, text=True,
                              cwd=ROOT, timeout=300, check=True)
        results["waitcost"] = json.loads(done.stdout)
        bar.advance(task)
        for cell in plan:
            bar.update(task, description=cell.key)
            try:
                results["cells"].append(measure(cell, settings, Path(workdir)))
            except Exception as error:  # noqa: BLE001 - record it and go on: one broken cell must not lose the rest
                console.print(f"[red]{cell.key}: {error}[/red]")
                results["errors"].append({"cell": cell.key, "error": str(error)})
            (out / "results.json").write_text(json.dumps(results, indent=2))
            bar.advance(task)
        if settings.through_stack:
            from iolab import stack

            bar.update(task, description="the stack: wait calls (strace) and C10k through nginx")
            results["stack"] = stack.measure(console)
            bar.advance(task)
    path = report.render(finish(results, out))
    console.print(f"\n[bold]report[/bold] {path}\n[bold]data[/bold]   {out / 'results.json'}")
    skipped = {cell["server"]: cell["skipped"] for cell in results["cells"] if "skipped" in cell}
    for server, reason in skipped.items():
        console.print(f"[yellow]{server}: {reason}[/yellow]")
    if results["errors"]:
        console.print(f"[red]{len(results['errors'])} cells not measured[/red]")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(quick=os.environ.get("QUICK") == "1" or "--quick" in sys.argv,
                  servers=chosen(os.environ.get("SERVERS", ""))))
