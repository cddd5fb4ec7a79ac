"""A self-hosted httpbin (the seed's examples all call httpbin.org): the same endpoints and JSON shapes,
under /httpbin/. Stateless: everything it reports comes from the request itself."""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import hmac
import json
import random
import re
import uuid
import zlib
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from email.utils import formatdate
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import brotli
from aiohttp import web
from aiohttp._cookie_helpers import parse_cookie_header  # what request.cookies calls (aiohttp is pinned)

from services.common import http, proxy, semantics
from stack import topology
from stack.settings import HttpbinSettings

PREFIX = topology.service("httpbin").route_prefix
SETTINGS = web.AppKey("settings", HttpbinSettings)  # create_app puts them here; handlers read request.app[SETTINGS]
# The id of the request being handled, set by app.guarded before any handler runs. A context variable rather
# than request state: aiohttp runs each request in a task of its own (a context of its own), and setting one
# costs a fraction of Request.__setitem__, which checks its key's type on every call.
REQUEST_ID: ContextVar[str] = ContextVar("httpbin_request_id")
MAX_DELAY = 10
MAX_BYTES = 100 * 1024
REDIRECT_CODES = {301, 302, 303, 307, 308}
# The longest redirect chain: httpbin.org has no bound, and clients test their own limits (requests stops at 30,
# curl at 50 by default), so well past those; a bound still, like every number a client sends here.
MAX_REDIRECTS = 100


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 field names
_STATUS = re.compile(r"[0-9]{3}")


def header_value(value: str, what: str) -> str:
    """A value safe to put in a response header: no control characters (no header injection), non-ASCII
    percent-encoded."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise http.Problem(400, "Invalid header value", f"{what} must not contain control characters")
    return quote(value, safe="".join(chr(c) for c in range(0x20, 0x7F)))


def dumps(body: object) -> str:
    return json.dumps(body, indent=2, sort_keys=True) + "\n"  # httpbin's own pretty format


def reply(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=dumps(body), status=status, content_type="application/json", headers=headers)


def forwarded(request: web.Request, name: str, default: str) -> str:
    """A forwarded header's value when nginx sent it (services/common/proxy.py), else what the socket says."""
    if proxy.nginx.trusts(request.remote):
        return request.headers.get(name, default)
    return default


def origin(request: web.Request) -> str:
    """The client's address: behind nginx, the X-Forwarded-For nginx set (it overwrites any client value)."""
    return forwarded(request, "X-Forwarded-For", request.remote or "")


def url_of(request: web.Request) -> str:
    proto = forwarded(request, "X-Forwarded-Proto", request.scheme)
    host = forwarded(request, "X-Forwarded-Host", request.host)
    return f"{proto}://{host}{request.rel_url}"


def field(request: web.Request, name: str) -> str | None:
    """A request header's value as RFC 9110 5.3 reads a repeated field: every line's value, in order, joined
    with a comma (Cookie's with "; ", RFC 6265 5.4). aiohttp's headers.get() gives the first line only."""
    values = request.headers.getall(name, ())
    if len(values) <= 1:
        return values[0] if values else None
    return ("; " if name.lower() == "cookie" else ",").join(values)


def headers_of(request: web.Request) -> dict[str, str]:
    """The request's header fields by name, a repeated one's values combined (as the reference's WSGI server
    does before Flask sees them): `-H 'Foo: bar' -H 'Foo: baz'` echoes "Foo": "bar,baz"."""
    fields: dict[str, str] = {}
    for name in request.headers:
        title = name.title()
        if title not in fields:
            fields[title] = field(request, name) or ""
    return fields


def cookies_of(request: web.Request) -> dict[str, str]:
    """The cookies of every Cookie line: the parser aiohttp's request.cookies runs on the first line only, run
    on all of them (request.clone() with the joined lines would re-encode every header as UTF-8, which fails on
    the surrogate escapes of undecodable bytes)."""
    header = field(request, "Cookie")
    return {name: morsel.value for name, morsel in parse_cookie_header(header)} if header else {}


def args_of(request: web.Request) -> dict[str, str | list[str]]:
    args: dict[str, str | list[str]] = {}
    for key in request.query:
        values = request.query.getall(key)
        args[key] = values[0] if len(values) == 1 else values
    return args


def basics(request: web.Request) -> dict:
    return {"args": args_of(request), "headers": headers_of(request), "origin": origin(request),
            "url": url_of(request)}


def _flattened(pairs: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    """httpbin's shape for form fields: a name given once maps to its value, given more often to the list."""
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in fields.items()}


async def with_body(request: web.Request) -> dict:
    """httpbin's shape for requests with a body: data, form, files and json, as it decodes them. A body with a
    Content-Encoding is echoed as the bytes that came (as httpbin.org does): this server decodes no request
    body (create_app turns aiohttp's decompression off), so a client can see exactly what it sent."""
    kind = (request.content_type or "").lower()
    if semantics.content_coded(field(request, "Content-Encoding")):
        return {**basics(request), "data": _text_or_data_url(await request.read()), "files": {}, "form": {},
                "json": None}
    # A multipart body is read by aiohttp's own parser, from the stream: reading the body first would leave
    # it nothing ("Could not find starting boundary" for every upload).
    raw = b"" if kind.startswith("multipart/") else await request.read()
    form: dict[str, str | list[str]] = {}
    files: dict[str, str] = {}
    parsed_json = None
    data = ""
    if kind == "application/x-www-form-urlencoded":
        form = _flattened(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
    elif kind.startswith("multipart/"):
        try:
            post = await request.post()
        except (ValueError, AssertionError, KeyError) as error:  # e.g. no boundary: aiohttp cannot split it
            detail = str(error) or "the multipart body cannot be parsed"
            raise http.Problem(400, "Malformed multipart body", detail) from None
        for key, value in post.items():
            if isinstance(value, web.FileField):
                files[key] = value.file.read().decode("utf-8", "replace")
        form = _flattened([(key, str(value)) for key, value in post.items() if not isinstance(value, web.FileField)])
    else:
        data = _text_or_data_url(raw)
        try:  # whatever the Content-Type says, as httpbin.org does: "json" is the body when it parses as JSON
            parsed_json = semantics.parse_json(raw, unicode_scalars_only=False) if raw else None
        except ValueError:
            parsed_json = None
    return {**basics(request), "data": data, "files": files, "form": form, "json": parsed_json}


def _text_or_data_url(raw: bytes) -> str:
    """A body as httpbin.org's "data": the text when it is UTF-8, else a base64 data: URL of the bytes."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "data:application/octet-stream;base64," + base64.b64encode(raw).decode()


# ---------------------------------------------------------------- request inspection

async def get(request: web.Request) -> web.Response:
    return reply(basics(request))


async def body_method(request: web.Request) -> web.Response:
    return reply(await with_body(request))


async def anything(request: web.Request) -> web.Response:
    return reply({**await with_body(request), "method": request.method})


async def headers(request: web.Request) -> web.Response:
    return reply({"headers": headers_of(request)})


async def ip(request: web.Request) -> web.Response:
    return reply({"origin": origin(request)})


async def user_agent(request: web.Request) -> web.Response:
    return reply({"user-agent": field(request, "User-Agent")})


async def uuid4(request: web.Request) -> web.Response:
    return reply({"uuid": str(uuid.uuid4())})


# ---------------------------------------------------------------- status codes and redirects

def _status_codes(spec: str) -> list[tuple[int, float]]:
    """"200", "200,404" or weighted "200:0.8,500:0.2", as httpbin accepts: three ASCII digits, decimal weights."""
    choices = []
    for part in spec.split(","):
        code, _, weight = part.partition(":")
        if not _STATUS.fullmatch(code) or not 100 <= int(code) <= 599:
            raise http.Problem(400, "Invalid status code", f"{part[:40]!r} is not a status code between 100 and 599")
        choices.append((int(code), http.decimal(weight, "a weight") if weight else 1.0))
    if not sum(chance for _, chance in choices) > 0:
        raise http.Problem(400, "Invalid status code", "the weights must not all be zero")
    return choices


async def status(request: web.Request) -> web.Response:
    choices = _status_codes(request.match_info["codes"])
    code = random.choices([c for c, _ in choices], weights=[w for _, w in choices] or None)[0]
    if code < 200:
        raise http.Problem(400, "Unsupported status code", "1xx are interim responses and cannot be final")
    extra: dict[str, str] = {}
    text = ""
    if code in REDIRECT_CODES:
        extra["Location"] = f"{PREFIX}/redirect/1"
    elif code == 401:
        extra["WWW-Authenticate"] = 'Basic realm="Fake Realm"'
    elif code == 407:
        extra["Proxy-Authenticate"] = 'Basic realm="Fake Realm"'
    elif code == 418:
        text = "I'm a teapot\n"
    body_allowed = code not in (204, 304)
    return web.Response(status=code, headers=extra, text=text if body_allowed else None,
                        content_type="text/plain" if body_allowed else None)


async def redirect(request: web.Request) -> web.Response:
    """302 n times, then /get: on through /relative-redirect (or /absolute-redirect with ?absolute=true), as
    httpbin.org does."""
    absolute = request.query.get("absolute", "").lower() == "true"
    return _redirect_chain(request, "absolute-redirect" if absolute else "relative-redirect", absolute)


def _redirect_chain(request: web.Request, kind: str, absolute: bool) -> web.Response:
    n = http.int_param(request.match_info["n"], "n", 1, 1, MAX_REDIRECTS)
    target = f"{PREFIX}/{kind}/{n - 1}" if n > 1 else f"{PREFIX}/get"
    if absolute:
        target = f"{url_of(request).split(PREFIX, 1)[0]}{target}"
    raise web.HTTPFound(target)


async def relative_redirect(request: web.Request) -> web.Response:
    """302 n times with a path-only Location (resolved by the client against this URL), then /get."""
    return _redirect_chain(request, "relative-redirect", absolute=False)


async def absolute_redirect(request: web.Request) -> web.Response:
    """302 n times with a full URL in Location (the host and scheme the client used), then /get."""
    return _redirect_chain(request, "absolute-redirect", absolute=True)


def redirect_allowed(target: str, request: web.Request) -> bool:
    """Relative targets, and absolute http(s) ones to this host or to REDIRECT_HOSTS (comma-separated): never an
    open redirect to anywhere. "//host" and backslashes are refused: browsers read "/\\host" as "//host"."""
    if "\\" in target or target.startswith("//") or any(ord(c) < 0x21 for c in target[:1]):
        return False
    try:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return True
        own = urlsplit(url_of(request)).hostname
        hostname = parts.hostname
    except ValueError:  # not a URL at all, e.g. "http://[zz]/"
        return False
    extra = request.app[SETTINGS].redirect_hosts
    return parts.scheme in ("http", "https") and hostname is not None and hostname in {own, *extra}


async def redirect_to(request: web.Request) -> web.Response:
    # ?url= works for every method (a 307/308 test POSTs with the target in the query), a form field too.
    form = (await with_body(request))["form"] if request.method in ("POST", "PUT", "PATCH") else {}
    target = request.query.get("url") or form.get("url")
    if not target:
        raise http.Problem(400, "Missing url", "redirect-to needs ?url=")
    if not redirect_allowed(str(target), request):
        raise http.Problem(400, "Redirect target not allowed",
                           "a relative URL, or one to this host (or to a host listed in REDIRECT_HOSTS)")
    status = request.query.get("status_code") or form.get("status_code")
    code = http.int_param(str(status) if status else None, "status_code", 302, 300, 399)
    return web.Response(status=code, headers={"Location": header_value(str(target), "url")})


# ---------------------------------------------------------------- response shaping

# Headers a client may not set through /response-headers: the message's framing and hop-by-hop fields are the
# server's own (a Content-Length or Transfer-Encoding from the query corrupted the response; RFC 9112 6,
# RFC 9110 7.6.1), and X-Accel-* would steer nginx (X-Accel-Redirect served any internal location).
_SERVERS_OWN = {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer",
                "proxy-connection"}


async def response_headers(request: web.Request) -> web.Response:
    args = args_of(request)
    response = reply(args)
    for key in request.query:
        if not _TOKEN.fullmatch(key):
            raise http.Problem(400, "Invalid header name", f"{key!r} is not a valid header field name")
        if key.lower() in _SERVERS_OWN or key.lower().startswith("x-accel-"):
            raise http.Problem(400, "Header not allowed", f"{key} frames or routes the response: the server sets it")
        if key.lower() == "set-cookie":
            for value in request.query.getall(key):
                _cookie_stays_here(value)
        for value in request.query.getall(key):
            if key.lower() == "content-type":  # one field only: the client's replaces the JSON default
                response.headers["Content-Type"] = header_value(value, key)
            else:
                response.headers.add(key, header_value(value, key))
    return sandboxed(response)


def sandboxed(response: web.Response) -> web.Response:
    """A response whose content the client chose (text/html with a script, say) runs in an opaque origin that
    cannot read this origin's cookies (web's session) or call its APIs with them; sniffing is off too."""
    response.headers.add("Content-Security-Policy", "sandbox")
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _cookie_stays_here(set_cookie: str) -> None:
    """A Set-Cookie from the query may not leave httpbin: no Domain, and a Path (if any) under the prefix."""
    for attribute in set_cookie.split(";")[1:]:
        name, _, value = attribute.strip().partition("=")
        path = value.strip()
        if name.lower() == "domain" or (name.lower() == "path" and path != PREFIX
                                        and not path.startswith(PREFIX + "/")):
            raise http.Problem(400, "Cookie not allowed",
                               f"cookies set here stay under {PREFIX}/: no Domain, and Path within {PREFIX}")


async def delay(request: web.Request) -> web.Response:
    seconds = min(http.decimal(request.match_info["n"], "n"), MAX_DELAY)  # httpbin caps the delay, as here
    await asyncio.sleep(seconds)
    return reply({**(await with_body(request)), "delayed_seconds": seconds})


async def streaming(request: web.Request, content_type: str, status: int = 200, length: int | None = None,
                    headers: dict[str, str] | None = None) -> web.StreamResponse:
    """A response whose body is written piece by piece, its head already sent: chunked unless `length` is known.
    X-Accel-Buffering: no asks nginx to pass each piece on as it comes instead of buffering the whole body; the
    request id goes in now, since the head leaves before the handler returns."""
    response = web.StreamResponse(status=status, headers={
        "Content-Type": content_type, "X-Accel-Buffering": "no",
        http.REQUEST_ID_HEADER: REQUEST_ID.get(), **(headers or {})})
    if length is None:
        response.enable_chunked_encoding()
    else:
        response.content_length = length
    await response.prepare(request)
    return response


async def stream(request: web.Request) -> web.StreamResponse:
    """n JSON documents, one per line, in a chunked response (no Content-Length: the size is not known)."""
    n = http.stream_n(request.match_info["n"])
    response = await streaming(request, "application/json")
    base = basics(request)
    for i in range(n):
        await response.write((json.dumps({**base, "id": i}) + "\n").encode())
    await response.write_eof()
    return response


async def drip(request: web.Request) -> web.StreamResponse:
    """numbytes bytes spread over duration seconds: Content-Length is known, the body arrives slowly."""
    duration = min(http.decimal(request.query.get("duration", "2"), "duration"), MAX_DELAY)
    numbytes = http.int_param(request.query.get("numbytes"), "numbytes", 10, 1, 10 * 1024)
    code = http.int_param(request.query.get("code"), "code", 200, 200, 599)
    initial = min(http.decimal(request.query.get("delay", "0"), "delay"), MAX_DELAY)
    await asyncio.sleep(initial)
    response = await streaming(request, "application/octet-stream", code, numbytes)
    pause = duration / numbytes
    for _ in range(numbytes):
        await response.write(b"*")
        await asyncio.sleep(pause)
    await response.write_eof()
    return response


def _seeded(request: web.Request) -> random.Random:
    """?seed=N makes the bytes repeatable: the same N gives the same bytes as httpbin.org's (Python's Mersenne
    Twister, one randint(0, 255) per byte)."""
    seed = request.query.get("seed")
    if seed is None:
        return random.Random()
    return random.Random(http.int_param(seed, "seed", 0, 0, 2**63 - 1))


async def _random(request: web.Request, rng: random.Random, n: int) -> bytes:
    """n bytes: unseeded, straight from the generator; seeded, one randint(0, 255) per byte (httpbin.org's
    sequence), which costs about 0.4 us a byte in Python: past a few KiB it runs in a thread, so the event loop
    keeps serving others meanwhile (37 ms for 100 KiB measured, held in 5 ms GIL slices instead of one block)."""
    if "seed" not in request.query:
        return rng.randbytes(n)
    if n <= 4096:
        return bytes(rng.randint(0, 255) for _ in range(n))
    return await asyncio.to_thread(lambda: bytes(rng.randint(0, 255) for _ in range(n)))


async def random_bytes(request: web.Request) -> web.Response:
    n = http.int_param(request.match_info["n"], "n", 1, 0, MAX_BYTES)
    return web.Response(body=await _random(request, _seeded(request), n), content_type="application/octet-stream")


async def stream_bytes(request: web.Request) -> web.StreamResponse:
    """n random bytes (seeded like /bytes), chunked, chunk_size bytes at a time (10 KiB by default)."""
    n = http.int_param(request.match_info["n"], "n", 1, 0, MAX_BYTES)
    chunk_size = http.int_param(request.query.get("chunk_size"), "chunk_size", 10 * 1024, 1, MAX_BYTES)
    rng = _seeded(request)
    response = await streaming(request, "application/octet-stream")
    for start in range(0, n, chunk_size):
        await response.write(await _random(request, rng, min(chunk_size, n - start)))
    await response.write_eof()
    return response


_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")  # [0-9], not \d: that takes any script's digits


def _position(digits: str) -> int | None:
    """A byte position of a Range header: any count of digits is valid (RFC 9110 14.1.1), but past MAX_BYTES's
    length every position means the same here ("beyond the end"), and int() refuses 4,301 digits or more."""
    if not digits:
        return None
    digits = digits.lstrip("0") or "0"  # leading zeros are still the same number
    return int(digits) if len(digits) <= 18 else 10**18


async def byte_range(request: web.Request) -> web.Response:
    """n bytes of a-z repeated, honouring a single Range: 206 with Content-Range, or 416."""
    n = http.int_param(request.match_info["n"], "n", 1, 1, MAX_BYTES)
    data = bytes(ord("a") + i % 26 for i in range(n))
    common = {"Accept-Ranges": "bytes", "ETag": f'"range{n}"'}
    header = field(request, "Range")
    if not header:
        return web.Response(body=data, content_type="application/octet-stream", headers=common)
    match = _RANGE.fullmatch(header.strip())
    if not match or match.groups() == ("", ""):
        return web.Response(status=416, headers={**common, "Content-Range": f"bytes */{n}"})
    first, last = (_position(digits) for digits in match.groups())
    if first is None:  # a suffix range: the last N bytes
        start, end = max(n - (last or 0), 0), n - 1
    else:
        start, end = first, min(last, n - 1) if last is not None else n - 1
    if start >= n or start > end:
        return web.Response(status=416, headers={**common, "Content-Range": f"bytes */{n}"})
    return web.Response(status=206, body=data[start:end + 1], content_type="application/octet-stream",
                        headers={**common, "Content-Range": f"bytes {start}-{end}/{n}"})


# ---------------------------------------------------------------- cookies

async def cookies(request: web.Request) -> web.Response:
    return reply({"cookies": cookies_of(request)})


def _cookie_name(name: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise http.Problem(400, "Invalid cookie name", f"{name!r} is not a valid cookie name")
    return name


# Cookies live under the prefix, as httpbin.org's live under its root: /cookies sees them, web's pages do not
# (a cookie at "/" from here could shadow or fixate web's session cookie on the same origin).


async def cookies_set(request: web.Request) -> web.Response:
    response = web.HTTPFound(f"{PREFIX}/cookies")
    for name, value in request.query.items():
        response.set_cookie(_cookie_name(name), header_value(value, name), path=PREFIX)
    raise response


async def cookie_set(request: web.Request) -> web.Response:
    name, value = request.match_info["name"], request.match_info["value"]
    response = web.HTTPFound(f"{PREFIX}/cookies")
    response.set_cookie(_cookie_name(name), header_value(value, name), path=PREFIX)
    raise response


async def cookies_delete(request: web.Request) -> web.Response:
    response = web.HTTPFound(f"{PREFIX}/cookies")
    for name in request.query:
        response.del_cookie(_cookie_name(name), path=PREFIX)
    raise response


# ---------------------------------------------------------------- caching and validators

async def cache(request: web.Request) -> web.Response:
    """200 with Last-Modified and an ETag; any conditional request is a 304 (its copy is taken as current). A 304
    carries the fields its 200 would have (RFC 9110 15.4.5): the ETag (the one the client holds, else a new one,
    as each 200 has) and Last-Modified."""
    if_none_match = field(request, "If-None-Match")
    if field(request, "If-Modified-Since") or if_none_match:
        held = if_none_match.split(",")[0].strip() if if_none_match else ""
        etag = held if _ENTITY_TAG.fullmatch(held) else _fresh_etag()  # never echo what is not an entity tag
        return web.Response(status=304, headers={"ETag": etag, "Last-Modified": formatdate(usegmt=True)})
    response = reply(basics(request))
    response.headers["Last-Modified"] = formatdate(usegmt=True)
    response.headers["ETag"] = _fresh_etag()
    return response


_ENTITY_TAG = re.compile(r'(W/)?"[\x21\x23-\x7e]*"')  # RFC 9110 8.8.3, ASCII only


def _fresh_etag() -> str:
    return f'"{uuid.uuid4().hex}"'


async def cache_for(request: web.Request) -> web.Response:
    seconds = http.int_param(request.match_info["n"], "n", 60, 0, 31_536_000)
    return reply(basics(request), headers={"Cache-Control": f"public, max-age={seconds}"})


async def etag(request: web.Request) -> web.Response:
    """200 with ETag: <etag>; If-None-Match that matches (weakly, RFC 9110 13.1.2: W/"x" matches "x"): 304;
    If-Match that does not (strongly, 13.1.1): 412."""
    raw = request.match_info["etag"]
    if not all(c == "!" or "#" <= c <= "~" for c in raw):  # RFC 9110 etagc: visible ASCII except DQUOTE
        raise http.Problem(400, "Invalid entity tag", "an entity tag is visible ASCII without double quotes")
    tag = f'"{raw}"'
    if semantics.if_none_match_hit(field(request, "If-None-Match"), tag):
        return web.Response(status=304, headers={"ETag": tag})
    semantics.check_if_match(field(request, "If-Match"), tag, required=False)  # 412 when it does not hold
    return reply(basics(request), headers={"ETag": tag})


# ---------------------------------------------------------------- auth

def _basic_credentials_match(request: web.Request) -> bool:
    user, password = request.match_info["user"], request.match_info["passwd"]
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    try:
        given = base64.b64decode(credentials, validate=True).decode() if scheme.lower() == "basic" else ""
    except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8: not these credentials
        given = ""
    return hmac.compare_digest(given.encode(), f"{user}:{password}".encode())


async def basic_auth(request: web.Request) -> web.Response:
    if not _basic_credentials_match(request):
        return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="Fake Realm"'})
    return reply({"authenticated": True, "user": request.match_info["user"]})


async def hidden_basic_auth(request: web.Request) -> web.Response:
    """Basic auth that does not say it is there: without the right credentials, a 404 and no challenge."""
    if not _basic_credentials_match(request):
        raise http.Problem(404, "Not Found", f"nothing is served at {request.path}")
    return reply({"authenticated": True, "user": request.match_info["user"]})


async def bearer(request: web.Request) -> web.Response:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
    return reply({"authenticated": True, "token": token.strip()})


# ---------------------------------------------------------------- formats

def _encoded(request: web.Request, flag: str, coding: str, compress: Callable[[bytes], bytes]) -> web.Response:
    """The request's origin, headers and method as JSON, sent in one content coding (whatever Accept-Encoding
    says, as httpbin.org does: these endpoints exist to test a client's decoder)."""
    document = {flag: True, "headers": headers_of(request), "method": request.method, "origin": origin(request)}
    return web.Response(body=compress(dumps(document).encode()), content_type="application/json",
                        headers={"Content-Encoding": coding})


async def gzipped(request: web.Request) -> web.Response:
    return _encoded(request, "gzipped", "gzip", gzip.compress)


async def deflated(request: web.Request) -> web.Response:
    return _encoded(request, "deflated", "deflate", zlib.compress)  # HTTP's deflate is the zlib format


async def brotli_encoded(request: web.Request) -> web.Response:
    return _encoded(request, "brotli", "br", brotli.compress)


UTF8_DEMO = """<!doctype html>
<meta charset="utf-8"><title>UTF-8 demo</title>
<h1>Unicode Demo</h1>
<p>Greek: Σὲ γνωρίζω ἀπὸ τὴν κόψη · Chinese: 浏览器输入一个url中间经历的过程 · Arrows: → ⇒ ⟶ · Math: ∀x∈ℝ: ⌈x⌉ ≥ x</p>
"""

HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>httpbin · html</title></head>
<body><h1>Moby-Dick, chapter 1</h1>
<p>Call me Ishmael. Some years ago—never mind how long precisely—having little or no money in my purse, and
nothing particular to interest me on shore, I thought I would sail about a little and see the watery part of
the world.</p></body></html>
"""

XML = """<?xml version='1.0' encoding='us-ascii'?>
<!--  A SAMPLE set of slides  -->
<slideshow title="Sample Slide Show" date="Date of publication" author="Yours Truly">
  <slide type="all"><title>Wake up to WonderWidgets!</title></slide>
  <slide type="all"><title>Overview</title>
    <item>Why <em>WonderWidgets</em> are great</item>
    <item>Who <em>buys</em> WonderWidgets</item>
  </slide>
</slideshow>
"""

ROBOTS = "User-agent: *\nDisallow: /deny\n"


async def encoding_utf8(request: web.Request) -> web.Response:
    return web.Response(text=UTF8_DEMO, content_type="text/html", charset="utf-8")


async def html(request: web.Request) -> web.Response:
    return web.Response(text=HTML, content_type="text/html", charset="utf-8")


async def xml(request: web.Request) -> web.Response:
    return web.Response(text=XML, content_type="application/xml")


async def robots(request: web.Request) -> web.Response:
    return web.Response(text=ROBOTS, content_type="text/plain")


DENIED = """
   ____________________
  | robots.txt says:   |
  |   Disallow: /deny  |
  |____________________|
          \\   (o_o)
           \\  <)  )>  you should not be here
               /  \\
"""


# /image's pictures (drawn by images/draw.py), by media type, in the order httpbin.org prefers them.
IMAGES = {media_type: (Path(__file__).parent / "images" / f"hops.{suffix}").read_bytes()
          for media_type, suffix in (("image/webp", "webp"), ("image/svg+xml", "svg"), ("image/jpeg", "jpeg"),
                                     ("image/png", "png"))}


async def image(request: web.Request) -> web.Response:
    """The picture in the format the Accept header prefers (PNG for image/* and */*), 406 when it takes none."""
    media_type = semantics.negotiate(field(request, "Accept"), list(IMAGES), wildcard_choice="image/png")
    if media_type is None:
        raise http.Problem(406, "Not Acceptable", f"images here are {', '.join(IMAGES)}")
    return web.Response(body=IMAGES[media_type], content_type=media_type, headers={"Vary": "Accept"})


def image_as(media_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def one_format(request: web.Request) -> web.Response:
        return web.Response(body=IMAGES[media_type], content_type=media_type)

    return one_format


async def deny(request: web.Request) -> web.Response:
    """The page robots.txt disallows: a crawler that honours robots.txt never sees it."""
    return web.Response(text=DENIED, content_type="text/plain")


async def base64_decode(request: web.Request) -> web.Response:
    """The path segment, base64url-decoded (padding optional), as UTF-8 text."""
    value = request.match_info["value"]
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), altchars=b"-_", validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise http.Problem(400, "Invalid base64", "the path must be base64url-encoded UTF-8, e.g. "
                           "SFRUUEJJTiBpcyBhd2Vzb21l") from None
    return sandboxed(web.Response(text=decoded, content_type="text/html"))  # text/html, as at httpbin.org


def _links_page(n: int, offset: int) -> str:
    links = (f"{i} " if i == offset else f"<a href='{PREFIX}/links/{n}/{i}'>{i}</a> " for i in range(n))
    return f"<html><head><title>Links</title></head><body>{''.join(links)}</body></html>"


async def links(request: web.Request) -> web.Response:
    """A page of n links to pages like it (a crawler's maze): n is held to 1..200, as httpbin.org does."""
    n = min(max(http.int_param(request.match_info["n"], "n", 1, -(2**31), 2**31), 1), 200)
    offset = http.int_param(request.match_info["offset"], "offset", 0, -(2**31), 2**31)
    return web.Response(text=_links_page(n, offset), content_type="text/html")


async def links_start(request: web.Request) -> web.Response:
    n = http.int_param(request.match_info["n"], "n", 1, -(2**31), 2**31)
    raise web.HTTPFound(f"{PREFIX}/links/{n}/0")


BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")
ROUTES: list[tuple[str, str, object]] = [
    ("GET", "/get", get),
    *((m, f"/{m.lower()}", body_method) for m in BODY_METHODS),
    ("*", "/anything", anything),
    ("*", r"/anything/{tail:[\s\S]*}", anything),  # any path below, newlines (%0A) too
    ("GET", "/headers", headers),
    ("GET", "/ip", ip),
    ("GET", "/user-agent", user_agent),
    ("GET", "/uuid", uuid4),
    ("*", "/status/{codes}", status),
    ("*", "/delay/{n}", delay),
    ("GET", "/stream/{n}", stream),
    ("GET", "/drip", drip),
    ("GET", "/bytes/{n}", random_bytes),
    ("GET", "/stream-bytes/{n}", stream_bytes),
    ("GET", "/base64/{value}", base64_decode),
    ("GET", "/deny", deny),
    ("GET", "/image", image),
    *(("GET", f"/image/{name}", image_as(media_type)) for name, media_type in (
        ("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp"), ("svg", "image/svg+xml"))),
    ("GET", "/links/{n}", links_start),
    ("GET", "/links/{n}/{offset}", links),
    ("GET", "/range/{n}", byte_range),
    ("GET", "/cookies", cookies),
    ("GET", "/cookies/set", cookies_set),
    ("GET", "/cookies/delete", cookies_delete),
    ("GET", "/cookies/set/{name}/{value}", cookie_set),
    ("GET", "/redirect/{n}", redirect),
    ("GET", "/relative-redirect/{n}", relative_redirect),
    ("GET", "/absolute-redirect/{n}", absolute_redirect),
    ("GET", "/redirect-to", redirect_to),
    ("POST", "/redirect-to", redirect_to),
    ("GET", "/response-headers", response_headers),
    ("POST", "/response-headers", response_headers),
    ("GET", "/cache", cache),
    ("GET", "/cache/{n}", cache_for),
    ("GET", "/etag/{etag}", etag),
    ("GET", "/basic-auth/{user}/{passwd}", basic_auth),
    ("GET", "/hidden-basic-auth/{user}/{passwd}", hidden_basic_auth),
    ("GET", "/bearer", bearer),
    ("GET", "/gzip", gzipped),
    ("GET", "/deflate", deflated),
    ("GET", "/brotli", brotli_encoded),
    ("GET", "/encoding/utf8", encoding_utf8),
    ("GET", "/html", html),
    ("GET", "/xml", xml),
    ("GET", "/robots.txt", robots),
]
