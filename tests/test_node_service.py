"""End to end: tasks use a running `hcollectives node` service instead of starting daemons.

This is the set-up for clusters whose container executor kills whatever a task
leaves behind (LinuxContainerExecutor with cgroups): one service per node,
started by the cluster, shared by every run; tasks find it at a fixed address
and prove they know the secret in a file present on every node.
"""

import os
import secrets
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import daemon_processes, kmeans_reference
from hcollectives import ConfigurationError, JobFailed
from hcollectives.bench import datagen
from hcollectives.bench.examples import load_example

pytestmark = pytest.mark.e2e


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret.hex"
    path.write_text(secrets.token_hex(32) + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def node_service(secret_file, tmp_path):
    """A service daemon (no --exit-when-idle) on a free port; yields its address."""
    log = open(tmp_path / "service.log", "wb")
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "hcollectives"), "node", "--node-id", "service-0",
         "--secret-file", str(secret_file)],
        stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    try:
        line = proc.stdout.readline().decode()  # "ADDRESS host:port", written once it listens
        assert line.startswith("ADDRESS "), f"service did not start: {line!r}"
        yield line.split()[1], proc, tmp_path / "service.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def run_kmeans(data, *extra):
    module = load_example("kmeans")
    return module.MRKMeans(args=["-r", "local", "-q", "--initial", data.initial, "--max-iterations", "2",
                                 "--tolerance", "0", *extra, *data.inputs]).iterate()


def test_tasks_use_the_service_and_it_outlives_runs(kmeans_data, node_service, secret_file, monkeypatch):
    address, proc, log = node_service
    marker = secrets.token_hex(8)
    monkeypatch.setenv("HCOLLECTIVES_TEST_MARKER", marker)
    expected = kmeans_reference(datagen.load_points(kmeans_data.inputs), np.load(kmeans_data.initial), 2)
    for _ in range(2):  # one service, two runs (two sessions) one after the other
        out = run_kmeans(kmeans_data, "--node-service", address, "--secret-file", str(secret_file))
        np.testing.assert_allclose(out.loop_data, expected, rtol=0, atol=1e-9)
        # No task started a daemon of its own: the only daemon is the service.
        assert daemon_processes(f"HCOLLECTIVES_TEST_MARKER={marker}".encode()) == []
        assert proc.poll() is None, "the service must keep running between runs"


def test_secret_never_travels_in_the_job_configuration(kmeans_data, node_service, secret_file, monkeypatch):
    """With --secret-file, tasks get the file's path, not the secret itself."""
    address, _, _ = node_service
    seen = []
    module = load_example("kmeans")
    job = module.MRKMeans(args=["-r", "local", "-q", "--initial", kmeans_data.initial, "--max-iterations", "1",
                                "--node-service", address, "--secret-file", str(secret_file), *kmeans_data.inputs])
    from hcollectives.driver import mrjob_launcher

    original = mrjob_launcher.MRJobLauncher.run_iteration

    def spy(self, iteration, env, report):
        seen.append(dict(env))
        return original(self, iteration, env, report)

    monkeypatch.setattr(mrjob_launcher.MRJobLauncher, "run_iteration", spy)
    job.iterate()
    assert seen and all("HCOLLECTIVES_SECRET" not in env for env in seen)
    assert all(env["HCOLLECTIVES_SECRET_FILE"] == str(secret_file) for env in seen)
    assert secret_file.read_text().strip() not in repr(seen)


def test_wrong_secret_fails_the_run_with_an_authentication_error(kmeans_data, node_service, tmp_path):
    address, proc, _ = node_service
    wrong = tmp_path / "wrong.hex"
    wrong.write_text(secrets.token_hex(32))
    t0 = time.monotonic()
    with pytest.raises(JobFailed) as info:
        run_kmeans(kmeans_data, "--node-service", address, "--secret-file", str(wrong),
                   "--iteration-timeout", "60")
    assert time.monotonic() - t0 < 60
    assert "AuthenticationError" in str(info.value) and "wrong session secret" in str(info.value), str(info.value)
    assert proc.poll() is None, "a wrong secret must not bring the service down"


@pytest.mark.parametrize("args, message", [
    (["--node-service", "127.0.0.1:7420"], "needs --secret-file"),
    (["--node-service", "nonsense", "--secret-file", "x"], "--node-service"),
])
def test_bad_service_options_are_refused_before_anything_runs(kmeans_data, args, message):
    with pytest.raises(ConfigurationError, match=message):
        run_kmeans(kmeans_data, *args)


def test_unreadable_secret_file_names_the_file(kmeans_data, tmp_path):
    missing = tmp_path / "no-such-secret"
    with pytest.raises(ConfigurationError, match="no-such-secret"):
        run_kmeans(kmeans_data, "--node-service", "127.0.0.1:1", "--secret-file", str(missing))


def test_task_reads_the_secret_file_on_its_node(tmp_path, secret_file):
    from hcollectives.services.task import TaskEnv

    base = {"HCOLLECTIVES_SESSION": "s", "HCOLLECTIVES_COORDINATOR": "127.0.0.1:1", "HCOLLECTIVES_ITERATION": "1"}
    env = TaskEnv.from_environ({**base, "HCOLLECTIVES_SECRET_FILE": str(secret_file)})
    assert env.secret == bytes.fromhex(secret_file.read_text().strip())
    with pytest.raises(ConfigurationError, match="cannot read"):
        TaskEnv.from_environ({**base, "HCOLLECTIVES_SECRET_FILE": str(tmp_path / "absent")})
    (tmp_path / "short").write_text("abcd")
    with pytest.raises(ConfigurationError, match=">= 16 bytes"):
        TaskEnv.from_environ({**base, "HCOLLECTIVES_SECRET_FILE": str(tmp_path / "short")})
