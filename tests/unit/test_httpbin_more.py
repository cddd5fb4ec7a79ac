"""httpbin.org's remaining endpoints and go-httpbin's additions, in-process: digest auth computed the way a client
computes it, images decoded, compression undone, events and lines parsed, trailers read by h11."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import re
import socket
import xml.etree.ElementTree as ElementTree
import zlib

import brotli
import h11
import pytest
from aiohttp import WSMsgType
from PIL import Image

from services.common import http
from services.httpbin import digest
from services.httpbin.app import OPENAPI, create_app
from services.httpbin.endpoints import IMAGES


@pytest.fixture
async def client(aiohttp_client, tmp_path):
    return await aiohttp_client(create_app(str(tmp_path / "httpbin.sqlite3")))


async def problem(response, status: int) -> dict:
    assert response.status == status
    assert response.headers["Content-Type"].startswith(http.PROBLEM_JSON)
    document = await response.json(content_type=None)
    assert document["request_id"] == response.headers[http.REQUEST_ID_HEADER]
    return document


# ---------------------------------------------------------------- plain endpoints

async def test_base64_decodes_urlsafe_with_or_without_padding(client):
    for encoded in ("SFRUUEJJTiBpcyBhd2Vzb21l", base64.urlsafe_b64encode("é/ü?".encode()).decode().rstrip("=")):
        response = await client.get(f"/httpbin/base64/{encoded}")
        assert response.status == 200
        # text/html the client wrote: sandboxed, away from web's session cookie on the same origin
        assert response.headers["Content-Security-Policy"] == "sandbox"
        assert await response.text() == base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    await problem(await client.get("/httpbin/base64/%%%"), 400)
    await problem(await client.get("/httpbin/base64/" + base64.urlsafe_b64encode(b"\xff\xfe").decode()), 400)


async def test_deny_is_what_robots_txt_disallows(client):
    robots = await (await client.get("/httpbin/robots.txt")).text()
    assert "Disallow: /deny" in robots
    response = await client.get("/httpbin/deny")
    assert response.status == 200 and response.content_type == "text/plain"


async def test_links_pages_link_to_every_other_page(client):
    start = await client.get("/httpbin/links/5", allow_redirects=False)
    assert start.status == 302 and start.headers["Location"] == "/httpbin/links/5/0"
    page = await (await client.get("/httpbin/links/5/2")).text()
    assert re.findall(r"href='([^']+)'", page) == [f"/httpbin/links/5/{i}" for i in (0, 1, 3, 4)]
    assert "2 " in page and page.startswith("<html>")
    many = await (await client.get("/httpbin/links/1000/0")).text()
    assert many.count("<a href") == 199  # held to 200 links, as httpbin.org does


@pytest.mark.parametrize("kind", ["relative-redirect", "absolute-redirect", "redirect"])
async def test_redirect_chains_count_down_to_get(client, kind):
    hops = []
    location = f"/httpbin/{kind}/3"
    while not location.endswith("/get"):
        response = await client.get(location, allow_redirects=False)
        assert response.status == 302 and response.headers[http.REQUEST_ID_HEADER]
        location = response.headers["Location"]
        hops.append(location)
        assert location.startswith("http://") == (kind == "absolute-redirect")
        location = location.split(str(client.make_url("")).rstrip("/"), 1)[-1]
    assert len(hops) == 3
    await problem(await client.get(f"/httpbin/{kind}/0"), 400)


async def test_stream_bytes_are_seeded_like_bytes_and_chunked(client):
    whole = await (await client.get("/httpbin/bytes/1000?seed=7")).read()
    streamed = await client.get("/httpbin/stream-bytes/1000?seed=7&chunk_size=100")
    assert streamed.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in streamed.headers
    assert await streamed.read() == whole and len(whole) == 1000
    # httpbin.org's sequence for a seed: Python's Mersenne Twister, one randint(0, 255) per byte.
    import random
    rng = random.Random(7)
    assert whole == bytes(rng.randint(0, 255) for _ in range(1000))
    long = await (await client.get("/httpbin/stream-bytes/20000?seed=7&chunk_size=9000")).read()  # in a thread
    assert long[:1000] == whole and len(long) == 20000
    unseeded = [await (await client.get("/httpbin/bytes/64")).read() for _ in range(2)]
    assert len(unseeded[0]) == 64 and unseeded[0] != unseeded[1]
    await problem(await client.get("/httpbin/stream-bytes/10?chunk_size=0"), 400)
    await problem(await client.get("/httpbin/stream-bytes/10?seed=x"), 400)


async def test_cookie_set_by_path_stays_under_the_prefix(client):
    response = await client.get("/httpbin/cookies/set/flavour/oat", allow_redirects=False)
    assert response.status == 302 and response.headers["Location"] == "/httpbin/cookies"
    assert re.fullmatch(r"flavour=oat; Path=/httpbin", response.headers["Set-Cookie"])
    await problem(await client.get("/httpbin/cookies/set/bad%20name/x"), 400)


@pytest.mark.parametrize(("path", "coding", "flag", "decode"), [
    ("/httpbin/gzip", "gzip", "gzipped", lambda body: zlib.decompress(body, 16 + zlib.MAX_WBITS)),
    ("/httpbin/deflate", "deflate", "deflated", zlib.decompress),
    ("/httpbin/brotli", "br", "brotli", brotli.decompress),
])
async def test_compressed_bodies_carry_their_content_encoding(client, path, coding, flag, decode):
    response = await client.get(path, auto_decompress=False)
    assert response.headers["Content-Encoding"] == coding
    document = json.loads(decode(await response.read()))
    assert document[flag] is True and document["method"] == "GET" and "headers" in document


async def test_hidden_basic_auth_answers_404_without_a_challenge(client):
    missing = await client.get("/httpbin/hidden-basic-auth/ada/pw")
    assert "WWW-Authenticate" not in missing.headers
    await problem(missing, 404)
    def basic(credentials: bytes) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(credentials).decode()}

    await problem(await client.get("/httpbin/hidden-basic-auth/ada/pw", headers=basic(b"ada:no")), 404)
    right = await client.get("/httpbin/hidden-basic-auth/ada/pw", headers=basic(b"ada:pw"))
    assert right.status == 200 and await right.json() == {"authenticated": True, "user": "ada"}


async def test_cache_304_repeats_the_validator(client):
    first = await client.get("/httpbin/cache")
    tag = first.headers["ETag"]
    again = await client.get("/httpbin/cache", headers={"If-None-Match": tag})
    assert again.status == 304 and again.headers["ETag"] == tag and again.headers["Last-Modified"]
    assert await again.read() == b""


async def test_stream_carries_the_request_id(client):
    response = await client.get("/httpbin/stream/2", headers={http.REQUEST_ID_HEADER: "stream-rid-1"})
    assert response.headers[http.REQUEST_ID_HEADER] == "stream-rid-1"
    assert len((await response.text()).splitlines()) == 2


async def test_index_lists_every_documented_endpoint(client):
    response = await client.get("/httpbin/")
    page = await response.text()
    assert response.status == 200 and response.content_type == "text/html"
    for path in OPENAPI["paths"]:
        assert f"<code>{path}" in page or f'href="{path}"' in page, path


async def test_echo_bodies_go_up_to_nginxs_limit(client):
    big = os.urandom(200 * 1024)
    echoed = await (await client.post("/httpbin/post", data=big,
                                      headers={"Content-Type": "application/octet-stream"})).json()
    assert echoed["data"] == "data:application/octet-stream;base64," + base64.b64encode(big).decode()
    await problem(await client.post("/httpbin/post", data=b"x" * (http.MAX_REQUEST_BODY_BYTES + 1)), 413)


async def test_multipart_uploads_fill_form_and_files(client):
    import aiohttp
    form = aiohttp.FormData()
    form.add_field("q", "teapot")
    form.add_field("upload", b"file body\n", filename="notes.txt", content_type="text/plain")
    body = await (await client.post("/httpbin/post", data=form)).json()
    assert body["form"] == {"q": "teapot"} and body["files"] == {"upload": "file body\n"}


# ---------------------------------------------------------------- images

@pytest.mark.parametrize(("path", "media_type", "pillow_format"), [
    ("/httpbin/image/png", "image/png", "PNG"), ("/httpbin/image/jpeg", "image/jpeg", "JPEG"),
    ("/httpbin/image/webp", "image/webp", "WEBP"),
])
async def test_images_are_real_files_of_their_type(client, path, media_type, pillow_format):
    response = await client.get(path)
    assert response.status == 200 and response.content_type == media_type
    picture = Image.open(io.BytesIO(await response.read()))
    picture.load()  # decodes every pixel
    assert picture.format == pillow_format and picture.size == (300, 100)


async def test_svg_is_well_formed_xml(client):
    response = await client.get("/httpbin/image/svg")
    assert response.content_type == "image/svg+xml"
    assert ElementTree.fromstring(await response.read()).tag == "{http://www.w3.org/2000/svg}svg"


@pytest.mark.parametrize(("accept", "chosen"), [
    (None, "image/png"), ("image/webp", "image/webp"), ("image/*", "image/png"), ("*/*", "image/png"),
    ("image/svg+xml", "image/svg+xml"), ("image/jpeg;q=0.5, image/png", "image/png"),
    ("image/avif,image/webp,*/*;q=0.8", "image/webp"), ("text/html, image/jpeg;q=0.1", "image/jpeg"),
    ("image/png;q=0, */*", "image/webp"),  # the most specific range decides: PNG is ruled out, not chosen
    ("image/*;q=0.5, image/jpeg;q=0.4", "image/png"),
])
async def test_image_negotiates_by_accept(client, accept, chosen):
    response = await client.get("/httpbin/image", headers={"Accept": accept} if accept else {"Accept": ""})
    assert response.status == 200 and response.content_type == chosen
    assert await response.read() == IMAGES[chosen] and response.headers["Vary"] == "Accept"


async def test_image_refuses_what_accept_rules_out(client):
    await problem(await client.get("/httpbin/image", headers={"Accept": "text/html"}), 406)
    await problem(await client.get("/httpbin/image", headers={"Accept": "image/png;q=0"}), 406)
    for weight in ("nan", "inf", "-1", "2", "٠.5"):  # not RFC 9110 qvalues: they weigh nothing
        await problem(await client.get("/httpbin/image", headers={"Accept": f"image/*;q={weight}"}), 406)


# ---------------------------------------------------------------- digest auth

def digest_header(challenge: str, user: str, password: str, method: str, uri: str, body: bytes = b"",
                  qop: str | None = "auth", nc: str = "00000001", claimed_uri: str | None = None) -> str:
    """What a client sends back (RFC 7616), computed here independently of services/httpbin/digest.py."""
    params = dict(re.findall(r'(\w+)="?([^",]+)"?', challenge))
    algorithm = params["algorithm"]
    h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256, "SHA-512": hashlib.sha512}[algorithm]

    def hexdigest(*parts: str | bytes) -> str:
        return h(b":".join(p.encode() if isinstance(p, str) else p for p in parts)).hexdigest()

    ha1 = hexdigest(user, params["realm"], password)
    ha2 = hexdigest(method, uri, hexdigest(body)) if qop == "auth-int" else hexdigest(method, uri)
    cnonce = "0a4f113b"
    if qop:
        response = hexdigest(ha1, params["nonce"], nc, cnonce, qop, ha2)
        extra = f', qop={qop}, nc={nc}, cnonce="{cnonce}"'
    else:
        response = hexdigest(ha1, params["nonce"], ha2)
        extra = ""
    return (f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
            f'uri="{claimed_uri or uri}", '
            f'algorithm={algorithm}, response="{response}", opaque="{params["opaque"]}"{extra}')


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "SHA-512"])
@pytest.mark.parametrize("qop", ["auth", "auth-int", None])
async def test_digest_auth_accepts_a_correct_answer_for_every_algorithm_and_qop(client, algorithm, qop):
    uri = f"/httpbin/digest-auth/{qop or 'none'}/ada/s3cret/{algorithm}"
    challenged = await client.get(uri)
    assert challenged.status == 401
    challenge = challenged.headers["WWW-Authenticate"]
    assert challenge.startswith("Digest ") and f"algorithm={algorithm}" in challenge and "stale=FALSE" in challenge
    assert f'qop="{qop}"' in challenge if qop else 'qop="auth, auth-int"' in challenge
    authorization = digest_header(challenge, "ada", "s3cret", "GET", uri, qop=qop)
    answered = await client.get(uri, headers={"Authorization": authorization})
    assert answered.status == 200 and await answered.json() == {"authenticated": True, "user": "ada"}


async def test_digest_auth_refuses_a_wrong_password_user_or_uri(client):
    uri = "/httpbin/digest-auth/auth/ada/s3cret"
    for user, password, signed_uri in (("ada", "wrong", uri), ("eve", "s3cret", uri),
                                       ("ada", "s3cret", "/httpbin/digest-auth/auth/ada/other")):
        client.session.cookie_jar.clear()  # each attempt on a fresh nonce: a replayed one is refused as stale
        challenge = (await client.get(uri)).headers["WWW-Authenticate"]
        response = await client.get(uri, headers={"Authorization": digest_header(challenge, user, password, "GET",
                                                                                  signed_uri)})
        assert response.status == 401, (user, password, signed_uri)
        assert "stale=FALSE" in response.headers["WWW-Authenticate"]  # refused for the answer, not the nonce
    # Signed for this request but naming another URI in the header (RFC 7616 3.4.6: they must agree).
    client.session.cookie_jar.clear()
    challenge = (await client.get(uri)).headers["WWW-Authenticate"]
    claimed = digest_header(challenge, "ada", "s3cret", "GET", uri, claimed_uri="/httpbin/other")
    response = await client.get(uri, headers={"Authorization": claimed})
    assert response.status == 401


async def test_digest_nonce_goes_stale_after_its_uses_and_on_replay_after_a_failure(client):
    uri = "/httpbin/digest-auth/auth/ada/s3cret/MD5/1"
    challenge = (await client.get(uri)).headers["WWW-Authenticate"]
    authorization = digest_header(challenge, "ada", "s3cret", "GET", uri)
    assert (await client.get(uri, headers={"Authorization": authorization})).status == 200  # its one use
    stale = await client.get(uri, headers={"Authorization": authorization})
    assert stale.status == 401 and "stale=TRUE" in stale.headers["WWW-Authenticate"]
    # A nonce that failed once and is sent again is stale too.
    fresh = (await client.get("/httpbin/digest-auth/auth/ada/s3cret")).headers["WWW-Authenticate"]
    wrong = digest_header(fresh, "ada", "nope", "GET", "/httpbin/digest-auth/auth/ada/s3cret")
    client.session.cookie_jar.clear()
    assert (await client.get("/httpbin/digest-auth/auth/ada/s3cret", headers={"Authorization": wrong})).status == 401
    replay = await client.get("/httpbin/digest-auth/auth/ada/s3cret", headers={"Authorization": wrong})
    assert "stale=TRUE" in replay.headers["WWW-Authenticate"]


def test_digest_header_parsing_takes_quoted_escapes_and_refuses_garbage():
    assert digest.parse_digest('Digest username="a\\"b", nc=00000001, qop=auth') == {
        "username": 'a"b', "nc": "00000001", "qop": "auth"}
    assert digest.parse_digest("Basic YTpi") is None
    assert digest.parse_digest('Digest username="unterminated') is None


# ---------------------------------------------------------------- go-httpbin's additions

async def test_sse_sends_numbered_events_and_resumes_after_last_event_id(client):
    response = await client.get("/httpbin/sse?count=3&duration=0.1&retry=1500", headers={"Last-Event-ID": "7"})
    assert response.content_type == "text/event-stream" and response.headers["X-Accel-Buffering"] == "no"
    blocks = (await response.text()).strip().split("\n\n")
    assert blocks[0] == "retry: 1500"
    events = [dict(line.split(": ", 1) for line in block.splitlines()) for block in blocks[1:]]
    assert [e["id"] for e in events] == ["8", "9", "10"] and {e["event"] for e in events} == {"ping"}
    assert [json.loads(e["data"])["id"] for e in events] == [8, 9, 10]
    for query in ("count=0", "count=101", "duration=11", "duration=soon", "delay=6&duration=5"):
        await problem(await client.get(f"/httpbin/sse?{query}"), 400)


async def test_jsonl_sends_one_document_per_line(client):
    response = await client.get("/httpbin/jsonl?count=4")
    assert response.content_type == "application/jsonl"
    lines = [json.loads(line) for line in (await response.text()).splitlines()]
    assert [line["id"] for line in lines] == [0, 1, 2, 3] and lines[0]["args"] == {"count": "4"}


async def test_websocket_echo_returns_text_and_binary(client):
    async with client.ws_connect("/httpbin/websocket/echo") as socket_:
        await socket_.send_str("héllo")
        assert (await socket_.receive()).data == "héllo"
        await socket_.send_bytes(b"\x00\xff")
        assert (await socket_.receive()).data == b"\x00\xff"
    async with client.ws_connect("/httpbin/websocket/echo?max_message_size=8") as socket_:
        await socket_.send_str("longer than eight")
        closing = await socket_.receive()
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
        assert socket_.close_code == 1009  # Message Too Big
    await problem(await client.get("/httpbin/websocket/echo"), 400)  # no handshake


async def test_hostname_says_which_instance_answered(client):
    body = await (await client.get("/httpbin/hostname")).json()
    assert body["hostname"] == socket.gethostname() and body["pid"] == os.getpid() and body["instance"]


async def test_dump_request_shows_the_request_as_received(client):
    response = await client.post("/httpbin/dump/request?x=1", data=b"the body",
                                 headers={"X-MiXeD-Case": "kept", "Content-Type": "text/plain"})
    dump = await response.read()
    head, _, body = dump.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /httpbin/dump/request?x=1 HTTP/1.1"
    assert b"X-MiXeD-Case: kept" in lines and body == b"the body"


async def test_trailers_come_after_the_chunked_body(client):
    def fetch() -> tuple[h11.Response, bytes, list[tuple[bytes, bytes]]]:
        url = client.make_url("/httpbin/trailers?X-Checksum=abc&Server-Timing=app;dur=1")
        connection = h11.Connection(h11.CLIENT)
        with socket.create_connection((url.host, url.port), timeout=10) as sock:
            sock.sendall(connection.send(h11.Request(method="GET", target=url.raw_path_qs,
                                                     headers=[("Host", "x"), ("Connection", "close")])))
            sock.sendall(connection.send(h11.EndOfMessage()))
            head, body = None, b""
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    connection.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    return head, body, list(event.headers)

    head, body, trailers = await asyncio.to_thread(fetch)
    assert dict(head.headers)[b"trailer"] == b"X-Checksum, Server-Timing"
    assert json.loads(body)["args"]["X-Checksum"] == "abc"
    assert trailers == [(b"x-checksum", b"abc"), (b"server-timing", b"app;dur=1")]
    await problem(await client.get("/httpbin/trailers?Content-Length=1"), 400)
    await problem(await client.get("/httpbin/trailers?X-A=a%0d%0aEvil:%201"), 400)


async def test_unstable_fails_at_the_rate_asked_and_repeatably_with_a_seed(client):
    assert (await client.get("/httpbin/unstable?failure_rate=0")).status == 200
    await problem(await client.get("/httpbin/unstable?failure_rate=1"), 500)
    outcomes = [(await client.get(f"/httpbin/unstable?seed={seed}")).status for seed in range(20)]
    assert outcomes == [(await client.get(f"/httpbin/unstable?seed={seed}")).status for seed in range(20)]
    assert set(outcomes) == {200, 500}
    await problem(await client.get("/httpbin/unstable?failure_rate=2"), 400)
    await problem(await client.get("/httpbin/unstable?failure_rate=nan"), 400)


async def test_cookies_set_and_deleted_through_response_headers_meet_under_the_prefix(client):
    """As at httpbin.org's root: a cookie set by /cookies/set is deleted by a Set-Cookie from /response-headers
    (whose default path is the prefix), and /cookies sees it come and go — in a client's own cookie jar."""
    await client.get("/httpbin/cookies/set?flavour=oat")
    assert (await (await client.get("/httpbin/cookies")).json())["cookies"] == {"flavour": "oat"}
    await client.get("/httpbin/response-headers", params={"Set-Cookie": "flavour=; Max-Age=0"})
    assert (await (await client.get("/httpbin/cookies")).json())["cookies"] == {}
    await client.get("/httpbin/cookies/set/flavour/rye")
    await client.get("/httpbin/response-headers", params={"Set-Cookie": "flavour=; Max-Age=0; Path=/httpbin"})
    assert (await (await client.get("/httpbin/cookies")).json())["cookies"] == {}
