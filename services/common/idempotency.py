"""Idempotency-Key for POST (draft-ietf-httpapi-idempotency-key-header), stored in the service's database (its
SQLite file, or its Postgres schema) so every worker process and every instance sees the same keys.

The first request with a key claims it; its final response is stored and replayed to any retry with the same
key and the same request. The same key with a different request is 422; a retry while the first is still in
flight is 409. Keys expire after `ttl` seconds. An in-flight claim whose process died (SIGKILL, a crash, an
instance replaced mid-request) is taken over at once by the retry: every claiming process holds an flock on its
own file beside the database for as long as it lives, and the kernel drops that lock when it dies, so any
process on the same filesystem (another worker, another instance, another container on the same volume) can
tell; on Postgres the same holds for processes on any machine, with advisory locks (PostgresLiveness).
`stale_after` seconds remain the fallback where that cannot be checked.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common import db
from services.common.http import Problem

HEADER = "Idempotency-Key"
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


class Liveness:
    """Is the process that made a claim still alive? Each process takes an exclusive flock on
    <directory>/<token>.lock on its first claim and keeps it until it exits; the kernel releases it however the
    process ends. Another process that can take that lock knows the owner is gone."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._pid = 0
        self._token = ""
        self._held: object = None  # the open lock file, kept for the process's lifetime

    async def me(self) -> str | None:
        if self.directory is None:
            return None
        if self._pid != os.getpid():  # first claim in this process (gunicorn forks workers after import)
            self.directory.mkdir(parents=True, exist_ok=True)
            for leftover in self.directory.glob("*.lock"):  # files of processes that ended
                self.gone_now(leftover.stem)
            self._token = secrets.token_hex(8)
            # Locked under a name no sweep looks at, then renamed into place: another process's first claim,
            # sweeping at that moment, must never find this file unlocked (it would take it for a dead owner's,
            # lock it and remove it, and this flock would fail).
            pending = self.directory / f".{self._token}.pending"
            held = pending.open("a")
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            pending.rename(self.directory / f"{self._token}.lock")
            self._held, self._pid = held, os.getpid()
        return self._token

    async def gone(self, owner: str | None, conn: db.Conn | None = None) -> bool:
        """True when `owner` has certainly exited (its lock file is free or was removed)."""
        return self.gone_now(owner)

    def gone_now(self, owner: str | None) -> bool:
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


class PostgresLiveness:
    """The same question on Postgres, for processes on any machine: each process holds a session-level advisory
    lock (namespace, its token) on a connection of its own for as long as it lives; Postgres drops the lock when
    that connection ends, and the process's connection ends when the process does (the kernel closes the socket).
    A lost connection (a database restart) is noticed at the next claim, which takes a new token."""

    NAMESPACE = 0x1D3A  # advisory locks' first key: this stack's idempotency owners

    def __init__(self, database: db.Postgres) -> None:
        self.database = database
        self._pid = 0
        self._token = 0
        self._held: Any = None  # the connection that holds the lock
        self._every_held: list[Any] = []  # two first claims at once both connect: neither lock may go

    async def me(self) -> str:
        if self._pid == os.getpid() and self._held is not None:
            try:  # still ours? (one round trip; re-taking a lock this session holds succeeds at once, and stacks)
                await _maybe_await(self._held.execute("SELECT pg_advisory_lock(%s, %s)",
                                                      (self.NAMESPACE, self._token)))
                return str(self._token)
            except self.database.unavailable:
                pass
        import psycopg

        kind = psycopg.AsyncConnection if self.database.asynchronous else psycopg.Connection
        try:
            held = await _maybe_await(kind.connect(**self.database.conninfo, autocommit=True))
            while True:  # a token another live process holds (one chance in 2^31) is not waited for: draw again
                token = secrets.randbelow(2**31)
                taken = await _maybe_await(held.execute("SELECT pg_try_advisory_lock(%s, %s) AS mine",
                                                        (self.NAMESPACE, token)))
                if (await _maybe_await(taken.fetchone()))[0]:
                    break
        except self.database.unavailable as error:
            raise db.unavailable(error) from None
        self._held, self._pid, self._token = held, os.getpid(), token
        self._every_held.append(held)
        return str(token)

    async def gone(self, owner: str | None, conn: db.Conn) -> bool:
        if not owner or not owner.isdigit():
            return False
        row = (await conn.execute(
            "SELECT count(*) AS holders FROM pg_locks WHERE locktype = 'advisory' AND classid = ? AND objid = ? "
            "AND objsubid = 2 AND granted", (self.NAMESPACE, int(owner)),
        )).fetchone()
        return row["holders"] == 0


async def _maybe_await(value: Any) -> Any:
    return await value if hasattr(value, "__await__") else value


@dataclass(frozen=True)
class StoredResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"\0".join([method.encode(), path.encode(), body])).hexdigest()


PURGE_EVERY_S = 60


class IdempotencyKeys:
    def __init__(self, database: db.Database, ttl: float | None = None, stale_after: float = 60) -> None:
        self.database = database
        self.ttl = ttl if ttl is not None else float(os.environ.get("IDEMPOTENCY_TTL_SECONDS", "86400"))
        self.stale_after = stale_after
        self._purged = 0.0
        self.liveness: Liveness | PostgresLiveness
        if isinstance(database, db.SQLite):
            db.run(self._add_owner_column())
            self.liveness = Liveness(Path(f"{database.path}.owners"))
        else:
            self.liveness = PostgresLiveness(database)

    async def _add_owner_column(self) -> None:
        """A SQLite database from before owners gets its column."""
        async with self.database.session() as conn:
            if "owner" not in {column["name"] for column in await conn.execute("PRAGMA table_info(idempotency_keys)")}:
                await conn.execute("ALTER TABLE idempotency_keys ADD COLUMN owner TEXT")

    @staticmethod
    def validate(key: str) -> str:
        if not _KEY.fullmatch(key):
            raise Problem(400, "Invalid Idempotency-Key", "use 1 to 255 visible ASCII characters")
        return key

    async def claim(self, scope: str, key: str, print_: str) -> StoredResponse | None:
        """None: this request owns the key and must `finish` (or `release`) it. Else the stored response."""
        now = time.time()
        me = await self.liveness.me()
        if now - self._purged > PURGE_EVERY_S:  # expired keys of every scope, not only this one: bounded table
            self._purged = now
            async with self.database.transaction() as conn:
                await conn.execute("DELETE FROM idempotency_keys WHERE created < ?", (now - self.ttl,))
        async with self.database.transaction() as conn:
            await conn.execute(
                "DELETE FROM idempotency_keys WHERE scope = ? AND key = ? AND "
                "(created < ? OR (status IS NULL AND created < ?))",
                (scope, key, now - self.ttl, now - self.stale_after),
            )
            row = (await conn.execute(
                "SELECT fingerprint, status, headers, body, owner FROM idempotency_keys WHERE scope = ? AND key = ?",
                (scope, key),
            )).fetchone()
            if row is not None and row["status"] is None and row["fingerprint"] == print_ \
                    and await self.liveness.gone(row["owner"], conn):
                # The first attempt's process died mid-request: its transaction rolled back, nothing was made.
                await conn.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ?", (scope, key))
                row = None
            if row is None:
                await conn.execute(
                    "INSERT INTO idempotency_keys (scope, key, fingerprint, created, owner) VALUES (?, ?, ?, ?, ?)",
                    (scope, key, print_, now, me),
                )
                return None
        if row["fingerprint"] != print_:
            raise Problem(422, "Idempotency-Key reused",
                          "this key was first used with a different request; use a new key for a new request")
        if row["status"] is None:
            raise Problem(409, "Request in progress",
                          "the first request with this Idempotency-Key is still being processed; retry shortly")
        return StoredResponse(row["status"], json.loads(row["headers"]), bytes(row["body"]))

    async def finish(self, scope: str, key: str, response: StoredResponse) -> None:
        """Store the final response. Call inside the transaction that made the change, when there is one,
        so the change and its record commit together."""
        async with self.database.session() as conn:
            await conn.execute(
                "UPDATE idempotency_keys SET status = ?, headers = ?, body = ? WHERE scope = ? AND key = ?",
                (response.status, json.dumps(response.headers), response.body, scope, key),
            )

    async def release(self, scope: str, key: str) -> None:
        """Forget a claim whose request failed without a stored outcome, so a retry can run."""
        async with self.database.session() as conn:
            await conn.execute("DELETE FROM idempotency_keys WHERE scope = ? AND key = ? AND status IS NULL",
                               (scope, key))


Record = Callable[[StoredResponse], Awaitable[None]]


async def run_once(
    keys: IdempotencyKeys,
    key: str | None,
    scope: str,
    print_: str,
    act: Callable[[Record], Awaitable[StoredResponse]],
) -> tuple[StoredResponse, bool]:
    """Run a POST at most once per Idempotency-Key. `act(record)` performs the change and must await
    `record(response)` inside the transaction that commits it. Returns (response, replayed)."""

    async def nothing(response: StoredResponse) -> None:
        return None

    if key is None:
        return await act(nothing), False
    IdempotencyKeys.validate(key)
    stored = await keys.claim(scope, key, print_)
    if stored is not None:
        return stored, True

    async def record(response: StoredResponse) -> None:
        await keys.finish(scope, key, response)

    try:
        return await act(record), False
    except BaseException:
        await keys.release(scope, key)
        raise
