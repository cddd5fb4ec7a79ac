"""web's data: accounts, server-side sessions, orders, carts, in SQLite (WAL) or Postgres (STORE=postgres). Every
gunicorn worker (and, on Postgres, every instance) opens the same database, so a session made by one is seen by all."""

from __future__ import annotations

import functools
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from werkzeug.security import check_password_hash, generate_password_hash

from services.common import db
from services.common.documents import Documents
from services.common.http import Problem
from services.common.idempotency import IdempotencyKeys
from stack.settings import WEEK_S

SERVICE = "web"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@functools.cache
def _unknown_account_hash() -> str:
    """A hash to check an unknown account's password against: hashing a fresh one there made a login for an
    unknown account cost two scrypts (twice as long as a known one's, which tells the accounts apart)."""
    return generate_password_hash(secrets.token_urlsafe(16))


def _hash(password: str) -> str:
    """scrypt releases the GIL: under gevent it runs in the hub's threadpool."""
    return db.off_the_hub(generate_password_hash)(password)


def _check(digest: str, password: str) -> bool:
    return db.off_the_hub(check_password_hash)(digest, password)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """Accounts, sessions and orders, in SQLite or Postgres (services.common.db). Flask's views call these
    synchronous methods; each drives the store's coroutine to its end on a synchronous connection (db.run). Under
    gevent, scrypt and SQLite's lock waits run in the hub's threadpool; Postgres's queries are cooperative."""

    def __init__(self, where: str | Path | None = None, session_ttl_s: float = WEEK_S) -> None:
        self.session_ttl_s = session_ttl_s  # WebSettings.session_ttl_s
        self.database = db.open_database(SERVICE, where)
        self.keys = IdempotencyKeys(self.database)
        self.documents = Documents(self.database, keys=self.keys)  # the carts

    run = staticmethod(db.run)  # store coroutines (the carts' Documents too), from Flask's synchronous views

    # -------------------------------------------------------------- accounts

    def signup(self, email: str, password: str) -> dict:
        digest = _hash(password)  # scrypt with a random salt (Werkzeug's default KDF)
        return self.run(self._signup(email, digest))

    async def _signup(self, email: str, digest: str) -> dict:
        try:
            async with self.database.transaction() as conn:
                row = (await conn.execute(
                    "INSERT INTO users (email, password_hash, created_at) VALUES (?, ?, ?) RETURNING id",
                    (email, digest, now()))).fetchone()
        except self.database.integrity_error:
            raise Problem(409, "Email already registered", f"an account for {email} exists; log in instead") from None
        return await self._user(row["id"])

    def user(self, user_id: int) -> dict:
        return self.run(self._user(user_id))

    async def _user(self, user_id: int) -> dict:
        async with self.database.session() as conn:
            row = (await conn.execute("SELECT id, email, created_at FROM users WHERE id = ?", (user_id,))).fetchone()
        return dict(row)

    def authenticate(self, email: str, password: str) -> dict | None:
        row = self.run(self._credentials(email))
        if row is None:
            _check(_unknown_account_hash(), password)  # one scrypt, as for a known account
            return None
        return self.user(row["id"]) if _check(row["password_hash"], password) else None

    async def _credentials(self, email: str) -> Any:
        async with self.database.session() as conn:
            return (await conn.execute("SELECT id, password_hash FROM users WHERE email = ?", (email,))).fetchone()

    # -------------------------------------------------------------- sessions

    def open_session(self, user_id: int, replacing: str | None = None) -> str:
        """A new random session id (rotated at every login: a fixated id is never promoted)."""
        token = secrets.token_urlsafe(32)
        self.run(self._open_session(token, user_id, replacing))
        return token

    async def _open_session(self, token: str, user_id: int, replacing: str | None) -> None:
        async with self.database.transaction() as conn:
            if replacing:
                await conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_token_hash(replacing),))
            await conn.execute("DELETE FROM sessions WHERE expires < ?", (time.time(),))
            await conn.execute("INSERT INTO sessions (token_hash, user_id, expires) VALUES (?, ?, ?)",
                               (_token_hash(token), user_id, time.time() + self.session_ttl_s))

    def session_user(self, token: str | None) -> dict | None:
        return self.run(self._session_user(token)) if token else None

    async def _session_user(self, token: str) -> dict | None:
        async with self.database.session() as conn:
            row = (await conn.execute("SELECT user_id, expires FROM sessions WHERE token_hash = ?",
                                      (_token_hash(token),))).fetchone()
            if row is None or row["expires"] < time.time():
                return None
            return await self._user(row["user_id"])

    def close_session(self, token: str | None) -> None:
        if token:
            self.run(self._write("DELETE FROM sessions WHERE token_hash = ?", (_token_hash(token),)))

    def expire_session(self, token: str) -> None:
        """For tests and admin: make a session expired without deleting it."""
        self.run(self._write("UPDATE sessions SET expires = 0 WHERE token_hash = ?", (_token_hash(token),)))

    async def _write(self, sql: str, parameters: tuple) -> None:
        async with self.database.transaction() as conn:
            await conn.execute(sql, parameters)

    # -------------------------------------------------------------- orders

    def create_order(self, user_id: int, lines: list[dict],
                     then: Callable[[dict], Awaitable[None]] | None = None) -> dict:
        """Insert an order and its lines; `await then(order)` runs inside the same transaction."""
        return self.run(self._create_order(user_id, lines, then))

    async def _create_order(self, user_id: int, lines: list[dict],
                            then: Callable[[dict], Awaitable[None]] | None) -> dict:
        async with self.database.transaction() as conn:
            total = sum(line["unit_price"] * line["quantity"] for line in lines)
            row = (await conn.execute("INSERT INTO orders (user_id, total, created_at) VALUES (?, ?, ?) RETURNING id",
                                      (user_id, total, now()))).fetchone()
            await conn.executemany(
                "INSERT INTO order_lines (order_id, item_id, name, unit_price, quantity) VALUES (?, ?, ?, ?, ?)",
                [(row["id"], li["item_id"], li["name"], li["unit_price"], li["quantity"]) for li in lines],
            )
            order = await self._order(row["id"])
            if then:
                await then(order)
        return order

    def order(self, order_id: int) -> dict | None:
        return self.run(self._order(order_id))

    async def _order(self, order_id: int) -> dict | None:
        async with self.database.session() as conn:
            row = (await conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,))).fetchone()
            return None if row is None else (await self._orders_with_lines(conn, [row]))[0]

    def orders_page(self, user_id: int, limit: int, after: int) -> tuple[list[dict], bool]:
        return self.run(self._orders_page(user_id, limit, after))

    async def _orders_page(self, user_id: int, limit: int, after: int) -> tuple[list[dict], bool]:
        async with self.database.session() as conn:
            rows = (await conn.execute(
                "SELECT * FROM orders WHERE user_id = ? AND id > ? ORDER BY id LIMIT ?", (user_id, after, limit + 1)
            )).fetchall()
            return await self._orders_with_lines(conn, rows[:limit]), len(rows) > limit

    async def _orders_with_lines(self, conn: db.Conn, rows: list[Any]) -> list[dict]:
        """The orders with their lines, in two queries whatever the page size (not one more per order)."""
        ids = [row["id"] for row in rows]
        lines: dict[int, list[dict]] = {order_id: [] for order_id in ids}
        if ids:
            placeholders = ",".join("?" * len(ids))
            for line in await conn.execute(
                "SELECT order_id, item_id, name, unit_price, quantity FROM order_lines "
                f"WHERE order_id IN ({placeholders}) ORDER BY order_id, item_id", ids,
            ):
                lines[line["order_id"]].append({k: line[k] for k in ("item_id", "name", "unit_price", "quantity")})
        return [{"id": row["id"], "user_id": row["user_id"], "total": row["total"], "created_at": row["created_at"],
                 "lines": lines[row["id"]]} for row in rows]
