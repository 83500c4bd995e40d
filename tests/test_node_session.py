"""`NodeSession` against a scripted coordinator, over real loopback TCP.

The real coordinator answers a Claim and then broadcasts the Seal in two
writes; when both land in one read, the daemon handles the Seal in the same
scheduling step as the ClaimResult. These tests play a coordinator that
always packs them into one write, so the daemon must not depend on which of
its tasks trio happens to run first.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import trio

from hcollectives.algorithms.block import Block
from hcollectives.algorithms.reduction import block_to_matrix
from hcollectives.protocol import messages as m
from hcollectives.services.node import NodeDaemon
from hcollectives.services.node_session import Timeouts
from hcollectives.services.task import TaskClient, TaskEnv
from hcollectives.transport.trio_channel import Channel, listener_address, open_listeners, serve

pytestmark = pytest.mark.timeout(60)

SECRET = bytes(range(32))
TIMEOUTS = Timeouts(connect=5.0, store=5.0, loop_data=10.0, collective=5.0, task_idle=10.0, idle_exit=30.0)
ROUNDS = 12  # each round would fail with probability 1/2 if the order mattered


class ScriptedCoordinator:
    """Just enough of a coordinator for one node and one task per session."""

    def __init__(self, collective: str, checkpoint_uri: str = "") -> None:
        self.collective = collective
        self.checkpoint_uri = checkpoint_uri
        self.results: dict[str, Block] = {}
        self.errors: list[str] = []
        self.changed = trio.Event()

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await open_listeners("127.0.0.1")
        task_status.started(listener_address(listeners, "127.0.0.1"))
        await serve(listeners, self._handle, role="coordinator", name="scripted", secret=SECRET,
                    handshake_timeout=5)

    async def _handle(self, channel: Channel) -> None:
        join = await channel.receive(timeout=5)
        assert isinstance(join, m.NodeJoin)
        s = join.session
        op = "sum" if self.collective == "allreduce" else "none"
        await channel.send(m.SessionInfo(s, self.collective, op, 2, self.checkpoint_uri, 5.0, 1, False, 0), timeout=5)
        await channel.send(m.Members(s, [join.node], [join.address]), timeout=5)
        while True:
            event = await channel.receive()
            if isinstance(event, m.GetLoopData):
                await channel.send(m.LoopData(s, event.iteration, np.zeros((1, 2)), False), timeout=5)
            elif isinstance(event, m.Claim):
                reply = m.ClaimResult(s, event.iteration, event.task, event.attempt, True)
                seal = m.Seal(s, event.iteration, [join.node], [join.address],
                              [[event.task, event.attempt, join.node]])
                # One write: the daemon reads both frames at once.
                data = b"".join(bytes(c) for c in channel._conn.send(reply) + channel._conn.send(seal))
                await channel._stream.send_all(data)
            elif isinstance(event, m.Result):
                self.results[s] = event.block
                self.changed.set()
            elif isinstance(event, m.NodeError):
                self.errors.append(event.message)
                self.changed.set()


def one_task(env: TaskEnv, block: Block) -> bool:
    with TaskClient(env) as client:
        client.start()
        client.loop_data(lambda r, p: (p, False))
        return client.contribute(block)


async def _claim_and_seal_in_one_read(collective: str) -> None:
    coord = ScriptedCoordinator(collective)
    daemon = NodeDaemon(node="n0", secret=SECRET, timeouts=TIMEOUTS)
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            caddr = await nursery.start(coord.serve)
            addr = await nursery.start(daemon.run)
            for k in range(ROUNDS):
                session = f"s{k}"
                block = Block.from_matrix((k,), np.array([[1.0, float(k)]]))
                env = TaskEnv(session, caddr, SECRET, 1, "task_0", "task_0_a0", 1, "n0", "/nonexistent",
                              addr, "test", 10.0)
                out: list = []
                thread = threading.Thread(target=lambda: out.append(one_task(env, block)), daemon=True)
                thread.start()
                while session not in coord.results and not coord.errors:
                    await coord.changed.wait()
                    coord.changed = trio.Event()
                assert coord.errors == [], f"round {k}: {coord.errors}"
                await trio.to_thread.run_sync(thread.join, 10)
                assert out == [True]
                if collective == "allreduce":
                    assert coord.results[session] == block
                else:
                    np.testing.assert_array_equal(block_to_matrix(coord.results[session]), [[1.0, float(k)]])
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("collective", ["allreduce", "allgather"])
def test_own_contribution_counts_when_seal_follows_claim_result_at_once(collective):
    trio.run(_claim_and_seal_in_one_read, collective)


# -- a reply that arrives while the request is still being sent ---------------------------------

class _CoordinatorReplyingDuringSend:
    """A coordinator link whose LoopData reply is delivered before the GetLoopData send returns.

    On a loaded machine the session's coordinator reader can run while the task's
    request is still inside `send`; the session must not miss that wakeup."""

    def __init__(self, session, during_send: bool) -> None:
        self.session, self.during_send = session, during_send

    async def send(self, event, timeout=None):
        reply = m.LoopData(event.session, event.iteration, np.ones((2, 2)), False)
        if isinstance(event, m.GetLoopData) and self.during_send:
            self.session._on_coordinator(reply)
        await trio.lowlevel.checkpoint()
        if isinstance(event, m.GetLoopData) and not self.during_send:
            async def later():
                await trio.sleep(0.05)
                self.session._on_coordinator(reply)
            self.session.nursery.start_soon(later)


class _TaskLink:
    def __init__(self) -> None:
        self.sent = []

    async def send(self, event, timeout=None):
        self.sent.append(event)


@pytest.mark.parametrize("during_send", [False, True], ids=["reply-after-send", "reply-during-send"])
def test_loop_data_reply_read_during_the_request_is_not_missed(during_send):
    from hcollectives.services.faults import Faults
    from hcollectives.services.node_session import NodeSession

    async def main():
        session = NodeSession(node="n0", address="127.0.0.1:1", session="s1", coordinator="127.0.0.1:2",
                              secret=b"x" * 32, timeouts=Timeouts(loop_data=5.0), faults=Faults())
        session.info = m.SessionInfo("s1", "allreduce", "sum", 2, "", 2.0, 1, False, 0)
        session._coordinator = _CoordinatorReplyingDuringSend(session, during_send)
        task = _TaskLink()
        async with trio.open_nursery() as nursery:
            session.nursery = nursery
            with trio.fail_after(2):  # far below the 5 s loop-data timeout a missed wakeup would hit
                await session.serve_loop_data(task, 1)
        assert [type(e) for e in task.sent] == [m.LoopData]
        np.testing.assert_array_equal(task.sent[0].data, np.ones((2, 2)))

    trio.run(main)


@pytest.mark.parametrize("durable", [True, False])
def test_only_a_durable_contribution_waits_for_its_store_copy(tmp_path, monkeypatch, durable):
    """A task that exits after its ack must know its piece is in the store; a resident
    task that goes on needs only the claim (its HDFS write then runs beside the collective)."""
    from hcollectives.store import Store

    written, release = threading.Event(), threading.Event()
    save_block = Store.save_block

    def slow_save(self, path, block):
        release.wait(20)  # the store write is held until the test lets it go
        save_block(self, path, block)
        written.set()

    monkeypatch.setattr(Store, "save_block", slow_save)

    async def main() -> tuple[list, bool]:
        coord = ScriptedCoordinator("allreduce", f"file://{tmp_path / 'store'}")
        daemon = NodeDaemon(node="n0", secret=SECRET, timeouts=TIMEOUTS)
        out: list = []
        with trio.fail_after(40):
            async with trio.open_nursery() as nursery:
                caddr = await nursery.start(coord.serve)
                addr = await nursery.start(daemon.run)
                env = TaskEnv("sd", caddr, SECRET, 1, "task_0", "task_0_a0", 1, "n0", "/nonexistent", addr,
                              "test", 10.0)

                def task() -> None:
                    with TaskClient(env) as client:
                        client.start()
                        client.loop_data(lambda r, p: (p, False))
                        out.append(client.contribute(Block.from_dict({0: np.array([1.0, 2.0])}), durable))

                thread = threading.Thread(target=task, daemon=True)
                thread.start()
                await trio.to_thread.run_sync(thread.join, 3)
                answered_before_write = out == [True] and not written.is_set()
                release.set()
                await trio.to_thread.run_sync(thread.join, 10)
                await trio.to_thread.run_sync(written.wait, 10)
                nursery.cancel_scope.cancel()
        return out, answered_before_write

    out, answered_before_write = trio.run(main)
    assert out == [True]
    assert answered_before_write is (not durable)
