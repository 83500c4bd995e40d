"""On real Hadoop: YARN (2 NodeManagers) + HDFS from the project's mini-cluster.

Starts the cluster once for the module (`make minicluster`; the first start
downloads Hadoop 3.5.0 from Maven Central) and stops it at the end. Under CI
(CI=true) a missing Java or Maven is a failure, never a skip.
"""

import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, kmeans_reference
from hcollectives.frontends import datagen

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]


def _need_tools() -> None:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        message = f"the Hadoop tests need {', '.join(missing)} on PATH"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def cluster_env():
    _need_tools()
    start = subprocess.run(["make", "minicluster"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert start.returncode == 0, f"make minicluster failed:\n{start.stdout[-3000:]}\n{start.stderr[-3000:]}"
    try:
        dump = subprocess.run(["bash", "-c", ". .minicluster/env.sh && env -0"], cwd=ROOT,
                              capture_output=True, timeout=60, check=True).stdout
        env = dict(item.split("=", 1) for item in dump.decode().split("\0") if "=" in item)
        yield env
    finally:
        subprocess.run(["make", "minicluster-stop"], cwd=ROOT, capture_output=True, timeout=300)


def test_kmeans_on_yarn_with_hdfs_checkpoints_and_a_lost_broadcast(cluster_env, tmp_path):
    data = datagen.kmeans(str(tmp_path), points=600, dims=3, clusters=3, splits=4, seed=2)
    fs = cluster_env["MINICLUSTER_FS_DEFAULT"]
    store = f"{fs}/hc-test-{tmp_path.name}"
    result = tmp_path / "centroids.npy"
    # Every non-root node loses iteration 2's result over TCP and must read it from HDFS.
    # 2 GiB map containers on 4 GiB NodeManagers: at most two maps fit on one, so
    # four maps always use both NodeManagers, i.e. two nodes and two daemons.
    cmd = [sys.executable, str(ROOT / "examples" / "kmeans.py"), *shlex.split(cluster_env["MRJOB_HADOOP_ARGS"]),
           "--no-conf", "--jobconf", "mapreduce.map.memory.mb=2048",
           "--cmdenv", "HCOLLECTIVES_FAULTS=drop:result:*:2", "--checkpoint-uri", store,
           "--fallback-timeout", "2", "--initial", data.initial, "--max-iterations", "2", "--tolerance", "0",
           "--result", str(result), *data.inputs]
    done = subprocess.run(cmd, env=cluster_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-5000:]
    expected = kmeans_reference(datagen.load_points(data.inputs), np.load(data.initial), 2)
    np.testing.assert_allclose(np.load(result), expected, rtol=0, atol=1e-9)
    # Two NodeManagers on one host are two nodes, so there is a child to lose the result ...
    assert "1 store fallback(s):" in done.stderr and "read it from the store" in done.stderr, done.stderr[-3000:]
    # ... and every task's contribution was checkpointed on HDFS. Listed with the
    # cluster's own `hadoop fs`, in a child process: loading hdfs-native (and its
    # Rust runtime threads) into this process would make later fork()s unsafe
    # (mrjob's local runner forks its worker pool).
    listing = subprocess.run(["hadoop", "fs", "-ls", "-R", f"{store}/sessions"], env=cluster_env,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr[-2000:]
    files = [line.split()[-1] for line in listing.stdout.splitlines() if line.startswith("-")]
    for iteration in (1, 2):
        pieces = [f for f in files if f"/iter-{iteration:06d}/tasks/" in f and f.endswith(".npz")]
        assert len(pieces) == 4, files
