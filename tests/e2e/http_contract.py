"""The seed's method table and the status codes, proved through nginx on every service (one suite, three
subjects): catalog's items, web's orders and cart, httpbin's bins."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from tests.e2e.contract import RunningStack

JSON = {"Content-Type": "application/json"}
MERGE = {"Content-Type": "application/merge-patch+json"}


@dataclass
class Subject:
    """One service's resources, as the contract needs them."""

    name: str
    session: requests.Session
    base: str
    collection: str  # where POST creates
    post_body: Callable[[], dict]
    put_body: dict
    other_body: dict
    patch_body: dict
    item_path: Callable[[], str]  # a fresh URL path for PUT-to-create
    count: Callable[[], int]  # resources in the POST collection

    def url(self, path: str) -> str:
        return self.base + path

    def request(self, method: str, path: str, body: object = None, headers: dict | None = None,
                raw: bytes | None = None) -> requests.Response:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {**(JSON if data is not None else {}), **(headers or {})}
        return self.session.request(method, self.url(path), data=data, headers=hdrs, timeout=15)


def _pages(session: requests.Session, url: str, key: str) -> int:
    total, next_url = 0, url
    while next_url:
        response = session.get(next_url, timeout=10)
        assert response.status_code == 200, response.text
        total += len(response.json()[key])
        next_url = response.links.get("next", {}).get("url")
        if next_url and next_url.startswith("/"):
            next_url = url.split("/", 3)[0] + "//" + url.split("/", 3)[2] + next_url
    return total


def make_subject(name: str, stack: RunningStack) -> Subject:
    session = requests.Session()
    base = stack.site.base_url
    fresh_int = lambda: random.randrange(10**9, 2**52)  # noqa: E731
    if name == "catalog":
        session.headers.update(stack.operator)  # changing the catalog takes the operator's credential
        item = {"name": "Teapot", "price": 1250, "stock": 5}
        return Subject(name, session, base, "/catalog/items", lambda: item, item,
                       {**item, "name": "Kettle", "price": 999}, {"stock": 7},
                       lambda: f"/catalog/items/{fresh_int()}",
                       lambda: _pages(session, f"{base}/catalog/items?limit=100", "items"))
    if name == "web":
        credentials = {"email": f"{uuid.uuid4().hex[:12]}@example.com", "password": "contract-pass"}
        assert session.post(f"{base}/web/signup", json=credentials, timeout=10).status_code == 201
        assert session.post(f"{base}/web/login", json=credentials, timeout=10).status_code == 200
        stocked = session.post(f"{base}/catalog/items", json={"name": "Widget", "price": 100, "stock": 10**6},
                               headers=stack.operator, timeout=10).json()["id"]
        return Subject(name, session, base, "/web/orders",
                       lambda: {"lines": [{"item_id": stocked, "quantity": 1}]},
                       {"quantity": 2}, {"quantity": 5}, {"quantity": 3},
                       lambda: f"/web/cart/items/{fresh_int()}",
                       lambda: _pages(session, f"{base}/web/orders?limit=100", "orders"))
    assert name == "httpbin"
    return Subject(name, session, base, "/httpbin/bins", lambda: {"note": "hello"}, {"a": 1}, {"a": 2},
                   {"b": 3}, lambda: f"/httpbin/bins/{uuid.uuid4().hex[:16]}",
                   lambda: len(session.get(f"{base}/httpbin/bins", timeout=10).json()["bins"]))


def assert_problem(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status and problem["request_id"] == response.headers["X-Request-ID"]
    return problem


class HttpSemanticsContract:
    """Mixed into a Test class that provides a `stack` fixture returning a RunningStack."""

    @pytest.fixture(params=["catalog", "web", "httpbin"])
    def subject(self, request, stack):
        return make_subject(request.param, stack)

    def create(self, subject: Subject) -> tuple[str, requests.Response]:
        path = subject.item_path()
        response = subject.request("PUT", path, subject.put_body)
        assert response.status_code == 201, response.text
        assert response.headers["Location"] == path
        return path, response

    def test_put_twice_gives_the_same_state(self, subject):
        path, first = self.create(subject)
        again = subject.request("PUT", path, subject.put_body, {"If-Match": first.headers["ETag"]})
        assert again.status_code == 200, again.text
        assert again.json() == first.json() and again.headers["ETag"] == first.headers["ETag"]
        assert subject.request("GET", path).json() == first.json()

    def test_delete_twice_leaves_it_deleted(self, subject):
        path, created = self.create(subject)
        etag = {"If-Match": created.headers["ETag"]}
        assert subject.request("DELETE", path, headers=etag).status_code == 204
        assert_problem(subject.request("DELETE", path, headers=etag), 404)
        assert_problem(subject.request("GET", path), 404)

    def test_post_twice_makes_two(self, subject):
        before = subject.count()
        first = subject.request("POST", subject.collection, subject.post_body())
        second = subject.request("POST", subject.collection, subject.post_body())
        assert first.status_code == second.status_code == 201, (first.text, second.text)
        assert first.headers["Location"] != second.headers["Location"]
        assert subject.count() == before + 2

    def test_post_twice_with_one_idempotency_key_makes_one(self, subject):
        before, key = subject.count(), {"Idempotency-Key": uuid.uuid4().hex}
        first = subject.request("POST", subject.collection, subject.post_body(), key)
        retry = subject.request("POST", subject.collection, subject.post_body(), key)
        assert first.status_code == retry.status_code == 201
        assert retry.content == first.content and retry.headers["Location"] == first.headers["Location"]
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert subject.count() == before + 1
        other = subject.request("POST", subject.collection, {**subject.post_body(), "extra": 1}, key)
        assert_problem(other, 422)  # the same key with another body

    def test_a_retry_with_the_same_idempotency_key_after_a_rolling_restart_makes_one(self, subject, stack):
        """Keys live in the service's database, not in a process: every instance is replaced in between."""
        before, key = subject.count(), {"Idempotency-Key": uuid.uuid4().hex}
        first = subject.request("POST", subject.collection, subject.post_body(), key)
        assert first.status_code == 201, first.text
        assert stack.driver().restart([subject.name]) == 0
        retry = subject.request("POST", subject.collection, subject.post_body(), key)
        assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true", retry.text
        assert retry.headers["Location"] == first.headers["Location"]
        assert subject.count() == before + 1

    def test_twenty_concurrent_retries_make_one(self, subject):
        before, key = subject.count(), {"Idempotency-Key": uuid.uuid4().hex}
        body = subject.post_body()
        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(lambda _: subject.request("POST", subject.collection, body, key), range(20)))
        statuses = {r.status_code for r in responses}
        assert statuses <= {201, 409}, statuses  # done, or "the first is still in flight"
        locations = {r.headers["Location"] for r in responses if r.status_code == 201}
        assert len(locations) == 1
        final = subject.request("POST", subject.collection, body, key)
        assert final.status_code == 201 and final.headers["Location"] in locations
        assert subject.count() == before + 1

    def test_if_match_mismatch_is_412_and_changes_nothing(self, subject):
        path, created = self.create(subject)
        stale = {"If-Match": '"not-the-current-etag"'}
        assert_problem(subject.request("PUT", path, subject.other_body, stale), 412)
        assert_problem(subject.request("PATCH", path, subject.patch_body, {**MERGE, **stale}), 412)
        assert_problem(subject.request("DELETE", path, headers=stale), 412)
        assert subject.request("GET", path).json() == created.json()

    def test_patch_is_a_merge_patch(self, subject):
        path, created = self.create(subject)
        patched = subject.request("PATCH", path, subject.patch_body, {**MERGE, "If-Match": created.headers["ETag"]})
        assert patched.status_code == 200, patched.text
        assert patched.headers["ETag"] != created.headers["ETag"]
        wrong = subject.request("PATCH", path, subject.patch_body, {"If-Match": patched.headers["ETag"]})
        assert_problem(wrong, 415)

    def test_get_with_if_none_match_is_304(self, subject):
        path, created = self.create(subject)
        response = subject.request("GET", path, headers={"If-None-Match": created.headers["ETag"]})
        assert response.status_code == 304 and response.content == b""
        assert response.headers["ETag"] == created.headers["ETag"]

    def test_head_has_get_headers_and_no_body(self, subject):
        path, _ = self.create(subject)
        get, head = subject.request("GET", path), subject.request("HEAD", path)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["Content-Length"] == str(len(get.content))
        assert head.headers["ETag"] == get.headers["ETag"]

    def test_405_carries_allow_and_options_lists_it(self, subject):
        response = subject.request("DELETE", subject.collection)
        assert_problem(response, 405)
        assert {"GET", "POST"} <= {m.strip() for m in response.headers["Allow"].split(",")}
        path, _ = self.create(subject)
        options = subject.request("OPTIONS", path)
        assert options.status_code in (200, 204)
        assert {"GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"} <= {
            m.strip() for m in options.headers["Allow"].split(",")}

    def test_bad_json_is_a_400_problem(self, subject):
        assert_problem(subject.request("POST", subject.collection, raw=b'{"broken": '), 400)

    def test_wrong_media_type_is_415(self, subject):
        response = subject.request("POST", subject.collection, raw=b"{}", headers={"Content-Type": "text/plain"})
        assert_problem(response, 415)

    def test_accept_that_excludes_json_is_406(self, subject):
        path, _ = self.create(subject)
        assert_problem(subject.request("GET", path, headers={"Accept": "text/html"}), 406)
        assert subject.request("GET", path, headers={"Accept": "text/html, application/*;q=0.5"}).status_code == 200

    def test_body_too_large_is_413(self, subject):
        response = subject.request("POST", subject.collection, raw=b'{"x": "' + b"a" * 70_000 + b'"}')
        assert response.status_code == 413, (response.status_code, response.text[:300])
