"""The catalog's items in SQLite (WAL). Every write checks its precondition inside the same transaction, so a
lost update is impossible even with several processes."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from services.common import db, semantics
from services.common.http import Problem
from services.common.idempotency import IdempotencyKeys

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    price INTEGER NOT NULL CHECK (price >= 0),      -- integer cents: no floating-point money
    stock INTEGER NOT NULL CHECK (stock >= 0),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)
"""
FIELDS = {"name": str, "price": int, "stock": int}
READ_ONLY = {"id", "created_at", "updated_at"}
MAX_ID = 2**53 - 1  # ids stay exact in every JSON client


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def validate(document: object) -> dict:
    """A full item document (POST, PUT, or the result of a merge patch): 422 with every problem listed."""
    if not isinstance(document, dict):
        raise Problem(422, "Invalid item", "the body must be a JSON object")
    errors = []
    for name, kind in FIELDS.items():
        value = document.get(name)
        if value is None:
            errors.append(f"{name} is required")
        elif not isinstance(value, kind) or isinstance(value, bool):
            errors.append(f"{name} must be {'a string' if kind is str else 'an integer'}")
        elif kind is int and not 0 <= value <= 10**12:
            errors.append(f"{name} must be between 0 and 10^12")
        elif kind is str and not 1 <= len(value.strip()) <= 200:
            errors.append(f"{name} must be 1 to 200 characters")
    unknown = sorted(set(document) - set(FIELDS) - READ_ONLY)
    if unknown:
        errors.append(f"unknown members: {', '.join(unknown)}")
    if errors:
        raise Problem(422, "Invalid item", "; ".join(errors))
    return {name: document[name] for name in FIELDS}


def representation(row: sqlite3.Row) -> dict:
    return {k: row[k] for k in ("id", "name", "price", "stock", "created_at", "updated_at")}


class Items:
    def __init__(self, path: str | Path) -> None:
        self.conn = db.connect(path)
        self.conn.execute(SCHEMA)
        self.keys = IdempotencyKeys(self.conn)

    def _row(self, item_id: int) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone()

    def get(self, item_id: int) -> dict | None:
        row = self._row(item_id)
        return representation(row) if row else None

    def page(self, limit: int, after: int) -> tuple[list[dict], bool]:
        """Keyset pagination: items with id > after, and whether more follow."""
        rows = self.conn.execute(
            "SELECT * FROM items WHERE id > ? ORDER BY id LIMIT ?", (after, limit + 1)
        ).fetchall()
        return [representation(r) for r in rows[:limit]], len(rows) > limit

    def create(self, fields: dict, then: Callable[[dict], None] | None = None) -> dict:
        """Insert an item; `then(item)` runs inside the same transaction (e.g. to store the idempotent
        response), so both commit together or neither does."""
        with db.transaction(self.conn):
            stamp = now()
            cursor = self.conn.execute(
                "INSERT INTO items (name, price, stock, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (fields["name"], fields["price"], fields["stock"], stamp, stamp),
            )
            item = representation(self._row(cursor.lastrowid))
            if then:
                then(item)
        return item

    def put(self, item_id: int, fields: dict, if_match: str | None, if_none_match: str | None) -> tuple[dict, bool]:
        """Full replace, or create at a client-chosen id. Returns (item, created)."""
        if not 1 <= item_id <= MAX_ID:
            raise Problem(404, "Not Found", "item ids are 1 to 2^53-1")
        with db.transaction(self.conn):
            row = self._row(item_id)
            current = semantics.strong_etag(representation(row)) if row else None
            applied = row is not None and all(row[k] == v for k, v in fields.items())
            if semantics.check_replace(if_match, if_none_match, current, True, applied):
                return representation(row), False
            if row is None:
                stamp = now()
                self.conn.execute(
                    "INSERT INTO items (id, name, price, stock, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (item_id, fields["name"], fields["price"], fields["stock"], stamp, stamp),
                )
                return representation(self._row(item_id)), True
            self._update(row, fields)
            return representation(self._row(item_id)), False

    def patch(self, item_id: int, patch: object, if_match: str | None) -> dict:
        with db.transaction(self.conn):
            row = self._row(item_id)
            if row is None:
                raise Problem(404, "Not Found", f"no item {item_id}")
            semantics.check_if_match(if_match, semantics.strong_etag(representation(row)), required=True)
            if not isinstance(patch, dict):
                raise Problem(422, "Invalid merge patch", "a merge patch for an item must be a JSON object")
            if set(patch) & READ_ONLY:
                read_only = ", ".join(sorted(set(patch) & READ_ONLY))
                raise Problem(422, "Invalid merge patch", f"read-only members: {read_only}")
            merged = semantics.merge_patch({k: row[k] for k in FIELDS}, patch)
            self._update(row, validate(merged))
            return representation(self._row(item_id))

    def delete(self, item_id: int, if_match: str | None) -> None:
        with db.transaction(self.conn):
            row = self._row(item_id)
            if row is None:
                raise Problem(404, "Not Found", f"no item {item_id}")
            semantics.check_if_match(if_match, semantics.strong_etag(representation(row)), required=True)
            self.conn.execute("DELETE FROM items WHERE id = ?", (item_id,))

    def _update(self, row: sqlite3.Row, fields: dict) -> None:
        # Writing the same state again is a no-op: updated_at (and so the ETag) stays, which is what makes a
        # repeated PUT with the same If-Match succeed — PUT is idempotent.
        if all(row[k] == v for k, v in fields.items()):
            return
        self.conn.execute(
            "UPDATE items SET name = ?, price = ?, stock = ?, updated_at = ? WHERE id = ?",
            (fields["name"], fields["price"], fields["stock"], now(), row["id"]),
        )
