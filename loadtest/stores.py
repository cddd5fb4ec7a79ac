"""SQLite against Postgres, through the whole native stack: what the shared store costs per request.

    python -m loadtest.stores [--seconds 10]
    make stores [SECONDS_PER_CELL=10]

A native stack of its own (127.0.44.x, a free port, the default two instances of each service) starts once per
store (`make up STORE=...`). On each, wrk (64 connections) drives through nginx:
  catalog read    GET /catalog/items/1            (Tornado, an async read by key)
  httpbin write   PUT /httpbin/bins/<64 names>    (aiohttp, a write transaction: the body alternates, so every
                                                   request really updates its row)
  web write       PUT /web/cart/items/<64 ids>    (Flask on gevent, one logged-in session, the same)
and the CPU each tier used is read from its processes (nginx, the service's instances, Postgres's server
processes). The writes are serialised per service on both stores (one writer at a time: services/common/db.py),
so their throughput is the single-writer ceiling, not Postgres's; reads are not.

Bounded: every wrk run has a fixed duration; loopback only; the stack is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import os
import string
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import requests

from loadtest.compare.servers import free_port
from loadtest.compare.wrk import CONNECTIONS, WRK
from loadtest.reporting import fmt, machine, markdown_table, report_dir
from loadtest.scaling import WARMUP_S, on_fresh_stacks, program_tree, wrk
from stack import credentials
from stack.topology import STORES, Site

NET = "127.0.44"
# Each request PUTs one of 64 keys with a body that alternates: every one is a real update, in a bounded table.
PUT_SCRIPT = string.Template("""
counter = 0
request = function()
  counter = counter + 1
  local body = string.format('{"$field": %d}', counter % 2 + 1)
  return wrk.format("PUT", string.format("$path", counter % 64 + 1), $headers, body)
end
""")


def stack_env(var: Path, port: int, store: str) -> dict[str, str]:
    return {**os.environ, "STACK_NET": NET, "STACK_HOST": f"{NET}.1", "STACK_PORT": str(port), "STACK_VAR": str(var),
            "STORE": store, "MODE": "native"}


def put_script(directory: Path, name: str, path_format: str, field: str, headers: dict[str, str]) -> Path:
    lua_headers = "{" + ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items()) + "}"
    script = directory / f"{name}.lua"
    script.write_text(PUT_SCRIPT.substitute(field=field, path=path_format, headers=lua_headers))
    return script


def prepare(site: Site, scripts: Path) -> dict[str, tuple[str, Path | None, str]]:
    """The workloads: name -> (URL, wrk script or None, the service whose processes do the work)."""
    base = site.base_url
    operator = {"Authorization": f"Bearer {credentials.read(credentials.OPERATOR, site.secrets)}"}
    item = requests.put(f"{base}/catalog/items/1", json={"name": "pen", "price": 150, "stock": 10**9},
                        headers=operator, timeout=10)
    assert item.status_code in (200, 201), item.text
    web = requests.Session()
    account = {"email": "bench@example.com", "password": "correct horse battery"}
    web.post(f"{base}/web/signup", json=account, timeout=10)
    assert web.post(f"{base}/web/login", json=account, timeout=10).status_code == 200
    cookie = "; ".join(f"{k}={v}" for k, v in web.cookies.get_dict().items())
    json_body = {"Content-Type": "application/json"}
    return {
        "catalog read": (f"{base}/catalog/items/1", None, "catalog"),
        "httpbin write": (f"{base}/httpbin/bins/bench-0",
                          put_script(scripts, "bins", "/httpbin/bins/bench-%d", "n", json_body), "httpbin"),
        "web write": (f"{base}/web/cart/items/1",
                      put_script(scripts, "cart", "/web/cart/items/%d", "quantity", {**json_body, "Cookie": cookie}),
                      "web"),
    }


def measure(site: Site, var: Path, store: str, seconds: float, scripts: Path) -> list[dict]:
    nginx = program_tree(var, "nginx")
    database = program_tree(var, "postgres") if store == "postgres" else None
    cells = []
    for workload, (url, script, service) in prepare(site, scripts).items():
        trees = [program_tree(var, name) for name in site.scaled(next(
            s for s in site.http_services if s.name == service)).instance_names()]
        wrk(url, WARMUP_S, script)
        for tree in (*trees, nginx, *([database] if database else [])):
            tree.mark()
        report, wrk_cores = wrk(url, seconds, script)
        good = report["rps"] * (1 - report["failures"] / max(report["requests"], 1))
        service_cores = sum(tree.cpu_since_mark(seconds) for tree in trees)
        database_cores = database.cpu_since_mark(seconds) if database else 0.0
        cell = {"store": store, "workload": workload, "rps": good, "p50_ms": report["p50_ms"],
                "p99_ms": report["p99_ms"], "failures": report["failures"], "service_cores": service_cores,
                "nginx_cores": nginx.cpu_since_mark(seconds), "database_cores": database_cores,
                "wrk_cores": wrk_cores,
                "service_us_per_request": 1e6 * service_cores / good if good else None,
                "database_us_per_request": 1e6 * database_cores / good if good and database else None}
        cells.append(cell)
        print(f"  {store:<8} {workload:<14} {good:>7,.0f} req/s  p99 {report['p99_ms']:.1f} ms  cores: service "
              f"{service_cores:.2f}  postgres {database_cores:.2f}  nginx {cell['nginx_cores']:.2f}  "
              f"failures {report['failures']}", flush=True)
    return cells


def render(results: dict, out: Path) -> Path:
    rows = [[c["store"], c["workload"], fmt(c["rps"]), fmt(c["p99_ms"], 1), fmt(c["service_cores"], 2),
             fmt(c["database_cores"], 2), fmt(c["nginx_cores"], 2), fmt(c["service_us_per_request"]),
             fmt(c["database_us_per_request"]), str(c["failures"])] for c in results["cells"]]
    lines = ["# SQLite against Postgres, through nginx", "",
             f"{results['command']} · {results['machine']['cores']} cores ({results['machine']['cpu_model']}) · "
             f"wrk, {CONNECTIONS} connections, {results['seconds']:g} s per cell", "",
             *markdown_table(["store", "workload", "req/s", "p99 ms", "service cores", "postgres cores",
                              "nginx cores", "service µs/req", "postgres µs/req", "failures"], rows), ""]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SECONDS_PER_CELL", "10")))
    args = parser.parse_args(argv)
    if WRK is None:
        print("stores needs wrk (Debian's package `wrk`)")
        return 2
    started = datetime.now()
    out = report_dir("stores", started)
    var = Path(tempfile.mkdtemp(prefix="stores-"))
    port = free_port(f"{NET}.1")
    results = {"started": started.isoformat(timespec="seconds"), "machine": machine(), "seconds": args.seconds,
               "cells": [], "command": f"make stores SECONDS_PER_CELL={args.seconds:g}"}
    def measure_one(store: str, site: Site) -> list[dict]:
        print(f"[stores] STORE={store}", flush=True)
        return measure(site, var, store, args.seconds, var)

    on_fresh_stacks(list(STORES), lambda store: stack_env(var, port, store), measure_one, results, out, var, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
