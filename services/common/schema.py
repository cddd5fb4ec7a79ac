"""Every table of the stack, by service: one place to read the whole database. A SQLite file gets its service's
tables when the service opens it; on Postgres, `python -m services.common.migrate` makes them (in a schema named
after the service) before the services start, and each service checks their digest before it serves.

Written once for both dialects: {id}, {int}, {real}, {blob} and {nocase} become each one's column types
(services.common.db.DDL_WORDS). Every statement is CREATE ... IF NOT EXISTS: applying them again changes nothing.
"""

from __future__ import annotations

# Stored POST responses by Idempotency-Key (services/common/idempotency.py).
IDEMPOTENCY_KEYS = """CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created {real} NOT NULL,
    status {int},           -- NULL while the first request is in flight
    headers TEXT,
    body {blob},
    owner TEXT,               -- the claiming process (see Liveness) while in flight
    PRIMARY KEY (scope, key)
)"""

# JSON documents with HTTP semantics (services/common/documents.py): httpbin's bins, web's carts.
DOCUMENTS = """CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    key TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (collection, key)
)"""

# web's accounts, sessions and orders (services/web/store.py).
WEB = (
    """CREATE TABLE IF NOT EXISTS users (
    id {id},
    email {nocase} NOT NULL UNIQUE,   -- one account per address, whatever its case
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,      -- sha256 of the cookie's value: a leaked database holds no live session
    user_id {int} NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires {real} NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS orders (
    id {id},
    user_id {int} NOT NULL REFERENCES users(id),
    total {int} NOT NULL,             -- integer cents
    created_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS order_lines (
    order_id {int} NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    item_id {int} NOT NULL,
    name TEXT NOT NULL,
    unit_price {int} NOT NULL,
    quantity {int} NOT NULL,
    PRIMARY KEY (order_id, item_id)
)""",
    # A user's orders, in order: without it a page of one user's orders scanned every order in the table from
    # the cursor on (the p99.9 of GET /web/orders grew with the table, to 57 ms at 17,000 orders).
    "CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, id)",
)

# catalog's items (services/catalog/store.py).
ITEMS = """CREATE TABLE IF NOT EXISTS items (
    id {id},
    name TEXT NOT NULL,
    price {int} NOT NULL CHECK (price >= 0),      -- integer cents: no floating-point money
    stock {int} NOT NULL CHECK (stock >= 0),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)"""

TABLES: dict[str, tuple[str, ...]] = {
    "web": (*WEB, DOCUMENTS, IDEMPOTENCY_KEYS),
    "catalog": (ITEMS, IDEMPOTENCY_KEYS),
    "httpbin": (DOCUMENTS, IDEMPOTENCY_KEYS),
}
