"""SQLite connections as every service uses them: WAL, a busy timeout, explicit transactions, one connection
per OS thread, and blocking work kept off gevent's hub."""

from __future__ import annotations

import fcntl
import functools
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


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
def transaction(conn: Connection) -> Iterator[Connection]:
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


def _gevent_monkey() -> Any | None:
    """gevent.monkey when this process runs on gevent (its sockets patched), else None."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey if monkey is not None and monkey.is_module_patched("socket") else None


def _os_thread_local() -> threading.local:
    """A threading.local per OS thread even under gevent, whose patched threading.local is per greenlet."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        return monkey.get_original("threading", "local")()
    return threading.local()


class PerThread:
    """One SQLite connection per OS thread behind one object that is used like a connection. A connection
    shared by threads (gunicorn's gthread workers) interleaves their transactions: one thread's BEGIN and
    another's statements on the same connection. Under gevent, greenlets on the hub share the hub's
    connection (a Store call never yields mid-transaction) and each threadpool thread has its own."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self._local = _os_thread_local()
        self.connection()  # open (and set up) the first one now: a bad path fails at start, not at a request

    def connection(self) -> sqlite3.Connection:
        """This OS thread's connection, opened on its first use."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path)
        return conn

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        return self.connection().execute(sql, parameters)

    def executemany(self, sql: str, rows: Any) -> sqlite3.Cursor:
        return self.connection().executemany(sql, rows)

    def executescript(self, script: str) -> sqlite3.Cursor:
        return self.connection().executescript(script)


Connection = sqlite3.Connection | PerThread  # what the stores take: either behaves like a connection here

_pool_thread = _os_thread_local()


def off_the_hub(func: Callable[..., T]) -> Callable[..., T]:
    """Under gevent, run `func` in the hub's threadpool and park only the calling greenlet: scrypt and SQLite
    release the GIL, so the other greenlets of the worker keep running (on the hub, one login's 100-200 ms
    of scrypt stalled every request of its worker). Elsewhere, and inside a pool thread already (a callback
    within a transaction must stay on that thread's connection), call it directly."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        if getattr(_pool_thread, "active", False) or _gevent_monkey() is None:
            return func(*args, **kwargs)

        def in_pool() -> T:
            _pool_thread.active = True
            try:
                return func(*args, **kwargs)
            finally:
                _pool_thread.active = False

        import gevent

        return gevent.get_hub().threadpool.apply(in_pool)

    return wrapper


def read_on_the_hub(func: Callable[..., T]) -> Callable[..., T]:
    """A read by key or index, in WAL mode: it never waits for a lock (readers do not block writers or each other)
    and takes about a tenth of a millisecond, so under gevent it runs right here, on the hub. Sent to the
    threadpool instead (off_the_hub), each such read cost a thread hand-off and waits for the GIL, and those
    piled up in the tail: p99.9 of web's reads went from 25-35 ms to 18-21 ms on the hub (make soak, 100 users,
    2 cores). Anything that can wait (a write's BEGIN IMMEDIATE, scrypt) stays off_the_hub. Called inside a
    pool thread it simply runs there, on that thread's connection."""
    return func
