"""The paper's per-iteration breakdown, from task traces (see task_trace.py). Pure functions.

An iteration's wall time, from the previous iteration's result to its own,
is split into six parts that add up to it:

    scheduling      no task of the iteration is running yet (job submission,
                    input splitting, waiting for a slot), or between waves
    data_load       loop data (mapper_init) and input records: reading, or
                    parsing / mapping the cached split
    compute         the mapper itself
    map_overhead    task start-up (interpreter, imports, option parsing,
                    connecting to the node daemon) and exit
    comm_reduction  getting the result everywhere: mapper_final (a
                    collective's contribution), combiners, sort, reducers;
                    for hcollectives also the tree AllReduce / AllGather
                    after the last task
    cleanup         after the last task: the job's teardown and the driver
                    reading the output (plain mrjob)

While several tasks run at once, each instant is shared equally among them,
so a part's seconds are the wall time it accounts for, not task-seconds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

PARTS = ("scheduling", "data_load", "compute", "map_overhead", "comm_reduction", "cleanup")

Weights = Mapping[str, float]
Interval = tuple[float, float, Weights]


def task_intervals(rec: Mapping) -> list[Interval]:
    """A traced task's life as intervals, each labelled with how its time splits among PARTS."""
    kind, start, stop = rec.get("kind"), rec["process"], rec.get("exit", rec.get("end"))
    if stop is None or stop <= start:
        return []
    if kind != "map":  # combiners and reducers: all of it is the reduction
        return [(start, stop, {"comm_reduction": 1.0})]
    body = rec.get("body", start)
    ready = rec.get("ready", body)
    records = rec.get("records", ready)
    end = rec.get("end", records)
    out: list[Interval] = []
    parse = rec.get("parse")
    if parse and start <= parse[0] <= parse[1] <= body:  # parse_input runs before map_pairs
        out += [(start, parse[0], {"map_overhead": 1.0}), (parse[0], parse[1], {"data_load": 1.0}),
                (parse[1], body, {"map_overhead": 1.0})]
    else:
        out.append((start, body, {"map_overhead": 1.0}))
    span = records - ready
    reading = min(max(rec.get("reading", 0.0), 0.0), span) if span > 0 else 0.0
    out += [(body, ready, {"data_load": 1.0}),
            (ready, records, {"data_load": reading / span, "compute": 1 - reading / span} if span > 0 else {}),
            (records, end, {"comm_reduction": 1.0}),
            (end, stop, {"map_overhead": 1.0})]
    return [(a, b, w) for a, b, w in out if b > a and w]


def iteration_breakdown(tasks: Iterable[Mapping], start: float, stop: float, *, tail: str) -> dict[str, float]:
    """Split [start, stop] among PARTS; *tail* names the part after the last task ends.

    *tasks* are this iteration's trace records (already selected); idle time
    before the first task is scheduling, idle time after every map task has
    ended (sort, shuffle) is comm_reduction, other idle time is scheduling.
    """
    parts = dict.fromkeys(PARTS, 0.0)
    if stop <= start:
        return parts
    intervals = []
    last_map_end = start
    for rec in tasks:
        for a, b, w in task_intervals(rec):
            a, b = max(a, start), min(b, stop)
            if b > a:
                intervals.append((a, b, w))
        if rec.get("kind") == "map":
            last_map_end = max(last_map_end, min(rec.get("exit", start), stop))
    if not intervals:
        parts[tail] = stop - start
        return parts
    last_end = max(b for _, b, _ in intervals)

    def idle(left: float) -> str:
        if left >= last_end:
            return tail
        return "comm_reduction" if left >= last_map_end else "scheduling"

    _share_time(intervals, start, stop, parts, idle)
    return parts


def _share_time(intervals: list[tuple[float, float, Mapping[str, float]]], start: float, stop: float,
                parts: dict[str, float], idle: Callable[[float], str]) -> None:
    """Add [start, stop] to *parts*: each instant split evenly among the intervals
    busy then (by their weights), an idle instant to the part *idle(left edge)* names."""
    edges = sorted({start, stop, *(a for a, _, _ in intervals), *(b for _, b, _ in intervals)})
    for left, right in zip(edges, edges[1:]):
        width = right - left
        active = [w for a, b, w in intervals if a <= left and b >= right]
        if active:
            for weights in active:
                for part, share in weights.items():
                    parts[part] += width * share / len(active)
        else:
            parts[idle(left)] += width


def breakdown(records: Iterable[Mapping], windows: Iterable[tuple[int, float, float]], *,
              tail: str, by_iteration: bool) -> dict[int, dict[str, float]]:
    """Per iteration i with window (i, start, stop): its parts.

    With *by_iteration*, a task belongs to the iteration its trace names
    (hcollectives tasks know theirs; a speculative task of i+1 running during
    i's window is not i's); otherwise (plain mrjob, one job at a time) to the
    windows its life overlaps.
    """
    records = list(records)
    per_iteration: dict[int, list[Mapping]] = defaultdict(list)
    for rec in records:
        per_iteration[rec.get("iteration", 0)].append(rec)
    out = {}
    for i, start, stop in windows:
        tasks = per_iteration.get(i, []) if by_iteration else records
        out[i] = iteration_breakdown(tasks, start, stop, tail=tail)
    return out


def mean_parts(per_iteration: Mapping[int, Mapping[str, float]], skip_first: bool = True) -> dict[str, float]:
    """Mean of each part over iterations (the first, which pays the first job's start-up, left out)."""
    items = [v for i, v in sorted(per_iteration.items())]
    if skip_first and len(items) > 1:
        items = items[1:]
    if not items:
        return dict.fromkeys(PARTS, 0.0)
    parts = list(items[0])  # PARTS, or RESIDENT_PARTS for a resident run
    return {p: sum(v[p] for v in items) / len(items) for p in parts}


# -- resident runs: one task process runs every iteration ---------------------------------------

#: Where a resident iteration's time goes (each instant shared among the tasks, as above):
#:   waiting         a task waits for its loop data: for the other tasks to finish, or for
#:                   its node's post_process (run by another task); no task is busy
#:   post_process    the node's post_process (run once per node, by the task holding the lease)
#:   compute         the mapper (mapper_block, or mapper over the kept records)
#:   task_reduction  validating and combining the emitted pairs inside the task
#:   collective      handing the block to the daemon (claim) and, after the last task's
#:                   contribution, the AllReduce / AllGather between daemons until the result
RESIDENT_PARTS = ("waiting", "post_process", "compute", "task_reduction", "collective")


def resident_intervals(phase: Mapping) -> list[Interval]:
    """One resident task's iteration (jobs/resident_task.py's phase record) as labelled intervals."""
    start, contributed = phase.get("start"), phase.get("contributed")
    if start is None or contributed is None:
        return []
    ready = phase.get("loop_data", start)
    post = min(max(phase.get("post_process_s", 0.0), 0.0), max(ready - start, 0.0))
    mapped = phase.get("mapped", contributed)
    span = mapped - ready
    reduce_share = min(max(phase.get("reduce_s", 0.0), 0.0) / span, 1.0) if span > 0 else 0.0
    out = [(start, ready - post, {"waiting": 1.0}), (ready - post, ready, {"post_process": 1.0}),
           (ready, mapped, {"compute": 1 - reduce_share, "task_reduction": reduce_share}),
           (mapped, contributed, {"collective": 1.0})]
    return [(a, b, {k: v for k, v in w.items() if v > 0}) for a, b, w in out if b > a]


def resident_breakdown(records: Iterable[Mapping],
                       windows: Iterable[tuple[int, float, float]]) -> dict[int, dict[str, float]]:
    """Per iteration i with window (i, start, stop) (previous result to i's result): RESIDENT_PARTS.

    Only iteration i's phases of each task count in i's window (a task that
    contributed and already waits for i+1's loop data is waiting for i's
    collective); time when no task is busy counts as waiting before the last
    task's contribution and as the collective after it.
    """
    phases: dict[int, list[Mapping]] = defaultdict(list)
    for rec in records:
        for phase in rec.get("resident") or ():
            phases[int(phase.get("i", 0))].append(phase)
    out = {}
    for i, start, stop in windows:
        parts = dict.fromkeys(RESIDENT_PARTS, 0.0)
        out[i] = parts
        if stop <= start:
            continue
        last_contribution = max((p["contributed"] for p in phases.get(i, []) if "contributed" in p), default=start)
        intervals = []
        for phase in phases.get(i, []):
            for a, b, w in resident_intervals(phase):
                a, b = max(a, start), min(b, stop)
                if b > a and w and not set(w) <= {"waiting"}:  # waiting is what idle time is
                    intervals.append((a, b, w))
        _share_time(intervals, start, stop, parts,
                    lambda left, last=last_contribution: "collective" if left >= last else "waiting")
    return out
