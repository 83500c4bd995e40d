"""Streaming front end, task side: ``hcollectives wrap`` (no mrjob, no trio).

``hcollectives wrap`` runs as the Hadoop-streaming mapper. It fetches the loop
data, writes it to a ``.npy`` file named by ``$HCOLLECTIVES_LOOP_DATA``, runs
the real mapper with the task's stdin, and reads ``key<TAB>numbers`` lines
from its stdout (keys that look like integers are integers). ``hcollectives
run`` drives the iterations of such a mapper on any mrjob runner.

Post-processing (turning one iteration's result into the next loop data) is
either built in -- AllGather: the gathered matrix; AllReduce: one row per key,
keys in order -- or a command (``--post-process CMD``) that reads
``$HCOLLECTIVES_RESULT`` (.npz for AllReduce, one array per key; .npy for
AllGather) and ``$HCOLLECTIVES_LOOP_DATA`` (the previous loop data) and writes
``$HCOLLECTIVES_OUTPUT`` (.npy). It runs once per node and once in the driver.
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

from ..algorithms.block import Block
from ..errors import BadMapperOutput, CommandFailed, ConfigurationError, HCollectivesError
from ..services.task import TaskEnv
from .collectives import AllGather, AllReduce, default_post_process
from .map_task import MapTask, run_task

# A post-process command is user code on the critical path of every node; it
# gets generous time, but not forever.
POST_PROCESS_TIMEOUT = 600.0


def collective_from_args(args: argparse.Namespace) -> AllReduce | AllGather:
    if args.allgather:
        return AllGather(allow_nonfinite=args.allow_nonfinite)
    return AllReduce(args.allreduce, allow_nonfinite=args.allow_nonfinite)


def add_collective_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--allreduce", metavar="OP", choices=["sum", "min", "max", "prod"],
                       help="reduce values per key with OP across all tasks")
    which.add_argument("--allgather", action="store_true", help="gather every task's rows on every node")
    parser.add_argument("--post-process", metavar="CMD",
                        help="command turning a result into the next loop data (default: built in)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="converged when the loop data changes by less than this (max abs)")
    parser.add_argument("--allow-nonfinite", action="store_true", help="accept NaN and inf in mapper output")


@dataclass(frozen=True, slots=True)
class StreamingPostProcess:
    """The post-process and convergence rule of a streaming run (picklable data only)."""

    collective: AllReduce | AllGather
    command: str | None = None
    tolerance: float | None = None

    def __call__(self, block: Block, previous: np.ndarray) -> np.ndarray:
        if self.command is None:
            return np.asarray(default_post_process(self.collective, self.collective.result(block)))
        with tempfile.TemporaryDirectory(prefix="hcollectives-pp-") as tmp:
            result_path = os.path.join(tmp, "result.npz" if self.collective.name == "allreduce" else "result.npy")
            write_result(result_path, self.collective, block)
            previous_path, output_path = os.path.join(tmp, "previous.npy"), os.path.join(tmp, "output.npy")
            np.save(previous_path, previous, allow_pickle=False)
            env = dict(command_environ(), HCOLLECTIVES_RESULT=result_path, HCOLLECTIVES_LOOP_DATA=previous_path,
                       HCOLLECTIVES_OUTPUT=output_path)
            try:
                done = subprocess.run(shlex.split(self.command), env=env, stdin=subprocess.DEVNULL,
                                      capture_output=True, timeout=POST_PROCESS_TIMEOUT)
            except OSError as exc:  # not found, not executable: every node would fail alike
                raise CommandFailed(f"cannot run post-process command {self.command!r} on {_host()} "
                                    f"(working directory {os.getcwd()}): {exc.strerror or exc}") from None
            except subprocess.TimeoutExpired as exc:
                raise HCollectivesError(f"post-process command {self.command!r} failed: {exc}") from None
            if done.returncode != 0:
                raise HCollectivesError(f"post-process command {self.command!r} exited {done.returncode}: "
                                        f"{done.stderr.decode(errors='replace')[-2000:]}")
            try:
                return np.load(output_path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise HCollectivesError(f"post-process command {self.command!r} wrote no valid "
                                        f"$HCOLLECTIVES_OUTPUT .npy: {exc}") from None

    def converged(self, previous: np.ndarray, current: np.ndarray) -> bool:
        if self.tolerance is None or previous.shape != current.shape:
            return False
        return bool(np.max(np.abs(current - previous), initial=0.0) < self.tolerance)

    def lease(self, block: Block, previous: np.ndarray) -> tuple[np.ndarray, bool]:
        current = self(block, previous)
        return current, self.converged(previous, current)


def write_result(path: str, collective: AllReduce | AllGather, block: Block) -> None:
    """AllReduce: .npz with one array per key (named by the key); AllGather: .npy matrix."""
    if collective.name == "allreduce":
        with open(path, "wb") as f:
            np.savez(f, **{str(k): v for k, v in collective.result(block).items()})
    else:
        np.save(path, collective.result(block), allow_pickle=False)


# -- hcollectives wrap (runs inside a map task) --------------------------------------------


def parse_line(line: bytes) -> tuple[int | str, np.ndarray]:
    """``key<TAB>n1 n2 ...`` -> (key, float64 vector); BadMapperOutput says what is wrong."""
    text = line.decode("utf-8", errors="replace").rstrip("\r\n")
    key, sep, numbers = text.partition("\t")
    if not sep:
        raise BadMapperOutput("no TAB between key and numbers")
    if not key:
        raise BadMapperOutput("empty key")
    try:
        vector = np.array(numbers.split(), dtype=np.float64)
    except ValueError:
        bad = next(t for t in numbers.split() if not _is_float(t))
        raise BadMapperOutput(f"{bad!r:.40} is not a number") from None
    try:
        return int(key), vector
    except ValueError:
        return key, vector


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def wrap_main(args: argparse.Namespace) -> int:
    if not args.command:
        raise ConfigurationError("hcollectives wrap needs a mapper command after --")
    env = TaskEnv.from_environ()
    collective = collective_from_args(args)
    post = StreamingPostProcess(collective, args.post_process, args.tolerance)
    task = MapTask(env, collective)
    exit_code = 0

    def body() -> None:
        nonlocal exit_code
        data = task.client.loop_data(post.lease)
        fd, loop_path = tempfile.mkstemp(prefix="hcollectives-loop-", suffix=".npy", dir=".")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, data, allow_pickle=False)
            exit_code = _run_mapper(task, args.command, loop_path)
            if exit_code == 0:
                task.finish()
        finally:
            os.unlink(loop_path)

    run_task(task, body)
    return exit_code


def command_environ() -> dict[str, str]:
    """The environment of a streaming mapper or post-process command.

    Its ``python``/``python3`` is the Python running this wrapper (on a cluster,
    mrjob's python_bin, which has numpy and hcollectives): a task's own PATH
    under YARN rarely has a ``python`` at all, and its ``python3`` is the
    node's bare one. ``$HCOLLECTIVES_PYTHON`` names it too.
    """
    env = dict(os.environ, HCOLLECTIVES_PYTHON=sys.executable)
    here = os.path.dirname(sys.executable)
    path = env.get("PATH", "")
    if here and here not in path.split(os.pathsep):
        env["PATH"] = here + (os.pathsep + path if path else "")
    return env


def _host() -> str:
    """This task's node, as a user would look for it: YARN's NodeManager, else the host name."""
    nm = os.environ.get("NM_HOST")
    return f"node {nm}:{os.environ.get('NM_PORT', '')}" if nm else f"host {socket.gethostname()}"


def _run_mapper(task: MapTask, command: list[str], loop_path: str) -> int:
    child_env = dict(command_environ(), HCOLLECTIVES_LOOP_DATA=os.path.abspath(loop_path),
                     HCOLLECTIVES_ITERATION=str(task.env.iteration))
    try:
        proc = subprocess.Popen(command, stdin=sys.stdin.fileno(), stdout=subprocess.PIPE, env=child_env)
    except OSError as exc:  # not found, not executable: a retry would fail the same way
        raise CommandFailed(f"{task.env.describe()}: cannot run mapper command {shlex.join(command)!r} on "
                            f"{_host()} (working directory {os.getcwd()}, PATH={os.environ.get('PATH', '')}): "
                            f"{exc.strerror or exc}") from None
    try:
        for number, line in enumerate(proc.stdout, 1):
            if not line.strip():
                continue
            try:
                key, vector = parse_line(line)
            except BadMapperOutput as exc:
                raise BadMapperOutput(f"{task.env.describe()}: mapper output line {number} "
                                      f"({line[:120]!r}): {exc}") from None
            task.add(key, vector, f"mapper output line {number}", line[:120])
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
