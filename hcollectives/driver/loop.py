"""The iteration loop every front end shares (mrjob jobs and streaming mappers).

The driver runs the coordinator on a trio loop, submits one map-only job per
iteration through a `JobLauncher` (blocking mrjob runner calls run in worker
threads), and with speculative scheduling submits iteration i+1 as soon as
every map task of iteration i has *started* -- never earlier, so waiting tasks
of i+1 can never hold the slots that i's tasks still need. When iteration i's
result arrives it runs post_process and converged, saves the new loop data to
the store (so ``--resume`` can continue) and either tells the daemons to stop
or moves on.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np
import trio

from .. import store as st
from ..algorithms.block import Block
from ..algorithms.reduction import check_op
from ..errors import ConfigurationError, HCollectivesError, JobFailed, RunInterrupted, SessionAborted
from ..protocol.connection import new_secret
from ..services.coordinator import Coordinator, SessionConfig
from ..services.node_main import read_secret
from ..services.rendezvous import remove_stray_unix_dir
from ..transport.common import parse_address
from . import signals
from .redact import Redactor

log = logging.getLogger(__name__)

# After convergence the speculative job's tasks are told to stop at once; this
# bounds how long we wait for its (now empty) run to wind down.
DRAIN_TIMEOUT = 120.0
# After an abort, how long tasks get to notice the Stop before they are terminated.
ABORT_GRACE = 3.0
# Ending one abandoned job (a YARN application kill) takes a request or two.
ABANDON_TIMEOUT = 15.0
# The session secret's file name in each task's working directory.
SESSION_SECRET_NAME = "hcollectives-session-secret"


@dataclass(frozen=True, slots=True)
class LoopOptions:
    collective: str  # "allreduce" | "allgather"
    op: str = "none"
    max_iterations: int = 10
    speculative: bool = True
    local_nodes: int = 1
    fanout: int = 2
    checkpoint_uri: str | None = None
    resume: bool = False
    fallback_timeout: float = 10.0
    iteration_timeout: float = 3600.0  # one iteration, from its job's submission to its result
    allow_nonfinite: bool = False
    coordinator_host: str = "127.0.0.1"
    node_service: str | None = None  # tasks use this node service (same address on every host)
    secret_file: str | None = None  # the node services' secret; read by tasks from their own node
    input_cache: bool = True  # tasks of jobs with parse_input reuse their machine's parsed splits
    temporary_store: str | None = None  # base URL of the default store when --checkpoint-uri is not given
    share_rundir: bool = True  # local runners: tasks meet in the driver's temp dir
    progress: bool = True
    extra_env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.collective not in ("allreduce", "allgather"):
            raise ConfigurationError(f"collective must be allreduce or allgather, not {self.collective!r}")
        if self.collective == "allreduce":
            check_op(self.op)
        if self.max_iterations < 1:
            raise ConfigurationError("--max-iterations must be at least 1")
        if self.local_nodes < 1:
            raise ConfigurationError("--local-nodes must be at least 1")
        if self.fanout < 1:
            raise ConfigurationError("--fanout must be at least 1")
        if not self.fallback_timeout > 0:
            raise ConfigurationError("--fallback-timeout must be positive")
        if not self.iteration_timeout > 0:
            raise ConfigurationError("--iteration-timeout must be positive")
        if self.node_service and not self.secret_file:
            raise ConfigurationError("--node-service needs --secret-file: the service was started with its own "
                                     "secret, and tasks must prove they know it")
        if self.node_service:
            try:
                parse_address(self.node_service)
            except ValueError as exc:
                raise ConfigurationError(f"--node-service: {exc}") from None


@dataclass(frozen=True, slots=True)
class IterationTiming:
    iteration: int
    seconds: float  # from the previous iteration's result (or this job's submission) to this result
    converged: bool
    events: dict[str, float]  # seconds since the run started: submitted, first_task_started, ...
    notices: tuple[str, ...] = ()  # what daemons reported, e.g. pieces read from the store


@dataclass(frozen=True, slots=True)
class LoopResult:
    loop_data: np.ndarray
    iterations: int  # the last iteration that ran
    converged: bool
    timings: list[IterationTiming] = field(default_factory=list)
    result: Block | None = None  # the last iteration's raw collective result
    notices: list[str] = field(default_factory=list)  # every daemon notice of the run (store fallbacks)
    started_at: float = math.nan  # epoch seconds that IterationTiming.events count from

    def windows(self) -> list[tuple[int, float, float]]:
        """(iteration, start, end) in epoch seconds: from the previous result (or the first
        submission) to this iteration's result, the span IterationTiming.seconds measures."""
        out = []
        for t in self.timings:
            end = self.started_at + t.events["result"]
            out.append((t.iteration, end - t.seconds, end))
        return out

    @property
    def mean_iteration_seconds(self) -> float:
        return float(np.mean([t.seconds for t in self.timings])) if self.timings else math.nan

    def summary(self, result_path: str | None = None) -> str:
        """What a front end prints at the end of a run."""
        state = "converged" if self.converged else "did not converge"
        lines = [f"{self.iterations} iteration(s), {state}; mean {self.mean_iteration_seconds:.3f} s per iteration"
                 + (f"; result in {result_path}" if result_path else "")]
        if self.notices:
            lines.append(f"{len(self.notices)} store fallback(s):")
            lines.extend(f"  {notice}" for notice in self.notices)
        return "\n".join(lines)


class IterationReport:
    """What a launcher tells the driver about its iteration's job while it runs.

    Called from the launcher's worker thread; each call hops onto the driver's trio loop.
    """

    def __init__(self, driver: "IterativeDriver", iteration: int, token: trio.lowlevel.TrioToken) -> None:
        self._driver, self._iteration, self._token = driver, iteration, token

    @property
    def session_secret_file(self) -> tuple[str, str] | None:
        """(path, name): a private file holding the session secret, which the
        launcher ships so that it appears as *name* in every task's working
        directory; None when tasks read --secret-file on their own node."""
        path = getattr(self._driver, "secret_path", None)
        return (path, SESSION_SECRET_NAME) if path else None

    @property
    def local_tmp_dir(self) -> str:
        """Where a launcher puts its runner's temp files: inside the driver's temp
        dir, so they go with it (also after a failure or a signal)."""
        return os.path.join(self._driver.tmp, "mrjob")

    def num_tasks(self, n: int) -> None:
        """The job has *n* map tasks (mrjob's local runners; Hadoop tells the tasks)."""
        trio.from_thread.run_sync(self._driver.coordinator.set_num_tasks, self._iteration, n, trio_token=self._token)

    def all_tasks_scheduled(self) -> None:
        """Every map task has its container (YARN said so): none can still wait for a slot."""
        try:
            trio.from_thread.run_sync(self._driver._tasks_scheduled, self._iteration, trio_token=self._token)
        except trio.RunFinishedError:
            pass  # the run is over; nothing left to schedule


class JobLauncher(Protocol):
    def run_iteration(self, iteration: int, env: dict[str, str], report: IterationReport) -> None:
        """Run iteration's map-only job to completion (blocking); raise on failure."""

    # Optional: ``abandon(iteration)`` ends a still-running iteration's job at once
    # (blocking, bounded) when the run has failed, so a doomed run costs one job:
    # a speculatively submitted next iteration is killed instead of waiting for
    # its own tasks to fail.


PostProcess = Callable[[Block, np.ndarray], np.ndarray]
Converged = Callable[[np.ndarray, np.ndarray], bool]


class IterativeDriver:
    def __init__(self, options: LoopOptions, launcher: JobLauncher, *, post_process: PostProcess,
                 converged: Converged, initial: np.ndarray, stream: TextIO | None = None) -> None:
        self.options = options
        self.launcher = launcher
        self.post_process = post_process
        self.converged = converged
        self.initial = _check_loop_data(initial, "initial loop data")
        self.stream = stream if stream is not None else sys.stderr

    def run(self) -> LoopResult:
        tmp = self.tmp = tempfile.mkdtemp(prefix="hcollectives-")
        self.rundir = os.path.join(tmp, "run")
        os.mkdir(self.rundir)  # tasks treat its absence as "this run is over"
        self.session = secrets.token_hex(8)
        # Names the run's temporary store (cluster runs): it outlives a restart's new session.
        self.run_id = self.session
        children_before = set(multiprocessing.active_children())
        interrupted = False
        self.redactor = Redactor().install()
        try:
            return trio.run(self._main, tmp)
        except BaseExceptionGroup as group:
            error = self._redacted(_first_error(group))
            interrupted = isinstance(error, RunInterrupted)
            raise error from (None if interrupted else group)  # one line for a signal, no traceback
        except RunInterrupted:
            interrupted = True
            raise
        except Exception as error:
            raise self._redacted(error)
        finally:
            self.redactor.remove()
            with signals.deferred():  # a second ^C must not cut the clean-up short
                # Daemons exit by themselves once the coordinator is gone; this is the
                # backstop (on a local run) for anything of this session left behind.
                # After a signal nobody waits: the user asked for a stop within seconds.
                _end_session_processes(self.session, grace=0.0 if interrupted else 5.0)
                if self.options.temporary_store and not self.options.checkpoint_uri:
                    _remove_temporary_store(self.options.temporary_store, self.run_id)
                if interrupted:
                    # mrjob's local-runner pool workers (forked from us; they hold
                    # copies of the coordinator's sockets) would outlive the stop.
                    signals.end_processes(set(multiprocessing.active_children()) - children_before)
                    # A fork server notices its socket going only between tasks
                    # (not while it warms up, seconds on a loaded machine): end it.
                    signals.end_fork_servers(os.path.join(self.rundir, "zygotes"))
                # A fork server leaves within ~1 s of its socket file going (launch/zygote.py);
                # with HCOLLECTIVES_KEEP_TMP the rest of the directory stays.
                for sock in Path(self.rundir, "zygotes").glob("*.sock"):
                    sock.unlink(missing_ok=True)
                for node in Path(self.rundir, "nodes").glob("*"):
                    remove_stray_unix_dir(node)  # of daemons killed during the run
                if os.environ.get("HCOLLECTIVES_KEEP_TMP") == "1":
                    print(f"hcollectives: kept {tmp} (daemon logs under run/nodes/, mrjob's under mrjob/)",
                          file=self.stream)
                else:
                    # mrjob's own temp dirs live under mrjob/ here (MRJobLauncher), so
                    # this removes them too, also after a failed or interrupted job.
                    shutil.rmtree(tmp, ignore_errors=True)

    def _redacted(self, error: BaseException) -> BaseException:
        """*error*, with the session secret replaced in its message (driver/redact.py)."""
        text = str(error)
        if self.redactor.text(text) != text:
            error.args = (self.redactor.text(text),)
        return error

    # -- the loop -------------------------------------------------------------------------------

    async def _main(self, tmp: str) -> LoopResult:
        o = self.options
        if o.checkpoint_uri:
            return await self._run_with_store(st.Store(o.checkpoint_uri))
        if not o.temporary_store:
            return await self._run_with_store(st.Store(st.default_checkpoint_uri(tmp)))
        # Cluster runs: a store every node can reach, removed after the run (`run`) like
        # the temp dir; a resident run that restarts after a lost daemon resumes from it.
        base = st.Store(o.temporary_store)
        return await self._run_with_store(st.Store(f"{base.url.rstrip('/')}/{self.run_id}"))

    async def _run_with_store(self, store: st.Store) -> LoopResult:
        o = self.options
        first, loop_data, converged = await trio.to_thread.run_sync(self._starting_point, store)
        if converged or first > o.max_iterations:
            state = "converged" if converged else f"reached --max-iterations {o.max_iterations}"
            self._say(f"resume: nothing to do, the run in {store.url} already {state}")
            return LoopResult(loop_data, first - 1, converged, [])
        self.secret = read_secret(Path(o.secret_file)) if o.secret_file else new_secret()
        self.secret_path = None if o.secret_file else _write_private(
            os.path.join(self.tmp, f"{SESSION_SECRET_NAME}-{self.session}"), self.secret.hex())  # one per session
        self.redactor.secrets.append(self.secret.hex())
        config = SessionConfig(self.session, self.secret, o.collective, o.op if o.collective == "allreduce" else "none",
                               o.fanout, store.url, o.fallback_timeout, first, o.allow_nonfinite,
                               bind_host=o.coordinator_host, advertise_host=o.coordinator_host)
        self.coordinator = coord = Coordinator(config, loop_data)
        self.t0 = time.perf_counter()
        self.t0_epoch = time.time()
        self._launched: dict[int, trio.Event] = {}
        self._scheduled: dict[int, trio.Event] = {}
        self._job_errors: dict[int, BaseException] = {}
        self._stopping = False
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._interrupted: str | None = None
            if signals.can_watch():
                await nursery.start(signals.watch, self._on_signal)
            await nursery.start(coord.serve)
            try:
                result = await self._iterate(store, first, loop_data)
            except SessionAborted as exc:
                raise JobFailed(str(exc)) from None
            except BaseException as exc:
                # e.g. the job's own post_process or converged raised in the
                # driver, or a signal: tell every daemon, so waiting tasks stop now.
                if self._interrupted is not None:
                    coord.abort(f"the driver was interrupted by {self._interrupted}", quiet=True)
                else:
                    coord.abort(f"the driver failed: {type(exc).__name__}: {exc}")
                raise
            finally:
                self._stopping = True
                await self._drain_jobs()
                nursery.cancel_scope.cancel()
        # The run is over: its pieces and results are of no use to --resume (loop/ and
        # run.json are); a kept --checkpoint-uri keeps one resumable iteration.
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(store.remove_tree, f"sessions/{self.session}")
            except HCollectivesError as exc:
                log.warning("could not remove this run's pieces from %s: %s", store.url, exc)
        result.notices.extend(self._notices())  # late ones too: a fallback may end after the result
        return result

    def _starting_point(self, store: st.Store) -> tuple[int, np.ndarray, bool]:
        """(first iteration to run, its loop data, whether the stored run already converged)."""
        if self.options.resume:
            latest = st.latest_loop_iteration(store)
            if latest is not None:
                state = store.load_json(st.run_state_path()) if store.exists(st.run_state_path()) else {}
                data = store.load_array(st.loop_data_path(latest))
                if not state.get("converged"):
                    self._say(f"resume: continuing at iteration {latest} from {store.url}")
                return latest, data, bool(state.get("converged"))
        store.save_array(st.loop_data_path(1), self.initial)
        return 1, self.initial, False

    async def _iterate(self, store: st.Store, first: int, loop_data: np.ndarray) -> LoopResult:
        o, coord = self.options, self.coordinator
        last = o.max_iterations
        timings: list[IterationTiming] = []
        previous_result_at = None
        self._launch(first)
        i = first
        while True:
            if o.speculative and i < last:
                self._nursery.start_soon(self._speculate, i)
            try:
                result = await coord.wait_result(i, timeout=o.iteration_timeout)
            except trio.TooSlowError:
                coord.abort(f"iteration {i} did not finish within --iteration-timeout {o.iteration_timeout:g}s")
                raise SessionAborted(coord.failure) from None
            if i == first and not len(result.keys):
                # An empty input used to "succeed" with the initial loop data
                # returned unchanged and no word; nothing was computed.
                raise ConfigurationError(f"iteration {i}: no map task emitted any output; "
                                         "is the input empty (or does every record get skipped)?")
            new = _check_loop_data(await trio.to_thread.run_sync(self.post_process, result, loop_data),
                                   f"post_process of iteration {i}")
            converged = bool(self.converged(loop_data, new))
            coord.set_loop_data(i + 1, new)
            rec = coord.record(i)
            rec.mark("post_processed")
            if converged or i >= last or not coord.has_result(i + 1):
                await trio.to_thread.run_sync(self._save_progress, store, i, new, converged)
            # else: resident tasks already finished i+1, and i's state would be stale
            # as soon as written; on HDFS a save takes ~1 s, 20 resident iterations,
            # so saving each one would leave this loop ever further behind.
            start = previous_result_at if previous_result_at is not None else rec.times["submitted"]
            previous_result_at = rec.times["result"]
            timing = IterationTiming(i, previous_result_at - start, converged,
                                     {k: v - self.t0 for k, v in rec.times.items()}, tuple(rec.notices))
            timings.append(timing)
            fallbacks = f"({len(rec.notices)} store fallback(s))" if rec.notices else ""
            self._say(f"iteration {i:4d}  {timing.seconds:8.3f} s  {'converged' if converged else ''} {fallbacks}".rstrip())
            loop_data = new
            self._forget_before(i)
            if converged or i >= last:
                self._stopping = True
                reason = f"converged after iteration {i}" if converged else f"reached --max-iterations {last}"
                await coord.stop(i + 1, converged=True, reason=reason)
                await self._launched[i].wait()
                if self._job_error(i) is not None:
                    raise JobFailed(f"iteration {i}'s job failed after its collective: {self._job_error(i)}")
                return LoopResult(loop_data, i, converged, timings, result, started_at=self.t0_epoch)
            if not o.speculative:
                await self._launched[i].wait()
            self._launch(i + 1)
            i += 1

    def _job_error(self, i: int) -> BaseException | None:
        """How the job that ran iteration *i* failed, if it did (driver/resident.py: one job for all)."""
        return self._job_errors.get(i)

    def _on_signal(self, name: str) -> None:
        self._interrupted = name

    async def _drain_jobs(self) -> None:
        """Wait for every submitted job to end (its tasks are told to stop).

        After a failure, tasks still inside a mapper will not look at the
        daemon again; on a local runner they run on this machine, so after a
        grace period they are terminated rather than waited for.
        """
        async def all_done() -> None:
            for done in self._launched.values():
                await done.wait()

        abandon = getattr(self.launcher, "abandon", None)
        if self.coordinator.failure is not None and abandon is not None:
            for i, done in sorted(self._launched.items()):
                if not done.is_set():
                    with trio.move_on_after(ABANDON_TIMEOUT):
                        await trio.to_thread.run_sync(abandon, i, abandon_on_cancel=True)
        if self.coordinator.failure is not None and self.options.share_rundir:
            with trio.move_on_after(ABORT_GRACE):
                await all_done()
            await trio.to_thread.run_sync(_end_session_processes, self.session, 0.0)
        with trio.move_on_after(DRAIN_TIMEOUT):
            await all_done()

    def _notices(self) -> list[str]:
        return [f"iteration {i}: {text}" for i, text in self.coordinator.notices]

    def _forget_before(self, i: int) -> None:
        """Iteration i is finished and i+1's loop data saved: keep nothing older
        (bounded memory and store over long runs; `--resume` needs only i+1's input)."""
        self.coordinator.forget_before(i)
        for k in [k for k, done in self._launched.items() if k < i and done.is_set()]:
            del self._launched[k]
            self._job_errors.pop(k, None)
        for k in [k for k in self._scheduled if k < i]:
            del self._scheduled[k]

    async def _speculate(self, i: int) -> None:
        """Submit i+1 once no task of i can still be waiting for a slot: when all of
        them have started, or (on YARN, earlier) when all have their containers."""
        async with trio.open_nursery() as nursery:
            async def until(wait: Callable[[], Awaitable[object]]) -> None:
                try:
                    await wait()
                    if not self._stopping:
                        self._launch(i + 1)
                except SessionAborted:
                    pass  # nothing to submit
                nursery.cancel_scope.cancel()  # the first signal (or the abort) decides

            nursery.start_soon(until, lambda: self.coordinator.wait_all_started(i))
            nursery.start_soon(until, self._scheduled_event(i).wait)

    def _scheduled_event(self, i: int) -> trio.Event:
        return self._scheduled.setdefault(i, trio.Event())

    def _tasks_scheduled(self, i: int) -> None:
        self.coordinator.mark(i, "all_tasks_scheduled")
        self._scheduled_event(i).set()

    def _launch(self, i: int) -> None:
        if i in self._launched or i > self.options.max_iterations:
            return
        done = self._launched[i] = trio.Event()
        self.coordinator.mark(i, "submitted")
        self._nursery.start_soon(self._run_job, i, done)

    async def _run_job(self, i: int, done: trio.Event) -> None:
        report = IterationReport(self, i, trio.lowlevel.current_trio_token())
        try:
            await trio.to_thread.run_sync(self.launcher.run_iteration, i, self._task_env(i), report,
                                          abandon_on_cancel=True)
        except Exception as exc:  # noqa: BLE001 -- any runner failure is this job's failure
            log.debug("iteration %d job failed", i, exc_info=True)
            self._job_errors[i] = exc
        finally:
            self.coordinator.mark(i, "job_finished")
            done.set()
        error = self._job_errors.get(i)
        if error is not None and self._unfinished(i):
            # Give a task's own report (which names the record) a moment to arrive first.
            await trio.sleep(1.0)
            # The iteration may have finished (and been forgotten) meanwhile: a job
            # that fails after its collective is the loop's business, not an abort.
            if self._unfinished(i):
                self.coordinator.abort(f"iteration {i}'s job failed: {error}")

    def _unfinished(self, i: int) -> bool:
        """Iteration i has no result yet (a forgotten iteration is a finished one)."""
        return (not self._stopping and i >= self.coordinator.floor
                and self.coordinator.record(i).result is None)

    def _task_env(self, i: int) -> dict[str, str]:
        o = self.options
        env = {
            "HCOLLECTIVES_SESSION": self.session,
            "HCOLLECTIVES_COORDINATOR": self.coordinator.address,
            "HCOLLECTIVES_ITERATION": str(i),
            "HCOLLECTIVES_LOCAL_NODES": str(o.local_nodes),
        }
        if o.secret_file:  # tasks read it on their node; it stays out of the job's configuration
            env["HCOLLECTIVES_SECRET_FILE"] = o.secret_file
        else:
            # The session secret never travels in the job's configuration (on
            # Hadoop, -cmdenv is readable by anyone who can list the cluster's
            # jobs) nor on a command line: the launcher ships this private file
            # with the job (mrjob's upload_files: the distributed cache, or the
            # local runners' working dirs) and each task reads it from its own
            # working directory. Named explicitly, it also wins over a
            # HCOLLECTIVES_SECRET_FILE the driver's environment may hold.
            env["HCOLLECTIVES_SECRET_FILE"] = SESSION_SECRET_NAME
        if o.node_service:
            env["HCOLLECTIVES_NODE_ADDRESS"] = o.node_service
        if not o.input_cache:
            env["HCOLLECTIVES_INPUT_CACHE"] = "0"
        if os.environ.get("HCOLLECTIVES_KEEP_TMP"):  # the nodes keep their daemons' logs too
            env["HCOLLECTIVES_KEEP_TMP"] = "1"
        if o.share_rundir:
            env["HCOLLECTIVES_RUNDIR"] = self.rundir
        env.update(o.extra_env)
        return env

    def _save_progress(self, store: st.Store, i: int, new: np.ndarray, converged: bool) -> None:
        store.save_array(st.loop_data_path(i + 1), new)
        store.save_json(st.run_state_path(), {"iteration": i, "converged": converged,
                                              "collective": self.options.collective, "op": self.options.op})
        # Only now, with i+1's input and the run state safely written, is older loop
        # data useless to --resume (a crash in between leaves the old files in place).
        # Pieces and results of i-1 stay: a daemon that was stalled may still be
        # reading them, and it forgets i-1 only once it sees i+1's seal (node_session).
        st.prune(store, self.session, keep_loop_from=i + 1, keep_iterations_from=i - 1)

    def _say(self, line: str) -> None:
        if self.options.progress:
            print(line, file=self.stream, flush=True)


def _remove_temporary_store(base_url: str, run_id: str) -> None:
    try:
        st.Store(base_url).remove_tree(run_id)
    except HCollectivesError as exc:  # the run's outcome stands; say what was left
        log.warning("could not remove the run's temporary store %s/%s: %s", base_url.rstrip("/"), run_id, exc)


def _write_private(path: str, text: str) -> str:
    """Create *path* readable by its owner only (0600 from the start, no window)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _first_error(group: BaseExceptionGroup) -> BaseException:
    """The error to show from a group: ours first (they name the cause), else the first one."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for sub in exc.exceptions:
                walk(sub)
        else:
            leaves.append(exc)

    walk(group)
    ours = [e for e in leaves if isinstance(e, HCollectivesError)]
    return (ours or leaves)[0]


def _check_loop_data(data: object, what: str) -> np.ndarray:
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise ConfigurationError(f"{what} must be a numeric array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def _session_processes(session: str) -> list[int]:
    """Processes of this machine that belong to *session*: its local-runner
    tasks and the daemons they started (both carry the session in their
    environment). Stragglers that mrjob orphaned are found too."""
    marker = f"HCOLLECTIVES_SESSION={session}".encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) != os.getpid() and marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


def _end_session_processes(session: str, grace: float) -> None:
    """Give the session's processes *grace* seconds to exit, then SIGTERM, then SIGKILL."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_pid_alive(p) for p in _session_processes(session)):
            time.sleep(0.05)
        alive = [p for p in _session_processes(session) if _pid_alive(p)]
        if not alive:
            return
        if sig is not None:
            for pid in alive:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        grace = 2.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie child of ours counts as gone
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True
