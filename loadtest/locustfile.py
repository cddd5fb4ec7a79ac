"""Locust scenarios for the stack. Every check is a Locust failure when it does not hold, so a load test
also proves correctness under load.

User classes (pick them in the UI with --class-picker, on the command line by name, or by tag):
  CatalogBrowser  lists items, re-reads one with If-None-Match (expects 304), HEADs it       tag: catalog
  Shopper         signs up, logs in, places orders with an Idempotency-Key, reads them back  tag: web
  HttpbinCaller   get, post, a chunked stream and a short delay on the httpbin clone         tag: httpbin
  BenchUser       one benchmark endpoint on one service:                                     tag: bench
                  LOAD_SERVICE=web|catalog|httpbin, LOAD_ENDPOINT=plaintext|json|io|cpu,
                  LOAD_PREFIX (default /<service>), LOAD_IO_MS (50), LOAD_CPU_N (10000)
Weights: LOAD_WEIGHT_<CLASS> (e.g. LOAD_WEIGHT_SHOPPER=3). Objectives checked when the run ends (the exit
code is 1 if any fails): LOAD_MAX_FAIL_RATIO (default 0), LOAD_MAX_P99_MS (unset: not checked).
"""

from __future__ import annotations

import json
import logging
import os
import random
import uuid
from pathlib import Path

import gevent
from locust import FastHttpUser, between, events, tag, task

from stack.topology import service

log = logging.getLogger("loadtest")
JSON = {"Content-Type": "application/json"}
WEB, CATALOG, HTTPBIN = (service(name).route_prefix for name in ("web", "catalog", "httpbin"))
# Creating catalog items takes the operator's credential (stack/credentials.py; `make up` makes it).
_OPERATOR_TOKEN = Path(os.environ.get("STACK_SECRETS", "var/secrets"), "catalog_operator")
OPERATOR = {"Authorization": f"Bearer {_OPERATOR_TOKEN.read_text().strip()}"} if _OPERATOR_TOKEN.exists() else {}


def weight(name: str, default: int = 1) -> int:
    return int(os.environ.get(f"LOAD_WEIGHT_{name.upper()}", default))


def post_with_backoff(user: FastHttpUser, path: str, body: dict, status: int, header: str | None = None,
                      attempts: int = 10) -> object | None:
    """POST as a polite client: on 429 wait Retry-After and try again (nginx rate-limits the credential
    endpoints per client address, and a load test is one address). The response when it met `status`."""
    for attempt in range(attempts):
        with user.client.post(path, json=body, catch_response=True, name=path) as response:
            if response.status_code != 429:
                return response if expect(response, status, header) else None
            if attempt == attempts - 1:
                response.failure(f"still rate-limited after {attempts} attempts")
                return None
            response.success()  # being told to slow down is correct behaviour, not a failure
            pause = float(response.headers.get("Retry-After", "1"))
        gevent.sleep(pause * (1 + random.random()))
    return None


# "Maybe done": the instance died or was cut off mid-request (nginx never retries a POST it has sent).
UNANSWERED = (0, 502, 503, 504)
RETRY = "RETRY"  # the request type under which such retries show in Locust's statistics


def post_until_answered(user: FastHttpUser, path: str, body: str, headers: dict, name: str,
                        status: int, header: str, attempts: int = 6, check=None) -> object | None:  # noqa: ANN001
    """POST as a careful client with an Idempotency-Key: when no real answer came (a dropped connection, 502,
    503, 504) or the first attempt is still in flight (409), send the same request with the same key again: it
    is done once, or replayed if it was done. Each resend is counted as a RETRY row in Locust's statistics, not
    hidden. The response when it met `status`, had `header` and passed `check(response)` (else it is a failure),
    or None."""
    for attempt in range(attempts):
        with user.client.post(path, data=body, headers=headers, catch_response=True, name=name) as response:
            retryable = response.status_code in UNANSWERED or (attempt > 0 and response.status_code == 409)
            if not retryable or attempt == attempts - 1:
                return response if expect(response, status, header, check) else None
            response.success()
        user.environment.events.request.fire(request_type=RETRY, name=f"{name} after {response.status_code}",
                                             response_time=0, response_length=0, exception=None, context={})
        gevent.sleep(0.1 * 2**attempt)
    return None


def expect(response, status: int, header: str | None = None, check=None) -> bool:  # noqa: ANN001
    """Mark the response failed unless it has the status, the header and passes `check(body)`."""
    if response.status_code != status:
        response.failure(f"expected {status}, got {response.status_code}: {response.text[:200]!r}")
        return False
    if header and not response.headers.get(header):
        response.failure(f"missing {header} header")
        return False
    if check is not None:
        try:
            ok = check(response)
        except (ValueError, KeyError, TypeError) as error:
            ok, _ = False, error
        if not ok:
            response.failure(f"unexpected body: {response.text[:200]!r}")
            return False
    response.success()
    return True


# The one request that waits on purpose (100 ms): tail-latency targets leave it out.
SLOW_BY_DESIGN = f"{HTTPBIN}/delay"

class CatalogBrowser(FastHttpUser):
    """Reads the catalog like a client with a cache: list, conditional re-reads, HEAD."""

    weight = weight("CatalogBrowser")
    wait_time = between(0.1, 0.5)
    item_ids: list[int]

    def on_start(self) -> None:
        self.item_ids = []
        self.etags: dict[int, str] = {}
        with self.client.post(f"{CATALOG}/items", json={"name": f"load {uuid.uuid4().hex[:8]}", "price": 100,
                                                       "stock": 1000}, headers=OPERATOR, catch_response=True,
                              name=f"{CATALOG}/items [POST]") as response:
            if expect(response, 201, "Location"):
                self.item_ids.append(response.json()["id"])

    @tag("catalog")
    @task(3)
    def list_items(self) -> None:
        with self.client.get(f"{CATALOG}/items?limit=20", catch_response=True, name=f"{CATALOG}/items") as response:
            if expect(response, 200, check=lambda r: isinstance(r.json()["items"], list)):
                self.item_ids += [item["id"] for item in response.json()["items"][:5]]
                self.item_ids = self.item_ids[-50:]

    @tag("catalog")
    @task(3)
    def get_item_conditionally(self) -> None:
        if not self.item_ids:
            return
        item_id = random.choice(self.item_ids)
        headers = {"If-None-Match": self.etags[item_id]} if item_id in self.etags else {}
        with self.client.get(f"{CATALOG}/items/{item_id}", headers=headers, catch_response=True,
                             name=f"{CATALOG}/items/{{id}}") as response:
            if response.status_code == 404:  # deleted by someone else: forget it
                response.success()
                self.item_ids.remove(item_id)
            elif headers and response.status_code == 304:
                response.success()
            elif expect(response, 200, "ETag", lambda r: r.json()["id"] == item_id):
                self.etags[item_id] = response.headers["ETag"]

    @tag("catalog")
    @task(1)
    def head_item(self) -> None:
        if self.item_ids:
            with self.client.head(f"{CATALOG}/items/{self.item_ids[0]}", catch_response=True,
                                  name=f"{CATALOG}/items/{{id}} [HEAD]") as response:
                expect(response, 200, "ETag", lambda r: r.content == b"")


class Shopper(FastHttpUser):
    """An account, a session cookie, and orders placed with Idempotency-Key (retried once, as a client would
    after a timeout: the retry must replay, not order twice)."""

    weight = weight("Shopper")
    wait_time = between(0.2, 1.0)

    def on_start(self) -> None:
        self.orders: list[str] = []
        credentials = {"email": f"{uuid.uuid4().hex[:16]}@load.example", "password": "load-test-pass"}
        post_with_backoff(self, f"{WEB}/signup", credentials, 201)
        post_with_backoff(self, f"{WEB}/login", credentials, 200, "Set-Cookie")
        with self.client.post(f"{CATALOG}/items", json={"name": "stock for shoppers", "price": 250,
                                                       "stock": 10**9}, headers=OPERATOR, catch_response=True,
                              name=f"{CATALOG}/items [POST]") as r:
            self.item_id = r.json()["id"] if expect(r, 201) else None

    @tag("web")
    @task(2)
    def place_order(self) -> None:
        if self.item_id is None:
            return
        body = json.dumps({"lines": [{"item_id": self.item_id, "quantity": random.randint(1, 3)}]})
        headers = {**JSON, "Idempotency-Key": uuid.uuid4().hex}
        first = post_until_answered(self, f"{WEB}/orders", body, headers, f"{WEB}/orders [POST]", 201, "Location")
        if first is None:
            return
        # The same request again, as a client that never saw the answer would: replayed, not placed twice (and
        # itself resent, with the same key, if it meets an instance dying mid-request).
        post_until_answered(self, f"{WEB}/orders", body, headers, f"{WEB}/orders [POST retry]", 201,
                            "Idempotent-Replayed", check=lambda r: r.headers["Location"] == first.headers["Location"])
        self.orders.append(first.headers["Location"])

    @tag("web")
    @task(2)
    def read_orders(self) -> None:
        with self.client.get(f"{WEB}/orders", catch_response=True, name=f"{WEB}/orders") as response:
            expect(response, 200, check=lambda r: isinstance(r.json()["orders"], list))
        if self.orders:
            with self.client.get(random.choice(self.orders), catch_response=True, name=f"{WEB}/orders/{{id}}") as r:
                expect(r, 200, "ETag")

    @tag("web")
    @task(1)
    def me(self) -> None:
        with self.client.get(f"{WEB}/me", catch_response=True, name=f"{WEB}/me") as response:
            expect(response, 200, check=lambda r: r.json()["email"].endswith("@load.example"))


class HttpbinCaller(FastHttpUser):
    """The httpbin clone as the seed's examples use httpbin.org."""

    weight = weight("HttpbinCaller")
    wait_time = between(0.1, 0.5)

    @tag("httpbin")
    @task(3)
    def get(self) -> None:
        with self.client.get(f"{HTTPBIN}/get?load=1", catch_response=True, name=f"{HTTPBIN}/get") as r:
            expect(r, 200, check=lambda r: r.json()["args"] == {"load": "1"})

    @tag("httpbin")
    @task(2)
    def post(self) -> None:
        with self.client.post(f"{HTTPBIN}/post", json={"k": 1}, catch_response=True, name=f"{HTTPBIN}/post") as r:
            expect(r, 200, check=lambda r: r.json()["json"] == {"k": 1})

    @tag("httpbin")
    @task(1)
    def stream(self) -> None:
        with self.client.get(f"{HTTPBIN}/stream/3", catch_response=True, name=f"{HTTPBIN}/stream/3") as r:
            expect(r, 200, check=lambda r: len(r.text.splitlines()) == 3)

    @tag("httpbin")
    @task(1)
    def delay(self) -> None:
        with self.client.get(f"{HTTPBIN}/delay/0.1", catch_response=True, name=SLOW_BY_DESIGN) as r:
            expect(r, 200, check=lambda r: r.json()["delayed_seconds"] == 0.1)


def bench_target() -> tuple[str, str, object]:
    """(path, request name, check) for BenchUser, from the environment."""
    service = os.environ.get("LOAD_SERVICE", "catalog")
    prefix = os.environ.get("LOAD_PREFIX", f"/{service}")
    endpoint = os.environ.get("LOAD_ENDPOINT", "json")
    if endpoint == "plaintext":
        return f"{prefix}/plaintext", endpoint, lambda r: r.text == "Hello, World!"
    if endpoint == "json":
        return f"{prefix}/json", endpoint, lambda r: r.json() == {"message": "Hello, World!"}
    if endpoint == "io":
        ms = int(os.environ.get("LOAD_IO_MS", "50"))
        return f"{prefix}/io?ms={ms}", endpoint, lambda r: r.json()["waited_ms"] == ms
    if endpoint == "cpu":
        n = int(os.environ.get("LOAD_CPU_N", "10000"))
        return f"{prefix}/cpu?n={n}", endpoint, lambda r: r.json()["n"] == n
    raise ValueError(f"LOAD_ENDPOINT must be plaintext, json, io or cpu, not {endpoint!r}")


class BenchUser(FastHttpUser):
    """Back-to-back requests to one benchmark endpoint (no think time): the comparisons' workload."""

    weight = weight("BenchUser")

    def on_start(self) -> None:
        self.path, self.name, self.check = bench_target()

    @tag("bench")
    @task
    def hit(self) -> None:
        with self.client.get(self.path, catch_response=True, name=self.name) as response:
            expect(response, 200, "Date", self.check)


@events.quitting.add_listener
def check_objectives(environment, **_kwargs) -> None:  # noqa: ANN001
    """Exit non-zero when a service-level objective is broken (failures, p99)."""
    total = environment.stats.total
    max_fail_ratio = float(os.environ.get("LOAD_MAX_FAIL_RATIO", "0"))
    max_p99 = os.environ.get("LOAD_MAX_P99_MS")
    broken = []
    if total.num_requests and total.fail_ratio > max_fail_ratio:
        broken.append(f"failure ratio {total.fail_ratio:.4f} > {max_fail_ratio}")
    if max_p99 and total.num_requests and total.get_response_time_percentile(0.99) > float(max_p99):
        broken.append(f"p99 {total.get_response_time_percentile(0.99):.0f} ms > {max_p99} ms")
    if not total.num_requests:
        broken.append("no request was made")
    if broken:
        log.error("objectives broken: %s", "; ".join(broken))
        environment.process_exit_code = 1
    else:
        environment.process_exit_code = 0
