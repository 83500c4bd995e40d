"""Resident mode: the whole loop in one map-only job (``--resident``, ``RESIDENT = True``).

`ResidentDriver` is the iteration driver with one difference: it submits a
single job, whose tasks (jobs/resident_task.py) stay alive and run every
iteration, instead of one job per iteration. Everything the loop does per
iteration -- wait for the result, post_process, converged, checkpoint,
progress line, timings -- is the base class's, unchanged.

Every task must run at the same time (each iteration's collective needs all
of them), so a resident run never waits for a slot:

- the local runner's process pool is sized to the job's task count
  (`resident_runner_class`), and a task that dies is retried there as YARN
  would (new attempt id, up to `MAX_ATTEMPTS`), rejoining at the current
  iteration;
- on YARN, `hadoop/yarn_slots.py` compares the cluster's free memory and
  vcores with what the tasks need before submitting (in MRCollectiveJob);
- on any runner, if not every task has started within ``--resident-start-timeout``
  seconds, the run fails, naming how many tasks are running of how many.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import secrets
import sys

import trio

from ..errors import JobFailed, SessionAborted
from .loop import IterativeDriver, LoopResult, _end_session_processes, _first_error

log = logging.getLogger(__name__)

# How often a local-runner task is tried in all (Hadoop's mapreduce.map.maxattempts default).
MAX_ATTEMPTS = 4
# How often a run whose node daemon was lost starts again from its last finished iteration.
MAX_RESTARTS = 2
# How long the loop may still take, after the resident tasks ended normally, to
# finish the iterations they completed (it writes each iteration's loop data).
LAGGING_LOOP_GRACE = 120.0
# Thread-pool sizes of the BLAS libraries numpy may use (read when numpy is imported).
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Failures that a restart can cure: a daemon (node) lost, or the job's tasks gone.
# Bad input, bad mapper output, a timeout or the job's own code failing would fail again.
_RESTARTABLE = ("node daemon ", "the resident job ended")


class ResidentDriver(IterativeDriver):
    """IterativeDriver whose one job runs every iteration."""

    def __init__(self, *args, start_timeout: float = 300.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not start_timeout > 0:
            from ..errors import ConfigurationError

            raise ConfigurationError("--resident-start-timeout must be positive")
        self.start_timeout = start_timeout
        self._resident_done: trio.Event | None = None
        self._resident_first: int | None = None
        if getattr(self.launcher, "abandon", None) is not None:
            self.launcher = _OneJob(self.launcher, self)

    async def _main(self, tmp: str) -> LoopResult:
        """The base class's run; after a lost daemon, a new session from the last finished iteration.

        A daemon takes its node's contributions and its place in the collective
        with it. Rather than patch a running iteration around the hole, the
        run starts over as --resume would: a new session (coordinator, daemons,
        one new resident job) from the loop data the driver saved after the
        last iteration it finished -- the same bits an undisturbed run computes.
        """
        notices: list[str] = []
        for restart in range(MAX_RESTARTS + 1):
            try:
                result = await super()._main(tmp)
                result.notices[:0] = notices
                return result
            except (JobFailed, BaseExceptionGroup) as exc:
                # (a JobFailed raised inside the loop's nursery arrives in a group)
                error = _first_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
                failure = getattr(getattr(self, "coordinator", None), "failure", None) or ""
                if (not isinstance(error, JobFailed) or restart == MAX_RESTARTS
                        or not failure.startswith(_RESTARTABLE)):
                    raise
                note = f"restarted from the last finished iteration after: {failure}"
            notices.append(note)
            self._say(f"hcollectives: {note}")
            if self.options.share_rundir:  # what is left of the old session on this machine
                await trio.to_thread.run_sync(_end_session_processes, self.session, 2.0)
            self.session = secrets.token_hex(8)
            self.rundir = os.path.join(tmp, f"run-{restart + 1}")
            os.mkdir(self.rundir)
            self.options = dataclasses.replace(self.options, resume=True)
            self._resident_done = self._resident_first = None
        raise AssertionError("unreachable")

    def _launch(self, i: int) -> None:
        if i > self.options.max_iterations:
            return
        if self._resident_done is None:
            self._resident_first = i
            self._resident_done = trio.Event()
            self.coordinator.mark(i, "submitted")
            self._nursery.start_soon(self._run_job, i, self._resident_done)
            self._nursery.start_soon(self._watch_start, i)
            self._nursery.start_soon(self._watch_daemons)
        # Every iteration's "job" is the resident one: the loop's waits for
        # "iteration i's job is done" wait for it.
        self._launched[i] = self._resident_done

    async def _speculate(self, i: int) -> None:
        return  # the next iteration's tasks are already running: these ones

    def _job_error(self, i: int) -> BaseException | None:
        return self._job_errors.get(self._resident_first)

    async def _watch_start(self, first: int) -> None:
        """Fail the run if the tasks do not all run at once: a resident run must never wait for slots."""
        with trio.move_on_after(self.start_timeout) as waited:
            try:
                await self.coordinator.wait_all_started(first)
            except Exception:  # noqa: BLE001 -- aborted: the failure is reported elsewhere
                return
        if waited.cancelled_caught and not self._stopping:
            rec = self.coordinator.record(first)
            total = "an unknown number of" if rec.num_tasks is None else f"the {rec.num_tasks}"
            self.coordinator.abort(
                f"resident mode needs every map task running at once, but only {len(rec.started)} of {total} "
                f"map tasks started within --resident-start-timeout {self.start_timeout:g}s: the cluster has "
                "fewer free task slots than the job has tasks (fewer input splits, more memory or vcores, "
                "or run without --resident: one job per iteration)")

    async def _watch_daemons(self) -> None:
        """A daemon that leaves mid-run (killed, its node lost) ends this session.

        Its tasks would come back with a new daemon, but one that missed the
        collectives under way and could wait for their results forever; the
        restart in `_main` (from the last finished iteration) is the bounded way
        back. A daemon counts as gone when its coordinator connection changed,
        so one that is replaced before we look is not missed.
        """
        coord = self.coordinator
        known: dict[str, object] = {}

        def gone() -> str | None:
            for node, member in list(known.items()):
                if coord.nodes.get(node) is not member:
                    return node
            known.update(coord.nodes)
            return None

        try:
            node = await coord._wait_until(gone)
        except SessionAborted:
            return  # the run failed or ended for another reason, reported there
        if not self._stopping:
            coord.abort(f"node daemon {node} disconnected during the resident run")

    async def _run_job(self, i: int, done: trio.Event) -> None:
        await super()._run_job(i, done)
        coord = self.coordinator
        if self._stopping or coord.failure is not None:
            return
        error = self._job_errors.get(i)
        if error is None and _all_contributions_in(coord):
            # The tasks stop by themselves after the last iteration (or when their
            # node's post_process converged) and can end while this loop is still
            # saving earlier iterations: the daemons finish the sealed collectives.
            with trio.move_on_after(LAGGING_LOOP_GRACE):
                while not self._stopping and coord.failure is None:
                    await trio.sleep(0.05)
            if self._stopping or coord.failure is not None:
                return
        # The job ended although the loop goes on: its tasks cannot come back.
        coord.abort("the resident job ended before the loop did" + (f": {error}" if error else " (its tasks exited)"))

    def _task_env(self, i: int) -> dict[str, str]:
        from ..launch.resident_env import LAST_ENV, RESIDENT_ENV, STORE_ENV

        env = super()._task_env(i)
        env[RESIDENT_ENV] = "1"
        env[LAST_ENV] = str(self.options.max_iterations)
        env[STORE_ENV] = self.coordinator.config.checkpoint_uri
        # Every task of a node computes at once, so a node runs at least as many
        # tasks as it has cores: a BLAS thread pool per task only oversubscribes
        # them (OpenBLAS threads spin while they wait; measured 3x slower per
        # iteration for K-means on 2 cores). One thread per task, as PySpark sets
        # OMP_NUM_THREADS for its workers -- unless the user chose otherwise.
        for name in BLAS_THREAD_VARIABLES:
            if name not in os.environ and name not in dict(self.options.extra_env):
                env[name] = "1"
        return env


def _all_contributions_in(coord) -> bool:
    """Is every iteration that any task contributed to sealed (all its contributions in)?"""
    return all(rec.sealed for rec in list(coord.iterations.values()) if rec.claims)


class _OneJob:
    """The launcher, with `abandon(i)` (kill iteration i's job after a failure)
    acting once, on the one job: every iteration's "job" is the resident one."""

    def __init__(self, launcher, driver: ResidentDriver) -> None:
        self._launcher, self._driver = launcher, driver
        self._abandoned: set[int | None] = set()

    def run_iteration(self, iteration, env, report) -> None:
        self._launcher.run_iteration(iteration, env, report)

    def abandon(self, iteration: int) -> None:
        first = self._driver._resident_first
        if first not in self._abandoned:
            self._abandoned.add(first)
            self._launcher.abandon(first)


# -- the local runner, made to run every task at once and to retry a lost one -------------------

_RESIDENT_CLASSES: dict[type, type] = {}


def resident_runner_class(base: type) -> type:
    """*base* (a collective runner class) for resident jobs.

    On mrjob's simulated runners (local): the process pool gets one process
    per task (mrjob sizes it by --num-cores, which would leave tasks queued
    behind resident ones forever), the task count reaches the tasks as
    Hadoop's $mapreduce_job_maps does, and a failed task is tried again with
    a new attempt id, as YARN would.
    """
    if base not in _RESIDENT_CLASSES:
        def _run_mappers_and_combiners(self, step_num, map_splits):
            map_splits = list(map_splits)
            n = len(map_splits)
            if n > (self._opts.get("num_cores") or os.cpu_count() or 1):
                print(f"hcollectives: --resident: running all {n} map tasks at once "
                      f"(more than --num-cores {self._opts.get('num_cores') or os.cpu_count()})",
                      file=sys.stderr)
            self._opts["num_cores"] = _pool_size(n, self._opts.get("num_cores") or 0)
            self._opts["cmdenv"] = dict(self._opts.get("cmdenv") or {}, mapreduce_job_maps=str(n))
            return base._run_mappers_and_combiners(self, step_num, map_splits)

        def _run_task_func(self, task_type, step_num, task_num, map_split=None):
            func = base._run_task_func(self, task_type, step_num, task_num, map_split)
            if task_type != "mapper":
                return func
            return functools.partial(_run_with_retries, func, MAX_ATTEMPTS)

        attrs = {}
        if hasattr(base, "_run_mappers_and_combiners"):
            attrs["_run_mappers_and_combiners"] = _run_mappers_and_combiners
        if hasattr(base, "_run_task_func"):
            attrs["_run_task_func"] = _run_task_func
        _RESIDENT_CLASSES[base] = type(f"Resident{base.__name__}", (base,), attrs)
    return _RESIDENT_CLASSES[base]


def _pool_size(tasks: int, cores: int) -> int:
    """The local runner's process pool for a resident job: a process for every task."""
    return max(tasks, cores)


def _run_with_retries(func: functools.partial, attempts: int) -> None:
    """Run mrjob's task function; if the task fails, run it again as attempt _1, _2, ...

    (mrjob's local runner never retries; YARN does, and resident mode relies on
    a lost task coming back.) Each earlier attempt's stderr is kept beside the last's.
    """
    *head, stderr_path, wd, env = func.args
    for attempt in range(attempts):
        attempt_env = dict(env)
        attempt_id = env.get("mapreduce_task_attempt_id", "")
        if attempt_id.endswith("_0"):
            attempt_env["mapreduce_task_attempt_id"] = f"{attempt_id[:-2]}_{attempt}"
        try:
            func.func(*head, stderr_path, wd, attempt_env, **func.keywords)
            return
        except Exception:
            if attempt == attempts - 1:
                raise
            log.warning("resident task attempt %d failed; trying again", attempt)
            try:
                os.replace(stderr_path, f"{stderr_path}.attempt-{attempt}")
            except OSError:
                pass

