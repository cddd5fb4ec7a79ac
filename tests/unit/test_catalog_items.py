"""catalog's items in-process: every rule of the HTTP surface, with the Tornado test server."""

from __future__ import annotations

import json

from tests.unit.test_catalog import OPERATOR, CatalogAppTest

ITEM = {"name": "Teapot", "price": 1250, "stock": 3}


class ItemsTest(CatalogAppTest):
    def call(self, method, path, body=None, content_type="application/json", **headers):
        """As the operator, unless the test sets Authorization itself (None: no credential at all)."""
        headers = {**OPERATOR, **headers}
        headers = {name: value for name, value in headers.items() if value is not None}
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
        if body is not None:
            headers["Content-Type"] = content_type
        if method in ("POST", "PUT", "PATCH") and body is None:
            body = b""
        return self.fetch("/catalog" + path, method=method, body=body, headers=headers, raise_error=False,
                          allow_nonstandard_methods=True)

    def create(self, **overrides):
        response = self.call("POST", "/items", {**ITEM, **overrides})
        assert response.code == 201, response.body
        return json.loads(response.body), response

    def test_post_creates_with_201_location_and_etag(self):
        item, response = self.create()
        assert response.headers["Location"] == f"/catalog/items/{item['id']}"
        assert response.headers["ETag"].startswith('"')
        assert {k: item[k] for k in ITEM} == ITEM and item["created_at"].endswith("Z")
        fetched = self.call("GET", f"/items/{item['id']}")
        assert json.loads(fetched.body) == item and fetched.headers["ETag"] == response.headers["ETag"]

    def test_a_name_with_nul_is_a_422_on_either_store(self):
        """A name with U+0000 passes item validation (valid JSON, 1 to 200 characters) but no Postgres text holds
        it: both stores answer 422 rather than Postgres's 500."""
        response = self.call("POST", "/items", b'{"name": "pen\\u0000", "price": 1, "stock": 1}')
        assert response.code == 422 and json.loads(response.body)["title"] == "Unstorable value", response.body

    def test_post_twice_makes_two(self):
        first, _ = self.create()
        second, _ = self.create()
        assert first["id"] != second["id"]

    def test_post_twice_with_one_idempotency_key_makes_one(self):
        headers = {"Idempotency-Key": "order-42"}
        first = self.call("POST", "/items", ITEM, **headers)
        again = self.call("POST", "/items", ITEM, **headers)
        assert first.code == again.code == 201
        assert again.body == first.body and again.headers["Location"] == first.headers["Location"]
        assert again.headers["Idempotent-Replayed"] == "true"
        assert len(json.loads(self.call("GET", "/items").body)["items"]) == 1

    def test_same_key_with_another_body_is_422(self):
        self.call("POST", "/items", ITEM, **{"Idempotency-Key": "k1"})
        response = self.call("POST", "/items", {**ITEM, "price": 1}, **{"Idempotency-Key": "k1"})
        assert response.code == 422 and b"Idempotency-Key" in response.body

    def test_get_with_if_none_match_is_304_and_head_has_no_body(self):
        item, created = self.create()
        etag = created.headers["ETag"]
        not_modified = self.call("GET", f"/items/{item['id']}", **{"If-None-Match": etag})
        assert not_modified.code == 304 and not_modified.body == b"" and not_modified.headers["ETag"] == etag
        head = self.call("HEAD", f"/items/{item['id']}")
        assert head.code == 200 and head.body == b"" and head.headers["ETag"] == etag
        assert int(head.headers["Content-Length"]) == len(self.call("GET", f"/items/{item['id']}").body)

    def test_put_replaces_and_twice_gives_the_same_state(self):
        item, created = self.create()
        replacement = {"name": "Kettle", "price": 999, "stock": 0}
        first = self.call("PUT", f"/items/{item['id']}", replacement, **{"If-Match": created.headers["ETag"]})
        second = self.call("PUT", f"/items/{item['id']}", replacement, **{"If-Match": created.headers["ETag"]})
        assert first.code == 200, first.body
        # The retry's If-Match is stale, but the state it asks for is already there: 200, not 412.
        assert second.code == 200, second.body
        assert second.body == first.body and second.headers["ETag"] == first.headers["ETag"]

    def test_put_at_a_new_id_creates_with_201(self):
        response = self.call("PUT", "/items/777", ITEM)
        assert response.code == 201 and response.headers["Location"] == "/catalog/items/777"
        assert self.call("PUT", "/items/778", ITEM, **{"If-None-Match": "*"}).code == 201
        assert self.call("PUT", "/items/778", ITEM, **{"If-None-Match": "*"}).code == 412

    def test_changes_need_if_match_428_and_a_stale_one_is_412(self):
        item, created = self.create()
        path = f"/items/{item['id']}"
        assert self.call("PUT", path, ITEM).code == 428
        assert self.call("DELETE", path).code == 428
        patch = self.call("PATCH", path, {"stock": 9}, "application/merge-patch+json")
        assert patch.code == 428
        stale = '"0000"'
        assert self.call("PUT", path, {**ITEM, "stock": 99}, **{"If-Match": stale}).code == 412
        assert self.call("PATCH", path, {"stock": 9}, "application/merge-patch+json", **{"If-Match": stale}).code == 412
        assert self.call("DELETE", path, **{"If-Match": stale}).code == 412

    def test_lost_update_is_impossible(self):
        item, created = self.create()
        path, etag = f"/items/{item['id']}", created.headers["ETag"]
        merge = "application/merge-patch+json"
        alice = self.call("PATCH", path, {"stock": 10}, merge, **{"If-Match": etag})
        bob = self.call("PATCH", path, {"price": 1}, merge, **{"If-Match": etag})
        assert alice.code == 200 and bob.code == 412
        assert json.loads(self.call("GET", path).body)["stock"] == 10

    def test_patch_is_json_merge_patch(self):
        item, created = self.create()
        path = f"/items/{item['id']}"
        response = self.call("PATCH", path, {"stock": 7}, "application/merge-patch+json",
                             **{"If-Match": created.headers["ETag"]})
        assert response.code == 200 and json.loads(response.body)["stock"] == 7
        assert json.loads(response.body)["name"] == ITEM["name"]
        wrong_type = self.call("PATCH", path, {"stock": 7}, **{"If-Match": response.headers["ETag"]})
        assert wrong_type.code == 415 and wrong_type.headers["Accept-Patch"] == "application/merge-patch+json"
        removal = self.call("PATCH", path, {"name": None}, "application/merge-patch+json",
                            **{"If-Match": response.headers["ETag"]})
        assert removal.code == 422  # a merge patch that deletes a required member leaves an invalid item

    def test_delete_twice_leaves_it_deleted(self):
        item, created = self.create()
        path = f"/items/{item['id']}"
        assert self.call("DELETE", path, **{"If-Match": created.headers["ETag"]}).code == 204
        assert self.call("DELETE", path, **{"If-Match": created.headers["ETag"]}).code == 404
        assert self.call("GET", path).code == 404

    def test_bad_bodies(self):
        assert self.call("POST", "/items", b"{not json").code == 400
        assert self.call("POST", "/items", ITEM, "text/plain").code == 415
        assert self.call("POST", "/items", b"x" * 70_000).code == 413
        invalid = self.call("POST", "/items", {"name": "", "price": -1, "stock": "3", "colour": "red"})
        problem = json.loads(invalid.body)
        assert invalid.code == 422 and invalid.headers["Content-Type"] == "application/problem+json"
        for fragment in ("name", "price", "stock", "colour"):
            assert fragment in problem["detail"]

    def test_pagination_with_link_headers(self):
        for n in range(5):
            self.create(name=f"item {n}")
        seen, path = [], "/items?limit=2"
        while path:
            response = self.call("GET", path)
            page = json.loads(response.body)
            seen += [item["name"] for item in page["items"]]
            links = dict(
                (part.split(";")[1].strip().split('"')[1], part.split(";")[0].strip()[1:-1])
                for part in response.headers["Link"].split(",")
            )
            path = links.get("next", "").removeprefix("/catalog") or None
        assert seen == [f"item {n}" for n in range(5)]
        assert self.call("GET", "/items?limit=0").code == 400

    def test_options_and_405_carry_allow(self):
        item, _ = self.create()
        options = self.call("OPTIONS", f"/items/{item['id']}")
        assert options.code == 204
        assert options.headers["Allow"] == "OPTIONS, GET, HEAD, PUT, DELETE, PATCH"
        collection = self.call("PUT", "/items", ITEM)
        assert collection.code == 405 and collection.headers["Allow"] == "OPTIONS, GET, HEAD, POST"

    def test_conn_reports_the_connection(self):
        info = json.loads(self.call("GET", "/conn").body)
        assert info["service"] == "catalog" and info["peer"]["address"] == "127.0.0.1"
        assert info["requests_on_this_connection"] >= 1 and info["http_version"] == "HTTP/1.1"

    def test_reads_are_open_and_every_change_needs_a_credential(self):
        item, response = self.create()
        path, etag = f"/items/{item['id']}", response.headers["ETag"]
        assert self.call("GET", path, Authorization=None).code == 200
        changes = [("POST", "/items", ITEM, {}), ("PUT", path, ITEM, {"If-Match": etag}),
                   ("PATCH", path, {"stock": 1}, {"If-Match": etag}), ("DELETE", path, None, {"If-Match": etag})]
        for method, target, body, extra in changes:
            kind = "application/merge-patch+json" if method == "PATCH" else "application/json"
            anonymous = self.call(method, target, body, kind, Authorization=None, **extra)
            assert anonymous.code == 401, (method, anonymous.body)
            assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="catalog"'
            assert anonymous.headers["Content-Type"] == "application/problem+json"
            forged = self.call(method, target, body, kind, Authorization="Bearer guessed", **extra)
            assert forged.code == 401
            assert forged.headers["WWW-Authenticate"] == 'Bearer realm="catalog", error="invalid_token"'
        assert self.call("GET", path).headers["ETag"] == etag  # nothing changed

    def test_webs_credential_changes_stock_and_nothing_else(self):
        item, response = self.create()
        path, etag = f"/items/{item['id']}", response.headers["ETag"]
        web = "Bearer web-token"
        merge = "application/merge-patch+json"
        assert self.call("POST", "/items", ITEM, Authorization=web).code == 403
        assert self.call("PATCH", path, {"price": 1}, merge, Authorization=web, **{"If-Match": etag}).code == 403
        assert self.call("PATCH", path, {"stock": 1, "price": 1}, merge, Authorization=web,
                         **{"If-Match": etag}).code == 403
        assert self.call("PUT", path, ITEM, Authorization=web, **{"If-Match": etag}).code == 403
        assert self.call("DELETE", path, Authorization=web, **{"If-Match": etag}).code == 403
        stocked = self.call("PATCH", path, {"stock": 1}, merge, Authorization=web, **{"If-Match": etag})
        assert stocked.code == 200 and json.loads(stocked.body)["stock"] == 1
        assert json.loads(stocked.body)["price"] == ITEM["price"]


class ItemsOnPostgresTest(ItemsTest):
    """Every items test again, on Postgres (async psycopg connections under Tornado)."""

    STORE = "postgres"
