"""AllGather: each accepted piece is pushed to every member as soon as its task
finishes; each node assembles the whole matrix once (algorithms/gather.py).
A piece that has not arrived within the fallback timeout is read from the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

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
        pid = piece_id(task, attempt)
        sent = state.pushed.setdefault(pid, {session.node})
        for node in [n for n in session.members if n not in sent]:
            sent.add(node)
            session.nursery.start_soon(session.send_quietly, node,
                                     m.Piece(session.session, iteration, task, attempt, block))
