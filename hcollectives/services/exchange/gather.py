"""AllGather: each accepted piece is pushed to every member as soon as its task
finishes; each node assembles the whole matrix once (algorithms/gather.py).
A piece that has not arrived within the fallback timeout is read from the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ...algorithms.block import Block
from ...protocol import messages as m
from . import store_fallback

if TYPE_CHECKING:
    from .session_view import SessionView


def piece_id(task: str, attempt: str) -> str:
    return f"{task}/{attempt}"


async def run(session: SessionView, seal: m.Seal) -> None:
    i, state = seal.iteration, session.it(seal.iteration)
    state.gather.expect(piece_id(t, a) for t, a, _ in seal.pieces)
    await push_pieces(session, i)
    with trio.move_on_after(session.info.fallback_timeout):
        while not state.gather.done:
            await session.next_change()
    for pid in state.gather.missing():
        task, attempt = pid.split("/")
        if state.gather.add(pid, await store_fallback.load_piece(session, i, task, attempt)):
            await session.notice(i, f"piece {pid} missing after {session.info.fallback_timeout:g}s; read it from the store")
    await session.finish(i, state.gather.result())


async def push_pieces(session: SessionView, iteration: int) -> None:
    """AllGather: send every accepted local piece to every member that lacks it."""
    state = session.it(iteration)
    for task, (attempt, block) in list(state.contributions.items()):
        push_piece(session, iteration, task, attempt, block)


def push_piece(session: SessionView, iteration: int, task: str, attempt: str, block: Block) -> None:
    """Send one local piece to every member that lacks it (in background tasks).

    The daemon also calls this when a task's Contribute arrives, while its
    claim is still on its way to the coordinator: the last piece then travels
    alongside the claim instead of after the Seal, one message less on the
    path. A piece whose claim loses is harmless: the receivers' assembly
    drops every piece the Seal does not list (algorithms/gather.py)."""
    pid = piece_id(task, attempt)
    sent = session.it(iteration).pushed.setdefault(pid, {session.node})
    for node in [n for n in session.members if n not in sent]:
        sent.add(node)
        session.nursery.start_soon(session.send_quietly, node, m.Piece(session.session, iteration, task, attempt, block))


async def finish_if_complete(session: SessionView, seal: m.Seal) -> None:
    """At the Seal: if every listed piece is already here, the AllGather is
    complete at this node; report it now (run() then finds it done)."""
    i, state = seal.iteration, session.it(seal.iteration)
    state.gather.expect(piece_id(t, a) for t, a, _ in seal.pieces)
    if state.gather.done:
        await session.finish(i, state.gather.result())
