"""Tests for `hcollectives.algorithms.gather`: assembling an AllGather on every node.

The simulation gives each node the pieces of its own tasks, then broadcasts
every piece (including pieces of task attempts that do not count) to every
node in a seeded random order with duplicate deliveries, and tells each node
the expected set at a random moment, as the real service would when the job
tracker reports which attempts succeeded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest

from hcollectives.algorithms.block import Block
from hcollectives.algorithms.gather import GatherAssembly
from hcollectives.algorithms.reduction import block_to_matrix
from hcollectives.errors import BadMapperOutput, ShapeMismatch

WIDTH = 3


@dataclass(frozen=True, slots=True)
class Job:
    pieces: dict[str, Block]     # every piece that will be sent, counting or not
    expected: frozenset[str]     # the pieces that count
    reference: np.ndarray        # rows of the counting pieces, by row index
    owner: dict[str, int]        # which node ran each piece's task


def make_job(n_nodes: int, n_tasks: int, n_stale: int, seed: int) -> Job:
    rng = np.random.default_rng(seed)
    n_rows = n_tasks * 4
    matrix = rng.normal(size=(n_rows, WIDTH))
    # each counting task owns a random, non-contiguous set of rows
    assignment = rng.integers(0, n_tasks, size=n_rows)
    assignment[:n_tasks] = np.arange(n_tasks)  # every task owns at least one row
    pieces: dict[str, Block] = {}
    for t in range(n_tasks):
        rows = np.flatnonzero(assignment == t)
        pieces[f"task_{t:03d}"] = Block.from_matrix(tuple(int(r) for r in rows), matrix[rows])
    expected = frozenset(pieces)
    # stale attempts re-claim rows of counting tasks with different values: if
    # one leaked into the result, merge_disjoint would fail or the rows differ
    for s in range(n_stale):
        rows = np.sort(rng.choice(n_rows, size=3, replace=False))
        pieces[f"task_{s:03d}_attempt_stale"] = Block.from_matrix(
            tuple(int(r) for r in rows), rng.normal(size=(3, WIDTH)) + 100.0)
    owner = {p: int(rng.integers(0, n_nodes)) for p in sorted(pieces)}
    return Job(pieces, expected, matrix, owner)


@dataclass
class Stats:
    accepted: int = 0     # add() returned True for a network delivery
    duplicates: int = 0   # add() returned False
    rejected: int = 0     # stale piece refused after sealing
    dropped: int = 0      # stale piece discarded by expect()


def simulate(job: Job, n_nodes: int, seed: int, *,
             lose: tuple[int, str] | None = None) -> tuple[list[GatherAssembly], Stats]:
    """Run one AllGather; *lose* = (node, piece) drops every network copy of that piece to that node."""
    rng = random.Random(seed)
    nodes = [GatherAssembly() for _ in range(n_nodes)]
    for piece_id in sorted(job.pieces):  # each node first holds its own tasks' pieces
        assert nodes[job.owner[piece_id]].add(piece_id, job.pieces[piece_id]) is True
    # every piece goes to every node, its owner included (an echo is just a duplicate)
    deliveries = [(node, piece_id) for node in range(n_nodes) for piece_id in job.pieces]
    deliveries += rng.sample(deliveries, k=len(deliveries) // 3)  # retransmits
    deliveries = [d for d in deliveries if d != lose]
    rng.shuffle(deliveries)
    # each node learns the expected set somewhere in the stream (maybe first, maybe last)
    seal_at = {node: rng.randint(0, len(deliveries)) for node in range(n_nodes)}
    stats = Stats()
    for step, (node, piece_id) in enumerate(deliveries + [(None, None)]):
        for n, at in seal_at.items():
            if at == step:
                held_before = set(nodes[n].held())
                nodes[n].expect(job.expected)
                assert set(nodes[n].held()) == held_before & job.expected  # stale pieces dropped
                stats.dropped += len(held_before - job.expected)
        if node is None:
            break
        assembly = nodes[node]
        if assembly.sealed and piece_id not in job.expected:
            with pytest.raises(ValueError, match="not one of the"):
                assembly.add(piece_id, job.pieces[piece_id])
            stats.rejected += 1
            continue
        held_before = piece_id in assembly.held()
        added = assembly.add(piece_id, job.pieces[piece_id])
        assert added is (not held_before)
        stats.accepted += added
        stats.duplicates += not added
    return nodes, stats


@pytest.mark.parametrize("n_nodes, n_tasks, n_stale", [(1, 3, 1), (2, 5, 2), (4, 9, 3), (7, 20, 5), (3, 1, 0)])
@pytest.mark.parametrize("seed", range(4))
def test_every_node_assembles_the_same_matrix(n_nodes: int, n_tasks: int, n_stale: int, seed: int) -> None:
    job = make_job(n_nodes, n_tasks, n_stale, seed)
    nodes, stats = simulate(job, n_nodes, seed)
    assert stats.duplicates > 0
    # bookkeeping: own pieces + accepted deliveries - dropped stale = what every node ends with
    assert len(job.pieces) + stats.accepted - stats.dropped == n_nodes * len(job.expected)
    # every (node, stale piece) pair was either dropped on sealing or refused after it
    assert stats.dropped + stats.rejected >= n_nodes * n_stale
    matrices = [node.matrix() for node in nodes]
    for node, matrix in zip(nodes, matrices):
        assert node.done and node.missing() == ()
        assert node.held() == tuple(sorted(job.expected))
        assert matrix.tobytes() == matrices[0].tobytes()
        np.testing.assert_array_equal(matrix, job.reference)
    assert nodes[0].result() == Block.from_matrix(tuple(range(len(job.reference))), job.reference)


def test_missing_reports_a_dropped_delivery() -> None:
    job = make_job(n_nodes=4, n_tasks=8, n_stale=2, seed=11)
    victim = 2
    lost = next(p for p in sorted(job.expected) if job.owner[p] != victim)
    nodes, _ = simulate(job, 4, seed=3, lose=(victim, lost))
    for rank, node in enumerate(nodes):
        if rank == victim:
            assert not node.done and node.missing() == (lost,)
            with pytest.raises(ValueError, match=lost):
                node.result()
        else:
            assert node.done
    # the service fetches the piece from the durable store after its deadline
    assert nodes[victim].add(lost, job.pieces[lost]) is True
    assert nodes[victim].done and nodes[victim].missing() == ()
    np.testing.assert_array_equal(nodes[victim].matrix(), nodes[0].matrix())


# -- unit behaviour ----------------------------------------------------------------


def piece(*rows: int, value: float = 1.0) -> Block:
    return Block.from_dict({r: [value, float(r)] for r in rows})


def test_expect_after_arrivals_drops_unexpected_pieces() -> None:
    g = GatherAssembly()
    assert not g.sealed and g.expected is None and not g.done
    assert g.add("t1", piece(0, 1)) and g.add("t1_stale", piece(1, 2)) and g.add("t2", piece(2))
    g.expect(["t1", "t2", "t3"])
    assert g.sealed and g.expected == {"t1", "t2", "t3"}
    assert g.held() == ("t1", "t2") and g.missing() == ("t3",)
    g.add("t3", piece(3))
    assert g.done
    np.testing.assert_array_equal(g.matrix()[:, 1], [0.0, 1.0, 2.0, 3.0])


def test_add_ignores_duplicates_and_keeps_the_first_copy() -> None:
    g = GatherAssembly()
    first = piece(0, value=1.0)
    assert g.add("t", first) is True
    assert g.add("t", piece(0, value=2.0)) is False
    g.expect({"t"})
    assert g.add("t", piece(0, value=3.0)) is False  # still a duplicate after sealing, not an error
    assert g.result().values[0] == 1.0


def test_add_after_sealing_rejects_unexpected_pieces() -> None:
    g = GatherAssembly()
    g.expect(("a",))
    with pytest.raises(ValueError, match="'b'"):
        g.add("b", piece(0))
    assert g.held() == () and g.missing() == ("a",)


def test_expect_is_idempotent_but_not_changeable() -> None:
    g = GatherAssembly()
    g.expect(iter(["a", "b"]))
    g.expect(["b", "a", "a"])  # same set, re-announced
    with pytest.raises(ValueError, match="different set"):
        g.expect(["a"])
    assert g.expected == {"a", "b"}


def test_missing_is_sorted() -> None:
    g = GatherAssembly()
    g.add("m", piece(5))
    g.expect(["z", "m", "a", "k"])
    assert g.missing() == ("a", "k", "z")


def test_empty_gather_is_done_immediately() -> None:
    g = GatherAssembly()
    g.expect([])
    assert g.done and g.missing() == ()
    assert g.result() == Block.empty() and g.matrix().shape == (0, 0)


def test_state_queries_before_expect() -> None:
    g = GatherAssembly()
    g.add("a", piece(0))
    with pytest.raises(ValueError, match="expect"):
        g.missing()
    with pytest.raises(ValueError, match="expect"):
        g.result()


def test_result_is_merged_in_piece_id_order_and_cached() -> None:
    g = GatherAssembly()
    g.expect(["b", "a"])
    g.add("b", Block.from_dict({"y": [1.0]}))
    g.add("a", Block.from_dict({"x": [2.0]}))
    result = g.result()
    assert result.keys == ("x", "y")
    assert g.result() is result


def test_overlapping_rows_between_counting_pieces_are_a_job_bug() -> None:
    g = GatherAssembly()
    g.expect(["a", "b"])
    g.add("a", piece(0, 1))
    g.add("b", piece(1, 2))
    with pytest.raises(BadMapperOutput, match="row key 1"):
        g.result()


def test_matrix_errors_propagate() -> None:
    g = GatherAssembly()
    g.expect(["a", "b"])
    g.add("a", Block.from_dict({0: [1.0]}))
    g.add("b", Block.from_dict({1: [1.0, 2.0]}))
    with pytest.raises(ShapeMismatch):
        g.matrix()


def test_argument_types_are_checked() -> None:
    g = GatherAssembly()
    with pytest.raises(TypeError):
        g.add(1, piece(0))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        g.add("a", {0: [1.0]})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        g.expect("abc")
    with pytest.raises(TypeError):
        g.expect([1, 2])  # type: ignore[list-item]
    assert not g.sealed


# -- services/exchange/gather.py: the daemon's side -------------------------------------------


class _FakeState:
    def __init__(self) -> None:
        from hcollectives.algorithms.gather import GatherAssembly

        self.gather, self.pushed, self.result = GatherAssembly(), {}, None


class _FakeSession:
    """The SessionView an exchange sees; background sends run in a real nursery."""

    def __init__(self, node: str, members: list[str], nursery) -> None:
        self.node, self.session, self.members, self.nursery = node, "s", members, nursery
        self.state = _FakeState()
        self.sent: list[tuple[str, object]] = []
        self.finished: list = []

    def it(self, iteration: int) -> _FakeState:
        return self.state

    async def send_quietly(self, node: str, event) -> None:
        self.sent.append((node, event))

    async def finish(self, iteration: int, result) -> None:
        self.state.result = result
        self.finished.append(result)


def test_a_piece_is_pushed_once_to_each_member_and_a_complete_gather_finishes_at_the_seal():
    import trio

    from hcollectives.protocol import messages as msg
    from hcollectives.services.exchange import gather as exchange

    mine, theirs, loser = (Block.from_matrix((k,), np.array([[float(k)]])) for k in (0, 1, 2))
    seal = msg.Seal("s", 1, ["n0", "n1"], ["a:1", "a:2"], [["t0", "a0", "n0"], ["t1", "a1", "n1"]])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            session = _FakeSession("n0", ["n0", "n1"], nursery)
            # Pushed when the Contribute arrives (claim in flight), then again
            # when the claim is accepted: the member gets it once.
            exchange.push_piece(session, 1, "t0", "a0", mine)
            exchange.push_piece(session, 1, "t0", "a0", mine)
        assert [(n, e.task) for n, e in session.sent] == [("n1", "t0")]
        session.state.gather.add("t0/a0", mine)
        session.state.gather.add("t2/a9", loser)  # an attempt whose claim lost: not in the seal
        await exchange.finish_if_complete(session, seal)
        assert session.finished == []  # t1's piece is still missing
        session.state.gather.add("t1/a1", theirs)
        await exchange.finish_if_complete(session, seal)
        assert len(session.finished) == 1
        np.testing.assert_array_equal(block_to_matrix(session.finished[0]), [[0.0], [1.0]])

    trio.run(main)
