"""The `hcollectives` command line: parsing, help, datagen, errors."""

import subprocess
import sys

import numpy as np
import pytest

from hcollectives.cli import build_parser, main


def hc(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "hcollectives", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("command", ["wrap", "run", "node", "demo", "bench", "datagen"])
def test_every_command_has_help(command):
    done = hc(command, "--help")
    assert done.returncode == 0 and "usage: hcollectives" in done.stdout


def test_wrap_needs_exactly_one_collective():
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["wrap", "--allreduce", "sum", "--allgather", "--", "cat"])
    with pytest.raises(SystemExit):
        parser.parse_args(["wrap", "--allreduce", "median", "--", "cat"])
    args = parser.parse_args(["wrap", "--allreduce", "max", "--", "python", "m.py", "--flag"])
    assert args.allreduce == "max" and args.mapper_command[-3:] == ["python", "m.py", "--flag"]


def test_wrap_outside_a_task_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.delenv("HCOLLECTIVES_SESSION", raising=False)
    assert main(["wrap", "--allgather", "--", "cat"]) == 1
    assert "not started by an hcollectives driver" in capsys.readouterr().err


def test_datagen_writes_splits_and_initial(tmp_path):
    done = hc("datagen", "kmeans", "--points", "100", "--dims", "3", "--clusters", "4", "--splits", "3",
              "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["kmeans-init.npy", "points-000.txt", "points-001.txt", "points-002.txt"]
    rows = sum(len(np.loadtxt(tmp_path / f"points-00{i}.txt", ndmin=2)) for i in range(3))
    assert rows == 100 and np.load(tmp_path / "kmeans-init.npy").shape == (4, 3)


def test_run_rejects_bad_options_before_starting(tmp_path):
    done = hc("run", "--mapper", "cat", "--allreduce", "sum", "--max-iterations", "0", str(tmp_path))
    assert done.returncode == 1 and "--max-iterations must be at least 1" in done.stderr
    done = hc("run", "--mapper", "cat", "--allgather", "--resume", str(tmp_path))
    assert done.returncode == 1 and "--resume needs --checkpoint-uri" in done.stderr


def test_run_takes_mrjob_options_after_a_double_dash(tmp_path):
    # Parsed: inputs are a and b, mrjob gets --num-cores 2; the run then stops at
    # the first check (bad --max-iterations), before starting anything.
    done = hc("run", "--mapper", "cat", "--allgather", "--max-iterations", "0", "a", "b", "--", "--num-cores", "2")
    assert done.returncode == 1 and "--max-iterations must be at least 1" in done.stderr
    # Without "--", an mrjob option is refused instead of silently eating an input.
    done = hc("run", "--mapper", "cat", "--allgather", "--num-cores", "2", "a", "b")
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr
