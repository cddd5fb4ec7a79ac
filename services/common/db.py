"""SQLite connections as every service uses them: WAL, a busy timeout, explicit transactions."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are opened explicitly with `transaction`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    # WAL: readers never block the writer; synchronous=NORMAL is durable across process crashes in WAL mode
    # (a power cut may lose the last commits, never corrupt the file). Switching a fresh file to WAL needs an
    # exclusive lock that SQLite does not wait for: gunicorn workers booting together on a new data directory
    # got "database is locked" at once and the master gave up. One process at a time does it, under a lock file.
    with _exclusive(Path(f"{path}.init-lock")):
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """flock(LOCK_EX) on lock_path: across processes, one holder at a time (released on close or exit)."""
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE takes the write lock up front, so read-check-write sequences are atomic across
    processes (every gunicorn worker, every Tornado process)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def default_path(service: str) -> Path:
    """Where a service keeps its database: $STACK_DATA (native: var/data; Compose: the /data volume)."""
    return Path(os.environ.get("STACK_DATA", "var/data")) / f"{service}.sqlite3"
