"""End to end: `hcollectives run` + `hcollectives wrap` with plain streaming mappers."""

import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import MAPPERS, kmeans_reference
from hcollectives.bench import datagen

pytestmark = pytest.mark.e2e


def hc_run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "hcollectives", "run", "-q", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_streaming_kmeans_matches_numpy(kmeans_data, tmp_path, no_orphan_daemons):
    mapper = f"{sys.executable} {MAPPERS / 'kmeans_mapper.py'}"
    result = tmp_path / "sums.npz"
    done = hc_run("--mapper", mapper, "--allreduce", "sum", "--post-process", f"{mapper} --post-process",
                  "--initial", kmeans_data.initial, "--max-iterations", "3", "--local-nodes", "2",
                  "--result", str(result), *kmeans_data.inputs)
    assert done.returncode == 0, done.stderr
    pts = datagen.load_points(kmeans_data.inputs)
    before_last = kmeans_reference(pts, np.load(kmeans_data.initial), 2)
    labels = ((pts[:, None, :] - before_last[None]) ** 2).sum(2).argmin(1)
    with np.load(result, allow_pickle=False) as sums:
        for k in range(len(before_last)):
            members = pts[labels == k]
            if len(members):
                np.testing.assert_allclose(sums[str(k)][:-1], members.sum(0), rtol=1e-12, atol=1e-9)
                assert sums[str(k)][-1] == len(members)


def test_streaming_allgather_power_iteration(tmp_path, no_orphan_daemons):
    data = datagen.power(str(tmp_path), n=40, splits=3, seed=5)
    mapper = f"{sys.executable} {MAPPERS / 'power_mapper.py'}"
    result = tmp_path / "y.npy"
    done = hc_run("--mapper", mapper, "--allgather", "--post-process", f"{mapper} --post-process",
                  "--initial", data.initial, "--max-iterations", "2", "--result", str(result), *data.inputs)
    assert done.returncode == 0, done.stderr
    a = np.concatenate([np.loadtxt(p, ndmin=2) for p in data.inputs])[:, 1:]
    x = np.load(data.initial)
    x = a @ x / np.linalg.norm(a @ x)
    np.testing.assert_allclose(np.load(result)[:, 0], a @ x, rtol=1e-12, atol=1e-9)


def test_streaming_bad_output_names_the_line(kmeans_data, tmp_path, no_orphan_daemons):
    bad = tmp_path / "bad_mapper.py"
    bad.write_text("import sys\nfor i, line in enumerate(sys.stdin):\n"
                   "    print('0\\t1 2' if i != 4 else '0\\t1 nope')\n")
    t0 = time.monotonic()
    done = hc_run("--mapper", f"{sys.executable} {bad}", "--allreduce", "sum", "--max-iterations", "2",
                  *kmeans_data.inputs)
    assert done.returncode != 0
    assert time.monotonic() - t0 < 60
    assert "mapper output line 5" in done.stderr and "'nope' is not a number" in done.stderr, done.stderr[-3000:]


def test_wrap_runs_under_mrjobs_python_bin(kmeans_data, tmp_path, no_orphan_daemons):
    """No --python-bin of ours: `hcollectives wrap` runs under mrjob's python_bin (here
    mrjob's --python-bin after `--`; on a cluster, its mrjob.conf), as every task must."""
    calls = tmp_path / "python-calls"
    python = tmp_path / "cluster-python"
    python.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    mapper = f"{sys.executable} {MAPPERS / 'kmeans_mapper.py'}"
    done = hc_run("--mapper", mapper, "--allreduce", "sum", "--initial", kmeans_data.initial,
                  "--max-iterations", "1", *kmeans_data.inputs, "--", "--python-bin", str(python))
    assert done.returncode == 0, done.stderr
    wraps = [line for line in calls.read_text().splitlines() if "-m hcollectives wrap" in line]
    assert len(wraps) == len(kmeans_data.inputs)  # one per map task


@pytest.mark.parametrize("which", ["mapper", "post-process"])
def test_a_command_that_cannot_run_stops_the_run_naming_it(kmeans_data, tmp_path, which, no_orphan_daemons):
    """Not found is deterministic: the run stops at once (no retries), naming the command and where."""
    mapper = f"{sys.executable} {MAPPERS / 'kmeans_mapper.py'}"
    missing = str(tmp_path / "no-such-mapper")
    args = (["--mapper", missing] if which == "mapper" else
            ["--mapper", mapper, "--post-process", f"{missing} --post-process"])
    t0 = time.monotonic()
    done = hc_run(*args, "--allreduce", "sum", "--initial", kmeans_data.initial, "--max-iterations", "2",
                  *kmeans_data.inputs)
    assert done.returncode != 0
    assert time.monotonic() - t0 < 60
    assert f"cannot run {which} command" in done.stderr and "no-such-mapper" in done.stderr, done.stderr
    assert "No such file or directory" in done.stderr and ("host " in done.stderr or "node " in done.stderr)
