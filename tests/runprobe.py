"""Helpers for tests that run a driver as a separate process and look for what
it leaves behind (tests/test_signals.py, tests/test_faults.py).

Every process of a run inherits the driver's environment, in which the test
sets TMPDIR to a directory of its own: the driver's temp dir, mrjob's, the
daemons', fork servers' and tasks' environments all point there, so
"processes of this run" and "files of this run" are both found by that path,
and no other run on the machine is ever touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_processes(tmpdir: Path) -> dict[int, str]:
    """{pid: command line} of live (non-zombie) processes whose environment names *tmpdir*."""
    marker = f"TMPDIR={tmpdir}".encode()
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in env and state != "Z":
            found[int(proc.name)] = cmd
    return found


def leftover_files(tmpdir: Path) -> list[str]:
    return sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*"))


def wait_gone(tmpdir: Path, timeout: float) -> tuple[float, dict[int, str]]:
    """Seconds until no process of the run is left (or *timeout*), and what is left."""
    start = time.monotonic()
    while True:
        left = run_processes(tmpdir)
        elapsed = time.monotonic() - start
        if not left or elapsed >= timeout:
            return elapsed, left
        time.sleep(0.05)


def kill_all(tmpdir: Path) -> None:
    """Clean up after a failed test: nothing of the run may outlive it."""
    for pid in run_processes(tmpdir):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def start_driver(tmpdir: Path, args: list[str], *, env: dict[str, str] | None = None,
                 script: str = "examples/kmeans.py") -> subprocess.Popen:
    tmpdir.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if k != "HCOLLECTIVES_KEEP_TMP"}
    full_env.update(TMPDIR=str(tmpdir), PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    """Read the driver's stderr until a line containing *needle*; the lines read."""
    import selectors

    lines: list[str] = []
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(max(0.0, deadline - time.monotonic())):
                break
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if needle in line:
                return lines
    raise AssertionError(f"no {needle!r} from the driver within {timeout}s; got:\n{''.join(lines)}")


def pids_of(tmpdir: Path, needle: str) -> list[int]:
    return [pid for pid, cmd in run_processes(tmpdir).items() if needle in cmd]


def wait_for_iterations(tmpdir: Path, n: int, timeout: float) -> None:
    """Until the run's default store holds the loop data of iteration n+1 (i.e. n
    iterations are done); works with -q, which silences the progress lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(tmpdir.glob(f"hcollectives-*/checkpoints/loop/{n + 1:06d}.npy")) or \
                list(tmpdir.glob(f"hcollectives-*/checkpoints/loop/{n + 2:06d}.npy")):
            return
        time.sleep(0.05)
    raise AssertionError(f"the run did not finish {n} iteration(s) within {timeout}s: {leftover_files(tmpdir)[:20]}")


# A hang is a run that stops making progress, not a slow one. On the 2-core
# machine at load 15-23 the K-means iterations of tests/test_faults.py took
# 4-22 s and 6-iteration runs with one daemon killed 60-142 s (142 s: killed
# after iteration 1, not one store fallback), so the fixed 120 s that suite
# gave the rest of a run could fail a run that was only slow; at load ~15 the
# campaign's undisturbed 10-iteration reference twice missed its fixed 80 s.
# So a run counts as hung when no iteration finishes (or it does not end after
# its last) for STALL_TIMEOUT; RUN_CAP bounds it however slowly it progresses.
STALL_TIMEOUT = 90.0
RUN_CAP = 600.0


def finished_iterations(tmpdir: Path, store: Path | None = None) -> int:
    """Iterations the run has finished: the newest loop data in its store (the
    default one under *tmpdir*, or *store*) is that of the next iteration."""
    files = [*tmpdir.glob("hcollectives-*/checkpoints/loop/*.npy"), *(store.glob("loop/*.npy") if store else ())]
    return max((int(p.stem) - 1 for p in files if p.stem.isdigit()), default=0)


def wait_for_driver(proc: subprocess.Popen, tmpdir: Path, store: Path | None = None, *,
                    stall: float = STALL_TIMEOUT, cap: float = RUN_CAP) -> str:
    """The driver's stderr once it exits; fails as a hang if it stops making progress."""
    start = last = time.monotonic()
    done = finished_iterations(tmpdir, store)
    while True:
        try:
            return proc.communicate(timeout=1.0)[1]  # retrying after TimeoutExpired loses no output
        except subprocess.TimeoutExpired:
            pass
        now, finished = time.monotonic(), finished_iterations(tmpdir, store)
        if finished > done:
            done, last = finished, now
        if now - last > stall or now - start > cap:
            proc.kill()
            kill_all(tmpdir)
            raise AssertionError(f"hang: {done} iteration(s) finished, none for {now - last:.0f}s "
                                 f"({now - start:.0f}s in all)")
