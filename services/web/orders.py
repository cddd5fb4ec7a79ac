"""Placing an order: look every item up in catalog and reserve its stock, all lines at once (gevent
greenlets; each waits on its own HTTP call), then undo the reservations that succeeded if any line failed.

Stock is decremented with a conditional merge patch (If-Match), retried on 412, so two shoppers can never
sell the same last teapot twice.
"""

from __future__ import annotations

import json

import gevent

from services.common.http import MAX_ID, Problem
from services.common.semantics import MERGE_PATCH_JSON
from services.web import upstream
from stack import topology

MAX_LINES = 20
MAX_QUANTITY = 1000
ATTEMPTS = 8
CATALOG_ITEMS = f"{topology.service('catalog').route_prefix}/items"  # catalog's items, as web calls them


def validate_lines(document: object) -> list[dict]:
    if not isinstance(document, dict) or not isinstance(document.get("lines"), list):
        raise Problem(422, "Invalid order", 'send {"lines": [{"item_id": 1, "quantity": 2}, ...]}')
    lines, errors = [], []
    for n, line in enumerate(document["lines"]):
        if not isinstance(line, dict) or set(line) != {"item_id", "quantity"}:
            errors.append(f"line {n} must have exactly item_id and quantity")
            continue
        item_id, quantity = line["item_id"], line["quantity"]
        if not isinstance(item_id, int) or isinstance(item_id, bool) or not 1 <= item_id <= MAX_ID:
            errors.append(f"line {n}: item_id must be a positive integer")
        elif not isinstance(quantity, int) or isinstance(quantity, bool) or not 1 <= quantity <= MAX_QUANTITY:
            errors.append(f"line {n}: quantity must be an integer from 1 to {MAX_QUANTITY}")
        else:
            lines.append({"item_id": item_id, "quantity": quantity})
    if not errors and not 1 <= len(lines) <= MAX_LINES:
        errors.append(f"an order has 1 to {MAX_LINES} lines")
    if len({line["item_id"] for line in lines}) != len(lines):
        errors.append("each item may appear on one line only")
    extra = set(document) - {"lines"}
    if extra:
        errors.append(f"unknown members: {', '.join(sorted(extra))}")
    if errors:
        raise Problem(422, "Invalid order", "; ".join(errors))
    return lines


def _adjust_stock(item_id: int, delta: int, request_id: str) -> dict:
    """Add `delta` to an item's stock with a compare-and-set loop; returns the item as it was."""
    for _ in range(ATTEMPTS):
        got = upstream.request("GET", upstream.CATALOG_URL, f"{CATALOG_ITEMS}/{item_id}", request_id)
        if got.status_code == 404:
            raise Problem(422, "Unknown item", f"catalog has no item {item_id}")
        item = got.json()
        if item["stock"] + delta < 0:
            raise Problem(409, "Insufficient stock", f"item {item_id} has {item['stock']} in stock")
        patched = upstream.request(
            "PATCH", upstream.CATALOG_URL, f"{CATALOG_ITEMS}/{item_id}", request_id,
            data=json.dumps({"stock": item["stock"] + delta}),
            headers={"Content-Type": MERGE_PATCH_JSON, "If-Match": got.headers["ETag"]},
        )
        if patched.status_code == 200:
            return item
        if patched.status_code != 412:  # 412: another order changed it meanwhile; read again
            raise upstream.UpstreamError(f"catalog answered {patched.status_code} to a stock update")
    raise Problem(409, "Item busy", f"item {item_id} kept changing; retry the order")


def reserve(lines: list[dict], request_id: str) -> list[dict]:
    """Reserve every line concurrently; all or nothing. Returns the priced lines."""
    jobs = [gevent.spawn(_adjust_stock, line["item_id"], -line["quantity"], request_id) for line in lines]
    gevent.joinall(jobs)
    failed = [job for job in jobs if not job.successful()]
    if failed:
        undo = [gevent.spawn(_adjust_stock, line["item_id"], line["quantity"], request_id)
                for line, job in zip(lines, jobs, strict=True) if job.successful()]
        gevent.joinall(undo)
        raise failed[0].exception
    return [
        {"item_id": line["item_id"], "name": job.value["name"], "unit_price": job.value["price"],
         "quantity": line["quantity"]}
        for line, job in zip(lines, jobs, strict=True)
    ]
