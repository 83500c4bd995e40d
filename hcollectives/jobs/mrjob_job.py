"""mrjob front end: `MRCollectiveJob`, `AllReduce`, `AllGather`.

An existing MRJob changes its base class and declares a collective; its
mapper stays as it was. In the driver, ``run()``/``iterate()`` loop over
iterations (one map-only job each); in a map task, the mapper's (key, value)
pairs are validated and combined in the task (task-level reduction), then
handed to the node daemon instead of going to Hadoop's shuffle.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from mrjob.job import MRJob
from mrjob.step import MRStep

from ..algorithms.block import Block
from ..driver.mrjob_launcher import MRJobLauncher, collective_runner_class
from ..driver.options import add_loop_arguments, check_output_path, load_initial, loop_options_from_args
from ..errors import ConfigurationError, HCollectivesError
from ..services.task import ENV_PREFIX, TaskEnv
from .collectives import AllGather, AllReduce, default_post_process
from . import resident_task
from .map_task import MapTask, run_task
from .parsed_input import parsed_input

if TYPE_CHECKING:  # the driver pulls in trio; map tasks never need it
    from ..driver.loop import LoopOptions, LoopResult

__all__ = ["AllGather", "AllReduce", "MRCollectiveJob"]


class MRCollectiveJob(MRJob):
    """Base class for iterative jobs whose map output goes to a collective."""

    COLLECTIVE: AllReduce | AllGather = AllReduce("sum")

    # -- what users override ------------------------------------------------------------

    def post_process(self, result: Any) -> np.ndarray:
        """Turn the collective's result into the next iteration's loop data.

        Runs once per node (and once in the driver) after each collective;
        inside it, `loop_data()` returns the loop data the finished iteration
        started from (e.g. to keep the centroid of an empty cluster)."""
        return default_post_process(self.COLLECTIVE, result)

    def converged(self, previous: np.ndarray, current: np.ndarray) -> bool:
        return False

    #: Optional loop-invariant parsing: define ``parse_input(self, line)`` returning
    #: one row of numbers (or None to skip the line), and ``mapper(self, _, row)``
    #: then receives that row instead of the line. Each machine parses a split
    #: once; later iterations' tasks memory-map the parsed rows (read-only)
    #: instead of parsing again (``--no-input-cache`` turns that off).
    parse_input: Callable[[str], Any] | None = None

    #: Optional vectorised mapper for jobs with ``parse_input``: define
    #: ``mapper_block(self, rows)``; it receives the task's whole split as one
    #: read-only 2-D float64 array (the cached rows themselves, never copied per
    #: iteration) and yields (key, value) pairs exactly as ``mapper`` does, so a
    #: numpy expression over the block replaces a Python call per record (what
    #: Spark's mapPartitions buys). mapper_init / mapper_final still run around it.
    mapper_block: Callable[[np.ndarray], Any] | None = None

    #: Run the whole loop as one map-only job whose tasks stay alive across
    #: iterations (same as ``--resident``); see driver/resident.py.
    RESIDENT: bool = False

    # -- options ---------------------------------------------------------------------------

    def configure_args(self) -> None:
        super().configure_args()
        # Driver-only options: added to the parser directly, so mrjob does not
        # pass them to tasks (tasks get what they need through the environment).
        group = self.arg_parser.add_argument_group("hcollectives")
        add_loop_arguments(group)
        group.add_argument("--resident", action="store_true", default=None,
                           help="run the whole loop as one map-only job whose tasks stay alive across "
                                "iterations (also: RESIDENT = True on the class); needs a slot for every map task")
        group.add_argument("--resident-start-timeout", type=float, default=300.0,
                           help="resident mode: fail if not every map task runs within this many seconds")

    def loop_options(self) -> "LoopOptions":
        o = self.options
        return loop_options_from_args(o, self.COLLECTIVE, runner=o.runner or "inline", progress=not o.quiet,
                                      hadoop_tmp_dir=getattr(o, "hadoop_tmp_dir", None))

    # -- driver ---------------------------------------------------------------------------------

    def iterate(self) -> "LoopResult":
        """Run every iteration; returns the final loop data, the count, converged, timings."""
        from ..driver.loop import IterativeDriver

        if self.mapper_block is not None and self.parse_input is None:  # say so before any job starts
            raise ConfigurationError(f"{type(self).__name__} defines mapper_block() but no parse_input(): "
                                     "mapper_block receives parsed rows")
        initial = load_initial(self.options.initial)
        kwargs = dict(post_process=self._hc_post_process, converged=self.converged, initial=initial,
                      stream=sys.stderr)
        if self._hc_resident():
            from ..driver.resident import ResidentDriver

            self._hc_check_resident_slots()
            driver: IterativeDriver = ResidentDriver(self.loop_options(), MRJobLauncher(self),
                                                     start_timeout=self.options.resident_start_timeout, **kwargs)
        else:
            driver = IterativeDriver(self.loop_options(), MRJobLauncher(self), **kwargs)
        return driver.run()

    def _hc_resident(self) -> bool:
        """Resident mode asked for (--resident or RESIDENT = True) and possible on this runner."""
        if not (self.options.resident or self.RESIDENT):
            return False
        runner = self.options.runner or "inline"
        if runner == "inline":
            # mrjob's inline runner runs tasks one after another in this process:
            # they can never all be alive at once.
            print("hcollectives: --resident needs every map task running at once, and -r inline runs them "
                  "one by one: running one job per iteration instead (use -r local)", file=sys.stderr)
            return False
        return True

    def _hc_check_resident_slots(self) -> None:
        """On YARN, fail now if the cluster cannot run every task at once (hadoop/yarn_slots.py)."""
        if self.options.runner != "hadoop":
            return
        from ..hadoop import yarn_slots
        from ..hadoop.mrjob_hdfs import count_input_files

        kwargs = self._runner_kwargs()
        tasks = count_input_files(list(self.options.args), kwargs.get("hadoop_bin"))  # globs expanded
        yarn_slots.check_resident_slots(jobconf=dict(kwargs.get("jobconf") or {}), min_tasks=tasks)

    def run_job(self) -> None:
        self.set_up_logging(quiet=self.options.quiet, verbose=self.options.verbose)
        try:
            check_output_path(self.options.result)  # before iteration 1, not after the last
            outcome = self.iterate()
        except HCollectivesError as exc:
            print(f"hcollectives: error: {exc}", file=sys.stderr)
            sys.exit(getattr(exc, "exit_code", 1))  # 128 + signal after RunInterrupted
        if self.options.result:
            np.save(self.options.result, outcome.loop_data, allow_pickle=False)
        if not self.options.quiet:
            print(outcome.summary(self.options.result), file=sys.stderr)

    def _runner_class(self):
        cls = collective_runner_class(self.options.runner or "inline")
        if getattr(self, "options", None) is not None and self._hc_resident_quiet():
            from ..driver.resident import resident_runner_class

            cls = resident_runner_class(cls)
        return cls

    def _hc_resident_quiet(self) -> bool:
        return bool(getattr(self.options, "resident", None) or self.RESIDENT) and (self.options.runner or "inline") != "inline"

    # -- task side ------------------------------------------------------------------------------

    def steps(self) -> list[MRStep]:
        return [MRStep(mapper_init=self._hc_mapper_init, mapper=self._hc_mapper,
                       mapper_final=self._hc_mapper_final)]

    def loop_data(self) -> np.ndarray:
        """This iteration's loop data (--initial, or the last post_process result).

        In a speculatively scheduled task this waits until the previous
        iteration's collective is done."""
        previous = getattr(self, "_hc_previous", None)
        if previous is not None:  # called from post_process
            return previous
        task = getattr(self, "_hc_task", None)
        if task is None:
            raise ConfigurationError("loop_data() is only available inside a map task run by hcollectives")
        if self._hc_loop_data is None:
            self._hc_loop_data = task.client.loop_data(self._hc_lease)
            self._hc_times["loop_data"] = time.time()
        return self._hc_loop_data

    def _hc_post_process(self, result: Block, previous: np.ndarray) -> np.ndarray:
        self._hc_previous = previous
        try:
            return np.asarray(self.post_process(self.COLLECTIVE.result(result)))
        finally:
            self._hc_previous = None

    def _hc_lease(self, result: Block, previous: np.ndarray) -> tuple[np.ndarray, bool]:
        started = time.perf_counter()
        current = self._hc_post_process(result, previous)
        self._hc_times["post_process_s"] = time.perf_counter() - started
        return current, bool(self.converged(previous, current))

    def run_mapper(self, step_num: int = 0) -> None:
        if ENV_PREFIX + "SESSION" not in os.environ:
            raise ConfigurationError("MRCollectiveJob tasks must be started by an hcollectives driver "
                                     "(run the job script itself, e.g. `python job.py -r local ...`)")
        if self.mapper_block is not None and self.parse_input is None:
            raise ConfigurationError(f"{type(self).__name__} defines mapper_block() but no parse_input(): "
                                     "mapper_block receives parsed rows")
        env = TaskEnv.from_environ()
        self._hc_task = MapTask(env, self.COLLECTIVE)
        self._hc_loop_data = None
        self._hc_times: dict[str, float] = {}  # this iteration's phases (the resident breakdown)
        if resident_task.is_resident():
            run_task(self._hc_task, lambda: self._hc_run_resident(step_num))
        elif self.parse_input is None:
            run_task(self._hc_task, lambda: super(MRCollectiveJob, self).run_mapper(step_num))
        else:
            run_task(self._hc_task, lambda: self._hc_run_parsed_mapper(step_num))

    def _hc_run_parsed_mapper(self, step_num: int) -> None:
        """run_mapper for jobs with parse_input: the mapper sees parsed rows, cached per machine."""
        read, _ = self.pick_protocols(step_num, "mapper")
        rows = parsed_input(self, self._hc_task.env, read)
        if self.mapper_block is not None:
            self.run_block(rows)
            return
        for _ in self.map_pairs(((None, row) for row in rows), step_num=step_num):
            pass  # a collective's mapper writes nothing to Hadoop

    def _hc_run_resident(self, step_num: int) -> None:
        """run_mapper of a resident task: read (and parse) the split once, then map it every iteration."""
        if self.parse_input is not None:
            read, _ = self.pick_protocols(step_num, "mapper")
            rows = parsed_input(self, self._hc_task.env, read)
            if self.mapper_block is not None:
                body = lambda: self.run_block(rows)  # noqa: E731
            else:
                body = lambda: self._hc_drain(self.map_pairs(((None, row) for row in rows), step_num=step_num))  # noqa: E731
        else:
            read_lines, _ = self._wrap_protocols(step_num, "mapper")
            records = list(read_lines())  # the split's records, decoded once and kept
            body = lambda: self._hc_drain(self.map_pairs(iter(records), step_num=step_num))  # noqa: E731
        resident_task.run_resident(self, self._hc_task, body)

    @staticmethod
    def _hc_drain(pairs) -> None:
        for _ in pairs:
            pass  # a collective's mapper writes nothing to Hadoop

    def run_block(self, rows: np.ndarray) -> None:
        """One iteration of a block mapper: mapper_init, mapper_block(rows), mapper_final."""
        from ..launch import task_trace

        # Traced like a record mapper's map_pairs (launch/task_trace.py), which this
        # path does not call; a resident task traces its own phases instead.
        trace = task_trace.tracing() and not resident_task.is_resident()
        if trace:
            task_trace.note("kind", "map")
            task_trace.note("iteration", self._hc_task.env.iteration)
            task_trace.note("body", time.time())
            task_trace.note("reading", 0.0)
        self._hc_mapper_init()
        ready = time.time()
        task = self._hc_task
        task.records += len(rows)
        if len(rows):  # an empty split has no row width to show; a record mapper would not run either
            task.collect_all(self.mapper_block(rows), f"mapper_block over {len(rows)} row(s)")
        if trace:  # loop data asked for inside mapper_block: the mapping starts once it is there
            task_trace.note("ready", max(ready, self._hc_times.get("loop_data", ready)))
            task_trace.note("records", time.time())
        self._hc_mapper_final()
        if trace:
            task_trace.note("end", time.time())

    def _hc_mapper_init(self):
        user = _user_method(self, "mapper_init")
        return self._hc_task.collect_all(user() if user else None, "mapper_init")

    def _hc_mapper(self, key, value):
        user = _user_method(self, "mapper")
        if user is None:
            raise ConfigurationError(f"{type(self).__name__} defines no mapper()")
        task = self._hc_task
        task.records += 1
        return task.collect_all(user(key, value), f"input record {task.records}", value)

    def _hc_mapper_final(self):
        user = _user_method(self, "mapper_final")
        out = self._hc_task.collect_all(user() if user else None, "mapper_final")
        self._hc_times["mapped"] = time.time()
        self._hc_task.finish()
        return out


def _user_method(job: MRJob, name: str) -> Callable | None:
    """The job's own override of an MRJob hook, or None if it has none."""
    if getattr(type(job), name) is getattr(MRJob, name):
        return None
    return getattr(job, name)
