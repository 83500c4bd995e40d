"""The session secret stays secret (issue 12), on mrjob's local runner.

It reaches the tasks as a private file shipped through mrjob's upload
mechanism (as the distributed cache does on Hadoop), never in the job's
environment, configuration or a command line; the driver's session secret
wins over a HCOLLECTIVES_SECRET_FILE in its own environment; and a failing
run's output does not show it. tests/test_hadoop_reliability.py checks the
same on the mini-cluster (job configuration and task logs too).
"""

from __future__ import annotations

import logging
import os
import stat
import sys

import numpy as np
import pytest

from conftest import JOBS, kmeans_reference
from hcollectives import JobFailed
from hcollectives.bench import datagen
from hcollectives.bench.examples import load_example
from hcollectives.driver import loop, mrjob_launcher

pytestmark = pytest.mark.e2e

SECRET = bytes.fromhex("5e" * 32)


@pytest.fixture
def known_secret(monkeypatch):
    """The session secret this test will look for in everything the run shows."""
    monkeypatch.setattr(loop, "new_secret", lambda: SECRET)
    return SECRET.hex()


@pytest.fixture
def spy(monkeypatch):
    """What each iteration's runner was given, and the shipped file's mode."""
    seen = []
    original = mrjob_launcher.MRJobLauncher.run_iteration

    def run_iteration(self, iteration, env, report):
        path, name = report.session_secret_file
        seen.append({"env": dict(env), "file_mode": stat.S_IMODE(os.stat(path).st_mode), "name": name,
                     "runner_kwargs": repr(self.job._runner_kwargs())})
        return original(self, iteration, env, report)

    monkeypatch.setattr(mrjob_launcher.MRJobLauncher, "run_iteration", run_iteration)
    return seen


def test_session_secret_is_a_private_file_and_wins_over_the_drivers_env(kmeans_data, tmp_path, known_secret, spy,
                                                                         monkeypatch, no_orphan_daemons):
    other = tmp_path / "other-secret"
    other.write_text("0f" * 32)
    monkeypatch.setenv("HCOLLECTIVES_SECRET_FILE", str(other))  # e.g. left over from a node-service setup
    job = load_example("kmeans").MRKMeans(args=["-r", "local", "-q", "--initial", kmeans_data.initial,
                                                "--max-iterations", "2", "--tolerance", "0", "--local-nodes", "2",
                                                *kmeans_data.inputs])
    out = job.iterate()
    expected = kmeans_reference(datagen.load_points(kmeans_data.inputs), np.load(kmeans_data.initial), 2)
    np.testing.assert_allclose(out.loop_data, expected, rtol=0, atol=1e-9)
    assert len(spy) == 2
    for seen in spy:
        assert "HCOLLECTIVES_SECRET" not in seen["env"]
        assert seen["env"]["HCOLLECTIVES_SECRET_FILE"] == seen["name"]  # relative: the task's working dir
        assert seen["file_mode"] == 0o600
        assert known_secret not in repr(seen["env"]) and known_secret not in seen["runner_kwargs"]


def test_failing_run_does_not_show_the_secret(kmeans_data, known_secret, capfd, caplog, no_orphan_daemons):
    sys.path.insert(0, str(JOBS))
    try:
        import faulty
    finally:
        sys.path.remove(str(JOBS))
    job = faulty.MRFaulty(args=["-r", "local", "--initial", kmeans_data.initial, "--max-iterations", "2",
                                "--fault", "text", *kmeans_data.inputs])
    with caplog.at_level(logging.DEBUG), pytest.raises(JobFailed) as info:
        job.iterate()
    shown = str(info.value) + caplog.text + "".join(capfd.readouterr())
    assert "oops" in shown  # the failure itself is reported
    assert known_secret not in shown


def test_redactor_scrubs_log_records_and_errors():
    from hcollectives.driver.redact import MARK, Redactor

    secret = "ab" * 32
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    logger = logging.getLogger("test.redact")
    handler = Keep()
    logger.addHandler(handler)
    try:
        redactor = Redactor(secret).install()
        logger.error("hadoop jar streaming.jar -cmdenv HCOLLECTIVES_SECRET=%s -mapper x", secret)
        redactor.remove()
        logger.error("after: %s", "plain")
    finally:
        logger.removeHandler(handler)
    assert secret not in records[0] and MARK in records[0]
    assert records[1] == "after: plain"
