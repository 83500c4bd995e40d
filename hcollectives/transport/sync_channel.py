"""Blocking-socket twin of `trio_channel.Channel`, for map tasks.

A task talks to its node daemon in strict request/reply turns from inside
synchronous user code (an mrjob mapper, a streaming wrapper), so a plain
blocking socket with a timeout on every call is the simplest correct client.
The protocol rules are the same `Connection` object the daemon uses.
"""

from __future__ import annotations

import socket
import time

from ..errors import CollectiveTimeout, ConnectionLost, ProtocolError
from ..protocol.connection import CLOSED, NEED_DATA, Connection, State
from ..protocol.messages import Message
from .common import MAX_IOV, RECV_CHUNK, consume_sent, parse_address, split_address, unix_buffers


class SyncChannel:
    def __init__(self, sock: socket.socket, conn: Connection, label: str) -> None:
        self._sock = sock
        self._conn = conn
        self.label = label
        self._broken = False

    @classmethod
    def connect(cls, address: str, *, role: str, name: str, secret: bytes, timeout: float) -> "SyncChannel":
        tcp, unix_path = split_address(address)
        host, port = parse_address(tcp)
        sock = _dial_unix(unix_path, timeout) if unix_path is not None else None
        if sock is None:
            try:
                sock = socket.create_connection((host, port), timeout=timeout)
            except socket.timeout:
                raise CollectiveTimeout(f"timed out after {timeout:g}s connecting to {address}") from None
            except OSError as exc:
                raise ConnectionLost(f"cannot connect to {address}: {exc}") from exc
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        channel = cls(sock, Connection(role=role, name=name, secret=secret, client=True), address)
        try:
            channel._handshake(timeout)
        except BaseException:
            channel.close()
            raise
        return channel

    def _handshake(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._send_chunks(self._conn.data_to_send(), deadline, "handshake")
            if self._conn.state is not State.HANDSHAKE:
                return
            try:
                event = self._conn.next_event()
            except ProtocolError:
                # Send our queued Auth anyway, so the peer learns it failed authentication.
                try:
                    self._send_chunks(self._conn.data_to_send(), time.monotonic() + 1.0, "handshake")
                except (CollectiveTimeout, ConnectionLost):
                    pass
                raise
            if event is CLOSED:
                raise ConnectionLost(f"{self.label} closed the connection during the handshake")
            if event is NEED_DATA and self._conn.state is State.HANDSHAKE and not self._conn.has_outgoing:
                self._read_some(deadline, "handshake")

    def send(self, event: Message, *, timeout: float) -> None:
        if self._broken:
            raise ConnectionLost(f"connection to {self.label} was abandoned after a failed send")
        completed = False
        try:
            self._send_chunks(self._conn.send(event), time.monotonic() + timeout, f"sending {type(event).__name__}")
            completed = True
        finally:
            if not completed:  # half a frame may be on the wire: the stream is unusable
                self._broken = True
                self.close()

    def receive(self, *, timeout: float) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            event = self._conn.next_event()
            if event is CLOSED:
                raise ConnectionLost(f"{self.label} closed the connection")
            if event is not NEED_DATA:
                return event
            self._read_some(deadline, "waiting for a reply")

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def _remaining(self, deadline: float, what: str) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CollectiveTimeout(f"timed out {what} ({self.label})")
        return left

    def _send_chunks(self, chunks: list, deadline: float, what: str) -> None:
        # One sendmsg for the header and every buffer: a small message is one
        # syscall and one wake-up of the daemon, not one per chunk.
        views = [memoryview(c).cast("B") for c in chunks if len(c)]
        try:
            while views:
                self._sock.settimeout(self._remaining(deadline, what))
                consume_sent(views, self._sock.sendmsg(views[:MAX_IOV]))
        except socket.timeout:
            raise CollectiveTimeout(f"timed out {what} ({self.label})") from None
        except OSError as exc:
            raise ConnectionLost(f"connection to {self.label} lost: {exc}") from exc

    def _read_some(self, deadline: float, what: str) -> None:
        try:
            self._sock.settimeout(self._remaining(deadline, what))
            view = self._conn.writable()
            if view is not None and len(view):
                n = self._sock.recv_into(view, len(view))
                if n:
                    self._conn.advance(n)
                else:
                    self._conn.receive_data(b"")
            else:
                self._conn.receive_data(self._sock.recv(RECV_CHUNK))
        except socket.timeout:
            raise CollectiveTimeout(f"timed out {what} ({self.label})") from None
        except OSError as exc:
            raise ConnectionLost(f"connection to {self.label} lost: {exc}") from exc


# Frames have at most 2 + MAX_BUFFERS chunks, far below any platform's IOV_MAX.


def _dial_unix(path: str, timeout: float) -> socket.socket | None:
    """The same-host fast path (see `common.split_address`); None: use TCP."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        unix_buffers(sock)
        return sock
    except OSError:
        sock.close()
        return None
