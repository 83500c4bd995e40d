"""Resident mode on mrjob's local runner: one job for the whole loop, tasks kept alive."""

import time
from pathlib import Path

import numpy as np
import pytest

from conftest import kmeans_reference
from hcollectives import JobFailed
from hcollectives.bench import datagen
from hcollectives.bench.examples import load_example
from test_mapper_block import block_calls, block_sum_job

pytestmark = pytest.mark.e2e


def undisturbed_and_faulty(tmp_path, monkeypatch, *fault):
    """The bits of an undisturbed 5-iteration resident run on 2 nodes, the same job with *fault*,
    its block log and its input rows."""
    (tmp_path / "a").mkdir()
    clean, rows, _ = block_sum_job(tmp_path / "a", monkeypatch, "--max-iterations", "5", "--resident",
                                "--local-nodes", "2")
    expected = clean.iterate().loop_data
    (tmp_path / "b").mkdir()
    job, _, log = block_sum_job(tmp_path / "b", monkeypatch, "--max-iterations", "5", "--resident",
                                "--local-nodes", "2", *fault)
    return expected, job, log, rows



def test_resident_block_sum_runs_every_iteration_in_the_same_processes(tmp_path, monkeypatch, capsys,
                                                                       no_orphan_daemons):
    job, rows, log = block_sum_job(tmp_path, monkeypatch, "--max-iterations", "4", "--resident",
                                   "--local-nodes", "2")
    job.options.quiet = False
    out = job.iterate()
    np.testing.assert_allclose(out.loop_data, 4 * np.append(rows.sum(0), len(rows)), rtol=1e-12)
    assert out.iterations == 4 and [t.iteration for t in out.timings] == [1, 2, 3, 4]
    calls = block_calls(log)
    first = {(pid, rows_id) for it, pid, rows_id, _, _ in calls if it == "1"}
    for i in ("2", "3", "4"):
        # the same processes map the same (kept) arrays in every iteration: one job, parsed once
        assert {(pid, rows_id) for it, pid, rows_id, _, _ in calls if it == i} == first
        assert sum(int(n) for it, *_, n in calls if it == i) == len(rows)
    assert "iteration    4" in capsys.readouterr().err


def test_resident_kmeans_gives_the_same_bits_as_one_job_per_iteration(kmeans_data, no_orphan_daemons):
    args = ["-r", "local", "-q", "--initial", kmeans_data.initial, "--max-iterations", "4", "--tolerance", "0",
            "--local-nodes", "2", *kmeans_data.inputs]
    module = load_example("kmeans")
    resident = module.MRKMeans(args=["--resident", *args]).iterate()
    per_job = module.MRKMeans(args=args).iterate()
    assert resident.loop_data.tobytes() == per_job.loop_data.tobytes()
    expected = kmeans_reference(datagen.load_points(kmeans_data.inputs), np.load(kmeans_data.initial), 4)
    np.testing.assert_allclose(resident.loop_data, expected, rtol=0, atol=1e-9)


def test_resident_record_mapper_and_convergence(kmeans_data, no_orphan_daemons):
    """A per-record mapper (no parse_input) works resident too, and convergence stops the one job."""
    module = load_example("kmeans_records")
    args = ["-r", "local", "-q", "--initial", kmeans_data.initial, "--max-iterations", "30", *kmeans_data.inputs]
    resident = module.MRKMeans(args=["--resident", *args]).iterate()
    per_job = module.MRKMeans(args=args).iterate()
    assert resident.converged and resident.iterations == per_job.iterations < 30
    assert resident.loop_data.tobytes() == per_job.loop_data.tobytes()


def test_killed_resident_task_is_retried_and_rejoins_with_the_same_bits(tmp_path, monkeypatch,
                                                                        no_orphan_daemons):
    expected, job, log, rows = undisturbed_and_faulty(tmp_path, monkeypatch, "--die-at", "3:120")
    t0 = time.monotonic()
    out = job.iterate()
    assert time.monotonic() - t0 < 120
    assert Path(str(log) + ".died").exists()  # the task really was killed (SIGKILL) in iteration 3
    assert out.loop_data.tobytes() == expected.tobytes()  # counted exactly once: same bits
    calls = block_calls(log)
    killed_pid = next(pid for it, pid, *_ in calls if it == "3" and pid not in
                      {p for i, p, *_ in calls if i == "4"})
    assert killed_pid  # ... and a new attempt (another process) did iterations 3..5 in its place
    for i in ("4", "5"):
        assert sum(int(n) for it, *_, n in calls if it == i) == len(rows)


def test_killed_daemon_restarts_from_the_last_finished_iteration_with_the_same_bits(tmp_path, monkeypatch,
                                                                                    capsys, no_orphan_daemons):
    expected, job, log, rows = undisturbed_and_faulty(tmp_path, monkeypatch, "--kill-daemon-at", "3:120")
    job.options.quiet = False
    t0 = time.monotonic()
    out = job.iterate()
    assert time.monotonic() - t0 < 180
    killed = int(Path(str(log) + ".daemon-killed").read_text())
    assert not Path(f"/proc/{killed}").exists() or "Z" in Path(f"/proc/{killed}/stat").read_text().split(")")[-1][:3]
    assert out.loop_data.tobytes() == expected.tobytes()
    assert any("restarted from the last finished iteration" in n and "node daemon" in n for n in out.notices), \
        out.notices
    assert "resume: continuing at iteration" in capsys.readouterr().err


def test_a_resident_tasks_memory_stays_flat_over_many_iterations(tmp_path, monkeypatch, no_orphan_daemons):
    rss_log = tmp_path / "rss.log"
    monkeypatch.setenv("RSS_LOG", str(rss_log))
    # Bigger splits than the other tests: the kept rows must be held once, not once per iteration.
    job, rows, _ = block_sum_job(tmp_path, monkeypatch, "--max-iterations", "80", "--resident", lines=5000,
                                 splits=2)
    out = job.iterate()
    np.testing.assert_allclose(out.loop_data, 80 * np.append(rows.sum(0), len(rows)), rtol=1e-9)
    by_pid = {}
    for line in rss_log.read_text().splitlines():
        i, pid, kb = (int(v) for v in line.split())
        by_pid.setdefault(pid, {})[i] = kb
    assert by_pid and all(len(seen) == 80 for seen in by_pid.values())  # one process per task, every iteration
    for seen in by_pid.values():
        grown = seen[80] - seen[10]
        assert grown < 2048, f"a resident task grew by {grown} kB from iteration 10 to 80"


def test_resident_fails_at_once_when_tasks_cannot_all_start(tmp_path, monkeypatch, no_orphan_daemons):
    from hcollectives.driver import resident

    # Simulate a runner with too few slots: the pool stays at one process.
    monkeypatch.setattr(resident, "_pool_size", lambda n, cores: 1)
    job, _, _ = block_sum_job(tmp_path, monkeypatch, "--max-iterations", "3", "--resident",
                              "--resident-start-timeout", "5")
    t0 = time.monotonic()
    with pytest.raises(JobFailed, match=r"only 1 of the \d+ map tasks started"):
        job.iterate()
    assert time.monotonic() - t0 < 60


def test_killed_daemon_restart_keeps_a_clusters_temporary_store_until_the_run_ends(tmp_path, monkeypatch,
                                                                                   no_orphan_daemons):
    """On a cluster without --checkpoint-uri the store is the run's temporary one (on HDFS):
    it outlives a session, so the restart resumes from it, and is removed when the run ends."""
    import dataclasses

    expected, job, log, rows = undisturbed_and_faulty(tmp_path, monkeypatch, "--kill-daemon-at", "3:120")
    temporary = tmp_path / "cluster-tmp"
    temporary.mkdir()
    options = job.loop_options
    monkeypatch.setattr(job, "loop_options",
                        lambda: dataclasses.replace(options(), temporary_store=f"file://{temporary}"))
    out = job.iterate()
    assert out.loop_data.tobytes() == expected.tobytes()
    assert any("restarted from the last finished iteration" in n for n in out.notices), out.notices
    assert list(temporary.iterdir()) == []  # the run's store is gone with the run
