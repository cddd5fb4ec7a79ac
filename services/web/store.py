"""web's data in SQLite (WAL): accounts, server-side sessions, orders. Every gunicorn worker opens the same
file, so a session created by one worker is seen by all."""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

from services.common import db
from services.common.documents import Documents
from services.common.http import Problem
from services.common.idempotency import IdempotencyKeys

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,      -- sha256 of the cookie's value: a leaked database holds no live session
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id),
    total INTEGER NOT NULL,           -- integer cents
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS order_lines (
    order_id INTEGER NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    item_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    unit_price INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    PRIMARY KEY (order_id, item_id)
);
-- A user's orders, in order: without it a page of one user's orders scanned every order in the table from the
-- cursor on (the p99.9 of GET /web/orders grew with the table, to 57 ms at 17,000 orders).
CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, id);
"""
SESSION_TTL = float(os.environ.get("WEB_SESSION_TTL_SECONDS", str(7 * 24 * 3600)))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@functools.cache
def _unknown_account_hash() -> str:
    """A hash to check an unknown account's password against: hashing a fresh one there made a login for an
    unknown account cost two scrypts (twice as long as a known one's, which tells the accounts apart)."""
    return generate_password_hash(secrets.token_urlsafe(16))


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """Accounts, sessions and orders in SQLite, one connection per OS thread (db.PerThread). Under gevent, what
    can wait (writes, which queue for SQLite's write lock, and scrypt) runs in the hub's threadpool
    (db.off_the_hub); indexed reads, which never wait in WAL mode, run on the hub (db.read_on_the_hub)."""

    def __init__(self, path: str | Path) -> None:
        self.conn = db.PerThread(path)
        self.conn.executescript(SCHEMA)
        self.keys = IdempotencyKeys(self.conn)
        self.documents = Documents(self.conn)  # the carts

    # -------------------------------------------------------------- accounts

    @db.off_the_hub
    def signup(self, email: str, password: str) -> dict:
        digest = generate_password_hash(password)  # scrypt with a random salt (Werkzeug's default KDF)
        try:
            with db.transaction(self.conn):
                cursor = self.conn.execute(
                    "INSERT INTO users (email, password_hash, created_at) VALUES (?, ?, ?)", (email, digest, now())
                )
        except sqlite3.IntegrityError:
            raise Problem(409, "Email already registered", f"an account for {email} exists; log in instead") from None
        return self.user(cursor.lastrowid)

    @db.read_on_the_hub
    def user(self, user_id: int) -> dict:
        row = self.conn.execute("SELECT id, email, created_at FROM users WHERE id = ?", (user_id,)).fetchone()
        return dict(row)

    @db.off_the_hub
    def authenticate(self, email: str, password: str) -> dict | None:
        row = self.conn.execute("SELECT id, password_hash FROM users WHERE email = ?", (email,)).fetchone()
        if row is None:
            check_password_hash(_unknown_account_hash(), password)  # one scrypt, as for a known account
            return None
        return self.user(row["id"]) if check_password_hash(row["password_hash"], password) else None

    # -------------------------------------------------------------- sessions

    @db.off_the_hub
    def open_session(self, user_id: int, replacing: str | None = None) -> str:
        """A new random session id (rotated at every login: a fixated id is never promoted)."""
        token = secrets.token_urlsafe(32)
        with db.transaction(self.conn):
            if replacing:
                self.conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_token_hash(replacing),))
            self.conn.execute("DELETE FROM sessions WHERE expires < ?", (time.time(),))
            self.conn.execute("INSERT INTO sessions (token_hash, user_id, expires) VALUES (?, ?, ?)",
                              (_token_hash(token), user_id, time.time() + SESSION_TTL))
        return token

    @db.read_on_the_hub
    def session_user(self, token: str | None) -> dict | None:
        if not token:
            return None
        row = self.conn.execute("SELECT user_id, expires FROM sessions WHERE token_hash = ?",
                                (_token_hash(token),)).fetchone()
        if row is None or row["expires"] < time.time():
            return None
        return self.user(row["user_id"])

    @db.off_the_hub
    def close_session(self, token: str | None) -> None:
        if token:
            self.conn.execute("DELETE FROM sessions WHERE token_hash = ?", (_token_hash(token),))

    @db.off_the_hub
    def expire_session(self, token: str) -> None:
        """For tests and admin: make a session expired without deleting it."""
        self.conn.execute("UPDATE sessions SET expires = 0 WHERE token_hash = ?", (_token_hash(token),))

    # -------------------------------------------------------------- orders

    @db.off_the_hub
    def create_order(self, user_id: int, lines: list[dict], then: Callable[[dict], None] | None = None) -> dict:
        with db.transaction(self.conn):
            total = sum(line["unit_price"] * line["quantity"] for line in lines)
            cursor = self.conn.execute("INSERT INTO orders (user_id, total, created_at) VALUES (?, ?, ?)",
                                       (user_id, total, now()))
            self.conn.executemany(
                "INSERT INTO order_lines (order_id, item_id, name, unit_price, quantity) VALUES (?, ?, ?, ?, ?)",
                [(cursor.lastrowid, li["item_id"], li["name"], li["unit_price"], li["quantity"]) for li in lines],
            )
            order = self.order(cursor.lastrowid)
            if then:
                then(order)
        return order

    @db.read_on_the_hub
    def order(self, order_id: int) -> dict | None:
        row = self.conn.execute("SELECT * FROM orders WHERE id = ?", (order_id,)).fetchone()
        return None if row is None else self._orders_with_lines([row])[0]

    @db.read_on_the_hub
    def orders_page(self, user_id: int, limit: int, after: int) -> tuple[list[dict], bool]:
        rows = self.conn.execute(
            "SELECT * FROM orders WHERE user_id = ? AND id > ? ORDER BY id LIMIT ?", (user_id, after, limit + 1)
        ).fetchall()
        return self._orders_with_lines(rows[:limit]), len(rows) > limit

    def _orders_with_lines(self, rows: list[sqlite3.Row]) -> list[dict]:
        """The orders with their lines, in two queries whatever the page size (not one more per order)."""
        ids = [row["id"] for row in rows]
        lines: dict[int, list[dict]] = {order_id: [] for order_id in ids}
        if ids:
            placeholders = ",".join("?" * len(ids))
            for line in self.conn.execute(
                "SELECT order_id, item_id, name, unit_price, quantity FROM order_lines "
                f"WHERE order_id IN ({placeholders}) ORDER BY order_id, item_id", ids,
            ):
                lines[line["order_id"]].append({k: line[k] for k in ("item_id", "name", "unit_price", "quantity")})
        return [{"id": row["id"], "user_id": row["user_id"], "total": row["total"], "created_at": row["created_at"],
                 "lines": lines[row["id"]]} for row in rows]
