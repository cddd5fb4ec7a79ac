"""The Tornado app in-process, through tornado.testing (a real HTTP server on an ephemeral port)."""

import json
import tempfile

from tornado.testing import AsyncHTTPTestCase

from services.catalog.app import make_app
from tests import inprocess, postgres_cluster
from tests.unit.cases import CASES

TOKENS = inprocess.CATALOG_TOKENS
OPERATOR = {"Authorization": inprocess.CATALOG_OPERATOR}


class CatalogAppTest(AsyncHTTPTestCase):
    """The catalog app on a real HTTP server, with its own throwaway database: a SQLite file, or with
    STORE = "postgres" a fresh database of the tests' Postgres cluster (tests/postgres_cluster.py)."""

    STORE = "sqlite"

    def get_app(self):
        self.tmp = tempfile.TemporaryDirectory()
        if self.STORE == "postgres":
            self.where = postgres_cluster.fresh_database()
        else:
            self.where = f"{self.tmp.name}/catalog.sqlite3"
        return make_app(db_path=self.where, tokens=TOKENS)

    def tearDown(self):
        super().tearDown()
        self.tmp.cleanup()
        if self.STORE == "postgres":
            postgres_cluster.drop(self.where)


class CatalogTest(CatalogAppTest):
    def test_shared_endpoints(self):
        for case in CASES:
            with self.subTest(path=case.path):
                response = self.fetch("/catalog" + case.path)
                case.check(response.code, response.headers, response.body, "catalog")

    def test_request_id_is_echoed_on_success_and_on_errors(self):
        for path in ("/catalog/json", "/catalog/io?ms=x", "/catalog/nope"):
            response = self.fetch(path, headers={"X-Request-ID": "rid-2"})
            assert response.headers["X-Request-ID"] == "rid-2", path

    def test_wrong_method_is_405_with_allow(self):
        response = self.fetch("/catalog/json", method="POST", body=b"{}")
        assert response.code == 405
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.headers["Allow"] == "OPTIONS, GET, HEAD"

    def test_server_and_date_headers(self):
        response = self.fetch("/catalog/plaintext")
        assert response.headers["Server"].startswith("TornadoServer/")
        assert response.headers["Date"].endswith("GMT")


    def test_stream_is_chunked_json_lines(self):
        response = self.fetch("/catalog/stream/3")
        assert response.code == 200 and response.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in response.headers
        lines = [json.loads(line) for line in response.body.splitlines()]
        assert lines == [{"id": i, "service": "catalog"} for i in range(3)]
        for bad in ("0", "101", "x"):
            assert self.fetch(f"/catalog/stream/{bad}").code == 400

    def test_head_answers_wherever_get_does_with_no_body(self):
        """Allow lists HEAD on every GET resource, so HEAD must work there (curl -I)."""
        for path in ("/catalog/json", "/catalog/plaintext", "/catalog/healthz", "/catalog/items", "/catalog/conn"):
            get, head = self.fetch(path), self.fetch(path, method="HEAD")
            assert head.code == 200 and head.body == b"", path
            assert head.headers["Content-Type"] == get.headers["Content-Type"], path
        assert self.fetch("/catalog/json", method="OPTIONS").headers["Allow"] == "OPTIONS, GET, HEAD"
