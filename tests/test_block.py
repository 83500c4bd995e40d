"""Tests for `hcollectives.algorithms.block`: construction, validation, access."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hcollectives.algorithms.block import OFFSET_DTYPE, VALUE_DTYPE, Block, check_key, key_order
from hcollectives.errors import BadMapperOutput

# Deterministic hypothesis runs: the suite must give the same verdict every time.
DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=60)

keys_st = st.one_of(st.integers(-(2**62), 2**62), st.text(max_size=6))
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
mapping_st = st.dictionaries(keys_st, st.lists(finite, max_size=5), max_size=8)


def offsets(*bounds: int) -> np.ndarray:
    return np.array(bounds, dtype=OFFSET_DTYPE)


# -- construction and round trips -------------------------------------------


def test_from_dict_round_trip_and_canonical_order() -> None:
    block = Block.from_dict({"b": [1.0], 3: [2.0, 3.0], -1: [], "a": [4.0]})
    # ints numerically first, then strs lexically
    assert block.keys == (-1, 3, "a", "b")
    assert block.offsets.tolist() == [0, 0, 2, 3, 4]
    assert block.values.tolist() == [2.0, 3.0, 4.0, 1.0]
    back = block.to_dict()
    assert list(back) == [-1, 3, "a", "b"]
    assert back[3].tolist() == [2.0, 3.0] and back[-1].tolist() == []
    assert Block.from_dict(back) == block


def test_from_dict_converts_dtype_and_flattens_scalars() -> None:
    block = Block.from_dict({0: 5, 1: np.array([1, 2], dtype=np.int32)})
    assert block.values.dtype == VALUE_DTYPE
    assert block.values.tolist() == [5.0, 1.0, 2.0]


@DETERMINISTIC
@given(mapping_st)
def test_from_dict_to_dict_property(mapping: dict) -> None:
    block = Block.from_dict(mapping)
    back = block.to_dict()
    assert set(back) == set(mapping)
    for key, vec in mapping.items():
        np.testing.assert_array_equal(back[key], np.asarray(vec, dtype=VALUE_DTYPE))
    assert list(block.keys) == sorted(mapping, key=key_order)
    # rebuilding from the raw parts gives an equal block
    assert Block(block.keys, block.offsets.copy(), block.values.copy()) == block


def test_from_matrix_round_trip() -> None:
    matrix = np.arange(12.0).reshape(4, 3)
    block = Block.from_matrix((0, 1, 2, 3), matrix)
    assert block.uniform_width() == 3
    assert block.offsets.tolist() == [0, 3, 6, 9, 12]
    for i in range(4):
        np.testing.assert_array_equal(block.vector(i), matrix[i])
    with pytest.raises(ValueError, match="3 rows"):
        Block.from_matrix((0, 1, 2), matrix)
    with pytest.raises(ValueError):
        Block.from_matrix((0,), np.arange(3.0))  # 1-D is not a matrix


def test_empty_block() -> None:
    empty = Block.empty()
    assert len(empty) == 0 and empty.keys == ()
    assert empty.uniform_width() == 0
    assert empty == Block.from_dict({})
    assert empty.nbytes == OFFSET_DTYPE.itemsize


def test_keys_list_becomes_tuple() -> None:
    block = Block([1, 2], offsets(0, 1, 2), np.array([1.0, 2.0]))
    assert block.keys == (1, 2)


# -- access -----------------------------------------------------------------


def test_vector_is_a_view_and_to_dict_is_a_copy() -> None:
    block = Block.from_dict({0: [1.0, 2.0], 1: [3.0]})
    assert np.shares_memory(block.vector(0), block.values)
    copy = block.to_dict()
    copy[0][0] = 99.0
    assert block.vector(0)[0] == 1.0


def test_lengths_uniform_width_nbytes() -> None:
    ragged = Block.from_dict({0: [1.0, 2.0], 1: [3.0]})
    assert ragged.lengths().tolist() == [2, 1]
    assert ragged.uniform_width() is None
    assert ragged.nbytes == 3 * 8 + 3 * 8
    assert Block.from_dict({0: [1.0], 1: [2.0]}).uniform_width() == 1


def test_same_layout_and_equality() -> None:
    a = Block.from_dict({0: [1.0, 2.0], 1: [3.0]})
    b = Block.from_dict({0: [9.0, 9.0], 1: [9.0]})
    c = Block.from_dict({0: [1.0], 1: [2.0, 3.0]})  # same keys and total length, other split
    assert a.same_layout(b) and not a == b
    assert not a.same_layout(c) and a != c
    assert a == Block.from_dict({1: [3.0], 0: [1.0, 2.0]})
    assert a.__eq__(object()) is NotImplemented


# -- validation -------------------------------------------------------------


@pytest.mark.parametrize("values", [
    np.array([1.0, 2.0], dtype=np.float32),
    np.array([1, 2], dtype=np.int64),
    np.array([[1.0, 2.0]]),
])
def test_rejects_bad_values_dtype_or_shape(values: np.ndarray) -> None:
    with pytest.raises(ValueError, match="values must be 1-D float64"):
        Block((0,), offsets(0, 2), values)


@pytest.mark.parametrize("bad", [
    np.array([0, 2], dtype=np.int32),
    np.array([0.0, 2.0]),
    np.array([[0, 2]], dtype=np.int64),
])
def test_rejects_bad_offsets_dtype_or_shape(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="offsets must be 1-D int64"):
        Block((0,), bad, np.zeros(2))


@pytest.mark.parametrize("bounds, match", [
    ((0,), "need 2 offsets"),          # too few for one key
    ((0, 1, 2), "need 2 offsets"),     # too many
    ((1, 2), "start at 0"),            # does not start at 0
    ((0, 3), "end at len"),            # past the end
    ((0, 1), "end at len"),            # short of the end
])
def test_rejects_bad_offsets_values(bounds: tuple[int, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Block((0,), offsets(*bounds), np.zeros(2))


def test_rejects_decreasing_offsets() -> None:
    with pytest.raises(ValueError, match="must not decrease"):
        Block((0, 1, 2), offsets(0, 3, 1, 3), np.zeros(3))


def test_rejects_duplicate_keys() -> None:
    with pytest.raises(ValueError, match="unique"):
        Block((1, 1), offsets(0, 1, 2), np.zeros(2))
    # 1 and "1" are different keys
    assert len(Block((1, "1"), offsets(0, 1, 2), np.zeros(2))) == 2


@pytest.mark.parametrize("key", [True, False, 1.0, None, b"k", (1,), np.float64(1.0)])
def test_rejects_bad_keys(key: object) -> None:
    with pytest.raises(BadMapperOutput):
        Block((key,), offsets(0, 1), np.zeros(1))
    with pytest.raises(BadMapperOutput):
        check_key(key)


def test_check_key_accepts_int_str_and_numpy_ints() -> None:
    assert check_key(3) == 3 and check_key("k") == "k"
    converted = check_key(np.int64(7))
    assert converted == 7 and type(converted) is int
    with pytest.raises(BadMapperOutput, match="bool"):
        check_key(True)


def test_key_order_puts_ints_before_strs() -> None:
    keys = ["b", 10, "a", -5, 2]
    assert sorted(keys, key=key_order) == [-5, 2, 10, "a", "b"]
    with pytest.raises(BadMapperOutput):
        key_order(False)


# -- invariants the constructor enforces ------------------------------------


def test_constructor_enforces_canonical_key_order() -> None:
    with pytest.raises(ValueError):
        Block((2, 1), offsets(0, 1, 2), np.array([20.0, 10.0]))


def test_with_layout_of_shares_the_checked_layout_and_checks_the_new_values() -> None:
    valid = Block.from_dict({1: [1.0, 2.0], 5: [3.0]})
    values = np.array([4.0, 5.0, 6.0])
    block = Block.with_layout_of(valid, values)
    assert block.keys == valid.keys and block.offsets is valid.offsets and block.values is values
    assert block.same_layout(valid) and block == Block.from_dict({1: [4.0, 5.0], 5: [6.0]})
    for bad in (np.array([1.0, 2.0]), np.array([1, 2, 3]), np.ones((3, 1))):  # length, dtype, ndim
        with pytest.raises(ValueError):
            Block.with_layout_of(valid, bad)
    # a non-contiguous view goes through the constructor (which makes it contiguous)
    strided = np.arange(6.0)[::2]
    assert Block.with_layout_of(valid, strided).values.flags.c_contiguous
