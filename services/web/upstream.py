"""web's HTTP calls to the other services, by name (resolved as services/common/stack_dns.py explains).
Under gevent the sockets are cooperative, so many calls wait at once in one worker."""

from __future__ import annotations

from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from services.common import stack_dns
from services.common.stack_dns import CATALOG_URL, HTTPBIN_URL
from stack import credentials

__all__ = ["CATALOG_URL", "HTTPBIN_URL", "UpstreamError", "request"]
TIMEOUT = (2.0, 15.0)  # connect, read


class UpstreamError(Exception):
    """The other service could not be reached or answered 5xx: the client gets 502, never 500."""


# One pooled session per worker process, shared by its greenlets (or threads): connections to each service are
# kept alive and reused. (Not a threading.local: gevent's patching would make that one session per greenlet.)
_session = requests.Session()
_session.mount("http://", HTTPAdapter(pool_connections=4, pool_maxsize=100))


def request(method: str, base: str, path: str, request_id: str, **kwargs: object) -> requests.Response:
    """Call another service: resolve its name through the stack's DNS, keep its name in the Host header.
    An instance that refuses the connection (it is restarting) is skipped for the next one: nothing was sent,
    so this is safe for every method."""
    try:
        addresses = stack_dns.resolver.addresses(urlsplit(base).hostname or "")
    except stack_dns.NameNotFound as error:
        raise UpstreamError(str(error)) from None
    headers = {"Host": urlsplit(base).netloc, "X-Request-ID": request_id, **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    if base == CATALOG_URL and (token := credentials.read(credentials.WEB)):
        headers["Authorization"] = f"Bearer {token}"  # web's own credential: it may change stock, nothing else
    for attempt, address in enumerate(addresses, start=1):
        prefix, _ = stack_dns.by_address(base, address)
        try:
            response = _session.request(method, prefix + path, headers=headers, timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]
        except requests.ConnectionError as error:
            if attempt < len(addresses) and _not_connected(error):
                continue
            raise UpstreamError(f"{method} {base}{path} failed: {error}") from None
        except requests.RequestException as error:
            raise UpstreamError(f"{method} {base}{path} failed: {error}") from None
        if response.status_code >= 500:
            raise UpstreamError(f"{method} {base}{path} answered {response.status_code}")
        return response
    raise UpstreamError(f"{method} {base}{path}: no address")  # unreachable: addresses is never empty


def _not_connected(error: requests.ConnectionError) -> bool:
    """True when the TCP connection was never made (refused, or the connect timed out)."""
    reason = getattr(error.args[0] if error.args else None, "reason", None)
    return isinstance(reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError) \
        or isinstance(error, requests.ConnectTimeout)
