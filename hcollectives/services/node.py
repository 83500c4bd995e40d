"""The node daemon: one process per node, serving every task and session on it.

It listens on one TCP port for three kinds of authenticated peers: map tasks
of this node, node daemons of other nodes, and nothing else (the coordinator
is dialled, not accepted). Per-session work lives in `NodeSession`; this
module owns the process's lifetime:

- started by the first task of a session (`rendezvous.py`), it exits as soon
  as no session is left (each session ends when its coordinator connection
  closes, i.e. when the driver finishes or dies), or after `idle_exit`
  seconds if no session ever arrives: no orphan daemons after a failure;
- run as a service (`hcollectives node`), it keeps running between sessions.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile

import trio

from ..errors import CollectiveTimeout, ConnectionLost, HCollectivesError, ProtocolError
from ..protocol import messages as m
from ..transport.buffer_pool import BufferPool
from ..transport.rejections import Rejections
from ..transport.trio_channel import Channel, listener_address, open_listeners, open_unix_listener, serve
from .faults import Faults
from .node_session import NodeSession, Timeouts
from .rendezvous import STRAY_UNIX_DIR, default_rundir
from .split_cache import remove_split_cache

log = logging.getLogger(__name__)


class NodeDaemon:
    def __init__(self, *, node: str, secret: bytes, bind_host: str = "127.0.0.1",
                 advertise_host: str | None = None, port: int = 0, timeouts: Timeouts = Timeouts(),
                 exit_when_idle: bool = True, faults: Faults = Faults(), unix_dir: str | None = None) -> None:
        if not node:
            raise ValueError("node id must not be empty")
        self.node = node
        self._secret = secret
        self._bind_host, self._port = bind_host, port
        self._advertise_host = advertise_host or bind_host
        self.timeouts = timeouts
        self.exit_when_idle = exit_when_idle
        self.faults = faults
        # Where the Unix socket's private directory goes: the daemon's rendezvous
        # directory when it has one (removed with the run even if we are killed),
        # else the system's temp dir.
        self._unix_dir = unix_dir
        self.address: str | None = None
        self.pool = BufferPool()  # receive buffers, reused across sessions and iterations
        self.sessions: dict[str, NodeSession] = {}
        self.rejected_connections = Rejections(log)  # counted; logged at a bounded rate
        self._join_lock = trio.Lock()
        self._changed = trio.Event()
        self._had_session = False  # a task-started daemon exits when its sessions are over
        self.driver_lost = False  # a session ended because its driver fell silent (killed)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await open_listeners(self._bind_host, self._port)
        # Same-host peers and tasks dial this Unix socket instead of TCP
        # (transport/common.py); its directory is ours alone (0700), so only
        # our user can even reach the handshake.
        unix_dir = tempfile.mkdtemp(prefix="hcx-", dir=self._unix_dir)
        unix_path = os.path.join(unix_dir, "d.sock")
        if len(unix_path) > 100 and self._unix_dir is not None:  # too long for sun_path
            os.rmdir(unix_dir)
            unix_dir = tempfile.mkdtemp(prefix="hcx-")
            unix_path = os.path.join(unix_dir, "d.sock")
            # Outside the rendezvous dir, a daemon killed -9 would leave it behind:
            # say where it is, so a successor or the driver removes it (rendezvous.py).
            with open(os.path.join(self._unix_dir, STRAY_UNIX_DIR), "w") as f:
                f.write(unix_dir)
        try:
            unix = await open_unix_listener(unix_path)
            if unix is not None:
                listeners = listeners + [unix]
            self.address = listener_address(listeners, self._advertise_host, unix_path if unix else None)
            await self._serve(listeners, task_status)
        finally:
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
            shutil.rmtree(unix_dir, ignore_errors=True)  # the socket file with it, also on failure
        log.info("node %s: exiting", self.node)

    async def _serve(self, listeners: list[trio.SocketListener], task_status) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(lambda: serve(listeners, self._handle, role="node", name=self.node,
                                             secret=self._secret, handshake_timeout=self.timeouts.connect,
                                             on_reject=self.rejected_connections.append,
                                             allocate=self.pool.take))
            task_status.started(self.address)
            await self._lifetime()
            nursery.cancel_scope.cancel()

    async def _lifetime(self) -> None:
        """Return when the daemon should exit (never, for a service).

        Every pass either returns or waits for a change: no pass may loop
        without yielding, or the joins it is waiting for could never finish.
        """
        while True:
            if self.sessions or not self.exit_when_idle or self._join_lock.locked():
                await self._changed.wait()
                continue
            if self._had_session:
                return  # the last session ended (or could not be joined): exit now
            with trio.move_on_after(self.timeouts.idle_exit) as idle:
                await self._changed.wait()
            if idle.cancelled_caught:
                return  # nobody came within idle_exit

    # -- connections --------------------------------------------------------------------

    async def _handle(self, channel: Channel) -> None:
        try:
            if channel.peer_role == "task":
                await self._handle_task(channel)
            elif channel.peer_role == "peer":
                await self._handle_peer(channel)
            else:
                log.warning("node %s: unexpected %s connection", self.node, channel.peer_role)
        except ConnectionLost:
            pass
        except (HCollectivesError, trio.TooSlowError) as exc:
            log.warning("node %s: %s: %s", self.node, channel.label, exc)

    async def _handle_task(self, channel: Channel) -> None:
        started = await channel.receive(timeout=self.timeouts.connect)
        if not isinstance(started, m.TaskStarted):
            raise ProtocolError(f"a task must start with TaskStarted, not {type(started).__name__}")
        try:
            session = await self._session(started.session, started.coordinator)
            await session.to_coordinator(started)
            while True:
                event = await channel.receive(timeout=self.timeouts.task_idle)
                if getattr(event, "session", None) != session.session:
                    raise ProtocolError(f"task {started.task} switched sessions")
                if isinstance(event, m.GetLoopData):
                    await session.serve_loop_data(channel, event.iteration)
                elif isinstance(event, m.Contribute):
                    await channel.send(await session.contribute(event), timeout=self.timeouts.connect)
                elif isinstance(event, (m.TaskFailed, m.TaskStarted)):
                    # (TaskStarted again: a resident task entering its next iteration)
                    await session.to_coordinator(event)
                else:
                    raise ProtocolError(f"tasks do not send {type(event).__name__}")
        except (HCollectivesError, trio.TooSlowError) as exc:
            if isinstance(exc, ConnectionLost):
                raise
            # Tell the task why, so its error names the cause, not "connection lost".
            reason = f"node {self.node}: {type(exc).__name__}: {exc}"
            with trio.move_on_after(1):
                try:
                    await channel.send(m.Stop(started.session, 0, False, reason[: m.MAX_TEXT]))
                except HCollectivesError:
                    pass
            raise

    async def _handle_peer(self, channel: Channel) -> None:
        # One deadline for the connection's lifetime, moved on before each read
        # and lifted while a message is handled (as a receive timeout would be):
        # a cancel scope entered and left around every read costs more than
        # the rest of a small step's reading.
        idle = self.timeouts.task_idle
        with trio.CancelScope() as waiting:
            while True:
                waiting.deadline = trio.current_time() + idle
                event = await channel.receive()
                waiting.deadline = math.inf
                await self._on_peer_event(channel, event)
        raise CollectiveTimeout(f"timed out after {idle:g}s waiting for a message from {channel.label}")

    async def _on_peer_event(self, channel: Channel, event: m.Message) -> None:
        session_id = getattr(event, "session", "")
        session = self.sessions.get(session_id)
        if session is None and self._join_lock.locked():
            # A peer sends to us once the coordinator lists us in Members,
            # which can be before we have read its SessionInfo ourselves:
            # wait for that join to end rather than drop the message (an
            # AllGather piece pushed then would never come again).
            with trio.move_on_after(self.timeouts.connect):
                while session_id not in self.sessions and self._join_lock.locked():
                    await self._changed.wait()
            session = self.sessions.get(session_id)
        if session is None:
            log.warning("node %s: %s for unknown session from %s", self.node, event.TYPE, channel.label)
            return
        await session.on_peer_event(event)

    # -- sessions -----------------------------------------------------------------------------

    async def _session(self, session_id: str, coordinator: str) -> NodeSession:
        try:
            async with self._join_lock:  # concurrent first tasks must not join twice
                session = self.sessions.get(session_id)
                if session is None:
                    session = NodeSession(node=self.node, address=self.address, session=session_id,
                                          coordinator=coordinator, secret=self._secret,
                                          timeouts=self.timeouts, faults=self.faults)
                    session.pool = self.pool
                    await self._nursery.start(self._run_session, session)
        finally:
            self._notify()  # _lifetime waits for the lock to be free
        return session

    async def _run_session(self, session: NodeSession, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        join_error: BaseException | None = None
        try:
            async with trio.open_nursery() as nursery:
                session.nursery = nursery
                try:
                    await session.join()
                except (HCollectivesError, trio.TooSlowError, OSError) as exc:
                    join_error = exc
                    nursery.cancel_scope.cancel()
                else:
                    self.sessions[session.session] = session
                    self._had_session = True
                    self._notify()
                    task_status.started()
                    await session.ended.wait()
                    # Checkpoints still being written get a short grace period.
                    with trio.move_on_after(self.timeouts.connect):
                        await session.drain()
                    nursery.cancel_scope.cancel()
        finally:
            # Also after a failed join: a task-started daemon whose first session
            # cannot even be joined (its driver is gone) has nothing left to do.
            self._had_session = True
            self.driver_lost = self.driver_lost or session.driver_lost
            await session.close()
            if self.sessions.get(session.session) is session:
                del self.sessions[session.session]
            if not self.exit_when_idle:
                # A service outlives its sessions: drop each one's parsed-split
                # cache on this machine (task-started daemons do it on exit).
                await trio.to_thread.run_sync(remove_split_cache, default_rundir(session.session))
            self._notify()
        if join_error is not None:
            # Raised here, outside the nursery, so the task that asked gets this
            # error itself and the daemon goes on serving others (e.g. a straggler
            # task of a run whose driver has already gone).
            raise HCollectivesError(f"cannot join session {session.session}: {join_error}") from join_error
