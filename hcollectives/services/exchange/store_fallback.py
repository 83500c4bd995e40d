"""The paper's HDFS fallback: what did not arrive over TCP is read from the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ... import store as st
from ...algorithms.block import Block
from ...errors import CollectiveTimeout

if TYPE_CHECKING:
    from .session_view import SessionView



async def load_piece(session: SessionView, iteration: int, task: str, attempt: str) -> Block:
    if session.store is None:
        raise CollectiveTimeout(f"piece {task}/{attempt} of iteration {iteration} never arrived and there is no store")
    path = st.contribution_path(session.session, iteration, task, attempt)
    await store_wait(session, path, session.timeouts.collective)
    return await trio.to_thread.run_sync(session.store.load_block, path)


async def store_wait(session: SessionView, path: str, timeout: float, *, until=None) -> bool:
    """Wait for *path* in the store; False if *until()* came true first.

    Polling (with backoff) is the only way to watch a remote filesystem; it
    runs here on the trio loop, so a TCP copy arriving meanwhile ends it.
    """
    deadline, delay = trio.current_time() + timeout, 0.02
    while not await trio.to_thread.run_sync(session.store.exists, path):
        if until is not None and until():
            return False
        if trio.current_time() >= deadline:
            raise CollectiveTimeout(f"{path} did not appear in the store within {timeout:g}s")
        await trio.sleep(delay)
        delay = min(delay * 2, 1.0)
    return True
