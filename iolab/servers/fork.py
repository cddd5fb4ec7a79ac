"""Blocking IO, a process per connection: accept(), fork(), the child serves the client and exits.

The classic Unix server (inetd, Apache's prefork in spirit). Processes share nothing, so one crash hurts one
client, but each costs a process: memory (copy-on-write pages soon copied, since CPython's reference counts
write to every object they touch) and a fork per connection. --max-children bounds them; past it, new
clients get `ERR busy` and a close.
"""

import os
import signal

from iolab.protocol import Refusals, announce, command_line, handle_blocking, listen


def main() -> None:
    args = command_line(__doc__, {"--max-children": {"type": int, "default": 1000}})
    server = listen(args.port, args.host)
    children: set[int] = set()
    refusals = Refusals("busy")

    def reap(*_: object) -> None:  # SIGCHLD: collect exited children so they do not linger as zombies
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)

    signal.signal(signal.SIGCHLD, reap)
    announce(server, "blocking, a process per connection")
    while True:
        conn, _ = server.accept()  # a SIGCHLD runs reap() and accept() carries on (PEP 475)
        if len(children) >= args.max_children:
            refusals.refuse(conn, f"{len(children)} children running, --max-children {args.max_children}")
            continue
        pid = os.fork()
        if pid == 0:  # the child: serve this one client, then exit without running the parent's cleanup
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            handle_blocking(conn)
            os._exit(0)
        children.add(pid)
        conn.close()  # the parent's copy: the child owns the connection now


if __name__ == "__main__":
    main()
