"""Reductions: turning mapper records and partial results into one `Block`.

Pure functions over numpy data. The same code reduces at every level of the
paper's hierarchy: records inside a task (`Accumulator`), task blocks inside a
node and partial blocks up the tree (`reduce_blocks`). Combining always happens
in the order the caller gives, so a caller that fixes the order (sorted task
ids, children by rank) gets bit-identical results on every run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import BadMapperOutput, ConfigurationError, ShapeMismatch
from .block import VALUE_DTYPE, Block, Key, check_key

# Associative, commutative ops only: the tree may combine in any grouping.
OPS: dict[str, np.ufunc] = {
    "sum": np.add,
    "prod": np.multiply,
    "min": np.minimum,
    "max": np.maximum,
}


def check_op(op: str) -> str:
    if not isinstance(op, str) or op not in OPS:
        raise ConfigurationError(f"unknown reduction op {op!r}; choose one of {', '.join(OPS)}")
    return op


def to_vector(value: object, *, allow_nonfinite: bool = False) -> np.ndarray:
    """Convert one mapper value (number, list of numbers, 0/1-D array) to a float64 vector.

    Raises `BadMapperOutput` with a reason; the caller adds which task and
    record it came from.
    """
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        raise BadMapperOutput(f"value {value!r:.80} is text or bytes, not numbers")
    if isinstance(value, bool) or (isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value)):
        raise BadMapperOutput(f"value {value!r:.80} holds a bool, not a number")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nested lists
        raise BadMapperOutput(f"value {value!r:.80} is not a flat list of numbers ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise BadMapperOutput(f"value {value!r:.80} is not numeric (dtype {arr.dtype})")
    if arr.ndim > 1:
        raise BadMapperOutput(f"value has shape {arr.shape}; emit a number or a flat list per key")
    vec = np.ascontiguousarray(arr, dtype=VALUE_DTYPE).reshape(-1)
    if not allow_nonfinite and not np.isfinite(vec).all():
        raise BadMapperOutput(f"value {value!r:.80} contains NaN or inf (pass allow_nonfinite to accept them)")
    return vec


class Accumulator:
    """Collects one task's records into a block: combines per key (AllReduce) or
    keeps each key once (AllGather, ``op=None``)."""

    __slots__ = ("op", "_ufunc", "_vectors")

    def __init__(self, op: str | None) -> None:
        self.op = check_op(op) if op is not None else None
        self._ufunc = OPS[op] if op is not None else None
        self._vectors: dict[Key, np.ndarray] = {}

    def add(self, key: object, vector: np.ndarray) -> None:
        key = check_key(key)
        current = self._vectors.get(key)
        if current is None:
            # copy: the caller may reuse its array, and we combine in place later
            self._vectors[key] = np.array(vector, dtype=VALUE_DTYPE, copy=True)
            return
        if self._ufunc is None:
            raise BadMapperOutput(f"key {key!r} emitted twice; AllGather takes one row per key")
        if len(current) != len(vector):
            raise ShapeMismatch(f"key {key!r} has values of length {len(current)} and {len(vector)}")
        self._ufunc(current, vector, out=current)

    def __len__(self) -> int:
        return len(self._vectors)

    def block(self) -> Block:
        return Block.from_dict(self._vectors)


def reduce_blocks(blocks: Sequence[Block] | Iterable[Block], op: str) -> Block:
    """Combine blocks key by key with *op*, in the given order.

    When every block has the same layout (the common K-means case: each task
    saw every cluster) this is one vectorised ufunc call per block.
    """
    ufunc = OPS[check_op(op)]
    blocks = list(blocks)
    if not blocks:
        return Block.empty()
    first = blocks[0]
    if len(blocks) == 1:
        return first  # nothing to combine; blocks are treated as read-only, so no copy
    if all(first.same_layout(b) for b in blocks[1:]):
        values = first.values.copy()
        for b in blocks[1:]:
            ufunc(values, b.values, out=values)
        return Block.with_layout_of(first, values)
    acc: dict[Key, np.ndarray] = {}
    for b in blocks:
        for key, vec in b.items():
            current = acc.get(key)
            if current is None:
                acc[key] = vec.copy()
            elif len(current) != len(vec):
                raise ShapeMismatch(f"key {key!r} has values of length {len(current)} and {len(vec)}")
            else:
                ufunc(current, vec, out=current)
    return Block.from_dict(acc)


def merge_disjoint(blocks: Iterable[Block]) -> Block:
    """Union of blocks whose keys do not overlap (AllGather assembly).

    A key present twice means two tasks both claimed the same row: that is a
    job bug, reported rather than silently resolved.
    """
    merged: dict[Key, np.ndarray] = {}
    for b in blocks:
        for key, vec in b.items():
            if key in merged:
                raise BadMapperOutput(f"row key {key!r} was emitted by more than one task")
            merged[key] = vec
    return Block.from_dict(merged)


def block_to_matrix(block: Block) -> np.ndarray:
    """AllGather result as a 2-D array, rows in integer-key order."""
    if not all(isinstance(k, int) for k in block.keys):
        bad = next(k for k in block.keys if not isinstance(k, int))
        raise BadMapperOutput(f"AllGather keys must be integer row indices; got {bad!r}")
    width = block.uniform_width()
    if width is None:
        raise ShapeMismatch("AllGather rows have different lengths: " + ", ".join(
            f"row {k}: {n}" for k, n in list(zip(block.keys, block.lengths().tolist()))[:5]))
    # keys are already in ascending integer order (Block canonical order)
    return block.values.reshape(len(block), width).copy()
