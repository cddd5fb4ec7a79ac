"""A collection of JSON documents with exact HTTP semantics, written once and served by thin adapters
(httpbin's bins, web's cart): GET/HEAD with If-None-Match, PUT (create or full replace, If-Match,
If-None-Match: *), PATCH (JSON Merge Patch), DELETE, and POST with Idempotency-Key.

The adapter passes the method, headers and body bytes in, and sends the StoredResponse it gets back.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from services.common import db, http, semantics
from services.common.http import JSON, Problem
from services.common.idempotency import IdempotencyKeys, Record, StoredResponse, fingerprint, run_once

Validator = Callable[[object], dict]
Row = Mapping[str, Any]  # sqlite3.Row or psycopg's dict row: read by column name


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now() -> str:
    return _stamp(datetime.now(UTC))


def request_json(headers: Mapping[str, str], body: bytes, accepted: tuple[str, ...] = (JSON,)) -> object:
    """The request's JSON document by its Content-Type and Content-Encoding (semantics.json_body)."""
    return semantics.json_body(headers.get("Content-Type"), body, accepted, headers.get("Content-Encoding"))


class Documents:
    """JSON documents by collection and key. `ttl_s` and `max_per_collection` bound what anonymous clients can
    store (httpbin's bins): documents not updated for ttl_s go, and a full collection takes no new key (507).
    Every method is a coroutine (services.common.db): awaited by aiohttp, driven by db.run from Flask."""

    def __init__(self, database: db.Database, require_if_match: bool = False, ttl_s: float | None = None,
                 max_per_collection: int | None = None, keys: IdempotencyKeys | None = None) -> None:
        self.database = database
        self.require_if_match = require_if_match
        self.ttl_s, self.max_per_collection = ttl_s, max_per_collection
        self.keys = keys or IdempotencyKeys(database)

    # ------------------------------------------------------------ representation

    async def _row(self, conn: db.Conn, collection: str, key: str) -> Row | None:
        return (await conn.execute("SELECT * FROM documents WHERE collection = ? AND key = ?",
                                   (collection, key))).fetchone()

    @staticmethod
    def representation(row: Row) -> dict:
        return {"key": row["key"], "document": json.loads(row["body"]), "created_at": row["created_at"],
                "updated_at": row["updated_at"]}

    def response(self, row: Row, status: int, location: str) -> StoredResponse:
        body = self.representation(row)
        headers = {"Content-Type": JSON, "ETag": semantics.strong_etag(body)}
        if status == 201:
            headers["Location"] = location
        return StoredResponse(status, headers, http.to_json(body).encode())

    def etag(self, row: Row | None) -> str | None:
        return semantics.strong_etag(self.representation(row)) if row else None

    # ------------------------------------------------------------ the collection

    async def list(self, collection: str) -> list[dict]:
        async with self.database.session() as conn:
            rows = await conn.execute("SELECT * FROM documents WHERE collection = ? ORDER BY created_at, key",
                                      (collection,))
        return [self.representation(row) for row in rows]

    async def page(self, collection: str, limit: int, after: str) -> tuple[list[dict], bool]:
        """Keyset pagination by key: documents with key > after, and whether more follow."""
        async with self.database.session() as conn:
            rows = (await conn.execute(
                "SELECT * FROM documents WHERE collection = ? AND key > ? ORDER BY key LIMIT ?",
                (collection, after, limit + 1))).fetchall()
        return [self.representation(row) for row in rows[:limit]], len(rows) > limit

    async def create(self, collection: str, location_of: Callable[[str], str], headers: Mapping[str, str],
                     body: bytes, path: str, validate: Validator, caller: str = "") -> tuple[StoredResponse, bool]:
        """POST: a new document under a generated key (Idempotency-Key honoured, per `caller`: one client's key
        never replays another's response). Returns (response, replayed)."""

        async def act(record: Record) -> StoredResponse:
            document = validate(request_json(headers, body))
            key = secrets.token_hex(8)
            async with self.database.transaction() as conn:
                await self._insert(conn, collection, key, document)
                response = self.response(await self._row(conn, collection, key), 201, location_of(key))
                await record(response)
            return response

        return await run_once(self.keys, headers.get("Idempotency-Key"), f"{caller} {collection} POST {path}",
                              fingerprint("POST", path, body), act)

    # ------------------------------------------------------------ one document

    async def handle(self, method: str, collection: str, key: str, location: str, headers: Mapping[str, str],
                     body: bytes, validate: Validator) -> StoredResponse:
        """GET, HEAD, PUT, PATCH or DELETE on one document."""
        if method in ("GET", "HEAD"):
            async with self.database.session() as conn:
                row = await self._row(conn, collection, key)
            if row is None:
                raise Problem(404, "Not Found", f"nothing stored at {location}")
            response = self.response(row, 200, location)
            if semantics.if_none_match_hit(headers.get("If-None-Match"), response.headers["ETag"]):
                return StoredResponse(304, {"ETag": response.headers["ETag"]}, b"")
            return response
        if method == "PUT":
            document = validate(request_json(headers, body))
            return await self._put(collection, key, location, headers, document)
        if method == "PATCH":
            patch = request_json(headers, body, (semantics.MERGE_PATCH_JSON,))
            return await self._patch(collection, key, location, headers, patch, validate)
        if method == "DELETE":
            async with self.database.transaction() as conn:
                row = await self._row(conn, collection, key)
                if row is None:
                    raise Problem(404, "Not Found", f"nothing stored at {location}")
                semantics.check_if_match(headers.get("If-Match"), self.etag(row), self.require_if_match)
                await conn.execute("DELETE FROM documents WHERE collection = ? AND key = ?", (collection, key))
            return StoredResponse(204, {}, b"")
        raise Problem(405, "Method Not Allowed", f"{method} is not supported here")

    async def _put(self, collection: str, key: str, location: str, headers: Mapping[str, str],
                   document: dict) -> StoredResponse:
        async with self.database.transaction() as conn:
            row = await self._row(conn, collection, key)
            applied = row is not None and json.loads(row["body"]) == document
            if semantics.check_replace(headers.get("If-Match"), headers.get("If-None-Match"), self.etag(row),
                                       self.require_if_match, applied):
                return self.response(row, 200, location)
            if row is None:
                await self._insert(conn, collection, key, document)
                return self.response(await self._row(conn, collection, key), 201, location)
            await self._update(conn, row, document)
            return self.response(await self._row(conn, collection, key), 200, location)

    async def _patch(self, collection: str, key: str, location: str, headers: Mapping[str, str], patch: object,
                     validate: Validator) -> StoredResponse:
        async with self.database.transaction() as conn:
            row = await self._row(conn, collection, key)
            if row is None:
                raise Problem(404, "Not Found", f"nothing stored at {location}")
            semantics.check_if_match(headers.get("If-Match"), self.etag(row), self.require_if_match)
            await self._update(conn, row, validate(semantics.merge_patch(json.loads(row["body"]), patch)))
            return self.response(await self._row(conn, collection, key), 200, location)

    async def _insert(self, conn: db.Conn, collection: str, key: str, document: dict) -> None:
        if self.ttl_s is not None:
            cutoff = datetime.now(UTC) - timedelta(seconds=self.ttl_s)
            await conn.execute("DELETE FROM documents WHERE collection = ? AND updated_at < ?",
                               (collection, _stamp(cutoff)))
        if self.max_per_collection is not None:
            count = (await conn.execute("SELECT COUNT(*) AS n FROM documents WHERE collection = ?",
                                        (collection,))).fetchone()["n"]
            if count >= self.max_per_collection:
                raise Problem(507, "Insufficient Storage",
                              f"{collection} holds at most {self.max_per_collection} documents; delete some, or "
                              f"wait: each expires {self.ttl_s or 0:.0f} s after its last change")
        stamp = _now()
        await conn.execute(
            "INSERT INTO documents (collection, key, body, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (collection, key, json.dumps(document, sort_keys=True), stamp, stamp),
        )

    async def _update(self, conn: db.Conn, row: Row, document: dict) -> None:
        body = json.dumps(document, sort_keys=True)
        if body == row["body"]:
            return  # the same state again: nothing changes, not even updated_at (a repeated PUT is a no-op)
        await conn.execute("UPDATE documents SET body = ?, updated_at = ? WHERE collection = ? AND key = ?",
                           (body, _now(), row["collection"], row["key"]))
