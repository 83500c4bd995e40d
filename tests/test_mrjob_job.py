"""End to end: MRCollectiveJob on mrjob's local runner (real tasks, daemons, TCP)."""

import sys
import time

import numpy as np
import pytest

from conftest import JOBS, kmeans_reference
from hcollectives import JobFailed
from hcollectives.bench import datagen
from hcollectives.bench.examples import load_example

pytestmark = pytest.mark.e2e


def kmeans_job(data, *extra):
    module = load_example("kmeans")
    return module.MRKMeans(args=["-r", "local", "-q", "--initial", data.initial, *extra, *data.inputs])


def faulty_module():
    """tests/jobs/faulty.py, imported the way mrjob will run it (as a script by path)."""
    sys.path.insert(0, str(JOBS))
    try:
        import faulty
    finally:
        sys.path.remove(str(JOBS))
    return faulty


def points(data):
    return datagen.load_points(data.inputs)


@pytest.mark.parametrize("extra", [
    ("--local-nodes", "1"),
    ("--local-nodes", "3", "--fanout", "2"),
    ("--local-nodes", "2", "--no-speculative"),
], ids=["1-node", "3-nodes", "2-nodes-no-speculative"])
def test_kmeans_allreduce_matches_numpy(kmeans_data, extra, no_orphan_daemons):
    out = kmeans_job(kmeans_data, "--max-iterations", "3", "--tolerance", "0", *extra).iterate()
    expected = kmeans_reference(points(kmeans_data), np.load(kmeans_data.initial), 3)
    assert out.iterations == 3 and not out.converged
    assert len(out.timings) == 3 and all(t.seconds > 0 for t in out.timings)
    np.testing.assert_allclose(out.loop_data, expected, rtol=0, atol=1e-9)


def test_kmeans_converges_and_speculative_tasks_exit(kmeans_data, no_orphan_daemons):
    ref = np.load(kmeans_data.initial)
    pts = points(kmeans_data)
    # Iterate the reference until it stops moving, to know when the job must stop.
    for n in range(1, 30):
        nxt = kmeans_reference(pts, ref, 1)
        if np.abs(nxt - ref).max() < 1e-6:
            break
        ref = nxt
    out = kmeans_job(kmeans_data, "--max-iterations", "30").iterate()
    assert out.converged and out.iterations == n
    np.testing.assert_allclose(out.loop_data, nxt, atol=1e-9)


def test_power_iteration_allgather_matches_numpy(tmp_path, no_orphan_daemons):
    data = datagen.power(str(tmp_path), n=60, splits=4, seed=3)
    module = load_example("power_iteration")
    job = module.MRPowerIteration(args=["-r", "local", "-q", "--initial", data.initial, "--max-iterations", "3",
                                        "--local-nodes", "2", *data.inputs])
    out = job.iterate()
    a = np.concatenate([np.loadtxt(p, ndmin=2) for p in data.inputs])[:, 1:]
    x = np.load(data.initial)
    for _ in range(3):
        y = a @ x
        x = y / np.linalg.norm(y)
    np.testing.assert_allclose(out.loop_data, x, rtol=0, atol=1e-9)


def test_lost_broadcast_is_read_from_the_store(kmeans_data, monkeypatch, no_orphan_daemons):
    # The root (local-0) never delivers iteration 2's result to local-1; local-1
    # must fall back to the result the root wrote to the store.
    monkeypatch.setenv("HCOLLECTIVES_FAULTS", "drop:result:local-1:2")
    monkeypatch.setenv("HCOLLECTIVES_ALLREDUCE_SMALL", "tree")  # the tree's Result is what is lost
    out = kmeans_job(kmeans_data, "--max-iterations", "3", "--tolerance", "0", "--local-nodes", "2",
                     "--fallback-timeout", "1").iterate()
    expected = kmeans_reference(points(kmeans_data), np.load(kmeans_data.initial), 3)
    np.testing.assert_allclose(out.loop_data, expected, rtol=0, atol=1e-9)
    # ... and it really was the store that delivered it, once, to that node only.
    assert out.notices == [out.notices[0]] and out.notices[0].startswith("iteration 2: local-1: result missing")


def test_resume_continues_a_stopped_run(kmeans_data, tmp_path, no_orphan_daemons):
    uri = f"file://{tmp_path}/store"
    first = kmeans_job(kmeans_data, "--max-iterations", "2", "--tolerance", "0", "--checkpoint-uri", uri).iterate()
    assert first.iterations == 2
    resumed = kmeans_job(kmeans_data, "--max-iterations", "4", "--tolerance", "0", "--checkpoint-uri", uri,
                         "--resume").iterate()
    assert [t.iteration for t in resumed.timings] == [3, 4]
    expected = kmeans_reference(points(kmeans_data), np.load(kmeans_data.initial), 4)
    np.testing.assert_allclose(resumed.loop_data, expected, rtol=0, atol=1e-9)
    # Resuming a finished run does nothing and says so.
    again = kmeans_job(kmeans_data, "--max-iterations", "4", "--tolerance", "0", "--checkpoint-uri", uri,
                       "--resume").iterate()
    assert again.iterations == 4 and again.timings == [] and not again.converged
    np.testing.assert_array_equal(again.loop_data, resumed.loop_data)


@pytest.mark.parametrize("fault, words", [
    ("nan", ["NaN"]),
    ("text", ["'oops'", "not numbers"]),
    ("length", ["length 2", "3"]),
])
def test_bad_mapper_output_fails_fast_naming_task_and_record(kmeans_data, fault, words, no_orphan_daemons):
    faulty = faulty_module()
    job = faulty.MRFaulty(args=["-r", "local", "-q", "--initial", kmeans_data.initial, "--max-iterations", "3",
                                "--fault", fault, *kmeans_data.inputs])
    t0 = time.monotonic()
    with pytest.raises(JobFailed) as info:
        job.iterate()
    assert time.monotonic() - t0 < 30
    message = str(info.value)
    assert "_m_" in message or "task" in message
    for word in words:
        assert word in message, message
    if fault != "length":  # a length clash is found when the second value meets the first
        assert "input record 3" in message, message


def test_hanging_task_hits_the_iteration_timeout_and_is_cleaned_up(kmeans_data, no_orphan_daemons):
    faulty = faulty_module()
    job = faulty.MRFaulty(args=["-r", "local", "-q", "--initial", kmeans_data.initial, "--max-iterations", "2",
                                "--fault", "hang", "--iteration-timeout", "3", *kmeans_data.inputs])
    t0 = time.monotonic()
    with pytest.raises(JobFailed, match="iteration 1 did not finish within --iteration-timeout 3s"):
        job.iterate()
    assert time.monotonic() - t0 < 30  # the sleeping task was terminated, not waited for


def test_post_process_failure_stops_the_run_promptly(kmeans_data, no_orphan_daemons):
    faulty = faulty_module()
    job = faulty.MRFaulty(args=["-r", "local", "-q", "--initial", kmeans_data.initial, "--max-iterations", "3",
                                "--fault", "post", *kmeans_data.inputs])
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="post_process failed on purpose"):
        job.iterate()
    assert time.monotonic() - t0 < 60  # waiting tasks of iteration 2 were stopped, not waited for


def test_wrong_base_usage_is_a_clear_error(kmeans_data):
    from hcollectives import ConfigurationError

    job = kmeans_job(kmeans_data)
    with pytest.raises(ConfigurationError, match="map task"):
        job.loop_data()


# -- loop-invariant input: parse_input and the per-machine split cache ---------------------------

def parsed_sum_job(tmp_path, monkeypatch, *extra, lines=40, splits=4):
    sys.path.insert(0, str(JOBS))
    try:
        import parsed_sum
    finally:
        sys.path.remove(str(JOBS))
    rng = np.random.default_rng(5)
    rows = rng.integers(0, 100, size=(lines * splits, 3)).astype(float)
    rows[:, 0] = np.arange(len(rows))  # record k's first number is k
    inputs = []
    for s in range(splits):
        path = tmp_path / f"part-{s}.txt"
        body = "\n".join(" ".join(str(v) for v in r) for r in rows[s * lines:(s + 1) * lines])
        path.write_text(body + "\n\n")  # a blank line: parse_input returns None for it
        inputs.append(str(path))
    np.save(tmp_path / "init.npy", np.zeros(3))
    log = tmp_path / "parse.log"
    monkeypatch.setenv("PARSE_LOG", str(log))
    job = parsed_sum.MRParsedSum(args=["-r", "local", "-q", "--initial", str(tmp_path / "init.npy"),
                                       *extra, *inputs])
    return job, rows, log


def parse_calls(log):
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_parse_input_runs_once_per_split_and_later_iterations_use_the_cache(tmp_path, monkeypatch,
                                                                            no_orphan_daemons):
    job, rows, log = parsed_sum_job(tmp_path, monkeypatch, "--max-iterations", "3", "--no-speculative",
                                    "--local-nodes", "2")
    out = job.iterate()
    np.testing.assert_allclose(out.loop_data, rows.sum(0), rtol=0, atol=1e-9)
    assert parse_calls(log) == len(rows) + 4  # every line (and each split's blank line) parsed once, in all


def test_no_input_cache_parses_every_iteration(tmp_path, monkeypatch, no_orphan_daemons):
    job, rows, log = parsed_sum_job(tmp_path, monkeypatch, "--max-iterations", "3", "--no-input-cache")
    out = job.iterate()
    np.testing.assert_allclose(out.loop_data, rows.sum(0), rtol=0, atol=1e-9)
    assert parse_calls(log) == 3 * (len(rows) + 4)


def test_parse_input_failure_stops_the_run_naming_split_and_record(tmp_path, monkeypatch, no_orphan_daemons):
    bad = 45  # split 1, its 6th line
    job, rows, _ = parsed_sum_job(tmp_path, monkeypatch, "--max-iterations", "2", "--bad-record", str(bad))
    t0 = time.monotonic()
    with pytest.raises(JobFailed) as info:
        job.iterate()
    assert time.monotonic() - t0 < 60
    message = str(info.value)
    assert "parse_input failed on input record" in message and "unparseable on purpose" in message
    assert f"part-{bad // 40}.txt" in message and f"record {bad % 40 + 1} " in message


def test_tasks_start_through_the_fork_server_by_default(kmeans_data, monkeypatch, tmp_path, no_orphan_daemons):
    """The launcher passes the stub as mrjob's task interpreter; the run's result is unchanged."""
    from hcollectives.jobs import mrjob_job

    seen = []
    original = mrjob_job.collective_runner_class

    def spy(alias):
        cls = original(alias)

        class Spy(cls):
            def __init__(self, **kwargs):
                seen.append(kwargs.get("task_python_bin"))
                super().__init__(**kwargs)

        return Spy

    monkeypatch.setattr(mrjob_job, "collective_runner_class", spy)
    out = kmeans_job(kmeans_data, "--max-iterations", "2", "--tolerance", "0").iterate()
    expected = kmeans_reference(points(kmeans_data), np.load(kmeans_data.initial), 2)
    np.testing.assert_allclose(out.loop_data, expected, rtol=0, atol=1e-9)
    assert seen and all(b == [sys.executable, "-m", "hcollectives.launch.task_stub"] for b in seen)


def test_inline_runner_never_runs_two_jobs_at_once(kmeans_data):
    """mrjob's inline runner runs a job inside the driver's process; speculation is off there."""
    module = load_example("kmeans")
    for runner, expected in (("inline", False), ("local", True)):
        job = module.MRKMeans(args=["-r", runner, "--initial", kmeans_data.initial, *kmeans_data.inputs])
        assert job.loop_options().speculative is expected
