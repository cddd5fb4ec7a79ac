"""Blocking IO, a fixed pool of threads: accept() hands each client to one of --threads workers.

Bounded memory and no thread start per client, but a worker serves its client until the client hangs up:
with more long-lived (keep-alive) clients than threads, the rest wait in the pool's queue, unanswered.
That is gunicorn's gthread worker without its event loop in front.
"""

from concurrent.futures import ThreadPoolExecutor

from iolab.protocol import announce, command_line, handle_blocking, listen


def main() -> None:
    args = command_line(__doc__, {"--threads": {"type": int, "default": 64}})
    server = listen(args.port, args.host)
    pool = ThreadPoolExecutor(max_workers=args.threads)
    announce(server, f"blocking, a pool of {args.threads} threads")
    while True:
        conn, _ = server.accept()
        pool.submit(handle_blocking, conn)


if __name__ == "__main__":
    main()
