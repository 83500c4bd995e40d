"""Bad input is found early, with a message naming it (issue 12)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import EXAMPLES, ROOT
from hcollectives.errors import ConfigurationError
from hcollectives.bench.examples import load_example

pytestmark = pytest.mark.e2e


def test_unwritable_result_fails_before_iteration_1(kmeans_data, tmp_path):
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(EXAMPLES / "kmeans.py"), "-r", "local", "-q",
                           "--initial", kmeans_data.initial, "--max-iterations", "50",
                           "--result", str(tmp_path / "missing-dir" / "out.npy"), *kmeans_data.inputs],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "--result" in done.stderr and "missing-dir" in done.stderr and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert "iteration" not in done.stdout + done.stderr.replace("--max-iterations", "")
    assert time.monotonic() - started < 30  # 50 iterations would take minutes


def test_empty_input_is_an_error_naming_it(kmeans_data, tmp_path, no_orphan_daemons):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    job = load_example("kmeans").MRKMeans(args=["-r", "local", "-q", "--initial", kmeans_data.initial,
                                                "--max-iterations", "3", str(empty)])
    with pytest.raises(ConfigurationError, match="no map task emitted any output; is the input empty"):
        job.iterate()
