"""Schema migrations for STORE=postgres, run once before the services start (`make up` natively, a one-shot
`migrate` service in Compose, an init container on Kubernetes): the database if it is missing, the citext
extension, then every HTTP service's tables (services/common/schema.py) in a schema named after the service.
Every statement is CREATE ... IF NOT EXISTS, and one advisory lock makes
concurrent runs wait for each other, so running it again (every `make up`, every pod start) is harmless. Each run
is recorded in public.stack_migrations.

    python -m services.common.migrate            # DATABASE_URL from the environment
    python -m services.common.migrate --url postgresql://pystack@127.0.10.54:5432/pystack

SQLite needs none of this: each service makes its tables in its own file when it opens it.
"""

from __future__ import annotations

import argparse
import os
import sys

from services.common import db, schema
from stack import topology

RECORD = """CREATE TABLE IF NOT EXISTS public.stack_migrations (
    service TEXT NOT NULL,
    schema_sha256 TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (service, schema_sha256)
)"""


def statements(service: topology.Service) -> tuple[str, ...]:
    """The service's DDL (services/common/schema.py)."""
    return schema.TABLES[service.name]




def ensure_database(url: str) -> None:
    """CREATE DATABASE when the URL's database does not exist yet (a fresh cluster has only `postgres`)."""
    import psycopg
    from psycopg import sql

    info = db.postgres_conninfo(url, "public")
    try:
        psycopg.connect(**info).close()
        return
    except psycopg.OperationalError as error:
        if "does not exist" not in str(error):
            raise
    with psycopg.connect(**{**info, "dbname": "postgres"}, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(info["dbname"])))


async def migrate_service(url: str, service: topology.Service) -> str:
    """One service's schema and tables; returns the DDL's digest, as recorded."""
    database = db.Postgres(url, service.name, max_size=1, require_schema=False)
    try:
        ddl = statements(service)
        async with database.session() as conn:
            await conn.execute("SELECT pg_advisory_lock(?)", (db.lock_key("stack-migrations"),))
            try:
                await conn.execute("CREATE EXTENSION IF NOT EXISTS citext SCHEMA public")
                await conn.execute(RECORD)
                await database.apply_schema(ddl)
                digest = schema.digest(service.name)
                await conn.execute("INSERT INTO public.stack_migrations (service, schema_sha256) VALUES (?, ?) "
                                   "ON CONFLICT DO NOTHING", (service.name, digest))
            finally:
                await conn.execute("SELECT pg_advisory_unlock(?)", (db.lock_key("stack-migrations"),))
        return digest
    finally:
        database.close()


def migrate(url: str) -> dict[str, str]:
    """Every HTTP service's tables at `url`: service -> DDL digest."""
    ensure_database(url)
    return {service.name: db.run(migrate_service(url, service)) for service in topology.HTTP_SERVICES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("DATABASE_URL"), help="default: $DATABASE_URL")
    args = parser.parse_args(argv)
    if not args.url or not db.is_postgres(args.url):
        parser.error("a postgresql:// URL is needed (--url or DATABASE_URL)")
    for service, digest in migrate(args.url).items():
        print(f"[migrate] {service}: schema {service} up to date ({digest[:12]})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
