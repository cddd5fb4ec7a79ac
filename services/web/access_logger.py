"""gunicorn's logger with the stack's access line in place of its format-string path (services/web/middleware.py
writes the same line under the other servers).

gunicorn builds ~20 atoms (and a dict entry per request and response header) and logs them through the
logging module for every request; that was a tenth of a hello-world request's time here. This logger writes
the same fields as the other services' access lines (services/common/accesslog.py) and leaves gunicorn's
error log as it is. Selected by `logger_class` in gunicorn_conf.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gunicorn.glogging import Logger

from services.common import accesslog, http

_RID = http.REQUEST_ID_HEADER.lower()


class AccessLineLogger(Logger):
    def access(self, resp: Any, req: Any, environ: dict, request_time: timedelta) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        rid = next((value for name, value in resp.headers if name.lower() == _RID), "-")
        accesslog.write(environ.get("REMOTE_ADDR") or "-", environ["REQUEST_METHOD"], environ["RAW_URI"],
                        environ["SERVER_PROTOCOL"], status,
                        "-" if resp.sent is None else resp.sent, rid, request_time.total_seconds())

