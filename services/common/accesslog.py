"""Access log lines, kept in memory and written out twice a second.

One line per request is the hottest logging there is. Through the logging module (a LogRecord, handler locks,
a formatter, a flush per record) it cost aiohttp about 40% of a hello-world request here; and with stdout
unbuffered (PYTHONUNBUFFERED=1, which the stack sets so errors show at once) even a plain print is one
write(2) per request. So a line is one f-string, its timestamp formatted once per second, appended to a list
(no lock: list.append is atomic); a background thread joins the list into one write(2) every FLUSH_EVERY_S
(and at exit), and a request that finds MAX_PENDING_LINES waiting writes them itself: a line reaches
var/log/<service>.log (supervisor) or the container log (Compose) within half a second. Error output keeps its
own unbuffered path, so an error can appear just before the access line of the request that caused it.
"""

from __future__ import annotations

import atexit
import io
import os
import threading
import time

FLUSH_EVERY_S = 0.5
MAX_PENDING_LINES = 1024  # about 100 KiB

_out = io.FileIO(1, "w", closefd=False)
_pending: list[str] = []  # appended to by requests; only flush() removes, under _flush_lock, from the front
_flush_lock = threading.Lock()
_flusher_started = False
_stamp_until = 0.0  # time.time() from which _stamp is stale: the start of the next second
_stamp = ""


def _restamp(now: float) -> None:
    global _stamp_until, _stamp
    second = int(now)
    _stamp_until, _stamp = second + 1.0, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second))


def flush() -> None:
    with _flush_lock:
        count = len(_pending)  # lines appended meanwhile stay for the next flush
        if not count:
            return
        data = "".join(_pending[:count]).encode()
        del _pending[:count]
        try:
            while data:
                data = data[_out.write(data):]
        except (OSError, ValueError):  # stdout closed or gone: nothing left to tell
            pass


def _flush_forever() -> None:
    while True:
        time.sleep(FLUSH_EVERY_S)  # under gevent's patches a greenlet sleep: the hub keeps serving
        flush()


def _start_flusher() -> None:
    global _flusher_started
    _flusher_started = True
    threading.Thread(target=_flush_forever, name="accesslog-flush", daemon=True).start()


def _forget_flusher_in_child() -> None:
    # A forked worker (gunicorn, tornado.process) inherits the flag but not the thread, and a copy of the lines
    # the parent has just written (flush runs before the fork): the child starts with none.
    global _flusher_started, _flush_lock
    _flusher_started = False
    _flush_lock = threading.Lock()
    _pending.clear()


os.register_at_fork(before=flush, after_in_child=_forget_flusher_in_child)
atexit.register(flush)


def write(remote: str, method: str, target: str, version: str, status: int, size: int | str, request_id: str,
          seconds: float) -> None:
    """`time remote "method target version" status size rid=... rt=...`: the fields every service's access log
    carries. The request line comes in its three parts, so the line is built by one f-string."""
    if not _flusher_started:
        _start_flusher()
    now = time.time()
    if now >= _stamp_until:  # the local time to the second, `2026-11-27T13:45:00`, formatted once a second
        _restamp(now)
    _pending.append(f'{_stamp} {remote} "{method} {target} {version}" {status} {size} rid={request_id} '
                    f'rt={seconds:.6f}\n')
    if len(_pending) >= MAX_PENDING_LINES:
        flush()
