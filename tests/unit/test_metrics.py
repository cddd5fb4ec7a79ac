"""Every service's /metrics (Prometheus text, read back with prometheus-client's own parser) and Server-Timing
header, in-process: Flask's test client, Tornado on a real server, aiohttp's test client. The registry is the
process's, so the tests compare counts before and after their own requests."""

from __future__ import annotations

import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.common import metrics
from services.httpbin.app import create_app as create_httpbin
from services.web.app import create_app as create_web
from tests.unit.test_catalog import OPERATOR, CatalogAppTest

SERVER_TIMING = re.compile(r"app;dur=(\d+\.\d{3})(?:, db;dur=(\d+\.\d{3}))?")


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def count(text: str, route: str, method: str = "GET", code: str = "200") -> float:
    key = ("http_request_duration_seconds_count", frozenset({"route": route, "method": method, "code": code}.items()))
    return samples(text).get(key, 0.0)


def assert_well_formed(text: str, service: str) -> None:
    found = samples(text)
    names = {name for name, _ in found}
    assert {"http_request_duration_seconds_bucket", "http_request_duration_seconds_sum", "http_requests_in_flight",
            "stack_service_info"} <= names
    # One process here runs all three apps, so all three name themselves.
    (info,) = [dict(labels) for name, labels in found
               if name == "stack_service_info" and dict(labels)["service"] == service]
    assert info["framework"] and info["server"]
    buckets = [float(dict(labels)["le"]) for name, labels in found if name == "http_request_duration_seconds_bucket"]
    assert max(buckets) == float("inf") and min(buckets) == metrics.BUCKETS[0]


def test_route_labels_are_templates_whatever_the_framework_writes():
    assert metrics.route_template("/catalog/items/([0-9]{1,16})") == "/catalog/items/{}"
    assert metrics.route_template("/web/orders/<int(min=1, max=9):order_id>") == "/web/orders/{order_id}"
    assert metrics.route_template("/httpbin/status/{codes}") == "/httpbin/status/{codes}"


# ------------------------------------------------------------------ web: Flask (multiprocess mode under gunicorn)

@pytest.fixture
def web(store_at):
    return create_web({"TESTING": True, "DATABASE": store_at("web")}).test_client()


def test_web_counts_each_request_by_route_template_method_and_code(web):
    before = web.get("/metrics").get_data(as_text=True)
    assert web.get("/web/json").status_code == 200
    assert web.get("/web/orders/12345").status_code == 401  # a template, not the id
    assert web.get("/web/no/such/" + "x" * 50).status_code == 404
    assert web.open("/web/json", method="BREW").status_code == 405
    after = web.get("/metrics")
    assert after.headers["Content-Type"].startswith("text/plain; version=")
    text = after.get_data(as_text=True)
    assert_well_formed(text, "web")
    assert count(text, "/web/json") == count(before, "/web/json") + 1
    assert count(text, "/web/orders/{order_id}", code="401") == count(before, "/web/orders/{order_id}", code="401") + 1
    assert count(text, metrics.UNMATCHED, code="404") >= 1
    assert count(text, metrics.UNMATCHED, method="other", code="405") >= 1
    assert "x" * 50 not in text and "BREW" not in text  # what a client typed never becomes a series


def test_web_metrics_live_outside_the_prefix_that_nginx_proxies(web):
    assert web.get("/web/metrics").status_code == 404


def test_web_server_timing_has_the_apps_time_and_the_databases_when_used(web):
    plain = web.get("/web/json").headers["Server-Timing"]
    app_ms, db_ms = SERVER_TIMING.fullmatch(plain).groups()
    assert float(app_ms) >= 0 and db_ms is None
    web.post("/web/signup", json={"email": "st@example.com", "password": "correct horse"})
    stored = web.post("/web/login", json={"email": "st@example.com", "password": "correct horse"})
    app_ms, db_ms = SERVER_TIMING.fullmatch(stored.headers["Server-Timing"]).groups()
    assert 0 < float(db_ms) <= float(app_ms)


# ------------------------------------------------------------------ catalog: Tornado

class CatalogMetricsTest(CatalogAppTest):
    def test_counts_server_timing_and_loop_lag_gauge(self):
        before = self.fetch("/metrics").body.decode()
        assert self.fetch("/catalog/json").code == 200
        assert self.fetch("/catalog/items/7").code == 404
        response = self.fetch("/catalog/items", method="POST", headers={**OPERATOR, "Content-Type": "application/json"},
                              body='{"name": "kettle", "price": 1999, "stock": 3}')
        assert response.code == 201
        app_ms, db_ms = SERVER_TIMING.fullmatch(response.headers["Server-Timing"]).groups()
        assert 0 < float(db_ms) <= float(app_ms)
        assert SERVER_TIMING.fullmatch(self.fetch("/catalog/json").headers["Server-Timing"]).group(2) is None
        scraped = self.fetch("/metrics")
        assert scraped.headers["Content-Type"].startswith("text/plain; version=")
        text = scraped.body.decode()
        assert_well_formed(text, "catalog")
        assert count(text, "/catalog/json") >= count(before, "/catalog/json") + 1
        assert count(text, "/catalog/items/{}", code="404") == count(before, "/catalog/items/{}", code="404") + 1
        assert count(text, "/catalog/items", "POST", "201") == count(before, "/catalog/items", "POST", "201") + 1
        assert "event_loop_lag_seconds" in {name for name, _ in samples(text)}
        assert self.fetch("/catalog/metrics").code == 404


# ------------------------------------------------------------------ httpbin: aiohttp

@pytest.fixture
async def httpbin(aiohttp_client, tmp_path):
    return await aiohttp_client(create_httpbin(str(tmp_path / "httpbin.sqlite3")))


async def test_httpbin_counts_server_timing_and_streams_too(httpbin):
    before = await (await httpbin.get("/metrics")).text()
    response = await httpbin.get("/httpbin/status/418")
    assert response.status == 418
    assert SERVER_TIMING.fullmatch(response.headers["Server-Timing"])
    streamed = await httpbin.get("/httpbin/stream/2")  # headers sent by the handler itself
    assert streamed.status == 200 and SERVER_TIMING.fullmatch(streamed.headers["Server-Timing"])
    await streamed.read()
    stored = await httpbin.put("/httpbin/bins/metrics-test", json={"a": 1})
    app_ms, db_ms = SERVER_TIMING.fullmatch(stored.headers["Server-Timing"]).groups()
    assert 0 < float(db_ms) <= float(app_ms)
    assert (await httpbin.get("/httpbin/no/such/thing")).status == 404
    text = await (await httpbin.get("/metrics")).text()
    assert_well_formed(text, "httpbin")
    assert count(text, "/httpbin/status/{codes}", code="418") == count(before, "/httpbin/status/{codes}",
                                                                      code="418") + 1
    assert count(text, metrics.UNMATCHED, code="404") >= 1 and "no/such/thing" not in text
    assert (await httpbin.get("/httpbin/metrics")).status == 404
