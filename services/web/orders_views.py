"""Orders as HTTP: place one (idempotently, with an Idempotency-Key), list a user's, read one. The work of
pricing and reserving stock in catalog is orders.py's."""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, g, request

from services.common import http, semantics
from services.common.idempotency import HEADER as IDEMPOTENCY_KEY
from services.common.idempotency import Record, StoredResponse, fingerprint, run_once
from services.web import orders
from services.web.accounts import login_required
from services.web.views import PREFIX, as_json, body, send, store


def order_response(order: dict, status: int = 200) -> StoredResponse:
    headers = {"Content-Type": http.JSON, "ETag": semantics.strong_etag(order)}
    if status == 201:
        headers["Location"] = f"{PREFIX}/orders/{order['id']}"
    return StoredResponse(status, headers, http.to_json(order).encode())


@login_required
def place_order(user: dict) -> Response:
    raw = request.get_data(cache=True)

    async def act(record: Record) -> StoredResponse:
        lines = orders.validate_lines(body())
        priced = orders.reserve(lines, g.request_id)  # catalog over HTTP: cooperative under gevent
        created: list[StoredResponse] = []

        async def then(order: dict) -> None:
            created.append(order_response(order, 201))
            await record(created[0])

        store().create_order(user["id"], priced, then=then)
        return created[0]

    stored, replayed = store().run(run_once(store().keys, request.headers.get(IDEMPOTENCY_KEY),
                                            f"user:{user['id']} POST {PREFIX}/orders",
                                            fingerprint("POST", f"{PREFIX}/orders", raw), act))
    return send(stored, replayed)


@login_required
def list_orders(user: dict) -> Response:
    limit = http.int_param(request.args.get("limit"), "limit", 20, 1, 100)
    after = http.int_param(request.args.get("cursor"), "cursor", 0, 0, http.MAX_ID)
    page, more = store().orders_page(user["id"], limit, after)
    next_cursor = str(page[-1]["id"]) if more else None
    response = as_json({"orders": page, "next_cursor": next_cursor})
    response.headers["Link"] = semantics.page_link(request.path, limit, next_cursor)
    return response


@login_required
def get_order(user: dict, order_id: int) -> Response:
    order = store().order(order_id)
    if order is None:
        raise http.Problem(404, "Not Found", f"no order {order_id}")
    if order["user_id"] != user["id"]:
        raise http.Problem(403, "Forbidden", "this order belongs to another account")
    stored = order_response(order)
    if semantics.if_none_match_hit(request.headers.get("If-None-Match"), stored.headers["ETag"]):
        return Response(status=304, headers={"ETag": stored.headers["ETag"]})
    return send(stored)


ROUTES: list[tuple[str, str, Callable[..., Response], list[str]]] = [
    ("/orders", "place_order", place_order, ["POST"]),
    ("/orders", "list_orders", list_orders, ["GET"]),
    (f"/orders/<int(min=1, max={http.MAX_ID}):order_id>", "get_order", get_order, ["GET"]),  # else 404
]
