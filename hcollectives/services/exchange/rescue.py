"""An iteration's result rebuilt from the store, bit for bit as the daemons compute it.

Used when a member daemon of a sealed iteration is gone and no successor
took its place (no task of the run came to its node again, e.g. in the
last iteration): nobody would compute its part, and if it was the tree's
root, nobody the result. The coordinator (in the driver, which can read the
store too) then computes the result the way the collective would have --
the same per-node reductions, the same tree or ring order -- writes it where
the daemons' fallback looks for it, and carries on. Every accepted piece is
in the store: a daemon acknowledges a contribution only once it is written.
(Resident tasks' contributions are acknowledged before their copy is written,
`Contribute.durable`; a resident run does not get here: a lost daemon ends
its session and the driver restarts the loop from the last finished iteration.)
"""

from __future__ import annotations

from ... import store as st
from ...algorithms.block import Block
from ...algorithms.gather import GatherAssembly
from ...algorithms.reduction import reduce_blocks
from ...algorithms import doubling_allreduce, plan
from ...algorithms.ring_allreduce import reference_result
from ...algorithms.topology import Tree
from ...protocol import messages as m
from .gather import piece_id


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
