"""Building blocks for the three OpenAPI 3.1 documents (served at <prefix>/openapi.json): the problem
document, the request-id header, and the benchmark endpoints every service shares."""

from __future__ import annotations

from services.common import http

PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "request_id"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
        "detail": {"type": "string"}, "instance": {"type": "string"}, "request_id": {"type": "string"},
    },
}
REQUEST_ID = {"description": "The request id: the client's when well-formed, else a generated one",
              "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}}


def problem(description: str) -> dict:
    return {"description": description,
            "content": {http.PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}


def json_response(description: str, schema: dict, headers: dict | None = None,
                  media_type: str = http.JSON) -> dict:
    response: dict = {"description": description, "content": {media_type: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def operation(summary: str, responses: dict, parameters: list | None = None, body: dict | None = None,
              tags: list[str] | None = None) -> dict:
    """One operation; every one may also answer with a problem document (`default`)."""
    op: dict = {"summary": summary, "responses": {**responses, "default": problem("An RFC 9457 problem")}}
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = body
    if tags:
        op["tags"] = tags
    return op


def query_int(name: str, low: int, high: int, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": "integer", "minimum": low, "maximum": high}}


def path_param(name: str, schema: dict) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def json_body(schema: dict, media_type: str = http.JSON, required: bool = True) -> dict:
    return {"required": required, "content": {media_type: {"schema": schema}}}


FETCHES = {"type": "object", "required": ["model", "url", "n", "total_ms", "fetches"], "properties": {
    "model": {"type": "string"}, "url": {"type": "string"}, "n": {"type": "integer"},
    "total_ms": {"type": "number"}, "sum_of_fetch_ms": {"type": "number"},
    "fetches": {"type": "array", "items": {"type": "object", "required": ["i", "status", "ms"]}},
}}


def shared_paths(prefix: str, service: str) -> dict:
    """healthz, plaintext, json, io, cpu, conn and fanout: the same on every service."""
    hello = {"type": "object", "required": ["message"], "properties": {"message": {"const": http.HELLO}}}
    return {
        f"{prefix}/healthz": {"get": operation("Liveness", {"200": json_response("Up", {
            "type": "object", "required": ["status", "service"],
            "properties": {"status": {"const": "ok"}, "service": {"const": service}}})}, tags=["benchmark"])},
        f"{prefix}/plaintext": {"get": operation("Hello, World! as text/plain", {
            "200": json_response("The text", {"type": "string", "const": http.HELLO}, media_type="text/plain")},
            tags=["benchmark"])},
        f"{prefix}/json": {"get": operation("Hello, World! as JSON", {"200": json_response("The document", hello)},
                                            tags=["benchmark"])},
        f"{prefix}/io": {"get": operation("Wait ms milliseconds cooperatively", {
            "200": json_response("Waited", {"type": "object", "required": ["waited_ms"],
                                            "properties": {"waited_ms": {"type": "integer"}}})},
            [query_int("ms", 0, http.IO_MAX_MS, "milliseconds to wait")], tags=["benchmark"])},
        f"{prefix}/cpu": {"get": operation("Bounded pure-Python CPU work", {
            "200": json_response("Result", {"type": "object", "required": ["n", "result"],
                                            "properties": {"n": {"type": "integer"}, "result": {"type": "integer"}}})},
            [query_int("n", 1, http.CPU_MAX_N, "iterations")], tags=["benchmark"])},
        f"{prefix}/conn": {"get": operation("What the server saw of this TCP connection", {
            "200": json_response("The connection", {
                "type": "object", "required": ["service", "requests_on_this_connection", "pid", "http_version"],
                "properties": {"requests_on_this_connection": {"type": ["integer", "null"], "minimum": 1}}})},
            tags=["connections"])},
        f"{prefix}/fanout": {"get": operation("Fetch httpbin's /delay/D N times concurrently", {
            "200": json_response("Per-fetch timings and the total", FETCHES)},
            [query_int("n", 1, 50, "fetches"), query_int("delay", 0, 3, "seconds each fetch waits")],
            tags=["concurrency"])},
    }


def stream_path(prefix: str, service: str) -> dict:
    """<prefix>/stream/{n} on web and catalog (httpbin documents its own, httpbin.org-shaped one)."""
    return {f"{prefix}/stream/{{n}}": {"get": operation(
        "n JSON lines in a chunked body (Transfer-Encoding: chunked, no Content-Length)",
        {"200": {"description": f'One JSON document per line: {{"id": i, "service": "{service}"}}'}},
        [path_param("n", {"type": "integer", "minimum": 1, "maximum": http.STREAM_MAX_N})],
        tags=["framing"])}}


def document(service: str, description: str, paths: dict, security_schemes: dict | None = None) -> dict:
    components: dict = {"schemas": {"Problem": PROBLEM}, "headers": {"X-Request-ID": REQUEST_ID}}
    if security_schemes:
        components["securitySchemes"] = security_schemes
    return {
        "openapi": "3.1.0",
        "info": {"title": f"{service} service", "version": "1.0.0", "description": description},
        "paths": paths,
        "components": components,
    }


IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "The ETag last seen: a stale one gets 412 and changes nothing"}
IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
                   "description": "Retrying with the same key and body replays the first response"}
ETAG = {"description": "Strong validator of the representation", "schema": {"type": "string"}}
LOCATION = {"schema": {"type": "string"}}


def document_paths(collection: str, item: str, key_param: dict, schema: dict, extra_params: list | None = None,
                   tag: str = "documents", with_post: bool = True) -> dict:
    """The operations of a services.common.documents collection (httpbin's bins, web's cart)."""
    extra = extra_params or []
    stored = {"type": "object", "required": ["key", "document", "created_at", "updated_at"], "properties": {
        "key": {"type": "string"}, "document": schema, "created_at": {"type": "string"},
        "updated_at": {"type": "string"}}}
    listing_key = "items" if not with_post else "bins"
    listing: dict = {"type": "object", "required": [listing_key],
                     "properties": {listing_key: {"type": "array", "items": stored}}}
    paging: list = []
    if with_post:  # anyone's collection (bins) is paginated by key; a user's cart is listed whole
        listing["properties"]["next_cursor"] = {"type": ["string", "null"]}
        paging = [query_int("limit", 1, 100, "documents per page (20)"),
                  {"name": "cursor", "in": "query", "required": False, "description": "a next_cursor",
                   "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{0,64}$"}}]
    collection_ops: dict = {"get": operation("Every document, a page at a time", {
        "200": json_response("The documents", listing)}, [*extra, *paging] or None, tags=[tag])}
    if with_post:
        collection_ops["post"] = operation("Store a new document under a generated key", {
            "201": json_response("Stored", stored, {"Location": LOCATION, "ETag": ETAG})},
            [*extra, IDEMPOTENCY_KEY], json_body(schema), tags=[tag])
    return {
        collection: collection_ops,
        item: {
            "parameters": [key_param, *extra],
            "get": operation("One document (If-None-Match: 304)", {
                "200": json_response("The document", stored, {"ETag": ETAG}), "304": {"description": "Not modified"}},
                tags=[tag]),
            "put": operation("Store it at this key: 201 created, 200 replaced", {
                "200": json_response("Replaced", stored, {"ETag": ETAG}),
                "201": json_response("Created", stored, {"ETag": ETAG, "Location": LOCATION})},
                [IF_MATCH], json_body(schema), tags=[tag]),
            "patch": operation("JSON Merge Patch", {"200": json_response("Patched", stored, {"ETag": ETAG})},
                               [IF_MATCH], json_body({"type": "object"}, "application/merge-patch+json"), tags=[tag]),
            "delete": operation("Delete it", {"204": {"description": "Deleted"}}, [IF_MATCH], tags=[tag]),
        },
    }
