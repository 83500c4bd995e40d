"""Ring AllReduce (reduce-scatter + allgather) for big blocks of one layout.

Every node sends each byte once per link (algorithms/ring_allreduce.py holds
the pure state machine). A chunk lost somewhere round the ring makes every
node whose ring is incomplete rebuild the result from the store, folded in
the ring's own order so the bits match those of the nodes that completed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ...algorithms.block import Block
from ...algorithms.reduction import reduce_blocks
from ...algorithms.ring_allreduce import ChunkSend, RingAllReduce, reference_result, ring_layout
from ...algorithms.topology import ranks_of
from ...errors import ProtocolError
from ...protocol import messages as m
from . import store_fallback

if TYPE_CHECKING:
    from .session_view import SessionView

log = logging.getLogger(__name__)



async def run(session: SessionView, seal: m.Seal, local: Block) -> None:
    """Ring AllReduce of a big block whose layout every node shares (`Seal.layout`)."""
    i, state = seal.iteration, session.it(seal.iteration)
    if ring_layout(local) != seal.layout:
        raise ProtocolError(f"iteration {i}: this node's block does not have the sealed layout")
    # Reduce in place when nobody else reads the buffer: several pieces were
    # just combined into a fresh one, or the only piece has no checkpoint
    # being written from it in the background.
    in_place = len(state.contributions) > 1 or session.store is None
    state.ring = RingAllReduce(ranks_of(seal.members)[session.node], len(seal.members), session.info.op, local,
                               in_place=in_place)
    _execute(session, i, state.ring.start())
    early, state.early = state.early, []
    feed(session, i, [e for e in early if isinstance(e, m.RingChunk)])
    if state.ring.done:
        await session.finish(i, state.ring.result)
        return
    with trio.move_on_after(session.info.fallback_timeout):
        while not state.ring.done:
            await session.next_change()
    if not state.ring.done:
        # A chunk was lost somewhere round the ring. Rebuild the result
        # from every piece in the store, folded in the ring's own order, so
        # the bits match those of the nodes whose ring completed.
        log.warning("node %s: iteration %d: ring incomplete after %gs (steps %s missing); trying the store",
                    session.node, i, session.info.fallback_timeout, list(state.ring.missing_steps()))
        locals_ = []
        for node in seal.members:
            pieces = sorted((t, a) for t, a, n in seal.pieces if n == node)
            locals_.append(reduce_blocks([await store_fallback.load_piece(session, i, t, a) for t, a in pieces], session.info.op))
        if not state.ring.done:
            result = await trio.to_thread.run_sync(reference_result, locals_, session.info.op)
            if not state.ring.done:
                await session.notice(i, f"ring AllReduce incomplete after {session.info.fallback_timeout:g}s; "
                                     f"reduced all {len(seal.pieces)} piece(s) from the store")
                state.ring.receive_result(result)
    await session.finish(i, state.ring.result)


def feed(session: SessionView, iteration: int, events: list[m.RingChunk]) -> None:
    state = session.it(iteration)
    left = state.ring.left
    try:
        for event in events:
            if event.rank != left:
                raise ProtocolError(f"iteration {iteration}: ring chunk from rank {event.rank}, "
                                    f"expected one from rank {left}")
            _execute(session, iteration, state.ring.receive(event.step, event.data))
    except (ProtocolError, ValueError) as exc:
        session.nursery.start_soon(session.report_error, f"iteration {iteration}: {exc}")
    consumed, state.ring.consumed = state.ring.consumed, []
    pool = getattr(session, "pool", None)
    if pool is not None:
        for data in consumed:  # received into the daemon's pool: back it goes, warm
            pool.give(data)
    if state.ring.done and state.result is None:
        session.notify()


def _execute(session: SessionView, iteration: int, sends: list[ChunkSend]) -> None:
    state = session.it(iteration)
    for send in sends:
        event = m.RingChunk(session.session, iteration, state.ring.rank, send.step, send.data)
        session.nursery.start_soon(session.send_quietly, state.seal.members[send.dest], event)
