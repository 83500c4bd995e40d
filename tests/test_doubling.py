"""`services/exchange/doubling.py` against a stand-in session: what `begin`
promises the daemon's coordinator reader (it runs there, on the latency path)."""

from __future__ import annotations

import numpy as np
import trio

from hcollectives.algorithms.block import Block
from hcollectives.protocol import messages as m
from hcollectives.services.exchange import doubling


class _State:
    def __init__(self, seal: m.Seal) -> None:
        self.seal, self.doubling, self.early, self.result = seal, None, [], None


class FakeSession:
    """The SessionView an exchange sees; sends are recorded and never yield."""

    def __init__(self, node: str, seal: m.Seal) -> None:
        self.node, self.session, self.members = node, seal.session, list(seal.members)
        self.info = m.SessionInfo(seal.session, "allreduce", "sum", 2, "", 5.0, 1, False, 0)
        self.state = _State(seal)
        self.sent: list[tuple[str, m.Message]] = []
        self.finished: list[Block] = []
        self.changed = trio.Event()

    def it(self, iteration: int) -> _State:
        return self.state

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def next_change(self) -> None:
        await self.changed.wait()

    async def send_quietly(self, node: str, event: m.Message) -> None:
        self.sent.append((node, event))

    async def finish(self, iteration: int, result: Block) -> None:
        self.state.result = result
        self.finished.append(result)


def _seal() -> m.Seal:
    return m.Seal("s", 1, ["n0", "n1"], ["a:1", "a:2"], [["t0", "a0", "n0"], ["t1", "a1", "n1"]])


def test_begin_sends_the_first_step_before_any_other_task_runs_and_complete_finishes():
    seal = _seal()
    mine, theirs = Block.from_dict({0: np.array([1.0, 2.0])}), Block.from_dict({0: np.array([10.0, 20.0])})

    async def main() -> None:
        session = FakeSession("n0", seal)
        ran: list[str] = []

        async def other() -> None:
            ran.append("other")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await doubling.begin(session, seal, mine)
            # The step is out, and nothing else ran meanwhile: begin never waited.
            assert ran == [] and [(n, type(e).__name__) for n, e in session.sent] == [("n1", "DoublingStep")]
            assert session.sent[0][1].block == mine
            nursery.start_soon(doubling.complete, session, seal)
            await trio.lowlevel.checkpoint()
            await doubling.feed(session, 1, [m.DoublingStep("s", 1, 1, 0, theirs)])
            session.notify()
        assert ran == ["other"]
        assert session.finished and np.array_equal(session.finished[0].values, [11.0, 22.0])

    trio.run(main)


def test_steps_that_came_before_the_seal_are_taken_in_by_begin():
    seal = _seal()
    mine, theirs = Block.from_dict({0: np.array([1.0])}), Block.from_dict({0: np.array([2.0])})

    async def main() -> None:
        session = FakeSession("n1", seal)
        session.state.early.append(m.DoublingStep("s", 1, 0, 0, theirs))
        await doubling.begin(session, seal, mine)
        assert session.state.early == []
        assert session.finished and np.array_equal(session.finished[0].values, [3.0])

    trio.run(main)
