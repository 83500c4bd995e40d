"""Tests for `hcollectives.algorithms.reduction`: value parsing, accumulation,
block reduction, AllGather merging."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcollectives.algorithms.block import VALUE_DTYPE, Block, Key
from hcollectives.algorithms.reduction import (
    OPS,
    Accumulator,
    block_to_matrix,
    check_op,
    merge_disjoint,
    reduce_blocks,
    to_vector,
)
from hcollectives.errors import BadMapperOutput, ConfigurationError, ShapeMismatch

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=60)
ALL_OPS = sorted(OPS)


# -- to_vector ----------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    (3, [3.0]),
    (2.5, [2.5]),
    ([1, 2, 3], [1.0, 2.0, 3.0]),
    ((1.5, -2), [1.5, -2.0]),
    (np.float32(0.5), [0.5]),
    (np.array(7, dtype=np.int16), [7.0]),
    (np.array([1, 2], dtype=np.uint8), [1.0, 2.0]),
    ([], []),
])
def test_to_vector_accepts_numbers(value: object, expected: list[float]) -> None:
    vec = to_vector(value)
    assert vec.dtype == VALUE_DTYPE and vec.ndim == 1 and vec.flags.c_contiguous
    assert vec.tolist() == expected


@pytest.mark.parametrize("value, match", [
    ("1.5", "text"),
    (b"12", "text"),
    (True, "bool"),
    (False, "bool"),
    ([[1, 2], [3]], "not a flat list"),           # ragged
    ([[1, 2], [3, 4]], "shape"),                  # 2-D
    (np.ones((2, 2)), "shape"),
    ([True, False], "bool"),                      # array of bools
    (None, "not numeric"),
    ({"a": 1}, "not numeric"),
    (np.array([1 + 2j]), "not numeric"),
    (["1", "2"], "not numeric"),
])
def test_to_vector_rejects(value: object, match: str) -> None:
    with pytest.raises(BadMapperOutput, match=match):
        to_vector(value)


@pytest.mark.parametrize("value", [float("nan"), [1.0, float("inf")], np.array([-np.inf])])
def test_to_vector_nonfinite_needs_opt_in(value: object) -> None:
    with pytest.raises(BadMapperOutput, match="NaN or inf"):
        to_vector(value)
    vec = to_vector(value, allow_nonfinite=True)
    assert not np.isfinite(vec).all()


def test_to_vector_result_is_independent_of_the_input_list() -> None:
    src = [1.0, 2.0]
    vec = to_vector(src)
    vec[0] = 9.0
    assert src == [1.0, 2.0]


def test_to_vector_rejects_bools_mixed_into_a_list() -> None:
    with pytest.raises(BadMapperOutput):
        to_vector([1, True])


def test_to_vector_rejects_bytes_like() -> None:
    with pytest.raises(BadMapperOutput):
        to_vector(bytearray(b"12"))


# -- check_op / Accumulator ---------------------------------------------------


def test_check_op() -> None:
    for op in ALL_OPS:
        assert check_op(op) == op
    with pytest.raises(ConfigurationError, match="mean"):
        check_op("mean")
    with pytest.raises(ConfigurationError):
        Accumulator("avg")


@pytest.mark.parametrize("op", ALL_OPS)
def test_accumulator_matches_numpy(op: str) -> None:
    rng = np.random.default_rng(1234)
    records = [(int(rng.integers(0, 5)), rng.uniform(0.5, 1.5, size=3)) for _ in range(200)]
    acc = Accumulator(op)
    for key, vec in records:
        acc.add(key, vec)
    block = acc.block()
    assert len(acc) == len({k for k, _ in records})
    assert list(block.keys) == sorted({k for k, _ in records})
    ufunc = OPS[op]
    for key, got in block.items():
        expected = ufunc.reduce(np.stack([v for k, v in records if k == key]), axis=0)
        if op in ("min", "max"):
            np.testing.assert_array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_accumulator_copies_input() -> None:
    acc = Accumulator("sum")
    vec = np.array([1.0, 2.0])
    acc.add("k", vec)
    acc.add("k", vec)  # combined in place: must not write into the caller's array
    vec[:] = -1.0
    assert vec.tolist() == [-1.0, -1.0]
    assert acc.block().to_dict()["k"].tolist() == [2.0, 4.0]


def test_accumulator_converts_numpy_int_keys_and_rejects_bad_keys() -> None:
    acc = Accumulator("sum")
    acc.add(np.int32(3), np.array([1.0]))
    acc.add(3, np.array([1.0]))
    assert acc.block().keys == (3,)
    with pytest.raises(BadMapperOutput):
        acc.add(True, np.array([1.0]))
    with pytest.raises(BadMapperOutput):
        acc.add(1.5, np.array([1.0]))


def test_allgather_accumulator_rejects_duplicate_keys() -> None:
    acc = Accumulator(None)
    acc.add(0, np.array([1.0, 2.0]))
    acc.add(1, np.array([3.0, 4.0]))
    with pytest.raises(BadMapperOutput, match="emitted twice"):
        acc.add(0, np.array([1.0, 2.0]))
    assert acc.block().to_dict()[0].tolist() == [1.0, 2.0]


def test_accumulator_shape_mismatch() -> None:
    acc = Accumulator("sum")
    acc.add("k", np.array([1.0, 2.0]))
    with pytest.raises(ShapeMismatch, match="length 2 and 3"):
        acc.add("k", np.array([1.0, 2.0, 3.0]))
    assert issubclass(ShapeMismatch, BadMapperOutput)


# -- reduce_blocks --------------------------------------------------------------


@st.composite
def block_families(draw: st.DrawFn, *, same_layout: bool = False) -> list[Block]:
    """Several blocks over a shared key universe; each key has one width everywhere."""
    universe = draw(st.lists(st.one_of(st.integers(-50, 50), st.text("abc", min_size=1, max_size=3)),
                             min_size=1, max_size=6, unique=True))
    widths = {k: draw(st.integers(0, 4)) for k in universe}
    count = draw(st.integers(1, 5))
    # values in [0.5, 2] keep products of a few blocks far from overflow
    value = st.floats(0.5, 2.0, allow_nan=False)
    blocks = []
    for _ in range(count):
        keys = universe if same_layout else draw(st.lists(st.sampled_from(universe), unique=True))
        blocks.append(Block.from_dict({k: draw(st.lists(value, min_size=widths[k], max_size=widths[k]))
                                       for k in keys}))
    return blocks


def reference_reduce(blocks: list[Block], op: str) -> dict[Key, np.ndarray]:
    """Straightforward per-key reduction: collect each key's vectors, reduce with numpy."""
    collected: dict[Key, list[np.ndarray]] = {}
    for block in blocks:
        for key, vec in block.items():
            collected.setdefault(key, []).append(vec)
    return {key: OPS[op].reduce(np.stack(vecs), axis=0) for key, vecs in collected.items()}


def assert_matches_reference(got: Block, expected: dict[Key, np.ndarray], op: str) -> None:
    assert set(got.keys) == set(expected)
    for key, vec in got.items():
        if op in ("min", "max"):
            np.testing.assert_array_equal(vec, expected[key])
        else:
            np.testing.assert_allclose(vec, expected[key], rtol=1e-12)


@DETERMINISTIC
@given(block_families(), st.sampled_from(ALL_OPS))
def test_reduce_blocks_matches_reference(blocks: list[Block], op: str) -> None:
    snapshot = [b.values.copy() for b in blocks]
    result = reduce_blocks(blocks, op)
    assert_matches_reference(result, reference_reduce(blocks, op), op)
    # canonical key order whatever the mix of key subsets
    assert result == Block.from_dict(result.to_dict())
    # inputs are never written to
    for block, before in zip(blocks, snapshot):
        np.testing.assert_array_equal(block.values, before)


@DETERMINISTIC
@given(block_families(same_layout=True), st.sampled_from(ALL_OPS))
def test_fast_path_and_general_path_agree_bitwise(blocks: list[Block], op: str) -> None:
    fast = reduce_blocks(blocks, op)
    # Pretend no two blocks line up, forcing the per-key path.
    with mock.patch.object(Block, "same_layout", lambda self, other: False):
        general = reduce_blocks(blocks, op)
    assert fast == general
    assert fast.values.tobytes() == general.values.tobytes()
    assert_matches_reference(fast, reference_reduce(blocks, op), op)


def test_reduce_blocks_never_writes_into_its_inputs() -> None:
    block = Block.from_dict({0: [1.0, 2.0]})
    # One block: nothing to combine, returned as is (blocks are read-only; a
    # 64 MiB contribution is not copied for nothing).
    assert reduce_blocks([block], "sum") is block
    result = reduce_blocks(iter([block, block]), "sum")  # any iterable
    assert result.values.tolist() == [2.0, 4.0] and block.values.tolist() == [1.0, 2.0]
    assert not np.shares_memory(result.values, block.values)


def test_reduce_blocks_edge_cases() -> None:
    assert reduce_blocks([], "sum") == Block.empty()
    with pytest.raises(ConfigurationError):
        reduce_blocks([], "mean")
    a = Block.from_dict({"k": [1.0, 2.0]})
    b = Block.from_dict({"k": [1.0, 2.0, 3.0]})
    with pytest.raises(ShapeMismatch, match="'k'"):
        reduce_blocks([a, b], "sum")


def test_reduce_blocks_combines_in_the_given_order() -> None:
    # (1e16 + 1) + (-1e16) != (1e16 + -1e16) + 1 in float64: the order is observable
    a, b, c = (Block.from_dict({0: [x]}) for x in (1e16, 1.0, -1e16))
    assert reduce_blocks([a, b, c], "sum").values.tolist() == [0.0]
    assert reduce_blocks([a, c, b], "sum").values.tolist() == [1.0]


# -- merge_disjoint / block_to_matrix ----------------------------------------------


@DETERMINISTIC
@given(st.lists(st.integers(0, 100), min_size=1, max_size=20, unique=True), st.integers(1, 4), st.data())
def test_merge_disjoint_and_matrix_order_rows_by_int_key(rows: list[int], width: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(len(rows) * 7 + width)
    vectors = {r: rng.normal(size=width) for r in rows}
    # split the rows into pieces in an arbitrary order and merge them
    shuffled = data.draw(st.permutations(rows))
    cut = data.draw(st.integers(0, len(shuffled)))
    pieces = [Block.from_dict({r: vectors[r] for r in part}) for part in (shuffled[:cut], shuffled[cut:])]
    merged = merge_disjoint(pieces)
    matrix = block_to_matrix(merged)
    assert matrix.shape == (len(rows), width)
    np.testing.assert_array_equal(matrix, np.stack([vectors[r] for r in sorted(rows)]))
    assert not np.shares_memory(matrix, merged.values)


@DETERMINISTIC
@given(st.lists(st.one_of(st.integers(-20, 20), st.text("xy", min_size=1, max_size=2)),
                min_size=1, max_size=10, unique=True), st.data())
def test_merge_disjoint_rejects_overlapping_keys(keys: list[Key], data: st.DataObject) -> None:
    # Disjoint pieces merge fine ...
    labels = data.draw(st.lists(st.integers(0, 2), min_size=len(keys), max_size=len(keys)))
    pieces = [Block.from_dict({k: [float(i)] for i, (k, lab) in enumerate(zip(keys, labels)) if lab == p})
              for p in range(3)]
    assert set(merge_disjoint(pieces).keys) == set(keys)
    # ... but one more piece re-claiming any key, anywhere in the list, is refused.
    clash = Block.from_dict({data.draw(st.sampled_from(keys)): [-1.0]})
    pieces.insert(data.draw(st.integers(0, len(pieces))), clash)
    with pytest.raises(BadMapperOutput, match="more than one task"):
        merge_disjoint(pieces)


def test_merge_disjoint_empty_and_disjoint() -> None:
    assert merge_disjoint([]) == Block.empty()
    merged = merge_disjoint([Block.from_dict({1: [1.0]}), Block.empty(), Block.from_dict({"a": [2.0, 3.0]})])
    assert merged == Block.from_dict({1: [1.0], "a": [2.0, 3.0]})


def test_block_to_matrix_errors_and_empty() -> None:
    with pytest.raises(BadMapperOutput, match="integer row indices"):
        block_to_matrix(Block.from_dict({0: [1.0], "x": [2.0]}))
    with pytest.raises(ShapeMismatch, match="row 0: 1"):
        block_to_matrix(Block.from_dict({0: [1.0], 1: [2.0, 3.0]}))
    assert block_to_matrix(Block.empty()).shape == (0, 0)
    assert block_to_matrix(Block.from_dict({0: [], 1: []})).shape == (2, 0)


def test_block_to_matrix_orders_rows_of_unsorted_block() -> None:
    block = Block.from_matrix((2, 0, 1), np.array([[2.0], [0.0], [1.0]]))
    assert block_to_matrix(block).ravel().tolist() == [0.0, 1.0, 2.0]
