"""Recursive-doubling AllReduce as a sans-IO state machine: the latency path.

The tree (`tree_allreduce.py`) needs ``2 * depth`` messages in sequence (up
to the root, then down again); every message is a process wake-up, and on a
loaded 2-core machine a wake-up, not the bytes, is what a small AllReduce
costs. Recursive doubling needs ``log2(p)`` rounds, in each of which every
node sends once and receives once, all at the same time:

* ``p`` is the largest power of two <= ``n``; ranks ``p .. n-1`` are *extras*.
  Step ``PRE`` (only when ``n > p``): extra ``r`` sends its local block to
  ``r - p``, which folds it in as ``op(own, extra's)``.
* Steps ``0 .. log2(p)-1``: rank ``r < p`` sends its accumulator to
  ``r ^ 2**k`` and combines the two as ``op(lower-ranked, higher-ranked)``.
* Step ``POST`` (only when ``n > p``): rank ``r < n - p`` sends the result to
  ``r + p``.

2 nodes: 1 round (each node sends one message); 4 nodes: 2 rounds; 3 nodes:
pre + 1 round + post. No root, no coordinator, no acknowledgement.

Determinism: at step ``k`` both partners combine the same two values in the
same order (the lower-ranked group's first), so both hold bit-identical
accumulators; by induction every node ends with the same bits, equal to
`reference_result` (a balanced binary reduction over the ranks in order,
extras folded into their partner first), whatever order messages arrive in.
A node may get a partner's step-``k+1`` message before its own step ``k`` is
complete; such messages wait in the machine until their step comes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .block import Block
from .reduction import check_op, reduce_blocks

PRE = -1
POST = 1 << 20  # above any round number (log2 of a node count)


@dataclass(frozen=True, slots=True)
class Exchange:
    """Deliver *block* to rank *dest* as this rank's message of *step*."""

    dest: int
    step: int
    block: Block


def _power_below(n: int) -> int:
    p = 1
    while p * 2 <= n:
        p *= 2
    return p


def schedule(n: int) -> list[int]:
    """The steps of an AllReduce over *n* ranks, in order."""
    if n < 1:
        raise ValueError(f"need at least one rank, got {n}")
    p = _power_below(n)
    rounds = list(range(p.bit_length() - 1))
    return ([PRE] if n > p else []) + rounds + ([POST] if n > p else [])


class DoublingAllReduce:
    """One rank's part of one recursive-doubling AllReduce.

    Blocks handed out in sends and the result are shared, not copied: treat
    them as read-only (a received block is never written either)."""

    __slots__ = ("rank", "n", "op", "_p", "_acc", "_step", "_inbox", "result", "_started")

    def __init__(self, rank: int, n: int, op: str, local: Block) -> None:
        if not 0 <= rank < n:
            raise ValueError(f"rank {rank} outside 0..{n - 1}")
        self.rank, self.n, self.op = rank, n, check_op(op)
        self._p = _power_below(n)
        self._acc = local
        self._inbox: dict[int, Block] = {}  # step -> partner's block, arrived early
        self._step: int | None = None  # the step whose partner message we wait for
        self.result: Block | None = None
        self._started = False

    @property
    def done(self) -> bool:
        return self.result is not None

    def partner(self, step: int) -> int | None:
        """Whom this rank hears from at *step* (None: nobody)."""
        r, p = self.rank, self._p
        if step == PRE:
            return r + p if r + p < self.n else None
        if step == POST:
            return r - p if r >= p else None
        return r ^ (1 << step) if r < p else None

    def waiting_for(self) -> tuple[int, int] | None:
        """(step, rank) of the message this rank needs next, if any."""
        if self.done or self._step is None:
            return None
        return self._step, self.partner(self._step)

    def start(self) -> list[Exchange]:
        if self._started:
            raise RuntimeError("start() called twice")
        self._started = True
        if self.rank >= self._p:  # an extra: hand over, then wait for the result
            self._step = POST
            return [Exchange(self.rank - self._p, PRE, self._acc)] + self._drain()
        return self._advance(PRE)

    def receive(self, step: int, sender: int, block: Block) -> list[Exchange]:
        """A partner's message arrived (in any order); returns what to send now."""
        if not isinstance(block, Block):
            raise TypeError(f"expected a Block, got {type(block).__name__}")
        if step not in schedule(self.n) or self.partner(step) != sender:
            raise ValueError(f"rank {self.rank} expects no step-{step} message from rank {sender}")
        if self.done:
            return []  # late over TCP after the store fallback finished us: the same data
        if step in self._inbox or (self._step is not None and step < self._step):
            raise ValueError(f"duplicate step-{step} message from rank {sender}")
        self._inbox[step] = block
        return self._drain() if self._started else []

    def receive_result(self, result: Block) -> list[Exchange]:
        """The result from elsewhere (the store fallback): finish with it."""
        if self.done:
            return []
        self.result = result
        self._step = None
        return self._post_sends()

    # -- internals ------------------------------------------------------------------

    def _advance(self, step: int) -> list[Exchange]:
        """Enter *step* (a non-extra rank): send what it sends, then drain."""
        sends: list[Exchange] = []
        while True:
            if step == PRE:
                if self.partner(PRE) is None:
                    step = 0
                    continue
                self._step = PRE
                return sends + self._drain()
            if step >= self._p.bit_length() - 1:  # all rounds done
                self.result = self._acc
                self._step = None
                return sends + self._post_sends()
            self._step = step
            sends.append(Exchange(self.partner(step), step, self._acc))
            return sends + self._drain()

    def _drain(self) -> list[Exchange]:
        sends: list[Exchange] = []
        while self._step is not None and self._step in self._inbox:
            step = self._step
            theirs = self._inbox.pop(step)
            if step == POST:
                self.result = theirs
                self._step = None
                return sends
            sender = self.partner(step)
            pair = [self._acc, theirs] if self.rank < sender else [theirs, self._acc]
            self._acc = reduce_blocks(pair, self.op)
            sends += self._advance(0 if step == PRE else step + 1)
        return sends

    def _post_sends(self) -> list[Exchange]:
        extra = self.rank + self._p
        if self.rank < self._p and extra < self.n:
            return [Exchange(extra, POST, self.result)]
        return []


def reference_result(locals_: Sequence[Block], op: str) -> Block:
    """The result every rank computes, computed sequentially from every rank's
    local block (the store fallback uses it, the tests check against it)."""
    n = len(locals_)
    p = _power_below(n)
    level = [reduce_blocks([locals_[r], locals_[r + p]], op) if r + p < n else locals_[r] for r in range(p)]
    while len(level) > 1:
        level = [reduce_blocks([level[i], level[i + 1]], op) for i in range(0, len(level), 2)]
    return level[0]
