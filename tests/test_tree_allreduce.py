"""Tests for `hcollectives.algorithms.tree_allreduce`, driven over an in-memory network.

`Network` holds one `TreeAllReduce` per rank and a queue of in-flight
messages. Delivery is FIFO or, with a seeded `random.Random`, in a random
order (any message in flight may be delivered next), which is the freedom a
real network has. A `drop` predicate loses chosen messages so tests can play
the part of the store fallback.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcollectives.algorithms.block import Block, Key
from hcollectives.algorithms.reduction import OPS
from hcollectives.algorithms.topology import Tree
from hcollectives.algorithms.tree_allreduce import Send, TreeAllReduce
from hcollectives.errors import ConfigurationError

ALL_OPS = sorted(OPS)


@dataclass(frozen=True, slots=True)
class Flight:
    src: int
    send: Send


@dataclass
class Network:
    nodes: list[TreeAllReduce]
    rng: random.Random | None = None  # None: FIFO delivery
    drop: Callable[[Flight], bool] = lambda flight: False
    in_flight: list[Flight] = field(default_factory=list)
    delivered: list[Flight] = field(default_factory=list)
    dropped: list[Flight] = field(default_factory=list)

    @classmethod
    def build(cls, tree: Tree, op: str, locals_: list[Block], **kwargs: object) -> "Network":
        return cls([TreeAllReduce(r, tree, op, locals_[r]) for r in range(tree.size)], **kwargs)  # type: ignore[arg-type]

    def post(self, src: int, sends: list[Send]) -> None:
        for send in sends:
            assert send.kind in ("partial", "result") and isinstance(send.block, Block)
            self.in_flight.append(Flight(src, send))

    def start_all(self) -> None:
        order = list(range(len(self.nodes)))
        if self.rng is not None:
            self.rng.shuffle(order)
        for rank in order:
            self.post(rank, self.nodes[rank].start())

    def run(self) -> None:
        while self.in_flight:
            index = 0 if self.rng is None else self.rng.randrange(len(self.in_flight))
            flight = self.in_flight.pop(index)
            if self.drop(flight):
                self.dropped.append(flight)
                continue
            self.delivered.append(flight)
            node = self.nodes[flight.send.dest]
            if flight.send.kind == "partial":
                self.post(node.rank, node.receive_partial(flight.src, flight.send.block))
            else:
                self.post(node.rank, node.receive_result(flight.send.block))

    def results(self) -> list[Block]:
        assert all(n.done for n in self.nodes), [n for n in self.nodes if not n.done]
        return [n.result for n in self.nodes]  # type: ignore[misc]


def make_locals(size: int, seed: int, *, op: str) -> list[Block]:
    """One block per rank over a shared key universe: random key subsets, fixed width per key."""
    rng = np.random.default_rng(seed)
    universe: list[Key] = [0, 1, 2, 7, "alpha", "beta"]
    widths = {k: int(rng.integers(1, 5)) for k in universe}
    blocks = []
    for rank in range(size):
        # every third rank carries every key, exercising the same-layout fast path too
        keys = universe if rank % 3 == 0 else [k for k in universe if rng.random() < 0.6]
        # near 1 so that prod over 12 ranks stays well inside float64 range
        low, high = (0.5, 1.5) if op == "prod" else (-10.0, 10.0)
        blocks.append(Block.from_dict({k: rng.uniform(low, high, size=widths[k]) for k in keys}))
    return blocks


def reference(locals_: list[Block], op: str) -> dict[Key, np.ndarray]:
    collected: dict[Key, list[np.ndarray]] = {}
    for block in locals_:
        for key, vec in block.items():
            collected.setdefault(key, []).append(vec)
    return {k: OPS[op].reduce(np.stack(v), axis=0) for k, v in collected.items()}


def assert_all_equal_reference(results: list[Block], locals_: list[Block], op: str) -> None:
    first = results[0]
    for other in results[1:]:
        assert other == first
        assert other.values.tobytes() == first.values.tobytes()  # bitwise, -0.0 included
    expected = reference(locals_, op)
    assert set(first.keys) == set(expected)
    for key, vec in first.items():
        if op in ("min", "max"):
            np.testing.assert_array_equal(vec, expected[key])
        else:
            np.testing.assert_allclose(vec, expected[key], rtol=1e-12, atol=0)


def run_network(size: int, fanout: int, op: str, seed: int, rng: random.Random | None) -> Network:
    locals_ = make_locals(size, seed, op=op)
    net = Network.build(Tree(size, fanout), op, locals_, rng=rng)
    net.start_all()
    net.run()
    assert_all_equal_reference(net.results(), locals_, op)
    # exactly one partial up and one result down per non-root edge
    kinds = [f.send.kind for f in net.delivered]
    assert kinds.count("partial") == kinds.count("result") == size - 1
    assert all(n.partial_sent == (not n.is_root) for n in net.nodes)
    assert all(n.missing_children() == () for n in net.nodes)
    return net


# -- whole-tree runs ---------------------------------------------------------------


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("fanout", [2, 3, 4])
@pytest.mark.parametrize("size", range(1, 13))
def test_fifo_and_shuffled_delivery_agree(size: int, fanout: int, op: str) -> None:
    seed = size * 100 + fanout * 10 + ALL_OPS.index(op)
    fifo = run_network(size, fanout, op, seed, rng=None).results()[0]
    for shuffle_seed in range(3):
        shuffled = run_network(size, fanout, op, seed, rng=random.Random(shuffle_seed)).results()[0]
        # combination order is fixed by rank, so the schedule cannot change a bit
        assert shuffled.values.tobytes() == fifo.values.tobytes() and shuffled == fifo


@settings(derandomize=True, database=None, deadline=None, max_examples=80)
@given(size=st.integers(1, 12), fanout=st.integers(1, 4), op=st.sampled_from(ALL_OPS),
       seed=st.integers(0, 2**32 - 1))
def test_random_delivery_order_property(size: int, fanout: int, op: str, seed: int) -> None:
    run_network(size, fanout, op, seed, rng=random.Random(seed))


def test_order_of_combination_is_by_rank_not_arrival() -> None:
    # Values where float addition order is observable: in rank order
    # (1e16 + 1.0) + -1e16 == 0.0 (the 1.0 is absorbed), while combining in
    # arrival order with rank 2 first would give (1e16 + -1e16) + 1.0 == 1.0.
    tree = Tree(3, 2)
    locals_ = [Block.from_dict({0: [x]}) for x in (1e16, 1.0, -1e16)]
    arrival_orders = set()
    for seed in range(10):
        net = Network.build(tree, "sum", locals_, rng=random.Random(seed))
        net.start_all()
        net.run()
        arrival_orders.add(tuple(f.src for f in net.delivered if f.send.kind == "partial"))
        assert [b.values.tolist() for b in net.results()] == [[0.0]] * 3
    assert arrival_orders == {(1, 2), (2, 1)}  # both schedules were exercised


# -- lost messages and the store fallback ---------------------------------------------


@pytest.mark.parametrize("size, fanout, victim", [(7, 2, 1), (12, 3, 2), (5, 2, 4), (4, 1, 1)])
def test_lost_result_delivered_by_store_fallback(size: int, fanout: int, victim: int) -> None:
    tree = Tree(size, fanout)
    locals_ = make_locals(size, seed=size + victim, op="sum")
    lost = lambda f: f.send.kind == "result" and f.send.dest == victim  # noqa: E731
    net = Network.build(tree, "sum", locals_, rng=random.Random(victim), drop=lost)
    net.start_all()
    net.run()
    assert len(net.dropped) == 1
    # the victim and everything below it are stuck; everyone else finished
    stuck = {n.rank for n in net.nodes if not n.done}
    assert stuck == set(tree.subtree(victim))
    assert net.nodes[victim].partial_sent
    # the service reads the root's result from the durable store and hands it over
    net.drop = lambda f: False
    net.post(victim, net.nodes[victim].receive_result(net.nodes[0].result))  # type: ignore[arg-type]
    net.run()
    assert_all_equal_reference(net.results(), locals_, "sum")


def test_lost_partial_read_from_store_after_deadline() -> None:
    tree = Tree(9, 2)  # rank 8 is a leaf under rank 3
    locals_ = make_locals(9, seed=5, op="max")
    lost = lambda f: f.send.kind == "partial" and f.src == 8  # noqa: E731
    net = Network.build(tree, "max", locals_, drop=lost)
    net.start_all()
    net.run()
    assert not any(n.done for n in net.nodes)
    assert net.nodes[3].missing_children() == (8,)
    assert [n.rank for n in net.nodes if n.missing_children()] == [0, 1, 3]  # blocked up the path
    # a leaf's contribution is its local block: what the store holds for its tasks
    net.post(3, net.nodes[3].receive_partial(8, locals_[8]))
    net.run()
    assert_all_equal_reference(net.results(), locals_, "max")


def test_result_before_start_suppresses_the_useless_partial() -> None:
    tree = Tree(3, 2)
    locals_ = make_locals(3, seed=1, op="sum")
    leaf = TreeAllReduce(2, tree, "sum", locals_[2])
    final = Block.from_dict({0: [1.0]})
    assert leaf.receive_result(final) == []  # a leaf has nobody to forward to
    assert leaf.done and leaf.result is final
    assert leaf.start() == [] and not leaf.partial_sent


def test_interior_node_may_combine_before_start() -> None:
    tree = Tree(3, 2)
    locals_ = [Block.from_dict({0: [float(r)]}) for r in range(3)]
    root = TreeAllReduce(0, tree, "sum", locals_[0])
    assert root.receive_partial(2, locals_[2]) == []
    sends = root.receive_partial(1, locals_[1])
    assert [(s.dest, s.kind) for s in sends] == [(1, "result"), (2, "result")]
    assert root.result is not None and root.result.values.tolist() == [3.0]
    assert root.start() == []


# -- single-node behaviour ------------------------------------------------------------


def test_leaf_sends_local_block_to_parent() -> None:
    local = Block.from_dict({"k": [1.0, 2.0]})
    leaf = TreeAllReduce(4, Tree(5, 2), "sum", local)
    assert leaf.parent == 1 and leaf.children == ()
    assert not leaf.partial_sent and not leaf.done and leaf.result is None
    sends = leaf.start()
    assert sends == [Send(1, "partial", local)]
    assert sends[0].block is local  # the local block itself: no copy for the common case
    assert leaf.partial_sent and not leaf.done


def test_lone_root_finishes_on_start_with_its_local_block() -> None:
    local = Block.from_dict({"k": [1.0, 2.0]})
    root = TreeAllReduce(0, Tree(1, 3), "prod", local)
    assert not root.done
    assert root.start() == []
    assert root.done and root.result is local  # read-only blocks: no copy needed
    assert not root.partial_sent


def test_interior_node_waits_for_all_children() -> None:
    tree = Tree(7, 2)
    blocks = {r: Block.from_dict({0: [float(r)]}) for r in range(7)}
    node = TreeAllReduce(1, tree, "sum", blocks[1])
    assert node.start() == []
    assert node.missing_children() == (3, 4)
    assert node.receive_partial(4, blocks[4]) == []
    assert node.missing_children() == (3,) and not node.partial_sent
    (send,) = node.receive_partial(3, blocks[3])
    assert (send.dest, send.kind, send.block.values.tolist()) == (0, "partial", [8.0])
    assert node.partial_sent and not node.done
    final = Block.from_dict({0: [21.0]})
    sends = node.receive_result(final)
    assert [(s.dest, s.kind) for s in sends] == [(3, "result"), (4, "result")]
    assert all(s.block is final for s in sends)
    assert node.done and node.result is final


# -- errors ------------------------------------------------------------------------------


def test_partial_from_non_child_is_rejected() -> None:
    tree = Tree(7, 2)
    node = TreeAllReduce(1, tree, "sum", Block.empty())
    for bad in (0, 1, 2, 5, 6, 7, -1, True):  # parent, self, sibling, cousins, out of range, bool
        with pytest.raises(ValueError, match=rf"rank 1 got a partial from rank {bad!r}\b"):
            node.receive_partial(bad, Block.empty())
    assert node.missing_children() == (3, 4)  # nothing was recorded


def test_duplicate_partial_is_rejected() -> None:
    node = TreeAllReduce(0, Tree(3, 2), "sum", Block.empty())
    node.receive_partial(1, Block.empty())
    with pytest.raises(ValueError, match="second partial from child rank 1"):
        node.receive_partial(1, Block.empty())


def test_duplicate_result_is_rejected() -> None:
    node = TreeAllReduce(1, Tree(3, 2), "sum", Block.empty())
    node.receive_result(Block.from_dict({0: [1.0]}))
    with pytest.raises(ValueError, match="second result"):
        node.receive_result(Block.from_dict({0: [1.0]}))
    assert node.result is not None and node.result.values.tolist() == [1.0]


def test_root_cannot_receive_a_result() -> None:
    root = TreeAllReduce(0, Tree(3, 2), "sum", Block.empty())
    with pytest.raises(ValueError, match="root"):
        root.receive_result(Block.empty())


def test_start_twice_is_rejected() -> None:
    leaf = TreeAllReduce(2, Tree(3, 2), "sum", Block.empty())
    leaf.start()
    with pytest.raises(ValueError, match="twice"):
        leaf.start()


def test_constructor_validation() -> None:
    tree = Tree(3, 2)
    with pytest.raises(ConfigurationError, match="rank 3"):
        TreeAllReduce(3, tree, "sum", Block.empty())
    with pytest.raises(ConfigurationError, match="mean"):
        TreeAllReduce(0, tree, "mean", Block.empty())
    with pytest.raises(TypeError):
        TreeAllReduce(0, tree, "sum", {0: [1.0]})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TreeAllReduce(0, (3, 2), "sum", Block.empty())  # type: ignore[arg-type]
    node = TreeAllReduce(0, tree, "sum", Block.empty())
    with pytest.raises(TypeError):
        node.receive_partial(1, [1.0])  # type: ignore[arg-type]


def test_shape_mismatch_between_nodes_surfaces() -> None:
    tree = Tree(2, 2)
    root = TreeAllReduce(0, tree, "sum", Block.from_dict({0: [1.0, 2.0]}))
    with pytest.raises(ValueError, match="length 2 and 3"):
        root.receive_partial(1, Block.from_dict({0: [1.0, 2.0, 3.0]}))
