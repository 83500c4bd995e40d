"""Recursive-doubling AllReduce between daemons: the latency path for blocks
below the ring's threshold (algorithms/doubling_allreduce.py holds the pure
state machine; algorithms/plan.py the choice).

Small messages are sent by the task that produced them (the collective's own
task, or the peer reader that fed the machine) rather than a spawned one, so
a step costs one wake-up of each partner and nothing else. A step that has
not arrived within the session's fallback timeout makes this node rebuild
the result from every piece in the store, in the machine's own order, so its
bits match those of the nodes that completed over TCP.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ...algorithms.block import Block
from ...algorithms.doubling_allreduce import DoublingAllReduce, Exchange, reference_result
from ...algorithms.plan import send_inline
from ...algorithms.reduction import reduce_blocks
from ...algorithms.topology import ranks_of
from ...errors import ProtocolError
from ...protocol import messages as m
from . import store_fallback

if TYPE_CHECKING:
    from .session_view import SessionView

log = logging.getLogger(__name__)


async def run(session: SessionView, seal: m.Seal, local: Block) -> None:
    await begin(session, seal, local)
    await complete(session, seal)


async def begin(session: SessionView, seal: m.Seal, local: Block) -> None:
    """Send this node's first step and take in the steps that came before the
    seal. Never waits for a peer: the daemon runs it in the coordinator's
    reader the moment the Seal is read (node_session.py), so the first step
    leaves before anything else this daemon has to do."""
    i, state = seal.iteration, session.it(seal.iteration)
    state.doubling = DoublingAllReduce(ranks_of(seal.members)[session.node], len(seal.members),
                                       session.info.op, local)
    await _execute(session, i, state.doubling.start())
    early, state.early = state.early, []
    await feed(session, i, [e for e in early if isinstance(e, m.DoublingStep)])


async def complete(session: SessionView, seal: m.Seal) -> None:
    """Wait for the exchange `begin` started; rebuild from the store what is missing."""
    i, state = seal.iteration, session.it(seal.iteration)
    with trio.move_on_after(session.info.fallback_timeout):
        while not state.doubling.done:
            await session.next_change()
    if not state.doubling.done:
        log.warning("node %s: iteration %d: recursive doubling incomplete after %gs (waiting for %s); "
                    "trying the store", session.node, i, session.info.fallback_timeout, state.doubling.waiting_for())
        locals_ = []
        for node in seal.members:
            pieces = sorted((t, a) for t, a, n in seal.pieces if n == node)
            locals_.append(reduce_blocks([await store_fallback.load_piece(session, i, t, a) for t, a in pieces],
                                         session.info.op))
        if not state.doubling.done:
            result = await trio.to_thread.run_sync(reference_result, locals_, session.info.op)
            if not state.doubling.done:
                await session.notice(i, f"AllReduce step missing after {session.info.fallback_timeout:g}s; "
                                     f"reduced all {len(seal.pieces)} piece(s) from the store")
                await _execute(session, i, state.doubling.receive_result(result))


async def feed(session: SessionView, iteration: int, events: list[m.DoublingStep]) -> None:
    state = session.it(iteration)
    for event in events:
        try:
            sends = state.doubling.receive(event.step, event.rank, event.block)
        except ValueError as exc:
            raise ProtocolError(f"iteration {iteration}: {exc}") from None
        await _execute(session, iteration, sends)


async def _execute(session: SessionView, iteration: int, sends: list[Exchange]) -> None:
    state = session.it(iteration)
    for send in sends:
        node = state.seal.members[send.dest]
        event = m.DoublingStep(session.session, iteration, state.doubling.rank, send.step, send.block)
        if send_inline(send.block.nbytes):
            await session.send_quietly(node, event)
        else:
            session.nursery.start_soon(session.send_quietly, node, event)
    if state.doubling.done and state.result is None:
        await session.finish(iteration, state.doubling.result)
