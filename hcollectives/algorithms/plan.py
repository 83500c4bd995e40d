"""The poly-algorithm: which exchange runs which collective, and every size
threshold behind that choice, in one place.

Chosen from `hcollectives bench --collectives` runs on the 2-core machine
(docs/measurements.md has the figures):

* AllReduce of blocks with one layout everywhere and at least
  `RING_MIN_BYTES` of values: the **ring** (reduce-scatter + allgather; each
  node sends 2(n-1)/n of the block). Below that the ring's 2(n-1) sequential
  steps cost more wake-ups than its bandwidth saves.
* Every other AllReduce: **recursive doubling** (log2(n) rounds, each node
  sending its accumulator once per round), which replaced the n-ary tree
  (2 * depth sequential messages) as the latency path: on 2 nodes one
  message in each direction at once instead of up then down.
  `HCOLLECTIVES_ALLREDUCE_SMALL=tree` brings the tree back (for comparison
  runs; every daemon of a session must see the same value).
* AllGather: every piece is pushed by its owner to every member as soon as its
  task finishes (each byte crosses each link once), and each node assembles
  the matrix once.

Every node must reach the same choice from what it shares with the others
(the Seal), never from its own block's size alone.
"""

from __future__ import annotations

import os
from typing import Literal

# Below this many value bytes per block the ring loses to recursive doubling
# (its 2(n-1) steps are each a wake-up of every node); 1 MiB on 2 and 4
# daemons runs faster as a ring (measured: docs/measurements.md).
RING_MIN_BYTES = 256 * 1024

# Messages up to this size are sent by the task that produced them instead of
# a task spawned for the send: one trip through the scheduler less on the
# latency path. Bounded so that a send blocked on a full socket buffer can
# never hold up a reader for long (loopback buffers hold several times this).
INLINE_SEND_MAX_BYTES = 64 * 1024

AllReduceStrategy = Literal["ring", "doubling", "tree"]


def allreduce_strategy(seal_layout: str) -> AllReduceStrategy:
    """The AllReduce exchange for a sealed iteration (`Seal.layout`: the common
    layout digest when the ring applies, else "")."""
    if seal_layout:
        return "ring"
    return "tree" if os.environ.get("HCOLLECTIVES_ALLREDUCE_SMALL") == "tree" else "doubling"


def send_inline(nbytes: int) -> bool:
    return nbytes <= INLINE_SEND_MAX_BYTES
