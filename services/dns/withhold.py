"""Withhold addresses from the stack's DNS answers for a while: python -m services.dns.withhold [ADDRESS ...].

Run inside the DNS server's container (`docker exec`), where $DNS_WITHHELD_FILE names the list the server reads.
The addresses given replace the list; none clears it. deploy/stack.py withholds the replicas it is about to stop.
"""

from __future__ import annotations

import argparse
import os

from services.dns.server import write_withheld


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("addresses", nargs="*", help="IPv4 addresses to leave out of every answer")
    parser.add_argument("--file", default=os.environ.get("DNS_WITHHELD_FILE"),
                        help="the server's list (default: $DNS_WITHHELD_FILE)")
    args = parser.parse_args(argv)
    if not args.file:
        parser.error("no file: set DNS_WITHHELD_FILE or pass --file (the server's --withheld-file)")
    try:
        write_withheld(args.file, args.addresses)
    except ValueError as error:
        parser.error(str(error))


if __name__ == "__main__":
    main()
