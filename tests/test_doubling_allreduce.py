"""The recursive-doubling AllReduce, driven over an in-memory network in every delivery order."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from hcollectives.algorithms.block import Block
from hcollectives.algorithms.doubling_allreduce import (POST, PRE, DoublingAllReduce, reference_result,
                                                        schedule)
from hcollectives.algorithms.reduction import reduce_blocks


def _locals(n: int, seed: int, width: int = 5) -> list[Block]:
    rng = np.random.default_rng(seed)
    # Values of very different magnitudes: a different grouping of the sum
    # would change the last bits, so bit equality below means the same order.
    return [Block.from_dict({k: rng.standard_normal(width) * 10.0 ** rng.integers(-8, 8) for k in range(3)})
            for _ in range(n)]


def _run(n: int, op: str, locals_: list[Block], seed: int) -> list[Block]:
    machines = [DoublingAllReduce(r, n, op, locals_[r]) for r in range(n)]
    rng = random.Random(seed)
    in_flight: list[tuple[int, int, int, Block]] = []  # (dest, step, sender, block)
    order = list(range(n))
    rng.shuffle(order)
    for r in order:
        in_flight += [(s.dest, s.step, r, s.block) for s in machines[r].start()]
    while in_flight:
        dest, step, sender, block = in_flight.pop(rng.randrange(len(in_flight)))
        in_flight += [(s.dest, s.step, dest, s.block) for s in machines[dest].receive(step, sender, block)]
    assert all(m.done for m in machines)
    return [m.result for m in machines]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 9), seed=st.integers(0, 10_000), op=st.sampled_from(["sum", "prod", "min", "max"]))
def test_every_rank_holds_the_reference_bits_in_any_delivery_order(n: int, seed: int, op: str) -> None:
    locals_ = _locals(n, seed)
    expected = reference_result(locals_, op)
    for result in _run(n, op, locals_, seed):
        assert result.same_layout(expected)
        assert result.values.tobytes() == expected.values.tobytes()


def test_reference_is_the_documented_balanced_order() -> None:
    x = _locals(5, 3)
    r = lambda *bs: reduce_blocks(list(bs), "sum")  # noqa: E731
    # p = 4, extra rank 4 folds into rank 0 first, then ((0+4) + 1) + (2 + 3)
    expected = r(r(r(x[0], x[4]), x[1]), r(x[2], x[3]))
    assert reference_result(x, "sum").values.tobytes() == expected.values.tobytes()


def test_message_rounds() -> None:
    assert schedule(1) == [] and schedule(2) == [0] and schedule(4) == [0, 1]
    assert schedule(3) == [PRE, 0, POST] and schedule(8) == [0, 1, 2]


def test_two_ranks_send_one_message_each_and_finish_on_receipt() -> None:
    a, b = _locals(2, 1)
    m0, m1 = DoublingAllReduce(0, 2, "sum", a), DoublingAllReduce(1, 2, "sum", b)
    (s0,), (s1,) = m0.start(), m1.start()
    assert (s0.dest, s0.step, s1.dest, s1.step) == (1, 0, 0, 0)
    assert m0.receive(0, 1, s1.block) == [] and m1.receive(0, 0, s0.block) == []
    assert m0.result.values.tobytes() == m1.result.values.tobytes()


def test_wrong_sender_step_or_duplicate_is_refused() -> None:
    a, b = _locals(2, 1)
    m0 = DoublingAllReduce(0, 4, "sum", a)
    m0.start()
    with pytest.raises(ValueError):
        m0.receive(0, 2, b)  # rank 2 is not rank 0's step-0 partner
    with pytest.raises(ValueError):
        m0.receive(POST, 1, b)  # no extras with 4 ranks
    m0.receive(1, 2, b)  # early step-1 message is kept
    with pytest.raises(ValueError):
        m0.receive(1, 2, b)


def test_store_result_finishes_and_late_messages_are_dropped() -> None:
    x = _locals(3, 2)
    m0 = DoublingAllReduce(0, 3, "sum", x[0])
    m0.start()
    ref = reference_result(x, "sum")
    sends = m0.receive_result(ref)
    assert [(s.dest, s.step) for s in sends] == [(2, POST)]  # the extra still gets it
    assert m0.receive(PRE, 2, x[2]) == [] and m0.result is ref
