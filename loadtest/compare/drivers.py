"""The two load drivers: Locust (FastHttpUser, in this process: the driver users see) and wrk (when
installed: a C driver that needs far less CPU per request, so it shows when Locust is the bottleneck).

This module imports Locust, which monkey-patches the process with gevent: import it only in the harness
process, never beside code that already imported ssl (tests import loadtest.compare.wrk instead)."""

from __future__ import annotations

import resource
import subprocess
import time
from dataclasses import asdict, dataclass

import gevent
import psutil
from locust import FastHttpUser, constant, task
from locust.env import Environment

from loadtest.compare.servers import Running
from loadtest.compare.wrk import WRK, parse_wrk


@dataclass
class Measurement:
    driver: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failures: int
    driver_cpu: float  # cores the driver kept busy
    server_cpu: float  # cores the server's processes kept busy
    nginx_cpu: float | None
    server_rss_mb: float

    def as_dict(self) -> dict:
        return asdict(self)


def _bench_user(path: str) -> type[FastHttpUser]:
    class Bench(FastHttpUser):
        wait_time = constant(0)

        @task
        def hit(self) -> None:
            with self.client.get(path, catch_response=True, name="bench") as response:
                if response.status_code != 200:
                    response.failure(f"status {response.status_code}")

    return Bench


def _measure_window(seconds: float, server: Running, nginx: Running | None) -> tuple[float, float, float | None]:
    """Sleep through the window; returns (driver cores, server cores, nginx cores)."""
    me = psutil.Process()
    before = sum(me.cpu_times()[:2])
    server.mark()
    if nginx:
        nginx.mark()
    gevent.sleep(seconds)
    driver = (sum(me.cpu_times()[:2]) - before) / seconds
    return driver, server.cpu_since_mark(seconds), nginx.cpu_since_mark(seconds) if nginx else None


def locust_run(url: str, path: str, users: int, warmup: float, seconds: float, server: Running,
               nginx: Running | None, user_classes: list | None = None) -> Measurement:
    """`users` FastHttpUsers hitting `path` back to back (or the given scenario classes): a warm-up, then a
    measured window."""
    env = Environment(user_classes=user_classes or [_bench_user(path)], host=url)
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=users if user_classes is None else max(users / 5, 1))
    gevent.sleep(warmup)
    env.stats.reset_all()
    started = time.monotonic()
    driver, server_cpu, nginx_cpu = _measure_window(seconds, server, nginx)
    elapsed = time.monotonic() - started
    total = env.stats.total
    measurement = Measurement(
        # Throughput counts only the answers that passed the check.
        "locust", (total.num_requests - total.num_failures) / elapsed, total.get_response_time_percentile(0.5) or 0.0,
        total.get_response_time_percentile(0.99) or 0.0, total.num_requests, total.num_failures, driver,
        server_cpu, nginx_cpu, server.rss_mb(),
    )
    runner.quit()
    runner.greenlet.join(timeout=10)
    return measurement


WRK_TIMEOUT_S = 10


def wrk_run(url: str, connections: int, seconds: float, server: Running, nginx: Running | None) -> Measurement:
    threads = min(2, connections)
    server.mark()
    if nginx:
        nginx.mark()
    # wrk's own CPU: the growth of this process's reaped-children usage (gevent reaps children itself, so
    # os.wait4 would find none); the servers are children too but stay alive, so only wrk adds to it.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # --timeout: wrk's default (2 s) would count as failures the answers of a server that queues by design
    # (sync x5 at 200 connections: 2 s in the backlog); 10 s still catches a stuck one.
    result = subprocess.run([WRK, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "--latency",
                             "--timeout", f"{WRK_TIMEOUT_S}s", url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=seconds + 30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = result.stdout
    if result.returncode:
        raise RuntimeError(f"wrk failed: {output[-500:]}")
    parsed = parse_wrk(output)
    good_rps = parsed["rps"] * (1 - parsed["failures"] / max(parsed["requests"], 1))
    return Measurement("wrk", good_rps, parsed["p50_ms"], parsed["p99_ms"], parsed["requests"],
                       parsed["failures"],
                       (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / seconds,
                       server.cpu_since_mark(seconds), nginx.cpu_since_mark(seconds) if nginx else None,
                       server.rss_mb())
