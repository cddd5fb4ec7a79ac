"""One settings object per service: what its environment says, read once where the service starts and passed to its
app factory (`create_app(settings=...)`), as go-httpbin's `New(opts...)` takes its options. A module therefore
never reads the environment at import time, and a test builds an app with the settings it wants instead of
patching module constants. Each field names the variable it comes from; an unset or empty one keeps the default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from stack.topology import WEB_SERVERS, Site

WEEK_S = 7 * 24 * 3600


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "0") == "1"


def _number(environ: Mapping[str, str], name: str, default: float) -> float:
    """A positive number from the environment; SystemExit naming the variable when it is not one (a service must
    not start with a setting it cannot use)."""
    text = environ.get(name) or ""
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(f"{name}={text!r} is not a number") from None
    if not value > 0:
        raise SystemExit(f"{name}={text!r} must be positive")
    return value


@dataclass(frozen=True)
class WebSettings:
    """web (Flask): its session lifetime, whether the session cookie is Secure on plain HTTP too, and which WSGI
    server runs it (what /web/conn can tell)."""

    session_ttl_s: float = WEEK_S  # WEB_SESSION_TTL_SECONDS
    cookie_secure: bool = False  # WEB_COOKIE_SECURE=1: for a deployment whose TLS ends in front of nginx
    server: str = Site.web_server  # WEB_SERVER: a key of stack.topology.WEB_SERVERS

    def __post_init__(self) -> None:
        # Checked here, at start: read per request, an unknown server was a 500 on every /web/conn.
        if self.server not in WEB_SERVERS:
            raise SystemExit(f"WEB_SERVER={self.server!r} is none of {', '.join(WEB_SERVERS)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> WebSettings:
        return cls(session_ttl_s=_number(environ, "WEB_SESSION_TTL_SECONDS", WEEK_S),
                   cookie_secure=_flag(environ, "WEB_COOKIE_SECURE"),
                   server=environ.get("WEB_SERVER") or Site.web_server)


@dataclass(frozen=True)
class HttpbinSettings:
    """httpbin (aiohttp): how long a bin lives and how many there may be, which hosts /redirect-to may name
    besides the request's own, and which instance this is (/hostname)."""

    bin_ttl_s: float = WEEK_S  # HTTPBIN_BIN_TTL_SECONDS
    max_bins: int = 10_000  # HTTPBIN_MAX_BINS: past it a new bin is a 507
    redirect_hosts: frozenset[str] = field(default_factory=frozenset)  # REDIRECT_HOSTS, comma-separated
    instance: str = "1"  # STACK_INSTANCE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> HttpbinSettings:
        hosts = frozenset(h.strip().lower() for h in environ.get("REDIRECT_HOSTS", "").split(",") if h.strip())
        return cls(bin_ttl_s=_number(environ, "HTTPBIN_BIN_TTL_SECONDS", WEEK_S),
                   max_bins=int(_number(environ, "HTTPBIN_MAX_BINS", 10_000)),
                   redirect_hosts=hosts, instance=environ.get("STACK_INSTANCE") or "1")
