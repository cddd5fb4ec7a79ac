"""The cart: a document per item, PUT with a quantity (idempotent by nature), read, patched and deleted with
ETags like any resource (services/common/documents.py)."""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, request

from services.common import http
from services.web import orders
from services.web.accounts import login_required
from services.web.views import as_json, send, store


def cart_line(document: object) -> dict:
    if not isinstance(document, dict) or set(document) != {"quantity"}:
        raise http.Problem(422, "Invalid cart line", 'send {"quantity": n}')
    quantity = document["quantity"]
    if not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= orders.MAX_QUANTITY:
        raise http.Problem(422, "Invalid cart line", f"quantity must be an integer from 1 to {orders.MAX_QUANTITY}")
    return document


@login_required
def cart(user: dict) -> Response:
    return as_json({"items": store().run(store().documents.list(f"cart:{user['id']}"))})


@login_required
def cart_item(user: dict, item_id: int) -> Response:
    return send(store().run(store().documents.handle(request.method, f"cart:{user['id']}", str(item_id),
                                                      request.path, request.headers, request.get_data(cache=True),
                                                      cart_line)))


ROUTES: list[tuple[str, str, Callable[..., Response], list[str]]] = [
    ("/cart", "cart", cart, ["GET"]),
    (f"/cart/items/<int(min=1, max={http.MAX_ID}):item_id>", "cart_item", cart_item, ["GET", "PUT", "PATCH", "DELETE"]),
]
