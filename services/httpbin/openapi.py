"""httpbin's OpenAPI 3.1 document, served at /httpbin/openapi.json."""

from __future__ import annotations

from services.common import openapi as oa
from services.httpbin.endpoints import MAX_REDIRECTS
from stack.topology import service

ANY = {"description": "Any content"}
BASICS = {"type": "object", "required": ["args", "headers", "origin", "url"], "properties": {
    "args": {"type": "object"}, "headers": {"type": "object"}, "origin": {"type": "string"},
    "url": {"type": "string"}}}
WITH_BODY = {"type": "object", "required": ["args", "data", "files", "form", "headers", "json", "origin", "url"],
             "properties": {**BASICS["properties"], "data": {"type": "string"}, "files": {"type": "object"},
                            "form": {"type": "object"}, "json": {}}}
ANY_BODY = {"required": False, "content": {"application/json": {"schema": {}}, "text/plain": {"schema": {}}}}
P = oa.path_param
JSON = oa.json_response


def simple(summary: str, schema: dict, parameters: list | None = None) -> dict:
    return {"get": oa.operation(summary, {"200": JSON("OK", schema)}, parameters, tags=["httpbin"])}


def get(summary: str, responses: dict, parameters: list | None = None) -> dict:
    return {"get": oa.operation(summary, responses, parameters, tags=["httpbin"])}


AUTHENTICATED = JSON("Authenticated", {"type": "object", "required": ["authenticated", "user"]})
N_REDIRECTS = [P("n", {"type": "integer", "minimum": 1, "maximum": MAX_REDIRECTS})]
WHOLE = {"type": "integer", "minimum": 0, "maximum": 102400}
DURATION = {"type": "string", "pattern": "^[0-9]{1,9}(\\.[0-9]{1,9})?(ms|s)?$"}


def more_paths(h: str) -> dict:
    """httpbin.org's remaining endpoints and go-httpbin's additions."""
    digest = [P("qop", {"type": "string"}), P("user", {"type": "string"}), P("passwd", {"type": "string"})]
    algorithm = P("algorithm", {"type": "string", "enum": ["MD5", "SHA-256", "SHA-512"]})
    return {
        f"{h}/": get("This index: every endpoint", {"200": ANY}),
        f"{h}/base64/{{value}}": get("The path, base64url-decoded", {"200": ANY}, [P("value", {"type": "string"})]),
        f"{h}/cookies/set/{{name}}/{{value}}": get("Set one cookie, then redirect to /cookies", {"302": ANY}, [
            P("name", {"type": "string"}), P("value", {"type": "string"})]),
        f"{h}/deflate": get("A deflate-encoded JSON body", {"200": ANY}),
        f"{h}/brotli": get("A brotli-encoded JSON body", {"200": ANY}),
        f"{h}/deny": get("The page robots.txt disallows", {"200": ANY}),
        f"{h}/digest-auth/{{qop}}/{{user}}/{{passwd}}": get("HTTP Digest auth (MD5)", {
            "200": AUTHENTICATED, "401": ANY}, digest),
        f"{h}/digest-auth/{{qop}}/{{user}}/{{passwd}}/{{algorithm}}": get("HTTP Digest auth", {
            "200": AUTHENTICATED, "401": ANY}, [*digest, algorithm]),
        f"{h}/digest-auth/{{qop}}/{{user}}/{{passwd}}/{{algorithm}}/{{stale_after}}": get(
            "HTTP Digest auth whose nonce goes stale after a number of uses", {"200": AUTHENTICATED, "401": ANY},
            [*digest, algorithm, P("stale_after", {"type": "string"})]),
        f"{h}/hidden-basic-auth/{{user}}/{{passwd}}": get("HTTP Basic auth answering 404 instead of 401", {
            "200": AUTHENTICATED, "404": ANY}, [P("user", {"type": "string"}), P("passwd", {"type": "string"})]),
        f"{h}/image": get("An image in the format Accept prefers", {"200": ANY, "406": ANY}),
        **{f"{h}/image/{kind}": get(f"A {kind.upper()} image", {"200": ANY})
           for kind in ("png", "jpeg", "webp", "svg")},
        f"{h}/links/{{n}}": get("Redirect to the first page of n links", {"302": ANY}, [
            P("n", {"type": "integer", "minimum": 1, "maximum": 200})]),
        f"{h}/links/{{n}}/{{offset}}": get("A page of n links", {"200": ANY}, [
            P("n", {"type": "integer", "minimum": 1, "maximum": 200}),
            P("offset", {"type": "integer", "minimum": 0, "maximum": 200})]),
        f"{h}/relative-redirect/{{n}}": get("Redirect n times with relative Locations", {"302": ANY}, N_REDIRECTS),
        f"{h}/absolute-redirect/{{n}}": get("Redirect n times with absolute Locations", {"302": ANY}, N_REDIRECTS),
        f"{h}/stream-bytes/{{n}}": get("n random bytes, chunked", {"200": ANY}, [
            P("n", WHOLE), oa.query_int("seed", 0, 2**31, "repeatable bytes"),
            oa.query_int("chunk_size", 1, 102400, "bytes per chunk")]),
        f"{h}/sse": get("Server-sent events", {"200": ANY}, [
            oa.query_int("count", 1, 100, "events"), {"name": "duration", "in": "query", "schema": DURATION},
            {"name": "delay", "in": "query", "schema": DURATION}, oa.query_int("retry", 0, 3600000, "ms")]),
        f"{h}/jsonl": get("JSON lines", {"200": ANY}, [
            oa.query_int("count", 1, 100, "lines"), {"name": "duration", "in": "query", "schema": DURATION}]),
        f"{h}/websocket/echo": get("A WebSocket that echoes every message", {"101": ANY}),
        f"{h}/hostname": get("Which instance answered", {"200": JSON("The instance", {
            "type": "object", "required": ["hostname", "instance", "pid"]})}),
        f"{h}/dump/request": {m: oa.operation("The request as received, in HTTP/1.1 wire form", {"200": ANY},
                                              body=ANY_BODY if m != "get" else None, tags=["httpbin"])
                              for m in ("get", "post", "put", "patch", "delete")},
        f"{h}/trailers": get("The query's fields as trailers after a chunked body", {"200": ANY}),
        f"{h}/unstable": {m: oa.operation("200, or a 500 at failure_rate (seeded)", {"200": JSON("The request", BASICS),
                                                                                  "500": ANY}, [
            {"name": "failure_rate", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 1}},
            oa.query_int("seed", 0, 2**31, "repeatable outcome")], tags=["httpbin"]) for m in ("get", "post")},
    }


def build() -> dict:
    h = service("httpbin").route_prefix
    body_ops = {m: oa.operation(f"{m.upper()} echo", {"200": JSON("The request as received", WITH_BODY)},
                                body=ANY_BODY, tags=["httpbin"]) for m in ("post", "put", "patch", "delete")}
    anything = {m: oa.operation("Echo any method", {"200": JSON("The request", {**WITH_BODY, "required": [
        *WITH_BODY["required"], "method"]})}, body=ANY_BODY if m != "get" else None, tags=["httpbin"])
        for m in ("get", "post", "put", "patch", "delete")}
    paths = {
        **oa.shared_paths(h, "httpbin"),
        f"{h}/get": simple("The request's args, headers, origin and url", BASICS),
        **{f"{h}/{m}": {m: op} for m, op in body_ops.items()},
        f"{h}/anything": anything,
        f"{h}/headers": simple("The request headers", {"type": "object", "required": ["headers"]}),
        f"{h}/ip": simple("The client's address", {"type": "object", "required": ["origin"]}),
        f"{h}/user-agent": simple("The User-Agent", {"type": "object", "required": ["user-agent"]}),
        f"{h}/uuid": simple("A UUID4", {"type": "object", "required": ["uuid"]}),
        f"{h}/status/{{codes}}": {"get": oa.operation("Answer with the status code given (or one of them)", {
            "200": ANY}, [P("codes", {"type": "string"})], tags=["httpbin"])},
        f"{h}/delay/{{n}}": {"get": oa.operation("Answer after n seconds (at most 10)", {
            "200": JSON("The request", {**WITH_BODY, "required": [*WITH_BODY["required"], "delayed_seconds"]})},
            [P("n", {"type": "number", "minimum": 0, "maximum": 10})], tags=["httpbin"])},
        f"{h}/stream/{{n}}": {"get": oa.operation("n JSON lines, chunked", {"200": ANY},
                                                  [P("n", {"type": "integer", "minimum": 1, "maximum": 100})],
                                                  tags=["httpbin"])},
        f"{h}/drip": {"get": oa.operation("A slow body with a Content-Length", {"200": ANY}, [
            {"name": "duration", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 10}},
            oa.query_int("numbytes", 1, 10240, "bytes"), oa.query_int("code", 200, 599, "status"),
            {"name": "delay", "in": "query", "schema": {"type": "number", "minimum": 0, "maximum": 10}}],
            tags=["httpbin"])},
        f"{h}/bytes/{{n}}": {"get": oa.operation("n random bytes", {"200": ANY},
                                                 [P("n", {"type": "integer", "minimum": 0, "maximum": 102400})],
                                                 tags=["httpbin"])},
        f"{h}/range/{{n}}": {"get": oa.operation("n bytes honouring Range (206, 416)", {
            "200": ANY, "206": ANY, "416": ANY}, [P("n", {"type": "integer", "minimum": 1, "maximum": 102400})],
            tags=["httpbin"])},
        f"{h}/cookies": simple("The request's cookies", {"type": "object", "required": ["cookies"]}),
        f"{h}/cookies/set": {"get": oa.operation("Set the query's cookies, then redirect", {"302": ANY},
                                                 tags=["httpbin"])},
        f"{h}/cookies/delete": {"get": oa.operation("Delete the query's cookies, then redirect", {"302": ANY},
                                                    tags=["httpbin"])},
        f"{h}/redirect/{{n}}": {"get": oa.operation("Redirect n times, then /get", {"302": ANY},
                                                    [P("n", {"type": "integer", "minimum": 1, "maximum": 20})],
                                                    tags=["httpbin"])},
        f"{h}/redirect-to": {"get": oa.operation("Redirect to ?url=", {"3XX": ANY}, [
            {"name": "url", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}},
            oa.query_int("status_code", 300, 399, "redirect status")], tags=["httpbin"])},
        f"{h}/response-headers": simple("Set the query's headers on the response", {"type": "object"}),
        f"{h}/cache": {"get": oa.operation("304 when the request is conditional", {
            "200": JSON("The request", BASICS), "304": ANY}, tags=["httpbin"])},
        f"{h}/cache/{{n}}": simple("Cache-Control: max-age=n", BASICS,
                                   [P("n", {"type": "integer", "minimum": 0, "maximum": 31536000})]),
        f"{h}/etag/{{etag}}": {"get": oa.operation("ETag, If-None-Match (304) and If-Match (412)", {
            "200": JSON("The request", BASICS), "304": ANY}, [P("etag", {"type": "string"})], tags=["httpbin"])},
        f"{h}/basic-auth/{{user}}/{{passwd}}": {"get": oa.operation("HTTP Basic auth", {
            "200": JSON("Authenticated", {"type": "object", "required": ["authenticated", "user"]}), "401": ANY},
            [P("user", {"type": "string"}), P("passwd", {"type": "string"})], tags=["httpbin"])},
        f"{h}/bearer": {"get": oa.operation("Bearer token auth", {
            "200": JSON("Authenticated", {"type": "object", "required": ["authenticated", "token"]}), "401": ANY},
            tags=["httpbin"])},
        f"{h}/gzip": {"get": oa.operation("A gzip-encoded JSON body", {"200": ANY}, tags=["httpbin"])},
        f"{h}/encoding/utf8": {"get": oa.operation("UTF-8 text", {"200": ANY}, tags=["httpbin"])},
        f"{h}/html": {"get": oa.operation("An HTML page", {"200": ANY}, tags=["httpbin"])},
        f"{h}/xml": {"get": oa.operation("An XML document", {"200": ANY}, tags=["httpbin"])},
        f"{h}/robots.txt": {"get": oa.operation("robots.txt", {"200": ANY}, tags=["httpbin"])},
        **more_paths(h),
        **oa.document_paths(f"{h}/bins", f"{h}/bins/{{name}}",
                            P("name", {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}),
                            {"type": "object"}, tag="bins"),
    }
    return oa.document("httpbin", "A self-hosted httpbin on aiohttp (the seed's examples call httpbin.org).", paths)


OPENAPI = build()
