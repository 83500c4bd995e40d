"""What both transports share, kept free of trio so map tasks never import it
(importing trio costs a task ~0.1 s of start-up, every task, every iteration)."""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from functools import lru_cache

# Read size for headers and small frames; big bodies bypass it via recv_into.
RECV_CHUNK = 256 * 1024


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


# -- the same-host fast path ------------------------------------------------------------
#
# A daemon also listens on a Unix socket and advertises it next to its TCP
# address: "HOST:PORT unix=PATH host=HOSTID". A peer or task on the same
# machine (same HOSTID, and the path exists in its filesystem) dials the Unix
# socket: no TCP/IP stack, half the latency, more bandwidth. Everything above
# the socket is unchanged: the same HMAC handshake, the same frame limits.
# Anything else dials TCP, as does anyone that cannot use the path.


@lru_cache(maxsize=1)
def host_id() -> str:
    """Identifies this machine (this boot of its kernel): equal only on one host."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            raw = f.read().strip()
    except OSError:
        raw = b""
    return hashlib.blake2b(raw + b"|" + socket.gethostname().encode(), digest_size=8).hexdigest()


def format_address(tcp: str, unix_path: str | None) -> str:
    return f"{tcp} unix={unix_path} host={host_id()}" if unix_path else tcp


def split_address(address: str) -> tuple[str, str | None]:
    """(TCP host:port, Unix socket path to try first or None) of an advertised address."""
    tcp, *extras = address.split(" ")
    options = dict(e.split("=", 1) for e in extras if "=" in e)
    path = options.get("unix")
    if path and options.get("host") == host_id() and _is_socket(path) and not _disabled():
        return tcp, path
    return tcp, None


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _disabled() -> bool:
    # For measurements (TCP against TCP) and for tests of the TCP path.
    return os.environ.get("HCOLLECTIVES_SAME_HOST") == "tcp"


# What loopback TCP autotunes to on Linux (tcp_wmem's maximum); the kernel caps
# it at net.core.wmem_max without complaint.
UNIX_BUFFER_BYTES = 4 << 20


def unix_buffers(sock) -> None:
    """Give a Unix stream socket TCP-sized buffers (works on trio and plain sockets)."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, UNIX_BUFFER_BYTES)
        except OSError:
            pass


# Frames have at most 2 + MAX_BUFFERS chunks, far below any platform's IOV_MAX.
MAX_IOV = 64


def consume_sent(views: list[memoryview], sent: int) -> None:
    """Drop the first *sent* bytes from *views* (in place), after a partial sendmsg/writev."""
    while sent and views:
        n = len(views[0])
        if sent >= n:
            sent -= n
            del views[0]
        else:
            views[0] = views[0][sent:]
            sent = 0
