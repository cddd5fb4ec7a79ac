"""Generated input on every surface a client controls, against all three services in-process (tests/inprocess.py):
the operation and its path parameters (from each service's own OpenAPI document), the query, the header fields
the services read (Range, If-*, Content-Length, Content-Encoding, Cookie, Authorization, Idempotency-Key,
X-Request-ID, Accept, Origin...), cookies and bodies of every media type, with numbers of any length and Unicode
of every awkward kind (lone surrogates, NUL, RTL marks, 4-byte characters, undecodable bytes).

The property: every answer is a 2xx, 3xx or 4xx, never a 5xx, and every 4xx is an application/problem+json
document whose status is the response's. EXEMPT lists the few answers that are deliberately otherwise, each with
its reason; a test keeps every row of it reachable.

httpbin and catalog are sent raw bytes over a socket (aiohttp's and Tornado's parsers see every octet); web goes
through Flask's test client with the header octets decoded as Latin-1, exactly what gunicorn hands a WSGI app,
and as raw bytes to its own port under uWSGI and granian (tests/service_process.py), whose parsers and environs
differ from gunicorn's.
Examples per operation: $STACK_GENERATED_EXAMPLES (default 40); derandomized, so CI runs the same cases each time.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from urllib.parse import quote, quote_from_bytes

import brotli
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.catalog.openapi import OPENAPI as CATALOG_OPENAPI
from services.common import stack_dns
from services.httpbin.openapi import OPENAPI as HTTPBIN_OPENAPI
from services.web.app import create_app as create_web_app
from services.web.openapi import OPENAPI as WEB_OPENAPI
from tests import inprocess, service_process

EXAMPLES = int(os.environ.get("STACK_GENERATED_EXAMPLES", "40"))  # per operation
OPENAPIS = {"web": WEB_OPENAPI, "catalog": CATALOG_OPENAPI, "httpbin": HTTPBIN_OPENAPI}
TRIED: Counter[str] = Counter()  # cases sent, by service (printed at the end of each test)
FIVE_XX: Counter[str] = Counter()


@dataclass(frozen=True)
class Exempt:
    service: str
    path: str  # a regular expression over the request's path
    statuses: str  # a regular expression over the status code
    why: str


EXEMPT: tuple[Exempt, ...] = (
    Exempt("httpbin", r"/httpbin/status/.*", r"\d+", "the client chooses the status; httpbin.org's bodies"),
    Exempt("httpbin", r"/httpbin/unstable", r"500", "fails at the failure_rate the client asks for (go-httpbin)"),
    Exempt("httpbin", r"/httpbin/drip", r"[45]\d\d", "?code= is the status the client asks for"),
    Exempt("httpbin", r"/httpbin/(basic-auth|bearer|digest-auth)/?.*", r"401",
           "httpbin.org's bodiless challenges: clients under test expect exactly those"),
    Exempt("httpbin", r"/httpbin/range/.*", r"416", "httpbin.org's bodiless 416 with Content-Range: bytes */n"),
    Exempt("web", r"/web/(fanout|orders)", r"502", "needs httpbin or catalog, which this test does not run: "
           "a gateway's 502 is the right answer"),
    Exempt("catalog", r"/catalog/fanout", r"502", "needs httpbin, which this test does not run"),
)

# Parameters that make a request wait (seconds or milliseconds): drawn only from values that answer at once
# (zero, or malformed), so a run stays in seconds; their bounds are tested where each endpoint is.
WAITS = {"ms", "duration", "delay", "n@/httpbin/delay/{n}", "delay@/catalog/fanout", "delay@/web/fanout"}
QUICK_DEFAULTS = {"/httpbin/sse": {"duration": "0"}, "/httpbin/drip": {"duration": "0"},
                  "/httpbin/fanout": {"delay": "0"}, "/web/fanout": {"delay": "0"}, "/catalog/fanout": {"delay": "0"}}


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    query: tuple[str, ...]  # the query parameters it declares
    media_types: tuple[str, ...]  # the request body's, as declared


def operations(service: str) -> list[Operation]:
    """Every operation in the service's OpenAPI document."""
    found = []
    for path, item in OPENAPIS[service]["paths"].items():
        shared = item.get("parameters", [])
        for method, operation in item.items():
            if method == "parameters":
                continue
            params = [*shared, *operation.get("parameters", [])]
            found.append(Operation(method.upper(), path, tuple(p["name"] for p in params if p.get("in") == "query"),
                                   tuple(operation.get("requestBody", {}).get("content", {}))))
    return sorted(found, key=lambda o: (o.template, o.method))


# ---------------------------------------------------------------- values

HUGE_DIGITS = st.integers(19, 5000).map(lambda k: "9" * k)
NUMBERISH = st.sampled_from(["0", "-0", "00", "-1", "1e3", "0x10", "1.5", " 5", "5 ", "+5", "1_000", "nan", "inf",
                             "\u0663", "\u00b2", "\uff15", "9" * 4301, "18446744073709551616", ""])
NUMBERS = st.one_of(st.integers(-(10**6), 10**20).map(str), HUGE_DIGITS, NUMBERISH)
# Unicode a client can send: lone surrogates, NUL and controls, RTL/bidi marks, 4-byte characters, combining.
AWKWARD = st.sampled_from(["\ud800", "\udfff", "\x00", "\x1b", "\u202e", "\u200f", "\U0001f600", "\U0010ffff",
                           "e\u0301", "\ufeff", "\u2028", "\\", "\"", "'", "%", "/", "..", "<script>", "é"])
TEXT = st.lists(st.one_of(AWKWARD, st.text(max_size=8)), max_size=6).map("".join)
QUICK = st.one_of(st.just("0"), NUMBERISH.filter(lambda v: v not in ("1.5", "+5")), HUGE_DIGITS)


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate as the 3 bytes a careless encoder writes


PATH_VALUES = st.one_of(NUMBERS, TEXT.map(lambda t: quote(utf8(t), safe="")),
                        st.binary(max_size=12).map(lambda b: quote_from_bytes(b, safe="")))
QUERY_VALUES = st.one_of(NUMBERS, TEXT.map(lambda t: quote(utf8(t), safe="")),
                         st.binary(max_size=12).map(lambda b: quote_from_bytes(b, safe="")),
                         st.sampled_from(["true", "false", "http://example.com/", "/get", "//evil.example", "%zz"]))
# Header octets: visible ASCII, space, tab and obs-text (0x80-0xFF, which servers decode as Latin-1 or escape).
OCTETS = st.binary(max_size=40).map(lambda b: bytes(c for c in b if c in (9, 32) or 33 <= c <= 126 or c >= 128))
ETAGS = st.lists(st.one_of(st.sampled_from(['"abc"', 'W/"abc"', "*", '"range26"', "abc", '""', 'W/""', '"x",']),
                           OCTETS.map(lambda b: '"' + b.decode("latin-1") + '"')), min_size=1, max_size=3)
DATES = st.one_of(st.sampled_from(["Sat, 28 Nov 2026 00:00:00 GMT", "Sun, 06 Nov 1994 08:49:37 GMT",
                                   "Fri, 31 Dec 99999 23:59:59 GMT", "not a date", "0", "-1"]), NUMBERS)
RANGES = st.one_of(
    st.tuples(st.one_of(st.just(""), NUMBERS), st.one_of(st.just(""), NUMBERS))
    .map(lambda pair: f"bytes={pair[0]}-{pair[1]}"),
    st.sampled_from(["bytes=0-1,3-4", "bytes=-", "items=0-1", "bytes=--1", "bytes= 1-2"]))
CREDENTIALS = st.one_of(
    st.binary(max_size=30).map(lambda b: "Basic " + base64.b64encode(b).decode()),
    OCTETS.map(lambda b: "Basic " + b.decode("latin-1")),
    st.sampled_from([inprocess.CATALOG_OPERATOR, "Bearer web-token", "Bearer ", "bearer x", "Basic", "Digest"]),
    st.tuples(TEXT, NUMBERS, OCTETS).map(lambda t: f'Digest username="{t[0]}", realm="httpbin", nonce="n", '
                                                   f'uri="/x", response="{t[2].decode("latin-1")}", nc={t[1]}, '
                                                   'qop=auth, cnonce="c"'),
)
COOKIES = st.lists(st.tuples(st.sampled_from(["sid", "stale_after", "last_nonce", "fake", "a", "$Version", ""]),
                             st.one_of(NUMBERS, OCTETS.map(lambda b: b.decode("latin-1")))),
                   min_size=1, max_size=4).map(lambda pairs: "; ".join(f"{n}={v}" for n, v in pairs))
HEADER_VALUES: dict[str, st.SearchStrategy[str]] = {
    "Range": RANGES,
    "If-None-Match": ETAGS.map(", ".join),
    "If-Match": ETAGS.map(", ".join),
    "If-Modified-Since": DATES,
    "If-Unmodified-Since": DATES,
    "If-Range": st.one_of(DATES, ETAGS.map(", ".join)),
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "x-unknown", "gzip, br", "GZIP", ""]),
    "Cookie": COOKIES,
    "Authorization": CREDENTIALS,
    "Idempotency-Key": st.one_of(TEXT, OCTETS.map(lambda b: b.decode("latin-1")), st.just("k" * 300)),
    "X-Request-ID": st.one_of(TEXT, OCTETS.map(lambda b: b.decode("latin-1")), st.just("r" * 129)),
    "Accept": st.sampled_from(["*/*", "application/json", "text/html", "image/webp;q=0, */*;q=0.1", "x/y;q=nan",
                               "application/json;q=2", "", "image/*"]),
    "Origin": st.sampled_from(["http://evil.example", "null", "http://127.0.0.1", ""]),
    "Sec-Fetch-Site": st.sampled_from(["cross-site", "same-origin", "none", "same-site"]),
    "Last-Event-ID": NUMBERS,
    "Content-Length": st.sampled_from(["-1", "abc", "1e3", "+0", "0x10", "9" * 30, "0, 0", " "]),
}
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False,
                         allow_infinity=False), TEXT)
JSON_DOCUMENTS = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(TEXT, st.sampled_from(
        ["name", "price", "stock", "email", "password", "quantity", "lines", "item_id", "id"])), inner, max_size=5)),
    max_leaves=12)


def json_text(document: object) -> bytes:
    """JSON with every non-ASCII character escaped, so a lone surrogate travels as the escape "\\ud800" (what a
    JavaScript client's JSON.stringify sends) rather than as bytes no decoder would take."""
    return json.dumps(document).encode()


DOCUMENT_SHAPES = st.one_of(
    # Shapes that pass the services' first checks (an "@", 8 characters, a non-empty name), so that the text
    # and numbers in them reach the code that stores, hashes and echoes them.
    st.builds(lambda e, p: {"email": e, "password": p}, TEXT.map(lambda t: t + "@x.example"),
              TEXT.map(lambda t: t + "long enough")),
    st.builds(lambda n, p, s: {"name": n, "price": p, "stock": s}, TEXT.map(lambda t: "n" + t),
              st.integers(-5, 2**70), st.one_of(st.integers(0, 9), NUMBERS)),
    st.builds(lambda q: {"quantity": q}, st.one_of(st.integers(-5, 2**70), TEXT)),
    st.builds(lambda i, q: {"lines": [{"item_id": i, "quantity": q}]}, st.integers(-5, 2**70), st.integers(-5, 99)),
    JSON_DOCUMENTS)
BODIES = st.one_of(DOCUMENT_SHAPES.map(json_text), st.binary(max_size=64),
                   st.sampled_from([b"", b"{", b'{"a": NaN}', b"[" * 5000, b'{"a": 1e999}', b"1" * 5000,
                                    b'"\\ud800"', b'{"name": "\xed\xa0\x80"}', b"\xff\xfe"]))
MEDIA_TYPES = st.sampled_from(["application/json", "application/merge-patch+json", "application/x-www-form-urlencoded",
                               "multipart/form-data; boundary=b", "multipart/form-data", "text/plain",
                               "application/octet-stream", "application/json; charset=latin-1", None])
CODINGS = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def raw(self) -> bytes:
        head = [f"{self.method} {self.target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        lines = [line.encode() for line in head]
        lines += [name.encode() + b": " + utf8_or_latin1(value) for name, value in self.headers]
        if not any(name.lower() == "content-length" for name, _ in self.headers):
            lines.append(f"Content-Length: {len(self.body)}".encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


def utf8_or_latin1(value: str) -> bytes:
    """A header value's octets: Latin-1 where it fits (obs-text as is), else UTF-8 (surrogates passed through)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return utf8(value)


@st.composite
def requests(draw: st.DrawFn, service: str, operation: Operation, session: str) -> Request:
    method, template, query_names = operation.method, operation.template, operation.query
    if draw(st.integers(0, 9)) == 0:
        method = draw(st.sampled_from(["HEAD", "OPTIONS", "TRACE", "PROPFIND", "DELETE", "PATCH"]))

    def value_for(name: str, strategy: st.SearchStrategy[str]) -> str:
        return draw(QUICK if name in WAITS or f"{name}@{template}" in WAITS else strategy)

    path = re.sub(r"\{([^}]+)\}", lambda m: value_for(m.group(1), PATH_VALUES), template)
    query = dict(QUICK_DEFAULTS.get(template, {}))
    for name in draw(st.lists(st.sampled_from([*query_names, "n", "seed", "limit", "cursor", "code", "url",
                                                "status_code", "absolute", "count", "numbytes", "chunk_size",
                                                "failure_rate", "require-cookie", "event", "retry"]),
                              max_size=4, unique=True)):
        query[name] = value_for(name, QUERY_VALUES)
    target = path + ("?" + "&".join(f"{quote(k)}={v}" for k, v in query.items()) if query else "")
    names = draw(st.lists(st.sampled_from(sorted(HEADER_VALUES)), max_size=3, unique=True))
    # CR and LF end a field line: a value cannot hold them (what arrives is a new line, i.e. another field).
    headers = [(name, re.sub(r"[\r\n]", "", draw(HEADER_VALUES[name]))) for name in names]
    if service == "catalog" and not any(n == "Authorization" for n, _ in headers) and draw(st.booleans()):
        headers.append(("Authorization", inprocess.CATALOG_OPERATOR))
    if service == "web" and draw(st.booleans()):
        headers.append(("Cookie", f"sid={session}"))
    body = b""
    if method in ("POST", "PUT", "PATCH", "DELETE") and draw(st.integers(0, 9)) > 0:
        # Mostly what the operation takes (a document of the right shape, as its declared media type), so that
        # the text and numbers inside get past the first checks; otherwise anything.
        body = draw(st.one_of(DOCUMENT_SHAPES.map(json_text), DOCUMENT_SHAPES.map(json_text), BODIES))
        declared = st.sampled_from(operation.media_types) if operation.media_types else MEDIA_TYPES
        media_type = draw(st.one_of(declared, declared, MEDIA_TYPES))
        if media_type:
            headers.append(("Content-Type", media_type))
        coding = next((v for n, v in headers if n == "Content-Encoding"), "")
        if coding in CODINGS and draw(st.booleans()):
            body = CODINGS[coding](body)  # a correctly coded body too, not only a mislabelled one
    return Request(method, target, headers, body)


# ---------------------------------------------------------------- the property

def exempt(service: str, path: str, status: int) -> Exempt | None:
    for row in EXEMPT:
        if row.service == service and re.fullmatch(row.path, path) and re.fullmatch(row.statuses, str(status)):
            return row
    return None


def check(service: str, request: Request, status: int, content_type: str, body: bytes) -> None:
    TRIED[service] += 1
    path = request.target.split("?", 1)[0]
    if exempt(service, path, status):
        return
    if status >= 500:
        FIVE_XX[service] += 1
    assert status < 500, (service, request, status, body[:300])
    if 400 <= status < 500 and request.method != "HEAD":
        assert content_type.split(";")[0].strip() == "application/problem+json", (request, status, content_type,
                                                                                   body[:200])
        assert json.loads(body)["status"] == status, (request, body[:200])


@pytest.fixture(scope="module", autouse=True)
def no_other_services():
    """The services' calls to each other (fan-outs, web's orders) find no name: nothing else runs here, and no
    lookup leaves the machine. They answer 502 at once (EXEMPT)."""

    def nowhere(name: str) -> list[str]:
        raise stack_dns.NameNotFound(f"{name}: not running in this test")

    async def nowhere_async(name: str) -> list[str]:
        return nowhere(name)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stack_dns.resolver, "addresses", nowhere)
        patch.setattr(stack_dns.resolver, "addresses_async", nowhere_async)
        yield
    # The figures for a report (pytest -s shows them): requests sent and 5xx answers, by service.
    print(f"\ngenerated requests by service: {dict(TRIED)}; answered 5xx: {dict(FIVE_XX) or 0}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    directory = tmp_path_factory.mktemp("generated")
    with inprocess.httpbin(directory) as httpbin_port, inprocess.catalog(directory) as catalog_port:
        yield {"httpbin": httpbin_port, "catalog": catalog_port}


@pytest.fixture(scope="module")
def web_client(tmp_path_factory):
    app = create_web_app({"DATABASE": str(tmp_path_factory.mktemp("generated-web") / "web.sqlite3")})
    client = app.test_client(use_cookies=False)
    credentials = {"email": "fuzz@example.com", "password": "correct horse"}
    client.post("/web/signup", json=credentials)
    login = client.post("/web/login", json=credentials)
    session = re.search(r"sid=([^;]+)", login.headers["Set-Cookie"]).group(1)
    yield client, session
    app.extensions["store"].database.close()


# web under the other WSGI servers, on their own HTTP ports: (LAUNCH variant, what `check` calls the service).
WEB_UNDER = {f"web under {name}": variant for variant, (service, env) in service_process.LAUNCH.items()
             if service == "web" and env for name in [env["WEB_SERVER"]]}


@pytest.fixture(scope="module")
def web_servers(tmp_path_factory):
    """web under uWSGI and granian, each with a signed-in session: name -> (port, session id)."""
    import contextlib

    import requests as http_client

    with contextlib.ExitStack() as running:
        found = {}
        for name, variant in WEB_UNDER.items():
            started = running.enter_context(service_process.running(variant, tmp_path_factory.mktemp(variant)))
            base = f"http://{service_process.HOST}:{started.port}/web"
            credentials = {"email": "fuzz@example.com", "password": "correct horse"}
            http_client.post(f"{base}/signup", json=credentials, timeout=10)
            login = http_client.post(f"{base}/login", json=credentials, timeout=10)
            found[name] = (started.port, login.cookies["sid"])
        yield found


GENERATED = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.function_scoped_fixture])
# Half as many per operation under each other server (a real server's round trip each; CI's time): the app is
# the same, what differs is the server's parser and environ.
GENERATED_ELSEWHERE = settings(GENERATED, max_examples=max(EXAMPLES // 2, 10))


OPERATIONS = [(service, operation) for service in ("httpbin", "catalog", "web") for operation in operations(service)]
WEB_ELSEWHERE = [(name, operation) for name in WEB_UNDER for operation in operations("web")]


def operation_id(case: tuple[str, Operation]) -> str:
    service, operation = case
    return f"{service} {operation.method} {operation.template}"


@pytest.mark.parametrize("case", OPERATIONS, ids=operation_id)
def test_generated_requests_never_get_a_5xx_and_every_4xx_is_a_problem(servers, web_client, case):
    service, operation = case
    client, session = web_client

    @GENERATED
    @given(request=requests(service, operation, session))
    def one(request: Request) -> None:
        if service != "web":
            answer = inprocess.exchange(servers[service], request.raw())
            check(service, request, answer.status, answer.headers.get("Content-Type", ""), answer.body)
            return
        # web through Flask's test client, given what gunicorn hands a WSGI app: header octets as Latin-1
        # (undecodable UTF-8 arrives as mojibake, not surrogates); Werkzeug's client sets Content-Length itself.
        path, _, query = request.target.partition("?")
        headers = [(name, utf8_or_latin1(value).decode("latin-1")) for name, value in request.headers
                   if name.lower() != "content-length"]
        response = client.open(path, method=request.method, query_string=query, headers=headers, data=request.body)
        check("web", request, response.status_code, response.headers.get("Content-Type", ""), response.get_data())

    one()


def with_uwsgis_echo_undone(request: Request, received: bytes) -> bytes:
    """uWSGI 2.0's HTTP socket starts its status line with the request line's protocol field as sent: for a
    target with a space in it ("GET /a 5 HTTP/1.1") that is "5 HTTP/1.1", and the reply starts "5 HTTP/1.1 400"
    (the guard's 400 problem, services/web/middleware.py, in an invalid status line). Behind nginx no such line
    gets through; here the echo is counted and undone so that the rest of the answer is still checked."""
    echoed = request.raw().split(b"\r\n", 1)[0].split(b" ", 2)[2]
    if echoed != b"HTTP/1.1" and received.startswith(echoed + b" "):
        TRIED["uWSGI status lines echoing the request's protocol field"] += 1
        return b"HTTP/1.1" + received[len(echoed):]
    return received


@pytest.mark.parametrize("case", WEB_ELSEWHERE, ids=operation_id)
def test_generated_requests_to_web_under_uwsgi_and_granian_never_get_a_5xx(web_servers, case):
    """The same property with web's own port under the other servers, every octet as generated. Where the
    server's own parser refuses a request before the app (granian: a bodiless 400), that 4xx is its answer."""
    name, operation = case
    port, session = web_servers[name]

    @GENERATED_ELSEWHERE
    @given(request=requests("web", operation, session))
    def one(request: Request) -> None:
        received = inprocess.raw_exchange(port, request.raw())
        if name == "web under uwsgi":
            received = with_uwsgis_echo_undone(request, received)
        try:
            answer = inprocess.parse(received, request.method)
        except Exception as error:  # an answer http.client cannot parse is a defect too: show both sides
            raise AssertionError(f"{name}: {error!r} for {request.raw()[:600]!r}, answered {received[:600]!r}") \
                from error
        content_type = answer.headers.get("Content-Type", "")
        if name == "web under granian" and 400 <= answer.status < 500 and not content_type and not answer.body:
            TRIED[name] += 1  # granian's parser refused it (tests/unit/test_direct_ports.py: BARE_PARSE_ERRORS)
            return
        check("web", request, answer.status, content_type, answer.body)

    one()


def test_every_exemption_names_an_operation_that_exists():
    """No row outlives its endpoint: each exemption's path matches an operation of its service."""
    for row in EXEMPT:
        templates = [re.sub(r"\{[^}]+\}", "x", o.template) for o in operations(row.service)]
        assert any(re.fullmatch(row.path, template) for template in templates), row
