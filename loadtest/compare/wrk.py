"""wrk, the C load generator (Debian package `wrk`): where it is and how to read its report."""

from __future__ import annotations

import re
import shutil

WRK = shutil.which("wrk")
CONNECTIONS = 64  # wrk's connections for every workload but io (which uses its users)


_LATENCY = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> dict:
    """Requests/sec, the 50th and 99th percentile (ms), requests and socket errors from `wrk --latency`."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    latency = {int(p): float(v) * _UNITS[u] for p, v, u in _LATENCY.findall(output)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    failures = (sum(int(n) for n in errors.groups()) if errors else 0) + (int(non_2xx.group(1)) if non_2xx else 0)
    return {"rps": rps, "p50_ms": latency.get(50, 0.0), "p99_ms": latency.get(99, 0.0), "requests": requests,
            "failures": failures}
