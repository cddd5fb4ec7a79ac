"""The lab's view of the stack's own servers: which wait call each process really makes (strace), and C10k
through nginx (10,000 keep-alive client connections, each with a request in flight to one service).

    python -m iolab.stack [--connections 10000]     starts a native stack of its own, measures, stops it

`make iolab` (full) runs it; the stack it starts lives on its own loopback addresses and ports, so it never
touches one the user is running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import psutil
from rich.console import Console

from deploy import procs
from iolab.protocol import raise_fd_limit
from loadtest.compare.servers import free_port
from stack.topology import DNS, HTTP_SERVICES, ROOT, STREAM_SERVICES, Service, Site

# The calls a process blocks in: readiness waits, io_uring, and the other ways to sleep (a thread on a lock or
# the GIL: futex; a process waiting for signals: rt_sigsuspend/rt_sigtimedwait; a timer: clock_nanosleep).
WAIT_CALLS = ("select", "pselect6", "poll", "ppoll", "epoll_wait", "epoll_pwait", "epoll_pwait2", "io_uring_enter",
              "futex", "rt_sigsuspend", "rt_sigtimedwait", "clock_nanosleep")
STRACE = shutil.which("strace")
HOLD_MS = 6000  # how long each C10k request waits in the service: long enough to have all of them in flight
OPEN_PER_S = 4000  # clients arrive at this rate (10,000 in 2.5 s): C10k is about holding, not a SYN flood
# gunicorn's gevent worker takes 1,000 clients at once by default; five workers would cap C10k at 5,000.
C10K_ENV = {"WEB_WORKER_CONNECTIONS": "4000"}


def labelled_processes(var: Path) -> dict[int, tuple[str, str]]:
    """pid -> (label, what it is) for every process of the native stack whose state lives in `var`."""
    root = int((var / "run" / "supervisord.pid").read_text())
    # `python -m services.<name>` runs the HTTP services and DNS; the socket services name their module.
    modules = {**{f"services.{s.name}": s for s in (*HTTP_SERVICES, DNS)},
               **{s.module: s for s in STREAM_SERVICES if s.module}}
    found: dict[int, tuple[str, str]] = {}
    for pid in sorted(procs.descendants(root)):
        try:
            process = psutil.Process(pid)
            command = " ".join(process.cmdline())
            parent = " ".join(process.parent().cmdline())
        except psutil.Error:
            continue
        if command.startswith("nginx: "):
            found[pid] = (command.split(" process")[0], "nginx (C), one event loop per worker")
        elif "gunicorn" in command:
            role = "worker" if "gunicorn" in parent else "master"
            found[pid] = (f"web: gunicorn {role}", "gunicorn, gevent workers" if role == "worker" else
                          "gunicorn arbiter: watches its workers")
        elif match := re.search(r"-m (services[\w.]+)", command):
            service: Service | None = modules.get(match.group(1))
            if service:
                found[pid] = (service.name, service.server)
    return found


def blocked_in(pid: int, samples: int = 10) -> str:
    """Where each thread of an idle process sleeps in the kernel (/proc/PID/task/TID/wchan): do_epoll_wait,
    poll_schedule_timeout (poll/select), futex_do_wait (a lock, a queue, the GIL), sigsuspend... Sampled a few
    times 50 ms apart; each thread counts once, where it was found most often."""
    seen: dict[str, Counter[str]] = {}
    for _ in range(samples):
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                wchan = (task / "wchan").read_text().strip().split(".")[0]
            except OSError:
                continue
            seen.setdefault(task.name, Counter())[wchan if wchan not in ("", "0") else "running"] += 1
        time.sleep(0.05)
    where = Counter(counts.most_common(1)[0][0] for counts in seen.values())
    return ", ".join(f"{name} ×{count}" if count > 1 else name for name, count in where.most_common())


def traffic(urls: list[str], seconds: float) -> None:
    """GET each URL in turn for `seconds`: the servers must be doing work while they are traced."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for url in urls:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
        time.sleep(0.05)


def wait_calls(site: Site, seconds: float = 2.0) -> list[dict]:
    """strace -c every process of the stack while requests flow: which blocking calls each made, how often."""
    urls = [f"{site.base_url}{service.prefix}json" for service in HTTP_SERVICES]
    return traced(labelled_processes(site.var), partial(traffic, urls, seconds))


def traced(processes: dict[int, tuple[str, str]], load: Callable[[], None]) -> list[dict]:
    """Where each process sleeps while idle, then strace -c on each of them while `load()` runs."""
    if STRACE is None:
        raise RuntimeError("strace is not installed (Debian: apt-get install strace)")
    idle = {pid: blocked_in(pid) for pid in processes}  # before any traffic: where each one sleeps
    with tempfile.TemporaryDirectory(prefix="iolab-strace-") as tmp:
        tracers = {}
        for pid, (label, what) in processes.items():
            out = Path(tmp) / f"{pid}.txt"
            tracers[pid] = (label, what, out, subprocess.Popen(
                [STRACE, "-f", "-qq", "-c", "-o", str(out), "-e", "trace=" + ",".join(WAIT_CALLS), "-p", str(pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        time.sleep(0.5)  # attached
        load()
        rows = []
        for pid, (label, what, out, tracer) in tracers.items():
            tracer.send_signal(signal.SIGINT)  # detach: strace writes its summary
            try:
                _, err = tracer.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                tracer.kill()
                _, err = tracer.communicate()
            counts = parse_strace_summary(out.read_text() if out.exists() else "")
            if not counts and err:
                raise RuntimeError(f"strace {label}: {err.decode(errors='replace').strip()[-200:]}")
            rows.append({"process": label, "model": what, "idle_in": idle[pid],
                         "calls": ", ".join(f"{name} {count:,}" for name, count in counts.most_common())})
    return sorted(rows, key=lambda row: row["process"])


def gunicorn_worker_classes(seconds: float = 1.5) -> list[dict]:
    """The web app under gunicorn's sync and gthread workers (as `make compare` starts them): where their
    workers wait. The stack itself runs gevent workers, traced with the rest of the stack."""
    from loadtest.compare import matrix, servers

    rows = []
    for name, what in (("web-sync", "gunicorn sync: blocking, one request per process"),
                       ("web-gthread", "gunicorn gthread: a thread pool behind a selector")):
        with tempfile.TemporaryDirectory(prefix="iolab-gunicorn-") as data:
            running = servers.start(matrix.BY_NAME[name], Path(data))
            try:
                workers = {proc.pid: (f"{name}: gunicorn worker", what) for proc in running.tree()[1:]}
                rows += traced(workers, partial(traffic, [f"http://127.0.0.1:{running.port}/web/json"], seconds))
            finally:
                running.stop()
    return rows


def parse_strace_summary(text: str) -> Counter[str]:
    """strace -c's table: `% time  seconds  usecs/call  calls  [errors]  syscall` -> {syscall: calls}."""
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[-1] in WAIT_CALLS and fields[3].isdigit():
            counts[fields[-1]] += int(fields[3])
    return counts


def tree_rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


def established_to(pids: list[int], port: int) -> int:
    """Established TCP connections the processes hold on their listening port (from clients, i.e. nginx)."""
    count = 0
    for pid in pids:
        try:
            count += sum(1 for c in psutil.Process(pid).net_connections("tcp")
                         if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)
        except psutil.Error:
            continue
    return count


async def through_nginx(site: Site, service: Service, pids: list[int], nginx_pids: list[int], connections: int,
                        hold_ms: int = HOLD_MS) -> dict:
    """`connections` keep-alive clients, arriving OPEN_PER_S a second, each send GET <prefix>io?ms=hold_ms
    through nginx; while the requests wait in the service, count its connections and weigh its memory and
    nginx's."""
    loop = asyncio.get_running_loop()
    errors: Counter[str] = Counter()
    request = (f"GET {service.prefix}io?ms={hold_ms} HTTP/1.1\r\nHost: {site.public_host}\r\n"
               "User-Agent: iolab-c10k\r\n\r\n").encode()
    service_before, nginx_before = tree_rss_mb(pids), tree_rss_mb(nginx_pids)
    gate = asyncio.Semaphore(500)

    async def one(index: int) -> tuple[asyncio.StreamWriter | None, bool]:
        await asyncio.sleep(index / OPEN_PER_S)
        try:
            async with gate:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(site.public_host, site.public_port), 10)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), hold_ms / 1000 + 30)
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            ok = head.startswith(b"HTTP/1.1 200")
            if not ok:
                errors[head.split(b"\r\n")[0].decode(errors="replace")] += 1
            return writer, ok
        except (OSError, asyncio.IncompleteReadError, TimeoutError, AttributeError) as error:
            errors[type(error).__name__] += 1
            return None, False

    tasks = [loop.create_task(one(index)) for index in range(connections)]
    peak, service_peak, nginx_peak = 0, service_before, nginx_before
    while not all(task.done() for task in tasks):
        await asyncio.sleep(0.5)
        held = await asyncio.to_thread(established_to, pids, service.port)
        if held >= peak:
            peak = held
            service_peak, nginx_peak = tree_rss_mb(pids), tree_rss_mb(nginx_pids)
    results = [task.result() for task in tasks]
    nginx_idle = tree_rss_mb(nginx_pids)  # every client connection now idle, kept alive
    for writer, _ in results:
        if writer is not None:
            writer.transport.abort()
    ok = sum(1 for _, good in results if good)
    return {"service": service.name, "connections": connections, "ok": ok, "peak_upstream": peak,
            "service_rss_mb": [round(service_before, 1), round(service_peak, 1)],
            "service_kib_per_connection": round((service_peak - service_before) * 1024 / peak, 2) if peak else None,
            "nginx_rss_mb": [round(nginx_before, 1), round(nginx_peak, 1), round(nginx_idle, 1)],
            "nginx_kib_per_connection": round((nginx_peak - nginx_before) * 1024 / connections, 2),
            "errors": dict(errors)}


def fresh_nginx_workers(site: Site, old: list[int]) -> list[int]:
    """Reload nginx (SIGHUP to its master) and wait for new workers, so that each service's C10k run weighs
    nginx from its own baseline: a worker keeps the memory of its busiest moment."""
    master = next(pid for pid, (label, _) in labelled_processes(site.var).items() if label == "nginx: master")
    os.kill(master, signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = [pid for pid, (label, _) in labelled_processes(site.var).items() if label.startswith("nginx")]
        if not set(now) & set(old) - {master}:
            return now
    raise RuntimeError("nginx's old workers did not exit after a reload")


def c10k(site: Site, connections: int) -> list[dict]:
    nginx: list[int] = [pid for pid, (label, _) in labelled_processes(site.var).items() if label.startswith("nginx")]
    rows = []
    for service in HTTP_SERVICES:
        nginx = fresh_nginx_workers(site, nginx)
        labels = labelled_processes(site.var)
        pids = [pid for pid, (label, _) in labels.items() if label == service.name or label.startswith(
            f"{service.name}:")]
        rows.append(asyncio.run(through_nginx(site, service, pids, nginx, connections)))
        time.sleep(1)  # let the service close its side of the finished connections
    return rows


def own_stack_env(var: Path) -> tuple[Site, dict[str, str]]:
    """A native stack on 127.0.43.0/24 with its state in `var`: never the user's."""
    host = "127.0.43.1"
    env = {**os.environ, **C10K_ENV, "STACK_NET": "127.0.43", "STACK_HOST": host,
           "STACK_PORT": str(free_port(host)), "STACK_VAR": str(var), "MODE": "native"}
    return Site.from_env(env), env


def measure(console: Console | None = None, connections: int = 10_000) -> dict:
    """Start a native stack of its own, measure, stop it; a failure becomes {"error": ...}."""
    raise_fd_limit()
    var = Path(tempfile.mkdtemp(prefix="iolab-stack-"))
    site, env = own_stack_env(var)
    deploy = [sys.executable, "-m", "deploy"]
    result: dict = {}
    try:
        up = subprocess.run([*deploy, "up", "--mode", "native"], env=env, cwd=ROOT, capture_output=True, text=True)
        if up.returncode:
            return {"error": f"the stack did not start: {(up.stdout + up.stderr)[-400:]}"}
        try:
            result["syscalls"] = wait_calls(site) + gunicorn_worker_classes()
        except RuntimeError as error:
            result["syscalls_error"] = str(error)
        result["c10k"] = c10k(site, connections)
    except Exception as error:  # noqa: BLE001 - the lab's other figures stand without this section
        result["error"] = str(error)
    finally:
        subprocess.run([*deploy, "down"], env=env, cwd=ROOT, capture_output=True)
        shutil.rmtree(var, ignore_errors=True)
    if console and result.get("syscalls_error"):
        console.print(f"[yellow]{result['syscalls_error']}[/yellow]")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(measure(Console(), args.connections), indent=2))


if __name__ == "__main__":
    main()
