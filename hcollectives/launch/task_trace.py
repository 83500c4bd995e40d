"""Where a task's time goes: phase timestamps of mrjob tasks, for the demo's and bench's breakdown.

Run as mrjob's task interpreter (``--task-python-bin "python -m
hcollectives.launch.task_trace"``) with ``$HCOLLECTIVES_TRACE_DIR`` set, it
runs the task's script unchanged and writes one JSON file per task process:

    process    the process's start (from /proc: includes the interpreter's start-up)
    body       map_pairs/combine_pairs/reduce_pairs entered (imports, options, daemon connection done)
    ready      first input record asked for: mapper_init is done (loop data in hand)
    records    the last input record processed
    end        map_pairs returned: mapper_final done (a collective's contribution is acknowledged)
    exit       the process is exiting
    reading    seconds spent reading and decoding input records (inside ready..records)
    parse      [start, end] of parse_input over the split (hcollectives jobs that define it)

The same wrapper runs the plain-mrjob and the hcollectives jobs, so both are
measured the same way, and neither job's code changes. Standard library only:
it is imported into every traced task.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import time

TRACE_ENV = "HCOLLECTIVES_TRACE_DIR"

_record: dict | None = None


def process_start() -> float:
    """Epoch seconds when this process started (Linux /proc), else now.

    Measured back from now through the uptime clock (1/100 s), not from
    /proc/stat's btime, which is rounded to whole seconds. A task forked by
    the task fork server started when its stub did: the stub passes that on."""
    start = os.environ.get("HCOLLECTIVES_PROCESS_START")
    if start and os.environ.get("HCOLLECTIVES_PROCESS_START_PID") == str(os.getpid()):  # not inherited
        try:
            return float(start)
        except ValueError:
            pass
    try:
        now = time.time()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        return min(now, now - (uptime - ticks / os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError, IndexError):
        return time.time()


def tracing() -> bool:
    """Whether this process is traced (notes are kept)."""
    return _record is not None


def note(name: str, value) -> None:
    """Record a phase from inside a task (a no-op unless this process is traced)."""
    if _record is not None:
        _record[name] = value


def _write() -> None:
    rec = _record
    if rec is None or "kind" not in rec:
        return  # not a task body (e.g. mrjob asked the script for its steps)
    rec["exit"] = time.time()
    directory = os.environ.get(TRACE_ENV)
    if not directory:
        return
    name = f"{rec['kind']}-{os.getpid()}-{time.monotonic_ns()}.json"
    try:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, name), "w") as f:
            json.dump(rec, f)
    except OSError:
        pass  # tracing must never fail a task


def _traced(kind: str, original):
    def wrapper(self, pairs, step_num=0):
        rec = _record
        rec.update(kind=kind, body=time.time(), reading=0.0,
                   iteration=int(os.environ.get("HCOLLECTIVES_ITERATION") or 0))

        def timed(items):
            it = iter(items)
            rec["ready"] = time.time()
            while True:
                t = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    rec["reading"] += time.perf_counter() - t
                    rec["records"] = time.time()
                    return
                rec["reading"] += time.perf_counter() - t
                yield item

        yield from original(self, timed(pairs), step_num)
        rec.setdefault("records", time.time())
        rec["end"] = time.time()

    return wrapper


def install() -> None:
    """Start tracing this process's mrjob task (patches MRJob's *_pairs methods)."""
    global _record
    from mrjob.job import MRJob

    _record = {"process": process_start(), "main": time.time(), "pid": os.getpid()}
    for kind in ("map", "combine", "reduce"):
        name = f"{kind}_pairs"
        setattr(MRJob, name, _traced(kind, getattr(MRJob, name)))
    atexit.register(_write)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m hcollectives.launch.task_trace SCRIPT [ARGS...]")
    # Run as -m, this file is __main__; the job imports it by its real name
    # (to note its parse phase), so install the tracing in that module.
    from hcollectives.launch import task_trace

    task_trace.install()
    sys.argv = sys.argv[1:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
