"""Resident mode on real Hadoop: the project's YARN (2 NodeManagers) + HDFS mini-cluster.

Same conventions as tests/test_hadoop.py (whose fixtures and helpers this
module uses): the cluster is started once for the module and stopped at the
end; without Java or Maven the module is skipped, under CI=true it fails.

- examples/kmeans.py (parse_input + mapper_block) with --resident: one YARN
  application for the whole loop (one `hadoop jar`), the same bits as the
  same run on -r local, numpy's answer, and the tasks' iteration counters;
- a resident task killed with SIGKILL mid-run: YARN retries the attempt, it
  rejoins at the current iteration, and the result has the same bits as an
  undisturbed run;
- a node daemon killed with SIGKILL mid-run: the driver restarts the loop
  from the last finished iteration (the run's temporary store on HDFS) with
  the undisturbed result; the same kill with one job per iteration: a
  successor daemon rejoins, and the result is the undisturbed one too;
- a resident job that cannot fit (4 maps of 4 GiB on two 4 GiB NodeManagers)
  fails before submission, naming tasks and slots.
"""

import time

import numpy as np
import pytest

from conftest import JOBS, ROOT, kmeans_reference
from hcollectives.bench import datagen
from test_hadoop import (  # noqa: F401 -- cluster_env is a fixture used by name
    ITERATION_TIMEOUT,
    SPLITS,
    cluster_env,
    hadoop_fs,
    logging_hadoop_bin,
    mrjob_hadoop_args,
    run,
    stderr_tail,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

ITERATIONS = 5  # one YARN application however many: cheap to run several


@pytest.fixture(scope="module")
def resident_data(cluster_env, tmp_path_factory):
    import uuid

    stage = tmp_path_factory.mktemp("hdfs-resident-inputs")
    kmeans = datagen.kmeans(str(stage / "kmeans"), points=2000, dims=4, clusters=4, splits=SPLITS, seed=5)
    rows = np.random.default_rng(9).normal(size=(200, 3))
    rows[:, 0] = np.arange(len(rows))
    (stage / "rows").mkdir()
    for s in range(SPLITS):
        part = rows[s * 50:(s + 1) * 50]
        (stage / "rows" / f"part-{s}.txt").write_text("\n".join(" ".join(repr(v) for v in r.tolist()) for r in part)
                                                      + "\n")
    np.save(stage / "zeros.npy", np.zeros(4))
    target = f"/hc-resident-inputs-{uuid.uuid4().hex[:8]}"
    put = hadoop_fs(cluster_env, "-put", stage, target)
    assert put.returncode == 0, put.stderr[-2000:]
    fs = cluster_env["MINICLUSTER_FS_DEFAULT"]
    return dict(kmeans=kmeans, kmeans_hdfs=f"{fs}{target}/kmeans/points-*.txt",
                rows=rows, rows_local=sorted(str(p) for p in (stage / "rows").glob("part-*.txt")),
                rows_hdfs=f"{fs}{target}/rows/part-*.txt", zeros=str(stage / "zeros.npy"))


def python(*args):
    import sys

    return [sys.executable, *map(str, args)]


def test_resident_kmeans_on_yarn_is_one_application_with_the_same_result(cluster_env, resident_data, tmp_path):
    data = resident_data["kmeans"]
    hadoop_bin, calls = logging_hadoop_bin(cluster_env, tmp_path)
    out = tmp_path / "yarn.npy"
    done = run(python(ROOT / "examples" / "kmeans.py", *mrjob_hadoop_args(cluster_env), *hadoop_bin,
                      *ITERATION_TIMEOUT, "--resident", "--initial", data.initial, "--max-iterations", ITERATIONS,
                      "--tolerance", "0", "--result", out, resident_data["kmeans_hdfs"]), cluster_env)
    assert done.returncode == 0, stderr_tail(done)
    local = tmp_path / "local.npy"
    same = run(python(ROOT / "examples" / "kmeans.py", "-r", "local", "--resident", "--initial", data.initial,
                      "--max-iterations", ITERATIONS, "--tolerance", "0", "--result", local, *data.inputs),
               cluster_env)
    assert same.returncode == 0, stderr_tail(same)
    # Two NodeManagers reduce in another order than one local node: equal to the last bits or so.
    np.testing.assert_allclose(np.load(out), np.load(local), rtol=1e-12, atol=0)
    expected = kmeans_reference(datagen.load_points(data.inputs), np.load(data.initial), ITERATIONS)
    np.testing.assert_allclose(np.load(out), expected, rtol=0, atol=1e-9)
    jars = [line for line in calls.read_text().splitlines() if line.startswith("jar ")]
    assert len(jars) == 1, calls.read_text()  # the whole loop was one YARN application
    for i in range(1, ITERATIONS + 1):
        assert f"iteration {i:4d}" in done.stderr
    # Every task reported each iteration to Hadoop (reporter:counter: lines), so its counters add up.
    assert f"iterations={ITERATIONS * SPLITS}" in done.stderr.replace(" ", ""), stderr_tail(done)


def test_killed_resident_task_on_yarn_rejoins_and_counts_once(cluster_env, resident_data, tmp_path):
    log = tmp_path / "block.log"
    script = JOBS / "block_sum.py"
    common = ["--initial", resident_data["zeros"], "--max-iterations", ITERATIONS, "--resident"]
    done = run(python(script, *mrjob_hadoop_args(cluster_env), *ITERATION_TIMEOUT, *common,
                      "--cmdenv", f"BLOCK_LOG={log}", "--die-at", "3:120", "--result", tmp_path / "yarn.npy",
                      resident_data["rows_hdfs"]), cluster_env)
    assert done.returncode == 0, stderr_tail(done)
    assert (tmp_path / "block.log.died").exists(), "the task was never killed"
    clean_env = dict(cluster_env, BLOCK_LOG=str(tmp_path / "clean.log"))
    clean = run(python(script, "-r", "local", *common, "--result", tmp_path / "local.npy",
                       *resident_data["rows_local"]), clean_env)
    assert clean.returncode == 0, stderr_tail(clean)
    # (YARN's two nodes reduce in another order than one local node; the exactly-once claims
    # are what the row count below checks: a doubled or lost task would change it.)
    np.testing.assert_allclose(np.load(tmp_path / "yarn.npy"), np.load(tmp_path / "local.npy"), rtol=1e-12, atol=0)
    rows = resident_data["rows"]
    np.testing.assert_allclose(np.load(tmp_path / "yarn.npy"), ITERATIONS * np.append(rows.sum(0), len(rows)),
                               rtol=1e-12)


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "one-job-per-iteration"])
def test_killed_daemon_on_yarn_finishes_with_the_undisturbed_result(cluster_env, resident_data, tmp_path, resident):
    """kill -9 of a node daemon mid-run (iteration 3, by a task of that node), with a bare
    -r hadoop (the run's temporary store on HDFS, no --checkpoint-uri). Resident: the driver
    restarts the loop from the last finished iteration in a new session and application.
    One job per iteration: the node's next task starts a successor daemon that rejoins the
    iteration, its lost pieces read back from the store. Either way the undisturbed result."""
    log = tmp_path / "block.log"
    script = JOBS / "block_sum.py"
    common = ["--initial", resident_data["zeros"], "--max-iterations", ITERATIONS, *(["--resident"] * resident)]
    done = run(python(script, *mrjob_hadoop_args(cluster_env), *ITERATION_TIMEOUT, *common,
                      "--cmdenv", f"BLOCK_LOG={log}", "--kill-daemon-at", "3:120", "--result", tmp_path / "yarn.npy",
                      resident_data["rows_hdfs"]), cluster_env)
    assert done.returncode == 0, stderr_tail(done)
    assert (tmp_path / "block.log.daemon-killed").exists(), "no daemon was killed"
    assert ("restarted from the last finished iteration" in done.stderr) is resident, stderr_tail(done)
    rows = resident_data["rows"]
    np.testing.assert_allclose(np.load(tmp_path / "yarn.npy"), ITERATIONS * np.append(rows.sum(0), len(rows)),
                               rtol=1e-12)


def test_resident_job_that_cannot_fit_fails_before_submission(cluster_env, resident_data, tmp_path):
    data = resident_data["kmeans"]
    hadoop_bin, calls = logging_hadoop_bin(cluster_env, tmp_path)
    t0 = time.monotonic()
    done = run(python(ROOT / "examples" / "kmeans.py", *mrjob_hadoop_args(cluster_env), *hadoop_bin,
                      "--jobconf", "mapreduce.map.memory.mb=4096", "--resident", "--initial", data.initial,
                      "--max-iterations", 2, resident_data["kmeans_hdfs"]), cluster_env, timeout=300)
    assert done.returncode not in (0, None), stderr_tail(done)
    assert time.monotonic() - t0 < 120
    assert "--resident needs every map task running at once" in done.stderr and "room for" in done.stderr, \
        stderr_tail(done)
    assert not calls.exists() or "jar " not in calls.read_text(), "a job was submitted"

