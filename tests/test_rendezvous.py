"""Tests of the task-side rendezvous (`services/rendezvous.py`) and the daemon process
(`services/node_main.py`): real daemon processes, real files, real TCP.

Every process a test starts is killed at teardown (`reaper`): the daemon
processes of a test all carry its unique tmp_path on their command line, so
they are found by that even if a pid file was never written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import trio

from hcollectives.algorithms.block import Block
from hcollectives.errors import CollectiveTimeout
from hcollectives.services import rendezvous
from hcollectives.services.coordinator import Coordinator, SessionConfig
from hcollectives.services.task import TaskClient, TaskEnv
from hcollectives.transport.sync_channel import SyncChannel

pytestmark = pytest.mark.timeout(90)

SECRET = bytes(range(32))
START = 30.0  # a cold daemon start on a loaded 2-core box


# -- processes ----------------------------------------------------------------------------------


def _ours(tmp_path: Path) -> set[int]:
    """Pids of live processes whose command line mentions *tmp_path* (only ours do)."""
    needle = str(tmp_path).encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes() and not _gone(int(entry.name)):
                found.add(int(entry.name))
        except OSError:
            pass
    return found


def _gone(pid: int) -> bool:
    """True if *pid* has exited (a zombie counts as exited)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
        if done:
            return True
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return _gone(pid)


@pytest.fixture
def reaper(tmp_path):
    """Kill, at teardown, every process this test started (by pid, never by name)."""
    pids: set[int] = set()
    yield pids
    for pid_file in tmp_path.rglob("pid"):
        try:
            pids.add(int(pid_file.read_text()))
        except (OSError, ValueError):
            pass
    pids |= _ours(tmp_path)
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        _wait_gone(pid, 5)


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.delenv("HCOLLECTIVES_FAULTS", raising=False)
    monkeypatch.setenv("HCOLLECTIVES_SECRET", SECRET.hex())


def _handshake(address: str) -> None:
    """Prove a daemon listens there and knows the secret."""
    SyncChannel.connect(address, role="task", name="probe", secret=SECRET, timeout=10).close()


# -- node identity ------------------------------------------------------------------------------


def test_node_identity_from_nodemanager():
    env = {"NM_HOST": "worker-3.example.org", "NM_PORT": "45454",
           "HCOLLECTIVES_LOCAL_NODES": "4", "mapreduce_task_partition": "2"}
    assert rendezvous.node_identity(env) == "worker-3.example.org:45454"  # NM wins over local nodes
    assert rendezvous.node_identity({"NM_HOST": "a b/c", "NM_PORT": "1"}) == "a_b_c:1"


def test_node_identity_needs_both_nm_variables(monkeypatch):
    monkeypatch.setattr(rendezvous.socket, "gethostname", lambda: "box")
    assert rendezvous.node_identity({"NM_HOST": "h"}) == "box"
    assert rendezvous.node_identity({"NM_PORT": "1"}) == "box"


@pytest.mark.parametrize("partition,expected", [("0", "local-0"), ("1", "local-1"), ("2", "local-2"),
                                                ("3", "local-0"), ("7", "local-1"), (None, "local-0")])
def test_node_identity_local_nodes_partition(partition, expected):
    env = {"HCOLLECTIVES_LOCAL_NODES": "3"}
    if partition is not None:
        env["mapreduce_task_partition"] = partition
    assert rendezvous.node_identity(env) == expected


def test_node_identity_defaults_to_hostname(monkeypatch):
    monkeypatch.setattr(rendezvous.socket, "gethostname", lambda: "my host!")
    assert rendezvous.node_identity({}) == "my_host_"
    assert rendezvous.node_identity({"HCOLLECTIVES_LOCAL_NODES": "1", "mapreduce_task_partition": "5"}) == "my_host_"
    monkeypatch.setattr(rendezvous.socket, "gethostname", lambda: "")
    assert rendezvous.node_identity({}) == "localhost"


def test_node_dir_is_per_node_and_safe(tmp_path):
    a = rendezvous.node_dir(str(tmp_path), "host:1")
    b = rendezvous.node_dir(str(tmp_path), "../evil")
    assert a.parent == b.parent == tmp_path / "nodes"
    assert (a.name, b.name) == ("host_1", ".._evil")  # one component each: no escape


# -- find_or_start_daemon -----------------------------------------------------------------------


def test_live_daemon_is_found_not_restarted(tmp_path, reaper, secret_env):
    directory = rendezvous.node_dir(str(tmp_path), "n0")
    directory.mkdir(parents=True)
    (directory / "address").write_text("127.0.0.1:12345\n")
    (directory / "pid").write_text(str(os.getpid()))  # alive
    assert rendezvous.find_or_start_daemon(rundir=str(tmp_path), node="n0", secret=SECRET) == "127.0.0.1:12345"
    assert _ours(tmp_path) == set()


def test_concurrent_callers_start_exactly_one_daemon(tmp_path, reaper, secret_env):
    rundir = str(tmp_path / "run")
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def call():
        try:
            barrier.wait(10)
            results.append(rendezvous.find_or_start_daemon(rundir=rundir, node="n0", secret=SECRET, timeout=START))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(START + 15)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(results) == 6 and len(set(results)) == 1
    directory = rendezvous.node_dir(rundir, "n0")
    pid = int((directory / "pid").read_text())
    reaper.add(pid)
    assert (directory / "address").read_text().strip() == results[0]
    assert _ours(tmp_path) == {pid}, "exactly one daemon process"
    _handshake(results[0])
    # Later callers find it too.
    assert rendezvous.find_or_start_daemon(rundir=rundir, node="n0", secret=SECRET) == results[0]
    assert _ours(tmp_path) == {pid}
    # Another node id gets its own daemon.
    other = rendezvous.find_or_start_daemon(rundir=rundir, node="n1", secret=SECRET, timeout=START)
    assert other != results[0]
    assert len(_ours(tmp_path)) == 2


def test_stale_address_with_dead_pid_starts_a_new_daemon(tmp_path, reaper, secret_env):
    rundir = str(tmp_path / "run")
    directory = rendezvous.node_dir(rundir, "n0")
    directory.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(10)
    (directory / "address").write_text("127.0.0.1:9")
    (directory / "pid").write_text(str(dead.pid))
    address = rendezvous.find_or_start_daemon(rundir=rundir, node="n0", secret=SECRET, timeout=START)
    pid = int((directory / "pid").read_text())
    reaper.add(pid)
    assert address != "127.0.0.1:9"
    assert pid != dead.pid and not _gone(pid)
    assert (directory / "address").read_text().strip() == address
    _handshake(address)
    # A garbage pid file counts as dead too.
    (directory / "pid").write_text("not a pid")
    address2 = rendezvous.find_or_start_daemon(rundir=rundir, node="n0", secret=SECRET, timeout=START)
    reaper.add(int((directory / "pid").read_text()))
    assert address2 != address


def test_daemon_that_cannot_start_is_reported(tmp_path, reaper, monkeypatch):
    monkeypatch.setattr(rendezvous, "daemon_command",
                        lambda node, d: [sys.executable, "-c", f"import sys; sys.stderr.write('boom {tmp_path}'); sys.exit(3)"])
    with pytest.raises(Exception, match="did not start") as info:
        rendezvous.find_or_start_daemon(rundir=str(tmp_path), node="n0", secret=SECRET, timeout=START)
    assert "boom" in str(info.value)


def test_daemon_that_never_answers_times_out(tmp_path, reaper, monkeypatch):
    monkeypatch.setattr(rendezvous, "daemon_command",
                        lambda node, d: [sys.executable, "-c", f"import time; time.sleep(30)  # {tmp_path}"])
    t0 = time.monotonic()
    with pytest.raises(CollectiveTimeout):
        rendezvous.find_or_start_daemon(rundir=str(tmp_path), node="n0", secret=SECRET, timeout=1.0)
    assert time.monotonic() - t0 < 10


# -- the daemon process's own lifetime ---------------------------------------------------------------


def _spawn_daemon(directory: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hcollectives.services.node_main", "--node-id", "n0",
         "--rendezvous", str(directory), "--exit-when-idle", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        env=dict(os.environ, HCOLLECTIVES_SECRET=SECRET.hex()))
    try:
        line = rendezvous._read_line(proc, START)
    finally:
        proc.stdout.close()
    assert line.startswith("ADDRESS "), line
    return proc, line.split(" ", 1)[1].strip()


def test_idle_daemon_exits_and_withdraws_its_address(tmp_path, reaper):
    directory = tmp_path / "nodes" / "n0"
    proc, address = _spawn_daemon(directory, "--idle-timeout", "1")
    reaper.add(proc.pid)
    assert (directory / "address").read_text() == address
    assert (directory / "pid").read_text() == str(proc.pid)
    assert proc.wait(timeout=20) == 0
    assert not (directory / "address").exists()
    assert not (directory / "pid").exists()
    assert not tmp_path.exists() or not any(tmp_path.rglob("*")), list(tmp_path.rglob("*"))  # log, lock: gone


def test_exiting_daemon_leaves_a_newer_daemons_files_alone(tmp_path, reaper):
    directory = tmp_path / "nodes" / "n0"
    proc, address = _spawn_daemon(directory, "--idle-timeout", "1")
    reaper.add(proc.pid)
    (directory / "pid").write_text(str(os.getpid()))  # a newer daemon took over
    assert proc.wait(timeout=20) == 0
    assert (directory / "address").exists() and (directory / "pid").exists()


def test_task_started_daemon_serves_a_session_then_exits(tmp_path, reaper, secret_env):
    """The whole task path: TaskClient -> rendezvous -> daemon process -> coordinator.

    The daemon is started with the default (long) idle timeout; it must still
    exit as soon as the coordinator goes away, and take its address with it.
    """
    rundir = str(tmp_path / "run")
    session = "sess-rdv"
    out: dict = {}

    def task(caddr: str, number: int):
        env = TaskEnv(session, caddr, SECRET, 1, f"task_{number}", f"task_{number}_a0", 2, "n0", rundir,
                      None, "test", 30.0)
        with TaskClient(env) as client:
            client.start()
            data = client.loop_data(lambda r, p: (p, False))
            out[number] = (data, client.contribute(Block.from_dict({0: data.ravel() * 0 + number})))

    async def main():
        config = SessionConfig(session, SECRET, "allreduce", "sum", 2, "", 5.0, 1)
        coord = Coordinator(config, np.ones((1, 2)))
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                caddr = await nursery.start(coord.serve)
                threads = [threading.Thread(target=task, args=(caddr, n), daemon=True) for n in (1, 2)]
                for t in threads:
                    t.start()
                result = await coord.wait_result(1)
                for t in threads:
                    await trio.to_thread.run_sync(t.join, 30)
                assert not any(t.is_alive() for t in threads)
                pids = _ours(tmp_path)
                reaper.update(pids)
                assert pids == {int((directory / "pid").read_text())}, "one daemon for both tasks"
                assert coord.nodes.keys() == {"n0"}
                nursery.cancel_scope.cancel()  # the driver goes away
        return result, pids.pop()

    directory = rendezvous.node_dir(rundir, "n0")
    result, pid = trio.run(main)
    np.testing.assert_array_equal(result.to_dict()[0], [3.0, 3.0])
    assert sorted(out) == [1, 2] and all(accepted for _, accepted in out.values())
    t0 = time.monotonic()
    assert _wait_gone(pid, 15), "the daemon must exit once its session's coordinator is gone"
    assert time.monotonic() - t0 < 15  # its idle timeout is 120 s: it did not wait for that
    assert not (directory / "address").exists()


def test_on_yarn_a_daemon_listens_for_other_hosts_and_names_its_node_manager(tmp_path):
    """Peers on other hosts dial it: every interface, advertised as NM_HOST."""
    command = rendezvous.daemon_command("nm1:45454", tmp_path, {"NM_HOST": "nodemanager1", "NM_PORT": "45454"})
    assert command[command.index("--bind-host") + 1] == "0.0.0.0"
    assert command[command.index("--advertise-host") + 1] == "nodemanager1"
    assert "--bind-host" not in rendezvous.daemon_command("local-1", tmp_path, {})  # loopback off YARN
