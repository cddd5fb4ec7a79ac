"""The httpbin clone in-process: httpbin's JSON shapes and HTTP behaviours, table-driven where it fits."""

from __future__ import annotations

import base64
import gzip
import json

import pytest
from aiohttp.test_utils import TestServer

from services.httpbin.app import create_app


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(str(tmp_path / "httpbin.sqlite3")))


async def test_get_echoes_args_headers_origin_and_url(client):
    response = await client.get("/httpbin/get?a=1&b=2&b=3", headers={"X-Demo": "yes"})
    body = await response.json()
    assert set(body) == {"args", "headers", "origin", "url"}
    assert body["args"] == {"a": "1", "b": ["2", "3"]} and body["headers"]["X-Demo"] == "yes"
    assert body["url"].endswith("/httpbin/get?a=1&b=2&b=3") and body["origin"] == "127.0.0.1"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_body_methods_decode_json(client, method):
    response = await client.request(method, f"/httpbin/{method.lower()}", json={"k": [1, 2]})
    body = await response.json()
    assert response.status == 200
    assert set(body) == {"args", "data", "files", "form", "headers", "json", "origin", "url"}
    assert body["json"] == {"k": [1, 2]} and json.loads(body["data"]) == {"k": [1, 2]}


async def test_post_decodes_forms(client):
    body = await (await client.post("/httpbin/post", data={"name": "ada"})).json()
    assert body["form"] == {"name": "ada"} and body["json"] is None


async def test_wrong_method_on_a_method_endpoint_is_405(client):
    response = await client.post("/httpbin/get")
    assert response.status == 405 and response.headers["Allow"] == "OPTIONS, GET, HEAD"


async def test_anything_accepts_every_method_and_reports_it(client):
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        body = await (await client.request(method, "/httpbin/anything/x/y?q=1")).json()
        assert body["method"] == method and body["url"].endswith("/httpbin/anything/x/y?q=1")


@pytest.mark.parametrize(
    ("path", "key"),
    [("/httpbin/headers", "headers"), ("/httpbin/ip", "origin"), ("/httpbin/user-agent", "user-agent"),
     ("/httpbin/uuid", "uuid")],
)
async def test_inspection_endpoints(client, path, key):
    body = await (await client.get(path)).json()
    assert list(body) == [key]


@pytest.mark.parametrize(
    ("codes", "status", "header"),
    [("200", 200, None), ("201", 201, None), ("204", 204, None), ("302", 302, "Location"),
     ("401", 401, "WWW-Authenticate"), ("404", 404, None), ("418", 418, None), ("500", 500, None),
     ("503:1,500:0", 503, None)],
)
async def test_status_codes(client, codes, status, header):
    response = await client.get(f"/httpbin/status/{codes}", allow_redirects=False)
    assert response.status == status
    if header:
        assert header in response.headers


@pytest.mark.parametrize("codes", ["abc", "99", "600", "100", "\u0663\u0663\u0663", "200:nan", "200:inf,500:1",
                                   "200:1e400", "200:0,500:0", "200:-1", "2OO"])
async def test_status_rejects_non_codes(client, codes):
    response = await client.get(f"/httpbin/status/{codes}")
    assert response.status == 400 and response.headers["Content-Type"].startswith("application/problem+json")


async def test_delay_waits_and_reports(client):
    body = await (await client.get("/httpbin/delay/0.05")).json()
    assert body["delayed_seconds"] == 0.05
    assert (await client.get("/httpbin/delay/soon")).status == 400


async def test_stream_is_chunked_json_lines(client):
    response = await client.get("/httpbin/stream/3")
    assert response.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in response.headers
    lines = (await response.text()).splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1, 2]


async def test_drip_has_content_length_and_a_slow_body(client):
    response = await client.get("/httpbin/drip?duration=0.1&numbytes=5")
    assert response.headers["Content-Length"] == "5" and await response.read() == b"*****"


async def test_bytes_are_seedable(client):
    first = await (await client.get("/httpbin/bytes/16?seed=7")).read()
    again = await (await client.get("/httpbin/bytes/16?seed=7")).read()
    assert len(first) == 16 and first == again


@pytest.mark.parametrize(
    ("range_header", "status", "body", "content_range"),
    [(None, 200, b"abcdefghij", None), ("bytes=0-3", 206, b"abcd", "bytes 0-3/10"),
     ("bytes=8-", 206, b"ij", "bytes 8-9/10"), ("bytes=-3", 206, b"hij", "bytes 7-9/10"),
     ("bytes=20-30", 416, b"", "bytes */10"), ("lines=1-2", 416, b"", "bytes */10")],
)
async def test_range_requests(client, range_header, status, body, content_range):
    headers = {"Range": range_header} if range_header else {}
    response = await client.get("/httpbin/range/10", headers=headers)
    assert response.status == status and response.headers["Accept-Ranges"] == "bytes"
    assert await response.read() == body
    assert response.headers.get("Content-Range") == content_range


async def test_cookies_set_then_read_then_delete(client):
    response = await client.get("/httpbin/cookies/set?flavour=oat", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"] == "/httpbin/cookies"
    assert "flavour=oat" in response.headers["Set-Cookie"]
    body = await (await client.get("/httpbin/cookies", cookies={"flavour": "oat"})).json()
    assert body == {"cookies": {"flavour": "oat"}}
    deleted = await client.get("/httpbin/cookies/delete?flavour", allow_redirects=False)
    assert "Max-Age=0" in deleted.headers["Set-Cookie"] or "expires" in deleted.headers["Set-Cookie"].lower()


async def test_redirect_chain_ends_at_get(client):
    # on through /relative-redirect, as httpbin.org goes
    response = await client.get("/httpbin/redirect/2", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"] == "/httpbin/relative-redirect/1"
    final = await client.get("/httpbin/redirect/3")
    assert final.status == 200 and len(final.history) == 3


async def test_redirect_to(client):
    response = await client.get("/httpbin/redirect-to?url=/httpbin/get&status_code=307", allow_redirects=False)
    assert response.status == 307 and response.headers["Location"] == "/httpbin/get"


async def test_response_headers_are_set_from_the_query(client):
    response = await client.get("/httpbin/response-headers?X-Thing=1&X-Thing=2")
    assert response.headers.getall("X-Thing") == ["1", "2"]


@pytest.mark.parametrize("name", ["Content-Length", "transfer-encoding", "Connection", "Keep-Alive", "Upgrade", "TE",
                                  "Trailer", "X-Accel-Redirect", "x-accel-buffering"])
async def test_response_headers_cannot_set_framing_or_steer_nginx(client, name):
    response = await client.get(f"/httpbin/response-headers?{name}=5")
    assert response.status == 400 and (await response.json())["title"] == "Header not allowed"


@pytest.mark.parametrize("n", ["\u0663", "nan", "inf", "1e400", "-1", " 1", "1_0", "0x1"])
async def test_delay_takes_only_ascii_decimals(client, n):
    response = await client.get(f"/httpbin/delay/{n}")
    assert response.status == 400 and (await response.json())["title"] == "Invalid number"


async def test_multipart_forms_and_files_are_decoded(client):
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("a", "b")
    form.add_field("upload", b"file body\n", filename="f.txt", content_type="text/plain")
    response = await client.post("/httpbin/post", data=form)
    body = await response.json()
    assert response.status == 200 and body["form"] == {"a": "b"} and body["files"] == {"upload": "file body\n"}


@pytest.mark.parametrize("body", [b"garbage", b"--x\r\n\r\n\r\n--x--\r\n",
                                  b"--x\r\nContent-Disposition: form-data\r\n\r\nb\r\n--x--\r\n",
                                  b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb"])
async def test_malformed_multipart_is_a_400(client, body):
    response = await client.post("/httpbin/post", data=body,
                                 headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert response.status == 400 and (await response.json())["title"] == "Malformed multipart body"


@pytest.mark.parametrize("body", [b"[" * 5000 + b"]" * 5000, b'{"a": NaN}', b"[1e999]", b"1" * 5000, b"\xff\xfe["])
async def test_json_httpbin_cannot_parse_is_echoed_as_data_with_json_null(client, body):
    response = await client.post("/httpbin/post", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 200 and (await response.json())["json"] is None


async def test_cache_and_etag_validators(client):
    first = await client.get("/httpbin/cache")
    assert first.status == 200 and "Last-Modified" in first.headers and "ETag" in first.headers
    assert (await client.get("/httpbin/cache", headers={"If-None-Match": first.headers["ETag"]})).status == 304
    assert (await client.get("/httpbin/cache/30")).headers["Cache-Control"] == "public, max-age=30"
    assert (await client.get("/httpbin/etag/abc")).headers["ETag"] == '"abc"'
    assert (await client.get("/httpbin/etag/abc", headers={"If-None-Match": '"abc"'})).status == 304
    assert (await client.get("/httpbin/etag/abc", headers={"If-Match": '"zzz"'})).status == 412


async def test_basic_auth_and_bearer(client):
    good = base64.b64encode(b"ada:secret").decode()
    ok = await client.get("/httpbin/basic-auth/ada/secret", headers={"Authorization": f"Basic {good}"})
    assert ok.status == 200 and await ok.json() == {"authenticated": True, "user": "ada"}
    denied = await client.get("/httpbin/basic-auth/ada/secret")
    assert denied.status == 401 and denied.headers["WWW-Authenticate"].startswith("Basic")
    assert (await client.get("/httpbin/bearer")).headers["WWW-Authenticate"] == "Bearer"
    authorized = await client.get("/httpbin/bearer", headers={"Authorization": "Bearer t0k"})
    assert (await authorized.json())["token"] == "t0k"


async def test_gzip_is_really_gzipped(client):
    response = await client.get("/httpbin/gzip", auto_decompress=False)
    assert response.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(await response.read()))["gzipped"] is True


@pytest.mark.parametrize(
    ("path", "content_type", "needle"),
    [("/httpbin/html", "text/html", "Moby-Dick"), ("/httpbin/xml", "application/xml", "<slideshow"),
     ("/httpbin/encoding/utf8", "text/html", "浏览器"), ("/httpbin/robots.txt", "text/plain", "Disallow")],
)
async def test_formats(client, path, content_type, needle):
    response = await client.get(path)
    assert response.headers["Content-Type"].startswith(content_type) and needle in await response.text()


async def test_options_lists_allow(client):
    response = await client.options("/httpbin/post")
    assert response.status == 204 and response.headers["Allow"] == "OPTIONS, POST"


async def test_conn_counts_requests_on_one_connection(client):
    first = await (await client.get("/httpbin/conn")).json()
    second = await (await client.get("/httpbin/conn")).json()
    assert second["requests_on_this_connection"] == first["requests_on_this_connection"] + 1
    assert second["peer"] == first["peer"]  # the client's pool reused the connection


async def test_fanout_runs_the_fetches_concurrently(client):
    body = await (await client.get("/httpbin/fanout?n=5&delay=0")).json()
    assert body["n"] == 5 and [f["status"] for f in body["fetches"]] == [200] * 5
    assert "gather" in body["model"]


@pytest.mark.parametrize("target, allowed", [
    ("/httpbin/get", True), ("get", True), ("http://{host}/httpbin/get", True),
    ("https://evil.example/", False), ("//evil.example/", False), ("/\\evil.example/", False),
    ("javascript:alert(1)", False), ("http://evil.example@{host}.evil.example/", False),
    ("http://[zz]/", False), ("http://[::1", False),  # not URLs at all: a 400, not urlsplit's ValueError
])
async def test_redirect_to_goes_only_here_never_anywhere(client, target, allowed):
    host = f"{client.server.host}"
    url = target.format(host=host)
    response = await client.get("/httpbin/redirect-to", params={"url": url}, allow_redirects=False)
    if allowed:
        assert response.status == 302 and response.headers["Location"] == url
    else:
        assert response.status == 400 and (await response.json())["title"] == "Redirect target not allowed"


@pytest.mark.parametrize("content_type, body", [
    ("multipart/form-data", b"x"), ("multipart/form-data; boundary=x", b"garbage"),
])
async def test_redirect_to_with_a_malformed_form_is_a_400(client, content_type, body):
    response = await client.post("/httpbin/redirect-to", data=body, headers={"Content-Type": content_type},
                                 allow_redirects=False)
    assert response.status == 400


async def test_redirect_to_reads_a_form_that_is_not_utf8_without_failing(client):
    response = await client.post("/httpbin/redirect-to", data=b"\xff\xfe=%ff&url=/httpbin/get",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"}, allow_redirects=False)
    assert response.status == 302 and response.headers["Location"] == "/httpbin/get"


async def test_redirect_to_takes_the_url_from_the_query_on_post_too(client):
    response = await client.post("/httpbin/redirect-to?url=/httpbin/post&status_code=307", data=b"kept",
                                 allow_redirects=False)
    assert response.status == 307 and response.headers["Location"] == "/httpbin/post"


@pytest.mark.parametrize("cookie, allowed", [
    ("a=1", True), ("a=1; Path=/httpbin", True), ("a=1; Path=/httpbin/cookies; HttpOnly", True),
    ("sid=x; Path=/", False), ("sid=x; Path=/web", False), ("a=1; Domain=example.com", False),
    ("a=1; path=/httpbinx", False),
])
async def test_response_headers_cookies_stay_under_the_prefix(client, cookie, allowed):
    response = await client.get("/httpbin/response-headers", params={"Set-Cookie": cookie})
    assert response.status == (200 if allowed else 400)


async def test_response_headers_content_runs_sandboxed(client):
    response = await client.get("/httpbin/response-headers", params={"Content-Type": "text/html"})
    assert response.headers["Content-Type"].startswith("text/html")
    assert "sandbox" in response.headers.getall("Content-Security-Policy")
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_cookies_set_here_are_scoped_to_the_prefix(client):
    response = await client.get("/httpbin/cookies/set?flavour=oat", allow_redirects=False)
    assert "Path=/httpbin" in response.headers["Set-Cookie"]


@pytest.fixture
async def bins_client(aiohttp_client, store_at):
    return await aiohttp_client(create_app(store_at("httpbin")))


async def test_bins_are_listed_a_page_at_a_time_by_key(bins_client):
    client = bins_client
    for name in ("a1", "b2", "c3", "d4", "e5"):
        assert (await client.put(f"/httpbin/bins/{name}", json={"n": name})).status == 201
    response = await client.get("/httpbin/bins?limit=2")
    body = await response.json()
    assert [b["key"] for b in body["bins"]] == ["a1", "b2"] and body["next_cursor"] == "b2"
    assert 'rel="next"' in response.headers["Link"] and "cursor=b2" in response.headers["Link"]
    body = await (await client.get("/httpbin/bins?limit=2&cursor=b2")).json()
    assert [b["key"] for b in body["bins"]] == ["c3", "d4"]
    body = await (await client.get("/httpbin/bins?limit=2&cursor=d4")).json()
    assert [b["key"] for b in body["bins"]] == ["e5"] and body["next_cursor"] is None
    assert (await client.get("/httpbin/bins?cursor=%2F..")).status == 400


async def test_the_access_line_and_an_escaped_error_carry_the_request_id(aiohttp_client, tmp_path, monkeypatch):
    from services.common import accesslog
    from services.httpbin import app as httpbin

    async def broken(request):
        raise RuntimeError("a bug, not a Problem")

    httpbin.answer_unparsable_requests_with_problems()
    application = create_app(str(tmp_path / "httpbin.sqlite3"))
    application.router.add_get("/httpbin/broken", httpbin.guarded(broken))
    lines = []
    monkeypatch.setattr(accesslog, "write", lambda *fields: lines.append(fields))
    server = TestServer(application)
    await server.start_server(access_log_class=httpbin.AccessLogger)  # the stack's logger, as __main__ runs it
    client = await aiohttp_client(server)

    response = await client.get("/httpbin/json", headers={"X-Request-ID": "rid-ok"})
    assert response.status == 200 and response.headers["X-Request-ID"] == "rid-ok"
    response = await client.get("/httpbin/broken", headers={"X-Request-ID": "rid-bug"})
    problem = await response.json()
    assert response.status == 500 and response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["X-Request-ID"] == problem["request_id"] == "rid-bug"  # the request's, not a new one
    assert problem["detail"] == "Internal Server Error"  # nothing of the exception reaches the client
    remote, *request_line, status, size, rid, seconds = lines[0]
    assert (request_line, status, rid) == (["GET", "/httpbin/json", "HTTP/1.1"], 200, "rid-ok")
    assert remote == "127.0.0.1" and size > 27 and 0 < seconds < 5  # aiohttp's size counts the head too
    assert lines[1][1:5] == ("GET", "/httpbin/broken", "HTTP/1.1", 500) and lines[1][6] == "rid-bug"
