"""What an exchange needs of its node's session (services/node_session.py owns it).

A Protocol instead of the NodeSession class itself, so the exchanges depend
only on what they use and node_session.py can import them without a cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import trio

    from ... import store as st
    from ...algorithms.block import Block
    from ...protocol import messages as m


class SessionView(Protocol):
    node: str  # this daemon's node name
    session: str  # the session id
    members: list[str]
    info: m.SessionInfo | None
    store: st.Store | None
    timeouts: Any  # node_session.Timeouts
    nursery: trio.Nursery | None

    def it(self, iteration: int) -> Any:
        """The iteration's state (created on first use)."""

    def notify(self) -> None:
        """Wake every wait on this session's state."""

    async def next_change(self) -> None:
        """Wait for the next notify()."""

    async def finish(self, iteration: int, result: Block) -> None:
        """Record the iteration's result and tell the coordinator."""

    async def send_quietly(self, node: str, event: m.Message) -> None:
        """Send to a peer; a failure is left to the store fallback."""

    async def notice(self, iteration: int, message: str) -> None:
        """A fallback was used: tell the user through the coordinator."""

    async def report_error(self, message: str) -> None:
        """Fail the session with this message."""
