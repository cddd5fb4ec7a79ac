"""One table of expectations for the endpoints every service shares, checked against each framework's app."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from services.common import http


@dataclass(frozen=True)
class Case:
    path: str  # under the service's prefix
    status: int
    content_type: str
    body: object  # exact text for text/plain, a dict subset for JSON

    def check(self, status: int, headers: Mapping[str, str], body: bytes, service: str) -> None:
        assert status == self.status, (self.path, status, body)
        assert headers["Content-Type"].startswith(self.content_type), headers["Content-Type"]
        assert int(headers["Content-Length"]) == len(body)
        assert http.request_id(headers[http.REQUEST_ID_HEADER]) == headers[http.REQUEST_ID_HEADER]
        if self.content_type == "text/plain":
            assert body.decode() == self.body
            return
        document = json.loads(body)
        expected = {k: (service if v == "<service>" else v) for k, v in self.body.items()}  # type: ignore[union-attr]
        assert expected.items() <= document.items(), document
        if self.status >= 400:
            assert {"type", "title", "status", "detail", "request_id"} <= document.keys()
            assert document["request_id"] == headers[http.REQUEST_ID_HEADER]


CASES = [
    Case("/healthz", 200, "application/json", {"status": "ok", "service": "<service>"}),
    Case("/plaintext", 200, "text/plain", "Hello, World!"),
    Case("/json", 200, "application/json", {"message": "Hello, World!"}),
    Case("/io?ms=1", 200, "application/json", {"waited_ms": 1}),
    Case("/io", 200, "application/json", {"waited_ms": http.IO_DEFAULT_MS}),
    Case("/cpu?n=100", 200, "application/json", {"n": 100, "result": http.cpu_work(100)}),
    Case("/io?ms=abc", 400, http.PROBLEM_JSON, {"status": 400, "title": "Invalid query parameter"}),
    Case("/io?ms=999999", 400, http.PROBLEM_JSON, {"status": 400}),
    Case("/cpu?n=0", 400, http.PROBLEM_JSON, {"status": 400}),
    Case("/cpu?n=%D9%A3", 400, http.PROBLEM_JSON, {"status": 400}),  # an Arabic-Indic three: not an ASCII digit
    Case("/cpu?n=1_000", 400, http.PROBLEM_JSON, {"status": 400}),
    Case("/io?ms=99999999999999999999999999", 400, http.PROBLEM_JSON, {"status": 400}),
    Case("/stream/%D9%A3", 400, http.PROBLEM_JSON, {"status": 400}),
    Case("/no-such-path", 404, http.PROBLEM_JSON, {"status": 404}),
]
IDS = [case.path for case in CASES]
