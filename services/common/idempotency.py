"""Idempotency-Key for POST (draft-ietf-httpapi-idempotency-key-header), stored in the service's SQLite file
so every worker process sees the same keys.

The first request with a key claims it; its final response is stored and replayed to any retry with the same
key and the same request. The same key with a different request is 422; a retry while the first is still in
flight is 409. Keys expire after `ttl` seconds. An in-flight claim whose process died (SIGKILL, a crash, an
instance replaced mid-request) is taken over at once by the retry: every claiming process holds an flock on its
own file beside the database for as long as it lives, and the kernel drops that lock when it dies, so any
process on the same filesystem (another worker, another instance, another container on the same volume) can
tell. `stale_after` seconds remain the fallback where that cannot be checked.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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
    owner TEXT,               -- the claiming process (see Liveness) while in flight
    PRIMARY KEY (scope, key)
)
"""


class Liveness:
    """Is the process that made a claim still alive? Each process takes an exclusive flock on
    <directory>/<token>.lock on its first claim and keeps it until it exits; the kernel releases it however the
    process ends. Another process that can take that lock knows the owner is gone."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._pid = 0
        self._token = ""
        self._held: object = None  # the open lock file, kept for the process's lifetime

    def me(self) -> str | None:
        if self.directory is None:
            return None
        if self._pid != os.getpid():  # first claim in this process (gunicorn forks workers after import)
            self.directory.mkdir(parents=True, exist_ok=True)
            for leftover in self.directory.glob("*.lock"):  # files of processes that ended
                self.gone(leftover.stem)
            self._token = secrets.token_hex(8)
            held = (self.directory / f"{self._token}.lock").open("a")
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._held, self._pid = held, os.getpid()
        return self._token

    def gone(self, owner: str | None) -> bool:
        """True when `owner` has certainly exited (its lock file is free or was removed)."""
        if self.directory is None or not owner or not re.fullmatch(r"[0-9a-f]{16}", owner):
            return False
        path = self.directory / f"{owner}.lock"
        try:
            with path.open("r") as probe:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                path.unlink(missing_ok=True)  # ours now, and no process will use it again
        except FileNotFoundError:
            return True
        except BlockingIOError:
            return False
        return True


def _owners_directory(conn: db.Connection) -> Path | None:
    """<database file>.owners beside the database; None for an in-memory database."""
    row = conn.execute("PRAGMA database_list").fetchone()
    return Path(f"{row['file']}.owners") if row and row["file"] else None



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
        if "owner" not in {column["name"] for column in conn.execute("PRAGMA table_info(idempotency_keys)")}:
            conn.execute("ALTER TABLE idempotency_keys ADD COLUMN owner TEXT")  # a database from before owners
        self.liveness = Liveness(_owners_directory(conn))

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
                "SELECT fingerprint, status, headers, body, owner FROM idempotency_keys WHERE scope = ? AND key = ?",
                (scope, key),
            ).fetchone()
            if row is not None and row["status"] is None and row["fingerprint"] == print_ \
                    and self.liveness.gone(row["owner"]):
                # The first attempt's process died mid-request: its transaction rolled back, nothing was made.
                self.conn.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ?", (scope, key))
                row = None
            if row is None:
                self.conn.execute(
                    "INSERT INTO idempotency_keys (scope, key, fingerprint, created, owner) VALUES (?, ?, ?, ?, ?)",
                    (scope, key, print_, now, self.liveness.me()),
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
