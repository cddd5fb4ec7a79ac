"""What a stack started with MONITORING=1 must show, whatever its mode: every instance's /metrics, Prometheus
scraping all of them and nginx's exporter, the recording rules, Server-Timing per hop, and the landing page live
in a real browser (Debian's Chromium)."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests
from prometheus_client.parser import text_string_to_metric_families
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from deploy.monitoring import SCRAPE_INTERVAL_S, rules
from deploy.render import PROMETHEUS_API
from stack.topology import HTTP_SERVICES, PROMETHEUS_PREFIX
from tests.e2e.browser import chromium

SCRAPED_WITHIN_S = 30


def prometheus(stack, endpoint: str, **params) -> dict:
    """One call of Prometheus's API through nginx, as the landing page makes it."""
    response = requests.get(stack.url(PROMETHEUS_API + endpoint), params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def eventually(check, timeout: float = SCRAPED_WITHIN_S, every: float = 0.5):
    """check() until it returns something true (its value), or fail with its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"not within {timeout} s: {value!r}"
            return value
        time.sleep(every)


def families(text: str) -> dict[str, list]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


class MonitoringContract:
    """Mixed into a Test class whose `stack` fixture runs with MONITORING=1."""

    def test_every_instance_serves_metrics_on_its_own_port_and_nginx_never_proxies_them(self, stack):
        for service in HTTP_SERVICES:
            addresses = stack.addresses_of(service.name)
            assert len(addresses) == stack.site.scaled(service).instances
            for address in addresses:
                requests.get(f"http://{address}:{service.port}{service.prefix}json", timeout=5)
                scraped = requests.get(f"http://{address}:{service.port}/metrics", timeout=5)
                assert scraped.status_code == 200 and scraped.headers["Content-Type"].startswith("text/plain")
                found = families(scraped.text)
                assert {"http_request_duration_seconds", "http_requests_in_flight", "stack_service_info",
                        "event_loop_lag_seconds"} <= set(found), (service.name, sorted(found))
                infos = [sample.labels for sample in found["stack_service_info"]]
                assert len(infos) == 1, (service.name, address, infos)
                (info,) = infos
                assert info["service"] == service.name and info["framework"] == service.framework
                routes = {s.labels["route"] for s in found["http_request_duration_seconds"]}
                assert f"{service.prefix}json" in routes
            assert requests.get(stack.url(f"{service.prefix}metrics"), timeout=5).status_code == 404
        web_port = next(s.port for s in HTTP_SERVICES if s.name == "web")
        web = families(requests.get(f"http://{stack.addresses_of('web')[0]}:{web_port}/metrics", timeout=5).text)
        (workers,) = web["gunicorn_workers"]  # multiprocess mode: one live-sum over the master's workers
        assert workers.labels["worker_class"] == "gevent" and workers.value >= 1
        assert requests.get(stack.url("/metrics"), timeout=5).status_code == 404

    def test_prometheus_scrapes_every_instance_and_nginxs_exporter(self, stack):
        expected = {s.name: stack.site.scaled(s).instances for s in HTTP_SERVICES} | {"nginx": 1, "prometheus": 1}

        def all_up():
            targets = prometheus(stack, "targets")["activeTargets"]
            up: dict[str, int] = {}
            for target in targets:
                if target["health"] == "up":
                    up[target["labels"]["job"]] = up.get(target["labels"]["job"], 0) + 1
            return up == expected and len(targets) == sum(expected.values())

        eventually(all_up)
        # nginx's own counters arrived through the exporter.
        edge = prometheus(stack, "query", query="nginx_connections_accepted")["result"]
        assert edge and float(edge[0]["value"][1]) > 0

    def test_recording_rules_give_rate_errors_and_p99_per_service(self, stack):
        recorded = {rule["record"] for group in rules()["groups"] for rule in group["rules"]}
        loaded = {rule["name"]: rule for group in prometheus(stack, "rules")["groups"] for rule in group["rules"]}
        assert recorded <= set(loaded) and all(loaded[name]["health"] == "ok" for name in recorded)
        with ThreadPoolExecutor(8) as pool:  # bounded: 2 x 12 requests that answer 503, 240 others between
            def errors() -> None:
                list(pool.map(lambda i: requests.get(stack.url("/httpbin/status/503"), timeout=10), range(12)))

            # A counter's first sample is its start, not an increase: errors before and after a scrape.
            errors()
            started = time.monotonic()
            list(pool.map(lambda i: requests.get(stack.url(HTTP_SERVICES[i % 3].prefix + "json"), timeout=10),
                          range(240)))
            time.sleep(max(0.0, SCRAPE_INTERVAL_S + 0.5 - (time.monotonic() - started)))
            errors()

        def per_service(record: str) -> dict[str, float]:
            result = prometheus(stack, "query", query=record)["result"]
            return {sample["metric"]["job"]: float(sample["value"][1]) for sample in result}

        rates = eventually(lambda: (r := per_service("job:http_requests:rate30s")) and
                           all(r.get(s.name, 0) > 0 for s in HTTP_SERVICES) and r)
        assert set(rates) >= {s.name for s in HTTP_SERVICES}
        p99 = eventually(lambda: (p := per_service("job:http_request_duration_seconds:p99_30s")) and
                         all(0 < p.get(s.name, 0) < 10 for s in HTTP_SERVICES) and p)
        assert all(value < 10 for value in p99.values())
        errors = eventually(lambda: per_service("job:http_request_errors:rate30s").get("httpbin", 0) > 0)
        assert errors
        assert eventually(lambda: per_service("job:nginx_http_requests:rate30s").get("nginx", 0) > 0)

    def test_prometheus_through_nginx_is_its_read_only_query_api(self, stack):
        assert requests.post(stack.url(PROMETHEUS_API + "query"), data={"query": "up"}, timeout=5).status_code == 403
        assert requests.get(stack.url(f"{PROMETHEUS_PREFIX}/graph"), timeout=5).status_code == 404
        assert requests.get(stack.url(PROMETHEUS_API + "admin/tsdb/snapshot"), timeout=5).status_code in (404, 405)

    def test_server_timing_names_every_hop(self, stack):
        response = requests.get(stack.url("/catalog/items"), params={"limit": 2}, timeout=5)
        entries = dict(re.findall(r"(\w+);(?:desc=\"[^\"]*\";)?dur=([\d.]+)", response.headers["Server-Timing"]))
        assert set(entries) == {"app", "db", "edge", "upstream"}, response.headers["Server-Timing"]
        assert float(entries["db"]) <= float(entries["app"])
        # nginx's time holds the service's; each is read to the millisecond from its own clock (wall, monotonic)
        assert float(entries["edge"]) + 1 >= float(entries["upstream"])
        plain = requests.get(stack.url("/"), timeout=5).headers.get("Server-Timing", "")
        assert "edge;" in plain and "upstream" not in plain and "app;" not in plain  # a static file: nginx alone

    def test_the_landing_page_shows_the_stack_live_in_chromium(self, stack):
        with chromium() as browser:
            browser.get(stack.url("/"))
            wait = WebDriverWait(browser, SCRAPED_WITHIN_S, poll_frequency=0.25)
            for service in HTTP_SERVICES:  # what a person sees: each service listed healthy, its instances up
                row = f"#service-{service.name}"
                wait.until(lambda b, row=row: b.find_element(By.CSS_SELECTOR, f"{row} .health").text == "healthy")
                instances = stack.site.scaled(service).instances
                wait.until(lambda b, row=row, n=instances: b.find_element(By.CSS_SELECTOR, f"{row} .up").text
                           == f"{n} of {n}")
            assert browser.find_element(By.ID, "monitoring-note").text.startswith("Numbers from Prometheus")

            def shown_rate() -> float:
                text = browser.find_element(By.CSS_SELECTOR, "#service-httpbin .rate").text
                return float(text) if re.fullmatch(r"\d+\.\d", text) else -1.0

            before = wait.until(lambda b: shown_rate() >= 0 and shown_rate() + 0.0001)
            with ThreadPoolExecutor(8) as pool:  # bounded load: 600 requests, a few seconds
                list(pool.map(lambda i: requests.get(stack.url("/httpbin/json"), timeout=10), range(600)))
            wait.until(lambda b: shown_rate() >= before + 5)  # 600 requests in a 30 s window: ~20 more per second
            p99 = browser.find_element(By.CSS_SELECTOR, "#service-httpbin .p99").text
            assert re.fullmatch(r"\d+\.\d", p99), p99

            browser.find_element(By.ID, "follow-path").clear()
            browser.find_element(By.ID, "follow-path").send_keys("/catalog/items?limit=2")
            browser.find_element(By.ID, "follow-send").click()
            wait.until(lambda b: "request id page-" in b.find_element(By.ID, "follow-id").text)
            hops = {row.find_elements(By.TAG_NAME, "td")[1].text: row.find_elements(By.TAG_NAME, "td")[2].text
                    for row in browser.find_elements(By.CSS_SELECTOR, "#follow tr.hop")}
            for what in ("edge: request in → response head out", "waiting for the service's head",
                         "the app's own time", "the database, inside the app's time", "request sent → first byte"):
                assert re.fullmatch(r"\d+\.\d{3}", hops[what]), (what, hops)
            said = browser.find_element(By.ID, "follow-id").text
            sent = re.search(r"\(sent (page-[0-9a-f]{32})\)", said).group(1)
            assert f"request id {sent} " in said  # nginx and the service kept the page's id
            assert eventually(lambda: sent in stack.logs("nginx"), timeout=10)

            # A request id the reader chose, and the waterfall as drawn: each bar where a person sees it.
            chosen = "my-trace-" + uuid.uuid4().hex[:8]
            browser.find_element(By.ID, "follow-rid").send_keys(chosen)
            browser.find_element(By.ID, "follow-send").click()
            wait.until(lambda b: f"request id {chosen} (sent {chosen})" in b.find_element(By.ID, "follow-id").text)
            bars = {row.find_elements(By.TAG_NAME, "td")[1].text: row.find_element(By.CSS_SELECTOR, ".bar").rect
                    for row in browser.find_elements(By.CSS_SELECTOR, "#follow tr.hop")}

            def inside(inner: str, outer: str) -> bool:  # on screen, within a pixel
                a, b = bars[inner], bars[outer]
                return a["x"] >= b["x"] - 1 and a["x"] + a["width"] <= b["x"] + b["width"] + 1

            waiting, edge = bars["request sent → first byte"], bars["edge: request in → response head out"]
            assert waiting["width"] > 1 and edge["width"] > 1, bars
            assert inside("edge: request in → response head out", "request sent → first byte"), bars
            assert inside("waiting for the service's head", "edge: request in → response head out"), bars
            assert inside("the app's own time", "waiting for the service's head"), bars
            assert inside("the database, inside the app's time", "the app's own time"), bars
            after = bars["first byte → last byte"]
            assert abs(after["x"] - (waiting["x"] + waiting["width"])) <= 1, bars  # the body follows the first byte
            assert eventually(lambda: f"rid={chosen} " in stack.logs("nginx"), timeout=10)

    def test_the_landing_page_comes_over_http2_in_chromium(self, stack):
        """The HTTPS port in a browser. The stack's CA is in no browser's store here, so Chromium is told to accept
        exactly nginx's key (its SPKI hash) and nothing else; it negotiates h2 by ALPN."""
        with chromium(trusting=stack.site.tls.certificate) as browser:
            browser.get(stack.site.tls_base_url + "/")
            protocol = browser.execute_script("return performance.getEntriesByType('navigation')[0].nextHopProtocol")
            assert protocol == "h2"
            WebDriverWait(browser, SCRAPED_WITHIN_S).until(
                lambda b: b.find_element(By.CSS_SELECTOR, "#service-web .health").text == "healthy")
