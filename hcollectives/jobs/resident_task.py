"""A resident map task: one task attempt runs every iteration of the loop.

With ``--resident`` (``RESIDENT = True``) the driver submits one map-only job
for the whole loop (driver/resident.py). Each task reads and parses its split
once, keeps the rows in memory, and loops

    loop data of i -> map the rows -> contribute to i's collective -> i + 1

until the daemon answers "stop" (converged, --max-iterations reached, or the
run failed). Per iteration it reports to Hadoop on stderr (streaming's
``reporter:status:`` and ``reporter:counter:`` lines), since Hadoop kills a
task that says nothing for ``mapreduce.task.timeout``.

A retried attempt (Hadoop's, or the local runner's in driver/resident.py)
does not start over at the job's first iteration: it reads the last finished
iteration from the store (``run_state.json``, written by the driver after
every iteration) and rejoins at the next one, taking that iteration's loop
data from its node's cache. If the attempt it replaces had already
contributed to that iteration, the coordinator's per-task claim rejects the
duplicate: each task counts exactly once.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..algorithms.reduction import Accumulator
from ..launch.resident_env import LAST_ENV, STORE_ENV, attempt_number, is_resident  # noqa: F401 -- re-exported
from ..protocol import messages as m
from ..services.task import IterationFinished, IterationStopped, TaskEnv
from .map_task import MapTask

if TYPE_CHECKING:
    from .mrjob_job import MRCollectiveJob

def rejoin_iteration(env: TaskEnv, environ=os.environ) -> int:
    """Where this attempt starts: the job's first iteration, or for a retried
    attempt, the one after the last iteration the driver finished."""
    if attempt_number(env.attempt) == 0 or not environ.get(STORE_ENV):
        return env.iteration
    from .. import store as st

    store = st.Store(environ[STORE_ENV])
    if not store.exists(st.run_state_path()):
        return env.iteration
    state = store.load_json(st.run_state_path())
    return max(env.iteration, int(state.get("iteration", 0)) + 1)


def report(line: str) -> None:
    """A Hadoop streaming status/counter line (stderr, where Hadoop and mrjob look)."""
    print(line, file=sys.stderr, flush=True)


def run_resident(job: "MRCollectiveJob", task: MapTask, iteration_body: Callable[[], None],
                 environ=os.environ) -> int:
    """Run *iteration_body* (mapper_init, map the kept rows, mapper_final) once per
    iteration until the loop stops; returns the number of iterations this attempt ran."""
    from ..launch import task_trace

    first = rejoin_iteration(task.env, environ)
    last = int(environ.get(LAST_ENV) or 0) or None
    client = task.client
    announced = task.env.iteration  # client.start() sent TaskStarted for it with the connection
    done = 0
    i = first
    # Each iteration's phases, for the resident breakdown (bench/breakdown.py); only
    # kept when this process is traced, so memory stays flat over any number of iterations.
    phases: list[dict[str, float]] = []
    if task_trace.tracing():
        task_trace.note("kind", "resident")
        task_trace.note("resident", phases)
    else:
        phases = _Discard()
    while last is None or i <= last:
        env = dataclasses.replace(task.env, iteration=i)
        task.env = client.env = env
        task.acc = Accumulator(task.collective.op if task.collective.name == "allreduce" else None)
        if i != announced:
            # The first TaskStarted went out with the connection; later ones let the
            # coordinator count this task as started in i (as a fresh task would be).
            client._send(m.TaskStarted(env.session, i, env.task, env.attempt, env.num_tasks, env.node,
                                       env.coordinator))
        job._hc_loop_data = None
        job._hc_times = times = {"start": time.time()}
        task.reduce_s = 0.0
        # Only a task that exits after this contribution needs it in the store before
        # the ack (m.Contribute); the others save an HDFS write per iteration (0.5 s
        # of a 0.55 s iteration on the mini-cluster).
        task.exits_after_contributing = last is not None and i >= last
        try:
            iteration_body()
        except IterationFinished:
            if done:  # a later attempt of ours counted instead: nothing left for this one
                break
            # A retried attempt rejoins where the driver last saved its state, which
            # can be iterations behind the tasks (the driver saves only the newest
            # state it has, and HDFS writes are slow): go on to the next one.
            i += 1
            continue
        except IterationStopped:
            break
        times.update(i=i, contributed=time.time(), reduce_s=task.reduce_s)
        phases.append(times)
        done += 1
        report(f"reporter:status:hcollectives: iteration {i} contributed")
        report("reporter:counter:hcollectives,iterations,1")
        i += 1
    return done



class _Discard(list):
    """A list that keeps nothing (phases of an untraced task)."""

    def append(self, item: object) -> None:
        pass
