"""What every benchmark report of the project shares (`make compare`, `make iolab`): where reports go, the
machine they were measured on, number formatting, Markdown tables, matplotlib without a display, and the
progress bar. Each harness writes results.json first and renders report.md and its charts from it."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # charts are files: no display needed
import matplotlib.pyplot as plt  # noqa: E402,F401 - re-exported for the harnesses' charts
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: E402

from stack.topology import ROOT  # noqa: E402

REPORTS = ROOT / "reports"
CORES = os.cpu_count() or 1


def report_dir(kind: str, started: datetime) -> Path:
    """reports/<kind>-<time>/, created."""
    out = REPORTS / f"{kind}-{started:%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def machine() -> dict:
    """Cores, CPU model, kernel and load: what a reader needs to weigh the figures."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cores": CORES, "cpu_model": model, "loadavg_start": list(os.getloadavg()),
            "platform": platform.platform()}


def finish(results: dict, out: Path) -> Path:
    """Stamp the end of a run and write results.json; returns its path."""
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["finished"] = datetime.now().isoformat(timespec="seconds")
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2))
    return path


def fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)
