"""A thin trio transport: one `Channel` per authenticated TCP connection.

All protocol rules live in `protocol.Connection`; this module only moves bytes
and bounds every wait with a deadline. Big array bodies are received with
``recv_into`` straight into the arrays the decoder allocated (no copy through
an intermediate buffer; on these machines that is the difference between
~3.4 GiB/s and ~1.4 GiB/s on loopback).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable

import trio

from ..errors import CollectiveTimeout, ConnectionLost, ProtocolError
from ..protocol.connection import CLOSED, NEED_DATA, Connection, State
from ..protocol.frames import Allocator
from ..protocol.messages import Message
from .common import MAX_IOV, RECV_CHUNK, consume_sent, format_address, parse_address, split_address, unix_buffers
from .rejections import Rejections

log = logging.getLogger(__name__)


class Channel:
    """An hcollectives connection over a trio socket stream."""

    def __init__(self, stream: trio.SocketStream, conn: Connection, *, label: str = "") -> None:
        self._stream = stream
        self._sock = stream.socket
        self._conn = conn
        self._send_lock = trio.Lock()  # frames from concurrent senders must not interleave
        self._sendmsg = hasattr(self._sock, "sendmsg")  # not on Windows
        # The direct path of `_write_now` (POSIX only; elsewhere every send goes through trio).
        self._writev = getattr(os, "writev", None) if self._sendmsg else None
        self._fileno = self._sock.fileno()
        self._broken = False
        self.label = label

    @property
    def peer_role(self) -> str | None:
        return self._conn.peer_role

    @property
    def peer_name(self) -> str | None:
        return self._conn.peer_name

    async def handshake(self, timeout: float) -> None:
        """Authenticate both ends; raises AuthenticationError, CollectiveTimeout, ConnectionLost."""
        with _deadline(timeout, f"handshake with {self.label}"):
            while True:
                await self._flush_own()  # our Hello first, then our Auth once theirs is read
                if self._conn.state is not State.HANDSHAKE:
                    return
                try:
                    event = self._conn.next_event()
                except ProtocolError:
                    # Their Hello and a bad Auth may arrive in one read: send our
                    # queued Auth anyway so the peer learns it failed authentication.
                    with trio.move_on_after(1):
                        await self._flush_own()
                    raise
                if event is CLOSED:
                    raise ConnectionLost(f"{self.label} closed the connection during the handshake")
                if event is NEED_DATA and self._conn.state is State.HANDSHAKE and not self._conn.has_outgoing:
                    await self._read_some()

    async def send(self, event: Message, *, timeout: float = math.inf) -> None:
        """Send one frame. A frame the kernel takes whole at once (every small
        message) is written right here, without passing through trio's
        scheduler: see `_write_now`. This send may then not yield at all."""
        if self._broken:
            raise ConnectionLost(f"connection to {self.label} was abandoned after a failed send")
        views = [memoryview(c) for c in self._conn.send(event) if len(c)]
        started = False
        if views and self._writev is not None and not self._send_lock.locked():
            try:
                sent = self._write_now(views)
            except ConnectionLost:
                await self.aclose()
                raise
            if not views:
                return
            if sent:
                # Part of this frame is on the wire: hold the lock from here (no
                # other task ran since `locked()` said it was free) and finish it.
                self._send_lock.acquire_nowait()
                started = True
        with _deadline(timeout, f"sending {type(event).__name__} to {self.label}"):
            if not started:
                await self._send_lock.acquire()
            try:
                await self._send_rest(views)
            finally:
                self._send_lock.release()

    def _write_now(self, views: list[memoryview]) -> int:
        """Write what the kernel takes without blocking; drop it from *views*.

        The latency path is a chain of small messages, and trio's socket send
        ends with a yield to the scheduler: one more pass of the run loop per
        message, in which any other runnable task (an ack, a closing task
        connection) goes first. A non-blocking ``writev`` on the socket needs
        no wait and no yield; a caller that sends forever without receiving
        would starve the others, which no sender here does."""
        try:
            sent = self._writev(self._fileno, views[:MAX_IOV])
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            self._broken = True  # nothing of the frame was sent, but the socket is gone
            raise ConnectionLost(f"connection to {self.label} lost while sending: {exc}") from exc
        consume_sent(views, sent)
        return sent

    async def _send_rest(self, views: list[memoryview]) -> None:
        """Send *views* (the caller holds the send lock); a failure or a
        cancellation here may leave part of a frame on the wire."""
        completed = False
        try:
            await self._send_chunks(views)
            completed = True
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(f"connection to {self.label} lost while sending: {exc}") from exc
        finally:
            if not completed:
                # Part of a frame may be on the wire: anything sent after it
                # would be read as its continuation. The stream is unusable.
                self._broken = True
                await self.aclose()

    async def _send_chunks(self, views: list[memoryview]) -> None:
        """Send a frame's chunks with as few syscalls as the kernel allows.

        One ``sendmsg`` takes the header and every buffer at once (a small
        message is one syscall and one TCP segment, not three); after a partial
        send, the rest continues from where the kernel stopped. The buffers are
        memoryviews of the arrays themselves: nothing is copied in user space.
        """
        if not self._sendmsg:
            for view in views:
                await self._stream.send_all(view)
            return
        if not views:
            await trio.lowlevel.checkpoint()
            return
        while views:
            consume_sent(views, await self._sock.sendmsg(views[:MAX_IOV]))

    async def receive(self, *, timeout: float = math.inf) -> Message:
        """Next event; ConnectionLost when the peer closed cleanly.

        An event already read (several frames often arrive in one read: a
        ClaimResult and the Seal behind it) is returned at once, without
        setting up a deadline or yielding: it cannot be late."""
        event = self._conn.next_event()
        if event is CLOSED:
            raise ConnectionLost(f"{self.label} closed the connection")
        if event is not NEED_DATA:
            return event
        if timeout == math.inf:
            # The readers of the coordinator connections (both ends) wait with no
            # deadline of their own (silence is watched elsewhere): no cancel
            # scope to enter and leave around every message they read.
            return await self._read_event()
        with _deadline(timeout, f"waiting for a message from {self.label}"):
            return await self._read_event()

    async def _read_event(self) -> Message:
        while True:  # (`next_event` just said NEED_DATA: read first)
            await self._read_some()
            event = self._conn.next_event()
            if event is CLOSED:
                raise ConnectionLost(f"{self.label} closed the connection")
            if event is not NEED_DATA:
                return event

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            with trio.move_on_after(1):
                await self._stream.aclose()

    async def _flush_own(self) -> None:
        async with self._send_lock:
            try:
                for chunk in self._conn.data_to_send():
                    await self._stream.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ConnectionLost(f"connection to {self.label} lost during handshake: {exc}") from exc

    async def _read_some(self) -> None:
        try:
            view = self._conn.writable()
            if view is not None and len(view):
                n = await self._sock.recv_into(view, len(view))
                if n:
                    self._conn.advance(n)
                else:
                    self._conn.receive_data(b"")
            else:
                self._conn.receive_data(await self._sock.recv(RECV_CHUNK))
        except (OSError, trio.ClosedResourceError) as exc:
            raise ConnectionLost(f"connection to {self.label} lost: {exc}") from exc


class _deadline:
    """`trio.fail_after` that raises our CollectiveTimeout with a description."""

    def __init__(self, timeout: float, what: str) -> None:
        self._scope = trio.move_on_after(timeout)
        self._what, self._timeout = what, timeout

    def __enter__(self) -> trio.CancelScope:
        return self._scope.__enter__()

    def __exit__(self, *exc_info: object) -> bool:
        suppressed = self._scope.__exit__(*exc_info)
        if self._scope.cancelled_caught:
            raise CollectiveTimeout(f"timed out after {self._timeout:g}s {self._what}")
        return suppressed


async def connect(address: str, *, role: str, name: str, secret: bytes, timeout: float) -> Channel:
    """Dial *address* and authenticate; every step bounded by *timeout*.

    An address that advertises a Unix socket on this host is dialled there
    first (`common.split_address`); TCP is the fallback for everything else."""
    tcp, unix_path = split_address(address)
    host, port = parse_address(tcp)
    stream = None
    with _deadline(timeout, f"connecting to {address}"):
        if unix_path is not None:
            try:
                stream = await trio.open_unix_socket(unix_path)
            except OSError as exc:
                log.info("cannot use %s (%s); dialling %s", unix_path, exc, tcp)
        if stream is None:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise ConnectionLost(f"cannot connect to {address}: {exc}") from exc
    _tune(stream)
    label = f"{tcp} (unix)" if stream.socket.family == trio.socket.AF_UNIX else tcp
    channel = Channel(stream, Connection(role=role, name=name, secret=secret, client=True), label=label)
    try:
        await channel.handshake(timeout)
    except BaseException:
        await channel.aclose()
        raise
    return channel


def _tune(stream: trio.SocketStream) -> None:
    if stream.socket.family == trio.socket.AF_UNIX:
        # No Nagle, no low-water mark; but a Unix socket's send buffer is
        # net.core.wmem_default (~208 KiB) where loopback TCP grows to 4 MiB:
        # a 1 MiB body would take five wake-ups of each end instead of one.
        unix_buffers(stream.socket)
        return
    # Small control messages must not wait for Nagle; big ones are single sends anyway.
    stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NODELAY, True)
    # trio sets TCP_NOTSENT_LOWAT to 16 KiB so that a stream reports "writable"
    # only once the kernel has almost nothing left to send: good for
    # interactive protocols, bad for bulk transfers. With it, every ~16 KiB
    # of a multi-MiB body costs a wakeup, a syscall and a trip through the
    # scheduler, and the pipe runs nearly dry between sends (measured: 64 MiB
    # on loopback in ~48 ms with it, ~30 ms without). Our frames are bounded
    # and flow-controlled by the peer reading them, so we let the kernel keep
    # a full send buffer.
    try:
        stream.setsockopt(trio.socket.IPPROTO_TCP, trio.socket.TCP_NOTSENT_LOWAT, _NO_LOWAT)
    except (AttributeError, OSError):
        pass  # platforms without TCP_NOTSENT_LOWAT never had trio's low mark either


_NO_LOWAT = 2**31 - 1


Handler = Callable[[Channel], Awaitable[None]]
_REJECTIONS = Rejections(log)  # servers that keep no count of their own


async def serve(listeners: list[trio.SocketListener], handler: Handler, *, role: str, name: str,
                secret: bytes, handshake_timeout: float,
                on_reject: Callable[[str], None] | None = None, allocate: Allocator | None = None) -> None:
    """Accept connections forever; authenticate each, then run *handler* on it.

    A peer that fails the handshake (wrong secret, garbage, silence) is dropped
    and logged; the server keeps serving everyone else.
    """

    async def accept(stream: trio.SocketStream) -> None:
        _tune(stream)
        try:
            peer = stream.socket.getpeername()
            label = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix socket"
        except OSError:
            label = "peer"
        channel = Channel(stream, Connection(role=role, name=name, secret=secret, client=False, allocate=allocate),
                          label=label)
        try:
            try:
                await channel.handshake(handshake_timeout)
            except Exception as exc:  # noqa: BLE001 -- no stranger's bytes may take the server down
                message = f"{name}: rejected connection from {label}: {exc}"
                (on_reject or _REJECTIONS.append)(message)  # rate-limited logging (rejections.py)
                return
            channel.label = f"{channel.peer_role} {channel.peer_name} ({label})"
            try:
                await handler(channel)
            except Exception:  # noqa: BLE001 -- one connection's failure must not stop the server
                log.exception("%s: handler for %s failed", name, channel.label)
        finally:
            await channel.aclose()

    await trio.serve_listeners(accept, listeners)


async def open_listeners(host: str, port: int = 0) -> list[trio.SocketListener]:
    return await trio.open_tcp_listeners(port, host=host)


def listener_address(listeners: list[trio.SocketListener], advertise_host: str, unix_path: str | None = None) -> str:
    """What peers dial: the TCP listener's host:port, plus the Unix socket when there is one."""
    tcp = next(l for l in listeners if l.socket.family != trio.socket.AF_UNIX)
    port = tcp.socket.getsockname()[1]
    return format_address(f"{advertise_host}:{port}", unix_path)


# A sun_path holds 108 bytes on Linux; longer temp dirs get no Unix socket.
_MAX_UNIX_PATH = 100


async def open_unix_listener(path: str) -> trio.SocketListener | None:
    """Listen on a Unix socket at *path* (its directory must be private to us),
    or None where that is impossible: the caller then serves TCP only."""
    if len(path.encode()) > _MAX_UNIX_PATH or not hasattr(trio.socket, "AF_UNIX"):
        return None
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        log.info("no Unix socket at %s: %s", path, exc)
        return None
    return trio.SocketListener(sock)
