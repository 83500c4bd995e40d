"""Integration tests of the node daemon (`services/node.py`, `services/node_session.py`).

Everything runs over real loopback TCP: a `Coordinator` and one `NodeDaemon`
per simulated node share one trio loop inside the test; map tasks are
`TaskClient`s on threads, each dialling its daemon directly
(``TaskEnv.node_address``). Every wait is bounded: the whole trio run sits
under `trio.fail_after`, thread joins have timeouts, and task threads are
daemonic so a failing test can never hang the suite.
"""

from __future__ import annotations

import os
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest
import trio

from hcollectives import store as st
from hcollectives.algorithms.block import Block
from hcollectives.algorithms.reduction import OPS, block_to_matrix
from hcollectives.errors import HCollectivesError, SessionAborted
from hcollectives.protocol import messages as m
from hcollectives.services.coordinator import Coordinator, SessionConfig
from hcollectives.services.faults import Faults
from hcollectives.services.node import NodeDaemon
from hcollectives.services.node_session import Timeouts
from hcollectives.services.task import IterationStopped, TaskClient, TaskEnv
from hcollectives.transport.trio_channel import connect

pytestmark = pytest.mark.timeout(60)

SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
SESSION = "sess-node"
# Short, but far longer than anything on loopback needs; a test that trips one is a bug.
TIMEOUTS = Timeouts(connect=5.0, store=5.0, loop_data=20.0, collective=10.0, task_idle=30.0, idle_exit=30.0)
TASK_TIMEOUT = 20.0  # a task's wait for its daemon's reply
JOIN_TIMEOUT = 20.0
RUN_TIMEOUT = 40.0  # one whole test's trio run


def run(async_fn: Callable, *args, timeout: float = RUN_TIMEOUT):
    async def main():
        with trio.fail_after(timeout):
            return await async_fn(*args)

    return trio.run(main)


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    """Poll a condition on daemon/coordinator state (which has no public event)."""
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- task threads ---------------------------------------------------------------------------


class TaskThread:
    """Run *fn* on a daemonic thread; keep its return value or exception."""

    def __init__(self, fn: Callable, *args) -> None:
        self.result = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)

    def _run(self, fn, *args) -> None:
        try:
            self.result = fn(*args)
        except BaseException as exc:  # handed to the test
            self.error = exc

    def start(self) -> "TaskThread":
        self.thread.start()
        return self

    async def join(self, timeout: float = JOIN_TIMEOUT) -> "TaskThread":
        await trio.to_thread.run_sync(self.thread.join, timeout)
        assert not self.thread.is_alive(), "task thread did not finish in time"
        return self

    def value(self):
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result


async def join_all(threads: list[TaskThread]) -> list:
    for t in threads:
        await t.join()
    return [t.value() for t in threads]


def no_post_process(result, previous):
    raise AssertionError("post_process must not run in the first iteration")


def full_task(env: TaskEnv, make_block: Callable[[np.ndarray], Block], post_process=no_post_process):
    """What a map task does: start, loop data, contribute. Returns (loop data, accepted)."""
    with TaskClient(env) as client:
        client.start()
        data = client.loop_data(post_process)
        accepted = client.contribute(make_block(data))
    return data, accepted


class CountingPostProcess:
    """A deterministic post_process that counts its calls per node."""

    def __init__(self, converge: bool = False) -> None:
        self.calls: dict[str, int] = {}
        self.converge = converge
        self._lock = threading.Lock()

    @staticmethod
    def compute(result: Block, previous: np.ndarray) -> np.ndarray:
        sums = np.array([float(np.sum(v)) for _, v in result.items()])
        return (sums + float(np.sum(previous))).reshape(1, -1)

    def for_node(self, node: str):
        def post_process(result, previous):
            with self._lock:
                self.calls[node] = self.calls.get(node, 0) + 1
            return self.compute(result, previous), self.converge

        return post_process


# -- the cluster ------------------------------------------------------------------------------


@dataclass
class Cluster:
    coordinator: Coordinator
    coordinator_address: str
    daemons: list[NodeDaemon]
    addresses: list[str]
    nursery: trio.Nursery
    session: str = SESSION
    threads: list[TaskThread] = field(default_factory=list)

    @property
    def nodes(self) -> list[str]:
        return [d.node for d in self.daemons]

    def env(self, node: int, task: str, attempt: str | None = None, *, iteration: int = 1,
            num_tasks: int = -1, secret: bytes = SECRET) -> TaskEnv:
        return TaskEnv(self.session, self.coordinator_address, secret, iteration, task,
                       attempt or f"{task}_a0", num_tasks, self.daemons[node].node, "/nonexistent",
                       self.addresses[node], "test", TASK_TIMEOUT)

    def spawn(self, fn: Callable, *args) -> TaskThread:
        thread = TaskThread(fn, *args).start()
        self.threads.append(thread)
        return thread

    def node_session(self, node: int):
        return self.daemons[node].sessions[self.session]

    def node_result(self, node: int, iteration: int) -> Block | None:
        state = self.node_session(node).iterations.get(iteration)
        return None if state is None else state.result


@asynccontextmanager
async def cluster(n_nodes: int, *, collective: str = "allreduce", op: str = "sum", fanout: int = 2,
                  checkpoint_uri: str = "", fallback_timeout: float = 10.0,
                  faults: dict[int, str] | None = None, initial: np.ndarray | None = None,
                  timeouts: Timeouts = TIMEOUTS):
    initial = np.arange(6, dtype=float).reshape(2, 3) if initial is None else initial
    config = SessionConfig(SESSION, SECRET, collective, op, fanout, checkpoint_uri, fallback_timeout, 1)
    coordinator = Coordinator(config, initial)
    async with trio.open_nursery() as nursery:
        caddr = await nursery.start(coordinator.serve)
        daemons = [NodeDaemon(node=f"n{i}", secret=SECRET, timeouts=timeouts,
                              faults=Faults.parse((faults or {}).get(i)))
                   for i in range(n_nodes)]
        addresses = [await nursery.start(d.run) for d in daemons]
        c = Cluster(coordinator, caddr, daemons, addresses, nursery)
        try:
            yield c
        finally:
            nursery.cancel_scope.cancel()
    # The daemons closed their sockets: any task still waiting gets ConnectionLost.
    for t in c.threads:
        await trio.to_thread.run_sync(t.thread.join, 5)


# -- data -----------------------------------------------------------------------------------------


def task_vectors(rng: np.random.Generator, task_index: int, width: int = 3) -> dict:
    """Keys vary by task (not every task sees every key), values in [0.5, 1.5)."""
    keys = [k for k in range(5) if (k + task_index) % 3 != 0] + ["s"]
    return {k: rng.uniform(0.5, 1.5, width) for k in keys}


def reference(contributions: list[dict], op: str) -> dict:
    out: dict = {}
    for vectors in contributions:
        for k, v in vectors.items():
            out[k] = v.copy() if k not in out else OPS[op](out[k], v)
    return out


def assert_block_close(block: Block, expected: dict) -> None:
    got = block.to_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-12, atol=0)


# -- AllReduce, every shape of tree --------------------------------------------------------


async def _allreduce_two_iterations(n_nodes: int, fanout: int, op: str) -> None:
    rng = np.random.default_rng(1000 * n_nodes + 10 * fanout + len(op))
    async with cluster(n_nodes, op=op, fanout=fanout) as c:
        # Several tasks per node (2 or 3), task ids interleaved over nodes.
        placement = [node for node in range(n_nodes) for _ in range(2 + node % 2)]
        n_tasks = len(placement)
        vectors = [task_vectors(rng, t) for t in range(n_tasks)]
        c.coordinator.set_num_tasks(1, n_tasks)
        threads = [c.spawn(full_task, c.env(node, f"task_{t:02d}"),
                           lambda data, v=vectors[t]: Block.from_dict(v))
                   for t, node in enumerate(placement)]
        result = await c.coordinator.wait_result(1)
        outs = await join_all(threads)
        assert all(accepted for _, accepted in outs)
        initial = c.coordinator.record(1).loop_data
        for data, _ in outs:
            np.testing.assert_array_equal(data, initial)
        expected = reference(vectors, op)
        assert_block_close(result, expected)
        # Every daemon ends with the bit-identical result.
        for node in range(n_nodes):
            await wait_until(lambda: c.node_result(node, 1) is not None, what=f"n{node}'s result")
            assert c.node_result(node, 1) == result

        # Iteration 2: post_process runs once per node (lease); every task of
        # every node gets the same loop data.
        pp = CountingPostProcess()
        new = pp.compute(result, initial)
        c.coordinator.set_loop_data(2, new)  # what the driver does
        vectors2 = [task_vectors(rng, t) for t in range(n_tasks)]
        threads = [c.spawn(full_task, c.env(node, f"task_{t:02d}", iteration=2, num_tasks=n_tasks),
                           lambda data, v=vectors2[t]: Block.from_dict(v), pp.for_node(c.nodes[node]))
                   for t, node in enumerate(placement)]
        result2 = await c.coordinator.wait_result(2)
        outs = await join_all(threads)
        for data, accepted in outs:
            assert accepted
            np.testing.assert_array_equal(data, new)
        assert pp.calls == {node: 1 for node in c.nodes}
        assert_block_close(result2, reference(vectors2, op))
        await c.coordinator.stop(3, converged=True, reason="done")


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("fanout", [2, 3])
@pytest.mark.parametrize("n_nodes", [1, 2, 3, 4])
def test_allreduce_matches_numpy_and_next_iteration_agrees(n_nodes, fanout, op):
    run(_allreduce_two_iterations, n_nodes, fanout, op)


# -- AllGather -------------------------------------------------------------------------------------


async def _allgather(n_nodes: int, fanout: int) -> None:
    rng = np.random.default_rng(n_nodes)
    async with cluster(n_nodes, collective="allgather", op="none", fanout=fanout) as c:
        placement = [node for node in range(n_nodes) for _ in range(2)]
        n_tasks = len(placement)
        rows_per_task = 3
        matrix = rng.normal(size=(n_tasks * rows_per_task, 4))

        def rows(t):
            return lambda data: Block.from_matrix(
                tuple(range(t * rows_per_task, (t + 1) * rows_per_task)),
                matrix[t * rows_per_task:(t + 1) * rows_per_task])

        threads = [c.spawn(full_task, c.env(node, f"task_{t:02d}", num_tasks=n_tasks), rows(t))
                   for t, node in enumerate(placement)]
        result = await c.coordinator.wait_result(1)
        outs = await join_all(threads)
        assert all(accepted for _, accepted in outs)
        np.testing.assert_array_equal(block_to_matrix(result), matrix)
        for node in range(n_nodes):
            await wait_until(lambda: c.node_result(node, 1) is not None, what=f"n{node}'s gather")
            np.testing.assert_array_equal(block_to_matrix(c.node_result(node, 1)), matrix)


@pytest.mark.parametrize("n_nodes", [1, 2, 3, 4])
def test_allgather_assembles_exact_matrix(n_nodes):
    run(_allgather, n_nodes, 2)


# -- attempts that must not count twice ----------------------------------------------------------


async def _duplicate_attempts(collective: str) -> None:
    op = "sum" if collective == "allreduce" else "none"
    async with cluster(2, collective=collective, op=op) as c:
        def block_of(t):
            if collective == "allreduce":
                return lambda data: Block.from_dict({0: np.full(2, 10.0 ** t), "x": np.ones(1)})
            return lambda data: Block.from_matrix((t,), np.full((1, 2), float(t)))

        n_tasks = 3
        c.coordinator.set_num_tasks(1, n_tasks)
        # task_0: attempt a0 on n0 contributes first, then attempt a1 on n1
        # and attempt a2 on n0 (same data: a re-run) contribute as well.
        first = await c.spawn(full_task, c.env(0, "task_0", "task_0_a0"), block_of(0)).join()
        dup_other = await c.spawn(full_task, c.env(1, "task_0", "task_0_a1"), block_of(0)).join()
        dup_same = await c.spawn(full_task, c.env(0, "task_0", "task_0_a2"), block_of(0)).join()
        assert first.value()[1] is True
        assert dup_other.value()[1] is False
        assert dup_same.value()[1] is False
        rest = [c.spawn(full_task, c.env(t % 2, f"task_{t}"), block_of(t)) for t in (1, 2)]
        result = await c.coordinator.wait_result(1)
        assert all(acc for _, acc in await join_all(rest))
        # A late duplicate after the seal is told it does not count either.
        late = await c.spawn(full_task, c.env(1, "task_1", "task_1_a9"), block_of(1)).join()
        assert late.value()[1] is False
        if collective == "allreduce":
            assert_block_close(result, {0: np.full(2, 111.0), "x": np.full(1, 3.0)})
        else:
            np.testing.assert_array_equal(block_to_matrix(result), np.repeat([[0.0], [1.0], [2.0]], 2, axis=1))
        assert sorted(c.coordinator.record(1).claims) == ["task_0", "task_1", "task_2"]
        assert c.coordinator.record(1).claims["task_0"] == ("task_0_a0", "n0")


@pytest.mark.parametrize("collective", ["allreduce", "allgather"])
def test_duplicate_attempts_count_once(collective):
    run(_duplicate_attempts, collective)


def started_then_vanish(env: TaskEnv):
    """A task attempt that started and got its loop data, then died without contributing."""
    client = TaskClient(env)
    client.start()
    data = client.loop_data(no_post_process)
    client.close()
    return data


async def _failed_attempt() -> None:
    async with cluster(2) as c:
        c.coordinator.set_num_tasks(1, 3)
        await c.spawn(started_then_vanish, c.env(0, "task_1", "task_1_a0")).join()
        threads = [c.spawn(full_task, c.env(t % 2, f"task_{t}"),
                           lambda data, t=t: Block.from_dict({0: np.full(2, 10.0 ** t)}))
                   for t in (0, 2)]
        # The retry of task_1 runs on the other node and counts.
        threads.append(c.spawn(full_task, c.env(1, "task_1", "task_1_a1"),
                               lambda data: Block.from_dict({0: np.full(2, 10.0)})))
        result = await c.coordinator.wait_result(1)
        assert all(acc for _, acc in await join_all(threads))
        assert_block_close(result, {0: np.full(2, 111.0)})
        assert c.coordinator.record(1).claims["task_1"] == ("task_1_a1", "n1")
        assert c.coordinator.failure is None


def test_failed_attempt_is_not_counted():
    run(_failed_attempt)


# -- loop data: post-process lease, speculation, stop, abort -------------------------------------


async def _finish_iteration_one(c: Cluster, tasks_per_node: int = 1) -> Block:
    n = len(c.daemons) * tasks_per_node
    threads = [c.spawn(full_task, c.env(t % len(c.daemons), f"task_{t}", num_tasks=n),
                       lambda data, t=t: Block.from_dict({0: np.array([1.0, float(t)])}))
               for t in range(n)]
    result = await c.coordinator.wait_result(1)
    await join_all(threads)
    return result


async def _lease_once_per_node() -> None:
    async with cluster(2) as c:
        result = await _finish_iteration_one(c)
        initial = c.coordinator.record(1).loop_data
        pp = CountingPostProcess()
        threads = [c.spawn(full_task, c.env(t % 2, f"task_{t}", iteration=2, num_tasks=8),
                           lambda data: Block.from_dict({0: np.ones(2)}), pp.for_node(f"n{t % 2}"))
                   for t in range(8)]
        await c.coordinator.wait_result(2)
        outs = await join_all(threads)
        assert pp.calls == {"n0": 1, "n1": 1}
        expected = pp.compute(result, initial)
        for data, _ in outs:
            np.testing.assert_array_equal(data, expected)


def test_post_process_runs_once_per_node():
    run(_lease_once_per_node)


async def _lease_says_converged() -> None:
    async with cluster(1) as c:
        await _finish_iteration_one(c)
        pp = CountingPostProcess(converge=True)
        threads = [c.spawn(full_task, c.env(0, f"task_{t}", iteration=2, num_tasks=3),
                           lambda data: Block.from_dict({0: np.ones(2)}), pp.for_node("n0"))
                   for t in range(3)]
        for t in threads:
            await t.join()
            assert isinstance(t.error, IterationStopped), repr(t.error)
        assert pp.calls == {"n0": 1}
        assert c.coordinator.record(2).claims == {}


def test_converged_post_process_stops_every_task_of_the_node():
    run(_lease_says_converged)


def take_lease_and_vanish(env: TaskEnv, took: threading.Event, release: threading.Event):
    """Get the post-process lease, then disconnect without answering."""
    leased = []

    def post_process(result, previous):
        leased.append(True)
        took.set()
        release.wait(JOIN_TIMEOUT)
        raise ConnectionAbortedError("the lease holder dies")

    client = TaskClient(env)
    client.start()
    try:
        client.loop_data(post_process)
    except ConnectionAbortedError:
        pass
    finally:
        client.close()
    return bool(leased)


async def _lease_holder_disconnects() -> None:
    async with cluster(1) as c:
        result = await _finish_iteration_one(c)
        initial = c.coordinator.record(1).loop_data
        took, release = threading.Event(), threading.Event()
        holder = c.spawn(take_lease_and_vanish, c.env(0, "task_0", iteration=2, num_tasks=2), took, release)
        assert await trio.to_thread.run_sync(took.wait, JOIN_TIMEOUT)
        pp = CountingPostProcess()
        waiter = c.spawn(full_task, c.env(0, "task_1", iteration=2, num_tasks=2),
                         lambda data: Block.from_dict({0: np.ones(2)}), pp.for_node("n0"))
        await trio.sleep(0.2)  # let the second task queue up behind the lease
        assert pp.calls == {}, "a second task ran post_process while the lease was held"
        release.set()
        assert (await holder.join()).value() is True
        data, accepted = (await waiter.join()).value()
        assert pp.calls == {"n0": 1}
        np.testing.assert_array_equal(data, pp.compute(result, initial))
        assert accepted


def test_lease_passes_on_when_holder_disconnects():
    run(_lease_holder_disconnects)


async def _speculative() -> None:
    async with cluster(2) as c:
        c.coordinator.set_num_tasks(1, 4)
        slow_go = threading.Event()

        def slow_task(env):
            with TaskClient(env) as client:
                client.start()
                client.loop_data(no_post_process)
                slow_go.wait(JOIN_TIMEOUT)
                return client.contribute(Block.from_dict({0: np.array([5.0, 5.0])}))

        first = [c.spawn(full_task, c.env(t % 2, f"task_{t}"),
                         lambda data, t=t: Block.from_dict({0: np.array([1.0, float(t)])}))
                 for t in range(3)]
        straggler = c.spawn(slow_task, c.env(1, "task_3"))
        await join_all(first)
        # Iteration 2 starts on both nodes while iteration 1 still collects.
        pp = CountingPostProcess()
        spec = [c.spawn(full_task, c.env(t % 2, f"task_{t}", iteration=2, num_tasks=4),
                        lambda data: Block.from_dict({0: np.ones(2)}), pp.for_node(f"n{t % 2}"))
                for t in range(4)]
        await wait_until(lambda: all(2 in c.node_session(i).iterations for i in range(2)),
                         what="iteration-2 tasks waiting on both nodes")
        await trio.sleep(0.1)
        assert c.coordinator.record(2).started, "TaskStarted of iteration 2 reached the coordinator"
        assert all(t.thread.is_alive() for t in spec), "speculative tasks must wait for iteration 1"
        assert c.coordinator.record(1).result is None
        slow_go.set()
        result = await c.coordinator.wait_result(1)
        assert_block_close(result, {0: np.array([8.0, 8.0])})
        assert (await straggler.join()).value() is True
        await c.coordinator.wait_result(2)
        outs = await join_all(spec)
        expected = pp.compute(result, c.coordinator.record(1).loop_data)
        for data, _ in outs:
            np.testing.assert_array_equal(data, expected)
        assert pp.calls == {"n0": 1, "n1": 1}


def test_speculative_tasks_wait_for_previous_iteration():
    run(_speculative)


def wait_for_loop_data(env: TaskEnv):
    with TaskClient(env) as client:
        client.start()
        return client.loop_data(no_post_process)


async def _waiting_tasks_then(end: str) -> None:
    async with cluster(2) as c:
        c.coordinator.set_num_tasks(1, 3)
        # Iteration 1 never completes (task_2 never runs), so iteration 2 waits.
        await join_all([c.spawn(full_task, c.env(t, f"task_{t}"), lambda data: Block.from_dict({0: np.ones(2)}))
                        for t in range(2)])
        waiting = [c.spawn(wait_for_loop_data, c.env(t % 2, f"task_{t}", iteration=2)) for t in range(4)]
        await wait_until(lambda: all(2 in c.node_session(i).iterations for i in range(2)),
                         what="iteration-2 tasks waiting on both nodes")
        if end == "stop":
            await c.coordinator.stop(2, converged=True, reason="converged after iteration 1")
            expected_error = IterationStopped
        else:
            c.coordinator.abort("the driver gave up")
            expected_error = SessionAborted
        for t in waiting:
            await t.join()
            assert isinstance(t.error, expected_error), repr(t.error)
        if end == "abort":
            assert "the driver gave up" in str(waiting[0].error)
            with pytest.raises(SessionAborted):
                await c.coordinator.wait_result(1)
        # A task that arrives after the stop is turned away at once, too.
        late = await c.spawn(wait_for_loop_data, c.env(0, "task_9", iteration=2)).join()
        assert isinstance(late.error, expected_error), repr(late.error)


def test_stop_releases_waiting_tasks_with_iteration_stopped():
    run(_waiting_tasks_then, "stop")


def test_abort_releases_waiting_tasks_with_session_aborted():
    run(_waiting_tasks_then, "abort")


# -- store fallback ----------------------------------------------------------------------------------


async def _lost_broadcast(uri: str, n_nodes: int, victim: str) -> None:
    # n0 is rank 0 (ids sort n0 < n1 < ...): it sends the result down the tree.
    async with cluster(n_nodes, checkpoint_uri=uri, fallback_timeout=0.5,
                       faults={0: f"drop:result:{victim}:1"}) as c:
        t0 = time.monotonic()
        result = await _finish_iteration_one(c, tasks_per_node=2)
        v = c.nodes.index(victim)
        await wait_until(lambda: c.node_result(v, 1) is not None, what="the victim's result")
        assert c.node_result(v, 1) == result
        for node in range(n_nodes):
            await wait_until(lambda: c.node_result(node, 1) is not None, what=f"n{node}'s result")
            assert c.node_result(node, 1) == result
        assert time.monotonic() - t0 < 8
        # The run goes on: the victim serves iteration 2 from the store's copy.
        pp = CountingPostProcess()
        threads = [c.spawn(full_task, c.env(node, f"task_{node}", iteration=2, num_tasks=n_nodes),
                           lambda data: Block.from_dict({0: np.ones(2)}), pp.for_node(c.nodes[node]))
                   for node in range(n_nodes)]
        await c.coordinator.wait_result(2)
        expected = pp.compute(result, c.coordinator.record(1).loop_data)
        for data, _ in await join_all(threads):
            np.testing.assert_array_equal(data, expected)
        assert c.coordinator.failure is None


@pytest.mark.parametrize("n_nodes,victim", [(2, "n1"), (4, "n1")])
def test_lost_result_broadcast_is_read_from_store(tmp_path, caplog, monkeypatch, n_nodes, victim):
    monkeypatch.setenv("HCOLLECTIVES_ALLREDUCE_SMALL", "tree")  # the tree's own fallback
    with caplog.at_level(logging.WARNING, logger="hcollectives"):
        run(_lost_broadcast, f"file://{tmp_path}/ckpt", n_nodes, victim)
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"dropped result to {victim}" in msg for msg in messages)
    assert any(msg.startswith(f"node {victim}: iteration 1: result missing") for msg in messages)


async def _arrives_during_store_read(uri: str, lost: str) -> None:
    """A message the store fallback is reading a copy of arrives over TCP meanwhile.

    4 nodes, fanout 2: n0 -> (n1, n2), n1 -> n3.
    lost="result": the result to n1 is lost, so n1 and its child n3 both time
    out; n3 is still (slowly) reading the store's copy when n1, having read
    it fast, forwards the result down over TCP.
    lost="partial": n3's partial to n1 is lost, so n1 and n0 both time out
    waiting for partials; n0 is still (slowly) reading n1's subtree from the
    store when n1, having read n3's piece fast, sends its partial up.
    """
    faults = {0: "drop:result:n1:1"} if lost == "result" else {3: "drop:partial:n1:1"}
    # node -> seconds per store read: the reader whose read must be overtaken is
    # slow; the one that sends the TCP copy is a little slow too, so the copy
    # lands inside the window [fallback_timeout, fallback_timeout + slow read].
    slow = {3: 0.8, 1: 0.2} if lost == "result" else {0: 0.6, 1: 0.3}
    watched = 3 if lost == "result" else 0
    async with cluster(4, checkpoint_uri=uri, fallback_timeout=0.5, faults=faults) as c:
        c.coordinator.set_num_tasks(1, 4)
        go = threading.Event()

        def gated_task(env, t):
            with TaskClient(env) as client:
                client.start()
                client.loop_data(no_post_process)
                go.wait(JOIN_TIMEOUT)
                return client.contribute(Block.from_dict({0: np.array([1.0, float(t)])}))

        threads = [c.spawn(gated_task, c.env(t, f"task_{t}"), t) for t in range(4)]
        await wait_until(lambda: all(SESSION in d.sessions for d in c.daemons), what="every node to join")
        finished: list[str] = []

        def slowed(node, delay):
            real_load = c.node_session(node).store.load_block

            def slow_load(path):
                time.sleep(delay)
                block = real_load(path)
                if node == watched:
                    finished.append(path)
                return block

            return slow_load

        for node, delay in slow.items():
            c.node_session(node).store.load_block = slowed(node, delay)  # that node's reads only
        go.set()
        result = await c.coordinator.wait_result(1)
        assert all(accepted for accepted in await join_all(threads))
        assert_block_close(result, {0: np.array([4.0, 6.0])})
        for node in range(4):
            await wait_until(lambda: c.node_result(node, 1) is not None, what=f"n{node}'s result")
            assert c.node_result(node, 1) == result
        # The slow reads (n3: the result; n0: the pieces of task_1 and task_3)
        # finish after the TCP copy came in; that must not count as a second copy.
        await wait_until(lambda: len(finished) == (1 if lost == "result" else 2), what="the slow store reads")
        await trio.sleep(0.2)
        assert c.coordinator.failure is None


@pytest.mark.parametrize("lost", ["result", "partial"])
def test_copy_arriving_during_store_fallback_read_is_not_a_second_one(tmp_path, caplog, monkeypatch, lost):
    monkeypatch.setenv("HCOLLECTIVES_ALLREDUCE_SMALL", "tree")
    with caplog.at_level(logging.WARNING, logger="hcollectives"):
        run(_arrives_during_store_read, f"file://{tmp_path}/ckpt", lost)
    messages = [r.getMessage() for r in caplog.records]
    if lost == "result":
        assert any(msg.startswith("node n3: iteration 1: result missing") for msg in messages)
    else:
        assert any(msg.startswith("node n0: iteration 1: partial of rank 1 missing") for msg in messages)
        assert any(msg.startswith("node n1: iteration 1: partial of rank 3 missing") for msg in messages)


async def _lost_broadcast_without_store() -> None:
    async with cluster(2, fallback_timeout=0.3, faults={0: "drop:result:n1:1"}) as c:
        await _finish_iteration_one(c)  # rank 0 still hands the coordinator its result
        await wait_until(lambda: c.coordinator.failure, what="the session to abort")
        assert "n1" in c.coordinator.failure and "no store" in c.coordinator.failure
        assert c.node_result(1, 1) is None
        # The victim's daemon reported the failure; it did not crash.
        pp = CountingPostProcess()
        waiting = await c.spawn(full_task, c.env(1, "task_1", iteration=2), lambda data: Block.empty(),
                                pp.for_node("n1")).join()
        assert isinstance(waiting.error, SessionAborted), repr(waiting.error)


def test_lost_broadcast_without_store_aborts_cleanly(monkeypatch):
    monkeypatch.setenv("HCOLLECTIVES_ALLREDUCE_SMALL", "tree")
    run(_lost_broadcast_without_store)


# -- recursive doubling (the default small-block AllReduce) -------------------------------------


async def _doubling(n_nodes: int, uri: str, faults: dict) -> None:
    from hcollectives.algorithms.doubling_allreduce import reference_result

    rng = np.random.default_rng(7)
    # Magnitudes from 1e-8 to 1e8: any other grouping of the sum changes the last bits.
    blocks = [Block.from_dict({k: rng.standard_normal(3) * 10.0 ** rng.integers(-8, 8) for k in range(4)})
              for _ in range(n_nodes)]
    async with cluster(n_nodes, checkpoint_uri=uri, fallback_timeout=0.5, faults=faults) as c:
        c.coordinator.set_num_tasks(1, n_nodes)
        threads = [c.spawn(full_task, c.env(t, f"task_{t}"), lambda data, t=t: blocks[t]) for t in range(n_nodes)]
        result = await c.coordinator.wait_result(1)
        await join_all(threads)
        expected = reference_result(blocks, "sum")
        for node in range(n_nodes):
            await wait_until(lambda: c.node_result(node, 1) is not None, what=f"n{node}'s result")
            got = c.node_result(node, 1)
            assert got.keys == expected.keys and got.values.tobytes() == expected.values.tobytes()
        assert result.values.tobytes() == expected.values.tobytes()
        assert c.coordinator.failure is None


@pytest.mark.parametrize("n_nodes", [2, 3, 4, 5])
def test_doubling_allreduce_is_bit_identical_everywhere_and_equals_the_reference(tmp_path, n_nodes):
    run(_doubling, n_nodes, "", {})


@pytest.mark.parametrize("n_nodes,faults", [(4, {0: "drop:doubling_step:n1:1"}), (3, {0: "drop:doubling_step:n2:1"})])
def test_lost_doubling_step_is_rebuilt_from_the_store_with_the_same_bits(tmp_path, caplog, n_nodes, faults):
    with caplog.at_level(logging.WARNING, logger="hcollectives"):
        run(_doubling, n_nodes, f"file://{tmp_path}/ckpt", faults)
    messages = [r.getMessage() for r in caplog.records]
    assert any("fault injection dropped doubling_step" in msg for msg in messages)
    assert any("recursive doubling incomplete" in msg for msg in messages)


async def _lost_piece(uri: str) -> None:
    async with cluster(3, collective="allgather", op="none", checkpoint_uri=uri, fallback_timeout=0.5,
                       faults={1: "drop:piece:*:1"}) as c:
        matrix = np.arange(6 * 2, dtype=float).reshape(6, 2)
        threads = [c.spawn(full_task, c.env(t % 3, f"task_{t}", num_tasks=6),
                           lambda data, t=t: Block.from_matrix((t,), matrix[t:t + 1]))
                   for t in range(6)]
        result = await c.coordinator.wait_result(1)
        await join_all(threads)
        np.testing.assert_array_equal(block_to_matrix(result), matrix)
        for node in range(3):
            await wait_until(lambda: c.node_result(node, 1) is not None, what=f"n{node}'s gather")
            np.testing.assert_array_equal(block_to_matrix(c.node_result(node, 1)), matrix)
        assert c.coordinator.failure is None


def test_lost_allgather_piece_is_read_from_store(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hcollectives"):
        run(_lost_piece, f"file://{tmp_path}/ckpt")
    messages = [r.getMessage() for r in caplog.records]
    assert any(msg.startswith("node n1: fault injection dropped piece") for msg in messages)
    # n1's pieces (task_1, task_4) reach the other two nodes only through the store.
    for node in ("n0", "n2"):
        for task in ("task_1", "task_4"):
            assert any(msg.startswith(f"node {node}: iteration 1: piece {task}/{task}_a0 missing") for msg in messages)


async def _checkpoints(uri: str) -> None:
    async with cluster(2, checkpoint_uri=uri) as c:
        await _finish_iteration_one(c, tasks_per_node=2)
        store = st.Store(uri, timeout=5)
        for t in range(4):
            path = st.contribution_path(SESSION, 1, f"task_{t}", f"task_{t}_a0")
            await trio.to_thread.run_sync(store.wait_for, path, 5.0)
            block = await trio.to_thread.run_sync(store.load_block, path)
            assert block == Block.from_dict({0: np.array([1.0, float(t)])})
        # rank 0 also keeps the result there (the fallback source of a lost broadcast)
        await trio.to_thread.run_sync(store.wait_for, st.result_path(SESSION, 1), 5.0)


def test_contributions_are_checkpointed(tmp_path):
    run(_checkpoints, f"file://{tmp_path}/ckpt")


# -- authentication, bad data, lifetime ------------------------------------------------------------


def start_with(env: TaskEnv):
    client = TaskClient(env)
    try:
        client.start()
    finally:
        client.close()


async def _wrong_secret() -> None:
    async with cluster(2) as c:
        bad = await c.spawn(start_with, c.env(0, "task_0", secret=OTHER_SECRET)).join()
        assert isinstance(bad.error, HCollectivesError), repr(bad.error)
        with pytest.raises(HCollectivesError):
            await connect(c.addresses[1], role="peer", name="intruder", secret=OTHER_SECRET, timeout=5)
        await wait_until(lambda: c.daemons[0].rejected_connections and c.daemons[1].rejected_connections,
                         what="both rejections recorded")
        assert SESSION not in c.daemons[0].sessions, "a rejected task must not join a session"
        result = await _finish_iteration_one(c, tasks_per_node=2)
        assert_block_close(result, {0: np.array([4.0, 6.0])})


def test_wrong_secret_is_rejected_and_daemon_keeps_serving():
    run(_wrong_secret)


async def _shape_mismatch(same_node: bool) -> None:
    async with cluster(2) as c:
        nodes = (0, 0) if same_node else (0, 1)
        threads = [c.spawn(full_task, c.env(nodes[t], f"task_{t}", num_tasks=2),
                           lambda data, t=t: Block.from_dict({0: np.ones(2 + t)}))
                   for t in range(2)]
        with pytest.raises(SessionAborted) as info:
            await c.coordinator.wait_result(1)
        assert "length" in str(info.value)
        assert "ShapeMismatch" in str(info.value) or "key 0" in str(info.value)
        await join_all(threads)


@pytest.mark.parametrize("same_node", [True, False], ids=["one-node", "across-nodes"])
def test_shape_mismatch_aborts_the_session(same_node):
    run(_shape_mismatch, same_node)


async def _daemon_exits_when_coordinator_goes() -> None:
    config = SessionConfig(SESSION, SECRET, "allreduce", "sum", 2, "", 5.0, 1)
    coordinator = Coordinator(config, np.zeros((1, 2)))
    daemon = NodeDaemon(node="n0", secret=SECRET, timeouts=TIMEOUTS, exit_when_idle=True)
    exited = trio.Event()

    async def run_daemon(task_status=trio.TASK_STATUS_IGNORED):
        await daemon.run(task_status=task_status)
        exited.set()

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as coord_nursery:
            caddr = await coord_nursery.start(coordinator.serve)
            addr = await outer.start(run_daemon)
            env = TaskEnv(SESSION, caddr, SECRET, 1, "task_0", "task_0_a0", 1, "n0", "/nonexistent",
                          addr, "test", TASK_TIMEOUT)
            t = TaskThread(full_task, env, lambda data: Block.from_dict({0: np.ones(2)})).start()
            await coordinator.wait_result(1)
            await t.join()
            assert t.value()[1] is True
            assert SESSION in daemon.sessions
            coord_nursery.cancel_scope.cancel()  # the driver goes away
        t0 = time.monotonic()
        with trio.fail_after(5):  # far below TIMEOUTS.idle_exit (30 s)
            await exited.wait()
        assert time.monotonic() - t0 < 5
        assert daemon.sessions == {}


def test_daemon_exits_when_its_only_session_ends():
    run(_daemon_exits_when_coordinator_goes)


async def _daemon_exits_when_no_session_arrives() -> None:
    daemon = NodeDaemon(node="n0", secret=SECRET,
                        timeouts=Timeouts(connect=5, idle_exit=0.3), exit_when_idle=True)
    with trio.fail_after(5):
        await daemon.run()


def test_daemon_exits_when_no_session_ever_arrives():
    run(_daemon_exits_when_no_session_arrives)


async def _service_daemon_stays() -> None:
    daemon = NodeDaemon(node="n0", secret=SECRET,
                        timeouts=Timeouts(connect=5, idle_exit=0.1), exit_when_idle=False)
    exited = []

    async def run_daemon(task_status=trio.TASK_STATUS_IGNORED):
        await daemon.run(task_status=task_status)
        exited.append(True)

    async with trio.open_nursery() as nursery:
        await nursery.start(run_daemon)
        await trio.sleep(0.5)  # five idle periods
        assert not exited
        nursery.cancel_scope.cancel()


def test_service_daemon_does_not_exit_when_idle():
    run(_service_daemon_stays)


async def _service_removes_split_cache_of_ended_session(tmp_path) -> None:
    from hcollectives.services.rendezvous import default_rundir

    cache = os.path.join(default_rundir(SESSION), "split-cache")
    os.makedirs(cache)
    open(os.path.join(cache, "entry.npy"), "wb").close()
    config = SessionConfig(SESSION, SECRET, "allreduce", "sum", 2, "", 5.0, 1)
    coordinator = Coordinator(config, np.zeros((1, 2)))
    daemon = NodeDaemon(node="n0", secret=SECRET, timeouts=TIMEOUTS, exit_when_idle=False)
    async with trio.open_nursery() as outer:
        addr = await outer.start(daemon.run)
        async with trio.open_nursery() as coord_nursery:
            caddr = await coord_nursery.start(coordinator.serve)
            env = TaskEnv(SESSION, caddr, SECRET, 1, "task_0", "task_0_a0", 1, "n0", "/nonexistent",
                          addr, "test", TASK_TIMEOUT)
            t = TaskThread(full_task, env, lambda data: Block.from_dict({0: np.ones(2)})).start()
            await coordinator.wait_result(1)
            await t.join()
            assert os.path.isdir(cache)  # in use while the session runs
            coord_nursery.cancel_scope.cancel()  # the driver goes away: the session ends
        await wait_until(lambda: not os.path.exists(cache), what="the split cache to go")
        assert SESSION not in daemon.sessions
        outer.cancel_scope.cancel()  # a service keeps running; the test stops it


def test_service_removes_the_split_cache_when_a_session_ends(tmp_path, monkeypatch):
    monkeypatch.setenv("HCOLLECTIVES_NODE_TMP", str(tmp_path))
    run(_service_removes_split_cache_of_ended_session, tmp_path)


# -- ring AllReduce (big blocks of one layout) -------------------------------------------------


async def _ring_allreduce(n_nodes: int, uri: str, faults: dict[int, str] | None) -> None:
    from hcollectives.algorithms.ring_allreduce import RING_MIN_BYTES, reference_result
    from hcollectives.algorithms.reduction import reduce_blocks

    width = RING_MIN_BYTES // 8 + 5  # big enough for the ring, not a multiple of the ring size
    rng = np.random.default_rng(n_nodes)
    async with cluster(n_nodes, checkpoint_uri=uri, fallback_timeout=0.5, faults=faults) as c:
        placement = [node for node in range(n_nodes) for _ in range(1 + node % 2)]
        blocks = [Block.from_dict({0: rng.uniform(-1, 1, width), "x": rng.uniform(-1, 1, 3)})
                  for _ in placement]
        c.coordinator.set_num_tasks(1, len(placement))
        threads = [c.spawn(full_task, c.env(node, f"task_{t:02d}"), lambda data, b=blocks[t]: b)
                   for t, node in enumerate(placement)]
        result = await c.coordinator.wait_result(1)
        assert all(accepted for _, accepted in await join_all(threads))
        # node-level blocks (tasks in id order), folded in ring order: the exact bits
        locals_ = [reduce_blocks([blocks[t] for t, n in enumerate(placement) if n == node], "sum")
                   for node in range(n_nodes)]
        assert result.values.tobytes() == reference_result(locals_, "sum").values.tobytes()
        for node in range(n_nodes):
            await wait_until(lambda: c.node_result(node, 1) is not None, what=f"n{node}'s result")
            assert c.node_result(node, 1).values.tobytes() == result.values.tobytes()
        assert c.coordinator.failure is None


@pytest.mark.parametrize("n_nodes", [2, 3, 4])
def test_big_blocks_of_one_layout_run_as_a_ring(n_nodes):
    run(_ring_allreduce, n_nodes, "", None)


def test_lost_ring_chunk_is_rebuilt_from_the_store_with_the_same_bits(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="hcollectives"):
        run(_ring_allreduce, 3, f"file://{tmp_path}/ckpt", {1: "drop:ring_chunk:n2:1"})
    messages = [r.getMessage() for r in caplog.records]
    assert any("dropped ring_chunk to n2" in msg for msg in messages)
    assert any("ring incomplete" in msg for msg in messages)


def test_a_peer_message_that_arrives_during_our_join_waits_for_it_instead_of_being_dropped():
    """A peer pushes to us as soon as the coordinator lists us, which can be
    before we have read our own SessionInfo (first iteration, 4 daemons
    starting at once): an AllGather piece dropped then never comes again."""
    from hcollectives.errors import ConnectionLost
    from hcollectives.protocol import messages as msg

    piece = msg.Piece("sess", 1, "t2", "a0", Block.from_dict({0: np.ones(2)}))
    got: list = []

    class Session:
        async def on_peer_event(self, event) -> None:
            got.append(event)

    class Channel:
        label = "peer n2"

        def __init__(self) -> None:
            self.events = [piece]

        async def receive(self, timeout=None):
            if self.events:
                return self.events.pop()
            raise ConnectionLost("no more")

    async def main() -> None:
        daemon = NodeDaemon(node="n1", secret=SECRET, timeouts=TIMEOUTS)
        async with trio.open_nursery() as nursery:
            joining = trio.Event()

            async def join() -> None:
                async with daemon._join_lock:  # a join in progress
                    joining.set()
                    await trio.sleep(0.2)
                    daemon.sessions["sess"] = Session()
                    daemon._notify()
                daemon._notify()

            nursery.start_soon(join)
            await joining.wait()
            with pytest.raises(ConnectionLost):
                await daemon._handle_peer(Channel())
        assert got == [piece]

    trio.run(main)


def test_a_silent_peer_connection_times_out_and_handling_a_message_is_not_counted_as_silence():
    """The peer reader's one deadline (moved on before each read, lifted while
    a message is handled) still ends a peer connection idle for task_idle,
    and a slow handler is not cut off by it."""
    from hcollectives.errors import CollectiveTimeout
    from hcollectives.protocol import messages as msg

    step = msg.HasResult("sess", "n2", 1)  # any message for the session
    handled: list = []

    class Session:
        async def on_peer_event(self, event) -> None:
            await trio.sleep(0.5)  # longer than task_idle: must not be cancelled
            handled.append(event)

    class Channel:
        label = "peer n2"

        def __init__(self) -> None:
            self.events = [step, step]

        async def receive(self, timeout=None):
            assert timeout is None  # the deadline is the reader's own
            if self.events:
                await trio.sleep(0.1)  # within task_idle
                return self.events.pop()
            await trio.sleep_forever()

    async def main() -> None:
        daemon = NodeDaemon(node="n1", secret=SECRET, timeouts=Timeouts(connect=5, task_idle=0.3))
        daemon.sessions["sess"] = Session()
        start = trio.current_time()
        with trio.fail_after(5), pytest.raises(CollectiveTimeout, match="0.3s waiting for a message from peer n2"):
            await daemon._handle_peer(Channel())
        assert handled == [step, step]
        assert trio.current_time() - start >= 2 * 0.6 + 0.3

    trio.run(main)


# -- a Seal that reaches a daemon twice -------------------------------------------------------


async def _seal_delivered_twice(n_nodes: int) -> None:
    async with cluster(n_nodes) as c:
        broadcast = c.coordinator._broadcast

        async def every_seal_twice(event: m.Message) -> None:
            await broadcast(event)
            if isinstance(event, m.Seal):
                await broadcast(event)

        c.coordinator._broadcast = every_seal_twice
        n_tasks = 2 * n_nodes
        c.coordinator.set_num_tasks(1, n_tasks)
        blocks = [Block.from_dict({0: np.array([t + 0.25, 1.0])}) for t in range(n_tasks)]
        threads = [c.spawn(full_task, c.env(t % n_nodes, f"task_{t}"), lambda data, b=blocks[t]: b)
                   for t in range(n_tasks)]
        result = await c.coordinator.wait_result(1)
        await join_all(threads)
        assert c.coordinator.failure is None, c.coordinator.failure
        assert_block_close(result, {0: sum(b.to_dict()[0] for b in blocks)})


@pytest.mark.parametrize("n_nodes", [2, 3, 4])
def test_a_seal_delivered_twice_runs_one_collective(n_nodes):
    """A successor daemon can get an iteration's Seal twice: broadcast while it
    joins, and re-sent because it rejoined (coordinator._resend_seals). It must
    run that collective once: a second one sent every peer duplicate steps,
    and from 3 nodes on they aborted the run ("duplicate step-0 message")."""
    run(_seal_delivered_twice, n_nodes)
