"""The wire itself, from the client's side: HTTP over a raw socket, packet capture, and `make trace`."""
