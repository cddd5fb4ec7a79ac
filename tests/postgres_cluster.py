"""A throwaway Postgres cluster for the tests of both stores: Debian's postgres in a temporary directory on a free
loopback port (never the system's cluster), started on first use and stopped when the test run ends. Each test gets
a fresh database, copied from a template the migrations ran in once (CREATE DATABASE ... TEMPLATE: milliseconds)."""

from __future__ import annotations

import atexit
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from deploy import postgres
from stack.topology import POSTGRES_ROLE

HOST = "127.0.0.1"
TEMPLATE = "stack_template"
_cluster: dict[str, object] = {}


def _start() -> dict[str, object]:
    from services.common import migrate
    from tests.conftest import free_port

    directory = Path(tempfile.mkdtemp(prefix="stack-pg-"))
    directory.chmod(0o755)  # the cluster's user (postgres, when we are root) must reach its data directory
    password = secrets.token_hex(16)
    postgres.initdb(directory / "data", password)
    port = free_port(HOST)
    process = postgres.start(directory / "data", HOST, port, directory / "postgres.log", fast=True)
    base = f"postgresql://{POSTGRES_ROLE}:{password}@{HOST}:{port}"
    postgres.wait_ready(f"{base}/postgres", password)
    migrate.migrate(f"{base}/{TEMPLATE}")

    def stop() -> None:
        process.send_signal(signal.SIGINT)  # fast shutdown: open test connections do not hold it up
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(directory, ignore_errors=True)

    atexit.register(stop)
    return {"base": base, "process": process}


def _admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(f"{_cluster['base']}/postgres", autocommit=True) as admin:
        admin.execute(statement)


def fresh_database() -> str:
    """The URL of a new database with every service's tables, empty."""
    if not _cluster:
        _cluster.update(_start())
    name = f"test_{secrets.token_hex(6)}"
    _admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    return f"{_cluster['base']}/{name}"


def drop(url: str) -> None:
    """Drop a test's database, closing whatever connections it left open."""
    _admin(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
