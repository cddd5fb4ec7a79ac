"""httpbin's OpenAPI 3.1 document, served at /httpbin/openapi.json."""

from __future__ import annotations

from services.common import openapi as oa

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


def build() -> dict:
    h = "/httpbin"
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
        **oa.document_paths(f"{h}/bins", f"{h}/bins/{{name}}",
                            P("name", {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}),
                            {"type": "object"}, tag="bins"),
    }
    return oa.document("httpbin", "A self-hosted httpbin on aiohttp (the seed's examples call httpbin.org).", paths)


OPENAPI = build()
