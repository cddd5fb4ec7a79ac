"""web's HTTP calls to the other services, by name (resolved as services/common/stack_dns.py explains).
Under gevent the sockets are cooperative, so many calls wait at once in one worker."""

from __future__ import annotations

from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from services.common import stack_dns
from services.common.stack_dns import CATALOG_URL, HTTPBIN_URL

__all__ = ["CATALOG_URL", "HTTPBIN_URL", "UpstreamError", "request"]
TIMEOUT = (2.0, 15.0)  # connect, read


class UpstreamError(Exception):
    """The other service could not be reached or answered 5xx: the client gets 502, never 500."""


# One pooled session per worker process, shared by its greenlets (or threads): connections to each service are
# kept alive and reused. (Not a threading.local: gevent's patching would make that one session per greenlet.)
_session = requests.Session()
_session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=100))


def request(method: str, base: str, path: str, request_id: str, **kwargs: object) -> requests.Response:
    """Call another service: resolve its name through the stack's DNS, keep its name in the Host header."""
    try:
        prefix, host = stack_dns.by_address(base, stack_dns.resolver.address(urlsplit(base).hostname or ""))
    except stack_dns.NameNotFound as error:
        raise UpstreamError(str(error)) from None
    headers = {"Host": host, "X-Request-ID": request_id, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    try:
        response = _session.request(method, prefix + path, headers=headers, timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]
    except requests.RequestException as error:
        raise UpstreamError(f"{method} {base}{path} failed: {error}") from None
    if response.status_code >= 500:
        raise UpstreamError(f"{method} {base}{path} answered {response.status_code}")
    return response
