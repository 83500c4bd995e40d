"""driver/loop.py with a scripted launcher (no tasks): what the driver does with jobs."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from hcollectives import JobFailed
from hcollectives.driver.loop import IterativeDriver, LoopOptions

WAIT = 30.0  # a bug shows as a failure after this, never as a hang


class DoomedLauncher:
    """Iteration 1's job: every map gets its container (YARN says so), then the job
    fails. Iteration 2's job, submitted speculatively, runs until it is abandoned."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.abandoned: list[int] = []
        self._abandon = threading.Event()

    def run_iteration(self, iteration, env, report) -> None:
        self.started.append(iteration)
        if iteration == 1:
            report.all_tasks_scheduled()
            time.sleep(0.5)  # iteration 2 is submitted meanwhile
            raise RuntimeError("every task of iteration 1 failed")
        if not self._abandon.wait(WAIT):
            raise AssertionError(f"iteration {iteration}'s job was never abandoned")
        raise RuntimeError(f"iteration {iteration}'s job was killed")

    def abandon(self, iteration: int) -> None:
        self.abandoned.append(iteration)
        self._abandon.set()


def test_a_doomed_run_abandons_the_speculatively_submitted_job(tmp_path):
    launcher = DoomedLauncher()
    options = LoopOptions(collective="allreduce", op="sum", max_iterations=3, speculative=True,
                          checkpoint_uri=f"file://{tmp_path}/store", progress=False)
    driver = IterativeDriver(options, launcher, post_process=lambda result, previous: previous,
                             converged=lambda a, b: False, initial=np.zeros(2))
    t0 = time.monotonic()
    with pytest.raises(JobFailed, match="every task of iteration 1 failed"):
        driver.run()
    assert launcher.started == [1, 2]
    assert launcher.abandoned == [2]  # the failed job itself had already ended
    assert time.monotonic() - t0 < WAIT / 2
