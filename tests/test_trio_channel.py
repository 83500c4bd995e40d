"""Tests for `hcollectives.transport.trio_channel`: real loopback TCP and deadlines.

pytest-trio is not installed, so every test is a plain function calling
`trio.run`, and every body is wrapped in `trio.fail_after` so nothing can hang.
Deadline logic runs under `trio.testing.MockClock(autojump_threshold=0)` over a
`socketpair` (virtual time, no sleeping, deterministic); serve()/connect() run
over loopback TCP with short real timeouts only where a listener is needed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from hcollectives.algorithms.block import Block
from hcollectives.errors import (
    AuthenticationError,
    CollectiveTimeout,
    ConnectionLost,
    ProtocolError,
    RemoteProtocolError,
)
from hcollectives.protocol import messages as m
from hcollectives.protocol.connection import Connection
from hcollectives.protocol.frames import LENGTH, MAGIC, PRELUDE, VERSION
from hcollectives.transport import trio_channel
from hcollectives.transport.trio_channel import (
    Channel,
    connect,
    listener_address,
    open_listeners,
    parse_address,
    serve,
)

SECRET = bytes(range(1, 33))
WRONG = bytes(range(33, 65))
LIMIT = 30  # seconds; every trio.run body is bounded by this


def run(async_fn: Callable[..., Awaitable[Any]], *args: Any, clock: trio.abc.Clock | None = None,
        limit: float = LIMIT) -> Any:
    async def main() -> Any:
        with trio.fail_after(limit):
            return await async_fn(*args)

    return trio.run(main, clock=clock)


def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


def stop(i: int = 0) -> m.Stop:
    return m.Stop("sess", i, False, f"reason {i}")


def big_block(mib: int) -> Block:
    cols = 4096
    rows = mib * 1024 * 1024 // 8 // cols
    matrix = np.arange(rows * cols, dtype="<f8").reshape(rows, cols)
    return Block.from_matrix(tuple(range(rows)), matrix)


def frame_bytes(msg: m.Message) -> bytes:
    return b"".join(bytes(c) for c in msg.to_frame())


async def echo(channel: Channel) -> None:
    while True:
        try:
            event = await channel.receive(timeout=LIMIT)
        except ConnectionLost:
            return
        await channel.send(event, timeout=LIMIT)


@asynccontextmanager
async def running_server(handler: Callable[[Channel], Awaitable[None]] = echo, *, secret: bytes = SECRET,
                         handshake_timeout: float = 10.0, rejects: list[str] | None = None) -> AsyncIterator[str]:
    listeners = await open_listeners("127.0.0.1")
    address = listener_address(listeners, "127.0.0.1")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(
            serve, listeners, handler, role="node", name="node-1", secret=secret,
            handshake_timeout=handshake_timeout, on_reject=None if rejects is None else rejects.append))
        yield address
        nursery.cancel_scope.cancel()


async def dial(address: str, *, secret: bytes = SECRET, timeout: float = 10.0) -> Channel:
    return await connect(address, role="task", name="task-0", secret=secret, timeout=timeout)


async def raw_stream(address: str) -> trio.SocketStream:
    host, port = parse_address(address)
    return await trio.open_tcp_stream(host, port)


async def read_until_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    while True:
        try:
            chunk = await stream.receive_some()
        except trio.BrokenResourceError:  # reset instead of FIN
            return data
        if not chunk:
            return data
        data += chunk


async def assert_serves_a_good_client(address: str) -> None:
    channel = await dial(address)
    try:
        await channel.send(stop(42), timeout=10)
        got = await channel.receive(timeout=10)
        assert isinstance(got, m.Stop) and got.iteration == 42
    finally:
        await channel.aclose()


async def channel_pair(secret_a: bytes = SECRET, secret_b: bytes = SECRET, *,
                       handshake: bool = True) -> tuple[Channel, Channel]:
    """Two channels over a socketpair (works with MockClock: no network waits)."""
    sa, sb = trio.socket.socketpair()
    a = Channel(trio.SocketStream(sa), Connection(role="task", name="a", secret=secret_a, client=True), label="a")
    b = Channel(trio.SocketStream(sb), Connection(role="node", name="b", secret=secret_b, client=False), label="b")
    if handshake:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.handshake, 10)
            nursery.start_soon(b.handshake, 10)
    return a, b


# -- parse_address ---------------------------------------------------------------------------


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1:5000", ("127.0.0.1", 5000)),
    ("localhost:0", ("localhost", 0)),
    ("[::1]:6000", ("::1", 6000)),
    ("node-7.cluster.example:65535", ("node-7.cluster.example", 65535)),
])
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["", "host", "host:", ":80", "host:http", "host:-1", "host:80x", "host: 80",
                                     "host:8.0", "127.0.0.1"])
def test_parse_address_errors(address: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_address(address)


@pytest.mark.parametrize("address", ["host:65536", "host:70000", "host:99999999999"])
def test_parse_address_rejects_ports_out_of_range(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)


# -- serve() + connect() over loopback TCP ------------------------------------------------------


def test_handshake_and_echo_small_and_large_payloads(monkeypatch: pytest.MonkeyPatch) -> None:
    advanced = []
    original = Connection.advance

    def spy(self: Connection, n: int) -> None:
        advanced.append(n)
        original(self, n)

    monkeypatch.setattr(Connection, "advance", spy)
    seen: list[tuple[str | None, str | None, str]] = []

    async def handler(channel: Channel) -> None:
        seen.append((channel.peer_role, channel.peer_name, channel.label))
        await echo(channel)

    block = big_block(32)
    assert block.values.nbytes == 32 * 1024 * 1024

    async def main() -> None:
        async with running_server(handler) as address:
            channel = await dial(address)
            assert (channel.peer_role, channel.peer_name) == ("node", "node-1")
            await channel.send(stop(1), timeout=10)
            got = await channel.receive(timeout=10)
            assert isinstance(got, m.Stop) and got.reason == "reason 1"
            for arr in (np.arange(10, dtype="<i4"), np.ones((3, 5), "|u1"), np.zeros(0, "<f8")):
                await channel.send(m.LoopData("sess", 2, arr, True), timeout=10)
                got = await channel.receive(timeout=10)
                assert got.data.dtype == arr.dtype and np.array_equal(got.data, arr)
            await channel.send(m.Contribute("sess", 3, "task-0", "attempt-0", block), timeout=LIMIT)
            got = await channel.receive(timeout=LIMIT)
            assert isinstance(got, m.Contribute) and got.block == block
            assert got.block.uniform_width() == 4096
            await channel.aclose()

    run(main)
    assert len(seen) == 1
    role, name, label = seen[0]
    assert (role, name) == ("task", "task-0") and "127.0.0.1" in label
    # the big bodies went straight into their arrays (recv_into), both ways
    assert sum(advanced) >= block.values.nbytes


def test_concurrent_senders_do_not_interleave_frames() -> None:
    blocks = [Block.from_matrix(tuple(range(64)), np.full((64, 8192), float(i))) for i in range(4)]
    got: list[m.Message] = []

    async def main() -> None:
        async with running_server() as address:
            channel = await dial(address)

            async def receive_all() -> None:
                for _ in blocks:
                    got.append(await channel.receive(timeout=LIMIT))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_all)  # echoes come back while we are still sending
                for i, b in enumerate(blocks):
                    nursery.start_soon(functools.partial(channel.send, m.Result("sess", i, b), timeout=LIMIT))
            await channel.aclose()

    run(main)
    assert sorted(g.iteration for g in got) == [0, 1, 2, 3]
    for g in got:
        assert g.block == blocks[g.iteration]


def test_wrong_secret_is_rejected_and_the_server_keeps_serving() -> None:
    rejects: list[str] = []

    async def main() -> None:
        async with running_server(rejects=rejects) as address:
            for _ in range(3):
                # Which side verifies first depends on scheduling (see the xfail
                # below); either way the bad client must fail with a protocol error.
                with pytest.raises(ProtocolError):
                    await dial(address, secret=WRONG)
            await assert_serves_a_good_client(address)
            with trio.fail_after(5):
                while len(rejects) < 3:
                    await trio.sleep(0.01)

    run(main)
    assert len(rejects) == 3
    assert all("node-1: rejected connection from 127.0.0.1:" in r for r in rejects)


def test_wrong_secret_client_sees_an_authentication_error_when_it_verifies_first() -> None:
    # The server's Hello and Auth reach the client before the client's Auth goes out.
    async def main() -> None:
        async with running_server() as address:
            stream = await raw_stream(address)
            conn = Connection(role="task", name="t", secret=WRONG, client=True)
            await stream.send_all(b"".join(bytes(c) for c in conn.data_to_send()))
            data = b""
            with pytest.raises(AuthenticationError, match="node 'node-1' failed authentication"):
                while True:
                    chunk = await stream.receive_some()
                    conn.receive_data(chunk)
                    data += chunk
                    conn.next_event()
            await stream.aclose()

    run(main)


def test_wrong_secret_client_always_gets_an_authentication_error() -> None:
    async def main() -> None:
        async with running_server() as address:
            stream = await raw_stream(address)
            conn = Connection(role="task", name="t", secret=WRONG, client=True)
            # Wait for the server's Hello, then send our Hello and Auth in one write.
            while conn.peer_role is None:
                conn.receive_data(await stream.receive_some())
                conn.next_event()
            await stream.send_all(b"".join(bytes(c) for c in conn.data_to_send()))
            conn.receive_data(await read_until_eof(stream))
            conn.receive_data(b"")
            try:
                conn.next_event()
            except ProtocolError as exc:
                assert isinstance(exc, AuthenticationError), f"{type(exc).__name__}: {exc}"
            else:
                pytest.fail("handshake with a wrong secret did not fail")

    run(main)


def test_on_reject_names_an_authentication_failure() -> None:
    rejects: list[str] = []

    async def main() -> None:
        async with running_server(rejects=rejects) as address:
            stream = await raw_stream(address)
            conn = Connection(role="task", name="bad-task", secret=WRONG, client=True)
            await stream.send_all(b"".join(bytes(c) for c in conn.data_to_send()))
            while not conn.has_outgoing:  # until the server's Hello has been read
                conn.receive_data(await stream.receive_some())
                try:
                    conn.next_event()
                except AuthenticationError:
                    break
            await stream.send_all(b"".join(bytes(c) for c in conn.data_to_send()))
            await read_until_eof(stream)
            await stream.aclose()
            await assert_serves_a_good_client(address)

    run(main)
    assert len(rejects) == 1
    assert "bad-task" in rejects[0] and "failed authentication" in rejects[0]


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
    bytes(range(256)) * 4,
    PRELUDE.pack(MAGIC, VERSION, 0, 20, 1) + LENGTH.pack(2**40),  # claims a 1 TiB frame
    frame_bytes(stop()),  # a valid frame, but not a Hello
], ids=["http", "binary", "huge-claim", "not-hello"])
def test_garbage_client_is_dropped_and_the_server_keeps_serving(garbage: bytes) -> None:
    rejects: list[str] = []

    async def main() -> None:
        async with running_server(rejects=rejects) as address:
            stream = await raw_stream(address)
            await stream.send_all(garbage)
            received = await read_until_eof(stream)  # the server closes on us
            assert received.startswith(MAGIC)  # its Hello went out first
            await stream.aclose()
            await assert_serves_a_good_client(address)

    run(main)
    assert len(rejects) == 1 and "rejected connection" in rejects[0]


def test_malformed_descriptor_from_a_stranger_does_not_crash_the_server() -> None:
    import msgpack

    header = msgpack.packb({"t": "hello", "f": {}, "b": [[["<f8"], [1]]]})
    garbage = PRELUDE.pack(MAGIC, VERSION, 0, len(header), 1) + LENGTH.pack(8) + header + bytes(8)

    async def main() -> None:
        async with running_server() as address:
            stream = await raw_stream(address)
            await stream.send_all(garbage)
            await read_until_eof(stream)
            await stream.aclose()
            await assert_serves_a_good_client(address)

    run(main)


def test_silent_client_is_dropped_after_the_handshake_timeout() -> None:
    rejects: list[str] = []
    timeout = 0.3

    async def main() -> float:
        async with running_server(rejects=rejects, handshake_timeout=timeout) as address:
            stream = await raw_stream(address)
            start = trio.current_time()
            with trio.fail_after(10):
                await read_until_eof(stream)  # we never say a word
            elapsed = trio.current_time() - start
            await stream.aclose()
            await assert_serves_a_good_client(address)
            return elapsed

    elapsed = run(main)
    assert timeout * 0.8 <= elapsed < 5
    assert len(rejects) == 1 and "timed out" in rejects[0]


def test_a_slow_handshake_does_not_block_other_clients() -> None:
    async def main() -> None:
        async with running_server(handshake_timeout=5) as address:
            silent = await raw_stream(address)
            with trio.fail_after(2):  # far less than the silent client's handshake timeout
                await assert_serves_a_good_client(address)
            await silent.aclose()

    run(main)


def test_connect_to_a_closed_port_is_connection_lost() -> None:
    async def main() -> None:
        listeners = await open_listeners("127.0.0.1")
        address = listener_address(listeners, "127.0.0.1")
        await listeners[0].aclose()  # nobody listens there any more
        with pytest.raises(ConnectionLost, match="cannot connect"):
            await dial(address, timeout=5)

    run(main)


def test_connect_to_a_silent_server_times_out() -> None:
    async def main() -> float:
        listeners = await open_listeners("127.0.0.1")
        address = listener_address(listeners, "127.0.0.1")
        accepted: list[trio.SocketStream] = []

        async def silent(stream: trio.SocketStream) -> None:
            accepted.append(stream)
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, silent, listeners)
            start = trio.current_time()
            with pytest.raises(CollectiveTimeout, match="handshake"):
                await dial(address, timeout=0.3)
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        assert len(accepted) == 1
        return elapsed

    assert 0.2 <= run(main) < 5


def test_connect_rejects_a_bad_address_before_any_io() -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            await dial("no-port-here")

    run(main)


def test_receive_timeout_over_tcp_is_a_collective_timeout() -> None:
    async def quiet(channel: Channel) -> None:
        await trio.sleep(LIMIT)

    async def main() -> float:
        async with running_server(quiet) as address:
            channel = await dial(address)
            start = time.monotonic()
            with pytest.raises(CollectiveTimeout, match="waiting for a message") as info:
                await channel.receive(timeout=0.2)
            assert isinstance(info.value, TimeoutError)
            await channel.aclose()
            return time.monotonic() - start

    assert 0.15 <= run(main) < 5


async def close_at_once(channel: Channel) -> None:
    await channel.aclose()


def test_peer_closing_gives_connection_lost_on_receive() -> None:
    async def main() -> None:
        async with running_server(close_at_once) as address:
            channel = await dial(address)
            with pytest.raises(ConnectionLost, match="closed the connection"):
                await channel.receive(timeout=10)
            with pytest.raises(ConnectionLost):  # and again: it stays lost
                await channel.receive(timeout=10)
            await channel.aclose()

    run(main)


def test_peer_closing_gives_connection_lost_on_send() -> None:
    async def main() -> None:
        async with running_server(close_at_once) as address:
            channel = await dial(address)
            with pytest.raises(ConnectionLost, match="lost while sending"):
                for _ in range(200):  # the first sends may still fit in the socket buffers
                    await channel.send(m.LoopData("s", 0, np.zeros(100_000), False), timeout=10)
                    await trio.sleep(0.01)
            await channel.aclose()

    run(main)


def test_send_after_the_peer_closed_is_connection_lost() -> None:
    async def main() -> None:
        async with running_server(close_at_once) as address:
            channel = await dial(address)
            with pytest.raises(ConnectionLost):
                await channel.receive(timeout=10)
            with pytest.raises(ConnectionLost):
                await channel.send(stop(), timeout=10)
            await channel.aclose()

    run(main)


def test_peer_closing_mid_frame_is_a_protocol_error() -> None:
    async def main() -> None:
        a, b = await channel_pair()
        data = frame_bytes(m.LoopData("s", 0, np.zeros(10_000), False))
        await a._stream.send_all(data[: len(data) // 2])  # noqa: SLF001 - half a frame on the wire
        await a.aclose()
        with pytest.raises(RemoteProtocolError, match="middle of a frame"):
            await b.receive(timeout=10)

    run(main)


def test_events_queued_behind_the_auth_are_delivered() -> None:
    async def speak_first(channel: Channel) -> None:
        await channel.send(stop(1), timeout=10)
        await channel.send(stop(2), timeout=10)
        await channel.aclose()

    async def main() -> None:
        async with running_server(speak_first) as address:
            channel = await dial(address)
            assert (await channel.receive(timeout=10)).iteration == 1
            assert (await channel.receive(timeout=10)).iteration == 2
            with pytest.raises(ConnectionLost):
                await channel.receive(timeout=10)

    run(main)


# -- deadlines under a mock clock (virtual time, deterministic) ------------------------------------


def test_socketpair_channels_authenticate_and_talk_under_mock_clock() -> None:
    async def main() -> None:
        a, b = await channel_pair()
        assert (a.peer_role, b.peer_role) == ("node", "task")
        await a.send(stop(5))
        assert (await b.receive(timeout=1)).iteration == 5

    run(main, clock=mock_clock())


def test_receive_timeout_fires_at_the_deadline() -> None:
    async def main() -> None:
        a, b = await channel_pair()
        start = trio.current_time()
        with pytest.raises(CollectiveTimeout, match=r"timed out after 7s waiting for a message from b"):
            await b.receive(timeout=7)
        assert trio.current_time() - start == pytest.approx(7)
        # the channel is still usable after a receive timeout
        await a.send(stop(1))
        assert (await b.receive(timeout=1)).iteration == 1

    run(main, clock=mock_clock(), limit=100)


def test_receive_timeout_mid_frame_keeps_the_partial_frame() -> None:
    async def main() -> None:
        a, b = await channel_pair()
        data = frame_bytes(m.LoopData("s", 3, np.arange(50_000.0), False))
        await a._stream.send_all(data[:20_000])  # noqa: SLF001 - header and part of the body
        with pytest.raises(CollectiveTimeout):
            await b.receive(timeout=3)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a._stream.send_all, data[20_000:])  # noqa: SLF001
            got = await b.receive(timeout=3)
        assert got.iteration == 3 and np.array_equal(got.data, np.arange(50_000.0))

    run(main, clock=mock_clock(), limit=100)


def test_handshake_with_a_silent_peer_times_out() -> None:
    async def main() -> None:
        a, b = await channel_pair(handshake=False)
        start = trio.current_time()
        with pytest.raises(CollectiveTimeout, match="handshake"):
            await a.handshake(2.5)
        assert trio.current_time() - start == pytest.approx(2.5)

    run(main, clock=mock_clock(), limit=100)


def test_handshake_with_the_wrong_secret_over_a_socketpair() -> None:
    async def main() -> None:
        a, b = await channel_pair(SECRET, WRONG, handshake=False)
        outcomes: list[BaseException] = []

        async def shake(ch: Channel) -> None:
            try:
                await ch.handshake(5)
            except ProtocolError as exc:
                outcomes.append(exc)
                await ch.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(shake, a)
            nursery.start_soon(shake, b)
        assert len(outcomes) == 2
        assert any(isinstance(e, AuthenticationError) for e in outcomes)

    run(main, clock=mock_clock(), limit=100)


def test_send_to_a_peer_that_does_not_read_times_out() -> None:
    async def main() -> None:
        a, b = await channel_pair()
        start = trio.current_time()
        with pytest.raises(CollectiveTimeout, match="sending LoopData"):
            await a.send(m.LoopData("s", 0, np.zeros(4_000_000), False), timeout=4)
        assert trio.current_time() - start == pytest.approx(4)

    run(main, clock=mock_clock(), limit=100)


def test_a_channel_whose_send_timed_out_refuses_further_sends() -> None:
    async def main() -> None:
        a, b = await channel_pair()
        with pytest.raises(CollectiveTimeout):
            await a.send(m.LoopData("s", 0, np.zeros(4_000_000), False), timeout=1)
        received: list[object] = []

        async def drain() -> None:
            try:
                received.append(await b.receive(timeout=5))
            except (ProtocolError, CollectiveTimeout, ConnectionLost) as exc:
                received.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            # A broken channel must not put another frame behind half a frame.
            with pytest.raises((ConnectionLost, ProtocolError)):
                await a.send(stop(9), timeout=5)
        assert received

    run(main, clock=mock_clock(), limit=100)


def test_deadline_helper_reports_what_timed_out() -> None:
    async def main() -> None:
        with pytest.raises(CollectiveTimeout, match=r"timed out after 1\.5s doing the thing"):
            with trio_channel._deadline(1.5, "doing the thing"):  # noqa: SLF001
                await trio.sleep(10)
        with trio_channel._deadline(1.5, "fast"):  # noqa: SLF001
            await trio.sleep(1)
        # an outer cancellation is not turned into a CollectiveTimeout
        with trio.move_on_after(1) as outer:
            with trio_channel._deadline(5, "inner"):  # noqa: SLF001
                await trio.sleep(10)
        assert outer.cancelled_caught

    run(main, clock=mock_clock(), limit=100)


# -- the direct write of small frames ----------------------------------------------------------


def test_a_small_send_is_written_without_a_pass_through_the_scheduler() -> None:
    """The latency path: a frame the kernel takes whole leaves before any other
    runnable task gets to run (a yield would let e.g. an ack go first)."""

    async def main() -> None:
        a, b = await channel_pair()
        ran: list[str] = []

        async def other() -> None:
            ran.append("other")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await a.send(stop(3), timeout=5)
            assert ran == []  # the send did not yield
            got = await b.receive(timeout=5)
        assert isinstance(got, m.Stop) and got.iteration == 3 and ran == ["other"]

    run(main, clock=mock_clock(), limit=100)


def test_a_frame_bigger_than_the_socket_buffer_is_finished_after_the_direct_write() -> None:
    """The direct write takes what fits; the rest follows through trio, and
    frames sent meanwhile by other tasks queue behind it, never inside it."""
    big = m.LoopData("s", 1, np.arange(2_000_000, dtype=np.float64), False)

    async def main() -> None:
        a, b = await channel_pair()
        got: list[m.Message] = []

        async def receive_two() -> None:
            got.append(await b.receive(timeout=50))
            got.append(await b.receive(timeout=50))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_two)
            nursery.start_soon(functools.partial(a.send, big, timeout=50))
            while not a._send_lock.locked():  # until the big send is part way, holding the lock
                await trio.lowlevel.checkpoint()
            await a.send(stop(4), timeout=50)
        assert isinstance(got[0], m.LoopData) and np.array_equal(got[0].data, big.data)
        assert isinstance(got[1], m.Stop) and got[1].iteration == 4

    run(main, clock=mock_clock(), limit=100)


def test_an_event_already_read_is_returned_without_yielding() -> None:
    """Two frames in one read: the second is handed out at once (no deadline,
    no pass through the scheduler), as a Seal behind its ClaimResult is."""

    async def main() -> None:
        a, b = await channel_pair()
        await a._stream.send_all(frame_bytes(stop(1)) + frame_bytes(stop(2)))
        first = await b.receive(timeout=5)
        ran: list[str] = []

        async def other() -> None:
            ran.append("other")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            second = await b.receive(timeout=5)
            assert ran == []
        assert (first.iteration, second.iteration) == (1, 2)

    run(main, clock=mock_clock(), limit=100)
