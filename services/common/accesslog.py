"""Access log lines, buffered and flushed twice a second.

One line per request is the hottest logging there is. Through the logging module (a LogRecord, handler locks,
a formatter, a flush per record) it cost aiohttp about 40% of a hello-world request here; and with stdout
unbuffered (PYTHONUNBUFFERED=1, which the stack sets so errors show at once) even a plain print is one
write(2) per request. So the line is formatted with an f-string, the timestamp once per second, and the bytes
go into a 64 KiB buffer on file descriptor 1 that a background thread flushes every FLUSH_EVERY_S (and at
exit): a line reaches var/log/<service>.log (supervisor) or the container log (Compose) within half a second.
Error output keeps its own unbuffered path, so an error can appear just before the access line of the
request that caused it.
"""

from __future__ import annotations

import atexit
import io
import os
import threading
import time

FLUSH_EVERY_S = 0.5

_out = io.BufferedWriter(io.FileIO(1, "w", closefd=False), buffer_size=64 * 1024)  # its own lock: thread-safe
_flusher_started = False
_stamp_second = -1
_stamp = ""


def timestamp() -> str:
    """The local time to the second, `2026-11-27T13:45:00`, reformatted only when the second changes."""
    global _stamp_second, _stamp
    now = int(time.time())
    if now != _stamp_second:
        _stamp_second, _stamp = now, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
    return _stamp


def flush() -> None:
    try:
        _out.flush()
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


_inherited: list[io.BufferedWriter] = []


def _forget_flusher_in_child() -> None:
    # A forked worker (gunicorn, tornado.process) inherits the flag but not the thread, and a copy of the
    # buffer whose bytes the parent writes: the child starts a fresh buffer and keeps the copy unflushed
    # (freed, it would flush them a second time).
    global _flusher_started, _out
    _flusher_started = False
    _inherited.append(_out)
    _out = io.BufferedWriter(io.FileIO(1, "w", closefd=False), buffer_size=64 * 1024)


os.register_at_fork(before=flush, after_in_child=_forget_flusher_in_child)
atexit.register(flush)


def write(remote: str, request_line: str, status: int, size: int | str, request_id: str, seconds: float) -> None:
    """`time remote "request line" status size rid=... rt=...`: the fields every service's access log carries."""
    if not _flusher_started:
        _start_flusher()
    _out.write(f'{timestamp()} {remote} "{request_line}" {status} {size} rid={request_id} '
               f'rt={seconds:.6f}\n'.encode())
