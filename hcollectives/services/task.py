"""The task side: what a map task (mrjob mapper or streaming wrapper) does.

`TaskEnv` reads what the driver and Hadoop put in the task's environment;
`TaskClient` talks to the node daemon in request/reply turns:

    start()        TaskStarted (the coordinator counts it for speculation)
    loop_data()    GetLoopData -> LoopData | PostProcessLease | Stop
    contribute()   Contribute -> ContributeAck
    fail()         TaskFailed (bad mapper output: aborts the session at once)
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from ..algorithms.block import Block
from ..errors import ConfigurationError, ConnectionLost, ProtocolError, SessionAborted
from ..protocol import messages as m
from ..transport.sync_channel import SyncChannel
from . import rendezvous

ENV_PREFIX = "HCOLLECTIVES_"


class IterationStopped(Exception):
    """Raised by `loop_data()` when this iteration must not run (the loop
    converged before it); the task exits successfully with no output."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IterationFinished(IterationStopped):
    """This iteration is over already, but the loop goes on (m.Stop.finished)."""


def _clean_id(raw: str) -> str:
    # Hadoop ids are already clean; mrjob's simulated ones embed the job key.
    return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)[-180:]


@dataclass(frozen=True, slots=True)
class TaskEnv:
    session: str
    coordinator: str
    secret: bytes
    iteration: int
    task: str
    attempt: str
    num_tasks: int
    node: str
    rundir: str
    node_address: str | None  # a service daemon's address, if the cluster runs one
    input_split: str
    timeout: float
    rundir_from_driver: bool = False  # the driver made it (local runs) and removes it at the end
    input_cache: bool = True  # reuse this machine's parsed copy of the split (jobs with parse_input)

    @classmethod
    def from_environ(cls, env: Mapping[str, str] = os.environ) -> "TaskEnv":
        def need(name: str) -> str:
            value = env.get(ENV_PREFIX + name)
            if not value:
                raise ConfigurationError(f"${ENV_PREFIX}{name} is not set: this task was not started by an hcollectives driver")
            return value

        session = need("SESSION")
        try:
            secret = _secret(env, need)
            iteration = int(need("ITERATION"))
        except ValueError as exc:
            raise ConfigurationError(f"malformed hcollectives task environment: {exc}") from None
        partition = env.get("mapreduce_task_partition", "0")
        task = env.get("mapreduce_task_id") or f"task_{partition}"
        attempt = env.get("mapreduce_task_attempt_id") or f"{task}_0"
        split = env.get("mapreduce_map_input_file", "")
        if split:
            split = f"{split}:{env.get('mapreduce_map_input_start', '0')}+{env.get('mapreduce_map_input_length', '?')}"
        return cls(
            session=session,
            coordinator=need("COORDINATOR"),
            secret=secret,
            iteration=iteration,
            task=_clean_id(task),
            attempt=_clean_id(attempt),
            num_tasks=int(env.get("mapreduce_job_maps") or -1),
            node=rendezvous.node_identity(env),
            rundir=env.get(ENV_PREFIX + "RUNDIR") or rendezvous.default_rundir(session),
            rundir_from_driver=bool(env.get(ENV_PREFIX + "RUNDIR")),
            node_address=env.get(ENV_PREFIX + "NODE_ADDRESS") or None,
            input_split=split or "stdin",
            timeout=float(env.get(ENV_PREFIX + "TASK_TIMEOUT") or 3600),
            input_cache=env.get(ENV_PREFIX + "INPUT_CACHE", "1") != "0",
        )

    def describe(self) -> str:
        return f"task {self.task} (attempt {self.attempt}, iteration {self.iteration}, input {self.input_split})"


def _secret(env: Mapping[str, str], need: Callable[[str], str]) -> bytes:
    path = env.get(ENV_PREFIX + "SECRET_FILE")
    if not path:
        return bytes.fromhex(need("SECRET"))
    from .node_main import read_secret  # light: no trio until a daemon runs

    try:
        return read_secret(Path(path))
    except ConfigurationError as exc:
        raise ConfigurationError(f"on node {rendezvous.node_identity(env)}: {exc}") from None


# (result of iteration-1, loop data of iteration-1) -> (loop data of iteration, converged?)
PostProcess = Callable[[Block, np.ndarray], tuple[np.ndarray, bool]]

# Short waits: one request to the local daemon.
_REQUEST_TIMEOUT = 60.0
# How often a task starts over with a new daemon after losing its node's daemon
# (a fresh one rejoins the session; more losses than this in one task is a
# broken node, and the task fails with the last ConnectionLost).
RECONNECTS = 3
T = TypeVar("T")


class TaskClient:
    def __init__(self, env: TaskEnv) -> None:
        self.env = env
        self._channel: SyncChannel | None = None

    def start(self) -> None:
        """Reach the node's daemon and say TaskStarted; a daemon lost meanwhile
        (killed between our finding it and our first message: seen in the
        fault campaign as "Connection reset by peer") is replaced, as in
        `_retrying`, instead of failing the task."""
        for attempt in range(RECONNECTS + 1):
            try:
                self._start_once()
                return
            except ConnectionLost:
                self.close()
                if attempt == RECONNECTS:
                    raise
                time.sleep(min(0.2 * 2 ** attempt, 2.0))

    def _start_once(self) -> None:
        env = self.env
        address = env.node_address or rendezvous.find_or_start_daemon(
            rundir=env.rundir, node=env.node, secret=env.secret, rundir_must_exist=env.rundir_from_driver)
        self._channel = SyncChannel.connect(address, role="task", name=env.task, secret=env.secret,
                                            timeout=_REQUEST_TIMEOUT)
        self._send(m.TaskStarted(env.session, env.iteration, env.task, env.attempt, env.num_tasks,
                                 env.node, env.coordinator))

    def _retrying(self, request: Callable[[], T]) -> T:
        """Run *request*; if the node's daemon is lost meanwhile (killed, crashed),
        start or find its successor, which rejoins the session, and ask again.

        Every request is idempotent at the daemon and the coordinator: TaskStarted
        adds to a set, a second Contribute of the same attempt is accepted again
        (the claim is held by this attempt and node) and is already in the store
        (the first was acknowledged only once checkpointed; a resident task's
        non-durable one is not, but a lost daemon restarts a resident run from its
        last finished iteration anyway: driver/resident.py), and a lease is just
        computed again (post_process is deterministic).
        """
        for attempt in range(RECONNECTS + 1):
            try:
                return request()
            except ConnectionLost:
                if attempt == RECONNECTS:
                    raise
                self.close()
                time.sleep(min(0.2 * 2 ** attempt, 2.0))
                self.start()  # itself retried: a successor may be lost too
        raise AssertionError("unreachable")

    def loop_data(self, post_process: PostProcess) -> np.ndarray:
        """This iteration's loop data; may run *post_process* once for the node."""
        return self._retrying(lambda: self._loop_data(post_process))

    def _loop_data(self, post_process: PostProcess) -> np.ndarray:
        env = self.env
        self._send(m.GetLoopData(env.session, env.iteration))
        reply = self._receive(env.timeout)
        if isinstance(reply, m.PostProcessLease):
            data, converged = post_process(reply.result, reply.previous)
            data = np.ascontiguousarray(data)
            self._send(m.LoopData(env.session, env.iteration, data, bool(converged)))
            if converged:
                raise IterationStopped(f"converged after iteration {env.iteration - 1}")
            return data
        if isinstance(reply, m.LoopData) and reply.iteration == env.iteration:
            return reply.data
        if isinstance(reply, m.Stop):
            self._raise_stop(reply)
        raise ProtocolError(f"daemon answered GetLoopData with {type(reply).__name__}")

    def contribute(self, block: Block, durable: bool = True) -> bool:
        """Hand the task's output to the daemon; True if this attempt counts.
        *durable*: answer only once the block is in the store (m.Contribute)."""
        return self._retrying(lambda: self._contribute(block, durable))

    def _contribute(self, block: Block, durable: bool) -> bool:
        env = self.env
        self._send(m.Contribute(env.session, env.iteration, env.task, env.attempt, block, durable))
        reply = self._receive(env.timeout)
        if isinstance(reply, m.ContributeAck):
            return reply.accepted
        if isinstance(reply, m.Stop):
            self._raise_stop(reply)
        raise ProtocolError(f"daemon answered Contribute with {type(reply).__name__}")

    def fail(self, message: str) -> None:
        env = self.env
        self._send(m.TaskFailed(env.session, env.iteration, env.task, env.attempt, message[: m.MAX_TEXT]))

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> "TaskClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _raise_stop(self, stop: m.Stop) -> None:
        if stop.finished:
            raise IterationFinished(stop.reason)
        if stop.converged:
            raise IterationStopped(stop.reason)
        raise SessionAborted(stop.reason)

    def _send(self, event: m.Message) -> None:
        if self._channel is None:
            raise ConfigurationError("TaskClient.start() was not called")
        self._channel.send(event, timeout=_REQUEST_TIMEOUT)

    def _receive(self, timeout: float) -> m.Message:
        return self._channel.receive(timeout=timeout)
