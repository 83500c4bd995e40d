"""`Block`: the one data shape every collective moves around.

A block is a set of keyed 1-D float64 vectors stored flat: ``keys[i]`` owns
``values[offsets[i]:offsets[i + 1]]``. One flat buffer (not a list of small
arrays) is what lets the wire protocol send a whole contribution as two raw
buffers and receive it with ``recv_into``, and lets reductions run vectorised
when every block carries the same keys.

Keys are ``int`` or ``str`` (what mrjob jobs emit as keys in practice); a
block's keys are unique and kept in canonical order (`key_order`), so two
blocks with the same key set line up position by position.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Union

import numpy as np

from ..errors import BadMapperOutput

Key = Union[int, str]

VALUE_DTYPE = np.dtype("<f8")
OFFSET_DTYPE = np.dtype("<i8")


def key_order(key: Key) -> tuple[int, int | str]:
    """Sort key putting all ints (numerically) before all strs (lexically)."""
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise BadMapperOutput(f"key {key!r} is not an int or a str")
    return (0, key) if isinstance(key, int) else (1, key)


def check_key(key: object) -> Key:
    """Return *key* as a collective key, or raise naming what is wrong with it."""
    if isinstance(key, bool):  # bool is an int subclass; True as a key is a bug
        raise BadMapperOutput(f"key {key!r} is a bool; use an int or a str")
    if isinstance(key, np.integer):
        return int(key)
    if isinstance(key, (int, str)):
        return key
    raise BadMapperOutput(f"key {key!r} ({type(key).__name__}) is not an int or a str")


@dataclass(frozen=True, slots=True, eq=False)
class Block:
    """Keyed float64 vectors in one flat buffer; validated on construction."""

    keys: tuple[Key, ...]
    offsets: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.keys, tuple):
            object.__setattr__(self, "keys", tuple(self.keys))
        offsets = np.ascontiguousarray(self.offsets)
        values = np.ascontiguousarray(self.values)  # the wire sends raw buffers
        if offsets.dtype != OFFSET_DTYPE or offsets.ndim != 1:
            raise ValueError(f"offsets must be 1-D int64, got {offsets.dtype} {offsets.shape}")
        if values.dtype != VALUE_DTYPE or values.ndim != 1:
            raise ValueError(f"values must be 1-D float64, got {values.dtype} {values.shape}")
        if len(offsets) != len(self.keys) + 1:
            raise ValueError(f"{len(self.keys)} keys need {len(self.keys) + 1} offsets, got {len(offsets)}")
        if offsets[0] != 0 or offsets[-1] != len(values):
            raise ValueError("offsets must start at 0 and end at len(values)")
        if len(offsets) > 2 and (offsets[1:] < offsets[:-1]).any():
            raise ValueError("offsets must not decrease")
        elif len(offsets) == 2 and offsets[1] < offsets[0]:
            raise ValueError("offsets must not decrease")
        keys = self.keys
        # Canonical order is what lets blocks line up position by position and
        # AllGather rows come out in key order; strictly increasing also means unique.
        # Every block received is validated here, on the latency path: all-int
        # keys (the common case) are compared directly, without key_order tuples.
        if all(type(k) is int for k in keys):
            if any(a >= b for a, b in zip(keys, keys[1:])):
                raise ValueError("block keys must be unique and in canonical order (ints ascending, then strs)")
        else:
            order = [key_order(key) for key in keys]
            if any(a >= b for a, b in zip(order, order[1:])):
                raise ValueError("block keys must be unique and in canonical order (ints ascending, then strs)")
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "values", values)

    # -- construction -----------------------------------------------------

    @classmethod
    def with_layout_of(cls, valid: "Block", values: np.ndarray) -> "Block":
        """A block with *valid*'s keys and offsets (shared: blocks are read-only)
        and *values*, a 1-D C-contiguous float64 array as long as *valid*'s.

        The checks of the constructor are about keys and offsets, which *valid*
        passed already; only *values* is new, and it is checked here. A
        reduction builds one of these per combine on the latency path."""
        if (type(values) is not np.ndarray or values.dtype != VALUE_DTYPE or values.ndim != 1
                or len(values) != len(valid.values) or not values.flags.c_contiguous):
            return cls(valid.keys, valid.offsets, values)  # the constructor says what is wrong
        block = object.__new__(cls)
        object.__setattr__(block, "keys", valid.keys)
        object.__setattr__(block, "offsets", valid.offsets)
        object.__setattr__(block, "values", values)
        return block

    @classmethod
    def empty(cls) -> "Block":
        return cls((), np.zeros(1, OFFSET_DTYPE), np.zeros(0, VALUE_DTYPE))

    @classmethod
    def from_dict(cls, mapping: Mapping[Key, np.ndarray]) -> "Block":
        """Build a block from ``{key: 1-D array}``, keys put in canonical order."""
        mapping = {check_key(k): v for k, v in mapping.items()}
        keys = sorted(mapping, key=key_order)
        vectors = [np.ascontiguousarray(mapping[k], dtype=VALUE_DTYPE).reshape(-1) for k in keys]
        offsets = np.zeros(len(keys) + 1, OFFSET_DTYPE)
        np.cumsum([len(v) for v in vectors], out=offsets[1:])
        values = np.concatenate(vectors) if vectors else np.zeros(0, VALUE_DTYPE)
        return cls(tuple(keys), offsets, values)

    @classmethod
    def from_matrix(cls, keys: tuple[Key, ...], matrix: np.ndarray) -> "Block":
        """Build a block whose i-th key owns row i of a 2-D array (no per-row copies)."""
        matrix = np.asarray(matrix, dtype=VALUE_DTYPE)
        if matrix.ndim != 2 or matrix.shape[0] != len(keys):
            raise ValueError(f"need a 2-D array with {len(keys)} rows, got shape {matrix.shape}")
        keys = tuple(check_key(k) for k in keys)
        order = sorted(range(len(keys)), key=lambda i: key_order(keys[i]))
        if order != list(range(len(keys))):
            keys, matrix = tuple(keys[i] for i in order), matrix[order]
        matrix = np.ascontiguousarray(matrix)
        offsets = np.arange(len(keys) + 1, dtype=OFFSET_DTYPE) * matrix.shape[1]
        return cls(tuple(keys), offsets, matrix.reshape(-1))

    # -- access -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.offsets.nbytes)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def vector(self, i: int) -> np.ndarray:
        """The i-th key's values (a view, not a copy)."""
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def items(self) -> Iterator[tuple[Key, np.ndarray]]:
        for i, key in enumerate(self.keys):
            yield key, self.vector(i)

    def to_dict(self) -> dict[Key, np.ndarray]:
        """``{key: ndarray}`` with each array an independent copy."""
        return {key: vec.copy() for key, vec in self.items()}

    def uniform_width(self) -> int | None:
        """The common vector length if every key has the same one, else None."""
        lengths = self.lengths()
        if len(lengths) == 0:
            return 0
        return int(lengths[0]) if np.all(lengths == lengths[0]) else None

    def same_layout(self, other: "Block") -> bool:
        """True when both blocks have the same keys in the same order and lengths."""
        if self.offsets is other.offsets:  # (reductions share them: `with_layout_of`)
            return self.keys == other.keys
        return self.keys == other.keys and np.array_equal(self.offsets, other.offsets)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Block):
            return NotImplemented
        return self.same_layout(other) and np.array_equal(self.values, other.values)
