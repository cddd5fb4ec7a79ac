"""Render an iolab results.json into report.md and charts, with loadtest.reporting's shared machinery."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from iolab.servers import ASYNCHRONOUS, BLOCKING, MULTIPLEXING, NONBLOCKING, SIGNAL_DRIVEN
from loadtest.reporting import fmt, markdown_table, plt

C10K = 10_000
TARGET_KIB_PER_CONNECTION = 20
C10K_SERVERS = ("epoll-lt", "epoll-et", "selectors", "asyncio", "uvloop", "gevent", "io_uring")
FLAT = 2.0  # "stays flat": epoll's cost at 10,000 idle descriptors within 2x its cost at 100
GROWTH = 10.0  # select and poll: at least 10x from 100 descriptors to the most they can watch
MODELS = (BLOCKING, NONBLOCKING, MULTIPLEXING, SIGNAL_DRIVEN, ASYNCHRONOUS)


def _cells(results: dict, mix: str) -> list[dict]:
    return [c for c in results["cells"] if c["mix"] == mix]


def _find(results: dict, server: str, mix: str, connections: int, size: int = 1024) -> dict | None:
    return next((c for c in results["cells"] if c["server"] == server and c["mix"] == mix
                 and c["connections"] == connections and c["size"] == size), None)


def _served(cell: dict) -> str:
    if "skipped" in cell:
        return "not run"
    return f"{cell['served']:,}/{cell['connections']:,}"


def _failures(cell: dict) -> str:
    """The errors the driver met, shortest first: what a reader needs to see why a cell looks bad."""
    return "; ".join(f"{name} ×{count:,}" for name, count in sorted(cell.get("errors", {}).items(),
                                                                      key=lambda item: -item[1])[:2])


def _us(value: float | str | None) -> str:
    return fmt(value * 1e6, 1) + " µs" if isinstance(value, float) else "cannot: FD_SETSIZE" if value else "–"


def targets(results: dict) -> list[str]:
    lines = ["## Against the targets", ""]
    idle = results["settings"]["connections"]
    if C10K in idle:
        rows = []
        for name in C10K_SERVERS:
            cell = _find(results, name, "idle-heavy", C10K)
            if not cell:
                continue
            if "skipped" in cell:
                rows.append([name, "not run", "–", cell["skipped"]])
                continue
            kib = cell["kib_per_connection"]
            ok = cell["served"] == C10K and kib is not None and kib <= TARGET_KIB_PER_CONNECTION
            rows.append([name, _served(cell), fmt(kib, 1), "✓" if ok else "✗"])
        lines += [f"{C10K:,} concurrent connections held (each answered once), memory per connection ≤ "
                  f"{TARGET_KIB_PER_CONNECTION} KiB:", ""]
        lines += markdown_table(["server", "served", "KiB per connection", "target"], rows) + [""]
    else:
        lines += [f"(The {C10K:,}-connection cells run in the full `make iolab`, not in QUICK mode.)", ""]
    cost = results.get("waitcost", {})
    if cost:
        def growth(mechanism: str) -> tuple[float | None, str]:
            figures = {int(n): v for n, v in cost[mechanism].items() if isinstance(v, float)}
            if 100 not in figures or len(figures) < 2:
                return None, "–"
            top = max(figures)
            return figures[top] / figures[100], f"{top:,}"

        rows = []
        rules = (("epoll", f"≤ {FLAT:.0f}×"), ("poll", f"≥ {GROWTH:.0f}×"), ("select", f"≥ {GROWTH:.0f}×"))
        for mechanism, rule in rules:
            ratio, top = growth(mechanism)
            ok = ratio is not None and (ratio <= FLAT if mechanism == "epoll" else ratio >= GROWTH)
            stopped = [n for n, v in cost[mechanism].items() if not isinstance(v, float)]
            note = f"cannot watch {int(min(stopped, key=int)):,}: FD_SETSIZE is 1,024" if stopped else ""
            rows.append([mechanism, top, "–" if ratio is None else f"{ratio:,.1f}×", rule, "✓" if ok else "✗", note])
        lines += ["The cost of one wait call, from 100 idle descriptors to the most each can watch:", ""]
        lines += markdown_table(["call", "up to", "growth", "target", "", "note"], rows) + [""]
    return lines


def models(results: dict) -> list[str]:
    """The five IO models, each with its servers and one line of figures."""
    rows = []
    for model in MODELS:
        for server in [s for s in results["servers"] if s["model"] == model]:
            name = server["name"]
            if server["unavailable"]:
                rows.append([model, name, server["mechanism"], "–", "–", "–", f"not run: {server['unavailable']}"])
                continue
            busiest = max((c for c in results["cells"] if c["server"] == name and c["mix"] == "idle-heavy"
                           and "skipped" not in c), key=lambda c: c["connections"], default=None)
            active = _find(results, name, "active", 100) or _find(results, name, "sizes", 10)
            rows.append([model, name, server["mechanism"],
                         fmt(active["rps"]) if active and "rps" in active else "–",
                         fmt(busiest["p99_ms"], 2) if busiest else "–",
                         f"{_served(busiest)} ({fmt(busiest['kib_per_connection'], 1)} KiB each)" if busiest else "–",
                         _failures(busiest) if busiest else ""])
    header = ["IO model", "server", "how it waits", "req/s, 100 active (or 10) × 1 KiB",
              "p99 ms, most idle clients", "served, most idle clients", "what went wrong there"]
    return ["## The five IO models, measured", ""] + markdown_table(header, rows) + [""]


def grid(cells: list[dict], column: str, text: Callable[[dict], str]) -> list[list[str]]:
    """One row per server, one column per value of `column` (connections, size): each cell's text."""
    columns = sorted({c[column] for c in cells})
    rows = []
    for server in dict.fromkeys(c["server"] for c in cells):
        row = [server]
        for value in columns:
            cell = next((c for c in cells if c["server"] == server and c[column] == value), None)
            row.append("not run" if not cell or "skipped" in cell else text(cell))
        rows.append(row)
    return rows


def sweep(results: dict, mix: str, title: str) -> list[str]:
    cells = _cells(results, mix)
    if not cells:
        return []

    def text(cell: dict) -> str:
        return (f"{fmt(cell['rps'])} · {fmt(cell['p50_ms'], 2)}/{fmt(cell['p99_ms'], 1)} ms · {_served(cell)} · "
                f"{fmt(cell['kib_per_connection'], 1)} KiB · cpu {fmt(cell['server_cpu'], 2)}/"
                f"{fmt(cell['driver_cpu'], 2)}")

    counts = sorted({c["connections"] for c in cells})
    legend = ("Each cell: req/s · p50/p99 · clients served/connected · server memory per connection · CPU cores, "
              "server/driver (the driver at ~1.0 means it, not the server, was the limit).")
    return [f"### {title}", "", legend, ""] + \
        markdown_table(["server", *[f"{n:,} connections" for n in counts]], grid(cells, "connections", text)) + [""]


def sizes(results: dict) -> list[str]:
    cells = _cells(results, "sizes")
    if not cells:
        return []

    def text(cell: dict) -> str:
        mib = cell["rps"] * cell["size"] * 2 / 2**20  # echoed: the bytes cross twice
        return (f"{fmt(cell['rps'])} req/s · {fmt(mib)} MiB/s · p50/p99 {fmt(cell['p50_ms'], 2)}/"
                f"{fmt(cell['p99_ms'], 2)} ms · {_served(cell)}")

    size_list = sorted({c["size"] for c in cells})
    return [f"### Message sizes, {cells[0]['connections']} connections all active (as in uvloop's echo-server "
            "benchmark)", "", "Each cell: req/s · MiB/s both ways · p50/p99 · clients served/connected.", ""] + \
        markdown_table(["server", *[f"{size // 1024} KiB" for size in size_list]], grid(cells, "size", text)) + [""]


def waitcost_table(results: dict) -> list[str]:
    cost = results.get("waitcost")
    if not cost:
        return []
    counts = sorted({int(n) for figures in cost.values() for n in figures})
    rows = [[mechanism, *[_us(cost[mechanism].get(str(n))) for n in counts]] for mechanism in cost]
    return ["## select vs poll vs epoll: the cost of one wait call", "",
            "n idle UDP sockets watched for reading plus one ready socket, so every call returns at once "
            "(`python -m iolab.waitcost`).", ""] + \
        markdown_table(["call", *[f"{n:,} idle fds" for n in counts]], rows) + [""]


def stack_section(results: dict) -> list[str]:
    stack = results.get("stack")
    if not stack:
        return []
    lines = ["## The stack's own servers", ""]
    if stack.get("error"):
        return lines + [f"Not measured: {stack['error']}", ""]
    if stack.get("syscalls"):
        lines += ["Where each process of a running stack sleeps when idle (`/proc/PID/task/*/wchan`, one entry per "
                  "thread) and the blocking calls it makes while requests flow (`strace -f -c`, 2 s):", ""]
        lines += markdown_table(["process", "server", "idle in (kernel)", "blocking calls seen (count)"],
                                [[row["process"], row["model"], row.get("idle_in", "–"), row["calls"] or "–"]
                                 for row in stack["syscalls"]])
        lines.append("")
    if stack.get("c10k"):
        lines += [f"C10k through nginx: {C10K:,} keep-alive client connections to nginx, each with a request in "
                  "flight to the service, so the service holds as many connections at once:", ""]
        rows = [[row["service"], f"{row['ok']:,}/{row['connections']:,}", f"{row['peak_upstream']:,}",
                 fmt(row["service_kib_per_connection"], 1), fmt(row["nginx_kib_per_connection"], 1),
                 _failures(row)] for row in stack["c10k"]]
        lines += markdown_table(["service", "200s", "service's peak connections", "service KiB per connection",
                                 "nginx KiB per connection", "errors"], rows) + [""]
    return lines


def style(results: dict, server: str) -> dict:
    """One colour and marker per server, the same in every chart; a line style per IO model."""
    names = [s["name"] for s in results["servers"]]
    index = names.index(server) if server in names else 0
    model = next((s["model"] for s in results["servers"] if s["name"] == server), MULTIPLEXING)
    return {"color": plt.cm.tab20(index % 20), "marker": "os^vD<>ph*"[index % 10], "markersize": 4,
            "linestyle": {BLOCKING: ":", NONBLOCKING: "-.", SIGNAL_DRIVEN: "-.", ASYNCHRONOUS: "--"}.get(model, "-")}


def charts(results: dict, out: Path) -> list[Path]:
    written = []
    sweeps = [mix for mix in ("idle-heavy", "active") if _cells(results, mix)]
    if sweeps and len({c["connections"] for c in _cells(results, sweeps[0])}) > 1:
        fig, axes = plt.subplots(1, len(sweeps) + 1, figsize=(6 * (len(sweeps) + 1), 4.5), squeeze=False)
        for ax, mix in zip(axes[0], sweeps, strict=False):
            for server in dict.fromkeys(c["server"] for c in _cells(results, mix)):
                points = sorted((c["connections"], c["rps"]) for c in _cells(results, mix)
                                if c["server"] == server and "rps" in c)
                if points:
                    ax.plot(*zip(*points, strict=True), label=server, **style(results, server))
            ax.set_xscale("log")
            ax.set_xlabel("connections")
            ax.set_ylabel("req/s")
            ax.set_title(f"throughput, {mix} ({'1% active' if mix == 'idle-heavy' else 'all active'}), 1 KiB")
            ax.set_ylim(bottom=0)
        memory = axes[0][-1]
        for server in dict.fromkeys(c["server"] for c in _cells(results, "idle-heavy")):
            points = sorted((c["connections"], max(c["kib_per_connection"], 0.1)) for c in _cells(results, "idle-heavy")
                            if c["server"] == server and c.get("kib_per_connection") is not None)
            if points:
                memory.plot(*zip(*points, strict=True), label=server, **style(results, server))
        memory.axhline(TARGET_KIB_PER_CONNECTION, color="black", linestyle="--", label="target")
        memory.set_xscale("log")
        memory.set_yscale("log")
        memory.set_xlabel("connections")
        memory.set_ylabel("KiB per connection")
        memory.set_title("server memory per connection held")
        axes[0][0].legend(fontsize=7, ncol=2)
        fig.tight_layout()
        written.append(out / "connections.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    cost = results.get("waitcost")
    if cost:
        fig, ax = plt.subplots(figsize=(6, 4))
        for mechanism, figures in cost.items():
            points = sorted((int(n), v * 1e6) for n, v in figures.items() if isinstance(v, float))
            ax.plot(*zip(*points, strict=True), marker="o", label=mechanism)
        ax.axvline(1024, color="grey", linestyle=":", label="FD_SETSIZE")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("idle descriptors watched")
        ax.set_ylabel("µs per call (one ready)")
        ax.set_title("the cost of one wait call")
        ax.legend()
        fig.tight_layout()
        written.append(out / "waitcost.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    size_cells = _cells(results, "sizes")
    if size_cells:
        fig, ax = plt.subplots(figsize=(11, 4))
        servers = list(dict.fromkeys(c["server"] for c in size_cells))
        size_list = sorted({c["size"] for c in size_cells})
        width = 0.8 / len(size_list)
        for index, size in enumerate(size_list):
            values = [next((c["rps"] * size * 2 / 2**20 for c in size_cells
                            if c["server"] == s and c["size"] == size and "rps" in c), 0) for s in servers]
            ax.bar([i + index * width for i in range(len(servers))], values, width=width, label=f"{size // 1024} KiB")
        ax.set_xticks([i + width * (len(size_list) - 1) / 2 for i in range(len(servers))], servers, rotation=20,
                      ha="right", fontsize=8)
        ax.set_ylabel("MiB/s echoed (both ways)")
        ax.set_title(f"message sizes, {size_cells[0]['connections']} connections")
        ax.legend()
        fig.tight_layout()
        written.append(out / "sizes.png")
        fig.savefig(written[-1], dpi=90)
        plt.close(fig)
    return written


def notes(results: dict) -> list[str]:
    """What the servers said (select's limit, fork's cap, the busy loop's EAGAINs) and what was not run."""
    said: dict[str, list[str]] = {}
    for cell in results["cells"]:
        for message in cell.get("messages", []) + ([cell["skipped"]] if "skipped" in cell else []):
            said.setdefault(cell["server"], [])
            if message not in said[cell["server"]]:
                said[cell["server"]].append(message)
    if not said and not results.get("errors"):
        return []
    lines = ["## What the servers said, and what was not run", ""]
    for server, messages in said.items():
        lines += [f"- **{server}**: " + " / ".join(f"`{m}`" if not m.startswith(("not run", "cannot")) else m
                                                  for m in messages[-3:])]
    lines += [f"- **{e['cell']}** not measured: {e['error']}" for e in results.get("errors", [])]
    return lines + [""]


def render(results_path: Path) -> Path:
    results = json.loads(results_path.read_text())
    out = results_path.parent
    images = charts(results, out)
    machine, settings, versions = results["machine"], results["settings"], results["versions"]
    text = [
        f"# IO-models lab, {results['started']}",
        "",
        f"`{results['command']}` on {machine['cores']} cores ({machine['cpu_model']}), {machine['platform']}; "
        f"RLIMIT_NOFILE {machine['rlimit_nofile']:,}; load average {machine['loadavg_start'][0]:.2f} before, "
        f"{machine['loadavg_end'][0]:.2f} after. "
        + ", ".join(f"{name} {version}" for name, version in versions.items()) + ".",
        "",
        *([f"⚠ RLIMIT_NOFILE ({machine['rlimit_nofile']:,}) is below the largest cell's "
           f"{max(settings['connections'] + settings['active_connections']):,} connections: raise the hard limit "
           "(`ulimit -Hn`, or LimitNOFILE) for those cells to mean anything.", ""]
          if machine["rlimit_nofile"] < max(settings["connections"] + settings["active_connections"]) + 64 else []),
        f"Every cell starts a fresh server, connects, sends one line on every connection (served = answered "
        f"within {settings['timeout_s']} s), measures the server's memory, then runs the active clients in a "
        f"closed loop: {settings['warmup_s']} s warm-up, {settings['seconds']} s measured. The driver "
        "(`iolab/driver.py`, uvloop) shares the 2 cores with the server: its CPU is beside every figure.",
        "",
        *targets(results),
        *models(results),
        *waitcost_table(results),
        "## Every cell",
        "",
        *sweep(results, "idle-heavy", f"Idle-heavy: {settings['active_share']:.0%} of the connections active, 1 KiB"),
        *sweep(results, "active", "Active: every connection sends, 1 KiB"),
        *sizes(results),
        *stack_section(results),
        *notes(results),
        *[f"![{image.stem}]({image.name})" for image in images],
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(text))
    return path


if __name__ == "__main__":  # re-render a report from its results.json: python -m iolab.report PATH
    import sys

    print(render(Path(sys.argv[1])))
