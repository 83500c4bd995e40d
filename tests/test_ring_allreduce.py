"""Tests for `hcollectives.algorithms.ring_allreduce`, driven over an in-memory network.

As in test_tree_allreduce.py: one machine per rank, a list of messages in
flight, FIFO or seeded-random delivery, and a `drop` predicate that loses
chosen messages (the store fallback then finishes the lost nodes with
`reference_result`). Data is copied when posted, as the wire would.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from hcollectives.algorithms.block import Block
from hcollectives.algorithms.reduction import OPS
from hcollectives.algorithms.ring_allreduce import (
    RING_MIN_BYTES,
    ChunkSend,
    RingAllReduce,
    chunk_bounds,
    reference_result,
    ring_layout,
)

ALL_OPS = sorted(OPS)


@dataclass(frozen=True, slots=True)
class Flight:
    src: int
    dest: int
    step: int
    data: np.ndarray


@dataclass
class Ring:
    nodes: list[RingAllReduce]
    rng: random.Random | None = None
    drop: Callable[[Flight], bool] = lambda flight: False
    in_flight: list[Flight] = field(default_factory=list)
    delivered: list[Flight] = field(default_factory=list)
    dropped: list[Flight] = field(default_factory=list)

    def post(self, src: int, sends: list[ChunkSend]) -> None:
        for send in sends:
            assert isinstance(send, ChunkSend) and send.dest == (src + 1) % len(self.nodes)
            self.in_flight.append(Flight(src, send.dest, send.step, send.data.copy()))

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
            self.post(flight.dest, self.nodes[flight.dest].receive(flight.step, flight.data))


def make_locals(size: int, seed: int, *, op: str, length: int = 37) -> list[Block]:
    """Same layout on every rank (the ring's precondition), random values."""
    rng = np.random.default_rng(seed)
    keys = (0, 3, 9, "k")
    cuts = np.sort(rng.integers(0, length + 1, size=len(keys) - 1))
    lengths = np.diff(np.concatenate([[0], cuts, [length]]))
    low, high = (0.5, 1.5) if op == "prod" else (-10.0, 10.0)
    blocks = []
    for _ in range(size):
        values = rng.uniform(low, high, size=length)
        values[rng.random(length) < 0.1] = -0.0  # signed zeros must survive bit for bit
        blocks.append(Block.from_dict({k: values[o : o + n] for k, o, n in
                                       zip(keys, np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)}))
    return blocks


def assert_bit_identical(results: list[Block]) -> None:
    first = results[0]
    for other in results[1:]:
        assert other.keys == first.keys and np.array_equal(other.offsets, first.offsets)
        assert other.values.tobytes() == first.values.tobytes()


def run_ring(size: int, op: str, seed: int, rng: random.Random | None, *, length: int = 37,
             in_place: bool = False) -> tuple[Ring, list[Block]]:
    locals_ = make_locals(size, seed, op=op, length=length)
    before = [b.values.copy() for b in locals_]
    ring = Ring([RingAllReduce(r, size, op, locals_[r], in_place=in_place) for r in range(size)], rng=rng)
    ring.start_all()
    ring.run()
    assert all(n.done for n in ring.nodes)
    results = [n.result for n in ring.nodes]
    assert_bit_identical(results)
    if not in_place:
        assert all(np.array_equal(b.values, v) for b, v in zip(locals_, before))  # inputs untouched
    return ring, [Block(b.keys, b.offsets, v) for b, v in zip(locals_, before)]


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("size", range(1, 13))
def test_every_size_gives_bit_identical_results_equal_to_the_reference(size: int, op: str) -> None:
    seed = size * 10 + ALL_OPS.index(op)
    ring, locals_ = run_ring(size, op, seed, rng=None)
    result = ring.nodes[0].result
    expected = reference_result(locals_, op)
    assert result.values.tobytes() == expected.values.tobytes()
    # and it is the op's reduction, up to float rounding
    stacked = np.stack([b.values for b in locals_])
    if op in ("min", "max"):
        np.testing.assert_array_equal(result.values, OPS[op].reduce(stacked, axis=0))
    else:
        np.testing.assert_allclose(result.values, OPS[op].reduce(stacked, axis=0), rtol=1e-12)
    # 2(n-1) messages per node, each node only ever talks to its right neighbour
    assert len(ring.delivered) == size * 2 * (size - 1)
    for rank in range(size):
        steps = sorted(f.step for f in ring.delivered if f.src == rank)
        assert steps == list(range(2 * (size - 1)))


@pytest.mark.parametrize("size", [2, 3, 4, 7, 12])
def test_shuffled_delivery_gives_the_same_bits_as_fifo(size: int) -> None:
    fifo, _ = run_ring(size, "sum", 5, rng=None)
    for shuffle in range(5):
        shuffled, _ = run_ring(size, "sum", 5, rng=random.Random(shuffle))
        assert shuffled.nodes[0].result.values.tobytes() == fifo.nodes[0].result.values.tobytes()


@pytest.mark.parametrize("size", [2, 3, 5])
def test_in_place_reduces_into_the_local_buffer(size: int) -> None:
    ring, locals_ = run_ring(size, "sum", 11, rng=random.Random(1), in_place=True)
    for node in ring.nodes:
        assert node.result.values is node.local.values
    assert ring.nodes[0].result.values.tobytes() == reference_result(locals_, "sum").values.tobytes()


@pytest.mark.parametrize("size", [2, 3, 4, 6])
def test_fewer_values_than_ranks_means_empty_chunks(size: int) -> None:
    ring, locals_ = run_ring(size, "max", 3, rng=random.Random(2), length=max(size - 1, 1))
    assert ring.nodes[0].result.values.tobytes() == reference_result(locals_, "max").values.tobytes()


@pytest.mark.parametrize("size, lost_step, lost_src", [(2, 0, 1), (3, 1, 0), (4, 3, 2), (5, 7, 4), (6, 0, 0)])
def test_a_lost_chunk_stalls_nodes_that_the_store_fallback_finishes_with_the_same_bits(
        size: int, lost_step: int, lost_src: int) -> None:
    locals_ = make_locals(size, 42, op="sum")
    copies = [Block(b.keys, b.offsets, b.values.copy()) for b in locals_]
    ring = Ring([RingAllReduce(r, size, "sum", locals_[r]) for r in range(size)],
                drop=lambda f: (f.src, f.step) == (lost_src, lost_step))
    ring.start_all()
    ring.run()
    assert len(ring.dropped) == 1
    stalled = [n for n in ring.nodes if not n.done]
    assert stalled, "losing a chunk must leave someone waiting"
    assert (lost_src + 1) % size in [n.rank for n in stalled]
    assert lost_step in stalled[[n.rank for n in stalled].index((lost_src + 1) % size)].missing_steps()
    fallback = reference_result(copies, "sum")
    for node in stalled:
        node.receive_result(Block(fallback.keys, fallback.offsets, fallback.values.copy()))
    assert_bit_identical([n.result for n in ring.nodes])
    # a late chunk after the fallback is ignored
    late = stalled[0]
    assert late.receive(late.missing_steps()[0], np.zeros(late.expected_length(late.missing_steps()[0]))) == []


def test_chunk_bounds_cover_the_vector() -> None:
    for length in range(0, 30):
        for size in range(1, 8):
            b = chunk_bounds(length, size)
            assert b[0] == 0 and b[-1] == length and len(b) == size + 1
            assert all(0 <= hi - lo <= length // size + 1 for lo, hi in zip(b, b[1:]))


def test_bad_chunks_are_refused() -> None:
    locals_ = make_locals(3, 1, op="sum")
    node = RingAllReduce(1, 3, "sum", locals_[1])
    node.start()
    n = node.expected_length(0)
    with pytest.raises(ValueError, match="expected"):
        node.receive(0, np.zeros(n + 1))
    with pytest.raises(ValueError, match="1-D"):
        node.receive(0, np.zeros(n, dtype="<f4"))
    with pytest.raises(ValueError, match="outside"):
        node.receive(4, np.zeros(1))
    with pytest.raises(ValueError, match="outside"):
        node.receive(True, np.zeros(1))  # type: ignore[arg-type]
    node.receive(1, np.zeros(node.expected_length(1)))  # early: held until step 0 arrives
    with pytest.raises(ValueError, match="second chunk"):
        node.receive(1, np.zeros(node.expected_length(1)))
    with pytest.raises(ValueError, match="start"):
        node.start()
    with pytest.raises(ValueError):
        RingAllReduce(3, 3, "sum", locals_[0])
    with pytest.raises(ValueError):
        RingAllReduce(0, 0, "sum", locals_[0])


def test_reference_result_refuses_mixed_layouts() -> None:
    with pytest.raises(ValueError, match="layout"):
        reference_result([Block.from_dict({0: np.ones(2)}), Block.from_dict({1: np.ones(2)})], "sum")


def test_ring_layout_digest() -> None:
    n = RING_MIN_BYTES // 8
    small = Block.from_dict({0: np.ones(4)})
    assert ring_layout(small) == ""
    a = Block.from_dict({0: np.ones(n), "x": np.ones(3)})
    b = Block.from_dict({0: np.zeros(n), "x": np.zeros(3)})
    assert ring_layout(a) == ring_layout(b) != ""
    assert ring_layout(Block.from_dict({1: np.ones(n), "x": np.ones(3)})) != ring_layout(a)
    assert ring_layout(Block.from_dict({"0": np.ones(n), "x": np.ones(3)})) != ring_layout(a)
    assert ring_layout(Block.from_dict({0: np.ones(n - 1), "x": np.ones(4)})) != ring_layout(a)


def test_consumed_chunks_are_reported_once_folded_in() -> None:
    n = 3
    blocks = [Block.from_dict({0: np.full(9, float(r + 1))}) for r in range(n)]
    machines = [RingAllReduce(r, n, "sum", blocks[r]) for r in range(n)]
    queue = [(s.dest, s.step, s.data.copy()) for r, m_ in enumerate(machines) for s in m_.start()]
    received = []
    while queue:
        dest, step, data = queue.pop(0)
        received.append(data)
        queue += [(s.dest, s.step, s.data.copy()) for s in machines[dest].receive(step, data)]
    consumed = [d for m_ in machines for d in m_.consumed]
    # every received buffer, each exactly once, and none still needed for the result
    assert sorted(map(id, consumed)) == sorted(map(id, received))
    for m_ in machines:
        assert all(not np.shares_memory(d, m_.result.values) for d in m_.consumed)
