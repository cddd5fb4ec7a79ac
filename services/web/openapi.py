"""web's OpenAPI 3.1 document, served at /web/openapi.json."""

from __future__ import annotations

from services.common import openapi as oa
from services.common.http import MAX_ID
from stack.topology import service

PREFIX = service("web").route_prefix  # every path below begins with it

CREDENTIALS = {"type": "object", "required": ["email", "password"], "additionalProperties": False, "properties": {
    "email": {"type": "string", "minLength": 3, "maxLength": 254}, "password": {"type": "string", "minLength": 8,
                                                                                 "maxLength": 128}}}
USER = {"type": "object", "required": ["id", "email", "created_at"], "properties": {
    "id": {"type": "integer"}, "email": {"type": "string"}, "created_at": {"type": "string"}}}
ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}  # an order's or an item's (catalog's ids)
LINE = {"type": "object", "required": ["item_id", "quantity"], "additionalProperties": False, "properties": {
    "item_id": {"type": "integer", "minimum": 1}, "quantity": {"type": "integer", "minimum": 1, "maximum": 1000}}}
ORDER = {"type": "object", "required": ["id", "user_id", "total", "created_at", "lines"], "properties": {
    "id": {"type": "integer"}, "user_id": {"type": "integer"}, "total": {"type": "integer"},
    "created_at": {"type": "string"}, "lines": {"type": "array", "items": {
        "type": "object", "required": ["item_id", "name", "unit_price", "quantity"]}}}}
SESSION = [{"name": "sid", "in": "cookie", "required": False, "schema": {"type": "string"},
            "description": "The session id set by POST /web/login"}]
IDEMPOTENCY_KEY = {"name": "Idempotency-Key", "in": "header", "required": False,
                   "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"}}


def build() -> dict:
    paths = {
        **oa.shared_paths(PREFIX, "web"),
        **oa.stream_path(PREFIX, "web"),
        f"{PREFIX}/signup": {"post": oa.operation("Create an account", {
            "201": oa.json_response("Created", USER, {"Location": {"schema": {"type": "string"}}})},
            body=oa.json_body(CREDENTIALS), tags=["accounts"])},
        f"{PREFIX}/login": {"post": oa.operation("Log in: sets the session cookie (a new id every time)", {
            "200": oa.json_response("Logged in", USER, {"Set-Cookie": {"schema": {"type": "string"}}})},
            body=oa.json_body(CREDENTIALS), tags=["accounts"])},
        f"{PREFIX}/logout": {"post": oa.operation("Log out: the session row is deleted", {
            "204": {"description": "Logged out"}}, SESSION, tags=["accounts"])},
        f"{PREFIX}/me": {"get": oa.operation("The logged-in account", {"200": oa.json_response("You", USER)}, SESSION,
                                        tags=["accounts"])},
        f"{PREFIX}/orders": {
            "post": oa.operation("Place an order: items priced and reserved in catalog", {
                "201": oa.json_response("Placed", ORDER, {"Location": {"schema": {"type": "string"}}})},
                [*SESSION, IDEMPOTENCY_KEY], oa.json_body({
                    "type": "object", "required": ["lines"], "additionalProperties": False,
                    "properties": {"lines": {"type": "array", "minItems": 1, "maxItems": 20, "items": LINE}}}),
                tags=["orders"]),
            "get": oa.operation("Your orders, a page at a time", {"200": oa.json_response("The page", {
                "type": "object", "required": ["orders", "next_cursor"],
                "properties": {"orders": {"type": "array", "items": ORDER},
                               "next_cursor": {"type": ["string", "null"]}}})},
                [*SESSION, oa.query_int("limit", 1, 100, "page size"),
                 oa.query_int("cursor", 0, MAX_ID, "last id seen")], tags=["orders"]),
        },
        f"{PREFIX}/orders/{{order_id}}": {"get": oa.operation("One of your orders", {
            "200": oa.json_response("The order", ORDER, {"ETag": {"schema": {"type": "string"}}}),
            "304": {"description": "Not modified"}},
            [oa.path_param("order_id", ID), *SESSION], tags=["orders"])},
        **oa.document_paths(f"{PREFIX}/cart", f"{PREFIX}/cart/items/{{item_id}}",
                            oa.path_param("item_id", ID),
                            {"type": "object", "required": ["quantity"], "additionalProperties": False,
                             "properties": {"quantity": {"type": "integer", "minimum": 1, "maximum": 1000}}},
                            SESSION, tag="cart", with_post=False),
    }
    return oa.document("web", "Flask on gunicorn+gevent: accounts with server-side sessions, and orders.", paths)


OPENAPI = build()
