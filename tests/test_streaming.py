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
