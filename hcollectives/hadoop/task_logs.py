"""The failed task's own error, read from its container's stderr on the NodeManagers.

mrjob 0.7.4 finds a failed task's stderr only through the job-history file,
and its pattern for that file's name expects the user ``hadoop``; for anyone
else it falls back to the streaming jar's Java exception
("PipeMapRed.waitOutputThreads(): subprocess failed with code 1"), whose last
line is a Java stack frame. The task's Python exception is in the stderr of
its container, which the NodeManager keeps under its log dirs
(``yarn.nodemanager.log-dirs``, ``<dir>/<application>/<container>/stderr``)
or, with log aggregation, hands out through ``yarn logs`` once the
NodeManagers have uploaded them, seconds after the application ended.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import hadoop_conf, yarn_watch

log = logging.getLogger(__name__)

# Reading stops here per file: a task may write megabytes to stderr, and the
# exception is at the end.
TAIL_BYTES = 64 * 1024
MAX_FILES = 200  # containers of one application looked at, at most
YARN_LOGS_TIMEOUT = 60.0
# With log aggregation, `yarn logs` right after a failed application ends finds
# nothing yet: wait (bounded) until the ResourceManager says the upload is over.
AGGREGATION_WAIT = 90.0
RETRY_PAUSE = 3.0
_AGGREGATING = {"NOT_START", "RUNNING", "RUNNING_WITH_FAILURE"}

# Modules the tasks' Python must have: their absence means python_bin names the wrong Python.
_NEEDED = ("numpy", "mrjob", "hcollectives", "trio", "msgpack")
_JAVA_FRAME = re.compile(r"^\s*at [\w$.<>]+\(.*\)\s*$")


@dataclass(frozen=True, slots=True)
class TaskError:
    exception: str  # the exception's own line, e.g. "RuntimeError: boom"
    where: str | None  # the innermost frame, e.g. 'boom.py, line 7, in mapper'
    container: str  # the container whose stderr said so
    attempts: int  # how many failed containers said the same

    def describe(self) -> str:
        text = self.exception
        if self.where:
            text += f" (at {self.where})"
        if self.attempts > 1:
            text += f"; the same in {self.attempts} task attempts"
        return text + missing_module_advice(self.exception)


def missing_module_advice(exception: str) -> str:
    """One line of advice when the tasks' Python lacks what hcollectives needs."""
    match = re.search(r"No module named '([\w.]+)'", exception)
    if match and match.group(1).split(".")[0] in _NEEDED:
        return ("\n  hint: the tasks' Python has no " + match.group(1).split(".")[0] + ": mrjob's python_bin "
                "(in the cluster's mrjob.conf, or --python-bin) must name a Python with hcollectives "
                "installed, on every node (README: Requirements on every node)")
    return ""


def python_error(stderr: str) -> tuple[str, str | None] | None:
    """(exception line, innermost frame) of the last Python traceback in *stderr*, or None."""
    start = stderr.rfind("Traceback (most recent call last):")
    if start < 0:
        return None
    lines = stderr[start:].splitlines()[1:]
    where = None
    for i, line in enumerate(lines):
        frame = re.match(r'\s+File "([^"]+)", line (\d+), in (.+)$', line)
        if frame:
            where = f"{os.path.basename(frame.group(1))}, line {frame.group(2)}, in {frame.group(3)}"
            continue
        if line and not line[0].isspace() and not _JAVA_FRAME.match(line):
            # The exception's line; a chained one continues to the next "Traceback".
            return line.strip()[:1000], where
    return None


def container_stderrs(application: str, log_dirs: Iterable[str]) -> list[str]:
    """stderr files of *application*'s task containers (not its ApplicationMaster's)."""
    found: list[str] = []
    for directory in dict.fromkeys(d for d in log_dirs if d):  # in order, once each
        for pattern in (f"{directory}/{application}/container_*/stderr",
                        f"{directory}/userlogs/{application}/container_*/stderr"):
            found += glob.glob(pattern)
    # The ApplicationMaster is container 1 of each of its attempts.
    tasks = [p for p in dict.fromkeys(found) if not re.search(r"_\d+_000001/stderr$", p)]
    return sorted(tasks)[:MAX_FILES]


def node_log_dirs(extra: Iterable[str] = (), env: Mapping[str, str] = os.environ) -> list[str]:
    """Where NodeManagers on this machine keep container logs, as far as the client can tell."""
    dirs = [*extra, env.get("HADOOP_LOG_DIR", ""), env.get("YARN_LOG_DIR", "")]
    try:
        configured = hadoop_conf.conf_value("yarn-site.xml", ("yarn.nodemanager.log-dirs",), env)
    except Exception:  # noqa: BLE001 -- a broken yarn-site.xml must not hide the task's error
        configured = None
    if configured:
        dirs += [d.strip().removeprefix("file://") for d in configured.split(",")]
    return [d for d in dirs if d]


def _read_tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - TAIL_BYTES))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _summarise(errors: list[tuple[str, str | None, str]]) -> TaskError | None:
    if not errors:
        return None
    counts = Counter((exception, where) for exception, where, _ in errors)
    (exception, where), attempts = counts.most_common(1)[0]
    container = next(c for e, w, c in errors if (e, w) == (exception, where))
    return TaskError(exception, where, container, attempts)


def from_log_dirs(application: str, log_dirs: Iterable[str]) -> TaskError | None:
    """The failed tasks' most common Python exception in their containers' stderr."""
    errors = []
    for path in container_stderrs(application, log_dirs):
        found = python_error(_read_tail(path))
        if found:
            errors.append((*found, os.path.basename(os.path.dirname(path))))
    return _summarise(errors)


def from_yarn_logs(application: str, hadoop_bin: list[str]) -> TaskError | None:
    """The same through ``yarn logs`` (clusters with log aggregation), bounded in time."""
    command = [*hadoop_bin, "org.apache.hadoop.yarn.client.cli.LogsCLI", "-applicationId", application,
               "-log_files", "stderr"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=YARN_LOGS_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("yarn logs for %s failed: %s", application, exc)
        return None
    errors = []
    # One section per container: "Container: container_..._000002 on host:port" then its files.
    for section in re.split(r"(?m)^Container: ", done.stdout.decode(errors="replace"))[1:]:
        container = section.split(None, 1)[0]
        if container.endswith("_000001"):
            continue
        found = python_error(section)
        if found:
            errors.append((*found, container))
    return _summarise(errors)


def wait_for_log_aggregation(application: str, rm_web: str, *, timeout: float = AGGREGATION_WAIT,
                             poll: float = 1.0) -> str | None:
    """Wait until the application's logs are uploaded (or failed to be, or never will
    be), at most *timeout* s (*rm_web*: the ResourceManager's web host:port); the last
    ``logAggregationStatus`` seen, None if no answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = yarn_watch.ask(f"http://{rm_web}/ws/v1/cluster/apps/{application}")
        app = answer.get("app") if isinstance(answer, dict) else None
        status = app.get("logAggregationStatus") if isinstance(app, dict) else None
        if status not in _AGGREGATING or time.monotonic() + poll > deadline:
            return status
        time.sleep(poll)


def failed_task_error(application: str, *, log_dirs: Iterable[str] = (),
                      hadoop_bin: list[str] | None = None, rm_web: str | None = None) -> TaskError | None:
    """The failed tasks' own Python exception: from the NodeManagers' log dirs on this
    machine, else (log aggregation) from ``yarn logs`` once the ResourceManager at
    *rm_web* says the logs are uploaded; None if neither has one."""
    error = from_log_dirs(application, node_log_dirs(log_dirs))
    if error is not None or not hadoop_bin:
        return error
    deadline = time.monotonic() + AGGREGATION_WAIT
    while True:
        status = None
        if rm_web:
            status = wait_for_log_aggregation(application, rm_web, timeout=max(0.0, deadline - time.monotonic()))
        error = from_yarn_logs(application, hadoop_bin)
        # One look unless the ResourceManager says the logs were uploaded (or are being):
        # its status can say so a little before `yarn logs` sees every node's file.
        # (DISABLED, no answer, a failed upload: looking again would find nothing more.)
        looking_again = status in _AGGREGATING or status == "SUCCEEDED"
        if error is not None or not looking_again or time.monotonic() + RETRY_PAUSE > deadline:
            if error is None:
                log.info("no task exception in `yarn logs` of %s (log aggregation: %s)", application, status)
            return error
        time.sleep(RETRY_PAUSE)
