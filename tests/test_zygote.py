"""The fork server (launch/zygote.py) and its client (launch/task_stub.py).

Each test runs the stub as a subprocess, as mrjob would, against a zygote of
its own (its rundir is under tmp_path). Every process a test starts -- stubs,
zygotes, their children -- carries tmp_path in its command line, and the
`procs` fixture kills whatever is left of them, pass or fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hcollectives.launch import task_stub
from hcollectives.services import rendezvous

STUB = [sys.executable, "-m", "hcollectives.launch.task_stub"]
TIMEOUT = 60

TASK = textwrap.dedent("""\
    import os, sys
    import numpy
    import mrjob.job

    def main():
        data = sys.stdin.buffer.read()
        print("argv", sys.argv)
        print("cwd", os.getcwd())
        print("var", os.environ.get("ZT_VAR"))
        print("name", __name__, os.path.basename(__file__))
        sys.stdout.flush()
        sys.stdout.buffer.write(b"stdin:" + data[::-1])
        print("to stderr", file=sys.stderr)
        what = os.environ.get("ZT_EXIT", "0")
        if what == "raise":
            raise ValueError("boom")
        if what == "message":
            sys.exit("a message")
        sys.exit(int(what))

    if __name__ == "__main__":
        main()
    """)


# -- helpers ------------------------------------------------------------------------------------

def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def processes(marker: str, environ: bool = False) -> list[int]:
    """Live processes with *marker* in their command line (or, with *environ*, as $ZT_MARKER)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            pid = int(entry.name)
            hit = marker.encode() in _cmdline(pid)
            if not hit and environ:
                try:
                    hit = b"ZT_MARKER=" + marker.encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                except OSError:
                    pass
            if hit and _alive(pid):
                found.append(pid)
    return found


def zygotes(marker: str) -> list[int]:
    """Zygotes and their forked children (which share the zygote's command line)."""
    return [p for p in processes(marker, environ=True) if b"hcollectives.launch.zygote" in _cmdline(p)]


def zygote_servers(marker: str) -> list[int]:
    """The zygote processes themselves, not their forked children (same command line)."""
    pids = set(zygotes(marker))
    return [p for p in pids if _ppid(p) not in pids]


def _ppid(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def procs(tmp_path):
    """Yields tmp_path's marker; afterwards kills every process that carries it
    (in its command line, or in its environment: whatever a task started)."""
    marker = str(tmp_path)
    yield marker
    for _ in range(3):
        left = processes(marker, environ=True)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)


@pytest.fixture
def task(tmp_path, procs):
    """A task's world: script, working directory, rundir and environment."""
    script = tmp_path / "job.py"
    script.write_text(TASK)
    wd = tmp_path / "wd"
    wd.mkdir()
    rundir = tmp_path / "run"
    rundir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HCOLLECTIVES_", "mapreduce_"))}
    env.update(HCOLLECTIVES_SESSION="zt", HCOLLECTIVES_RUNDIR=str(rundir), ZT_VAR="hello", ZT_MARKER=procs,
               HCOLLECTIVES_ZYGOTE_IDLE_TIMEOUT="60")
    return SimpleNamespace(script=script, wd=wd, rundir=rundir, env=env, marker=procs)


def run(command, env, cwd, stdin=b"", timeout=TIMEOUT):
    return subprocess.run(command, input=stdin, capture_output=True, env=env, cwd=cwd, timeout=timeout)


def stub(task, *args, env=None, stdin=b"records\n", script=None):
    return run([*STUB, str(script or task.script), *args], env or task.env, task.wd, stdin)


def direct(task, *args, env=None, stdin=b"records\n", script=None):
    return run([sys.executable, str(script or task.script), *args], env or task.env, task.wd, stdin)


def _same(a: subprocess.CompletedProcess, b: subprocess.CompletedProcess) -> None:
    assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr)


# -- the stub is invisible -------------------------------------------------------------------------

@pytest.mark.parametrize("exit_as", ["0", "3", "message", "raise"])
def test_output_and_status_pass_through(task, exit_as):
    env = dict(task.env, ZT_EXIT=exit_as)
    expected = direct(task, "--step-num=0", "--mapper", env=env)
    for _ in range(2):  # cold (starts the zygote), then warm
        _same(stub(task, "--step-num=0", "--mapper", env=env), expected)
    assert expected.returncode == {"0": 0, "3": 3, "message": 1, "raise": 1}[exit_as]
    assert len(zygote_servers(task.marker)) == 1


def test_stub_imports_almost_nothing():
    code = ("import sys; before = set(sys.modules); import hcollectives.launch.task_stub; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    new = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=TIMEOUT).stdout.split()
    assert not [m for m in new if m.split(".")[0] in ("numpy", "mrjob", "trio", "msgpack", "filelock", "yaml")]
    assert [m for m in new if m.startswith("hcollectives")] == [
        "hcollectives", "hcollectives.errors", "hcollectives.launch", "hcollectives.launch.task_stub",
        "hcollectives.launch.task_trace"]


def test_rundir_matches_the_task_side(monkeypatch):
    monkeypatch.setenv("HCOLLECTIVES_NODE_TMP", "/var/tmp")
    env = {"HCOLLECTIVES_SESSION": "s/1 x", "HCOLLECTIVES_NODE_TMP": "/var/tmp"}
    assert task_stub.rundir_of(env) == (rendezvous.default_rundir("s/1 x"), False)
    assert task_stub.rundir_of({"HCOLLECTIVES_RUNDIR": "/r", "HCOLLECTIVES_SESSION": "s"}) == ("/r", True)
    assert task_stub.rundir_of({}) is None
    for name in ("abc", "a b/c:d", "x@y.z-1_2", "ünï"):
        assert task_stub._safe(name) == rendezvous._safe(name)


def test_child_sees_the_task_not_the_zygote(task):
    script = task.script.parent / "probe.py"
    script.write_text(textwrap.dedent("""\
        import json, os, random, signal, sys
        import numpy as np
        json.dump({
            "pid": os.getpid(), "pgid": os.getpgid(0), "ppid": os.getppid(),
            "start": os.environ.get("HCOLLECTIVES_PROCESS_START"),
            "start_pid": os.environ.get("HCOLLECTIVES_PROCESS_START_PID"),
            "session": os.environ.get("HCOLLECTIVES_SESSION"),
            "path0": sys.path[0], "cwd_on_path": os.getcwd() in sys.path,
            "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
            "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
            "sigpipe": signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN,
            "random": random.random(), "np_random": float(np.random.rand()),
            "main": sys.modules["__main__"].__file__,
        }, sys.stdout)
        """))
    env = dict(task.env, PYTHONPATH=str(task.wd))
    before = time.time()
    first, second = (json.loads(stub(task, env=env, script=script).stdout) for _ in range(2))
    plain = json.loads(direct(task, env=env, script=script).stdout)
    assert first["pgid"] == first["pid"]  # its own group: killed as a whole
    assert first["session"] == "zt"
    assert before - 1 < float(first["start"]) < time.time() and first["start_pid"] == str(first["pid"])
    assert first["path0"] == plain["path0"] == str(script.parent)
    assert first["cwd_on_path"] and plain["cwd_on_path"]  # from $PYTHONPATH
    assert first["sigint"] and first["sigterm"] and first["sigpipe"]
    assert first["main"] == str(script)
    assert first["random"] != second["random"] and first["np_random"] != second["np_random"]


def test_openblas_works_in_a_forked_child(task):
    script = task.script.parent / "blas.py"
    script.write_text(textwrap.dedent("""\
        import numpy as np
        rng = np.random.default_rng(0)
        a, b = rng.random((500, 500)), rng.random((500, 500))
        c = a @ b
        assert np.allclose(c, np.einsum("ij,jk->ik", a, b))
        print("ok", c.shape)
        """))
    for _ in range(3):
        r = stub(task, script=script)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"ok (500, 500)\n", b"")


# -- one zygote per script, and fast ---------------------------------------------------------------

def test_stubs_share_one_zygote_and_start_fast(task, capsys):
    env = dict(task.env, ZT_EXIT="0")
    assert stub(task, env=env).returncode == 0  # starts it
    servers = zygote_servers(task.marker)
    assert len(servers) == 1

    def timed(fn, n=20):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            assert fn(task, env=env).returncode == 0
            times.append(time.perf_counter() - t)
        return statistics.median(times), min(times)

    warm, warm_min = timed(stub)
    plain, plain_min = timed(direct)
    with capsys.disabled():
        print(f"\n  20 runs each (numpy + mrjob.job imported): stub median {warm:.3f} s (min {warm_min:.3f}), "
              f"python script.py median {plain:.3f} s (min {plain_min:.3f})")
    assert zygote_servers(task.marker) == servers  # still the one
    assert warm < 0.7 * plain


def test_a_changed_script_gets_its_own_zygote(task):
    assert stub(task).returncode == 0
    first = zygote_servers(task.marker)
    task.script.write_text(TASK + "\n# changed\n")
    r = stub(task)
    assert r.returncode == 0 and b"var hello" in r.stdout
    second = zygote_servers(task.marker)
    assert len(second) == 2 and set(first) < set(second)
    assert len(list((task.rundir / "zygotes").glob("*.sock"))) == 2


def test_concurrent_cold_stubs_start_one_zygote(task):
    procs = [subprocess.Popen([*STUB, str(task.script)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=task.env, cwd=task.wd) for _ in range(4)]
    outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert all(err == b"to stderr\n" for _, err in outs)
    assert len(zygote_servers(task.marker)) == 1


def test_long_rundir_path(tmp_path, task):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    env = dict(task.env, HCOLLECTIVES_RUNDIR=str(deep))
    r = stub(task, env=env)
    assert (r.returncode, r.stderr) == (0, b"to stderr\n")
    assert len(str(next((deep / "zygotes").glob("*.sock")))) > 108
    assert len(zygote_servers(task.marker)) == 1


# -- killing -----------------------------------------------------------------------------------------

SLEEPER = textwrap.dedent("""\
    import os, subprocess, sys, time

    if __name__ == "__main__":
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", sys.argv[1]])
        with open(sys.argv[1] + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {grandchild.pid}")
        os.rename(sys.argv[1] + ".tmp", sys.argv[1])
        print("started", flush=True)
        time.sleep(300)
    """)


def _start_sleeper(task, name="sleeper.py"):
    script = task.script.parent / name
    script.write_text(SLEEPER)
    pids = task.script.parent / f"{name}.pids"
    proc = subprocess.Popen([*STUB, str(script), str(pids)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=task.env, cwd=task.wd)
    wait_for(pids.exists, TIMEOUT, "the task to start")
    child, grandchild = map(int, pids.read_text().split())
    return proc, child, grandchild


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killing_the_stub_kills_the_task(task, signum):
    proc, child, grandchild = _start_sleeper(task)
    assert child != proc.pid and _alive(child) and _alive(grandchild)
    proc.send_signal(signum)
    assert proc.wait(TIMEOUT) == -signum
    wait_for(lambda: not _alive(child) and not _alive(grandchild), 10, "the task's processes to die")
    assert len(zygote_servers(task.marker)) == 1  # the server lives on
    assert stub(task).returncode == 0


def test_task_killed_by_a_signal_is_reported_as_such(task):
    script = task.script.parent / "suicide.py"
    script.write_text("import os, signal\nprint('bye', flush=True)\nos.kill(os.getpid(), signal.SIGTERM)\n")
    expected = direct(task, script=script)
    got = stub(task, script=script)
    assert expected.returncode == got.returncode == -signal.SIGTERM
    assert got.stdout == b"bye\n"


def test_a_dying_zygote_takes_its_tasks_along(task):
    proc, child, grandchild = _start_sleeper(task)
    (server,) = zygote_servers(task.marker)
    os.kill(server, signal.SIGKILL)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode not in (0, None)
    assert b"lost the fork server" in err
    wait_for(lambda: not _alive(child) and not _alive(grandchild), 10, "the task to die with its zygote")


# -- hostile or broken peers ------------------------------------------------------------------------

def _connect(task) -> socket.socket:
    (path,) = (task.rundir / "zygotes").glob("*.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(str(path))
    return s


def _closed_by_peer(s: socket.socket) -> bool:
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def test_garbage_does_not_kill_the_zygote(task):
    assert stub(task).returncode == 0
    (server,) = zygote_servers(task.marker)
    silent = _connect(task)  # says nothing: must not block others
    body = json.dumps({"v": 1, "argv": ["x.py"], "cwd": "/", "env": {}, "process_start": 0}).encode()
    attacks = [
        b"\x00\x00\x00\x05hello",  # not JSON, no fds
        struct.pack("!I", (1 << 20) + 1) + b"{",  # over the cap
        struct.pack("!I", 2) + b"[]",  # wrong shape
        os.urandom(4096),
    ]
    for data in attacks:
        s = _connect(task)
        s.sendall(data)
        assert _closed_by_peer(s)
        s.close()
    # The right shape but bad values, with fds.
    for bad in ({"v": 1, "argv": [], "cwd": "/", "env": {}, "process_start": 0},
                {"v": 1, "argv": ["x"], "cwd": "relative", "env": {}, "process_start": 0},
                {"v": 1, "argv": ["x"], "cwd": "/", "env": {"A": 1}, "process_start": 0},
                {"v": 2, "argv": ["x"], "cwd": "/", "env": {}, "process_start": 0}):
        data = json.dumps(bad).encode()
        s = _connect(task)
        socket.send_fds(s, [struct.pack("!I", len(data))], [0, 1, 2])
        s.sendall(data)
        assert _closed_by_peer(s)
        s.close()
    # A whole request without its fds.
    s = _connect(task)
    s.sendall(struct.pack("!I", len(body)) + body)
    assert _closed_by_peer(s)
    s.close()
    # Connect and hang up.
    _connect(task).close()
    r = stub(task)
    assert (r.returncode, r.stderr) == (0, b"to stderr\n")
    assert zygote_servers(task.marker) == [server]
    silent.close()
    log = next((task.rundir / "zygotes").glob("*.log")).read_text()
    assert "dropped a connection" in log and "Traceback" not in log


# -- falling back to running in-process ---------------------------------------------------------------

def test_kill_switch_runs_in_process(task):
    env = dict(task.env, HCOLLECTIVES_ZYGOTE="0")
    _same(stub(task, "a", env=env), direct(task, "a", env=env))
    assert not (task.rundir / "zygotes").exists()
    assert not zygotes(task.marker)


def test_unreachable_zygote_falls_back_in_process(task):
    (task.rundir / "zygotes").write_text("not a directory")
    expected = direct(task, "a")
    r = stub(task, "a")
    assert (r.returncode, r.stdout) == (expected.returncode, expected.stdout)
    notice, rest = r.stderr.split(b"\n", 1)
    assert b"fork server unavailable" in notice and b"running the task in-process" in notice
    assert rest == expected.stderr
    assert not zygotes(task.marker)


def test_zygote_that_cannot_start_falls_back_in_process(task):
    env = dict(task.env, HCOLLECTIVES_ZYGOTE_IDLE_TIMEOUT="soon")  # the zygote's argparse exits 2
    expected = direct(task)
    r = stub(task, env=env)
    assert (r.returncode, r.stdout) == (expected.returncode, expected.stdout)
    notice, rest = r.stderr.split(b"\n", 1)
    assert b"did not start (exit 2)" in notice and b"running the task in-process" in notice
    assert rest == expected.stderr
    assert not zygotes(task.marker)


def test_oversized_environment_falls_back_in_process(task):
    env = dict(task.env, **{f"ZT_BIG{i}": "x" * 120_000 for i in range(9)})
    r = stub(task, env=env)
    assert r.returncode == 0 and b"var hello" in r.stdout
    assert b"exceeds" in r.stderr and b"running the task in-process" in r.stderr


def test_stale_socket_is_replaced(task):
    assert stub(task).returncode == 0
    (server,) = zygote_servers(task.marker)
    os.kill(server, signal.SIGKILL)  # leaves its socket file behind
    wait_for(lambda: not _alive(server), 10, "the zygote to die")
    r = stub(task)
    assert (r.returncode, r.stderr) == (0, b"to stderr\n")
    assert len(zygote_servers(task.marker)) == 1 and zygote_servers(task.marker) != [server]


def test_a_gone_rundir_is_not_resurrected(task):
    shutil.rmtree(task.rundir)
    r = stub(task)
    assert r.returncode == 0 and b"running the task in-process" in r.stderr
    assert not task.rundir.exists() and not zygotes(task.marker)


# -- lifetime -------------------------------------------------------------------------------------------

def test_zygote_exits_when_its_rundir_is_removed(task):
    assert stub(task).returncode == 0
    (server,) = zygote_servers(task.marker)
    shutil.rmtree(task.rundir)
    wait_for(lambda: not _alive(server), 5, "the zygote to notice its rundir is gone")


def test_zygote_exits_when_idle(task):
    env = dict(task.env, HCOLLECTIVES_ZYGOTE_IDLE_TIMEOUT="1")
    assert stub(task, env=env).returncode == 0
    (server,) = zygote_servers(task.marker)
    wait_for(lambda: not _alive(server), 10, "the zygote to exit when idle")
    assert not list((task.rundir / "zygotes").glob("*.sock"))
    assert stub(task, env=env).returncode == 0  # and a new one starts on demand


def test_zygote_keeps_no_session_or_secret(task):
    env = dict(task.env, HCOLLECTIVES_SECRET="ab" * 16)
    assert stub(task, env=env).returncode == 0
    (server,) = zygote_servers(task.marker)
    environ = Path(f"/proc/{server}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if v.startswith(b"HCOLLECTIVES_")]


# -- tracing ---------------------------------------------------------------------------------------------

def test_traced_mrjob_task(task, tmp_path):
    script = tmp_path / "wc.py"
    script.write_text(textwrap.dedent("""\
        from mrjob.job import MRJob

        class WC(MRJob):
            def mapper(self, _, line):
                yield "lines", 1

        if __name__ == "__main__":
            WC.run()
        """))
    traces = tmp_path / "traces"
    env = dict(task.env, HCOLLECTIVES_TRACE_DIR=str(traces))
    expected = direct(task, "--step-num=0", "--mapper", env=dict(env, HCOLLECTIVES_TRACE_DIR=""),
                      script=script, stdin=b"a\nb\n")
    r = stub(task, "--step-num=0", "--mapper", env=env, script=script, stdin=b"a\nb\n")
    _same(r, expected)
    (trace,) = traces.glob("map-*.json")
    rec = json.loads(trace.read_text())
    assert rec["process"] <= rec["body"] <= rec["ready"] <= rec["records"] <= rec["end"] <= rec["exit"]


# -- scripts that do things at import -----------------------------------------------------------------

def _start_zygote(task, script: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    directory = task.rundir / "zygotes"
    directory.mkdir(mode=0o700)
    sock = directory / "manual.sock"
    proc = subprocess.Popen([sys.executable, "-m", "hcollectives.launch.zygote", "--socket", str(sock),
                             "--script", str(script), *extra], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=task.wd, env=task.env)
    return proc, sock


def test_slow_top_level_is_cut_short(task):
    script = task.script.parent / "slow.py"
    script.write_text("import time, json\nprint('top level')\ntime.sleep(300)\n")
    proc, sock = _start_zygote(task, script, "--warm-timeout", "1", "--idle-timeout", "30")
    try:
        line = proc.stdout.readline()  # READY, nothing the script printed
        assert line.startswith(b"READY")
        assert sock.exists()
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=TIMEOUT)
    assert b"more than 1s" in err and b"json" not in err


def test_a_script_that_starts_threads_is_not_forked(task):
    script = task.script.parent / "threads.py"
    script.write_text(textwrap.dedent("""\
        import sys, threading
        threading.Thread(target=threading.Event().wait, daemon=True).start()
        if __name__ == "__main__":
            print("ran", threading.active_count())
        """))
    for _ in range(2):
        r = stub(task, script=script)
        assert (r.returncode, r.stdout) == (0, b"ran 2\n")
        assert b"running the task in-process" in r.stderr
    (marker,) = (task.rundir / "zygotes").glob("*.disabled")
    assert "forking is unsafe" in marker.read_text()
    assert not zygotes(task.marker)


# -- the real thing: an hcollectives job on mrjob's local runner --------------------------------------

@pytest.mark.e2e
def test_mds_on_the_local_runner_through_the_stub(tmp_path, procs):
    from conftest import EXAMPLES
    from hcollectives.bench import datagen

    data = datagen.mds(str(tmp_path / "data"), n=120, dims=3, splits=4, seed=3)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HCOLLECTIVES_", "mapreduce_"))}
    env["ZT_MARKER"] = procs  # inherited by the zygote, its children and the daemons

    def mds(result: Path, *extra: str, **more_env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(EXAMPLES / "mds.py"), "-r", "local", "--initial", data.initial,
             "--max-iterations", "3", "--tolerance", "0", "--result", str(result), *extra, *data.inputs],
            capture_output=True, text=True, env=dict(env, **more_env), cwd=tmp_path, timeout=300)

    import numpy as np

    stub_bin = ("--task-python-bin", f"{sys.executable} -m hcollectives.launch.task_stub")
    plain = mds(tmp_path / "plain.npy")
    assert plain.returncode == 0, plain.stderr[-3000:]
    stubbed = mds(tmp_path / "stub.npy", *stub_bin)
    assert stubbed.returncode == 0, stubbed.stderr[-3000:]
    assert np.array_equal(np.load(tmp_path / "plain.npy"), np.load(tmp_path / "stub.npy"))
    # The driver removed its rundir: the zygote leaves within its check interval.
    wait_for(lambda: not zygotes(procs) and not processes(procs, environ=True), 10,
             "the zygote and every task process to be gone")

    # Again, keeping the rundir, to read the zygote's log: one zygote served every task.
    kept = mds(tmp_path / "kept.npy", *stub_bin, HCOLLECTIVES_KEEP_TMP="1", HCOLLECTIVES_ZYGOTE_IDLE_TIMEOUT="1")
    assert kept.returncode == 0, kept.stderr[-3000:]
    tmp = Path(kept.stderr.split("hcollectives: kept ", 1)[1].split()[0])
    try:
        wait_for(lambda: not zygotes(procs), 10, "the zygote to exit when idle")
        (log,) = (tmp / "run" / "zygotes").glob("*.log")
        assert "after 12 tasks" in log.read_text()  # 3 iterations x 4 splits
        assert np.array_equal(np.load(tmp_path / "plain.npy"), np.load(tmp_path / "kept.npy"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
