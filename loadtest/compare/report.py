"""Render results.json into report.md (tables) and PNG charts (matplotlib, no display needed)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from loadtest.compare.matrix import (
    BARE_OF,
    BY_NAME,
    METRICS_OFF_OF,
    TARGET_IO_OF_CEILING,
    TARGET_NGINX_OF_DIRECT,
    TARGET_OF_BARE,
    TARGET_OF_METRICS_OFF,
    UWSGI_PASS_VS_HTTP,
)
from loadtest.reporting import fmt as _fmt
from loadtest.reporting import pct as _pct
from loadtest.reporting import plt

SATURATED = 0.9  # driver cores: above this the figure measures the driver, not the server


def median_of(runs: list[dict], field: str) -> float | None:
    values = [run[field] for run in runs if run.get(field) is not None]
    return statistics.median(values) if values else None


def summarize(cell: dict) -> dict:
    """The medians of a cell's Locust repetitions, and its (median) wrk figure."""
    runs = cell["runs"]
    summary = {field: median_of(runs, field) for field in
               ("rps", "p50_ms", "p99_ms", "driver_cpu", "server_cpu", "nginx_cpu", "server_rss_mb")}
    # CPU cost per request: the server's CPU-seconds ÷ the requests it answered, per run, in µs. Throughput
    # ranks servers only while the driver leaves them the cores; this ranks them when it does not.
    summary["server_us_per_request"] = median_of(
        [{"us": run["server_cpu"] / run["rps"] * 1e6} for run in runs if run.get("rps") and run.get("server_cpu")],
        "us")
    summary["failures"] = sum(run["failures"] for run in runs)
    summary["wrk_rps"] = cell["wrk"]["rps"] if cell.get("wrk") else None
    summary["saturated"] = bool(summary["driver_cpu"] and summary["driver_cpu"] >= SATURATED)
    if cell.get("ceiling_rps"):
        summary["ceiling_fraction"] = (summary["rps"] or 0) / cell["ceiling_rps"]
        summary["wrk_ceiling_fraction"] = (summary["wrk_rps"] / cell["ceiling_rps"]
                                           if summary["wrk_rps"] is not None else None)
    return summary


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _verdict(wrk: float | None, locust: float | None, target: float) -> str:
    """✓ or ✗ from wrk when it ran, else from Locust."""
    value = wrk if wrk is not None else locust
    return "–" if value is None else ("✓" if value >= target else "✗")


def _ratio_table(cells: dict, labels: dict, pairs: dict[str, str], target_of: dict[str, float], title: str,
                 missing: str) -> list[str]:
    """`title`, then a table of each configuration ÷ its reference on plaintext and json, direct, where both
    ran (else one row saying `missing`); target_of: each configuration's target."""
    rows = []
    for ours, reference in pairs.items():
        for workload in ("plaintext", "json"):
            mine, ref = cells.get((ours, workload, "direct")), cells.get((reference, workload, "direct"))
            if not mine or not ref:
                continue
            locust, wrk = _ratio(mine["rps"], ref["rps"]), _ratio(mine["wrk_rps"], ref["wrk_rps"])
            rows.append(f"| {labels[ours]} ÷ {labels[reference]} | {workload} | {_pct(locust)} | {_pct(wrk)} | "
                        f"{_pct(target_of[ours])} | {_verdict(wrk, locust, target_of[ours])} |")
    return [title, "", "| service | workload | Locust | wrk | target | |", "|---|---|---|---|---|---|",
            *(rows or [f"| ({missing}) | | | | | |"])]


def _best_rps(cell: dict) -> float | None:
    """The cell's throughput: wrk's when it ran (the driver that measures the server, not itself), else Locust's."""
    return cell["wrk_rps"] if cell["wrk_rps"] is not None else cell["rps"]


def verdicts(cells: dict, labels: dict) -> list[str]:
    """Per workload, the fastest web configuration (any WSGI server, IO model) direct, by how much it beats the
    runner-up, its CPU per request and memory; then nginx's uwsgi_pass against HTTP to the same uWSGI."""
    lines = ["Which WSGI server wins, per workload (web's own app, direct; wrk's req/s where it ran).", "",
             "| workload | winner | req/s | runner-up | by | CPU µs/req (winner / runner-up) | RSS MB |",
             "|---|---|---|---|---|---|---|"]
    workloads = dict.fromkeys(workload for (_, workload, _) in cells)
    for workload in workloads:
        ranked = sorted(((_best_rps(cell), name) for (name, w, route), cell in cells.items()
                         if w == workload and route == "direct" and BY_NAME.get(name) and BY_NAME[name].family == "web"
                         and _best_rps(cell)), reverse=True)
        if len(ranked) < 2:
            continue
        (rps, winner), (second_rps, second) = ranked[0], ranked[1]
        first, runner = cells[(winner, workload, "direct")], cells[(second, workload, "direct")]
        lines.append(f"| {workload} | {labels[winner]} | {_fmt(rps)} | {labels[second]} | "
                     f"{_pct(rps / second_rps - 1)} | {_fmt(first['server_us_per_request'])} / "
                     f"{_fmt(runner['server_us_per_request'])} | {_fmt(first['server_rss_mb'])} |")
    binary, http = UWSGI_PASS_VS_HTTP
    pair = [cells.get((name, workload, "nginx")) for name in (binary, http) for workload in ("json",)]
    if all(pair):
        via_uwsgi, via_http = pair
        lines += ["", "nginx to the same uWSGI (gevent x2), json, through nginx: the uwsgi protocol against HTTP.",
                  "", "| nginx speaks | req/s (Locust) | req/s (wrk) | nginx CPU | server CPU µs/req |",
                  "|---|---|---|---|---|",
                  *(f"| {name} | {_fmt(cell['rps'])} | {_fmt(cell['wrk_rps'])} | {_fmt(cell['nginx_cpu'], 2)} | "
                    f"{_fmt(cell['server_us_per_request'])} |"
                    for name, cell in (("uwsgi_pass", via_uwsgi), ("proxy_pass (HTTP socket)", via_http))),
                  "", f"uwsgi_pass ÷ proxy_pass: {_pct(_ratio(_best_rps(via_uwsgi), _best_rps(via_http)))}."]
    return lines


def targets(results: dict) -> str:
    """The performance targets, each computed from this run: ours ÷ bare, nginx ÷ direct, io ÷ ceiling.
    Verdicts use wrk when it ran (Locust on the same 2 cores often measures itself), else Locust."""
    raw = {(c["config"], c["workload"], c["route"]): c for c in results["cells"]}
    cells = {key: summarize(cell) for key, cell in raw.items()}
    labels = {c["config"]: c["label"] for c in results["cells"]}  # in run order
    lines = ["## Against the targets", ""]
    lines += _ratio_table(cells, labels, BARE_OF, {ours: TARGET_OF_BARE[BY_NAME[ours].family] for ours in BARE_OF},
                          "Our code's overhead: each service ÷ its bare framework app, same server and settings, "
                          "direct (web once per WSGI server).",
                          "no service and its bare app both ran: `make compare` without QUICK has them")
    lines += [""] + _ratio_table(
        cells, labels, METRICS_OFF_OF, dict.fromkeys(METRICS_OFF_OF, TARGET_OF_METRICS_OFF),
        f"What the metrics cost: each service ÷ itself with STACK_METRICS=0, direct (target ≥ "
        f"{TARGET_OF_METRICS_OFF:.0%}: at most {1 - TARGET_OF_METRICS_OFF:.0%} of throughput).",
        "no service ran both ways: CONFIGS=web-gevent,web-gevent-nometrics,... has them")
    lines += ["", f"Through nginx ÷ direct, json (target ≥ {TARGET_NGINX_OF_DIRECT:.0%} where one process leaves "
              "a core free; elsewhere the CPU split, in cores, of the wrk run through nginx says who used it).", "",
              "| configuration | processes | Locust | wrk | server / nginx / driver CPU | target |",
              "|---|---|---|---|---|---|"]
    for name, label in labels.items():
        direct, proxied = cells.get((name, "json", "direct")), cells.get((name, "json", "nginx"))
        if not direct or not proxied:
            continue
        locust, wrk = _ratio(proxied["rps"], direct["rps"]), _ratio(proxied["wrk_rps"], direct["wrk_rps"])
        wrk_run = raw[(name, "json", "nginx")]["wrk"]
        split = ("–" if not wrk_run else
                 f"{wrk_run['server_cpu']:.2f} / {wrk_run['nginx_cpu'] or 0:.2f} / {wrk_run['driver_cpu']:.2f}")
        processes = BY_NAME[name].processes if name in BY_NAME else 1
        verdict = _verdict(wrk, locust, TARGET_NGINX_OF_DIRECT) if processes == 1 else "CPU split"
        lines.append(f"| {label} | {processes} | {_pct(locust)} | {_pct(wrk)} | {split} | {verdict} |")
    lines += ["", "io?ms=50 at 200 users ÷ the theoretical ceiling, direct (target ≥ "
              f"{TARGET_IO_OF_CEILING['blocking']:.0%} for blocking workers, ≥ "
              f"{TARGET_IO_OF_CEILING['event loop']:.0%} for event loops).", "",
              "| configuration | ceiling req/s | Locust | wrk | target |", "|---|---|---|---|---|"]
    for name, label in labels.items():
        io = cells.get((name, "io", "direct"))
        if not io or "ceiling_fraction" not in io:
            continue
        model = "blocking" if name in BY_NAME and BY_NAME[name].slots is not None else "event loop"
        lines.append(f"| {label} | {_fmt(raw[(name, 'io', 'direct')]['ceiling_rps'])} | "
                     f"{_pct(io['ceiling_fraction'])} | {_pct(io['wrk_ceiling_fraction'])} | "
                     f"{_verdict(io['wrk_ceiling_fraction'], io['ceiling_fraction'], TARGET_IO_OF_CEILING[model])} |")
    lines += ["", *verdicts(cells, labels), ""]
    return "\n".join(lines)


def tables(results: dict) -> str:
    lines = []
    for workload in results["settings"]["workloads"]:
        cells = [c for c in results["cells"] if c["workload"] == workload]
        if not cells:
            continue
        users = cells[0]["users"]
        lines += [f"### {workload} ({users} users)", ""]
        header = ["configuration", "route", "Locust req/s", "wrk req/s", "p50 ms", "p99 ms", "failures",
                  "server CPU", "CPU µs/req", "nginx CPU", "driver CPU", "RSS MB"]
        if workload == "io":
            header[4:4] = ["ceiling req/s", "of ceiling (Locust / wrk)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for cell in cells:
            s = summarize(cell)
            row = [cell["label"], cell["route"], _fmt(s["rps"]) + (" ⚠" if s["saturated"] else ""),
                   _fmt(s["wrk_rps"]), _fmt(s["p50_ms"], 1), _fmt(s["p99_ms"], 1), str(s["failures"]),
                   _fmt(s["server_cpu"], 2), _fmt(s["server_us_per_request"]), _fmt(s["nginx_cpu"], 2),
                   _fmt(s["driver_cpu"], 2),
                   _fmt(s["server_rss_mb"])]
            if workload == "io":
                fractions = f"{_pct(s['ceiling_fraction'])} / {_pct(s['wrk_ceiling_fraction'])}"
                row[4:4] = [_fmt(cell["ceiling_rps"]), fractions]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def charts(results: dict, out: Path) -> list[Path]:
    written = []
    workloads = [w for w in results["settings"]["workloads"] if any(c["workload"] == w for c in results["cells"])]
    fig, axes = plt.subplots(len(workloads), 1, figsize=(11, 3.2 * len(workloads)), squeeze=False)
    for ax, workload in zip(axes[:, 0], workloads, strict=True):
        cells = [c for c in results["cells"] if c["workload"] == workload]
        labels = sorted({c["config"] for c in cells}, key=[c["config"] for c in cells].index)
        for offset, route in ((-0.2, "direct"), (0.2, "nginx")):
            values = [next((summarize(c)["rps"] for c in cells if c["config"] == name and c["route"] == route), 0)
                      for name in labels]
            ax.bar([i + offset for i in range(len(labels))], values, width=0.4, label=route)
        if workload == "io":
            ceilings = [next(c["ceiling_rps"] for c in cells if c["config"] == name) for name in labels]
            ax.scatter(range(len(labels)), ceilings, marker="_", s=400, color="black", label="ceiling", zorder=3)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("req/s (Locust)")
        ax.set_title(f"throughput: {workload}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "throughput.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    fig, (lat, res) = plt.subplots(1, 2, figsize=(12, 4))
    direct = [c for c in results["cells"] if c["route"] == "direct"]
    names = [f"{c['config']}\n{c['workload']}" for c in direct]
    sums = [summarize(c) for c in direct]
    xs = range(len(direct))
    lat.bar(xs, [s["p99_ms"] or 0 for s in sums], label="p99", color="tab:red")
    lat.bar(xs, [s["p50_ms"] or 0 for s in sums], label="p50", color="tab:blue")
    lat.set_yscale("log")
    lat.set_xticks(xs, names, rotation=90, fontsize=6)
    lat.set_ylabel("ms (log)")
    lat.set_title("latency, direct")
    lat.legend(fontsize=8)
    res.bar([x - 0.2 for x in xs], [s["server_cpu"] or 0 for s in sums], width=0.4, label="server CPU (cores)")
    res.bar([x + 0.2 for x in xs], [s["driver_cpu"] or 0 for s in sums], width=0.4, label="driver CPU (cores)")
    twin = res.twinx()
    twin.plot(list(xs), [s["server_rss_mb"] or 0 for s in sums], "k.", label="RSS MB")
    twin.set_ylabel("RSS MB")
    res.set_xticks(xs, names, rotation=90, fontsize=6)
    res.set_title("CPU and memory, direct")
    res.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    written.append(out / "latency-cpu-rss.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)

    # CPU per request, direct: the server's CPU-seconds per answered request, one bar group per workload.
    fig, ax = plt.subplots(figsize=(12, 4))
    configs = list(dict.fromkeys(c["config"] for c in direct))
    width = 0.8 / max(len(workloads), 1)
    for i, workload in enumerate(workloads):
        values = [next((summarize(c)["server_us_per_request"] or 0 for c in direct
                        if c["config"] == name and c["workload"] == workload), 0) for name in configs]
        ax.bar([x + (i - (len(workloads) - 1) / 2) * width for x in range(len(configs))], values, width=width,
               label=workload)
    ax.set_xticks(range(len(configs)), configs, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("server CPU µs per request")
    ax.set_title("CPU cost per request, direct (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out / "cpu-per-request.png")
    fig.savefig(written[-1], dpi=90)
    plt.close(fig)
    return written


def render(results_path: Path) -> Path:
    """Write report.md and the charts beside results.json; returns report.md's path."""
    results = json.loads(results_path.read_text())
    out = results_path.parent
    images = charts(results, out)
    machine, settings = results["machine"], results["settings"]
    wrk = (f"; wrk with {settings['wrk_connections']} connections (200 for io), {settings['repetitions']} × "
           f"{settings.get('wrk_s', settings['measure_s'])} s runs, the median" if settings["wrk"] else "")
    text = [
        f"# Comparison, {results['started']}",
        "",
        f"`{results['command']}` on {machine['cores']} cores ({machine['cpu_model']}), load average "
        f"{machine['loadavg_start'][0]:.2f} before and {machine['loadavg_end'][0]:.2f} after. Every cell: "
        f"{settings['warmup_s']} s warm-up, {settings['measure_s']} s measured, {settings['repetitions']} "
        f"repetition(s), the median quoted; Locust {results['versions'].get('locust')} FastHttpUser "
        f"in one process{wrk}.",
        "",
        "The driver shares the machine with the server: its CPU use is beside every figure, and ⚠ marks a "
        f"cell where Locust kept ≥ {SATURATED} core busy — there the number measures Locust, not the server "
        "(the wrk column is the better guide).",
        "",
        targets(results),
        "## Every cell",
        "",
        tables(results),
        *([f"Not measured: {', '.join(e['cell'] for e in results['errors'])} (see results.json)", ""]
          if results.get("errors") else []),
        *[f"![{image.stem}]({image.name})" for image in images],
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(text))
    return report
