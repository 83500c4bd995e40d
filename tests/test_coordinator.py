"""Integration tests of the coordinator (`services/coordinator.py`) over real loopback TCP.

The coordinator serves on a trio loop inside the test; "nodes" are plain
authenticated channels speaking the daemon's side of the protocol, so each
test controls exactly which Claim / TaskStarted / TaskFailed arrives when.
Every wait is bounded (`trio.fail_after` around the whole run, a timeout on
every receive).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager

import numpy as np
import pytest
import trio

from hcollectives.algorithms.block import Block
from hcollectives.errors import HCollectivesError, SessionAborted
from hcollectives.protocol import messages as m
from hcollectives.services.coordinator import Coordinator, SessionConfig
from hcollectives.transport.trio_channel import Channel, connect

pytestmark = pytest.mark.timeout(60)

SECRET = bytes(range(32))
SESSION = "sess-coord"
STEP = 5.0  # one request/reply on loopback; never reached when things work


def run(async_fn: Callable, *args, timeout: float = 30.0):
    async def main():
        with trio.fail_after(timeout):
            return await async_fn(*args)

    return trio.run(main)


class FakeNode:
    """The daemon's side of the coordinator connection, driven by the test."""

    def __init__(self, name: str, channel: Channel, info: m.SessionInfo) -> None:
        self.name, self.channel, self.info = name, channel, info

    @classmethod
    async def join(cls, address: str, name: str, *, secret: bytes = SECRET) -> "FakeNode":
        channel = await connect(address, role="node", name=name, secret=secret, timeout=STEP)
        await channel.send(m.NodeJoin(SESSION, name, f"127.0.0.1:{1000 + len(name)}"), timeout=STEP)
        info = await channel.receive(timeout=STEP)
        assert isinstance(info, m.SessionInfo)
        return cls(name, channel, info)

    async def send(self, event: m.Message) -> None:
        await self.channel.send(event, timeout=STEP)

    async def expect(self, kind: type, timeout: float = STEP):
        """Next message of *kind*, skipping membership updates."""
        while True:
            event = await self.channel.receive(timeout=timeout)
            if isinstance(event, kind):
                return event
            assert isinstance(event, m.Members), f"expected {kind.__name__}, got {event!r:.200}"

    async def nothing_but_members(self, seconds: float = 0.2) -> None:
        """Assert no message other than Members arrives within *seconds*."""
        with trio.move_on_after(seconds):
            while True:
                event = await self.channel.receive()
                assert isinstance(event, m.Members), f"unexpected {event!r:.200}"

    async def claim(self, iteration: int, task: str, attempt: str) -> bool:
        await self.send(m.Claim(SESSION, iteration, task, attempt, self.name))
        reply = await self.expect(m.ClaimResult)
        assert (reply.iteration, reply.task, reply.attempt) == (iteration, task, attempt)
        return reply.accepted

    async def started(self, iteration: int, task: str, num_tasks: int = -1) -> None:
        await self.send(m.TaskStarted(SESSION, iteration, task, f"{task}_a0", num_tasks, self.name, "x:1"))

    async def aclose(self) -> None:
        await self.channel.aclose()


@asynccontextmanager
async def coordinator(**config):
    cfg = SessionConfig(SESSION, SECRET, config.pop("collective", "allreduce"), config.pop("op", "sum"), **config)
    coord = Coordinator(cfg, np.arange(4.0).reshape(2, 2))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(coord.serve)
        try:
            yield coord, address
        finally:
            nursery.cancel_scope.cancel()


async def until(predicate: Callable[[], object], what: str, timeout: float = STEP) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for {what}")


# -- membership -------------------------------------------------------------------------------


async def _membership() -> None:
    async with coordinator(fanout=3, fallback_timeout=2.5) as (coord, address):
        a = await FakeNode.join(address, "nb")
        assert (a.info.session, a.info.collective, a.info.op, a.info.fanout) == (SESSION, "allreduce", "sum", 3)
        assert a.info.fallback_timeout == 2.5 and a.info.sealed_through == 0
        members = await a.expect(m.Members)
        assert members.members == ["nb"]
        b = await FakeNode.join(address, "na")
        for node in (a, b):
            members = await node.expect(m.Members)
            assert members.members == ["na", "nb"]  # sorted: rank order
        assert sorted(coord.nodes) == ["na", "nb"]
        # The loop data of the first iteration is served on request.
        await a.send(m.GetLoopData(SESSION, 1))
        data = await a.expect(m.LoopData)
        np.testing.assert_array_equal(data.data, np.arange(4.0).reshape(2, 2))


def test_nodes_join_and_learn_the_session():
    run(_membership)


# -- claims ----------------------------------------------------------------------------------------


async def _claims_exactly_once() -> None:
    async with coordinator() as (coord, address):
        a = await FakeNode.join(address, "na")
        b = await FakeNode.join(address, "nb")
        coord.set_num_tasks(1, 3)
        assert await a.claim(1, "t0", "t0_a0") is True
        assert await b.claim(1, "t0", "t0_a1") is False  # another attempt: rejected
        assert await a.claim(1, "t0", "t0_a1") is False  # ... from any node
        assert await a.claim(1, "t0", "t0_a0") is True  # the same attempt again: idempotent
        assert await b.claim(1, "t0", "t0_a0") is False  # same attempt id, other node: not the same claim
        assert await b.claim(1, "t1", "t1_a0") is True
        assert coord.record(1).sealed is False
        assert await a.claim(1, "t2", "t2_a3") is True
        for node in (a, b):
            seal = await node.expect(m.Seal)
            assert seal.iteration == 1 and seal.members == ["na", "nb"]
            assert seal.pieces == [["t0", "t0_a0", "na"], ["t1", "t1_a0", "nb"], ["t2", "t2_a3", "na"]]
        rec = coord.record(1)
        assert rec.sealed
        # After the seal: a new task, or a new attempt, is rejected; the winner is still accepted.
        assert await b.claim(1, "t3", "t3_a0") is False
        assert await b.claim(1, "t1", "t1_a1") is False
        assert await b.claim(1, "t1", "t1_a0") is True
        assert sorted(rec.claims) == ["t0", "t1", "t2"]
        await a.nothing_but_members()  # exactly one Seal
        # Iterations are independent.
        assert await b.claim(2, "t0", "t0_a1") is True


def test_claims_are_exactly_once():
    run(_claims_exactly_once)


async def _seal_from(source: str) -> None:
    async with coordinator() as (coord, address):
        a = await FakeNode.join(address, "na")
        assert await a.claim(1, "t0", "a0") is True
        assert await a.claim(1, "t1", "a1") is True
        await a.nothing_but_members()  # num_tasks unknown: no seal however many claims
        assert not coord.record(1).sealed
        if source == "driver":
            coord.set_num_tasks(1, 3)
        else:
            await a.started(1, "t2", num_tasks=3)
            await until(lambda: coord.record(1).num_tasks == 3, "TaskStarted to be counted")
        await a.nothing_but_members()
        assert not coord.record(1).sealed, "sealed with 2 of 3 claims"
        assert await a.claim(1, "t2", "a2") is True
        seal = await a.expect(m.Seal)
        assert [p[0] for p in seal.pieces] == ["t0", "t1", "t2"]


@pytest.mark.parametrize("source", ["driver", "task_started"])
def test_seal_waits_for_num_tasks_claims(source):
    run(_seal_from, source)


async def _seal_when_count_arrives_last() -> None:
    async with coordinator() as (coord, address):
        a = await FakeNode.join(address, "na")
        for t in range(2):
            assert await a.claim(1, f"t{t}", f"a{t}") is True
        coord.set_num_tasks(1, 2)  # every claim is already in: sealing is up to set_num_tasks
        seal = await a.expect(m.Seal)
        assert len(seal.pieces) == 2
        assert coord.record(1).sealed


def test_seal_when_num_tasks_arrives_after_the_claims():
    run(_seal_when_count_arrives_last)


async def _wait_all_started() -> None:
    async with coordinator() as (coord, address):
        a = await FakeNode.join(address, "na")
        await a.started(1, "t0", num_tasks=2)
        await a.started(1, "t0", num_tasks=2)  # a second attempt of the same task
        with trio.move_on_after(0.2) as scope:
            await coord.wait_all_started(1)
        assert scope.cancelled_caught, "two attempts of one task are not two tasks"
        await a.started(1, "t1", num_tasks=2)
        with trio.fail_after(STEP):
            await coord.wait_all_started(1)
        assert "all_tasks_started" in coord.record(1).times


def test_wait_all_started_counts_tasks_not_attempts():
    run(_wait_all_started)


# -- aborts ----------------------------------------------------------------------------------------


async def _conflicting_num_tasks(second_from: str) -> None:
    async with coordinator() as (coord, address):
        a = await FakeNode.join(address, "na")
        await a.started(1, "t0", num_tasks=2)
        if second_from == "driver":
            await until(lambda: coord.record(1).num_tasks == 2, "TaskStarted to be counted")
            coord.set_num_tasks(1, 3)
        else:
            await a.started(1, "t1", num_tasks=3)
        stop = await a.expect(m.Stop)
        assert stop.converged is False and "disagree" in stop.reason
        with pytest.raises(SessionAborted, match="disagree on the number of map tasks"):
            await coord.wait_result(1, timeout=STEP)
        assert "2 vs 3" in coord.failure


@pytest.mark.parametrize("second_from", ["task_started", "driver"])
def test_conflicting_num_tasks_aborts(second_from):
    run(_conflicting_num_tasks, second_from)


async def _task_failed() -> None:
    async with coordinator() as (coord, address):
        a = await FakeNode.join(address, "na")
        b = await FakeNode.join(address, "nb")
        waiter_error = []

        async def wait_result():
            try:
                await coord.wait_result(1)
            except SessionAborted as exc:
                waiter_error.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_result)
            await trio.sleep(0.05)  # the driver is already waiting when the failure arrives
            await b.send(m.TaskFailed(SESSION, 1, "task_000007", "attempt_7_1", "bad record 'x y'"))
        assert waiter_error, "wait_result must raise SessionAborted"
        text = str(waiter_error[0])
        assert "task_000007" in text and "attempt_7_1" in text and "bad record 'x y'" in text
        for node in (a, b):  # every daemon is told, so its waiting tasks stop too
            stop = await node.expect(m.Stop)
            assert not stop.converged and "task_000007" in stop.reason
        with pytest.raises(SessionAborted, match="task_000007"):
            await coord.wait_all_started(1)
        # A node joining after the abort learns it at once.
        c = await FakeNode.join(address, "nc")
        assert "task_000007" in (await c.expect(m.Stop)).reason


def test_task_failed_aborts_and_names_the_task():
    run(_task_failed)


async def _node_error_aborts() -> None:
    async with coordinator() as (coord, address):
        a = await FakeNode.join(address, "na")
        await a.send(m.NodeError(SESSION, "na", "iteration 1: ShapeMismatch: key 0"))
        with pytest.raises(SessionAborted, match="node na: iteration 1: ShapeMismatch"):
            await coord.wait_result(1, timeout=STEP)


def test_node_error_aborts():
    run(_node_error_aborts)


async def _node_lost_with_claims() -> None:
    async with coordinator() as (coord, address):
        a = await FakeNode.join(address, "na")
        b = await FakeNode.join(address, "nb")
        coord.set_num_tasks(1, 3)
        assert await a.claim(1, "t0", "a0") is True
        await a.aclose()  # killed: its accepted piece is in the store
        # No abort: the run waits for a successor of na.
        with trio.fail_after(STEP):
            while (await b.expect(m.Members)).members != ["nb"]:
                pass
        assert coord.failure is None
        assert await b.claim(1, "t1", "a0") is True
        # A successor of na rejoins under the same name; the same attempt's claim
        # (its task asking again) is still accepted: it is the one that counts.
        a2 = await FakeNode.join(address, "na")
        assert await a2.claim(1, "t0", "a0") is True
        assert await b.claim(1, "t2", "a0") is True
        seal = await b.expect(m.Seal)
        assert seal.members == ["na", "nb"]
        assert sorted(map(tuple, seal.pieces)) == [("t0", "a0", "na"), ("t1", "a0", "nb"), ("t2", "a0", "nb")]
        assert (await a2.expect(m.Seal)).pieces == seal.pieces
        # Lost again after the seal: its next successor is sent the seal again,
        # with its own new address, to take its part in the collective.
        await a2.aclose()
        a3 = await FakeNode.join(address, "na")
        again = await a3.expect(m.Seal)
        assert (again.iteration, again.pieces, again.members) == (1, seal.pieces, seal.members)
        assert coord.failure is None


def test_lost_daemon_is_replaced_by_a_successor_without_abort():
    run(_node_lost_with_claims)


# -- results, stop -----------------------------------------------------------------------------


async def _result_and_stop() -> None:
    async with coordinator() as (coord, address):
        a = await FakeNode.join(address, "na")
        coord.set_num_tasks(1, 1)
        assert await a.claim(1, "t0", "a0")
        await a.expect(m.Seal)
        block = Block.from_dict({0: np.array([1.5, 2.5])})
        await a.send(m.Result(SESSION, 1, block))
        with trio.fail_after(STEP):
            assert await coord.wait_result(1) == block
        # The first result wins; a repeat does not replace it.
        await a.send(m.Result(SESSION, 1, Block.from_dict({0: np.zeros(2)})))
        await a.send(m.GetLoopData(SESSION, 1))  # a round trip: the repeat has been handled
        await a.expect(m.LoopData)
        assert await coord.wait_result(1) == block
        # Loop data for iteration 2 is answered once the driver has it.
        await a.send(m.GetLoopData(SESSION, 2))
        await a.nothing_but_members(0.1)
        coord.set_loop_data(2, np.full((1, 2), 7.0))
        reply = await a.expect(m.LoopData)
        assert reply.iteration == 2 and np.array_equal(reply.data, np.full((1, 2), 7.0))
        # After stop(3), a request for iteration 3 is answered with the Stop.
        await a.send(m.GetLoopData(SESSION, 3))
        await coord.stop(3, converged=True, reason="converged")
        for _ in range(2):  # the broadcast, and the answer to the request
            stop = await a.expect(m.Stop)
            assert stop.iteration == 3 and stop.converged


def test_result_loop_data_and_stop():
    run(_result_and_stop)


# -- authentication ---------------------------------------------------------------------------------


async def _wrong_secret() -> None:
    async with coordinator() as (coord, address):
        for _ in range(2):
            with pytest.raises(HCollectivesError):
                await FakeNode.join(address, "evil", secret=bytes(32 * [7]))
        await until(lambda: len(coord.rejected_connections) == 2, "the rejections to be recorded")
        assert "evil" not in coord.nodes
        # Still serving: a good node joins and claims.
        a = await FakeNode.join(address, "na")
        assert await a.claim(1, "t0", "a0")
        # A task (not a node) with the right secret is not served by the coordinator.
        stray = await connect(address, role="task", name="t", secret=SECRET, timeout=STEP)
        with pytest.raises(HCollectivesError):
            await stray.receive(timeout=STEP)
        assert coord.failure is None


def test_wrong_secret_is_rejected_and_coordinator_keeps_serving():
    run(_wrong_secret)


# -- a lost daemon with no successor -------------------------------------------------------------


async def _rescue(tmp_path, fanout: int, n_nodes: int) -> None:
    from hcollectives import store as st
    from hcollectives.algorithms.block import Block
    from hcollectives.services.coordinator import RESCUE_AFTER
    from hcollectives.services.exchange.rescue import subtree_partial
    from hcollectives.algorithms.reduction import reduce_blocks
    from hcollectives.algorithms.topology import Tree

    uri = f"file://{tmp_path}"
    store = st.Store(uri)
    rng = np.random.default_rng(n_nodes)
    names = [f"n{k}" for k in range(n_nodes)]
    async with coordinator(fallback_timeout=0.2, checkpoint_uri=uri, fanout=fanout) as (coord, address):
        nodes = [await FakeNode.join(address, name) for name in names]
        tasks = [(f"t{k}", names[k % n_nodes]) for k in range(2 * n_nodes)]
        coord.set_num_tasks(1, len(tasks))
        blocks = {}
        for task, node in tasks:
            # Values whose sum depends on the order: only the tree's own order gives these bits.
            blocks[task] = Block.from_dict({0: rng.uniform(-1, 1, 4) * 10.0 ** rng.integers(-8, 8, 4)})
            store.save_block(st.contribution_path(SESSION, 1, task, "a0"), blocks[task])
            assert await nodes[names.index(node)].claim(1, task, "a0") is True
        seal = await nodes[0].expect(m.Seal)
        await nodes[0].aclose()  # the root is lost and no successor comes
        with trio.fail_after(RESCUE_AFTER * 0.2 + 5):
            result = await coord.wait_result(1)
        locals_ = [reduce_blocks([blocks[t] for t, n in sorted(tasks) if n == name], "sum") for name in seal.members]
        # In the order of the exchange the daemons run (algorithms/plan.py): the same bits.
        from hcollectives.algorithms import doubling_allreduce, plan

        if plan.allreduce_strategy(seal.layout) == "tree":
            assert result == subtree_partial(locals_, Tree(n_nodes, fanout), 0, "sum")
        else:
            assert result == doubling_allreduce.reference_result(locals_, "sum")
        # The waiting daemons' store fallback finds it where it looks.
        assert store.load_block(st.result_path(SESSION, 1)) == result
        assert coord.failure is None and "computed the result from the store" in coord.notices[0][1]


@pytest.mark.parametrize("small", ["doubling", "tree"])
@pytest.mark.parametrize("n_nodes,fanout", [(2, 2), (4, 2), (5, 3)])
def test_root_lost_without_successor_is_rescued_from_the_store(tmp_path, monkeypatch, n_nodes, fanout, small):
    if small == "tree":
        monkeypatch.setenv("HCOLLECTIVES_ALLREDUCE_SMALL", "tree")
    run(_rescue, tmp_path, fanout, n_nodes)


async def _rescue_waits_for_a_piece_still_on_its_way(tmp_path) -> None:
    """The lost daemon had its task's claim accepted but was killed before that
    piece's store copy landed; the task's retry reaches a successor (which
    writes it) only after the rescue's deadline (a successor's start takes
    seconds on a loaded machine). The rescue must wait for the piece, not fail
    the run with "could not be rebuilt from the store"."""
    from hcollectives import store as st
    from hcollectives.algorithms import doubling_allreduce
    from hcollectives.algorithms.reduction import reduce_blocks
    from hcollectives.services.coordinator import RESCUE_AFTER

    uri = f"file://{tmp_path}"
    store = st.Store(uri)
    fallback = 0.2
    async with coordinator(fallback_timeout=fallback, checkpoint_uri=uri, fanout=2) as (coord, address):
        na, nb = await FakeNode.join(address, "na"), await FakeNode.join(address, "nb")
        tasks = [("t0", na), ("t1", nb), ("t2", na), ("t3", nb)]
        coord.set_num_tasks(1, len(tasks))
        blocks = {t: Block.from_dict({0: np.array([k + 0.5, 2.0 ** -k])}) for k, (t, _) in enumerate(tasks)}
        late = st.contribution_path(SESSION, 1, "t2", "a0")
        for task, node in tasks:
            if task != "t2":  # t2's copy is still being written when na dies
                store.save_block(st.contribution_path(SESSION, 1, task, "a0"), blocks[task])
            assert await node.claim(1, task, "a0") is True
        seal = await na.expect(m.Seal)
        await na.aclose()  # the root is lost
        # Past the rescue's deadline, with t2's piece still missing...
        await trio.sleep(RESCUE_AFTER * fallback + 0.5)
        assert coord.failure is None, coord.failure
        assert not coord.has_result(1)
        # ...then the successor of na (a task's retried Contribute) writes it.
        store.save_block(late, blocks["t2"])
        with trio.fail_after(STEP):
            result = await coord.wait_result(1)
        locals_ = [reduce_blocks([blocks[t] for t, n in sorted(tasks) if n.name == name], "sum")
                   for name in seal.members]
        assert result == doubling_allreduce.reference_result(locals_, "sum")
        assert coord.failure is None


def test_rescue_waits_for_a_lost_daemons_piece_still_on_its_way(tmp_path):
    run(_rescue_waits_for_a_piece_still_on_its_way, tmp_path)


async def _successor_joins_before_the_loss_is_seen() -> None:
    """A successor's NodeJoin read before its predecessor's connection is seen to
    close (the old reader still listed): it must still be sent the seals of the
    unfinished iterations it now owns a part of. Before, the old reader's exit
    saw a newer channel under the node's name and did nothing: no seal was
    re-sent and no rescue started, and a root successor never computed the
    result (the driver waited for --iteration-timeout)."""
    async with coordinator() as (coord, address):
        a = await FakeNode.join(address, "na")
        b = await FakeNode.join(address, "nb")
        coord.set_num_tasks(1, 2)
        assert await a.claim(1, "t0", "a0") is True
        assert await b.claim(1, "t1", "a0") is True
        seal = await b.expect(m.Seal)
        a2 = await FakeNode.join(address, "na")  # `a` is still connected here
        await a.aclose()
        again = await a2.expect(m.Seal)
        assert (again.iteration, again.pieces, again.members) == (1, seal.pieces, seal.members)
        assert coord.failure is None


def test_successor_joining_before_its_predecessors_loss_is_seen_gets_the_seals():
    run(_successor_joins_before_the_loss_is_seen)
