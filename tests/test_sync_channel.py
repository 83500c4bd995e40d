"""Tests for `hcollectives.transport.sync_channel`: the blocking client map tasks use.

Two kinds of server: the real trio `serve()` running in a background thread
(what a node daemon does), and a small hand-driven blocking server running a
server-side `Connection` whose timing the test controls exactly. Every socket
has a timeout and every thread is joined with one, so nothing can hang.
"""

from __future__ import annotations

import functools
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import trio

from hcollectives.algorithms.block import Block
from hcollectives.errors import (
    AuthenticationError,
    CollectiveTimeout,
    ConnectionLost,
    ProtocolError,
    RemoteProtocolError,
)
from hcollectives.protocol import messages as m
from hcollectives.protocol.connection import CLOSED, NEED_DATA, Connection, State
from hcollectives.transport.sync_channel import SyncChannel
from hcollectives.transport.trio_channel import Channel, listener_address, open_listeners, serve

SECRET = bytes(range(1, 33))
WRONG = bytes(range(33, 65))
LIMIT = 20.0  # no thread or socket wait may outlive this


def stop(i: int = 0) -> m.Stop:
    return m.Stop("sess", i, False, f"reason {i}")


def dial(address: str, *, secret: bytes = SECRET, timeout: float = 5.0) -> SyncChannel:
    return SyncChannel.connect(address, role="task", name="task-0", secret=secret, timeout=timeout)


def free_port_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"  # closed again: nobody listens there


# -- the real trio server in a thread ------------------------------------------------------------


async def echo(channel: Channel) -> None:
    while True:
        try:
            event = await channel.receive(timeout=LIMIT)
        except Exception:  # noqa: BLE001 - the client went away
            return
        await channel.send(event, timeout=LIMIT)


class TrioServer:
    """`serve()` on loopback in a background thread with its own trio.run."""

    def __init__(self, handler: Callable[[Channel], Any] = echo, *, secret: bytes = SECRET,
                 handshake_timeout: float = 5.0) -> None:
        self.handler, self.secret, self.handshake_timeout = handler, secret, handshake_timeout
        self.rejects: list[str] = []
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TrioServer":
        self._thread.start()
        assert self._ready.wait(LIMIT), "server did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        except trio.RunFinishedError:
            pass
        self._thread.join(LIMIT)
        assert not self._thread.is_alive(), "server thread did not stop"
        if self.error is not None and exc[0] is None:
            raise self.error

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self.error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        listeners = await open_listeners("127.0.0.1")
        self.address = listener_address(listeners, "127.0.0.1")
        self._token = trio.lowlevel.current_trio_token()
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(functools.partial(
                    serve, listeners, self.handler, role="node", name="node-1", secret=self.secret,
                    handshake_timeout=self.handshake_timeout, on_reject=self.rejects.append))
                self._ready.set()


# -- a hand-driven blocking server -------------------------------------------------------------


class SyncServer:
    """Accepts one connection and runs *behaviour(sock, conn)* on it in a thread.

    The handshake is driven so the client's verification is deterministic: the
    server reads the client's Hello first, then sends its own Hello and Auth in
    one write, then reads the client's Auth."""

    def __init__(self, behaviour: Callable[[socket.socket, Connection], None], *, secret: bytes = SECRET,
                 handshake: bool = True) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(LIMIT)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.behaviour, self.secret, self.handshake = behaviour, secret, handshake
        self.error: BaseException | None = None
        self.events: list[object] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "SyncServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(LIMIT)
        self.listener.close()
        assert not self._thread.is_alive(), "server thread did not stop"

    def _run(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError as exc:
            self.error = exc
            return
        with sock:
            sock.settimeout(LIMIT)
            conn = Connection(role="node", name="node-1", secret=self.secret, client=False)
            try:
                if self.handshake:
                    server_handshake(sock, conn)
                self.behaviour(sock, conn)
            except BaseException as exc:  # noqa: BLE001 - inspected by the test
                self.error = exc


def send_all(sock: socket.socket, chunks: list) -> None:
    for chunk in chunks:
        sock.sendall(chunk)


def events(sock: socket.socket, conn: Connection) -> list:
    """Block until at least one event (or CLOSED) arrives; return all that did."""
    out: list = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            if out:
                return out
            conn.receive_data(sock.recv(1 << 20))
            continue
        out.append(event)
        if event is CLOSED:
            return out


def server_handshake(sock: socket.socket, conn: Connection) -> None:
    own_hello = conn.data_to_send()
    while conn.peer_role is None:
        conn.receive_data(sock.recv(4096))
        assert conn.next_event() is NEED_DATA
    send_all(sock, own_hello + conn.data_to_send())  # Hello and Auth in one go
    while conn.state is State.HANDSHAKE:
        if conn.next_event() is NEED_DATA and conn.state is State.HANDSHAKE:
            conn.receive_data(sock.recv(4096))


def echo_n(n: int) -> Callable[[socket.socket, Connection], None]:
    def behaviour(sock: socket.socket, conn: Connection) -> None:
        count = 0
        while count < n:
            for event in events(sock, conn):
                if event is CLOSED:
                    return
                send_all(sock, conn.send(event))
                count += 1

    return behaviour


def wait_for(flag: threading.Event) -> Callable[[socket.socket, Connection], None]:
    def behaviour(sock: socket.socket, conn: Connection) -> None:
        flag.wait(LIMIT)

    return behaviour


def close_at_once(sock: socket.socket, conn: Connection) -> None:
    sock.shutdown(socket.SHUT_RDWR)


# -- round trips ----------------------------------------------------------------------------------


def test_round_trip_against_the_trio_server(monkeypatch: pytest.MonkeyPatch) -> None:
    advanced: list[int] = []
    original = Connection.advance

    def spy(self: Connection, n: int) -> None:
        advanced.append(n)
        original(self, n)

    monkeypatch.setattr(Connection, "advance", spy)
    block = Block.from_matrix(tuple(range(256)), np.random.default_rng(1).standard_normal((256, 4096)))
    with TrioServer() as server:
        channel = dial(server.address)
        try:
            channel.send(stop(1), timeout=5)
            got = channel.receive(timeout=5)
            assert isinstance(got, m.Stop) and (got.iteration, got.reason) == (1, "reason 1")
            arr = np.arange(12, dtype="<i8").reshape(3, 4)
            channel.send(m.LoopData("sess", 2, arr, True), timeout=5)
            got = channel.receive(timeout=5)
            assert isinstance(got, m.LoopData) and got.converged is True and np.array_equal(got.data, arr)
            channel.send(m.Contribute("sess", 3, "task-0", "a-0", block), timeout=LIMIT)
            got = channel.receive(timeout=LIMIT)
            assert isinstance(got, m.Contribute) and got.block == block
        finally:
            channel.close()
    assert server.rejects == []
    assert sum(advanced) >= block.values.nbytes  # bodies went through recv_into


def test_round_trip_against_a_blocking_server() -> None:
    with SyncServer(echo_n(3)) as server:
        channel = dial(server.address)
        for i in range(3):
            channel.send(stop(i), timeout=5)
            assert channel.receive(timeout=5).iteration == i
        channel.close()
    assert server.error is None


def test_several_clients_in_a_row_against_the_trio_server() -> None:
    with TrioServer() as server:
        for i in range(5):
            channel = dial(server.address)
            channel.send(stop(i), timeout=5)
            assert channel.receive(timeout=5).iteration == i
            channel.close()


# -- authentication ----------------------------------------------------------------------------------


def test_wrong_secret_is_an_authentication_error() -> None:
    with SyncServer(wait_for(threading.Event()), secret=WRONG) as server:
        start = time.monotonic()
        with pytest.raises(AuthenticationError, match="node 'node-1' failed authentication"):
            dial(server.address)
        assert time.monotonic() - start < 5
    # the client proved nothing either: the server saw a bad Auth or the close
    assert isinstance(server.error, (AuthenticationError, RemoteProtocolError, OSError))


def test_wrong_secret_against_the_trio_server_fails_and_the_server_keeps_serving() -> None:
    with TrioServer() as server:
        for _ in range(2):
            # AuthenticationError, or RemoteProtocolError when the server verified
            # first and closed before its own Auth went out (see test_trio_channel)
            with pytest.raises(ProtocolError):
                dial(server.address, secret=WRONG)
        channel = dial(server.address)
        channel.send(stop(3), timeout=5)
        assert channel.receive(timeout=5).iteration == 3
        channel.close()
        deadline = time.monotonic() + 5
        while len(server.rejects) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(server.rejects) == 2


def test_server_closing_during_the_handshake() -> None:
    with SyncServer(close_at_once, handshake=False) as server:
        with pytest.raises((RemoteProtocolError, ConnectionLost)):
            dial(server.address)


# -- timeouts and lost connections ------------------------------------------------------------------


def test_receive_timeout_is_a_collective_timeout_within_bounded_time() -> None:
    done = threading.Event()
    with SyncServer(wait_for(done)) as server:
        channel = dial(server.address)
        start = time.monotonic()
        with pytest.raises(CollectiveTimeout, match="waiting for a reply") as info:
            channel.receive(timeout=0.3)
        elapsed = time.monotonic() - start
        assert isinstance(info.value, TimeoutError)
        assert 0.25 <= elapsed < 3
        done.set()
        channel.close()


def test_zero_timeout_receive_fails_at_once_without_data() -> None:
    done = threading.Event()
    with SyncServer(wait_for(done)) as server:
        channel = dial(server.address)
        start = time.monotonic()
        with pytest.raises(CollectiveTimeout):
            channel.receive(timeout=0)
        assert time.monotonic() - start < 1
        done.set()
        channel.close()


def test_handshake_timeout_against_a_server_that_never_speaks() -> None:
    # A listening socket nobody accepts on: the kernel completes the TCP
    # connection, but no Hello ever comes back.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(CollectiveTimeout, match="handshake"):
            dial(address, timeout=0.3)
        assert time.monotonic() - start < 3


def test_connection_refused_is_connection_lost() -> None:
    start = time.monotonic()
    with pytest.raises(ConnectionLost, match="cannot connect"):
        dial(free_port_address(), timeout=5)
    assert time.monotonic() - start < 3


def test_bad_address_is_rejected_before_any_io() -> None:
    with pytest.raises(ValueError):
        dial("no-port-here")


def test_peer_closing_is_connection_lost() -> None:
    def close_after_handshake(sock: socket.socket, conn: Connection) -> None:
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # until the client is done

    with SyncServer(close_after_handshake) as server:
        channel = dial(server.address)
        with pytest.raises(ConnectionLost, match="closed the connection"):
            channel.receive(timeout=5)
        channel.close()


def test_peer_closing_mid_frame_is_a_protocol_error() -> None:
    def half_a_frame(sock: socket.socket, conn: Connection) -> None:
        data = b"".join(bytes(c) for c in conn.send(m.LoopData("s", 0, np.zeros(10_000), False)))
        sock.sendall(data[: len(data) // 2])
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)

    with SyncServer(half_a_frame) as server:
        channel = dial(server.address)
        with pytest.raises(RemoteProtocolError, match="middle of a frame"):
            channel.receive(timeout=5)
        channel.close()


def test_send_timeout_against_a_peer_that_does_not_read() -> None:
    done = threading.Event()
    with SyncServer(wait_for(done)) as server:
        channel = dial(server.address)
        start = time.monotonic()
        with pytest.raises(CollectiveTimeout, match="sending LoopData"):
            channel.send(m.LoopData("s", 0, np.zeros(8_000_000), False), timeout=0.3)
        assert time.monotonic() - start < 3
        done.set()
        channel.close()


def test_a_channel_whose_send_timed_out_refuses_further_sends() -> None:
    start_reading = threading.Event()

    def slow_reader(sock: socket.socket, conn: Connection) -> None:
        start_reading.wait(LIMIT)
        sock.settimeout(1)
        try:
            while sock.recv(1 << 20):
                pass
        except OSError:
            pass

    with SyncServer(slow_reader) as server:
        channel = dial(server.address)
        with pytest.raises(CollectiveTimeout):
            channel.send(m.LoopData("s", 0, np.zeros(8_000_000), False), timeout=0.3)
        start_reading.set()
        try:
            with pytest.raises((ConnectionLost, ProtocolError)):
                channel.send(stop(1), timeout=5)
        finally:
            channel.close()
