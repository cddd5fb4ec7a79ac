"""The comparison harness: matrix expansion, the I/O ceiling arithmetic, wrk parsing, report rendering."""

from __future__ import annotations

import json

import pytest

from loadtest.compare import matrix, report
from loadtest.compare.wrk import parse_wrk
from loadtest.stepping import steps


def test_full_matrix_covers_every_configuration_workload_and_route():
    cells = matrix.expand()
    keys = {cell.key for cell in cells}
    assert len(keys) == len(cells)  # no duplicates
    for config in matrix.CONFIGS:
        for workload in config.endpoints:
            routes = ("direct",) if config.kind == "nginx-static" else ("direct", "nginx")
            for route in routes:
                assert f"{config.name}/{workload}/{route}" in keys
    assert {cell.workload.name for cell in cells} == {"plaintext", "json", "io", "cpu"}
    assert not any(cell.config.family == "reference" and cell.workload.name in ("io", "cpu") for cell in cells)


def test_cells_are_grouped_by_configuration_so_each_server_starts_once():
    names = [cell.config.name for cell in matrix.expand()]
    seen_groups = [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]
    assert len(seen_groups) == len(set(seen_groups))


def test_quick_matrix_is_a_small_subset():
    quick = matrix.expand(quick=True)
    assert {c.config.name for c in quick} == set(matrix.QUICK_CONFIGS)
    assert {c.workload.name for c in quick} == set(matrix.QUICK_WORKLOADS)
    assert len(quick) < len(matrix.expand()) / 3


def test_the_matrix_narrows_to_named_configurations_and_workloads():
    configs, workloads = ("httpbin-aiohttp", "bare-aiohttp"), ("plaintext", "json")
    cells = matrix.expand(only_configs=configs, only_workloads=workloads)
    assert {cell.key for cell in cells} == {f"{config}/{workload}/{route}" for config in configs
                                            for workload in workloads for route in ("direct", "nginx")}
    with pytest.raises(ValueError, match="httpbin-aiohtp"):
        matrix.expand(only_configs=["httpbin-aiohtp"])  # a typo is named, not silently an empty run


@pytest.mark.parametrize(
    ("config", "users", "expected"),
    [("web-gthread", 200, 320.0), ("web-gevent", 200, 4000.0), ("catalog-tornado", 200, 4000.0),
     ("httpbin-aiohttp", 10, 200.0)],
)
def test_io_ceiling_is_slots_over_wait(config, users, expected):
    assert matrix.io_ceiling(matrix.BY_NAME[config], users) == expected


def test_sync_ceiling_is_its_worker_count_over_the_wait():
    sync = matrix.BY_NAME["web-sync"]
    assert matrix.io_ceiling(sync, 200) == sync.slots / 0.05
    assert matrix.io_ceiling(matrix.Config("x", "web", "x", "/x", "k", slots=5), 200) == 100.0


WRK_OUTPUT = """Running 4s test @ http://127.0.0.1:8080/catalog/json
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    15.42ms    3.10ms  48.20ms   80.00%
    Req/Sec     2.09k   120.00     2.40k    70.00%
  Latency Distribution
     50%   14.80ms
     75%   16.90ms
     90%   19.00ms
     99%   850.00us
  16720 requests in 4.00s, 3.20MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   4178.50
Transfer/sec:    819.00KB
"""


def test_parse_wrk():
    parsed = parse_wrk(WRK_OUTPUT)
    assert parsed == {"rps": 4178.5, "p50_ms": 14.8, "p99_ms": 0.85, "requests": 16720, "failures": 7}


def test_step_shape_counts():
    assert steps(10, 10, 50) == [10, 20, 30, 40, 50]
    assert steps(10, 40, 100) == [10, 50, 90, 100]


def fixture_results() -> dict:
    def run(rps, driver=0.5):
        return {"driver": "locust", "rps": rps, "p50_ms": 5.0, "p99_ms": 20.0, "requests": int(rps * 4),
                "failures": 0, "driver_cpu": driver, "server_cpu": 1.2, "nginx_cpu": None, "server_rss_mb": 80.0}

    cells = [
        # io first: a configuration's io row must take the ceiling from its io cell, not its last one
        {"config": "web-gevent", "label": "Flask, gunicorn gevent x2", "family": "web", "workload": "io",
         "route": "direct", "users": 200, "path": "/web/io?ms=50", "ceiling_rps": 4000.0,
         "runs": [run(3400, 0.95)], "wrk": None},
        {"config": "web-gevent", "label": "Flask, gunicorn gevent x2", "family": "web", "workload": "json",
         "route": "direct", "users": 64, "path": "/web/json", "ceiling_rps": None,
         "runs": [run(900), run(1000), run(1100)], "wrk": {**run(3000), "driver": "wrk"}},
        {"config": "web-gevent", "label": "Flask, gunicorn gevent x2", "family": "web", "workload": "json",
         "route": "nginx", "users": 64, "path": "/web/json", "ceiling_rps": None,
         "runs": [run(800)], "wrk": {**run(2400), "driver": "wrk", "nginx_cpu": 0.3}},
        {"config": "bare-flask", "label": "bare Flask, gunicorn gevent x2", "family": "reference",
         "workload": "json", "route": "direct", "users": 64, "path": "/bare/json", "ceiling_rps": None,
         "runs": [run(1250)], "wrk": {**run(4000), "driver": "wrk"}},
        {"config": "web-gevent-nometrics", "label": "Flask, gunicorn gevent x2, metrics off", "family": "web",
         "workload": "json", "route": "direct", "users": 64, "path": "/web/json", "ceiling_rps": None,
         "runs": [run(1020)], "wrk": {**run(3100), "driver": "wrk"}},
        *({"config": name, "label": label, "family": "web", "workload": "json", "route": "nginx", "users": 64,
           "path": "/web/json", "ceiling_rps": None, "runs": [run(rps)], "wrk": None}
          for name, label, rps in (("web-uwsgi-gevent", "Flask, uWSGI gevent x2, uwsgi_pass", 1500),
                                   ("web-uwsgi-http-gevent", "Flask, uWSGI gevent x2, HTTP socket", 1200))),
    ]
    return {"started": "2026-11-27T12:00:00", "command": "make compare", "versions": {"locust": "2.47.0"},
            "machine": {"cores": 2, "cpu_model": "test", "loadavg_start": [0.1, 0, 0], "loadavg_end": [1.0, 0, 0]},
            "settings": {"warmup_s": 1, "measure_s": 4, "repetitions": 3, "wrk": True, "wrk_connections": 64,
                         "workloads": ["json", "io"]}, "cells": cells}


def test_report_renders_medians_ceilings_and_charts(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(fixture_results()))
    text = report.render(results).read_text()
    assert "| Flask, gunicorn gevent x2 | direct | 1,000 | 3,000 |" in text  # the median of 900/1000/1100
    assert "| 4,000 | 85% / – |" in text  # io: ceiling and the achieved fraction (Locust / wrk)
    # Against the targets: ours ÷ bare (1000/1250 Locust, 3000/4000 wrk; wrk decides), nginx ÷ direct with the
    # CPU split of the wrk run (a two-process server: no verdict), io ÷ ceiling (Locust only: 85% meets 85%).
    assert "| json | 80% | 75% | 90% | ✗ |" in text  # web's target: 90% of bare Flask on the same server
    # What the metrics cost: 1000/1020 Locust, 3000/3100 wrk (97%: within the 5% the target allows).
    assert ("| Flask, gunicorn gevent x2 ÷ Flask, gunicorn gevent x2, metrics off | json | 98% | 97% | 95% | ✓ |"
            in text)
    # CPU per request: 1.2 cores at 900, 1000 and 1100 req/s is 1333, 1200 and 1091 µs; the median is quoted.
    assert "| Flask, gunicorn gevent x2 | direct | 1,000 | 3,000 | 5.0 | 20.0 | 0 | 1.20 | 1,200 |" in text
    # The verdict: the faster web configuration on json by wrk (3,100 against 3,000), with both CPU costs.
    assert ("| json | Flask, gunicorn gevent x2, metrics off | 3,100 | Flask, gunicorn gevent x2 | 3% | 1,176 / 1,200 "
            "| 80 |") in text
    assert "uwsgi_pass ÷ proxy_pass: 125%." in text  # 1500 / 1200 req/s through nginx
    assert "| Flask, gunicorn gevent x2 | 2 | 80% | 80% | 1.20 / 0.30 / 0.50 | CPU split |" in text
    assert "| Flask, gunicorn gevent x2 | 4,000 | 85% | – | ✓ |" in text
    assert "3,400 ⚠" in text  # the driver was saturated
    for chart in ("throughput.png", "latency-cpu-rss.png", "cpu-per-request.png"):
        assert (tmp_path / chart).stat().st_size > 10_000
        assert f"]({chart})" in text


def test_the_instruction_counts_client_spreads_its_requests_over_concurrent_keep_alive_connections():
    import http.server
    import threading

    from loadtest.compare import instructions

    seen: list[tuple[int, str]] = []  # (client port, path) per request

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def do_GET(self):  # noqa: N802 - http.server's naming
            seen.append((self.client_address[1], self.path))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        instructions.send(server.server_address[1], "/httpbin/json", 10, connections=3)
    finally:
        server.shutdown()
        server.server_close()
    per_connection = sorted(sum(1 for port, _ in seen if port == client) for client in {port for port, _ in seen})
    assert per_connection == [3, 3, 4] and {path for _, path in seen} == {"/httpbin/json"}


def test_the_scaling_report_tabulates_every_size_with_its_cpu_split_and_charts_it(tmp_path):
    from loadtest import scaling

    cells = [{"service": name, "instances": n, "rps": 1000.0 * n, "p50_ms": 1.0, "p99_ms": 5.0 / n, "failures": 0,
              "service_cores": 0.5 * n, "nginx_cores": 0.3, "wrk_cores": 0.9, "service_us_per_request": 500.0,
              "nginx_us_per_request": 300.0 / n} for name in ("web", "catalog") for n in (1, 2)]
    results = {"endpoint": "json", "seconds": 10, "instances": [1, 2], "cells": cells,
               "command": "make scaling", "machine": {"cores": 2, "cpu_model": "test"}}
    text = scaling.render(results, tmp_path).read_text()
    assert "| web | 2 | 2,000 | 2.5 | 1.00 | 0.30 | 0.90 | 500 | 150 | 0 |" in text
    assert (tmp_path / "scaling.png").stat().st_size > 1000


def test_the_spread_over_instances_counts_the_upstream_that_answered_each_request():
    from loadtest.__main__ import instance_spread

    log = "\n".join([
        '127.0.0.1 "GET /web/json HTTP/1.1" 200 27 rid=a rt=0.001 uct=0.000 uht=0.001 urt=0.001 '
        'ups=127.0.10.11:8001 conn=1/1 ua="x"',
        '127.0.0.1 "POST /web/orders HTTP/1.1" 201 80 rid=b rt=0.002 uct=0.000 uht=0.002 urt=0.002 '
        'ups=127.0.10.111:8001 conn=1/2 ua="x"',
        # refused by the first instance, answered by the second: counted for the second
        '127.0.0.1 "GET /catalog/items?limit=20 HTTP/1.1" 200 90 rid=c rt=0.003 uct=0.000, 0.000 uht=-, 0.003 '
        'urt=0.000, 0.003 ups=127.0.10.12:8002, 127.0.10.121:8002 conn=2/1 ua="x"',
        '127.0.0.1 "GET /healthz HTTP/1.1" 200 3 rid=d rt=0.000 uct=- uht=- urt=- ups=- conn=3/1 ua="x"',
        '127.0.0.1 "GET /httpbin/get HTTP/1.1" 429 100 rid=e rt=0.000 uct=- uht=- urt=- ups=- conn=4/1 ua="x"',
    ])
    assert instance_spread(log) == {"web": {"127.0.10.11:8001": 1, "127.0.10.111:8001": 1},
                                    "catalog": {"127.0.10.121:8002": 1}}
