"""HTTP Digest access authentication (RFC 7616) as httpbin.org offers it: /digest-auth/{qop}/{user}/{passwd}
[/{algorithm}[/{stale_after}]]. MD5, SHA-256 and SHA-512; qop "auth", "auth-int" (the body is hashed too) or
neither (RFC 2069's form); stale nonces; ?require-cookie=1 for clients that must keep cookies between the
challenge and the answer. The nonce and stale bookkeeping ride in cookies, as at httpbin.org, so any instance
can check any answer."""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from aiohttp import web

from services.common import http
from services.httpbin.endpoints import PREFIX, cookies_of, reply

REALM = "httpbin"
ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256, "SHA-512": hashlib.sha512}
QOPS = ("auth", "auth-int")
# A challenge's parameters: name=token or name="quoted string" (RFC 9110 11.2, auth-param).
_PARAM = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]*))\s*(?:,|$)')


def parse_digest(authorization: str | None) -> dict[str, str] | None:
    """The parameters of a `Digest ...` Authorization header, or None when it is not one."""
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if not match or match.end() == position:
            return None
        quoted, token = match.group(2), match.group(3)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else token
        position = match.end()
    return params


def _octets(text: str) -> bytes:
    """A header's text as the bytes the client sent: aiohttp decodes non-UTF-8 header bytes with surrogateescape,
    which a plain encode() refuses (a 500); hashing the client's own bytes is what RFC 7616 means anyway."""
    return text.encode("utf-8", "surrogateescape")


def _hash(algorithm: str, *parts: str | bytes) -> str:
    joined = b":".join(_octets(part) if isinstance(part, str) else part for part in parts)
    return ALGORITHMS[algorithm](joined).hexdigest()


def expected_response(params: dict[str, str], password: str, method: str, uri: str, body: bytes,
                      algorithm: str) -> str:
    """What the client's `response` must be (RFC 7616 3.4.1): H(HA1:nonce[:nc:cnonce:qop]:HA2)."""
    ha1 = _hash(algorithm, params.get("username", ""), params.get("realm", ""), password)
    qop = params.get("qop")
    ha2 = _hash(algorithm, method, uri, _hash(algorithm, body)) if qop == "auth-int" else _hash(algorithm, method, uri)
    if qop in QOPS:
        return _hash(algorithm, ha1, params.get("nonce", ""), params.get("nc", ""), params.get("cnonce", ""), qop, ha2)
    return _hash(algorithm, ha1, params.get("nonce", ""), ha2)


def challenge(qop: str | None, algorithm: str, stale: bool) -> web.Response:
    offered = qop if qop in QOPS else ", ".join(QOPS)
    nonce, opaque = _hash(algorithm, os.urandom(16)), _hash(algorithm, os.urandom(16))
    header = (f'Digest realm="{REALM}", nonce="{nonce}", qop="{offered}", opaque="{opaque}", '
              f"algorithm={algorithm}, stale={'TRUE' if stale else 'FALSE'}")
    return web.Response(status=401, headers={"WWW-Authenticate": header})


def _next_stale_after(value: str) -> str:
    """The countdown cookie, one less; anything but a count of at most 18 ASCII digits stops counting."""
    if not (value.isascii() and value.isdigit() and len(value) <= 18):
        return "never"
    return str(max(int(value) - 1, 0))


async def digest_auth(request: web.Request) -> web.Response:
    qop = request.match_info["qop"]
    user, password = request.match_info["user"], request.match_info["passwd"]
    algorithm = request.match_info.get("algorithm", "MD5")
    algorithm = algorithm if algorithm in ALGORITHMS else "MD5"
    stale_after = request.match_info.get("stale_after", "never")
    require_cookie = request.query.get("require-cookie", "").lower() in ("1", "t", "true")
    params = parse_digest(request.headers.get("Authorization"))
    cookies = cookies_of(request)

    def answer(response: web.Response, **values: str) -> web.Response:
        for name, value in {"fake": "fake_value", **values}.items():
            response.set_cookie(name, cookie_safe(value), path=PREFIX)
        return response

    if params is None or (require_cookie and "Cookie" not in request.headers):
        return answer(challenge(qop, algorithm, stale=False), stale_after=stale_after)
    if require_cookie and cookies.get("fake") != "fake_value":
        raise http.Problem(403, "Missing cookie", "the cookie set with the challenge did not come back")
    nonce = params.get("nonce", "")
    if cookies.get("last_nonce") == nonce or cookies.get("stale_after") == "0":
        return answer(challenge(qop, algorithm, stale=True), stale_after=stale_after, last_nonce=nonce)
    uri = request.raw_path
    body = await request.read() if params.get("qop") == "auth-int" else b""
    expected = expected_response(params, password, request.method, uri, body, algorithm)
    valid = (params.get("username") == user and params.get("uri") == uri
             and hmac.compare_digest(_octets(params.get("response", "")), expected.encode()))
    if not valid:
        return answer(challenge(qop, algorithm, stale=False), stale_after=stale_after, last_nonce=nonce)
    if "stale_after" in cookies:
        return answer(reply({"authenticated": True, "user": user}),
                      stale_after=_next_stale_after(cookies["stale_after"]))
    return answer(reply({"authenticated": True, "user": user}))


def cookie_safe(value: str) -> str:
    """A cookie value from the client (a nonce, a count): only the cookie-octet characters survive."""
    return re.sub(r"[^!#-+\--:<-\[\]-~]", "", value)[:200]


ROUTES = [
    ("GET", "/digest-auth/{qop}/{user}/{passwd}", digest_auth),
    ("GET", "/digest-auth/{qop}/{user}/{passwd}/{algorithm}", digest_auth),
    ("GET", "/digest-auth/{qop}/{user}/{passwd}/{algorithm}/{stale_after}", digest_auth),
]
