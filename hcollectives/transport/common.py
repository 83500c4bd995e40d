"""What both transports share, kept free of trio so map tasks never import it
(importing trio costs a task ~0.1 s of start-up, every task, every iteration)."""

from __future__ import annotations

# Read size for headers and small frames; big bodies bypass it via recv_into.
RECV_CHUNK = 256 * 1024


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)
