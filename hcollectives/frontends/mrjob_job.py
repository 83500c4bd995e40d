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
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from mrjob.job import MRJob
from mrjob.runner import _runner_class
from mrjob.step import MRStep

from ..algorithms.block import Block
from ..errors import BadInputRecord, ConfigurationError, HCollectivesError, JobFailed
from ..services.task import ENV_PREFIX, TaskEnv
from .collectives import AllGather, AllReduce, default_post_process
from .map_task import MapTask, run_task
from .options import add_loop_arguments, load_initial, loop_options_from_args

if TYPE_CHECKING:  # the driver pulls in trio; map tasks never need it
    from .driver import IterationReport, LoopOptions, LoopResult

__all__ = ["AllGather", "AllReduce", "MRCollectiveJob", "collective_runner_class"]


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

    # -- options ---------------------------------------------------------------------------

    def configure_args(self) -> None:
        super().configure_args()
        # Driver-only options: added to the parser directly, so mrjob does not
        # pass them to tasks (tasks get what they need through the environment).
        group = self.arg_parser.add_argument_group("hcollectives")
        add_loop_arguments(group)

    def loop_options(self) -> "LoopOptions":
        o = self.options
        return loop_options_from_args(o, self.COLLECTIVE, runner=o.runner or "inline", progress=not o.quiet,
                                      hadoop_tmp_dir=getattr(o, "hadoop_tmp_dir", None))

    # -- driver ---------------------------------------------------------------------------------

    def iterate(self) -> "LoopResult":
        """Run every iteration; returns the final loop data, the count, converged, timings."""
        from .driver import IterativeDriver

        initial = load_initial(self.options.initial)
        driver = IterativeDriver(
            self.loop_options(), _MRJobLauncher(self),
            post_process=self._hc_post_process,
            converged=self.converged, initial=initial, stream=sys.stderr)
        return driver.run()

    def run_job(self) -> None:
        self.set_up_logging(quiet=self.options.quiet, verbose=self.options.verbose)
        try:
            outcome = self.iterate()
        except HCollectivesError as exc:
            print(f"hcollectives: error: {exc}", file=sys.stderr)
            sys.exit(1)
        if self.options.result:
            np.save(self.options.result, outcome.loop_data, allow_pickle=False)
        if not self.options.quiet:
            print(outcome.summary(self.options.result), file=sys.stderr)

    def _runner_class(self):
        return collective_runner_class(self.options.runner or "inline")

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
        return self._hc_loop_data

    def _hc_post_process(self, result: Block, previous: np.ndarray) -> np.ndarray:
        self._hc_previous = previous
        try:
            return np.asarray(self.post_process(self.COLLECTIVE.result(result)))
        finally:
            self._hc_previous = None

    def _hc_lease(self, result: Block, previous: np.ndarray) -> tuple[np.ndarray, bool]:
        current = self._hc_post_process(result, previous)
        return current, bool(self.converged(previous, current))

    def run_mapper(self, step_num: int = 0) -> None:
        if ENV_PREFIX + "SESSION" not in os.environ:
            raise ConfigurationError("MRCollectiveJob tasks must be started by an hcollectives driver "
                                     "(run the job script itself, e.g. `python job.py -r local ...`)")
        env = TaskEnv.from_environ()
        self._hc_task = MapTask(env, self.COLLECTIVE)
        self._hc_loop_data = None
        if self.parse_input is None:
            run_task(self._hc_task, lambda: super(MRCollectiveJob, self).run_mapper(step_num))
        else:
            run_task(self._hc_task, lambda: self._hc_run_parsed_mapper(step_num))

    def _hc_run_parsed_mapper(self, step_num: int) -> None:
        """run_mapper for jobs with parse_input: the mapper sees parsed rows, cached per machine."""
        read, _ = self.pick_protocols(step_num, "mapper")
        rows = parsed_input(self, self._hc_task.env, read)
        for _ in self.map_pairs(((None, row) for row in rows), step_num=step_num):
            pass  # a collective's mapper writes nothing to Hadoop

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
        self._hc_task.finish()
        return out


def _user_method(job: MRJob, name: str) -> Callable | None:
    """The job's own override of an MRJob hook, or None if it has none."""
    if getattr(type(job), name) is getattr(MRJob, name):
        return None
    return getattr(job, name)


def use_task_fork_server(runner: str) -> bool:
    """Whether map tasks start through this machine's fork server (services/zygote.py).

    On by default on the local runner, where each task would otherwise spend
    most of its life importing numpy and mrjob. Opt-in (HCOLLECTIVES_ZYGOTE=1)
    on clusters: tasks forked by the server run outside their YARN container,
    so the container's memory limit and cgroup do not apply to them.
    HCOLLECTIVES_ZYGOTE=0 turns it off everywhere.
    """
    setting = os.environ.get("HCOLLECTIVES_ZYGOTE", "")
    if setting == "0":
        return False
    return runner == "local" or setting == "1"


class _MRJobLauncher:
    """Runs one iteration's map-only job with an mrjob runner."""

    def __init__(self, job: MRJob) -> None:
        self.job = job

    def run_iteration(self, iteration: int, env: dict[str, str], report: "IterationReport") -> None:
        kwargs = self.job._runner_kwargs()
        kwargs["cmdenv"] = dict(kwargs.get("cmdenv") or {}, **env)
        if not kwargs.get("task_python_bin") and use_task_fork_server(self.job.options.runner or "inline"):
            kwargs["task_python_bin"] = [sys.executable, "-m", "hcollectives.frontends.task_stub"]
        watcher = None
        if self.job.options.runner == "hadoop":
            watcher, kwargs["jobconf"] = _watch_maps(kwargs.get("jobconf"), env, report)
        runner = self.job._runner_class()(**kwargs)
        runner.hc_report = report
        with runner:
            try:
                runner.run()
            except Exception as exc:
                cause = getattr(runner, "hc_cause", None)
                if not cause:
                    raise
                raise JobFailed(f"{exc}\n  probable cause, from the failed task's stderr: {cause}") from exc
            finally:
                if watcher is not None:
                    watcher.stop()


def _watch_maps(jobconf: dict | None, env: dict[str, str], report: "IterationReport"):
    """Tag the iteration's YARN application and watch it until every map has its
    container, so speculative scheduling can go ahead before the tasks start (yarn_watch.py)."""
    from . import hadoop_conf, yarn_watch

    tag = yarn_watch.application_tag(env[ENV_PREFIX + "SESSION"], int(env[ENV_PREFIX + "ITERATION"]))
    tags = ",".join(filter(None, [(jobconf or {}).get("mapreduce.job.tags"), tag]))
    jobconf = dict(jobconf or {}, **{"mapreduce.job.tags": tags})
    rm_web = hadoop_conf.resource_manager_web()
    if not rm_web:
        return None, jobconf
    watcher = yarn_watch.MapLaunchWatcher(rm_web, tag, report.all_tasks_scheduled)
    watcher.start()
    return watcher, jobconf


_RUNNER_CLASSES: dict[str, type] = {}


def collective_runner_class(alias: str) -> type:
    """mrjob's runner class for *alias*, taught to report its map task count.

    Hadoop tells tasks the count ($mapreduce_job_maps); mrjob's simulated
    runners do not, so they report it to the coordinator themselves, which is
    what lets speculative scheduling know when every task has started.
    """
    if alias not in _RUNNER_CLASSES:
        base = _runner_class(alias)

        def _run_mappers_and_combiners(self, step_num, map_splits):
            map_splits = list(map_splits)
            report = getattr(self, "hc_report", None)
            if report is not None:
                report.num_tasks(len(map_splits))
            return base._run_mappers_and_combiners(self, step_num, map_splits)

        def _log_cause_of_error(self, ex):  # local runners: the task's stderr names the cause
            base._log_cause_of_error(self, ex)
            self.hc_cause = _task_stderr_cause(self, ex)

        def _pick_error(self, log_interpretation, step_type):  # Hadoop: from the task logs
            error = base._pick_error(self, log_interpretation, step_type)
            self.hc_cause = _error_message(error)
            return error

        attrs = {}
        if alias == "hadoop":
            attrs["fs"] = property(_native_hdfs_fs)
        if hasattr(base, "_run_mappers_and_combiners"):
            attrs["_run_mappers_and_combiners"] = _run_mappers_and_combiners
        if hasattr(base, "_log_cause_of_error"):
            attrs["_log_cause_of_error"] = _log_cause_of_error
        if hasattr(base, "_pick_error"):
            attrs["_pick_error"] = _pick_error
        _RUNNER_CLASSES[alias] = type(f"Collective{base.__name__}", (base,), attrs)
    return _RUNNER_CLASSES[alias]


def _native_hdfs_fs(runner: Any):
    """HadoopJobRunner.fs, with HDFS reached from the driver process (mrjob_hdfs.py):
    mrjob's per-job ``hadoop fs`` calls would start a Java client each, every iteration."""
    from mrjob.fs.composite import CompositeFilesystem

    from .mrjob_hdfs import add_filesystems

    if runner._fs is None:
        runner._fs = CompositeFilesystem()
        # [] means "no hadoop until set_hadoop_bin()", as in mrjob's own property.
        add_filesystems(runner._fs, runner._opts["hadoop_bin"] or None)
    return runner._fs


def _error_message(error: dict | None) -> str | None:
    """The last line of the exception in an mrjob error dict (what the task raised)."""
    for part in ("task_error", "hadoop_error", "spark_error"):
        message = ((error or {}).get(part) or {}).get("message")
        if message:
            lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
            return lines[-1][:500] if lines else None
    return None


def _task_stderr_cause(runner: Any, ex: BaseException) -> str | None:
    from mrjob.logs.task import _parse_task_stderr

    if not all(hasattr(ex, a) for a in ("task_type", "step_num", "task_num")):
        return None
    try:
        with open(runner._task_stderr_path(ex.task_type, ex.step_num, ex.task_num)) as stderr:
            return _error_message({"task_error": _parse_task_stderr(stderr)})
    except OSError:
        return None


def parsed_input(job: MRCollectiveJob, env: TaskEnv, read: Callable) -> np.ndarray:
    """This task's input split as rows of numbers (one per kept line), from the cache if it can.

    The split is identified by Hadoop's (file, start, length); its content
    digest is checked too, so a changed file is parsed again.
    """
    from . import task_trace

    started = time.time()
    rows = _load_or_parse(job, env, read)
    task_trace.note("parse", [started, time.time()])
    return rows


def _load_or_parse(job: MRCollectiveJob, env: TaskEnv, read: Callable) -> np.ndarray:
    from ..services.split_cache import DIRECTORY_NAME, SplitCache, read_all

    if not env.input_cache or env.input_split == "stdin" or job.options.args:
        return _parse_lines(job, env, job._read_input(), read)
    data, content = read_all(job.stdin)
    cache = SplitCache(os.path.join(env.rundir, DIRECTORY_NAME))
    parser = _parser_identity(job)
    rows = cache.load(env.input_split, parser, content)
    if rows is None:
        lines = data.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()  # the newline that ends the last line
        rows = _parse_lines(job, env, lines, read)
        cache.save(env.input_split, parser, content, rows)
    return rows


def _parse_lines(job: MRCollectiveJob, env: TaskEnv, lines: Iterable[bytes], read: Callable) -> np.ndarray:
    rows: list[np.ndarray] = []
    for number, line in enumerate(lines, 1):
        _, value = read(line.rstrip(b"\r\n"))
        try:
            parsed = job.parse_input(value)
            if parsed is None:
                continue
            row = np.asarray(parsed, dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 -- the user's parser failed on this record: say where
            raise BadInputRecord(f"{env.describe()}: parse_input failed on input record {number} "
                                 f"({value!r:.120}): {type(exc).__name__}: {exc}") from None
        if row.ndim != 1 or (rows and len(row) != len(rows[0])):
            expected = f"{len(rows[0])} numbers like the records before it" if rows else "one row of numbers"
            raise BadInputRecord(f"{env.describe()}: parse_input returned shape {row.shape} for input record "
                                 f"{number} ({value!r:.120}); expected {expected}")
        rows.append(row)
    out = np.stack(rows) if rows else np.empty((0, 0))
    out.setflags(write=False)  # as read-only as the cached copy later iterations get
    return out


def _parser_identity(job: MRCollectiveJob) -> str:
    """Names the parsing code, so a changed parser never reads another's cache entries."""
    import hashlib
    import inspect

    cls = type(job)
    try:
        source = inspect.getsource(cls.parse_input)
    except (OSError, TypeError):
        source = ""
    return f"{cls.__module__}.{cls.__qualname__}:{hashlib.sha256(source.encode()).hexdigest()[:16]}"
