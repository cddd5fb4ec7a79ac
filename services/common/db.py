"""The services' databases: SQLite (the embedded default, one machine) or Postgres (STORE=postgres, shared by every
instance on every machine), behind one small interface the stores are written against once.

The stores are coroutines: `async with database.session() as conn: rows = await conn.execute(...)`. On Postgres
under Tornado and aiohttp, a session is an async psycopg connection from a pool, so a query parks only its own
request. Everywhere else the connection is synchronous and its coroutines never suspend, so synchronous code
(web's Flask views) drives them to the end in one step with `run()`: SQLite's calls are the same blocking calls as
before, and psycopg's blocking calls are cooperative under gevent (psycopg waits through the patched select).

One writer per store at a time, in both: `transaction()` is SQLite's BEGIN IMMEDIATE, and on Postgres a
transaction-scoped advisory lock per service, so a read-check-write sequence is atomic across every process
and machine exactly as it is across SQLite's processes.
"""

from __future__ import annotations

import contextvars
import fcntl
import functools
import hashlib
import os
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from services.common import schema, timing
from services.common.http import Problem
from services.common.semantics import LONE_SURROGATE
from stack import credentials

T = TypeVar("T")
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


# ------------------------------------------------------------------ SQLite connections


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


def default_path(service: str) -> Path:
    """Where a service keeps its SQLite database: $STACK_DATA (native: var/data; Compose: the /data volume)."""
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


_pool_thread = _os_thread_local()


def off_the_hub(func: Callable[..., T]) -> Callable[..., T]:
    """Under gevent, run `func` in the hub's threadpool and park only the calling greenlet: scrypt and SQLite
    release the GIL, so the other greenlets of the worker keep running (on the hub, one login's 100-200 ms
    of scrypt stalled every request of its worker). Elsewhere, and inside a pool thread already, call it directly."""

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


# ------------------------------------------------------------------ the interface the stores use


class Result:
    """A statement's rows, fetched: `row["column"]` and `dict(row)` work for both databases."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows, self.rowcount = rows, rowcount

    def fetchone(self) -> Any | None:
        return self.rows[0] if self.rows else None

    def fetchall(self) -> list[Any]:
        return self.rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)


def storable(parameters: Sequence[Any]) -> None:
    """The same 422 on both stores for a value neither can hold as given: text with NUL (U+0000; valid JSON, but
    Postgres's text refuses it, a 500 before) and integers past 64 bits (SQLite's OverflowError, a 500 before)."""
    for value in parameters:
        if isinstance(value, str) and "\x00" in value:
            raise Problem(422, "Unstorable value", "text with a NUL character (U+0000) cannot be stored")
        # A header's undecodable bytes, which aiohttp keeps as surrogate escapes: no UTF-8 text holds them.
        if isinstance(value, str) and not value.isascii() and LONE_SURROGATE.search(value):
            raise Problem(422, "Unstorable value", "text with a lone surrogate (U+D800..U+DFFF) cannot be stored")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise Problem(422, "Unstorable value", "integers are stored in 64 bits")


class Conn:
    """One connection, as a store sees it: SQL with `?` placeholders, awaited."""

    def __init__(self, raw: Any, placeholder: str) -> None:
        self.raw, self._placeholder = raw, placeholder

    def _sql(self, sql: str) -> str:
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Result:
        storable(parameters)
        cursor = self.raw.execute(self._sql(sql), parameters)
        if hasattr(cursor, "__await__"):
            cursor = await cursor
            return Result(await cursor.fetchall() if cursor.description else [], cursor.rowcount)
        return Result(cursor.fetchall() if cursor.description else [], cursor.rowcount)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        for row in rows:
            storable(row)
        done = self.raw.cursor().executemany(self._sql(sql), rows)
        if hasattr(done, "__await__"):
            await done


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Drive a store coroutine to its end from synchronous code. Its connection is synchronous, so it finishes in
    one step; one that suspends was given an asynchronous database, which synchronous code cannot wait for."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("a store call suspended: synchronous code needs a synchronous database")


# Each request's (task's, greenlet's, thread's) connection: nested store calls share their caller's session, so
# a callback inside a transaction (an idempotent response being recorded) commits with it.
_session: contextvars.ContextVar[Conn | None] = contextvars.ContextVar("db_session", default=None)


class Database:
    """What the stores hold: `session()`, `transaction()`, the dialect's DDL words and its unique-violation error."""

    dialect = ""
    integrity_error: tuple[type[BaseException], ...] = ()
    asynchronous = False

    def ddl(self, template: str) -> str:
        """A schema written once: {id}, {int}, {real}, {blob} and {nocase} become this dialect's column types."""
        return template.format(**schema.DDL_WORDS[self.dialect])

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Conn]:
        current = _session.get()
        if current is not None:
            yield current
            return
        began = time.perf_counter()  # the request's database time: waiting for a connection, and using it
        try:
            async with self._connection() as conn:
                token = _session.set(conn)
                try:
                    yield conn
                finally:
                    _session.reset(token)
        finally:
            timing.add_database_time(time.perf_counter() - began)

    def _connection(self) -> Any:
        raise NotImplementedError

    def transaction(self) -> Any:
        """`async with database.transaction() as conn`: one writer at a time per store; rolled back on error."""
        raise NotImplementedError

    async def apply_schema(self, statements: Sequence[str]) -> None:
        """Create what is missing (every statement is CREATE ... IF NOT EXISTS)."""
        async with self.transaction() as conn:
            for statement in statements:
                await conn.execute(self.ddl(statement))

    def close(self) -> None:
        """Give back what the database holds (a pool's connections)."""

    async def aclose(self) -> None:
        self.close()


class SQLite(Database):
    """Connections to one SQLite file, each used by one request at a time (a request's session) and kept for the
    next. Shared connections interleaved transactions: one thread's BEGIN and another's statements (gunicorn's
    gthread workers), or under gevent a greenlet's statements inside another's transaction once a wait parks it."""

    dialect = "sqlite"
    integrity_error = (sqlite3.IntegrityError,)
    KEEP_IDLE = 8

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._idle = [connect(path)]  # the first one now: a bad path fails at start, not at a request

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        try:
            raw = self._idle.pop()
        except IndexError:
            raw = connect(self.path)
        try:
            yield Conn(raw, "?")
        finally:
            if len(self._idle) < self.KEEP_IDLE:
                self._idle.append(raw)
            else:
                raw.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        """BEGIN IMMEDIATE takes the write lock up front, so read-check-write sequences are atomic across
        processes (every gunicorn worker, every Tornado process). Taking it may wait (SQLite's busy timeout):
        under gevent that wait runs in the hub's threadpool, parking only this request's greenlet. Everything
        after it runs on the hub, COMMIT included: the holder of the lock must never need a pool thread, which
        every waiter may be occupying (COMMIT sent to the pool deadlocked web's writes under 64 connections until
        the busy timeouts expired). In WAL mode a commit takes no lock and reads never wait."""
        async with self.session() as conn:
            off_the_hub(conn.raw.execute)("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.raw.execute("ROLLBACK")
                raise
            conn.raw.execute("COMMIT")

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


# ------------------------------------------------------------------ Postgres


def unavailable(error: BaseException) -> Problem:
    """What a request that needs the store gets while Postgres does not answer: the server's condition, a 503."""
    return Problem(503, "Database unavailable", f"the store did not answer: {type(error).__name__}")


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def postgres_conninfo(url: str, schema: str) -> dict[str, Any]:
    """psycopg's connection arguments: the URL, the service's schema first on the search path (public for the
    citext type), the password from the stack's credentials when the URL carries none."""
    import psycopg

    info = psycopg.conninfo.conninfo_to_dict(url)
    password = None if "password" in info else credentials.read(credentials.POSTGRES)
    if password:
        info["password"] = password
    info.setdefault("connect_timeout", 5)
    info["options"] = f"-c search_path={schema},public"
    info["application_name"] = f"{schema}:{os.environ.get('STACK_INSTANCE', os.getpid())}"
    return info


class Postgres(Database):
    """A psycopg pool of autocommit connections whose rows are dicts. `asynchronous` gives AsyncConnections
    (Tornado, aiohttp); otherwise synchronous ones (web under gevent: cooperative)."""

    dialect = "postgres"

    def __init__(self, url: str, schema: str, asynchronous: bool = False, max_size: int | None = None,
                 require_schema: bool = True) -> None:
        import psycopg
        from psycopg.rows import dict_row

        self.schema, self.asynchronous = schema, asynchronous
        self.conninfo = postgres_conninfo(url, schema)
        self.integrity_error = (psycopg.errors.IntegrityError,)
        self.unavailable = (psycopg.OperationalError,)
        self.writer_lock = lock_key(f"stack-writer:{schema}")
        size = max_size or int(os.environ.get("DATABASE_POOL_SIZE", "4"))
        options = {"kwargs": {**self.conninfo, "autocommit": True, "row_factory": dict_row}, "min_size": 1,
                   "max_size": size, "open": False, "name": schema,
                   # A request waits this long for a free connection, then is a 503 (as it is when Postgres is down).
                   "timeout": float(os.environ.get("DATABASE_POOL_TIMEOUT_SECONDS", "5"))}
        if asynchronous:
            from psycopg_pool import AsyncConnectionPool

            self.pool: Any = AsyncConnectionPool(**options)
        else:
            from psycopg_pool import ConnectionPool

            self.pool = ConnectionPool(**options)
        from psycopg_pool import PoolTimeout

        self.unavailable += (PoolTimeout,)
        self._opened = False
        if require_schema:
            self.wait_for_schema(float(os.environ.get("DATABASE_WAIT_SECONDS", "60")))

    def wait_for_schema(self, timeout: float) -> None:
        """Before the service serves: wait until the migrations recorded this code's schema (they run once, before
        the services, but a service may start first: supervisord starts every program together, and a pod does
        not wait for another). SystemExit after `timeout`, saying what is missing."""
        import psycopg

        digest = schema.digest(self.schema)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(**self.conninfo) as conn:
                    if conn.execute("SELECT 1 FROM public.stack_migrations WHERE service = %s AND schema_sha256 = %s",
                                    (self.schema, digest)).fetchone():
                        return
                    problem = "its schema is not migrated yet (python -m services.common.migrate)"
            except psycopg.errors.UndefinedTable:
                problem = "no migration has run yet (python -m services.common.migrate)"
            except psycopg.OperationalError as error:
                problem = f"Postgres does not answer: {error}"
            if time.monotonic() > deadline:
                raise SystemExit(f"[{self.schema}] cannot start on Postgres: {problem}")
            time.sleep(0.5)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        try:
            if not self._opened:  # first use, inside the running event loop (an async pool needs one)
                self._opened = True
                opened = self.pool.open(wait=False)
                if opened is not None:
                    await opened
            manager = self.pool.connection()
            if self.asynchronous:
                async with manager as raw:
                    yield Conn(raw, "%s")
            else:
                with manager as raw:
                    yield Conn(raw, "%s")
        except self.unavailable as error:
            raise unavailable(error) from None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Conn]:
        async with self.session() as conn:
            manager = conn.raw.transaction()
            if self.asynchronous:
                async with manager:
                    await conn.execute("SELECT pg_advisory_xact_lock(?)", (self.writer_lock,))
                    yield conn
            else:
                with manager:
                    await conn.execute("SELECT pg_advisory_xact_lock(?)", (self.writer_lock,))
                    yield conn

    async def apply_schema(self, statements: Sequence[str]) -> None:
        async with self.session() as conn:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        await super().apply_schema(statements)

    def close(self) -> None:
        if self._opened and not self.asynchronous:
            self.pool.close()

    async def aclose(self) -> None:
        """Close an async pool, in its event loop (aiohttp's cleanup)."""
        if self._opened:
            closing = self.pool.close()
            if closing is not None:
                await closing


def is_postgres(location: str | Path) -> bool:
    return str(location).startswith(POSTGRES_SCHEMES)


def location(service: str, environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """Where a service's data lives: $DATABASE_URL when STORE=postgres, else its SQLite file."""
    from stack.topology import STORES

    store = environ.get("STORE", STORES[0])
    if store not in STORES:
        raise SystemExit(f"STORE={store!r}: use one of {', '.join(STORES)} (default {STORES[0]})")
    if store == "postgres":
        if not environ.get("DATABASE_URL"):
            raise SystemExit("STORE=postgres needs DATABASE_URL (postgresql://user@host:port/database)")
        return environ["DATABASE_URL"]
    return str(default_path(service))


def open_database(service: str, where: str | Path | None = None, asynchronous: bool = False) -> Database:
    """The service's database at `where` (a SQLite path or a postgresql:// URL; default: `location(service)`).
    On Postgres the service's tables live in a schema named after it, made by `python -m services.common.migrate`."""
    where = where if where is not None else location(service)
    if is_postgres(where):
        return Postgres(str(where), service, asynchronous=asynchronous)
    database = SQLite(where)
    run(database.apply_schema(schema.TABLES[service]))  # embedded: the file gets its tables when it is opened
    return database
