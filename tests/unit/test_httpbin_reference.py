"""Differential test: one table of requests sent to the PyPI `httpbin` package (the maintained fork of httpbin.org,
run in-process with Flask's test client) and to ours (in-process with aiohttp's). Status, the headers that matter
and the bodies must match (JSON modulo the client's address, host and the headers the test did not send), except
where services/httpbin/parity.py says they differ on purpose: there the test checks the difference is that one."""

from __future__ import annotations

import base64
import gzip
import json
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import brotli
import pytest
from httpbin import app as reference_app

from services.httpbin.app import answer_unparsable_requests_with_problems, create_app
from services.httpbin.endpoints import PREFIX
from services.httpbin.parity import DELIBERATE
from stack.topology import ROOT
from tests.unit.test_httpbin_more import digest_header

BOUNDARY = "stackboundary7MA4YWxk"
MULTIPART = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="q"\r\n\r\nteapot\r\n'
             f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="upload"; filename="notes.txt"\r\n'
             f"Content-Type: text/plain\r\n\r\nfile body\n\r\n--{BOUNDARY}--\r\n").encode()
BASIC = {"Authorization": "Basic " + base64.b64encode(b"ada:pw").decode()}


@dataclass(frozen=True)
class Case:
    method: str
    path: str  # as at httpbin.org's root; ours is under PREFIX
    compare: str = "json"  # json | bytes | text | status | lines | encoded
    # A dict, or (name, value) pairs where a field is sent on more than one line.
    headers: dict[str, str] | tuple[tuple[str, str], ...] = field(default_factory=dict)
    body: bytes = b""
    deliberate: str | None = None  # a parity.DELIBERATE request: the difference expected here

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}" + (f" {sorted(self.names)}" if self.headers else "")

    @property
    def names(self) -> set[str]:
        return {name for name, _ in self.headers} if isinstance(self.headers, tuple) else set(self.headers)


JSON_BODY = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
CASES = [
    Case("GET", "/get?a=1&b=2&b=3", headers={"X-Demo": "yes"}),
    *(Case(method, f"/{method.lower()}?q=1", headers=JSON_BODY, body=b'{"k": [1, 2], "s": "\\u00e9"}')
      for method in ("POST", "PUT", "PATCH", "DELETE")),
    Case("POST", "/post", headers=FORM, body=b"name=ada&name=bob&x="),
    Case("POST", "/post", headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}, body=MULTIPART),
    Case("POST", "/post", headers={"Content-Type": "text/plain"}, body="plain text ü".encode()),
    Case("POST", "/post", headers={"Content-Type": "application/octet-stream"}, body=b"\x00\xff\xfe"),
    *(Case(method, "/anything/deep/path?x=1", headers=JSON_BODY, body=b'{"a": null}')
      for method in ("GET", "POST", "PUT", "PATCH", "DELETE")),
    Case("GET", "/headers", headers={"X-Custom": "1", "Accept-Language": "fr"}),
    Case("GET", "/user-agent", headers={"User-Agent": "parity-test/1.0"}),
    Case("GET", "/ip"),
    Case("GET", "/uuid"),
    Case("GET", "/status/418", "status"),
    Case("GET", "/status/204", "status"),
    Case("GET", "/status/301", "status"),
    Case("GET", "/status/404:1,200:0", "status"),
    Case("POST", "/status/201", "status"),
    Case("GET", "/delay/0"),
    Case("GET", "/stream/3", "lines"),
    Case("GET", "/drip?duration=0&numbytes=5&code=200", "bytes"),
    Case("GET", "/bytes/64?seed=3", "bytes"),
    Case("GET", "/stream-bytes/64?seed=3&chunk_size=7", "bytes"),
    Case("GET", "/range/26", "bytes"),
    Case("GET", "/range/26", "bytes", headers={"Range": "bytes=3-9"}),
    Case("GET", "/range/26", "bytes", headers={"Range": "bytes=-4"}),
    Case("GET", "/range/26", "status", headers={"Range": "bytes=30-40"}),
    Case("GET", "/cookies", headers={"Cookie": "a=1; b=two"}),
    Case("GET", "/cookies/set?a=1", "status", deliberate="GET /cookies/set?a=1"),
    Case("GET", "/cookies/set/a/b", "status"),
    Case("GET", "/cookies/delete?a", "status"),
    Case("GET", "/redirect/3", "status"),
    Case("GET", "/redirect/2?absolute=true", "status"),
    Case("GET", "/relative-redirect/3", "status"),
    Case("GET", "/absolute-redirect/3", "status"),
    Case("GET", "/redirect-to?url=/get&status_code=307", "status"),
    Case("POST", "/redirect-to?url=/get&status_code=308", "status"),
    Case("GET", "/response-headers?X-Test=1&X-Test=2", "status", deliberate="GET /response-headers?X-Test=1"),
    Case("GET", "/cache"),
    Case("GET", "/cache", "status", headers={"If-Modified-Since": "Sat, 28 Nov 2026 00:00:00 GMT"}),
    Case("GET", "/cache/60"),
    Case("GET", "/etag/abc"),
    Case("GET", "/etag/abc", "status", headers={"If-None-Match": '"abc"'}),
    Case("GET", "/etag/abc", "status", headers={"If-Match": '"zzz"'}),
    Case("GET", "/basic-auth/ada/pw", headers=BASIC),
    Case("GET", "/basic-auth/ada/pw", "status"),
    Case("GET", "/hidden-basic-auth/ada/pw", headers=BASIC),
    Case("GET", "/hidden-basic-auth/ada/pw", "status"),
    Case("GET", "/bearer", headers={"Authorization": "Bearer t0ken"}),
    Case("GET", "/bearer", "status"),
    Case("GET", "/gzip", "encoded"),
    Case("GET", "/deflate", "encoded"),
    Case("GET", "/brotli", "encoded"),
    Case("GET", "/encoding/utf8", "status"),
    Case("GET", "/html", "status"),
    Case("GET", "/xml", "status"),
    Case("GET", "/robots.txt", "text"),
    Case("GET", "/deny", "status"),
    Case("GET", "/base64/SFRUUEJJTiBpcyBhd2Vzb21l", "text"),
    Case("GET", "/links/4/2", "text"),
    Case("GET", "/links/4", "status"),
    Case("GET", "/image/png", "status"),
    Case("GET", "/image/jpeg", "status"),
    Case("GET", "/image/webp", "status"),
    Case("GET", "/image/svg", "status"),
    Case("GET", "/image", "status", headers={"Accept": "image/webp"}),
    Case("GET", "/image", "status", headers={"Accept": "image/svg+xml"}),
    Case("GET", "/image", "status", headers={"Accept": "image/jpeg"}),
    Case("GET", "/image", "status", headers={"Accept": "image/*"}),
    Case("GET", "/image", "status", headers={"Accept": "*/*"}, deliberate="GET /image (Accept: */*)"),
    Case("GET", "/json", "status", deliberate="GET /json"),
    Case("GET", "/delay/abc", "status", deliberate="GET /delay/abc"),
    Case("GET", "/redirect/0", "status", deliberate="GET /redirect/0"),
    Case("GET", "/base64/%%%", "status", deliberate="GET /base64/%%%"),
    Case("GET", "/redirect-to?url=http://example.com/", "status", deliberate="GET /redirect-to?url=http://example.com/"),
    Case("GET", "/response-headers?Content-Length=1", "status", deliberate="GET /response-headers?Content-Length=1"),
    # A field on several lines is one field, its values in order (RFC 9110 5.3), in every echo of headers.
    *(Case(method, path, headers=(("X-Foo", "bar"), ("X-Foo", "baz"), ("Accept-Language", "fr"),
                                  ("Accept-Language", "de;q=0.5")))
      for method, path in (("GET", "/headers"), ("GET", "/get"), ("GET", "/anything"), ("POST", "/post"),
                           ("PUT", "/anything/x"), ("GET", "/cache"), ("GET", "/cache/5"), ("GET", "/etag/t"),
                           ("GET", "/delay/0"))),
    Case("GET", "/user-agent", "status", headers=(("User-Agent", "one/1"), ("User-Agent", "two/2")),
         deliberate="GET /user-agent (User-Agent sent twice)"),
    Case("GET", "/etag/abc", "status", headers=(("If-None-Match", '"x"'), ("If-None-Match", '"abc"'))),
    # Content-coded bodies come back as the bytes that were sent (this server decodes no request body).
    *(Case(method, path, headers={"Content-Type": kind, "Content-Encoding": coding}, body=encoded)
      for method, path in (("POST", "/post"), ("PUT", "/put"), ("PATCH", "/anything"), ("DELETE", "/delete"))
      for kind in ("application/json", "application/octet-stream")
      for coding, encoded in (("gzip", gzip.compress(b'{"a": 1}')), ("deflate", zlib.compress(b'{"a": 1}')),
                              ("br", brotli.compress(b'{"a": 1}')), ("gzip", b"\x00not gzip\xff"),
                              ("deflate", b"junk"), ("identity", b'{"a": 1}'))),
    Case("POST", "/post", headers={"Content-Type": "application/x-www-form-urlencoded", "Content-Encoding": "gzip"},
         body=gzip.compress(b"a=1"), deliberate="POST /post (form, Content-Encoding: gzip)"),
    # Redirect chains as long as clients test their limits with (requests stops at 30, curl at 50).
    *(Case("GET", f"/{kind}/{n}", "status") for kind in ("redirect", "relative-redirect", "absolute-redirect")
      for n in (21, 30, 50)),
    Case("GET", "/redirect/50?absolute=true", "status"),
    Case("GET", "/redirect/101", "status", deliberate="GET /redirect/101"),
    # Conditional requests on every endpoint with a validator or freshness.
    *(Case("GET", path, "status", headers=conditional)
      for path in ("/cache", "/etag/abc", "/cache/60", "/range/26")
      for conditional in ({"If-None-Match": '"abc"'}, {"If-None-Match": "*"}, {"If-None-Match": 'W/"abc"'},
                          {"If-Modified-Since": "Sat, 28 Nov 2026 00:00:00 GMT"}, {"If-Match": '"abc"'},
                          {"If-Match": "*"}, {"If-Modified-Since": "not a date"},
                          {"If-None-Match": '"zzz", "abc"'})),
    Case("GET", "/cache", "status", headers={"If-None-Match": '"abc"'}, deliberate="GET /cache (conditional)"),
]
DIFFERENCES = {d.request: d for d in DELIBERATE}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names; repeated fields joined with ", "
    body: bytes


def strip_origin(text: str) -> str:
    """A URL or path with the scheme, host and this httpbin's prefix taken out: what both must agree on."""
    return re.sub(r"^https?://[^/]+", "", text).replace(PREFIX + "/", "/", 1) if text.startswith(("http", PREFIX)) \
        else text


def normalized(document: object, sent: set[str]) -> object:
    if isinstance(document, dict):
        out = {}
        for key, value in document.items():
            if key == "origin":
                continue  # the client's address: the two test clients differ
            if key == "url":
                value = strip_origin(value)
            elif key == "headers" and isinstance(value, dict):  # only what the test sent (clients add their own)
                wanted = {name.title() for name in sent}
                # "bar,baz" (gunicorn's join, ours) and "bar, baz" (Werkzeug's test client) are one value.
                value = {name: re.sub(r",\s*", ", ", v) for name, v in value.items() if name.title() in wanted}
            out[key] = normalized(value, sent)
        return out
    if isinstance(document, list):
        return [normalized(item, sent) for item in document]
    return document


def media(answer: Answer) -> str:
    return answer.headers.get("content-type", "").split(";")[0].strip()


def assert_same(case: Case, reference: Answer, ours: Answer) -> None:
    assert ours.status == reference.status, (reference.status, ours.status, ours.body[:300])
    if reference.status >= 400:
        return  # an error: ours is a problem document (parity row "any error")
    if "location" in reference.headers:
        assert strip_origin(ours.headers["location"]) == strip_origin(reference.headers["location"])
    for name in ("content-encoding", "cache-control", "accept-ranges"):
        assert ours.headers.get(name) == reference.headers.get(name), name
    if reference.status in (206, 416):  # httpbin.org also sends it with a 200 (parity row)
        assert ours.headers["content-range"] == reference.headers["content-range"]
    if case.path.startswith("/etag/") and reference.status == 200:  # quoted here (parity row)
        assert ours.headers["etag"] == f'"{reference.headers["etag"]}"'
    if case.path.startswith("/image"):
        assert media(ours) == media(reference)
    if "www-authenticate" in reference.headers:
        assert ours.headers["www-authenticate"].split()[0] == reference.headers["www-authenticate"].split()[0]
    if "set-cookie" in reference.headers:  # name=value ("" and nothing alike); the Path differs (parity row)
        assert ours.headers["set-cookie"].split(";")[0].replace('""', "") == \
            reference.headers["set-cookie"].split(";")[0]
    if case.compare == "json":
        assert media(ours) == media(reference) == "application/json"
        expected, got = normalized(json.loads(reference.body), case.names), normalized(json.loads(ours.body),
                                                                                          case.names)
        assert set(expected) <= set(got)  # ours may add a key (delay's delayed_seconds); none goes missing
        if "uuid" in expected:
            assert re.fullmatch(r"[0-9a-f-]{36}", got["uuid"])
        else:
            assert {key: got[key] for key in expected} == expected
    elif case.compare == "bytes":
        assert ours.body == reference.body and media(ours) == media(reference)
    elif case.compare == "text":
        assert ours.body.decode().replace(PREFIX + "/", "/") == reference.body.decode()
    elif case.compare == "lines":
        lines = [normalized(json.loads(line), case.names) for line in ours.body.splitlines()]
        assert lines == [normalized(json.loads(line), case.names) for line in reference.body.splitlines()]
    elif case.compare == "encoded":
        decode = {"gzip": gzip.decompress, "deflate": zlib.decompress, "br": brotli.decompress}
        documents = [normalized(json.loads(decode[a.headers["content-encoding"]](a.body)), case.names)
                     for a in (reference, ours)]
        assert documents[0] == documents[1]


def joined(fields: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Header fields by lower-cased name, a repeated one's values joined with ", " (RFC 9110 5.3)."""
    out: dict[str, str] = {}
    for name, value in fields:
        out[name.lower()] = f"{out[name.lower()]}, {value}" if name.lower() in out else value
    return out


def ask_reference(client, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
    if "Cookie" in headers:  # Werkzeug's test client sends its own cookie jar, not a Cookie header
        headers = dict(headers)
        for pair in headers.pop("Cookie").split(";"):
            name, _, value = pair.strip().partition("=")
            client.set_cookie(name, value)
    response = client.open(path, method=method, headers=headers, data=body)
    return Answer(response.status_code, joined(response.headers.items()), response.get_data())


async def ask_ours(client, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
    response = await client.request(method, PREFIX + path, headers=headers, data=body or None,
                                    allow_redirects=False, auto_decompress=False)
    return Answer(response.status, joined(response.headers.items()), await response.read())


@pytest.fixture
def reference():
    return reference_app.test_client()


@pytest.fixture
async def ours(aiohttp_client, tmp_path):
    answer_unparsable_requests_with_problems()  # as the service does: what aiohttp refuses is a problem too
    return await aiohttp_client(create_app(str(tmp_path / "httpbin.sqlite3")))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
async def test_answers_like_httpbin_org(case, reference, ours):
    theirs = ask_reference(reference, case.method, case.path, case.headers, case.body)
    mine = await ask_ours(ours, case.method, case.path, case.headers, case.body)
    if case.deliberate is None:
        assert_same(case, theirs, mine)
        return
    difference = DIFFERENCES[case.deliberate]
    if difference.statuses:
        assert (theirs.status, mine.status) == difference.statuses
    else:
        assert theirs.status == mine.status
    if mine.status >= 400:
        assert media(mine) == "application/problem+json"


def test_the_deliberate_differences_the_test_knows_are_real():
    """Rows with a status each have a case above, so none stays in the table after it stopped being true."""
    checked = {case.deliberate for case in CASES if case.deliberate}
    assert {d.request for d in DELIBERATE if d.statuses} <= checked


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
async def test_digest_auth_handshake_like_httpbin_org(reference, ours, algorithm):
    """The same client code authenticates against both; each realm is read from each challenge."""
    path = f"/digest-auth/auth/ada/s3cret/{algorithm}"
    theirs = ask_reference(reference, "GET", path, {}, b"")
    mine = await ask_ours(ours, "GET", path, {}, b"")
    assert theirs.status == mine.status == 401
    for answer in (theirs, mine):
        assert answer.headers["www-authenticate"].startswith("Digest ")
    their_reply = ask_reference(reference, "GET", path, {"Authorization": digest_header(
        theirs.headers["www-authenticate"], "ada", "s3cret", "GET", path)}, b"")
    my_reply = await ask_ours(ours, "GET", path, {"Authorization": digest_header(
        mine.headers["www-authenticate"], "ada", "s3cret", "GET", PREFIX + path)}, b"")
    assert their_reply.status == my_reply.status == 200
    assert json.loads(their_reply.body) == json.loads(my_reply.body) == {"authenticated": True, "user": "ada"}


def test_the_docs_list_every_deliberate_difference():
    page = (ROOT / "docs" / "services.md").read_text()
    section = page[page.index("## Where it differs from httpbin.org"):]
    for difference in DELIBERATE:
        assert f"| `{difference.request}` |" in section, difference.request
    assert Path(__file__).name in section
