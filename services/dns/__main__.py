"""Run the stack's DNS server on UDP and TCP: python -m services.dns --zone-file FILE --bind HOST:PORT."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time

from dnslib.server import DNSLogger, DNSServer

from services.dns.server import SizeLimitedHandler, Withheld, Zone, ZoneResolver
from stack import topology


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--zone-file", default=os.environ.get("DNS_ZONE_FILE", "zone.json"))
    parser.add_argument("--bind", default=os.environ.get("DNS_BIND") or topology.DNS.default_bind())
    parser.add_argument("--withheld-file", default=os.environ.get("DNS_WITHHELD_FILE"),
                        help="a JSON list of addresses to leave out of answers (services.dns.withhold writes it)")
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(process)d %(message)s")
    zone = Zone.load(args.zone_file)
    resolver = ZoneResolver(zone, Withheld(args.withheld_file))
    # One line per query and per reply, like an access log.
    logger = DNSLogger("request,reply,truncated,error", prefix=True)
    stopping: list[int] = []  # a plain flag: Event.set() in a handler can deadlock on the lock its wait() holds

    def stop(signum: int, _frame: object) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)

    def reload(*_: object) -> None:
        """SIGHUP: read the zone file again (`make up SCALE=...` changed the instances). One assignment, so a
        query in flight sees the old zone or the new one, never a mix."""
        try:
            resolver.zone = Zone.load(args.zone_file)
        except (OSError, ValueError, KeyError) as error:
            logging.getLogger("stack.dns").error("zone reload failed, keeping the old zone: %s", error)
            return
        logging.getLogger("stack.dns").info("zone reloaded from %s", args.zone_file)

    signal.signal(signal.SIGHUP, reload)  # before serving: once it answers, a SIGHUP reloads
    servers = [DNSServer(resolver, address=host, port=int(port), tcp=tcp, logger=logger, handler=SizeLimitedHandler)
               for tcp in (False, True)]
    for server in servers:
        server.start_thread()
    logging.getLogger("stack.dns").info("authoritative for %s on %s (udp+tcp)", zone.origin, args.bind)
    # Python runs signal handlers in the main thread only, and a signal the kernel hands to one of the server's
    # threads does not wake a main thread blocked in an endless wait: it sleeps in short slices instead.
    while not stopping:
        time.sleep(0.2)
    for server in servers:
        server.stop()


if __name__ == "__main__":
    main()
