"""Run Locust against the running stack.

    python -m loadtest ui [--workers N]                      the web UI on http://127.0.0.1:8089 (Ctrl-C stops)
    python -m loadtest headless --users U --rate R --time T  a bounded run; CSV and HTML report in reports/
    python -m loadtest compare [--quick]                     worker classes and frameworks side by side
    python -m loadtest soak [--minutes 10 --users 100]       the mix for a while: failures, p99, RSS growth

The stack's address comes from stack/topology.py (STACK_HOST, STACK_PORT). In Compose mode the UI runs as
the `load` profile's containers (a master and N workers) instead.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from deploy.stack import COMPOSE_FILE, Compose, choose_mode, compose_command, driver
from stack.topology import HTTP_SERVICES, LOCUST_UI_PORT, ROOT, Site

LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
UI_HOST, UI_PORT = "127.0.0.1", LOCUST_UI_PORT
READ_P999_TARGET_MS = 20  # soak: the tail every read endpoint should stay under at 100 users
REPORTS = ROOT / "reports"


def locust() -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]


def locust_env(site: Site) -> dict[str, str]:
    """Locust's environment: STACK_VAR marks its processes as this stack's (`make down` stops any left behind);
    STACK_SECRETS is where the locustfile finds the catalog operator's token."""
    return {**os.environ, "STACK_VAR": str(site.var), "STACK_SECRETS": str(site.secrets)}


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def ui(site: Site, workers: int) -> int:
    url = f"http://{UI_HOST}:{UI_PORT}"
    if choose_mode(None, site) == "compose":
        compose = Compose(site)
        command = [*compose_command(), "-f", str(COMPOSE_FILE), "--profile", "load", "up", "--detach", "--build",
                   "--scale", f"locust-worker={workers}", "locust-master", "locust-worker"]
        code = subprocess.run(command, env=compose.env, cwd=ROOT).returncode
        if code == 0:
            print(f"\nLocust's web UI: {url}  (target: http://nginx:8080 inside Compose; `make down` stops it)\n")
        return code
    env = locust_env(site)
    master = subprocess.Popen([*locust(), "--master", "--class-picker", "--host", site.base_url,
                               "--web-host", UI_HOST, "--web-port", str(UI_PORT), "--expect-workers", str(workers)],
                              cwd=ROOT, start_new_session=True, env=env)
    time.sleep(1.0)
    children = [master] + [
        subprocess.Popen([*locust(), "--worker", "--master-host", "127.0.0.1"], cwd=ROOT, start_new_session=True,
                         env=env)
        for _ in range(workers)
    ]
    signal.signal(signal.SIGTERM, _interrupt)  # a TERM (make, timeout, kill) cleans up like Ctrl-C
    print(f"\nLocust's web UI: {url}  (target {site.base_url}, {workers} workers; Ctrl-C stops them)\n", flush=True)
    try:
        return master.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)


def headless(site: Site, users: int, rate: float, duration: str, classes: list[str], out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    command = [*locust(), "--headless", "--users", str(users), "--spawn-rate", str(rate), "--run-time", duration,
               "--host", site.base_url, "--csv", str(out / "locust"), "--html", str(out / "report.html"),
               "--only-summary", "--stop-timeout", "10", *classes]
    print("$", " ".join(command[2:]), flush=True)
    stack = driver(choose_mode(None, site), site)
    log_before = len(stack.log_text("nginx"))
    code = subprocess.run(command, cwd=ROOT, env=locust_env(site)).returncode
    spread = instance_spread(stack.log_text("nginx")[log_before:])
    (out / "spread.json").write_text(json.dumps(spread, indent=2))
    print("\nwhich instance answered (nginx's access log, this run):")
    for name, counts in spread.items():
        total = sum(counts.values())
        print(f"  {name:<8} " + "   ".join(f"{upstream} {n:,} ({n / total:.0%})" for upstream, n in counts.items()))
    print(f"\nreport: {out / 'report.html'}  CSV: {out}/locust_*.csv  spread: {out / 'spread.json'}  "
          f"exit code: {code}")
    return code


_ACCESS_LINE = re.compile(r'^\S+ "\S+ (/[^/ "?]*/)\S* [^"]*" \d{3} .* ups=(\S+(?:, \S+)*) conn=', re.M)


def instance_spread(nginx_log: str) -> dict[str, dict[str, int]]:
    """HTTP service -> {upstream address: requests it answered}, from nginx's access lines (the `stack` format:
    `ups=` lists every upstream tried, the last one answered). Requests nginx answered itself are left out."""
    prefixes = {s.prefix: s.name for s in HTTP_SERVICES}
    spread: dict[str, collections.Counter] = {s.name: collections.Counter() for s in HTTP_SERVICES}
    for prefix, upstreams in _ACCESS_LINE.findall(nginx_log):
        answered = upstreams.split(", ")[-1]
        if prefix in prefixes and answered != "-":
            spread[prefixes[prefix]][answered] += 1
    def in_address_order(item: tuple[str, int]) -> tuple[int, ...]:
        host, _, port = item[0].rpartition(":")
        return (*(int(part) for part in host.split(".") if part.isdigit()), int(port) if port.isdigit() else 0)

    return {name: dict(sorted(counts.items(), key=in_address_order)) for name, counts in spread.items() if counts}


def soak(site: Site, minutes: float, users: int, out: Path) -> int:
    """The mix at `users` for `minutes` against the running native stack: failures, p99 per minute and the
    stack's RSS over time (a leak shows as growth)."""
    import csv

    import psutil

    from loadtest.locustfile import SLOW_BY_DESIGN

    pidfile = site.var / "run" / "supervisord.pid"
    if not pidfile.exists():
        print("soak measures the native stack's processes: start it with MODE=native make up")
        return 2
    root = psutil.Process(int(pidfile.read_text()))

    def rss_mb() -> float:
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20

    out.mkdir(parents=True, exist_ok=True)
    command = [*locust(), "--headless", "--users", str(users), "--spawn-rate", "10", "--run-time",
               f"{int(minutes * 60)}s", "--host", site.base_url, "--csv", str(out / "locust"), "--csv-full-history",
               "--only-summary", "CatalogBrowser", "Shopper", "HttpbinCaller"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, env=locust_env(site))
    samples = []
    started = time.monotonic()
    while process.poll() is None:
        samples.append((round(time.monotonic() - started), rss_mb()))
        time.sleep(15)
    with (out / "locust_stats_history.csv").open() as history:
        rows = [r for r in csv.DictReader(history) if r["Name"] == "Aggregated"]
    first_ts = int(rows[0]["Timestamp"])
    p99_by_minute: dict[int, float] = {}
    for row in rows:
        if row["99%"] not in ("N/A", ""):
            p99_by_minute[(int(row["Timestamp"]) - first_ts) // 60] = float(row["99%"])
    warm = [rss for t, rss in samples if t >= 60] or [rss for _, rss in samples]
    # The tail per read endpoint over the whole run: one stalled event loop shows here first.
    with (out / "locust_stats.csv").open() as stats:
        reads = {f"{r['Type']} {r['Name']}": float(r["99.9%"]) for r in csv.DictReader(stats)
                 if r["Type"] in ("GET", "HEAD") and r["99.9%"] not in ("N/A", "") and r["Name"] != SLOW_BY_DESIGN}
    result = {
        "users": users, "minutes": minutes, "requests": int(rows[-1]["Total Request Count"]),
        "failures": int(rows[-1]["Total Failure Count"]), "p99_ms_by_minute": p99_by_minute,
        "rss_mb": samples, "rss_growth_after_first_minute": (warm[-1] - warm[0]) / warm[0],
        "p999_ms_by_read_endpoint": reads,
        "reads_over_p999_target": {name: ms for name, ms in reads.items() if ms > READ_P999_TARGET_MS},
    }
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rss_mb"}, indent=2))
    print(f"RSS {warm[0]:.0f} MB -> {warm[-1]:.0f} MB after the first minute; details in {out / 'soak.json'}")
    worst = max(reads.items(), key=lambda item: item[1], default=("–", 0.0))
    print(f"p99.9 of reads: worst {worst[1]:.0f} ms ({worst[0]}); target <= {READ_P999_TARGET_MS} ms for every one")
    return 0 if result["failures"] == 0 and process.returncode == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ui_args = commands.add_parser("ui")
    ui_args.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", "2")))
    run = commands.add_parser("headless")
    run.add_argument("--users", type=int, default=int(os.environ.get("USERS", "50")))
    run.add_argument("--rate", type=float, default=float(os.environ.get("RATE", "10")))
    run.add_argument("--time", default=os.environ.get("TIME", "30s"))
    run.add_argument("--classes", default=os.environ.get("CLASSES", "CatalogBrowser Shopper HttpbinCaller"))
    run.add_argument("--out", type=Path)
    soak_args = commands.add_parser("soak")
    soak_args.add_argument("--minutes", type=float, default=float(os.environ.get("MINUTES", "10")))
    soak_args.add_argument("--users", type=int, default=int(os.environ.get("USERS", "100")))
    compare = commands.add_parser("compare")
    compare.add_argument("--quick", action="store_true", default=os.environ.get("QUICK") == "1")
    compare.add_argument("--configs", default=os.environ.get("CONFIGS", ""),
                         help="comma-separated configurations to run (default: all), e.g. httpbin-aiohttp,bare-aiohttp")
    compare.add_argument("--workloads", default=os.environ.get("WORKLOADS", ""),
                         help="comma-separated workloads: plaintext,json,io,cpu (default: all)")
    args = parser.parse_args(argv)
    site = Site.from_env()
    if args.command == "ui":
        return ui(site, args.workers)
    if args.command == "headless":
        out = args.out or REPORTS / f"load-{datetime.now():%Y%m%d-%H%M%S}"
        return headless(site, args.users, args.rate, args.time, args.classes.split(), out)
    if args.command == "soak":
        return soak(site, args.minutes, args.users, REPORTS / f"soak-{datetime.now():%Y%m%d-%H%M%S}")
    from loadtest.compare.run import main as compare_main

    return compare_main(quick=args.quick, only_configs=[name for name in args.configs.split(",") if name],
                        only_workloads=[name for name in args.workloads.split(",") if name])


if __name__ == "__main__":
    sys.exit(main())
