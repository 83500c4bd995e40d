"""One session's state inside a node daemon: cache, node-level reduction, collectives.

A `NodeSession` is created when the first task of a session reaches this
daemon. It joins the coordinator, then:

- caches the loop data of each iteration and serves it to every task on the
  node (the first task to need iteration i's loop data gets a *lease* to run
  the job's post_process on iteration i-1's result; the others wait for it);
- takes each task's contribution, checkpoints it to the store in the
  background and claims it with the coordinator (exactly once per task);
- when the coordinator seals an iteration, reduces this node's contributions
  and runs the AllReduce with the other daemons: a ring (reduce-scatter +
  allgather) when every block is big and of one layout (`Seal.layout`), else
  recursive doubling (`algorithms/plan.py` chooses; or, for AllGather, pushes
  pieces to every member as soon as tasks finish and assembles them);
- reads from the store whatever did not arrive over TCP within the session's
  fallback deadline.

Everything here runs on the daemon's trio loop; waits are notifications
(`_changed`), and each has a deadline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import trio

from .. import store as st
from ..algorithms import plan
from ..algorithms.block import Block
from ..algorithms.doubling_allreduce import DoublingAllReduce
from ..algorithms.gather import GatherAssembly
from ..algorithms.reduction import reduce_blocks
from ..algorithms.ring_allreduce import RingAllReduce, ring_layout
from ..algorithms.topology import ranks_of
from ..algorithms.tree_allreduce import TreeAllReduce
from ..errors import CollectiveTimeout, ConnectionLost, HCollectivesError, ProtocolError
from ..protocol import messages as m
from ..transport.buffer_pool import BufferPool
from ..transport.trio_channel import Channel, connect
from .exchange import doubling, gather, ring, store_fallback, tree
from .exchange.gather import piece_id
from .faults import Faults

log = logging.getLogger(__name__)


@dataclass
class _Iteration:
    contributions: dict[str, tuple[str, Block]] = field(default_factory=dict)  # task -> (attempt, block)
    seal: m.Seal | None = None
    tree: TreeAllReduce | None = None
    ring: RingAllReduce | None = None
    doubling: DoublingAllReduce | None = None
    early: list[m.Message] = field(default_factory=list)  # partials/results/ring chunks before our seal
    gather: GatherAssembly = field(default_factory=GatherAssembly)
    pushed: dict[str, set[str]] = field(default_factory=dict)  # piece id -> nodes it was sent to
    result: Block | None = None
    loop: np.ndarray | None = None  # the INPUT of this iteration
    converged_before: bool = False  # iteration-1 converged: this one must not run
    lease_held: bool = False
    asked_coordinator: bool = False
    scope: trio.CancelScope | None = None  # this iteration's collective, cancelled when forgotten


class NodeSession:
    def __init__(self, *, node: str, address: str, session: str, coordinator: str, secret: bytes,
                 timeouts: "Timeouts", faults: Faults) -> None:
        self.node, self.address, self.session = node, address, session
        self.coordinator_address = coordinator
        self._secret = secret
        self.timeouts = timeouts
        self.faults = faults
        self.nursery: trio.Nursery | None = None  # set by the daemon before join()
        self._pending_checkpoints = 0
        # As many store writes at once as the store has threads; the rest wait
        # here, where a copy that became useless meanwhile is dropped.
        self._store_writers = trio.CapacityLimiter(st.POOL_THREADS)
        self.info: m.SessionInfo | None = None
        self.store: st.Store | None = None
        self.members: list[str] = []
        self.addresses: dict[str, str] = {}
        self.iterations: dict[int, _Iteration] = {}
        self.stop: m.Stop | None = None
        self.ended = trio.Event()  # coordinator gone: the session is over here
        self.driver_lost = False  # ended by the coordinator's silence, not by a clean close
        self._coordinator: Channel | None = None
        self._silent_for = 0.0  # seconds of our own running time without a word from the coordinator
        self._claims: dict[tuple[int, str, str], m.ClaimResult | None] = {}
        # Blocks whose claim is in flight: an accepted one is recorded the moment
        # its ClaimResult is read, before a Seal that may follow in the same read.
        self._offered: dict[tuple[int, str, str], Block] = {}
        self._peers: dict[str, Channel] = {}
        self._peer_locks: dict[str, trio.Lock] = {}
        self._changed = trio.Event()
        self.pool: BufferPool | None = None  # the daemon's receive buffers (ring chunks go back to it)
        # Bounded state: the highest iteration sealed that we know of, and the
        # floor below which iterations are forgotten (see `_forget_before`).
        self.sealed_max = 0
        self.floor = 0

    # -- plumbing -------------------------------------------------------------------------

    def it(self, iteration: int) -> _Iteration:
        state = self.iterations.get(iteration)
        if state is None:
            state = _Iteration()
            if iteration >= self.floor:  # late messages about a forgotten iteration go nowhere
                self.iterations[iteration] = state
        return state

    def _saw_seal(self, iteration: int) -> None:
        """Seal of *iteration* seen: every task of it had its loop data, so
        iteration-1 is finished (at some node) and nothing older is needed here.
        The driver keeps the store's pieces of an iteration until a seal two
        iterations later (driver/loop.py), so a stalled daemon catching up on
        these seals never looks for a file already removed."""
        self.sealed_max = max(self.sealed_max, iteration)
        floor = iteration - 1
        if floor <= self.floor:
            return
        self.floor = floor
        for old in [i for i in self.iterations if i < floor]:
            state = self.iterations.pop(old)
            if state.scope is not None:
                state.scope.cancel()
        for key in [k for k in self._claims if k[0] < floor]:
            self._claims.pop(key, None)

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def stopped_for(self, iteration: int) -> m.Stop | None:
        if self.stop is not None and iteration >= self.stop.iteration:
            return self.stop
        if self.ended.is_set():
            return m.Stop(self.session, iteration, False, "the session's coordinator is gone")
        return None

    async def join(self) -> None:
        """Connect to the coordinator and learn the session's settings."""
        t = self.timeouts
        self._coordinator = await connect(self.coordinator_address, role="node", name=self.node,
                                          secret=self._secret, timeout=t.connect)
        await self._coordinator.send(m.NodeJoin(self.session, self.node, self.address), timeout=t.connect)
        info = await self._coordinator.receive(timeout=t.connect)
        if not isinstance(info, m.SessionInfo) or info.session != self.session:
            raise ProtocolError(f"coordinator answered NodeJoin with {info!r:.200}")
        self.info = info
        self.store = st.Store(info.checkpoint_uri, timeout=t.store) if info.checkpoint_uri else None
        self.sealed_max = info.sealed_through
        self.floor = max(info.first_iteration, info.sealed_through - 1)
        self.nursery.start_soon(self._coordinator_reader)

    async def _coordinator_reader(self) -> None:
        silence = self.timeouts.coordinator_silence
        reading = trio.CancelScope()
        self.nursery.start_soon(self._watch_silence, reading, silence)
        try:
            with reading:
                while True:
                    # The coordinator beats every second (coordinator.HEARTBEAT_INTERVAL):
                    # silence means the driver is gone, even if copies of its socket
                    # (mrjob's pool workers) keep the connection open.
                    event = await self._coordinator.receive()
                    self._silent_for = 0.0
                    self._on_coordinator(event)
                    # Once per iteration: a successor daemon can be sent a Seal twice (the
                    # broadcast, and the re-send of its rejoin), and a second collective's
                    # steps are duplicates that make its peers abort the run.
                    if isinstance(event, m.Seal) and event.iteration >= self.floor \
                            and self.it(event.iteration).seal is None:
                        await self._begin_collective(event)
            self.driver_lost = True  # only _watch_silence cancels `reading`
            log.warning("node %s: session %s: no word from the coordinator for %gs; the driver is gone",
                        self.node, self.session, silence)
        except (ConnectionLost, HCollectivesError) as exc:
            # A driver that ends a run says so first (Stop: converged, done, or
            # aborted); a connection that just closes means the driver died.
            self.driver_lost = self.stop is None
            log.info("node %s: session %s coordinator connection ended: %s", self.node, self.session, exc)
        finally:
            reading.cancel()  # also ends the watch
            self.ended.set()
            self.notify()

    async def _watch_silence(self, reading: trio.CancelScope, silence: float) -> None:
        """Cancel *reading* once the coordinator has been silent for *silence*
        seconds of this process's own running time.

        Not a receive timeout: a daemon that was itself stopped (SIGSTOP, a
        swapped-out or starved process) wakes with its clock far past any
        deadline while the beats sent meanwhile wait unread in its socket; it
        would take the driver for dead, end its session and remove a live
        run's directory. So each tick counts at most two ticks of silence,
        however late it wakes, and every message read resets the count.
        """
        tick = silence / 8
        last = trio.current_time()
        while not reading.cancel_called:
            await trio.sleep(tick)
            now = trio.current_time()
            self._silent_for += min(now - last, 2 * tick)
            last = now
            if self._silent_for >= silence:
                reading.cancel()

    def _on_coordinator(self, event: m.Message) -> None:
        if isinstance(event, m.Members):
            addresses = dict(zip(event.members, event.addresses))
            for node, channel in list(self._peers.items()):
                if addresses.get(node) != self.addresses.get(node):  # gone, or a successor daemon
                    self._drop_peer(node, channel)
            for node in [n for n in addresses if addresses[n] != self.addresses.get(n)]:
                for state in self.iterations.values():  # a successor has none of what we pushed
                    for sent in state.pushed.values():
                        sent.discard(node)
            self.members, self.addresses = list(event.members), addresses
            if self.info and self.info.collective == "allgather":
                for i, state in self.iterations.items():
                    if state.seal is None:
                        self.nursery.start_soon(gather.push_pieces, self, i)
        elif isinstance(event, m.ClaimResult):
            key = (event.iteration, event.task, event.attempt)
            self._claims[key] = event
            block = self._offered.pop(key, None)
            if event.accepted and block is not None:
                self._accept(event.iteration, event.task, event.attempt, block)
        elif isinstance(event, m.Seal):
            self._saw_seal(event.iteration)  # its collective: `_begin_collective`, by the reader
        elif isinstance(event, m.LoopData):
            state = self.it(event.iteration)
            if state.loop is None:
                state.loop, state.converged_before = event.data, event.converged
        elif isinstance(event, m.Stop):
            if self.stop is None or event.iteration < self.stop.iteration:
                self.stop = event
        else:
            raise ProtocolError(f"unexpected {type(event).__name__} from the coordinator")
        self.notify()

    def spawn(self, fn, *args) -> None:
        """Run *fn* in the background; a failure is reported to the coordinator
        (which aborts the session) instead of crashing the daemon."""

        async def guarded() -> None:
            try:
                await fn(*args)
            except (HCollectivesError, ValueError, trio.TooSlowError) as exc:
                await self.report_error(f"{fn.__name__}: {exc}")
            except Exception as exc:  # noqa: BLE001 -- a bug here must fail the run, not kill the daemon
                log.exception("node %s: %s failed", self.node, fn.__name__)
                await self.report_error(f"{fn.__name__}: internal error {type(exc).__name__}: {exc}")

        self.nursery.start_soon(guarded)

    async def to_coordinator(self, event: m.Message) -> None:
        await self._coordinator.send(event, timeout=self.timeouts.connect)

    async def report_error(self, message: str) -> None:
        log.error("node %s: %s", self.node, message)
        try:
            await self.to_coordinator(m.NodeError(self.session, self.node, message[: m.MAX_TEXT]))
        except HCollectivesError:
            pass

    async def _wait_change(self, deadline: float, changed: trio.Event | None = None) -> None:
        """Wait for the next _notify (or for *changed*, an event taken before the
        caller last looked at the state, so nothing in between is missed)."""
        with trio.move_on_at(deadline):
            await (self._changed if changed is None else changed).wait()
            return
        raise CollectiveTimeout("deadline passed")

    # -- loop data: node cache + post-process lease -----------------------------------

    async def serve_loop_data(self, channel: Channel, iteration: int) -> None:
        """Answer one task's GetLoopData: cached data, a lease, or Stop."""
        deadline = trio.current_time() + self.timeouts.loop_data
        first = self.info.first_iteration
        while True:
            # Taken before looking at the state: a change that happens while we
            # look, or while _ask_coordinator below is sending (the reply can be
            # read before the send returns), sets this event, so the wait at the
            # bottom returns at once instead of missing the wakeup.
            changed = self._changed
            if iteration < self.sealed_max:
                # iteration+1 is sealed, so this iteration's pieces were fixed long
                # ago: a late (retried or speculative) attempt cannot count. It
                # exits with no output, as after convergence; a rejoining resident
                # task goes on to the next iteration (m.Stop.finished).
                await channel.send(m.Stop(self.session, iteration, True, f"iteration {iteration} already finished",
                                          finished=True),
                                   timeout=self.timeouts.connect)
                return
            state = self.it(iteration)
            stop = self.stopped_for(iteration)
            if state.loop is not None and state.converged_before:
                stop = m.Stop(self.session, iteration, True, f"converged after iteration {iteration - 1}")
            if stop is not None:
                await channel.send(stop, timeout=self.timeouts.connect)
                return
            if state.loop is not None:
                await channel.send(m.LoopData(self.session, iteration, state.loop, False), timeout=self.timeouts.connect)
                return
            if iteration == first or iteration - 1 <= self.info.sealed_through:
                await self._ask_coordinator(iteration)
            else:
                prev = self.it(iteration - 1)
                if prev.loop is None:
                    await self._ask_coordinator(iteration - 1)
                if prev.result is not None and prev.loop is not None and not state.lease_held:
                    if await self._lease(channel, iteration, prev):
                        return  # the lease holder computed the data itself
                    continue
            try:
                await self._wait_change(deadline, changed)
            except CollectiveTimeout:
                raise CollectiveTimeout(f"no loop data for iteration {iteration} within {self.timeouts.loop_data:g}s") from None

    async def _ask_coordinator(self, iteration: int) -> None:
        state = self.it(iteration)
        if not state.asked_coordinator:
            state.asked_coordinator = True
            await self.to_coordinator(m.GetLoopData(self.session, iteration))

    async def _lease(self, channel: Channel, iteration: int, prev: _Iteration) -> bool:
        """Have this task compute the node's loop data; False if another source won."""
        state = self.it(iteration)
        state.lease_held = True
        try:
            await channel.send(m.PostProcessLease(self.session, iteration, prev.loop, prev.result),
                               timeout=self.timeouts.connect)
            reply = await channel.receive(timeout=self.timeouts.loop_data)
            if not isinstance(reply, m.LoopData) or reply.iteration != iteration:
                raise ProtocolError(f"expected LoopData for iteration {iteration}, got {reply!r:.200}")
            if state.loop is None:
                state.loop, state.converged_before = reply.data, reply.converged
                return True
            # The coordinator's copy arrived first; the task already holds its own
            # (identical: post_process is deterministic) result, so it goes on.
            return True
        finally:
            state.lease_held = False
            self.notify()

    # -- contributions ------------------------------------------------------------------------

    async def contribute(self, event: m.Contribute) -> m.ContributeAck:
        i, task, attempt = event.iteration, event.task, event.attempt
        ack = lambda ok: m.ContributeAck(self.session, i, task, attempt, ok)  # noqa: E731
        if self.stopped_for(i):
            return ack(False)
        checkpointed = trio.Event()
        if self.store is not None:
            self.nursery.start_soon(self._store_copy, i, st.contribution_path(self.session, i, task, attempt),
                                    event.block, checkpointed)
        else:
            checkpointed.set()
        key = (i, task, attempt)
        self._claims[key] = None
        self._offered[key] = event.block
        if self.info.collective == "allgather" and plan.send_inline(event.block.nbytes):
            gather.push_piece(self, i, task, attempt, event.block)  # alongside the claim (see push_piece)
        try:
            layout = ring_layout(event.block) if self.info.collective == "allreduce" else ""
            await self.to_coordinator(m.Claim(self.session, i, task, attempt, self.node, layout))
            deadline = trio.current_time() + self.timeouts.connect
            while self._claims.get(key) is None:
                if self.stopped_for(i):
                    return ack(False)
                try:
                    await self._wait_change(deadline)
                except CollectiveTimeout:
                    raise CollectiveTimeout(f"coordinator did not answer the claim of {task} within {self.timeouts.connect:g}s") from None
        finally:
            self._offered.pop(key, None)
        # A durable contribution is told only once its piece is in the store
        # (written alongside the claim, so usually already there): that task exits
        # after its ack, and if this daemon is then lost, its successor and the
        # other nodes can only get the piece from the store.
        if event.durable and not checkpointed.is_set():  # (waiting on a set Event would still yield)
            with trio.move_on_after(self.timeouts.store):
                await checkpointed.wait()
        # An accepted block was already recorded (`_accept`) when the answer was read.
        return ack(self._claims.pop(key).accepted)

    def _accept(self, i: int, task: str, attempt: str, block: Block) -> None:
        state = self.it(i)
        state.contributions[task] = (attempt, block)
        if self.info.collective == "allgather":
            state.gather.add(piece_id(task, attempt), block)
            self.nursery.start_soon(gather.push_pieces, self, i)

    async def _store_copy(self, iteration: int, path: str, block: Block, done: trio.Event | None = None) -> None:
        """Write a contribution's or a result's fallback copy, in the background: an
        HDFS write takes ~0.5 s (the close waits for the DataNode's block report),
        longer than a resident iteration, so nothing on the collective's path waits
        for one (`drain` lets the pending ones land when the session ends). Copies
        of an iteration this node has forgotten (`_saw_seal`) are not written: when
        iterations outrun the store, the backlog stays bounded."""
        self._pending_checkpoints += 1
        try:
            async with self._store_writers:
                if iteration >= self.floor:
                    await trio.to_thread.run_sync(self.store.save_block, path, block)
        except HCollectivesError as exc:
            # The copy is the fallback: losing it is only fatal if a peer later
            # needs it, and that peer will report the missing file.
            log.warning("node %s: checkpoint of %s failed: %s", self.node, path, exc)
        finally:
            self._pending_checkpoints -= 1
            if done is not None:
                done.set()
            self.notify()

    async def next_change(self) -> None:
        """Wait for the next change of this session's state (every wait has a deadline
        around it: the caller's ``trio.move_on_*``)."""
        await self._changed.wait()

    async def drain(self) -> None:
        """Wait for background checkpoints to land (the caller bounds the wait)."""
        while self._pending_checkpoints:
            await self._changed.wait()

    # -- peers ------------------------------------------------------------------------------------

    async def send_to_peer(self, node: str, event: m.Message) -> None:
        if self.faults.drops(event.TYPE, node, getattr(event, "iteration", None)):
            log.warning("node %s: fault injection dropped %s to %s", self.node, event.TYPE, node)
            return
        lock = self._peer_locks.setdefault(node, trio.Lock())
        # One connection per peer, opened once. A free lock is taken without
        # `async with`, whose acquire yields to the scheduler even then: this
        # is on every step of the latency path.
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            channel = self._peers.get(node)
            if channel is None:
                if not self.addresses.get(node):
                    # A member whose daemon was lost and has no successor yet.
                    raise ConnectionLost(f"node {node} has no daemon at the moment")
                channel = await connect(self.addresses[node], role="peer", name=self.node,
                                        secret=self._secret, timeout=self.timeouts.connect)
                self._peers[node] = channel
                self.nursery.start_soon(self._watch_peer, node, channel)
        finally:
            lock.release()
        try:
            await channel.send(event, timeout=self.timeouts.collective)
        except HCollectivesError:
            self._drop_peer(node, channel)
            raise

    async def _watch_peer(self, node: str, channel: Channel) -> None:
        """Peers never send on a connection we dialled: anything but silence is its
        end. Drop it at once, so the next send dials the node's current address
        (a successor daemon) instead of writing into a dead socket first."""
        try:
            await channel.receive()
        except (HCollectivesError, trio.TooSlowError):
            pass
        self._drop_peer(node, channel)

    def _drop_peer(self, node: str, channel: Channel) -> None:
        if self._peers.get(node) is channel:
            del self._peers[node]

    async def send_quietly(self, node: str, event: m.Message) -> None:
        """Send, but let the store fallback cover a peer we cannot reach."""
        try:
            await self.send_to_peer(node, event)
        except HCollectivesError as exc:
            log.warning("node %s: could not send %s to %s: %s", self.node, event.TYPE, node, exc)

    async def on_peer_event(self, event: m.Message) -> None:
        """A peer's message, read by that peer's reader task. A recursive-doubling
        step is fed (and the sends it causes are made) right here: spawning a
        task for it would add a scheduler pass to every step of the latency path."""
        if isinstance(event, m.DoublingStep):
            state = self.it(event.iteration)
            if state.doubling is None:
                state.early.append(event)
            else:
                try:
                    await doubling.feed(self, event.iteration, [event])
                except (HCollectivesError, ValueError) as exc:  # a bad step or blocks that do not combine
                    await self.report_error(f"iteration {event.iteration}: {type(exc).__name__}: {exc}")
            self.notify()
        else:
            self.on_peer_message(event)

    def on_peer_message(self, event: m.Message) -> None:
        if isinstance(event, m.Piece):
            state = self.it(event.iteration)
            expected = state.gather.expected
            if expected is None or piece_id(event.task, event.attempt) in expected:
                state.gather.add(piece_id(event.task, event.attempt), event.block)
        elif isinstance(event, m.RingChunk):
            state = self.it(event.iteration)
            if state.ring is None:
                state.early.append(event)
            else:
                ring.feed(self, event.iteration, [event])
        elif isinstance(event, (m.Partial, m.Result)):
            state = self.it(event.iteration)
            if state.tree is None:
                state.early.append(event)
            else:
                self.spawn(tree.feed, self, event.iteration, [event])
        else:
            raise ProtocolError(f"peers do not send {type(event).__name__}")
        self.notify()

    # -- the collective of one iteration -----------------------------------------------------

    async def _begin_collective(self, seal: m.Seal) -> None:
        """Start the collective of a Seal the coordinator reader just read.

        On the latency path (a recursive-doubling AllReduce whose pieces this
        node already holds, over peer connections already open) the first
        step is sent right here, before the reader reads on and before any
        other task of this daemon runs: the tasks' acks, a closing task
        connection, all wait until the step is on its way. Nothing here waits
        for a peer (`doubling.begin`); the rest of the collective, and every
        other case, runs in a task of its own (`_run_collective`)."""
        state = self.it(seal.iteration)
        state.seal = seal
        self.members, self.addresses = list(seal.members), dict(zip(seal.members, seal.addresses))
        begun = False
        if self._can_begin_here(seal, state):
            try:
                self._keep_accepted(seal, state)
                if self.info.collective == "allreduce":
                    await doubling.begin(self, seal, self._local_reduction(state))
                else:
                    await gather.finish_if_complete(self, seal)
                begun = True
            except (HCollectivesError, ValueError) as exc:
                self.nursery.start_soon(self.report_error, f"iteration {seal.iteration}: {type(exc).__name__}: {exc}")
                return
        self.spawn(self._run_collective, seal, begun)

    def _can_begin_here(self, seal: m.Seal, state: _Iteration) -> bool:
        mine = [(t, a) for t, a, node in seal.pieces if node == self.node]
        if not all(state.contributions.get(t, ("",))[0] == a for t, a in mine):
            return False  # a piece to read from the store first: not in the reader
        # Small blocks only: the reader may end up sending this node's step and
        # the Result to the coordinator, and a send that has to wait for the
        # other end to read must not hold up this reader (the coordinator may
        # be waiting for us to read what it sends).
        if self.info.collective == "allgather":
            return plan.send_inline(state.gather.held_bytes)
        return (plan.allreduce_strategy(seal.layout) == "doubling"
                and plan.send_inline(sum(b.nbytes for _, b in state.contributions.values()))
                and all(n in self._peers for n in seal.members if n != self.node))

    async def _run_collective(self, seal: m.Seal, begun: bool = False) -> None:
        state = self.it(seal.iteration)
        with trio.CancelScope() as state.scope:
            await self._collective(seal, state, begun)

    def _keep_accepted(self, seal: m.Seal, state: _Iteration) -> None:
        """Only contributions the coordinator accepted count; anything else was
        an attempt that lost its claim."""
        mine = {task: attempt for task, attempt, node in seal.pieces if node == self.node}
        for task in list(state.contributions):
            if state.contributions[task][0] != mine.get(task):
                del state.contributions[task]

    def _local_reduction(self, state: _Iteration) -> Block:
        return reduce_blocks([state.contributions[t][1] for t in sorted(state.contributions)], self.info.op)

    async def _collective(self, seal: m.Seal, state: _Iteration, begun: bool = False) -> None:
        i = seal.iteration
        try:
            if begun:  # this node's pieces are in hand (`_begin_collective`)
                if self.info.collective == "allreduce":
                    await doubling.complete(self, seal)
                else:
                    await gather.run(self, seal)
                return
            self._keep_accepted(seal, state)
            mine = {task: attempt for task, attempt, node in seal.pieces if node == self.node}
            for task, attempt in mine.items():
                if task not in state.contributions:
                    state.contributions[task] = (attempt, await store_fallback.load_piece(self, i, task, attempt))
            if self.info.collective == "allreduce":
                await self._allreduce(seal)
            else:
                await gather.run(self, seal)
        except (HCollectivesError, ValueError, trio.TooSlowError) as exc:
            if i < self.floor:
                return  # forgotten meanwhile: the run went on without us (e.g. we were stopped)
            await self.report_error(f"iteration {i}: {type(exc).__name__}: {exc}")

    async def _allreduce(self, seal: m.Seal) -> None:
        local = self._local_reduction(self.it(seal.iteration))
        strategy = plan.allreduce_strategy(seal.layout)
        if strategy == "ring":
            await ring.run(self, seal, local)
        elif strategy == "doubling":
            await doubling.run(self, seal, local)
        else:
            await tree.run(self, seal, local)

    async def notice(self, iteration: int, message: str) -> None:
        log.warning("node %s: iteration %d: %s", self.node, iteration, message)
        try:
            await self.to_coordinator(m.Notice(self.session, self.node, iteration, message[: m.MAX_TEXT]))
        except HCollectivesError:
            pass

    async def finish(self, iteration: int, result: Block) -> None:
        state = self.it(iteration)
        if state.result is not None or state.seal is None:
            return  # done already, or forgotten (the run has moved two iterations on)
        state.result = result
        state.contributions.clear()  # the result supersedes them; free the memory
        self.notify()
        is_root = ranks_of(state.seal.members)[self.node] == 0
        # HasResult first: the collective is complete here, and a 64 MiB Result
        # queued ahead of it on the same connection would put the driver's
        # copy on the collective's critical path (it competes for the CPU with
        # the peers still receiving). The driver waits for the Result itself
        # (`Coordinator.wait_result`), which follows at once.
        await self.to_coordinator(m.HasResult(self.session, self.node, iteration))
        if is_root:
            await self.to_coordinator(m.Result(self.session, iteration, result))
        if is_root and self.store is not None:
            # Not awaited here: finish() often runs in a peer's reader task, which
            # must go on reading the next iteration's steps meanwhile.
            self.nursery.start_soon(self._store_copy, iteration, st.result_path(self.session, iteration), result)

    # -- lifetime -----------------------------------------------------------------------------

    async def close(self) -> None:
        for channel in list(self._peers.values()):
            await channel.aclose()
        if self._coordinator is not None:
            await self._coordinator.aclose()


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 30.0  # dial + handshake + one small request
    store: float = 60.0  # one filesystem call
    loop_data: float = 3600.0  # a speculative task may wait a whole iteration
    collective: float = 600.0  # one iteration's exchange, fallback included
    task_idle: float = 3600.0  # a task's connection while its mapper computes
    idle_exit: float = 120.0  # daemon with no session at all
    coordinator_silence: float = 8.0  # no heartbeat this long: the driver is dead (it beats every 1 s)
