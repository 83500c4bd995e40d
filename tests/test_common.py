"""The same-host fast path: who dials the Unix socket, who stays on TCP."""

from __future__ import annotations

import socket

import pytest
import trio

from hcollectives.errors import AuthenticationError
from hcollectives.services.node import NodeDaemon
from hcollectives.transport.common import format_address, host_id, split_address
from hcollectives.transport.sync_channel import SyncChannel
from hcollectives.transport.trio_channel import connect

SECRET = b"s" * 32


def test_unix_path_is_used_only_on_this_host_and_only_if_it_is_a_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "d.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    try:
        assert split_address(format_address("127.0.0.1:5", path)) == ("127.0.0.1:5", path)
        other_host = f"127.0.0.1:5 unix={path} host={'0' * 16}"
        assert host_id() != "0" * 16 and split_address(other_host) == ("127.0.0.1:5", None)
        assert split_address(format_address("127.0.0.1:5", str(tmp_path / "missing"))) == ("127.0.0.1:5", None)
        monkeypatch.setenv("HCOLLECTIVES_SAME_HOST", "tcp")
        assert split_address(format_address("127.0.0.1:5", path)) == ("127.0.0.1:5", None)
    finally:
        listener.close()
    assert split_address("127.0.0.1:5") == ("127.0.0.1:5", None)


async def _daemon_links(tmp_path, monkeypatch) -> None:
    daemon = NodeDaemon(node="n0", secret=SECRET, unix_dir=str(tmp_path))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(daemon.run)
        tcp, path = split_address(address)
        assert path is not None and path.startswith(str(tmp_path))
        channel = await connect(address, role="peer", name="n1", secret=SECRET, timeout=10)
        assert channel.label.endswith("(unix)")
        await channel.aclose()
        # The same authentication on the Unix socket: a wrong secret is refused.
        with pytest.raises(AuthenticationError):
            await connect(address, role="peer", name="n1", secret=b"w" * 32, timeout=10)
        sync = await trio.to_thread.run_sync(
            lambda: SyncChannel.connect(address, role="task", name="t", secret=SECRET, timeout=10))
        assert sync._sock.family == socket.AF_UNIX
        sync.close()
        monkeypatch.setenv("HCOLLECTIVES_SAME_HOST", "tcp")
        channel = await connect(address, role="peer", name="n1", secret=SECRET, timeout=10)
        assert not channel.label.endswith("(unix)")
        await channel.aclose()
        nursery.cancel_scope.cancel()
    # The socket's directory goes with the daemon.
    assert not any(p.name.startswith("hcx-") for p in tmp_path.iterdir())


def test_daemon_serves_same_host_peers_and_tasks_on_its_unix_socket(tmp_path, monkeypatch):
    trio.run(_daemon_links, tmp_path, monkeypatch)


def test_consume_sent_drops_whole_and_partial_views():
    from hcollectives.transport.common import consume_sent

    views = [memoryview(b"abc"), memoryview(b"de"), memoryview(b"fgh")]
    consume_sent(views, 4)  # all of the first, one byte of the second
    assert [bytes(v) for v in views] == [b"e", b"fgh"]
    consume_sent(views, 0)
    assert [bytes(v) for v in views] == [b"e", b"fgh"]
    consume_sent(views, 4)
    assert views == []
