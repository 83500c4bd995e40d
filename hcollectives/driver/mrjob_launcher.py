"""Runs one iteration's map-only job with an mrjob runner.

The driver's `JobLauncher` for mrjob jobs (`MRCollectiveJob` scripts and
`hcollectives run`): builds the runner from the job's own options, adds the
session's environment, starts tasks through the fork server where that
pays, watches YARN for speculative scheduling, and turns a failed job into
a `JobFailed` that names the task's own error.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING, Any

from mrjob.job import MRJob
from mrjob.runner import _runner_class

from ..errors import JobFailed
from ..services.task import ENV_PREFIX

if TYPE_CHECKING:
    from .loop import IterationReport

__all__ = ["MRJobLauncher", "PYTHON_BIN", "collective_runner_class", "use_task_fork_server"]

#: First word of a streaming step's command that the runner replaces with mrjob's
#: python_bin (mrjob.conf or --python-bin): `hcollectives wrap` must run under
#: the Python the cluster's admin named, which has hcollectives, not the node's
#: bare python3.
PYTHON_BIN = "<python_bin>"


def use_task_fork_server(runner: str) -> bool:
    """Whether map tasks start through this machine's fork server (launch/zygote.py).

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


class MRJobLauncher:
    """Runs one iteration's map-only job with an mrjob runner."""

    def __init__(self, job: MRJob) -> None:
        self.job = job
        self._tags: dict[int, str] = {}  # iteration -> its YARN application's tag (-r hadoop)

    def run_iteration(self, iteration: int, env: dict[str, str], report: "IterationReport") -> None:
        kwargs = self.job._runner_kwargs()
        kwargs["cmdenv"] = dict(kwargs.get("cmdenv") or {}, **env)
        shipped = getattr(report, "session_secret_file", None)
        if shipped:  # the secret reaches tasks as a private file, never in the job's configuration
            path, name = shipped
            kwargs["upload_files"] = [*(kwargs.get("upload_files") or []), f"{path}#{name}"]
        if not kwargs.get("cleanup_on_failure") and os.environ.get("HCOLLECTIVES_KEEP_TMP") != "1":
            # mrjob keeps a failed job's temp files by default; on a cluster they
            # include the uploaded session-secret file (HDFS), so they go too.
            kwargs["cleanup_on_failure"] = ["TMP"]
        if not kwargs.get("local_tmp_dir") and hasattr(report, "local_tmp_dir"):
            # Inside the driver's temp dir: removed with it, also when the job
            # failed (mrjob keeps those) or the driver was interrupted.
            kwargs["local_tmp_dir"] = report.local_tmp_dir
        if not kwargs.get("task_python_bin") and use_task_fork_server(self.job.options.runner or "inline"):
            kwargs["task_python_bin"] = [sys.executable, "-m", "hcollectives.launch.task_stub"]
        watcher = None
        if self.job.options.runner == "hadoop":
            watcher, kwargs["jobconf"], self._tags[iteration] = _watch_maps(kwargs.get("jobconf"), env, report)
        runner = self.job._runner_class()(**kwargs)
        runner.hc_report = report
        with runner:
            try:
                runner.run()
            except Exception as exc:
                cause = getattr(runner, "hc_cause", None)
                if not cause:
                    raise JobFailed(_without_command(exc)) from exc
                raise JobFailed(f"{_without_command(exc)}\n  probable cause, from the failed task's stderr: "
                                f"{cause}") from exc
            finally:
                if watcher is not None:
                    watcher.stop()

    def abandon(self, iteration: int) -> None:
        """The run failed: kill this iteration's job if it still runs (YARN only; on
        local runners the driver ends the session's processes itself)."""
        tag = self._tags.get(iteration)
        if tag is not None:
            _abandon_on_yarn(tag)


def _abandon_on_yarn(tag: str) -> None:
    from ..hadoop import hadoop_conf, yarn_watch

    rm_web = hadoop_conf.resource_manager_web()
    if rm_web:
        killed = yarn_watch.kill_application(rm_web, tag)
        if killed:
            print(f"hcollectives: killed {killed}: the run has failed", file=sys.stderr)


def _watch_maps(jobconf: dict | None, env: dict[str, str], report: "IterationReport"):
    """Tag the iteration's YARN application and watch it until every map has its
    container, so speculative scheduling can go ahead before the tasks start (yarn_watch.py)."""
    from ..hadoop import hadoop_conf
    from ..hadoop import yarn_watch

    tag = yarn_watch.application_tag(env[ENV_PREFIX + "SESSION"], int(env[ENV_PREFIX + "ITERATION"]))
    tags = ",".join(filter(None, [(jobconf or {}).get("mapreduce.job.tags"), tag]))
    jobconf = dict(jobconf or {}, **{"mapreduce.job.tags": tags})
    rm_web = hadoop_conf.resource_manager_web()
    if not rm_web:
        return None, jobconf, tag
    watcher = yarn_watch.MapLaunchWatcher(rm_web, tag, report.all_tasks_scheduled)
    watcher.start()
    return watcher, jobconf, tag


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
            if alias == "hadoop":
                self.hc_cause = _hadoop_task_cause(self, log_interpretation) or self.hc_cause
            return error

        def _substep_args(self, step_num, mrc):
            args = base._substep_args(self, step_num, mrc)
            if args and args[0] == PYTHON_BIN:
                args = [*self._python_bin(), *args[1:]]
            return args

        attrs = {}
        if hasattr(base, "_substep_args"):
            attrs["_substep_args"] = _substep_args
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

    from ..hadoop.mrjob_hdfs import add_filesystems

    if runner._fs is None:
        runner._fs = CompositeFilesystem()
        # [] means "no hadoop until set_hadoop_bin()", as in mrjob's own property.
        add_filesystems(runner._fs, runner._opts["hadoop_bin"] or None)
    return runner._fs


_STREAMING_EXIT = re.compile(r"PipeMapRed\.waitOutputThreads\(\): subprocess failed with code (\d+)")


def _error_message(error: dict | None) -> str | None:
    """The exception in an mrjob error dict (what the task raised), never a Java stack frame."""
    from ..hadoop.task_logs import missing_module_advice, python_error

    for part in ("task_error", "hadoop_error", "spark_error"):
        message = ((error or {}).get(part) or {}).get("message")
        if not message:
            continue
        found = python_error(message)
        if found:
            return found[0][:500] + missing_module_advice(found[0])
        # A Java exception: its first line says what happened; the lines after it
        # ("at org.apache...(YarnChild.java:172)") only where.
        lines = [line.strip() for line in message.strip().splitlines()
                 if line.strip() and not line.strip().startswith("at ")]
        exited = _STREAMING_EXIT.search(lines[0]) if lines else None
        if exited:  # streaming's PipeMapRed only says the task's process failed, not why
            return (f"the task's process exited with code {exited.group(1)}; its own stderr was found neither "
                    "in the NodeManagers' log dirs on this machine (mrjob's hadoop_log_dirs) nor through "
                    "`yarn logs` (YARN log aggregation)")
        if lines:
            return lines[0][:500]
    return None


def _hadoop_task_cause(runner: Any, log_interpretation: dict) -> str | None:
    """The failed tasks' own Python exception from their containers' stderr (task_logs.py)."""
    from ..hadoop.hadoop_conf import resource_manager_web
    from ..hadoop.task_logs import failed_task_error

    step = (log_interpretation or {}).get("step") or {}
    application = step.get("application_id") or (step.get("job_id") or "").replace("job_", "application_", 1)
    if not application.startswith("application_"):
        return None
    try:
        hadoop_bin = runner.get_hadoop_bin()
    except Exception:  # noqa: BLE001 -- then only the log dirs on this machine are read
        hadoop_bin = None
    try:
        found = failed_task_error(application, log_dirs=runner._opts.get("hadoop_log_dirs") or (),
                                  hadoop_bin=hadoop_bin, rm_web=resource_manager_web())
    except Exception:  # noqa: BLE001 -- looking for the cause must never hide the failure itself
        return None
    return found.describe() if found else None


def _without_command(exc: BaseException) -> str:
    """mrjob's message, without the `hadoop jar` command line it quotes: long, and it
    carries every -cmdenv value, the session secret included."""
    return re.sub(r"Command '\[.*?\]'", "`hadoop jar ...`", str(exc), flags=re.S)


def _task_stderr_cause(runner: Any, ex: BaseException) -> str | None:
    from mrjob.logs.task import _parse_task_stderr

    if not all(hasattr(ex, a) for a in ("task_type", "step_num", "task_num")):
        return None
    try:
        with open(runner._task_stderr_path(ex.task_type, ex.step_num, ex.task_num)) as stderr:
            return _error_message({"task_error": _parse_task_stderr(stderr)})
    except OSError:
        return None
