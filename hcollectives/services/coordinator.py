"""The coordinator: the session's single source of truth, run inside the driver.

It owns membership (which node daemons take part), the number of map tasks
per iteration, exactly-once claims (the first finished attempt of a task
counts; every other attempt of that task is told it does not), when an
iteration is sealed, and timing events. It never touches payloads on the
critical path: rank 0 sends it the iteration's result (right after its
HasResult, so the driver's copy never delays the collective) so the driver can
decide convergence and write the final answer. It also tells the daemons, in
the Seal, whether every contribution has one layout (then the AllReduce runs
as a ring).

Waits are notifications: every state change sets `_changed`, and each waiter
re-checks its condition, so nobody polls.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import trio

from .. import store as st
from ..algorithms.block import Block
from ..errors import ConnectionLost, HCollectivesError, ProtocolError, SessionAborted
from ..protocol import messages as m
from ..transport.rejections import Rejections
from ..transport.trio_channel import Channel, listener_address, open_listeners, serve
from .exchange import rescue

log = logging.getLogger(__name__)

# Fallback notices kept for the run's summary; beyond this a long, unhealthy
# run would grow the driver without bound (each is also logged as it comes).
MAX_NOTICES = 1000
# How often the coordinator tells each daemon it is alive: several per
# `Timeouts.coordinator_silence` (8 s), so a loaded machine's late beat is no loss.
HEARTBEAT_INTERVAL = 1.0
# A sealed iteration with a lost member and no result after this many fallback
# timeouts is computed by the driver from the store (`_rescue`): by then the
# daemons' own fallbacks have had their turn, and a successor daemon its chance.
RESCUE_AFTER = 3


@dataclass(frozen=True, slots=True)
class SessionConfig:
    session: str
    secret: bytes
    collective: str  # "allreduce" | "allgather"
    op: str  # "sum" | "min" | "max" | "prod" | "none"
    fanout: int = 2
    checkpoint_uri: str = ""
    fallback_timeout: float = 10.0
    first_iteration: int = 1
    allow_nonfinite: bool = False
    bind_host: str = "127.0.0.1"
    advertise_host: str = "127.0.0.1"
    handshake_timeout: float = 10.0


@dataclass
class IterationRecord:
    """What the coordinator knows of one iteration; also its timing events."""

    num_tasks: int | None = None
    started: set[str] = field(default_factory=set)
    claims: dict[str, tuple[str, str]] = field(default_factory=dict)  # task -> (attempt, node)
    layouts: dict[str, str] = field(default_factory=dict)  # task -> layout digest of its accepted piece
    sealed: bool = False
    result: Block | None = None
    loop_data: np.ndarray | None = None  # the INPUT of this iteration
    times: dict[str, float] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)  # e.g. pieces read from the store
    members: list[str] = field(default_factory=list)  # nodes in the sealed collective
    seal: m.Seal | None = None  # re-sent to a successor of a member daemon that was lost
    have_result: set[str] = field(default_factory=set)

    def mark(self, event: str) -> None:
        self.times.setdefault(event, time.perf_counter())

    @property
    def all_started(self) -> bool:
        return self.num_tasks is not None and len(self.started) >= self.num_tasks


@dataclass
class _Node:
    node: str
    address: str
    channel: Channel


class Coordinator:
    def __init__(self, config: SessionConfig, initial_loop_data: np.ndarray) -> None:
        self.config = config
        self.address: str | None = None
        self.iterations: dict[int, IterationRecord] = {}
        self.nodes: dict[str, _Node] = {}
        self.failure: str | None = None
        self.rejected_connections = Rejections(log)  # counted; logged at a bounded rate
        # Iterations below `floor` are finished and forgotten (bounded state over
        # long runs): their records are gone, late events about them are ignored.
        self.floor = config.first_iteration
        self.sealed_through = config.first_iteration - 1
        self.notices: list[tuple[int, str]] = []  # every store-fallback notice of the run (capped)
        self._lost: set[str] = set()  # member daemons that went away; a successor may rejoin
        self._stop: m.Stop | None = None
        self._changed = trio.Event()
        self.record(config.first_iteration).loop_data = initial_loop_data

    # -- state helpers ------------------------------------------------------------

    def record(self, iteration: int) -> IterationRecord:
        rec = self.iterations.get(iteration)
        if rec is None:
            rec = IterationRecord()
            if iteration >= self.floor:  # a late event about a forgotten iteration must not revive it
                self.iterations[iteration] = rec
        return rec

    def forget_before(self, iteration: int) -> None:
        """Drop what no later step needs: records of iterations < *iteration*, and the
        result of *iteration* itself (the driver holds it). Its loop data stays: a
        daemon started now may still be asked for it (see `_session_info`)."""
        if iteration <= self.floor:
            return
        self.floor = iteration
        for old in [i for i in self.iterations if i < iteration]:
            del self.iterations[old]
        rec = self.iterations.get(iteration)
        if rec is not None:
            rec.result = None
            rec.claims.clear()
            rec.layouts.clear()
            rec.started.clear()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_until(self, predicate, timeout: float = math.inf):
        """Wait for *predicate()* to return a non-None value; abort on session failure."""
        with trio.fail_after(timeout):
            while True:
                if self.failure is not None:
                    raise SessionAborted(self.failure)
                value = predicate()
                if value is not None:
                    return value
                await self._changed.wait()

    # -- serving ----------------------------------------------------------------------

    async def serve(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await open_listeners(self.config.bind_host)
        self.address = listener_address(listeners, self.config.advertise_host)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started(self.address)
            await serve(listeners, self._handle, role="coordinator", name=self.config.session,
                        secret=self.config.secret, handshake_timeout=self.config.handshake_timeout,
                        on_reject=self.rejected_connections.append)

    async def _handle(self, channel: Channel) -> None:
        if channel.peer_role != "node":
            log.warning("coordinator: unexpected %s connection from %s", channel.peer_role, channel.label)
            return
        node: str | None = None
        try:
            join = await channel.receive(timeout=self.config.handshake_timeout)
            if not isinstance(join, m.NodeJoin) or join.session != self.config.session:
                raise ProtocolError(f"expected NodeJoin for session {self.config.session}, got {join!r:.200}")
            node = join.node
            # A successor: of a daemon seen lost, or of one still listed because its
            # closed connection has not been read yet (that reader's exit then sees
            # the newer channel and does nothing, so the seals must go out here).
            rejoined = node in self._lost or node in self.nodes
            self._lost.discard(node)
            self.nodes[node] = _Node(node, join.address, channel)
            await channel.send(self._session_info(), timeout=self.config.handshake_timeout)
            if self._stop is not None:
                await channel.send(self._stop, timeout=self.config.handshake_timeout)
            await self._broadcast(self._members())
            if rejoined:
                await self._resend_seals(node, channel)
            self._notify()
            self._nursery.start_soon(self._heartbeat, node, channel)
            while True:
                event = await channel.receive()
                await self._dispatch(channel, event)
        except ConnectionLost:
            pass
        except (HCollectivesError, trio.TooSlowError) as exc:
            self.abort(f"node {node or channel.label}: {exc}")
        finally:
            if node is not None and self.nodes.get(node, None) is not None and self.nodes[node].channel is channel:
                del self.nodes[node]
                # Not when we are being cancelled: the driver is stopping, and
                # every connection goes at once (a signal, the end of the run).
                if self._stop is None and self.failure is None and trio.current_effective_deadline() != -math.inf:
                    self._node_lost(node)

    async def _heartbeat(self, node: str, channel: Channel) -> None:
        """Re-send the membership to *node* every HEARTBEAT_INTERVAL while it is connected.

        A daemon ends its session when its coordinator falls silent for longer
        than its `coordinator_silence` (node_session.py): the driver was killed.
        A closed connection cannot tell it so on a local runner, where mrjob's
        pool workers, forked from the driver, hold copies of the driver's
        sockets; a heartbeat cannot be faked by a copy. Members is idempotent
        at the daemon, so no new message type is needed.
        """
        while self.nodes.get(node) is not None and self.nodes[node].channel is channel:
            await trio.sleep(HEARTBEAT_INTERVAL)
            try:
                await channel.send(self._members(), timeout=self.config.handshake_timeout)
            except (HCollectivesError, trio.TooSlowError):
                return  # the connection's reader sees the loss and cleans up

    def _node_lost(self, node: str) -> None:
        """A daemon went away mid-run (killed, crashed). Nothing is lost for good:
        every piece it acknowledged is in the store (node_session.contribute),
        and the next task on its node starts a successor under the same node
        name, which rejoins: its claims stay its own, and the seals of the
        unfinished iterations it was a member of are sent to it again
        (`_resend_seals`). Meanwhile the other members' store fallback covers
        what it owed them."""
        self._lost.add(node)
        unfinished = [i for i, rec in sorted(self.iterations.items())
                      if "result" not in rec.times and (node in rec.members
                                                        or any(n == node for _, n in rec.claims.values()))]
        log.warning("coordinator: node daemon %s was lost%s; waiting for a successor", node,
                    f" during iteration(s) {unfinished}" if unfinished else "")
        self._nursery.start_soon(self._broadcast, self._members())
        for i in unfinished:
            if self.iterations[i].seal is not None:
                self._nursery.start_soon(self._rescue, i)

    async def _rescue(self, iteration: int) -> None:
        """If a member of the sealed *iteration* is still lost (no successor came)
        when RESCUE_AFTER fallback timeouts have passed without a result, compute
        the result from the store as the collective would have (exchange/rescue.py)
        and put it where the daemons' store fallback looks for it."""
        rec = self.record(iteration)
        seal = rec.seal
        with trio.move_on_after(RESCUE_AFTER * self.config.fallback_timeout):
            try:
                await self._wait_until(lambda: True if "result" in rec.times else None)
            except SessionAborted:
                pass
            return
        lost = sorted(self._lost & set(seal.members))
        if "result" in rec.times or not lost or not self.config.checkpoint_uri or self.failure is not None:
            return
        c = self.config
        store = st.Store(c.checkpoint_uri)
        try:
            # A piece accepted just before its daemon died may still be on its way
            # (its task's retry, through a successor): wait for it rather than fail.
            if not await rescue.wait_for_pieces(store, c.session, seal, until=lambda: "result" in rec.times
                                                or self.failure is not None):
                return
            block = await trio.to_thread.run_sync(rescue.result_from_store, store, c.session, seal, c.collective,
                                                  c.op, c.fanout)
            await trio.to_thread.run_sync(store.save_block, st.result_path(c.session, iteration), block)
        except (HCollectivesError, ValueError) as exc:
            self.abort(f"node daemon(s) {lost} lost during iteration {iteration} with no successor, and its "
                       f"result could not be rebuilt from the store: {exc}")
            return
        if rec.result is None and iteration >= self.floor:
            text = f"driver: node daemon(s) {lost} lost with no successor; computed the result from the store"
            log.warning("coordinator: iteration %d: %s", iteration, text)
            rec.notices.append(text)
            self.notices.append((iteration, text))
            rec.result = block
            rec.mark("result")
            self._notify()

    async def _resend_seals(self, node: str, channel: Channel) -> None:
        for i, rec in sorted(self.iterations.items()):
            if rec.seal is not None and "result" not in rec.times and node in rec.seal.members:
                members = self._members()
                current = dict(zip(members.members, members.addresses))
                seal = rec.seal
                addresses = [current.get(n, a) for n, a in zip(seal.members, seal.addresses)]
                await channel.send(m.Seal(seal.session, seal.iteration, seal.members, addresses, seal.pieces,
                                          seal.layout), timeout=self.config.handshake_timeout)

    def _session_info(self) -> m.SessionInfo:
        c = self.config
        return m.SessionInfo(c.session, c.collective, c.op, c.fanout, c.checkpoint_uri,
                             float(c.fallback_timeout), c.first_iteration, c.allow_nonfinite,
                             self.sealed_through)

    def _members(self) -> m.Members:
        names = sorted(self.nodes)
        return m.Members(self.config.session, names, [self.nodes[n].address for n in names])

    async def _broadcast(self, event: m.Message) -> None:
        for node in list(self.nodes.values()):
            try:
                await node.channel.send(event, timeout=self.config.handshake_timeout)
            except (HCollectivesError, trio.TooSlowError) as exc:
                log.warning("coordinator: could not send %s to %s: %s", type(event).__name__, node.node, exc)

    async def _dispatch(self, channel: Channel, event: m.Message) -> None:
        if getattr(event, "session", self.config.session) != self.config.session:
            raise ProtocolError(f"message for session {event.session!r} on session {self.config.session!r}")
        if isinstance(event, m.TaskStarted):
            rec = self.record(event.iteration)
            rec.mark("first_task_started")
            if event.num_tasks > 0:
                self._set_num_tasks(event.iteration, event.num_tasks)
            rec.started.add(event.task)
            if rec.all_started:
                rec.mark("all_tasks_started")
            self._notify()
        elif isinstance(event, m.Claim):
            await channel.send(self._claim(event))
            await self._maybe_seal(event.iteration)
        elif isinstance(event, m.TaskFailed):
            self.abort(f"task {event.task} (attempt {event.attempt}, iteration {event.iteration}) failed: {event.message}")
        elif isinstance(event, m.HasResult):
            rec = self.record(event.iteration)
            rec.have_result.add(event.node)
            if rec.members and rec.have_result >= set(rec.members):
                rec.mark("all_nodes_have_result")
                self._notify()
        elif isinstance(event, m.Notice):
            text = f"{event.node}: {event.message}"
            self.record(event.iteration).notices.append(text)
            if len(self.notices) < MAX_NOTICES:
                self.notices.append((event.iteration, text))
        elif isinstance(event, m.NodeError):
            self.abort(f"node {event.node}: {event.message}")
        elif isinstance(event, m.Result):
            rec = self.record(event.iteration)
            if rec.result is None:
                rec.result = event.block
                rec.mark("result")
                self._notify()
        elif isinstance(event, m.GetLoopData):
            self._nursery.start_soon(self._answer_loop_data, channel, event.iteration)
        else:
            raise ProtocolError(f"coordinator does not accept {type(event).__name__}")

    def _claim(self, claim: m.Claim) -> m.ClaimResult:
        rec = self.record(claim.iteration)
        held = rec.claims.get(claim.task)
        if claim.iteration < self.floor:
            accepted = False  # the iteration is over; a late attempt cannot count
        elif held is None and not rec.sealed:
            rec.claims[claim.task] = (claim.attempt, claim.node)
            rec.layouts[claim.task] = claim.layout
            accepted = True
        else:
            # First finished attempt wins; a retried or speculative duplicate is
            # told so, and its node drops its copy.
            accepted = held == (claim.attempt, claim.node)
        return m.ClaimResult(claim.session, claim.iteration, claim.task, claim.attempt, accepted)

    def _set_num_tasks(self, iteration: int, n: int) -> None:
        rec = self.record(iteration)
        if rec.num_tasks is not None and rec.num_tasks != n:
            self.abort(f"iteration {iteration}: tasks disagree on the number of map tasks ({rec.num_tasks} vs {n})")
        rec.num_tasks = n

    async def _maybe_seal(self, iteration: int) -> None:
        rec = self.record(iteration)
        if rec.sealed or rec.num_tasks is None or len(rec.claims) < rec.num_tasks:
            return
        rec.sealed = True
        self.sealed_through = max(self.sealed_through, iteration)
        rec.mark("sealed")
        members = self._members()
        pieces = [[task, attempt, node] for task, (attempt, node) in sorted(rec.claims.items())]
        # A lost daemon's pieces are in the store; it stays a member of the seal,
        # and its successor (or, failing that, the others' store fallback) covers it.
        names = sorted(set(members.members) | {node for _, _, node in pieces})
        current = dict(zip(members.members, members.addresses))
        members = m.Members(self.config.session, names, [current.get(n, "") for n in names])
        rec.members = list(members.members)
        # The ring AllReduce needs one layout everywhere: every piece's digest
        # the same (and not "": big enough) and every member holding a piece.
        layouts = set(rec.layouts.values())
        layout = next(iter(layouts)) if len(layouts) == 1 else ""
        if {node for _, _, node in pieces} != set(members.members):
            layout = ""
        rec.seal = m.Seal(self.config.session, iteration, members.members, members.addresses, pieces, layout)
        if self._lost & set(members.members):
            self._nursery.start_soon(self._rescue, iteration)
        await self._broadcast(rec.seal)
        self._notify()

    async def _answer_loop_data(self, channel: Channel, iteration: int) -> None:
        def ready():
            if self._stop is not None and iteration >= self._stop.iteration:
                return self._stop
            data = self.record(iteration).loop_data
            if data is not None:
                return m.LoopData(self.config.session, iteration, data, False)
            return None

        try:
            reply = await self._wait_until(ready)
            await channel.send(reply, timeout=self.config.handshake_timeout)
        except (SessionAborted, HCollectivesError, trio.TooSlowError):
            pass  # the Stop broadcast reaches that node anyway

    # -- the driver's side -------------------------------------------------------------

    def set_num_tasks(self, iteration: int, n: int) -> None:
        """Called (via trio.from_thread) when a runner knows its split count."""
        self._set_num_tasks(iteration, n)
        if self.record(iteration).all_started:
            self.record(iteration).mark("all_tasks_started")
        self._notify()
        self._nursery.start_soon(self._maybe_seal, iteration)

    def mark(self, iteration: int, event: str) -> None:
        self.record(iteration).mark(event)

    async def wait_all_started(self, iteration: int) -> None:
        await self._wait_until(lambda: True if self.record(iteration).all_started else None)

    def has_result(self, iteration: int) -> bool:
        rec = self.iterations.get(iteration)
        return rec is not None and rec.result is not None

    async def wait_result(self, iteration: int, timeout: float = math.inf) -> Block:
        return await self._wait_until(lambda: self.record(iteration).result, timeout)

    async def wait_all_have_result(self, iteration: int, timeout: float = math.inf) -> None:
        """Until every member of the iteration's collective holds its result."""
        await self._wait_until(lambda: True if "all_nodes_have_result" in self.record(iteration).times else None,
                               timeout)

    def set_loop_data(self, iteration: int, data: np.ndarray) -> None:
        self.record(iteration).loop_data = data
        self._notify()

    async def stop(self, iteration: int, *, converged: bool, reason: str) -> None:
        """Tell every daemon no iteration >= *iteration* will run."""
        self._stop = m.Stop(self.config.session, iteration, converged, reason[: m.MAX_TEXT])
        self._notify()
        await self._broadcast(self._stop)

    def abort(self, message: str, *, quiet: bool = False) -> None:
        """Fail the session: every daemon is told to stop its tasks. *quiet* when the
        driver reports the cause itself (a signal), so it is not logged twice."""
        if self.failure is None:
            if not quiet:
                log.error("session %s aborted: %s", self.config.session, message)
            self.failure = message
            self._stop = m.Stop(self.config.session, 0, False, f"session aborted: {message}"[: m.MAX_TEXT])
            self._nursery.start_soon(self._broadcast, self._stop)
        self._notify()
