"""One test per place of each class of bad input real clients found: repeated header fields, content-coded
request bodies, text no UTF-8 can hold, numbers without bounds. Each request is what a real client sent (curl
with two -H lines, a JavaScript client's JSON.stringify of a lone surrogate, a gzip-sending SDK); each answer
is checked for what RFC 9110 or the reference httpbin says, never a 5xx."""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import brotli
import pytest

from services.web.app import create_app as create_web_app
from tests import inprocess

LONE_SURROGATE = b'"\\ud800"'  # JSON text: valid syntax, but no Unicode string (RFC 8259 8.2)
CODINGS = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}


@pytest.fixture(scope="module")
def httpbin_port(tmp_path_factory):
    with inprocess.httpbin(tmp_path_factory.mktemp("httpbin")) as port:
        yield port


@pytest.fixture(scope="module")
def catalog_port(tmp_path_factory):
    with inprocess.catalog(tmp_path_factory.mktemp("catalog")) as port:
        yield port


def send(port: int, method: str, target: str, *header_lines: bytes, body: bytes = b"") -> inprocess.Answer:
    head = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1:8080", b"Connection: close",
            f"Content-Length: {len(body)}".encode(), *header_lines]
    return inprocess.exchange(port, b"\r\n".join(head) + b"\r\n\r\n" + body)


def problem(answer: inprocess.Answer, status: int) -> dict:
    assert answer.status == status, (answer.status, answer.body[:300])
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    document = json.loads(answer.body)
    assert document["status"] == status
    return document


# ---------------------------------------------------------------- repeated header fields (RFC 9110 5.3)

@pytest.mark.parametrize("method,path", [("GET", "/headers"), ("GET", "/get"), ("GET", "/anything"),
                                         ("POST", "/post"), ("PUT", "/put"), ("PATCH", "/anything/x"),
                                         ("GET", "/delay/0"), ("GET", "/cache"), ("GET", "/etag/t"),
                                         ("GET", "/cache/5")])
def test_every_header_echo_combines_a_repeated_field(httpbin_port, method, path):
    answer = send(httpbin_port, method, "/httpbin" + path, b"Foo: bar", b"Foo: baz")
    assert answer.status == 200
    assert json.loads(answer.body)["headers"]["Foo"] == "bar,baz"


@pytest.mark.parametrize("path", ["/gzip", "/deflate", "/brotli"])
def test_the_encoded_echoes_combine_a_repeated_field_too(httpbin_port, path):
    answer = send(httpbin_port, "GET", "/httpbin" + path, b"Foo: bar", b"Foo: baz")
    decode = {"gzip": gzip.decompress, "deflate": zlib.decompress, "br": brotli.decompress}
    document = json.loads(decode[answer.headers["Content-Encoding"]](answer.body))
    assert document["headers"]["Foo"] == "bar,baz"


def test_cookies_on_two_lines_are_all_echoed(httpbin_port):
    answer = send(httpbin_port, "GET", "/httpbin/cookies", b"Cookie: a=1", b"Cookie: b=2; c=3")
    assert json.loads(answer.body)["cookies"] == {"a": "1", "b": "2", "c": "3"}
    headers = json.loads(send(httpbin_port, "GET", "/httpbin/headers", b"Cookie: a=1", b"Cookie: b=2").body)
    assert headers["headers"]["Cookie"] == "a=1; b=2"  # RFC 6265 5.4: cookies join with "; "


def test_a_repeated_query_parameter_is_a_list_in_every_echo(httpbin_port):
    for path in ("/get", "/anything", "/response-headers"):
        answer = send(httpbin_port, "GET", f"/httpbin{path}?a=1&a=2&b=3")
        document = json.loads(answer.body)
        assert (document.get("args") or document)["a"] == ["1", "2"], path


def test_validators_on_two_lines_are_one_list(httpbin_port):
    assert send(httpbin_port, "GET", "/httpbin/etag/abc", b'If-None-Match: "x"', b'If-None-Match: "abc"').status == 304
    assert send(httpbin_port, "GET", "/httpbin/etag/abc", b'If-Match: "x"', b'If-Match: "abc"').status == 200
    assert send(httpbin_port, "GET", "/httpbin/image", b"Accept: text/html", b"Accept: image/webp").headers[
        "Content-Type"] == "image/webp"


def test_the_host_with_its_port_is_echoed_as_sent(httpbin_port):
    """In-process the service sees the client's Host; behind nginx it is nginx's Host $forwarded_host
    (tests/config/test_nginx.py checks nginx forwards the port)."""
    assert json.loads(send(httpbin_port, "GET", "/httpbin/headers").body)["headers"]["Host"] == "127.0.0.1:8080"


# ---------------------------------------------------------------- content-coded request bodies

@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
@pytest.mark.parametrize("method,path", [("POST", "/post"), ("PUT", "/put"), ("PATCH", "/patch"),
                                         ("DELETE", "/delete"), ("POST", "/anything"), ("POST", "/delay/0")])
def test_httpbin_echoes_a_coded_body_as_the_bytes_sent(httpbin_port, coding, method, path):
    sent = CODINGS[coding](b'{"a": 1}')
    answer = send(httpbin_port, method, "/httpbin" + path, b"Content-Type: application/json",
                  f"Content-Encoding: {coding}".encode(), body=sent)
    assert answer.status == 200
    document = json.loads(answer.body)
    try:
        expected = sent.decode("utf-8")
    except UnicodeDecodeError:
        expected = "data:application/octet-stream;base64," + base64.b64encode(sent).decode()
    assert document["data"] == expected
    assert document["json"] is None and document["form"] == {}


@pytest.mark.parametrize("coding,body", [("gzip", b"\x00not gzip\xff"), ("deflate", b"junk"), ("br", b"\xff" * 9),
                                         ("x-unknown", b"{}"), ("gzip, br", b"{}")])
def test_a_mislabelled_coded_body_is_echoed_never_a_500(httpbin_port, coding, body):
    answer = send(httpbin_port, "POST", "/httpbin/post", b"Content-Type: application/json",
                  f"Content-Encoding: {coding}".encode(), body=body)
    assert answer.status == 200 and json.loads(answer.body)["json"] is None


def test_bins_refuse_a_coded_body_with_415_and_accept_encoding(httpbin_port):
    answer = send(httpbin_port, "POST", "/httpbin/bins", b"Content-Type: application/json",
                  b"Content-Encoding: gzip", body=gzip.compress(b'{"a": 1}'))
    problem(answer, 415)
    assert answer.headers["Accept-Encoding"] == "identity"
    # identity is no coding at all
    assert send(httpbin_port, "POST", "/httpbin/bins", b"Content-Type: application/json",
                b"Content-Encoding: identity", body=b'{"a": 1}').status == 201


@pytest.fixture
def web(tmp_path):
    app = create_web_app({"TESTING": True, "DATABASE": tmp_path / "web.sqlite3"})
    yield app.test_client()
    app.extensions["store"].database.close()


CREDENTIALS = {"email": "ada@example.com", "password": "correct horse"}


@pytest.mark.parametrize("path", ["/web/signup", "/web/login"])
def test_web_refuses_a_coded_body_with_415(web, path):
    response = web.post(path, data=gzip.compress(json.dumps(CREDENTIALS).encode()),
                        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert response.status_code == 415 and response.content_type == "application/problem+json"
    assert response.headers["Accept-Encoding"] == "identity"


def test_web_cart_and_orders_refuse_a_coded_body_with_415(web):
    web.post("/web/signup", json=CREDENTIALS)
    web.post("/web/login", json=CREDENTIALS)
    coded = {"Content-Type": "application/json", "Content-Encoding": "deflate"}
    assert web.put("/web/cart/items/1", data=zlib.compress(b'{"quantity": 1}'), headers=coded).status_code == 415
    assert web.post("/web/orders", data=zlib.compress(b'{"lines": []}'), headers=coded).status_code == 415


OPERATOR = f"Authorization: {inprocess.CATALOG_OPERATOR}".encode()


@pytest.mark.parametrize("method,path,media", [("POST", "/catalog/items", "application/json"),
                                               ("PUT", "/catalog/items/1", "application/json"),
                                               ("PATCH", "/catalog/items/1", "application/merge-patch+json")])
def test_catalog_refuses_a_coded_body_with_415(catalog_port, method, path, media):
    answer = send(catalog_port, method, path, OPERATOR, f"Content-Type: {media}".encode(), b"Content-Encoding: br",
                  b"If-Match: *", body=brotli.compress(b'{"name": "pen", "price": 1, "stock": 1}'))
    problem(answer, 415)
    assert answer.headers["Accept-Encoding"] == "identity"


# ---------------------------------------------------------------- text no UTF-8 can hold

@pytest.mark.parametrize("path", ["/web/signup", "/web/login"])
@pytest.mark.parametrize("member", ["email", "password"])
def test_web_refuses_a_lone_surrogate_in_credentials_with_400(web, path, member):
    document = json.dumps({**CREDENTIALS, member: "x@y"}).encode().replace(b'"x@y"', b'"ada\\ud800@x.example"')
    response = web.post(path, data=document, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.content_type == "application/problem+json"
    assert "surrogate" in response.get_json()["detail"]


def test_web_cart_refuses_a_lone_surrogate(web):
    web.post("/web/signup", json=CREDENTIALS)
    web.post("/web/login", json=CREDENTIALS)
    response = web.put("/web/cart/items/1", data=b'{"quantity": 1, "\\udfff": 1}',
                       headers={"Content-Type": "application/json"})
    assert response.status_code == 400


@pytest.mark.parametrize("method,path,media,body", [
    ("POST", "/catalog/items", "application/json", b'{"name": "pen\\ud800", "price": 1, "stock": 1}'),
    ("PUT", "/catalog/items/1", "application/json", b'{"name": "\\udc00pen", "price": 1, "stock": 1}'),
    ("PATCH", "/catalog/items/1", "application/merge-patch+json", b'{"name": ' + LONE_SURROGATE + b"}"),
])
def test_catalog_refuses_a_lone_surrogate_with_400(catalog_port, method, path, media, body):
    problem(send(catalog_port, method, path, OPERATOR, f"Content-Type: {media}".encode(), b"If-Match: *",
                 body=body), 400)


def test_a_paired_surrogate_escape_is_text_and_stored(catalog_port):
    answer = send(catalog_port, "POST", "/catalog/items", OPERATOR, b"Content-Type: application/json",
                  body=b'{"name": "cup \\ud83d\\ude00", "price": 1, "stock": 1}')
    assert answer.status == 201 and json.loads(answer.body)["name"] == "cup \U0001f600"


def test_bins_refuse_a_lone_surrogate_and_a_header_that_cannot_be_stored(httpbin_port):
    problem(send(httpbin_port, "POST", "/httpbin/bins", b"Content-Type: application/json",
                 body=b'{"k": ' + LONE_SURROGATE + b"}"), 400)
    # An Idempotency-Key of undecodable bytes: aiohttp keeps them as surrogate escapes; never a 500.
    answer = send(httpbin_port, "POST", "/httpbin/bins", b"Content-Type: application/json",
                  b"Idempotency-Key: k\xff\xfe", body=b"{}")
    assert 400 <= answer.status < 500


def test_httpbin_still_echoes_what_it_was_sent(httpbin_port):
    """The echo is no store: like httpbin.org it parses the surrogate and sends the escape back."""
    answer = send(httpbin_port, "POST", "/httpbin/post", b"Content-Type: application/json",
                  body=b'{"k": ' + LONE_SURROGATE + b"}")
    assert answer.status == 200 and b'"k": "\\ud800"' in answer.body


@pytest.mark.parametrize("header", [b"Authorization: Basic \x80\xff", b"Authorization: Basic \xc3\xa9",
                                    b"Authorization: Digest username=\"\xff\", response=\"\xe9\", nonce=\"n\", "
                                    b"uri=\"/httpbin/digest-auth/auth/u/p\", realm=\"httpbin\""])
@pytest.mark.parametrize("path", ["/httpbin/basic-auth/u/p", "/httpbin/hidden-basic-auth/u/p",
                                  "/httpbin/digest-auth/auth/u/p"])
def test_credentials_with_non_ascii_octets_are_refused_never_a_500(httpbin_port, header, path):
    assert send(httpbin_port, "GET", path, header).status in (401, 404)


def test_a_cookie_of_undecodable_bytes_is_no_500(httpbin_port):
    for path in ("/httpbin/cookies", "/httpbin/digest-auth/auth/u/p", "/httpbin/headers"):
        assert send(httpbin_port, "GET", path, b"Cookie: stale_after=\xb2; a=\xff").status in (200, 401), path


# ---------------------------------------------------------------- numbers without bounds

@pytest.mark.parametrize("range_header,status,content_range", [
    ("bytes=" + "9" * 5000 + "-", 416, "bytes */26"),
    ("bytes=0-" + "9" * 5000, 206, "bytes 0-25/26"),
    ("bytes=-" + "9" * 5000, 206, "bytes 0-25/26"),
    ("bytes=" + "0" * 30 + "3-" + "0" * 30 + "5", 206, "bytes 3-5/26"),  # leading zeros are still digits
    ("bytes=-0", 416, "bytes */26"),
])
def test_range_positions_of_any_length(httpbin_port, range_header, status, content_range):
    answer = send(httpbin_port, "GET", "/httpbin/range/26", f"Range: {range_header}".encode())
    assert answer.status == status and answer.headers["Content-Range"] == content_range


@pytest.mark.parametrize("count", ["9" * 5000, "\u00b2", "\u0663", "-1", "18446744073709551616"])
def test_the_digest_stale_after_cookie_is_a_bounded_count(count):
    from services.httpbin.digest import _next_stale_after

    assert _next_stale_after(count) == "never"
    assert _next_stale_after("3") == "2" and _next_stale_after("0") == "0"


@pytest.mark.parametrize("path", ["/httpbin/redirect/", "/httpbin/relative-redirect/",
                                  "/httpbin/absolute-redirect/", "/httpbin/links/", "/httpbin/bytes/",
                                  "/httpbin/stream/", "/httpbin/cache/", "/httpbin/delay/"])
def test_path_numbers_of_any_length_are_a_400(httpbin_port, path):
    problem(send(httpbin_port, "GET", path + "9" * 5000), 400)


def test_web_and_catalog_path_numbers_of_any_length(web, catalog_port):
    assert web.get("/web/orders/" + "9" * 5000).status_code == 404
    assert web.get("/web/stream/" + "9" * 5000).status_code == 400
    problem(send(catalog_port, "GET", "/catalog/items/" + "9" * 5000), 404)
    problem(send(catalog_port, "GET", "/catalog/stream/" + "9" * 5000), 400)


@pytest.mark.parametrize("query", ["limit", "cursor"])
def test_query_numbers_of_any_length(web, catalog_port, query):
    problem(send(catalog_port, "GET", f"/catalog/items?{query}=" + "9" * 5000), 400)
    web.post("/web/signup", json=CREDENTIALS)
    web.post("/web/login", json=CREDENTIALS)
    assert web.get(f"/web/orders?{query}=" + "9" * 5000).status_code == 400


@pytest.mark.parametrize("body", [b'{"quantity": ' + b"9" * 5000 + b"}", b'{"quantity": 1e999}',
                                  b'{"quantity": ' + b"9" * 30 + b"}"])
def test_body_numbers_of_any_length(web, body):
    web.post("/web/signup", json=CREDENTIALS)
    web.post("/web/login", json=CREDENTIALS)
    status = web.put("/web/cart/items/1", data=body, headers={"Content-Type": "application/json"}).status_code
    assert status in (400, 422)


def test_header_numbers_of_any_length(httpbin_port, catalog_port):
    problem(send(httpbin_port, "GET", "/httpbin/sse?duration=0", b"Last-Event-ID: " + b"9" * 5000), 400)
    problem(send(catalog_port, "GET", "/catalog/json", b"Content-Length: " + b"9" * 5000), 400)
