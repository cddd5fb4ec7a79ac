"""Idempotency-Key for POST (draft-ietf-httpapi-idempotency-key-header), stored in the service's SQLite file
so every worker process sees the same keys.

The first request with a key claims it; its final response is stored and replayed to any retry with the same
key and the same request. The same key with a different request is 422; a retry while the first is still in
flight is 409. Keys expire after `ttl` seconds; an in-flight claim whose process died is released after
`stale_after` seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.common import db
from services.common.db import transaction
from services.common.http import Problem

HEADER = "Idempotency-Key"
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created REAL NOT NULL,
    status INTEGER,           -- NULL while the first request is in flight
    headers TEXT,
    body BLOB,
    PRIMARY KEY (scope, key)
)
"""


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"\0".join([method.encode(), path.encode(), body])).hexdigest()


PURGE_EVERY_S = 60


class IdempotencyKeys:
    def __init__(self, conn: db.Connection, ttl: float | None = None, stale_after: float = 60) -> None:
        self.conn = conn
        self.ttl = ttl if ttl is not None else float(os.environ.get("IDEMPOTENCY_TTL_SECONDS", "86400"))
        self.stale_after = stale_after
        self._purged = 0.0
        conn.execute(SCHEMA)

    @staticmethod
    def validate(key: str) -> str:
        if not _KEY.fullmatch(key):
            raise Problem(400, "Invalid Idempotency-Key", "use 1 to 255 visible ASCII characters")
        return key

    @db.off_the_hub
    def claim(self, scope: str, key: str, print_: str) -> StoredResponse | None:
        """None: this request owns the key and must `finish` (or `release`) it. Else the stored response."""
        now = time.time()
        if now - self._purged > PURGE_EVERY_S:  # expired keys of every scope, not only this one: bounded table
            self._purged = now
            with transaction(self.conn):
                self.conn.execute("DELETE FROM idempotency_keys WHERE created < ?", (now - self.ttl,))
        with transaction(self.conn):
            self.conn.execute(
                "DELETE FROM idempotency_keys WHERE scope = ? AND key = ? AND "
                "(created < ? OR (status IS NULL AND created < ?))",
                (scope, key, now - self.ttl, now - self.stale_after),
            )
            row = self.conn.execute(
                "SELECT fingerprint, status, headers, body FROM idempotency_keys WHERE scope = ? AND key = ?",
                (scope, key),
            ).fetchone()
            if row is None:
                self.conn.execute(
                    "INSERT INTO idempotency_keys (scope, key, fingerprint, created) VALUES (?, ?, ?, ?)",
                    (scope, key, print_, now),
                )
                return None
        if row["fingerprint"] != print_:
            raise Problem(422, "Idempotency-Key reused",
                          "this key was first used with a different request; use a new key for a new request")
        if row["status"] is None:
            raise Problem(409, "Request in progress",
                          "the first request with this Idempotency-Key is still being processed; retry shortly")
        return StoredResponse(row["status"], json.loads(row["headers"]), bytes(row["body"]))

    @db.off_the_hub
    def finish(self, scope: str, key: str, response: StoredResponse) -> None:
        """Store the final response. Call inside the transaction that made the change, when there is one,
        so the change and its record commit together."""
        self.conn.execute(
            "UPDATE idempotency_keys SET status = ?, headers = ?, body = ? WHERE scope = ? AND key = ?",
            (response.status, json.dumps(response.headers), response.body, scope, key),
        )

    @db.off_the_hub
    def release(self, scope: str, key: str) -> None:
        """Forget a claim whose request failed without a stored outcome, so a retry can run."""
        self.conn.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ? AND status IS NULL",
                          (scope, key))


def run_once(
    keys: IdempotencyKeys,
    key: str | None,
    scope: str,
    print_: str,
    act: Callable[[Callable[[StoredResponse], None]], StoredResponse],
) -> tuple[StoredResponse, bool]:
    """Run a POST at most once per Idempotency-Key. `act(record)` performs the change and must call
    `record(response)` inside the transaction that commits it. Returns (response, replayed)."""
    if key is None:
        return act(lambda response: None), False
    IdempotencyKeys.validate(key)
    stored = keys.claim(scope, key, print_)
    if stored is not None:
        return stored, True
    try:
        return act(lambda response: keys.finish(scope, key, response)), False
    except BaseException:
        keys.release(scope, key)
        raise
