"""Prometheus's config and recording rules, rendered from the registry for each run mode (MONITORING=1).

    python -m deploy.monitoring --mode compose --out DIR   # the Prometheus image's build stage
    (native: deploy/render.py's render_native writes them under $STACK_VAR/run)

Prometheus scrapes every instance of every HTTP service at GET /metrics on its own port (services/common/
metrics.py), nginx through its exporter (stub_status as metrics), and itself; each job is named after its
service, so `job` is the service in every query. Natively the targets are the instances' loopback addresses;
in Compose, Docker's DNS answers every replica's address for the service's name, asked again every few seconds,
so a replica added by `make up SCALE=...` is scraped without a reload.

The recording rules are what the landing page and an operator ask for, evaluated as the data arrives:
    job:http_requests:rate30s                 requests per second, per service
    job:http_request_errors:rate30s           5xx answers per second, per service
    job:http_request_errors:ratio30s          their share of all answers
    job:http_request_duration_seconds:p99_30s the 99th percentile of the service's own time
    job:nginx_http_requests:rate30s           requests per second at the edge
Standard library only (JSON is YAML): the image's render stage runs it in a bare Python.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stack.topology import (
    HTTP_SERVICES,
    NGINX,
    NGINX_EXPORTER,
    NGINX_STATUS_PATH,
    NGINX_STATUS_PORT,
    PROMETHEUS,
    PROMETHEUS_PREFIX,
    Site,
)

# Every 2 s: the landing page shows rates that move with the load; 30 s windows hold 15 samples.
SCRAPE_INTERVAL_S = 2
WINDOW = "30s"
RULES_FILE = "rules.yml"
CONFIG_FILE = "prometheus.yml"
COMPOSE_CONFIG_DIR = "/etc/stack/prometheus"  # where the Prometheus image keeps both files
RETENTION = "2d"  # a teaching stack's history, not an archive


def rules() -> dict:
    by_job = "sum by (job)"
    count = "http_request_duration_seconds_count"
    return {"groups": [{"name": "stack", "interval": f"{SCRAPE_INTERVAL_S}s", "rules": [
        {"record": f"job:http_requests:rate{WINDOW}", "expr": f"{by_job} (rate({count}[{WINDOW}]))"},
        {"record": f"job:http_request_errors:rate{WINDOW}",
         "expr": f'{by_job} (rate({count}{{code=~"5.."}}[{WINDOW}]))'},
        {"record": f"job:http_request_errors:ratio{WINDOW}",
         "expr": f"job:http_request_errors:rate{WINDOW} / (job:http_requests:rate{WINDOW} > 0)"},
        {"record": f"job:http_request_duration_seconds:p99_{WINDOW}",
         "expr": f"histogram_quantile(0.99, sum by (job, le) (rate(http_request_duration_seconds_bucket[{WINDOW}])))"},
        {"record": f"job:nginx_http_requests:rate{WINDOW}",
         "expr": f"{by_job} (rate(nginx_http_requests_total[{WINDOW}]))"},
    ]}]}


def config(mode: str, site: Site | None = None, rules_path: str = RULES_FILE) -> dict:
    """prometheus.yml for `mode` (native: the site's loopback addresses; compose: Docker's DNS names)."""
    site = site or Site()
    if mode == "native":
        jobs = {s.name: {"static_configs": [{"targets": list(site.instances(s).values())}]} for s in site.http_services}
        exporter = f"{site.address(NGINX_EXPORTER)}:{NGINX_EXPORTER.port}"
        itself = f"{site.address(PROMETHEUS)}:{PROMETHEUS.port}"
    elif mode == "compose":
        jobs = {s.name: {"dns_sd_configs": [{"names": [s.name], "type": "A", "port": s.port,
                                             "refresh_interval": f"{SCRAPE_INTERVAL_S * 2}s"}]}
                for s in HTTP_SERVICES}
        exporter = f"{NGINX_EXPORTER.name}:{NGINX_EXPORTER.port}"
        itself = f"localhost:{PROMETHEUS.port}"
    else:
        raise ValueError(f"no Prometheus config for {mode!r}")
    jobs["nginx"] = {"static_configs": [{"targets": [exporter]}]}
    jobs["prometheus"] = {"metrics_path": f"{PROMETHEUS_PREFIX}/metrics", "static_configs": [{"targets": [itself]}]}
    return {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
                   "scrape_timeout": f"{SCRAPE_INTERVAL_S}s"},
        "rule_files": [rules_path],
        "scrape_configs": [{"job_name": name, **targets} for name, targets in jobs.items()],
    }


def nginx_status_url(host: str) -> str:
    """Where the exporter reads nginx's stub_status."""
    return f"http://{host}:{NGINX_STATUS_PORT}{NGINX_STATUS_PATH}"


def exporter_options(status_host: str, listen: str) -> list[str]:
    """The exporter's flags (one spelling for Debian's 0.11 and the official 1.x image: `--name=value`)."""
    return [f"--nginx.scrape-uri={nginx_status_url(status_host)}", f"--web.listen-address={listen}"]


def prometheus_options(config_file: str, data: str, listen: str) -> list[str]:
    """Every Prometheus path under PROMETHEUS_PREFIX, as nginx passes its query API on unchanged."""
    return [f"--config.file={config_file}", f"--storage.tsdb.path={data}", f"--web.listen-address={listen}",
            f"--web.external-url=http://{listen}{PROMETHEUS_PREFIX}/", f"--web.route-prefix={PROMETHEUS_PREFIX}",
            f"--storage.tsdb.retention.time={RETENTION}"]


def write(directory: Path, mode: str, site: Site | None = None, installed_in: str | None = None) -> Path:
    """prometheus.yml and rules.yml into `directory` (the config naming the rules in `installed_in`, where
    Prometheus will read them, if not there); the config's path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RULES_FILE).write_text(json.dumps(rules(), indent=2) + "\n")
    path = directory / CONFIG_FILE
    rules_path = f"{installed_in or directory}/{RULES_FILE}"
    path.write_text(json.dumps(config(mode, site, rules_path), indent=2) + "\n")
    return path


def native_programs(site: Site) -> dict[str, list[str]]:
    """supervisor's programs for MONITORING=1 natively: Debian's prometheus and prometheus-nginx-exporter."""
    run = site.var / "run" / "prometheus"
    return {
        PROMETHEUS.name: ["prometheus", *prometheus_options(str(run / CONFIG_FILE), str(site.var / "prometheus"),
                                                          f"{site.address(PROMETHEUS)}:{PROMETHEUS.port}")],
        NGINX_EXPORTER.name: ["prometheus-nginx-exporter",
                              *exporter_options(site.address(NGINX),
                                                f"{site.address(NGINX_EXPORTER)}:{NGINX_EXPORTER.port}")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["compose"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    write(args.out, args.mode, installed_in=COMPOSE_CONFIG_DIR)


if __name__ == "__main__":
    main()
