"""AllReduce over an n-ary tree of daemons: partials go up, the result comes down.

The latency-optimal execution for small blocks (algorithms/tree_allreduce.py
holds the pure state machine; this module moves its sends over the
session's peer links). A child partial or the result that has not arrived
within the session's fallback timeout is rebuilt from the store.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ... import store as st
from ...algorithms.block import Block
from ...algorithms.reduction import reduce_blocks
from ...algorithms.topology import Tree, ranks_of
from ...algorithms.tree_allreduce import Send, TreeAllReduce
from ...errors import CollectiveTimeout
from ...protocol import messages as m
from . import rescue, store_fallback

if TYPE_CHECKING:
    from .session_view import SessionView

log = logging.getLogger(__name__)



async def run(session: SessionView, seal: m.Seal, local: Block) -> None:
    """This node's part of iteration *seal.iteration*'s tree AllReduce of *local*."""
    i, state = seal.iteration, session.it(seal.iteration)
    tree = Tree(len(seal.members), session.info.fanout)
    rank = ranks_of(seal.members)[session.node]
    state.tree = TreeAllReduce(rank, tree, session.info.op, local)
    await _execute(session, i, state.tree.start())
    early, state.early = state.early, []
    await feed(session, i, [e for e in early if isinstance(e, (m.Partial, m.Result))])
    with trio.move_on_after(session.info.fallback_timeout):
        while not state.tree.done:
            await session.next_change()
    if not state.tree.done:
        await _fallback(session, seal, tree, rank)


async def feed(session: SessionView, iteration: int, events: list[m.Message]) -> None:
    state = session.it(iteration)
    for event in events:
        # A partial or result the store fallback already delivered may still
        # turn up late over TCP: it is the same data, so it is dropped.
        if isinstance(event, m.Partial):
            if event.rank not in state.tree.missing_children():
                continue
            sends = state.tree.receive_partial(event.rank, event.block)
        elif state.tree.result is None:
            sends = state.tree.receive_result(event.block)
        else:
            continue
        await _execute(session, iteration, sends)
    session.notify()


async def _execute(session: SessionView, iteration: int, sends: list[Send]) -> None:
    state = session.it(iteration)
    members = state.seal.members
    for send in sends:
        node = members[send.dest]
        if send.kind == "partial":
            event = m.Partial(session.session, iteration, state.tree.rank, send.block)
        else:
            event = m.Result(session.session, iteration, send.block)
        session.nursery.start_soon(session.send_quietly, node, event)
    if state.tree.done and state.result is None:
        await session.finish(iteration, state.tree.result)


async def _fallback(session: SessionView, seal: m.Seal, tree: Tree, rank: int) -> None:
    """Read from the store what the tree did not deliver in time."""
    i, state = seal.iteration, session.it(seal.iteration)
    for child in state.tree.missing_children():
        nodes = {seal.members[r] for r in tree.subtree(child)}
        pieces = sorted((t, a) for t, a, n in seal.pieces if n in nodes)
        log.warning("node %s: iteration %d: partial of rank %d missing after %gs; trying the store",
                    session.node, i, child, session.info.fallback_timeout)
        blocks = {(t, a): await store_fallback.load_piece(session, i, t, a) for t, a in pieces}
        if child in state.tree.missing_children():  # not delivered over TCP while we read
            await session.notice(i, f"partial of rank {child} missing after {session.info.fallback_timeout:g}s; "
                                 f"reduced its {len(pieces)} piece(s) from the store")
            await _execute(session, i, state.tree.receive_partial(child, _partial(seal, tree, child, blocks,
                                                                                  session.info.op)))
    if not state.tree.done:
        if session.store is None:
            raise CollectiveTimeout(f"the result of iteration {i} never arrived and there is no store")
        path = st.result_path(session.session, i)
        log.warning("node %s: iteration %d: result missing after %gs; trying the store",
                    session.node, i, session.info.fallback_timeout)
        if await store_fallback.store_wait(session, path, session.timeouts.collective, until=lambda: state.tree.done):
            block = await trio.to_thread.run_sync(session.store.load_block, path)
            if not state.tree.done:  # the parent's copy may have arrived while we read
                await session.notice(i, f"result missing after {session.info.fallback_timeout:g}s; read it from the store")
                await _execute(session, i, state.tree.receive_result(block))


def _partial(seal: m.Seal, tree: Tree, child: int, blocks: dict, op: str) -> Block:
    """The partial *child*'s subtree would have sent, from its pieces: per node in
    task order, then the subtree in the tree's own order (rescue.subtree_partial),
    so the bits match an undisturbed run's even when *child* is not a leaf."""
    locals_: dict[int, Block] = {}
    for r in tree.subtree(child):
        node = seal.members[r]
        locals_[r] = reduce_blocks([blocks[(t, a)] for t, a in sorted((t, a) for t, a, n in seal.pieces if n == node)], op)
    return rescue.subtree_partial(locals_, tree, child, op)
