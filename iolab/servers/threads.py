"""Blocking IO, a thread per connection: the blocking server's code, run on a new thread for each client.

Each thread blocks in its own recv(); the kernel schedules whichever has data. Costs: a thread (its stack,
its kernel task) per client, and the GIL lets one run Python at a time.
"""

import threading

from iolab.protocol import announce, command_line, handle_blocking, listen


def main() -> None:
    args = command_line(__doc__)
    server = listen(args.port, args.host)
    announce(server, "blocking, a thread per connection")
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle_blocking, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
