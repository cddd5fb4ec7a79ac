"""catalog's OpenAPI 3.1 document, served at /catalog/openapi.json."""

from __future__ import annotations

from services.common import openapi as oa
from services.common.http import MAX_ID
from services.common.semantics import MERGE_PATCH_JSON
from stack.topology import service

ITEM_FIELDS = {
    "name": {"type": "string", "minLength": 1, "maxLength": 200},
    "price": {"type": "integer", "minimum": 0, "maximum": 10**12, "description": "integer cents"},
    "stock": {"type": "integer", "minimum": 0, "maximum": 10**12},
}
ITEM_INPUT = {"type": "object", "required": list(ITEM_FIELDS), "properties": ITEM_FIELDS,
              "additionalProperties": False}
ITEM = {"type": "object", "required": ["id", *ITEM_FIELDS, "created_at", "updated_at"], "properties": {
    "id": {"type": "integer", "minimum": 1}, **ITEM_FIELDS,
    "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"},
}}
ETAG = {"description": "Strong validator of the item's representation", "schema": {"type": "string"}}
ITEM_ID = oa.path_param("item_id", {"type": "integer", "minimum": 1, "maximum": MAX_ID})
IF_MATCH = {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
            "description": "The ETag last seen; required to change an existing item (428 without, 412 if stale)"}
IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
                   "description": "Retrying with the same key and body replays the first response"}


BEARER = {"operatorOrWeb": {
    "type": "http", "scheme": "bearer",
    "description": "The operator's token (var/secrets/catalog_operator) changes anything; web's own token "
                   "(catalog_web) only an item's stock. Reads need none."}}


def guarded(op: dict) -> dict:
    """A write: it takes a bearer token, 401 without a valid one, 403 when that credential may not do this."""
    op["security"] = [{"operatorOrWeb": []}]
    op["responses"] = {**op["responses"], "401": oa.problem("No credential, or not a valid one (WWW-Authenticate)"),
                       "403": oa.problem("web's credential, for more than a stock change")}
    return op


def build() -> dict:
    prefix = service("catalog").route_prefix
    items = f"{prefix}/items"
    paths = {
        **oa.shared_paths(prefix, "catalog"),
        **oa.stream_path(prefix, "catalog"),
        items: {
            "get": oa.operation("A page of items (keyset pagination, RFC 8288 Link)", {
                "200": oa.json_response("The page", {
                    "type": "object", "required": ["items", "next_cursor"],
                    "properties": {"items": {"type": "array", "items": ITEM},
                                   "next_cursor": {"type": ["string", "null"]}}})},
                [oa.query_int("limit", 1, 100, "page size"), oa.query_int("cursor", 0, MAX_ID, "last id seen")],
                tags=["items"]),
            "post": guarded(oa.operation("Create an item", {
                "201": oa.json_response("Created", ITEM, {"Location": {"schema": {"type": "string"}}, "ETag": ETAG})},
                [IDEMPOTENCY_KEY], oa.json_body(ITEM_INPUT), tags=["items"])),
        },
        items + "/{item_id}": {
            "parameters": [ITEM_ID],
            "get": oa.operation("One item (If-None-Match: 304)", {
                "200": oa.json_response("The item", ITEM, {"ETag": ETAG}), "304": {"description": "Not modified"}},
                tags=["items"]),
            "put": guarded(oa.operation("Replace the item, or create it at this id", {
                "200": oa.json_response("Replaced", ITEM, {"ETag": ETAG}),
                "201": oa.json_response("Created", ITEM, {"ETag": ETAG})},
                [IF_MATCH], oa.json_body(ITEM_INPUT), tags=["items"])),
            "patch": guarded(oa.operation("Change some fields (JSON Merge Patch)", {
                "200": oa.json_response("Patched", ITEM, {"ETag": ETAG})},
                [IF_MATCH], oa.json_body({"type": "object", "properties": ITEM_FIELDS}, MERGE_PATCH_JSON),
                tags=["items"])),
            "delete": guarded(oa.operation("Delete the item", {"204": {"description": "Deleted"}}, [IF_MATCH],
                                           tags=["items"])),
        },
    }
    return oa.document("catalog", "The RESTful microservice (Tornado): items with exact HTTP semantics.", paths,
                       BEARER)


OPENAPI = build()
