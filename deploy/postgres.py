"""Debian's PostgreSQL as the stack runs it natively (STORE=postgres) and as the tests run it: a cluster in a data
directory of our own (never the system's cluster), owned by the `postgres` user when we are root (Postgres refuses
to run as root), reachable over TCP on one loopback address, its role's password from the stack's credentials."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from stack.topology import POSTGRES_ROLE

SYSTEM_USER = "postgres"  # Debian's package makes it; the cluster runs as it when we are root


def binaries() -> Path | None:
    """The newest installed /usr/lib/postgresql/<version>/bin (Debian's layout), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    return found[-1].parent if found else None


def run_as() -> str | None:
    """The user the cluster runs as: `postgres` when we are root, else ourselves (None)."""
    return SYSTEM_USER if os.geteuid() == 0 else None


def data_directory(var: Path) -> Path:
    """Where the stack's cluster lives: var/postgres, when the cluster's user can reach it. A checkout under a
    private directory (/root, pytest's temporary directories) cannot be reached by `postgres`: the cluster then
    lives in /var/lib/postgresql/pystack-<digest of var's path>, and var/postgres is a symlink to it."""
    wanted = var / "postgres"
    user = run_as()
    if wanted.is_symlink():
        return wanted.resolve()
    if user is None or wanted.exists() or subprocess.run(["test", "-x", str(var)], user=user).returncode == 0:
        return wanted
    elsewhere = Path("/var/lib/postgresql") / f"pystack-{hashlib.sha256(str(var).encode()).hexdigest()[:12]}"
    var.mkdir(parents=True, exist_ok=True)
    wanted.symlink_to(elsewhere)
    return elsewhere


def remove_cluster(var: Path) -> Path | None:
    """Delete the stack's cluster (make clean-data), wherever data_directory put it; the path it deleted."""
    wanted = var / "postgres"
    if not wanted.exists() and not wanted.is_symlink():
        return None
    real = wanted.resolve()
    shutil.rmtree(real, ignore_errors=True)
    if wanted.is_symlink():
        wanted.unlink()
    return real


def initdb(datadir: Path, password: str) -> bool:
    """Make the cluster once (False if it existed): UTF-8, C collation (byte order: keyset pagination by key is
    the same in both stores), scram-sha-256 for every TCP connection, the role `pystack` as superuser."""
    if (datadir / "PG_VERSION").exists():
        return False
    bin_dir = binaries()
    if bin_dir is None:
        raise SystemExit("STORE=postgres needs Debian's postgresql package: apt-get install postgresql")
    datadir.mkdir(parents=True, exist_ok=True)
    datadir.chmod(0o700)
    user = run_as()
    if user:
        shutil.chown(datadir, user, user)
    with tempfile.TemporaryDirectory() as private:  # the password, readable by the cluster's user only
        pwfile = Path(private) / "password"
        pwfile.write_text(password + "\n")
        if user:
            shutil.chown(private, user)
            shutil.chown(pwfile, user)
        done = subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(datadir), "-U", POSTGRES_ROLE, f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
            text=True, capture_output=True, user=user, cwd="/",
        )
    if done.returncode:
        raise SystemExit(f"initdb failed:\n{done.stderr}")
    return True


def command(datadir: Path, host: str, port: int, fast: bool = False) -> list[str]:
    """The postgres argv: listening on host:port only, no Unix socket (the services speak TCP). `fast` (tests):
    no fsync, a crash may lose data."""
    bin_dir = binaries()
    if bin_dir is None:
        raise SystemExit("STORE=postgres needs Debian's postgresql package: apt-get install postgresql")
    settings = {
        "listen_addresses": host, "port": str(port), "unix_socket_directories": "",
        # Every instance's pool (4 per process) and its idempotency owner connection: SCALE=web=10 is 10 x 5
        # workers x 5, with catalog, httpbin and the tests beside it.
        "max_connections": "400",
        "log_min_duration_statement": "250",  # slow statements in the log
        **({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"} if fast else {}),
    }
    return [str(bin_dir / "postgres"), "-D", str(datadir), *(f"-c{k}={v}" for k, v in settings.items())]


def start(datadir: Path, host: str, port: int, log: Path, fast: bool = False) -> subprocess.Popen[bytes]:
    """Start the cluster as a child (tests; the stack runs it under supervisord)."""
    with log.open("ab") as out:
        return subprocess.Popen(command(datadir, host, port, fast), stdout=out, stderr=subprocess.STDOUT,
                                user=run_as(), cwd="/", start_new_session=True)


def wait_ready(url: str, password: str, timeout: float = 30.0) -> None:
    """Until the cluster takes a connection (SystemExit after `timeout`)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(url, password=password, connect_timeout=2).close()
            return
        except psycopg.OperationalError as error:
            if time.monotonic() > deadline:
                raise SystemExit(f"Postgres at {url} did not answer in {timeout:.0f} s: {error}") from None
            time.sleep(0.2)
