"""The Server-Timing header (W3C Server Timing) on every service response: the service's own time, and the
database's when the request used it, in milliseconds. A browser's developer tools show them per request beside
nginx's entries (nginx adds its own header: the edge's time and the upstream's connect and header times).
"""

from __future__ import annotations

import contextvars

HEADER = "Server-Timing"

# The seconds this request has spent in the database so far: a list of one float, made at the request's start
# in its own context (task, greenlet or thread), added to by services/common/db.py's sessions.
_database_seconds: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("database_seconds",
                                                                                       default=None)


def start_request() -> None:
    """A new request begins in this context: its database time starts at nothing."""
    _database_seconds.set([0.0])


def add_database_time(seconds: float) -> None:
    spent = _database_seconds.get()
    if spent is not None:
        spent[0] += seconds


def server_timing(app_seconds: float) -> str:
    """`app;dur=1.234` (milliseconds, the header's unit), with `, db;dur=…` when the request used the database:
    what a browser's developer tools show for the service's part, beside nginx's own entries."""
    spent = _database_seconds.get()
    value = f'app;dur={app_seconds * 1000:.3f}'
    if spent is not None and spent[0] > 0.0:
        value += f', db;dur={spent[0] * 1000:.3f}'
    return value
