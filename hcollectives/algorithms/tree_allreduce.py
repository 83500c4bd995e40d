"""Tree AllReduce as a sans-IO state machine: what one node does in one iteration.

The machine never touches a socket. The service feeds it what arrived
(`receive_partial`, `receive_result`) and carries out the `Send` messages it
returns; the test suite drives a whole tree of them over an in-memory queue.

Protocol over a `Tree`:

* up:   each node waits for the "partial" of every child, combines
        ``[local] + partials in ascending child rank`` with `reduce_blocks`,
        and sends the combined block as its own "partial" to its parent;
* down: the root's combined block is the result; every node forwards the
        "result" it receives to each of its children.

Because the combination order is fixed by rank (never by arrival order) and
the root computes the result once and everybody else copies it, every node
ends with a bit-identical result however the network schedules messages.

Failure handling lives in the service, not here; the machine only offers the
hooks it needs: `missing_children` says whose partial to read from the
durable store after a deadline, and `receive_result` accepts a result at any
time (a store fallback may deliver it before this node has even sent its
partial).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .block import Block
from .reduction import check_op, reduce_blocks
from .topology import Tree

Kind = Literal["partial", "result"]


@dataclass(frozen=True, slots=True)
class Send:
    """An instruction to deliver *block* to rank *dest* as a *kind* message."""

    dest: int
    kind: Kind
    block: Block


def _check_block(block: object) -> Block:
    if not isinstance(block, Block):
        raise TypeError(f"expected a Block, got {type(block).__name__}")
    return block


class TreeAllReduce:
    """One node's view of one AllReduce over a reduction tree.

    Result blocks are shared, not copied, between the machine and the sends it
    returns (and, in-process, between nodes): treat them as read-only.
    """

    __slots__ = ("rank", "tree", "op", "local", "_parent", "_children",
                 "_partials", "_started", "_partial_sent", "_result")

    def __init__(self, rank: int, tree: Tree, op: str, local: Block) -> None:
        if not isinstance(tree, Tree):
            raise TypeError(f"expected a Tree, got {type(tree).__name__}")
        self.rank = tree.check_rank(rank)
        self.tree = tree
        self.op = check_op(op)
        self.local = _check_block(local)
        self._parent = tree.parent(rank)
        self._children = tree.children(rank)
        self._partials: dict[int, Block] = {}
        self._started = False
        self._partial_sent = False
        self._result: Block | None = None

    # -- state ------------------------------------------------------------

    @property
    def is_root(self) -> bool:
        return self._parent is None

    @property
    def parent(self) -> int | None:
        return self._parent

    @property
    def children(self) -> tuple[int, ...]:
        return self._children

    @property
    def result(self) -> Block | None:
        return self._result

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def partial_sent(self) -> bool:
        return self._partial_sent

    def missing_children(self) -> tuple[int, ...]:
        """Children whose partial has not arrived, ascending."""
        return tuple(c for c in self._children if c not in self._partials)

    # -- events -----------------------------------------------------------

    def start(self) -> list[Send]:
        """Begin the iteration: leaves send their partial, a lone root finishes.

        Interior nodes have nothing to do until partials arrive, and those may
        legitimately arrive (and be combined) before `start` is called.
        """
        if self._started:
            raise ValueError(f"rank {self.rank}: start() called twice")
        self._started = True
        return self._combine_if_complete()

    def receive_partial(self, child: int, block: Block) -> list[Send]:
        """Record the combined partial of *child*'s subtree."""
        _check_block(block)
        if isinstance(child, bool) or child not in self._children:  # True == 1 would slip through
            raise ValueError(
                f"rank {self.rank} got a partial from rank {child!r}, which is not one of its "
                f"children {list(self._children)} in a tree of size {self.tree.size}")
        if child in self._partials:
            raise ValueError(f"rank {self.rank} got a second partial from child rank {child}")
        self._partials[child] = block
        return self._combine_if_complete()

    def receive_result(self, block: Block) -> list[Send]:
        """Accept the final result (from the parent or a store fallback) and pass it down."""
        _check_block(block)
        if self.is_root:
            raise ValueError(f"rank {self.rank} is the root; it computes the result and cannot receive one")
        if self._result is not None:
            raise ValueError(f"rank {self.rank} got a second result")
        self._result = block
        return self._broadcast()

    # -- internals ----------------------------------------------------------

    def _combine_if_complete(self) -> list[Send]:
        # A leaf is "complete" as soon as it starts; an interior node when its
        # last child reports. Once a result is known (store fallback) the
        # parent is necessarily done, so a partial would only be noise.
        if self._partial_sent or self._result is not None or self.missing_children():
            return []
        if not self._children and not self._started:
            return []  # a leaf's only trigger is start()
        if self._children:
            # Fixed order: local first, then children by rank -> deterministic bits.
            combined = reduce_blocks([self.local] + [self._partials[c] for c in self._children], self.op)
        else:
            # A leaf's partial, or a lone root's result, is its local block: blocks
            # are read-only everywhere, so sharing it costs nothing and is safe.
            combined = self.local
        if self._parent is None:
            self._result = combined
            return self._broadcast()
        self._partial_sent = True
        return [Send(self._parent, "partial", combined)]

    def _broadcast(self) -> list[Send]:
        assert self._result is not None
        return [Send(child, "result", self._result) for child in self._children]

    def __repr__(self) -> str:
        return (f"TreeAllReduce(rank={self.rank}, size={self.tree.size}, op={self.op!r}, "
                f"missing={list(self.missing_children())}, partial_sent={self._partial_sent}, done={self.done})")
