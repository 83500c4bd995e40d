"""A fault at every iteration of one long K-means run (issue 12's 200-fault campaign).

One fault per run (tests/test_faults.py) costs a whole run's start-up per
fault; here one run of `HCOLLECTIVES_CAMPAIGN_ITERATIONS` iterations
(`--tolerance 0`, so it never stops early) gets one fault after each finished
iteration, drawn at random from: kill -9 of a node daemon, of a map task (its
stub), of a fork server; SIGSTOP of a daemon for 2.5 x --fallback-timeout,
then SIGCONT; and, rarely (it costs 10 s), SIGSTOP of a daemon past the 8 s
of coordinator silence after which a daemon takes its driver for dead.
A run must end within its deadline (else "hang") with exactly the bits of an
undisturbed run, or with one clear `hcollectives: error:` line (mrjob's local
runner does not retry a killed map task); then no process and no file of it
may be left. `HCOLLECTIVES_CAMPAIGN_RUNS` runs are made (default 1, a
~10-fault smoke test in CI); the table in docs/reliability.md comes from

    HCOLLECTIVES_CAMPAIGN_RUNS=9 HCOLLECTIVES_CAMPAIGN_ITERATIONS=26 \\
        .venv/bin/python -m pytest -q -s tests/test_fault_campaign.py

Every loop is bounded in count and time; the only targets are the run's own
processes (found by the run's TMPDIR, tests/runprobe.py).
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from runprobe import kill_all, leftover_files, pids_of, start_driver, wait_for_driver, wait_gone

pytestmark = [pytest.mark.faults]

RUNS = int(os.environ.get("HCOLLECTIVES_CAMPAIGN_RUNS", "1"))
ITERATIONS = int(os.environ.get("HCOLLECTIVES_CAMPAIGN_ITERATIONS", "10"))
FALLBACK = 1.0  # --fallback-timeout: short, so a stopped daemon's peers fall back soon
PER_ITERATION = 25.0  # a run's deadline: this per iteration (a long stall is 10 s), plus start-up
DAEMON, TASK, FORK = "hcollectives.services.node_main", "hcollectives.launch.task_stub", "hcollectives.launch.zygote"
# (kind, weight): the long stall is rare because it costs 10 s of the run.
KINDS = [("kill -9 daemon", 3), ("kill -9 map task", 2), ("kill -9 fork server", 2),
         ("SIGSTOP daemon 2.5 s", 3), ("SIGSTOP daemon 10 s", 1)]
# mrjob's local runner does not retry a map task: its kill (or its fork server's,
# when a task is inside it) fails the job with a clear error, and the run is resumed.
RETRIED = ("kill -9 map task", "kill -9 fork server")
MAX_RESUMES = 12
VICTIM_WAIT = 3.0  # between iterations no task (or daemon) may be up for a moment


def args(data, result: Path, ckpt: Path, *extra: str) -> list[str]:
    return ["-r", "local", "-q", "--initial", data.initial, "--max-iterations", str(ITERATIONS),
            "--tolerance", "0", "--local-nodes", "2", "--fallback-timeout", str(FALLBACK),
            "--checkpoint-uri", f"file://{ckpt}", "--result", str(result), *extra, *data.inputs]


def iterations_done(ckpt: Path) -> int:
    """Finished iterations, from the loop data the run's store holds."""
    done = [int(p.stem) for p in (ckpt / "loop").glob("*.npy")] if (ckpt / "loop").is_dir() else []
    return max(done, default=1) - 1


def victim(tmpdir: Path, needle: str, rng: random.Random) -> int | None:
    deadline = time.monotonic() + VICTIM_WAIT
    while time.monotonic() < deadline:
        pids = sorted(pids_of(tmpdir, needle))
        if pids:
            return rng.choice(pids)
        time.sleep(0.02)
    return None


def inject(kind: str, tmpdir: Path, rng: random.Random) -> bool:
    """One fault of *kind* on a process of the run; False if none was up to take it."""
    needle = {"kill -9 map task": TASK, "kill -9 fork server": FORK}.get(kind, DAEMON)
    pid = victim(tmpdir, needle, rng)
    if pid is None:
        return False
    try:
        if kind.startswith("kill"):
            os.kill(pid, signal.SIGKILL)
            return True
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False  # it exited between the look and the signal
    try:
        time.sleep(10.0 if "10 s" in kind else 2.5 * FALLBACK)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    return True


def one_run(data, reference: np.ndarray, base: Path, seed: int) -> tuple[str, list[str], int]:
    """(outcome, kinds of the faults injected, resumes) of one campaign run.

    A driver process that fails with a clear error after a killed map task
    (mrjob's local runner does not retry one) is started again with
    --resume, at most MAX_RESUMES times: the run must still end with the
    undisturbed bits.
    """
    rng = random.Random(seed)
    ckpt, out = base / "ckpt", base / "out.npy"
    faults: list[str] = []
    deadline = time.monotonic() + 30 + PER_ITERATION * ITERATIONS
    for resumes in range(MAX_RESUMES + 1):
        tmpdir = base / f"tmp-{resumes}"
        proc = start_driver(tmpdir, args(data, out, ckpt, *(["--resume"] if resumes else [])))
        try:
            injected_after = iterations_done(ckpt)
            while proc.poll() is None and time.monotonic() < deadline and injected_after < ITERATIONS - 1:
                done = iterations_done(ckpt)
                if done <= injected_after:
                    time.sleep(0.02)
                    continue
                injected_after = done
                time.sleep(rng.uniform(0, 0.4))  # somewhere in the next iteration
                kind = rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
                if inject(kind, tmpdir, rng):
                    faults.append(kind)
            try:
                _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return "hang", faults, resumes
            _, left = wait_gone(tmpdir, timeout=15)
            files = leftover_files(tmpdir)
        finally:
            proc.kill()
            proc.wait(timeout=10)
            kill_all(tmpdir)
        if left or files:
            return f"leftovers: {sorted(left.values())[:3]} {files[:5]}", faults, resumes
        if proc.returncode == 0:
            return ("same bits" if np.array_equal(np.load(out), reference) else "wrong result"), faults, resumes
        clear = proc.returncode == 1 and "hcollectives: error:" in err and "Traceback" not in err
        if not clear:
            return f"unclear failure (exit {proc.returncode}): {err[-1500:]}", faults, resumes
        if not (faults and faults[-1].startswith(RETRIED)):
            return f"clear error after {faults[-1:]}, a fault the run must survive: {err[-500:]}", faults, resumes
        faults[-1] += " (clear error)"
    return f"still failing after {MAX_RESUMES} resumes", faults, MAX_RESUMES


@pytest.mark.timeout(120 + RUNS * (60 + PER_ITERATION * ITERATIONS))
def test_a_fault_every_iteration_same_bits_or_clear_error(kmeans_data, tmp_path):
    ref_out = tmp_path / "ref.npy"
    proc = start_driver(tmp_path / "ref-tmp", args(kmeans_data, ref_out, tmp_path / "ref-ckpt"))
    err = wait_for_driver(proc, tmp_path / "ref-tmp", tmp_path / "ref-ckpt")  # progress, not a fixed time
    assert proc.returncode == 0, err
    reference = np.load(ref_out)
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    outcomes, bad, total_resumes = collections.Counter(), [], 0
    started = time.monotonic()
    for run in range(RUNS):
        outcome, faults, resumes = one_run(kmeans_data, reference, tmp_path / f"run-{run}", seed=run)
        total_resumes += resumes
        ok = outcome == "same bits"
        outcomes[outcome if ok else "bad"] += 1
        for fault in faults:
            kind, _, ended = fault.partition(" (")
            c = by_kind[kind]
            c["injected"] += 1
            c["clear error, resumed" if ended else "survived"] += 1
            c["run ended with the same bits" if ok else "run went wrong"] += 1
        if not ok:
            bad.append(f"run {run} ({len(faults)} faults: {faults}): {outcome}")
        print(f"run {run}: {len(faults)} faults, {resumes} resume(s), {outcome}", flush=True)
    total = sum(c["injected"] for c in by_kind.values())
    print(f"\n{RUNS} run(s) of {ITERATIONS} iterations, {total} faults, {total_resumes} resumes, "
          f"{time.monotonic() - started:.0f} s")
    print("| fault | injected | run went on | clear error, resumed | run ended with the same bits | "
          "hang / wrong result / leftovers |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind, _ in KINDS:
        c = by_kind[kind]
        print(f"| {kind} | {c['injected']} | {c['survived']} | {c['clear error, resumed']} "
              f"| {c['run ended with the same bits']} | {c['run went wrong']} |")
    print(f"runs: {dict(outcomes)}")
    assert not bad, "\n".join(bad)
    assert total >= RUNS * (ITERATIONS - 1) // 2, f"only {total} faults injected in {RUNS} run(s) of {ITERATIONS} iterations"
