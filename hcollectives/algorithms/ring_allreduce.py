"""Ring AllReduce (reduce-scatter, then allgather) as a sans-IO state machine.

The tree (`tree_allreduce.py`) is latency-optimal: ``2 * depth`` hops. For big
blocks it is bandwidth-poor: every interior node receives and sends whole
blocks, the root ships the result to each child in turn, and each level waits
for the one below to finish. The ring splits the block's values into ``n``
chunks and runs ``2(n-1)`` steps in which every node sends one chunk to its
right neighbour and receives one from its left, all nodes at once:

* reduce-scatter, steps ``0 .. n-2``: at step ``s`` rank ``r`` sends chunk
  ``(r - s) mod n`` and folds the chunk ``(r - s - 1) mod n`` it receives into
  its accumulator; afterwards rank ``r`` holds the final value of chunk
  ``(r + 1) mod n``;
* allgather, steps ``n-1 .. 2n-3``: the final chunks travel once round the
  ring and are copied into place.

Each node sends (and receives) ``2(n-1)/n`` of the block instead of up to
``fanout + 1`` whole blocks, and no node is a hot spot.

Determinism: each chunk is reduced along the ring in one fixed order (starting
at the rank that owns it, ``op(partial of the ranks before, own chunk)``) by
the one node that finishes it; everyone else copies those bits. Results are
therefore bit-identical on every node and from run to run for a given
membership, whatever order the network delivers in. (The grouping differs
from the tree's, so a ring result and a tree result of the same data may differ
in the last bits of a float sum; one iteration never mixes the two.)

The ring needs every node's block to have the same layout (keys and offsets):
the coordinator checks that when it seals the iteration (`Seal.layout`), and
`RingAllReduce` checks every chunk's length on arrival.

Chunks handed out in `Send`s are views of the machine's accumulator. That is
safe over an ordered channel: a chunk a node sent during reduce-scatter is
overwritten only by the allgather copy of the same chunk, which cannot exist
before the peer has received (and folded in) the chunk that was sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .block import Block
from .reduction import OPS, check_op

from .plan import RING_MIN_BYTES  # noqa: F401 -- the threshold lives with the other choices


def ring_layout(block: Block) -> str:
    """Digest of *block*'s keys and offsets if it is big enough for the ring, else "".

    Two blocks with the same digest line up chunk by chunk. Keys are hashed
    with their type, so ``1`` and ``"1"`` differ.
    """
    if block.values.nbytes < RING_MIN_BYTES:
        return ""
    h = hashlib.blake2b(digest_size=16)
    h.update(block.offsets.tobytes())
    for key in block.keys:
        h.update(b"i%d\0" % key if isinstance(key, int) else b"s" + key.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


def reference_result(locals_: Sequence[Block], op: str) -> Block:
    """The result a ring over ``locals_`` (one block per rank) computes, bit for bit.

    Chunk ``c`` is folded in ring order starting at rank ``c``:
    ``op(...op(op(L[c], L[c+1]), L[c+2])..., L[c-1])``. A node that has to
    rebuild the result from the store uses this, and ends with the same bits as
    the nodes whose ring completed.
    """
    ufunc = OPS[check_op(op)]
    n = len(locals_)
    if n == 0:
        raise ValueError("a ring needs at least one node")
    first = locals_[0]
    for other in locals_[1:]:
        if not first.same_layout(other):
            raise ValueError("ring blocks must all have the same layout")
    out = np.empty_like(first.values)
    bounds = chunk_bounds(len(out), n)
    for c in range(n):
        lo, hi = bounds[c], bounds[c + 1]
        acc = out[lo:hi]
        acc[...] = locals_[c].values[lo:hi]
        for j in range(1, n):
            ufunc(acc, locals_[(c + j) % n].values[lo:hi], out=acc)
    return Block(first.keys, first.offsets.copy(), out)


@dataclass(frozen=True, slots=True)
class ChunkSend:
    """An instruction to deliver *data* to rank *dest* as ring step *step*."""

    dest: int
    step: int
    data: np.ndarray


def chunk_bounds(length: int, size: int) -> list[int]:
    """Start offsets of the ``size`` chunks of a vector of *length*, plus its end.

    Chunks differ in length by at most one element; with fewer elements than
    ranks some are empty, which the ring handles like any other chunk.
    """
    return [length * i // size for i in range(size + 1)]


class RingAllReduce:
    """One node's view of one ring AllReduce.

    With ``in_place=True`` the machine reduces into ``local.values`` itself (the
    caller hands over a buffer nobody else reads); otherwise it works on a copy.
    """

    __slots__ = ("rank", "size", "op", "local", "_ufunc", "_acc", "_bounds", "_early",
                 "_next", "_started", "_result", "consumed")

    def __init__(self, rank: int, size: int, op: str, local: Block, *, in_place: bool = False) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"ring size must be an int >= 1, got {size!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < size:
            raise ValueError(f"rank {rank!r} is not in a ring of size {size}")
        if not isinstance(local, Block):
            raise TypeError(f"expected a Block, got {type(local).__name__}")
        self.rank, self.size, self.op = rank, size, check_op(op)
        self.local = local
        self._ufunc = OPS[self.op]
        self._acc = local.values if in_place else local.values.copy()
        self._bounds = chunk_bounds(len(self._acc), size)
        self._early: dict[int, np.ndarray] = {}  # step -> data that arrived before its turn
        self._next = 0  # the step whose data this node processes next
        self._started = False
        self._result: Block | None = None
        # Received chunks already folded in or copied into place: nothing here
        # reads them again, so the service may recycle their buffers.
        self.consumed: list[np.ndarray] = []

    # -- state ------------------------------------------------------------

    @property
    def steps(self) -> int:
        return 2 * (self.size - 1)

    @property
    def left(self) -> int:
        return (self.rank - 1) % self.size

    @property
    def right(self) -> int:
        return (self.rank + 1) % self.size

    @property
    def result(self) -> Block | None:
        return self._result

    @property
    def done(self) -> bool:
        return self._result is not None

    def missing_steps(self) -> tuple[int, ...]:
        """Steps whose data from the left neighbour has not arrived."""
        return tuple(s for s in range(self._next, self.steps) if s not in self._early)

    def chunk_of_step(self, step: int, *, sender: int | None = None) -> int:
        """Index of the chunk *sender* (default: this node's left) sends at *step*."""
        sender = self.left if sender is None else sender
        if step < self.size - 1:
            return (sender - step) % self.size
        return (sender + 1 - (step - (self.size - 1))) % self.size

    def expected_length(self, step: int) -> int:
        c = self.chunk_of_step(step)
        return self._bounds[c + 1] - self._bounds[c]

    # -- events -----------------------------------------------------------

    def start(self) -> list[ChunkSend]:
        if self._started:
            raise ValueError(f"rank {self.rank}: start() called twice")
        self._started = True
        if self.size == 1:
            self._finish()
            return []
        return [self._send(0)] + self._drain()

    def receive_result(self, block: Block) -> None:
        """Finish with a result rebuilt elsewhere (the store fallback,
        `reference_result`); later chunks are then ignored by the caller."""
        if not isinstance(block, Block) or not block.same_layout(self.local):
            raise ValueError(f"rank {self.rank}: a ring result must have the local block's layout")
        if self._result is not None:
            raise ValueError(f"rank {self.rank} got a second result")
        self._result = block

    def receive(self, step: int, data: np.ndarray) -> list[ChunkSend]:
        """Record the chunk the left neighbour sent at *step* (any order)."""
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < self.steps:
            raise ValueError(f"rank {self.rank}: ring step {step!r} outside 0..{self.steps - 1}")
        if step < self._next or step in self._early:
            raise ValueError(f"rank {self.rank}: second chunk for ring step {step}")
        if not isinstance(data, np.ndarray) or data.dtype != self._acc.dtype or data.ndim != 1:
            raise ValueError(f"rank {self.rank}: ring step {step} data must be a 1-D {self._acc.dtype} array")
        if len(data) != self.expected_length(step):
            raise ValueError(f"rank {self.rank}: ring step {step} carries {len(data)} values, expected "
                             f"{self.expected_length(step)} (do the nodes' blocks have the same layout?)")
        if self._result is not None:
            return []  # finished from the store meanwhile: the same bits, nothing to do
        self._early[step] = data
        return self._drain() if self._started else []

    # -- internals ----------------------------------------------------------

    def _chunk(self, c: int) -> np.ndarray:
        return self._acc[self._bounds[c] : self._bounds[c + 1]]

    def _send(self, step: int) -> ChunkSend:
        return ChunkSend(self.right, step, self._chunk(self.chunk_of_step(step, sender=self.rank)))

    def _drain(self) -> list[ChunkSend]:
        sends: list[ChunkSend] = []
        while self._next in self._early:
            step = self._next
            data = self._early.pop(step)
            target = self._chunk(self.chunk_of_step(step))
            if step < self.size - 1:
                # op(partial of the ranks before mine, my chunk): a fixed order.
                self._ufunc(data, target, out=target)
            else:
                target[...] = data
            self.consumed.append(data)  # the caller may reuse its buffer now
            self._next += 1
            if self._next < self.steps:
                sends.append(self._send(self._next))
            else:
                self._finish()
        return sends

    def _finish(self) -> None:
        self._result = Block(self.local.keys, self.local.offsets, self._acc)

    def __repr__(self) -> str:
        return (f"RingAllReduce(rank={self.rank}, size={self.size}, op={self.op!r}, "
                f"next_step={self._next}/{self.steps}, done={self.done})")
