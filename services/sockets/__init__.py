"""The seed's socket programs as services of the stack: a TCP time server, its UDP twin, a `selectors` echo
server, and the client that talks to all three. nginx publishes them with its `stream {}` proxy."""
