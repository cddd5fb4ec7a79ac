"""dns: the stack's own small authoritative DNS server (dnslib) — step 1 of every request's journey."""
