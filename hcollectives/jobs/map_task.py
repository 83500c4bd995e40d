"""One map task's side of a collective, shared by the mrjob and streaming front ends.

Records are validated and combined inside the task (the paper's task-level
reduction), so what crosses the wire is one block per task, however many
records the mapper emitted.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from ..algorithms.reduction import Accumulator, to_vector
from ..errors import BadMapperOutput, CommandFailed, HCollectivesError
from ..services.task import IterationStopped, TaskClient, TaskEnv


class Collective(Protocol):
    name: str
    op: str
    allow_nonfinite: bool


class MapTask:
    """A map task's accumulator, record count and daemon client."""

    def __init__(self, env: TaskEnv, collective: Collective) -> None:
        self.env = env
        self.collective = collective
        self.client = TaskClient(env)
        self.acc = Accumulator(collective.op if collective.name == "allreduce" else None)
        self.records = 0
        self.reduce_s = 0.0  # seconds in add(): the task-level reduction (the resident breakdown shows it)
        self.exits_after_contributing = True  # False for a resident task before its last iteration

    def collect_all(self, pairs: Iterable | None, origin: str, source: Any = None) -> tuple:
        for key, value in pairs or ():
            self.add(key, value, origin, source)
        return ()  # nothing goes to Hadoop's own output

    def add(self, key: Any, value: Any, origin: str, source: Any = None) -> None:
        """Add one emitted pair; *origin*/*source* only serve the error message."""
        started = time.perf_counter()
        try:
            self.acc.add(key, to_vector(value, allow_nonfinite=self.collective.allow_nonfinite))
        except BadMapperOutput as exc:
            where = origin if source is None else f"{origin} ({source!r:.120})"
            raise type(exc)(f"{self.env.describe()}: {where} emitted ({key!r:.60}, {value!r:.120}): {exc}") from None
        finally:
            self.reduce_s += time.perf_counter() - started

    def finish(self) -> bool:
        """Hand the task's block to the daemon; True if this attempt counts."""
        return self.client.contribute(self.acc.block(), durable=self.exits_after_contributing)


def run_task(task: MapTask, body: Callable[[], None]) -> None:
    """Run a task's body with the session's rules for how tasks end.

    Bad mapper output, and a streaming command that cannot be started, are
    deterministic (a retry would fail the same way), so they are reported to
    the coordinator, which aborts the whole run at once. A task
    told that the loop converged before its iteration exits 0 with no output.
    Any other failure propagates: Hadoop retries the attempt, as it would
    without hcollectives.
    """
    try:
        task.client.start()
        body()
    except IterationStopped:
        pass
    except (BadMapperOutput, CommandFailed) as exc:
        try:
            task.client.fail(str(exc))
        except HCollectivesError:
            pass
        what = "bad mapper output" if isinstance(exc, BadMapperOutput) else "command failed"
        print(f"hcollectives: {what}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        task.client.close()
