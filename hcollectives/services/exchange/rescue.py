"""An iteration's result rebuilt from the store, bit for bit as the daemons compute it.

Used when a member daemon of a sealed iteration is gone and no successor
took its place (no task of the run came to its node again, e.g. in the
last iteration): nobody would compute its part, and if it was the tree's
root, nobody the result. The coordinator (in the driver, which can read the
store too) then computes the result the way the collective would have --
the same per-node reductions, the same tree or ring order -- writes it where
the daemons' fallback looks for it, and carries on. Every accepted piece is
in the store: a daemon acknowledges a contribution only once it is written.
Not necessarily yet: a piece whose claim was accepted just before its daemon
died is written by the successor its task retries with, which on a loaded
machine can start after the rescue's deadline; so the rescue first waits for
the pieces (`wait_for_pieces`).
(Resident tasks' contributions are acknowledged before their copy is written,
`Contribute.durable`; a resident run does not get here: a lost daemon ends
its session and the driver restarts the loop from the last finished iteration.)
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ... import store as st
from ...algorithms.block import Block
from ...algorithms.gather import GatherAssembly
from ...algorithms.reduction import reduce_blocks
from ...algorithms import doubling_allreduce, plan
from ...algorithms.ring_allreduce import reference_result
from ...algorithms.topology import Tree
from ...errors import CollectiveTimeout
from ...protocol import messages as m
from .gather import piece_id

# As long as a daemon's own store fallback waits for a piece (node_session.Timeouts.collective).
PIECES_TIMEOUT = 600.0


async def wait_for_pieces(store: st.Store, session: str, seal: m.Seal, *, until: Callable[[], bool],
                          timeout: float = PIECES_TIMEOUT) -> bool:
    """Wait until every piece of *seal* is in the store; False if *until()* came
    true first (the result arrived by another way). Polls with backoff, like the
    daemons' `store_fallback.store_wait`: a remote store cannot be watched."""
    deadline = trio.current_time() + timeout
    missing = [st.contribution_path(session, seal.iteration, t, a) for t, a, _ in seal.pieces]
    delay = 0.02
    while True:
        missing = [p for p in missing if not await trio.to_thread.run_sync(store.exists, p)]
        if not missing:
            return True
        if until():
            return False
        if trio.current_time() >= deadline:
            raise CollectiveTimeout(f"{missing[0]} (and {len(missing) - 1} more) did not appear in the store "
                                    f"within {timeout:g}s")
        await trio.sleep(delay)
        delay = min(delay * 2, 1.0)


def node_locals(store: st.Store, session: str, seal: m.Seal, op: str) -> list[Block]:
    """Each member's node-level reduction (its pieces in task order), in rank order."""
    out = []
    for node in seal.members:
        pieces = sorted((t, a) for t, a, n in seal.pieces if n == node)
        out.append(reduce_blocks([store.load_block(st.contribution_path(session, seal.iteration, t, a))
                                  for t, a in pieces], op))
    return out


def subtree_partial(locals_: list[Block], tree: Tree, rank: int, op: str) -> Block:
    """What rank's subtree sends up: its local block, then its children's partials
    by rank (TreeAllReduce's fixed order), so the bits are the tree's."""
    children = tree.children(rank)
    if not children:
        return locals_[rank]
    return reduce_blocks([locals_[rank]] + [subtree_partial(locals_, tree, c, op) for c in children], op)


def result_from_store(store: st.Store, session: str, seal: m.Seal, collective: str, op: str,
                      fanout: int) -> Block:
    """The result of *seal*'s iteration from the pieces in the store (blocking I/O)."""
    if collective == "allgather":
        assembly = GatherAssembly()
        assembly.expect(piece_id(t, a) for t, a, _ in seal.pieces)
        for t, a, _ in seal.pieces:
            assembly.add(piece_id(t, a), store.load_block(st.contribution_path(session, seal.iteration, t, a)))
        return assembly.result()
    locals_ = node_locals(store, session, seal, op)
    # In the order of the exchange the daemons run (algorithms/plan.py), so a
    # rescued result has the very bits the surviving nodes computed.
    strategy = plan.allreduce_strategy(seal.layout)
    if strategy == "ring":
        return reference_result(locals_, op)
    if strategy == "doubling":
        return doubling_allreduce.reference_result(locals_, op)
    return subtree_partial(locals_, Tree(len(seal.members), fanout), 0, op)
