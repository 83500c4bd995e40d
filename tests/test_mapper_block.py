"""mapper_block: a split's parsed rows as one read-only array, on mrjob's local runner."""

import sys
import time

import numpy as np
import pytest

from conftest import JOBS, kmeans_reference
from hcollectives import ConfigurationError, JobFailed
from hcollectives.bench import datagen
from hcollectives.bench.examples import load_example

pytestmark = pytest.mark.e2e


def import_job(name):
    sys.path.insert(0, str(JOBS))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(JOBS))


def write_rows(tmp_path, lines=50, splits=4, seed=7):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(lines * splits, 3))
    rows[:, 0] = np.arange(len(rows))  # row k's first number is k
    inputs = []
    for s in range(splits):
        path = tmp_path / f"part-{s}.txt"
        path.write_text("\n".join(" ".join(repr(v) for v in r.tolist()) for r in rows[s * lines:(s + 1) * lines]) + "\n\n")
        inputs.append(str(path))
    np.save(tmp_path / "init.npy", np.zeros(4))
    return rows, inputs


def block_sum_job(tmp_path, monkeypatch, *extra, **kw):
    rows, inputs = write_rows(tmp_path, **kw)
    log = tmp_path / "block.log"
    monkeypatch.setenv("BLOCK_LOG", str(log))
    job = import_job("block_sum").MRBlockSum(args=["-r", "local", "-q", "--initial", str(tmp_path / "init.npy"),
                                                   *extra, *inputs])
    return job, rows, log


def block_calls(log):
    return [line.split() for line in log.read_text().splitlines()]


def test_block_mapper_counts_every_row_once_per_iteration(tmp_path, monkeypatch, no_orphan_daemons):
    job, rows, log = block_sum_job(tmp_path, monkeypatch, "--max-iterations", "3", "--local-nodes", "2")
    out = job.iterate()
    expected = 3 * np.append(rows.sum(0), len(rows))
    np.testing.assert_allclose(out.loop_data, expected, rtol=1e-12)
    calls = block_calls(log)
    assert all(writeable == "0" for _, _, _, writeable, _ in calls)  # read-only, as the cached copy is
    for i in (1, 2, 3):  # one call per task (whole splits, blank lines skipped), not one per row
        sizes = [int(n) for it, *_, n in calls if it == str(i)]
        assert sum(sizes) == len(rows) and len(sizes) <= 8


def test_bad_block_output_names_the_split(tmp_path, monkeypatch, no_orphan_daemons):
    job, _, _ = block_sum_job(tmp_path, monkeypatch, "--max-iterations", "2", "--bad-row", "120")
    t0 = time.monotonic()
    with pytest.raises(JobFailed) as info:
        job.iterate()
    assert time.monotonic() - t0 < 60
    message = str(info.value)
    assert "mapper_block over 50 row(s)" in message and "part-2.txt" in message, message
    assert "nan" in message.lower()


def test_block_kmeans_matches_the_record_mapper_and_numpy(kmeans_data, no_orphan_daemons):
    args = ["-r", "local", "-q", "--initial", kmeans_data.initial, "--max-iterations", "3", "--tolerance", "0",
            *kmeans_data.inputs]
    block = load_example("kmeans").MRKMeans(args=args).iterate()
    records = load_example("kmeans_records").MRKMeans(args=args).iterate()
    expected = kmeans_reference(datagen.load_points(kmeans_data.inputs), np.load(kmeans_data.initial), 3)
    np.testing.assert_allclose(block.loop_data, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(records.loop_data, expected, rtol=0, atol=1e-9)


def test_mapper_block_needs_parse_input(tmp_path, monkeypatch):
    from hcollectives import AllReduce, MRCollectiveJob

    class NoParser(MRCollectiveJob):
        COLLECTIVE = AllReduce("sum")

        def mapper_block(self, rows):
            yield 0, rows.sum()

    monkeypatch.setenv("HCOLLECTIVES_SESSION", "s")
    with pytest.raises(ConfigurationError, match="mapper_block.*parse_input"):
        NoParser(args=[]).run_mapper()
