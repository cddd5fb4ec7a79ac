"""The catalog's items in SQLite (WAL) or Postgres (STORE=postgres). Every write checks its precondition inside
the same transaction, so a lost update is impossible even with several processes (or, on Postgres, machines)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.common import db, semantics
from services.common.http import MAX_ID, Problem
from services.common.idempotency import IdempotencyKeys

SERVICE = "catalog"
FIELDS = {"name": str, "price": int, "stock": int}
READ_ONLY = {"id", "created_at", "updated_at"}
Row = Mapping[str, Any]  # sqlite3.Row or psycopg's dict row


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


def representation(row: Row) -> dict:
    return {k: row[k] for k in ("id", "name", "price", "stock", "created_at", "updated_at")}


class Items:
    """The items; every method a coroutine, awaited by Tornado's handlers (on Postgres, on an async connection)."""

    def __init__(self, where: str | Path | None = None) -> None:
        self.database = db.open_database(SERVICE, where, asynchronous=True)
        self.keys = IdempotencyKeys(self.database)

    @staticmethod
    async def _row(conn: db.Conn, item_id: int) -> Row | None:
        return (await conn.execute("SELECT * FROM items WHERE id = ?", (item_id,))).fetchone()

    async def get(self, item_id: int) -> dict | None:
        async with self.database.session() as conn:
            row = await self._row(conn, item_id)
        return representation(row) if row else None

    async def page(self, limit: int, after: int) -> tuple[list[dict], bool]:
        """Keyset pagination: items with id > after, and whether more follow."""
        async with self.database.session() as conn:
            rows = (await conn.execute(
                "SELECT * FROM items WHERE id > ? ORDER BY id LIMIT ?", (after, limit + 1)
            )).fetchall()
        return [representation(r) for r in rows[:limit]], len(rows) > limit

    async def create(self, fields: dict, then: Callable[[dict], Awaitable[None]] | None = None) -> dict:
        """Insert an item; `await then(item)` runs inside the same transaction (e.g. to store the idempotent
        response), so both commit together or neither does."""
        async with self.database.transaction() as conn:
            stamp = now()
            row = (await conn.execute(
                "INSERT INTO items (name, price, stock, created_at, updated_at) VALUES (?, ?, ?, ?, ?) RETURNING *",
                (fields["name"], fields["price"], fields["stock"], stamp, stamp),
            )).fetchone()
            item = representation(row)
            if then:
                await then(item)
        return item

    async def put(self, item_id: int, fields: dict, if_match: str | None,
                  if_none_match: str | None) -> tuple[dict, bool]:
        """Full replace, or create at a client-chosen id. Returns (item, created)."""
        if not 1 <= item_id <= MAX_ID:
            raise Problem(404, "Not Found", "item ids are 1 to 2^53-1")
        async with self.database.transaction() as conn:
            row = await self._row(conn, item_id)
            current = semantics.strong_etag(representation(row)) if row else None
            applied = row is not None and all(row[k] == v for k, v in fields.items())
            if semantics.check_replace(if_match, if_none_match, current, True, applied):
                return representation(row), False
            if row is None:
                stamp = now()
                await conn.execute(
                    "INSERT INTO items (id, name, price, stock, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (item_id, fields["name"], fields["price"], fields["stock"], stamp, stamp),
                )
                if self.database.dialect == "postgres":
                    # Postgres's id sequence does not see a chosen id (SQLite's next id is max + 1): move it on,
                    # or a later POST would be handed this id and fail.
                    await conn.execute("SELECT setval(pg_get_serial_sequence('items', 'id'), "
                                       "(SELECT max(id) FROM items))")
                return representation(await self._row(conn, item_id)), True
            await self._update(conn, row, fields)
            return representation(await self._row(conn, item_id)), False

    async def patch(self, item_id: int, patch: object, if_match: str | None) -> dict:
        async with self.database.transaction() as conn:
            row = await self._row(conn, item_id)
            if row is None:
                raise Problem(404, "Not Found", f"no item {item_id}")
            semantics.check_if_match(if_match, semantics.strong_etag(representation(row)), required=True)
            if not isinstance(patch, dict):
                raise Problem(422, "Invalid merge patch", "a merge patch for an item must be a JSON object")
            if set(patch) & READ_ONLY:
                read_only = ", ".join(sorted(set(patch) & READ_ONLY))
                raise Problem(422, "Invalid merge patch", f"read-only members: {read_only}")
            merged = semantics.merge_patch({k: row[k] for k in FIELDS}, patch)
            await self._update(conn, row, validate(merged))
            return representation(await self._row(conn, item_id))

    async def delete(self, item_id: int, if_match: str | None) -> None:
        async with self.database.transaction() as conn:
            row = await self._row(conn, item_id)
            if row is None:
                raise Problem(404, "Not Found", f"no item {item_id}")
            semantics.check_if_match(if_match, semantics.strong_etag(representation(row)), required=True)
            await conn.execute("DELETE FROM items WHERE id = ?", (item_id,))

    @staticmethod
    async def _update(conn: db.Conn, row: Row, fields: dict) -> None:
        # Writing the same state again is a no-op: updated_at (and so the ETag) stays, which is what makes a
        # repeated PUT with the same If-Match succeed — PUT is idempotent.
        if all(row[k] == v for k, v in fields.items()):
            return
        await conn.execute(
            "UPDATE items SET name = ?, price = ?, stock = ?, updated_at = ? WHERE id = ?",
            (fields["name"], fields["price"], fields["stock"], now(), row["id"]),
        )
