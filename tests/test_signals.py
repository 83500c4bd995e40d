"""A clean stop: signals to the driver, and a driver killed with -9 (issue 12).

The driver runs as its own process (examples/kmeans.py on mrjob's local
runner, 2 simulated nodes) with TMPDIR pointed at a directory of the test's,
so everything the run starts or writes can be found (tests/runprobe.py).
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from runprobe import kill_all, leftover_files, pids_of, start_driver, wait_for_iterations, wait_gone

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def kmeans_args(data, iterations: int = 200) -> list[str]:
    return ["-r", "local", "-q", "--initial", data.initial, "--max-iterations", str(iterations),
            "--tolerance", "0", "--local-nodes", "2", *data.inputs]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_signal_stops_everything_within_5s(kmeans_data, tmp_path, sig):
    tmpdir = tmp_path / "tmp"
    proc = start_driver(tmpdir, kmeans_args(kmeans_data))
    try:
        wait_for_iterations(tmpdir, 2, timeout=60)
        assert pids_of(tmpdir, "node_main"), "expected the run's daemons to be up"
        sent = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=10)
        elapsed, left = wait_gone(tmpdir, timeout=5 - (time.monotonic() - sent))
        err = proc.stderr.read()
        assert proc.returncode == 128 + sig, (proc.returncode, err)
        assert not left, f"still running {time.monotonic() - sent:.1f}s after {sig.name}: {left}"
        assert leftover_files(tmpdir) == []
        assert "Traceback" not in err
        # One line about the stop, nothing else (-q: no progress lines).
        lines = err.splitlines()
        assert len(lines) == 1 and sig.name in lines[0], err
    finally:
        proc.kill()
        kill_all(tmpdir)


def test_keep_tmp_keeps_the_temp_dir_after_a_signal(kmeans_data, tmp_path):
    tmpdir = tmp_path / "tmp"
    proc = start_driver(tmpdir, kmeans_args(kmeans_data), env={"HCOLLECTIVES_KEEP_TMP": "1"})
    try:
        wait_for_iterations(tmpdir, 1, timeout=60)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        _, left = wait_gone(tmpdir, timeout=5)
        assert not left
        assert any(name.endswith("daemon.log") for name in leftover_files(tmpdir))
    finally:
        proc.kill()
        kill_all(tmpdir)


def test_daemons_notice_a_killed_driver_within_10s(kmeans_data, tmp_path):
    tmpdir = tmp_path / "tmp"
    proc = start_driver(tmpdir, kmeans_args(kmeans_data))
    try:
        wait_for_iterations(tmpdir, 2, timeout=60)
        daemons = pids_of(tmpdir, "node_main")
        assert len(daemons) == 2
        proc.kill()
        proc.wait(timeout=5)
        start = time.monotonic()
        while time.monotonic() - start < 12 and any(pid in pids_of(tmpdir, "node_main") for pid in daemons):
            time.sleep(0.1)
        gone_after = time.monotonic() - start
        assert gone_after < 10.5, f"daemons {daemons} still alive {gone_after:.1f}s after the driver died"
        # Their session directories went with them (the driver's temp dir, on a local run).
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any("nodes/" in f for f in leftover_files(tmpdir)):
            time.sleep(0.1)
        assert not [f for f in leftover_files(tmpdir) if "nodes/" in f]
    finally:
        proc.kill()
        kill_all(tmpdir)
