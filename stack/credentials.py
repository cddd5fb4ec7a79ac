"""Service credentials: bearer tokens, one file each, made once per stack and never committed.

    catalog_operator  changes the catalog (create, replace, change, delete items): the operator's, and Locust's
    catalog_web       web's own credential towards catalog: it may only change an item's stock (orders)
    postgres          the password of the stack's Postgres role (STORE=postgres)

Natively the files live in $STACK_SECRETS (default var/secrets, made by `make up`); in Compose they are Compose
secrets, mounted at /run/secrets. Read with: curl -H "Authorization: Bearer $(cat var/secrets/catalog_operator)"
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

OPERATOR = "catalog_operator"
WEB = "catalog_web"
TOKENS = (OPERATOR, WEB)  # bearer tokens towards catalog
POSTGRES = "postgres"  # the stack's Postgres role's password (STORE=postgres): never a bearer token
NAMES = (*TOKENS, POSTGRES)


def directory() -> Path:
    return Path(os.environ.get("STACK_SECRETS", "var/secrets"))


def read(name: str, where: Path | None = None) -> str | None:
    """The token in <where>/<name>, or None when there is none (then what it guards stays closed)."""
    try:
        token = ((where or directory()) / name).read_text().strip()
    except OSError:
        return None
    return token or None


def ensure(where: Path) -> None:
    """Create any missing token: 32 random bytes, hex. The directory is private to its owner; the files are
    readable so that Compose can bind-mount them into containers that run as another user."""
    where.mkdir(parents=True, exist_ok=True)
    where.chmod(0o700)
    for name in NAMES:
        path = where / name
        if not path.exists():
            path.write_text(secrets.token_hex(32) + "\n")
            path.chmod(0o644)


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1), else None."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def who(token: str | None, known: dict[str, str | None]) -> str | None:
    """The name whose token this is (compared in constant time), or None."""
    found = None
    for name, expected in known.items():
        if token and expected and hmac.compare_digest(token.encode(), expected.encode()):
            found = name
    return found
