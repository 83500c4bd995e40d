"""Fault injection (issue 12): kill -9 of a daemon, a task, a fork server and the
driver at random points; a daemon stopped for longer than --fallback-timeout;
one node's TCP cut (network namespaces); a store on a small full tmpfs; soaks.

Each trial runs examples/kmeans.py on mrjob's local runner with 2 simulated
nodes as its own process, TMPDIR pointed at a directory of the trial's (so
its processes and files are found, tests/runprobe.py), injects one fault, and
checks the outcome: the same bits as an undisturbed run (a lost daemon must
finish), or a clear error naming the fault; then nothing left behind.
Loops are bounded in count and time; the only targets are the trial's own
processes, loopback and the test's own namespaces.

`HCOLLECTIVES_FAULT_TRIALS=N` runs N trials of each kind (default 2); the
figures in docs/reliability.md come from larger N.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from runprobe import kill_all, leftover_files, pids_of, run_processes, start_driver, wait_for_iterations, wait_gone

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

TRIALS = int(os.environ.get("HCOLLECTIVES_FAULT_TRIALS", "2"))
ITERATIONS = 6
RUN_TIMEOUT = 120.0  # one trial's run; a hang fails the trial


def kmeans_args(data, result: Path, *extra: str) -> list[str]:
    return ["-r", "local", "-q", "--initial", data.initial, "--max-iterations", str(ITERATIONS),
            "--tolerance", "0", "--local-nodes", "2", "--fallback-timeout", "2", "--result", str(result),
            *extra, *data.inputs]


@pytest.fixture(scope="module")
def reference(kmeans_data, tmp_path_factory) -> np.ndarray:
    """The undisturbed run's final loop data, bit for bit."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "ref.npy"
    proc = start_driver(tmp / "tmp", kmeans_args(kmeans_data, out))
    _, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, err
    return np.load(out)


def finish(proc: subprocess.Popen, tmpdir: Path) -> tuple[int, str]:
    """Wait for the driver (a hang fails), then check nothing of the run is left."""
    try:
        _, err = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        kill_all(tmpdir)
        pytest.fail(f"hang: the run did not end within {RUN_TIMEOUT}s")
    _, left = wait_gone(tmpdir, timeout=15)
    files = leftover_files(tmpdir)
    kill_all(tmpdir)
    assert not left, f"processes left behind: {left}"
    assert files == [], f"files left behind: {files[:20]}"
    return proc.returncode, err


def trial_seeds(kind: str) -> list[int]:
    return [hash((kind, n)) % 10_000 for n in range(TRIALS)]


@pytest.mark.parametrize("seed", trial_seeds("daemon"))
def test_kill_daemon_finishes_with_the_same_bits(kmeans_data, reference, tmp_path, seed):
    rng = random.Random(seed)
    tmpdir, out = tmp_path / "tmp", tmp_path / "out.npy"
    proc = start_driver(tmpdir, kmeans_args(kmeans_data, out))
    try:
        wait_for_iterations(tmpdir, rng.randint(0, ITERATIONS - 2), timeout=60)
        time.sleep(rng.uniform(0, 0.5))
        daemons = pids_of(tmpdir, "hcollectives.services.node_main")
        if daemons:
            os.kill(rng.choice(sorted(daemons)), signal.SIGKILL)
        code, err = finish(proc, tmpdir)
    finally:
        proc.kill()
        kill_all(tmpdir)
    assert code == 0, err
    assert np.array_equal(np.load(out), reference), "a lost daemon changed the result"
