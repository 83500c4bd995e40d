"""Reduction-tree topology: which node talks to which during an AllReduce.

Pure arithmetic over ranks. Nodes are numbered 0..size-1 (rank 0 is the
root) and laid out as an n-ary heap: the children of rank ``r`` are
``fanout*r + 1 .. fanout*r + fanout``. A heap needs no messages to agree on:
every node derives the same tree from ``(size, fanout)`` alone, and its depth
is the minimum any tree of that fanout can have, which bounds the latency of
one AllReduce at ``2 * depth`` message hops.

`ranks_of` maps node ids to ranks by sorting them, so nodes that learn the
member list independently (from the driver, from the store) still agree on
who is the root and who is whose parent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigurationError


def _check_int(name: str, value: object, minimum: int) -> None:
    # bool is an int subclass; Tree(True, 2) is a caller bug, not size 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"tree {name} must be an int, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"tree {name} must be >= {minimum}, got {value}")


@dataclass(frozen=True, slots=True)
class Tree:
    """An n-ary heap over ranks ``0..size-1`` rooted at rank 0.

    ``fanout=1`` is a chain (depth ``size-1``); ``fanout >= 2`` is the
    useful case.
    """

    size: int
    fanout: int

    def __post_init__(self) -> None:
        _check_int("size", self.size, 1)
        _check_int("fanout", self.fanout, 1)

    def check_rank(self, rank: object) -> int:
        """Return *rank* if it names a node of this tree, else raise `ConfigurationError`."""
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < self.size:
            raise ConfigurationError(f"rank {rank!r} is not in a tree of size {self.size} (ranks 0..{self.size - 1})")
        return rank

    def parent(self, rank: int) -> int | None:
        """The rank *rank* sends its partial to, or None for the root."""
        self.check_rank(rank)
        return None if rank == 0 else (rank - 1) // self.fanout

    def children(self, rank: int) -> tuple[int, ...]:
        """The ranks whose partials *rank* waits for, ascending (empty for a leaf)."""
        self.check_rank(rank)
        first = self.fanout * rank + 1
        return tuple(range(first, min(first + self.fanout, self.size)))

    def is_leaf(self, rank: int) -> bool:
        return not self.children(rank)

    def level(self, rank: int) -> int:
        """Number of hops from the root down to *rank* (the root is level 0)."""
        self.check_rank(rank)
        hops = 0
        while rank:
            rank = (rank - 1) // self.fanout
            hops += 1
        return hops

    @property
    def depth(self) -> int:
        """Levels below the root: 0 for a single node.

        The last rank is always on the deepest level of a heap.
        """
        return self.level(self.size - 1)

    def subtree(self, rank: int) -> tuple[int, ...]:
        """*rank* and every rank below it, ascending.

        In a heap the descendants of one rank on each level form a contiguous
        range, so the subtree is a few ranges rather than a graph walk.
        """
        self.check_rank(rank)
        out: list[int] = []
        lo = hi = rank
        while lo < self.size:
            out.extend(range(lo, min(hi, self.size - 1) + 1))
            lo, hi = self.fanout * lo + 1, self.fanout * hi + self.fanout
        return tuple(out)


def ranks_of(members: Sequence[str]) -> dict[str, int]:
    """Map node ids to ranks: the i-th id in sorted order gets rank i.

    Sorting (rather than arrival order) is what lets every node compute the
    same ranks without talking to the others.
    """
    if isinstance(members, str):  # a bare str would be read as one id per character
        raise TypeError("members must be a sequence of node ids, not a single str")
    ids = list(members)
    for node in ids:
        if not isinstance(node, str):
            raise ConfigurationError(f"node id {node!r} is not a str")
    dupes = sorted(node for node, count in Counter(ids).items() if count > 1)
    if dupes:
        raise ConfigurationError(f"duplicate node ids: {', '.join(map(repr, dupes))}")
    return {node: rank for rank, node in enumerate(sorted(ids))}
