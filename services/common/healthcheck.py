"""Container healthchecks in Python (slim images have no curl):

    python -m services.common.healthcheck http://127.0.0.1:8001/web/healthz
    python -m services.common.healthcheck dns://127.0.0.1:5353/dns.stack.internal

Exit 0 when the endpoint answers (HTTP 200; a DNS reply with at least one A record), 1 otherwise.
"""

from __future__ import annotations

import sys
import urllib.request
from urllib.parse import urlsplit


def check_http(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def check_dns(url: str, timeout: float) -> bool:
    from dnslib import QTYPE, DNSRecord  # only the DNS image needs dnslib

    parts = urlsplit(url)
    try:
        packet = DNSRecord.question(parts.path.lstrip("/")).send(parts.hostname, parts.port or 53, timeout=timeout)
    except OSError:
        return False
    return any(rr.rtype == QTYPE.A for rr in DNSRecord.parse(packet).rr)


def main(argv: list[str]) -> int:
    url = argv[0]
    ok = check_dns(url, 2.0) if url.startswith("dns://") else check_http(url, 2.0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
