"""Where this httpbin answers differently from httpbin.org (the PyPI `httpbin` package, the maintained fork of the
original) on purpose, and why. docs/services.md's parity table lists these rows;
tests/unit/test_httpbin_reference.py sends each request to both and checks that the difference is exactly this
one, and that everything else matches."""

from __future__ import annotations

from dataclasses import dataclass

from services.httpbin.endpoints import MAX_REDIRECTS


@dataclass(frozen=True)
class Difference:
    request: str  # method and path (under the service's prefix here), as the docs' table shows it
    httpbin_org: str  # what the reference answers
    here: str
    why: str
    statuses: tuple[int, int] | None = None  # (httpbin.org's, ours) when the status differs


DELIBERATE: tuple[Difference, ...] = (
    Difference("GET /json", "a sample slideshow document", '{"message": "Hello, World!"}',
               "/json is the stack's benchmark endpoint, the same on every service"),
    Difference("GET /delay/abc", "500 (an exception)", "400 problem document",
               "bad input never gets a 5xx", (500, 400)),
    Difference("GET /redirect/0", "500 (an assertion)", "400 problem document",
               "bad input never gets a 5xx", (500, 400)),
    Difference("GET /base64/%%%", "200 with a hint as the body", "400 problem document",
               "a client can tell a decoding from an error", (200, 400)),
    Difference("GET /redirect-to?url=http://example.com/", "302 to anywhere", "400 problem document",
               "no open redirect: relative targets, this host, or REDIRECT_HOSTS", (302, 400)),
    Difference("GET /response-headers?Content-Length=1", "sets it (the response breaks)", "400 problem document",
               "framing, hop-by-hop and X-Accel-* headers are the server's own", (200, 400)),
    Difference("GET /response-headers?X-Test=1", "the body lists every response header",
               "the body lists the query; Content-Security-Policy: sandbox and nosniff added",
               "a client-chosen text/html cannot run with web's cookies on the same origin"),
    Difference("GET /cookies/set?a=1", "Path=/", "Path=/httpbin",
               "httpbin's cookies stay under its prefix, away from web's session cookie"),
    Difference("GET /image (Accept: */*)", "406", "image/png", "RFC 9110: */* accepts any media type",
               (406, 200)),
    Difference("any response", "Access-Control-Allow-Origin: * with Allow-Credentials: true", "no CORS headers",
               "same origin as web's session; browsers refuse that pair anyway"),
    Difference("any error", "HTML or text", "application/problem+json with the request id",
               "one error format across the stack (RFC 9457)"),
    Difference("GET /digest-auth/auth/user/passwd", 'realm "me@kennethreitz.com"; any username with the right '
               "password passes", 'realm "httpbin"; the username must be the one in the path',
               "the path names the account"),
    Difference("GET /hidden-basic-auth/user/passwd (wrong)", "404, empty", "404 problem document",
               "the same 404 as any missing path here"),
    Difference("GET /etag/abc", "ETag: abc", 'ETag: "abc"', "an entity tag is quoted (RFC 9110 8.8.3)"),
    Difference("GET /range/26 (no Range)", "200 with Content-Range", "200 without it",
               "Content-Range belongs to 206 and 416 answers (RFC 9110 14.4)"),
    Difference("POST /post (over 1 MiB)", "accepted", "413 problem document",
               "nginx's client_max_body_size is the stack's limit, the service takes as much"),
    Difference("POST /post (form, Content-Encoding: gzip)", "form parsed from the coded bytes as if plain",
               "data: the bytes sent, form empty",
               "a content-coded body is opaque until decoded, and this server decodes no request body"),
    Difference("GET /redirect/101", "302 (no bound)", "400 problem document",
               f"every number a client sends is bounded: chains up to {MAX_REDIRECTS} (past curl's 50)", (302, 400)),
    Difference("GET /cache (conditional)", "304 without ETag", "304 with ETag and Last-Modified",
               "a 304 carries the fields its 200 would have (RFC 9110 15.4.5)"),
    Difference("GET /user-agent (User-Agent sent twice)", "200, the values joined", "400 problem document",
               "User-Agent is a singleton field (RFC 9110 5.3): aiohttp's parser refuses a second line", (200, 400)),
)
