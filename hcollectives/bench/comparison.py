"""Run an application both ways (plain mrjob vs hcollectives) side by side, traced.

Used by `hcollectives demo` and `hcollectives bench`. Every way runs the
same data from the same initial loop data for the same number of iterations
(convergence off), one after the other in this process, with every task run
under task_trace so the paper's breakdown is measured the same way for all.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, TextIO
from unittest import mock

import numpy as np

from . import breakdown as bd
from .examples import load_example
from ..launch.task_trace import TRACE_ENV


@dataclass(frozen=True)
class App:
    name: str
    collective_module: str
    collective_class: str
    vanilla_module: str


APPS = {
    "kmeans": App("K-means", "kmeans", "MRKMeans", "kmeans_vanilla"),
    "mds": App("MDS", "mds", "MRMDS", "mds_vanilla"),
}


@dataclass
class Way:
    """One way of running an app: plain mrjob, or hcollectives with these extra options."""
    key: str
    label: str
    vanilla: bool = False
    options: tuple[str, ...] = ()
    fork_server: bool = True  # hcollectives' default task start on the local runner
    env: tuple[tuple[str, str], ...] = ()  # set in the driver's environment for this way's run
    module: str | None = None  # another example than the app's own (same class name), e.g. kmeans_records
    spark: bool = False  # not hcollectives at all: PySpark MLlib (spark_bench.py)


WAYS = {
    "vanilla": Way("vanilla", "plain mrjob (one job per iteration)", vanilla=True),
    "hcollectives": Way("hcollectives", "hcollectives"),
    "no_speculative": Way("no_speculative", "hcollectives --no-speculative", options=("--no-speculative",)),
    "records": Way("records", "hcollectives, a mapper call per record (examples/kmeans_records.py)",
                   module="kmeans_records"),
    "resident": Way("resident", "hcollectives --resident (mapper_block, one job for the whole loop)",
                    options=("--resident",)),
    "spark": Way("spark", "PySpark MLlib KMeans.train", spark=True),
    "no_input_cache": Way("no_input_cache", "hcollectives --no-input-cache", options=("--no-input-cache",)),
    "no_fork_server": Way("no_fork_server", "hcollectives, HCOLLECTIVES_ZYGOTE=0 (every task a fresh Python)",
                          fork_server=False),
    # On clusters, where the fork server is opt-in:
    "fork_server": Way("fork_server", "hcollectives, HCOLLECTIVES_ZYGOTE=1 (tasks forked by a server per node)",
                       env=(("HCOLLECTIVES_ZYGOTE", "1"),)),
    "hadoop_fs_client": Way("hadoop_fs_client", "hcollectives, HCOLLECTIVES_NATIVE_HDFS=0 (mrjob's hadoop fs calls)",
                            env=(("HCOLLECTIVES_NATIVE_HDFS", "0"),)),
}


@dataclass
class WayResult:
    way: Way
    per_iteration_s: list[float]
    parts: dict[int, dict[str, float]]
    loop_data: np.ndarray
    wall_s: float
    notes: list[str] = field(default_factory=list)
    # Collective ways: when each iteration was submitted, its first and last task
    # started, its result arrived, ... (seconds since the run started).
    events: dict[int, dict[str, float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        steady = self.per_iteration_s[1:] or self.per_iteration_s  # the first also pays the first job's start-up
        # Iterations 3.. (the Spark comparison's window: Spark's marginal is (13 - 3) / 10)
        late = self.per_iteration_s[2:] or steady
        return {
            "label": self.way.label,
            "per_iteration_s": [round(t, 4) for t in self.per_iteration_s],
            "steady_median_s": round(statistics.median(steady), 4),
            "median_from_iteration_3_s": round(statistics.median(late), 4),
            "steady_mean_s": round(statistics.fmean(steady), 4),
            "wall_s": round(self.wall_s, 3),
            "breakdown_mean_s": {k: round(v, 6) for k, v in bd.mean_parts(self.parts).items()},
            "breakdown_per_iteration_s": {str(i): {k: round(v, 6) for k, v in p.items()}
                                          for i, p in sorted(self.parts.items())},
        } | ({"events_per_iteration_s": {str(i): {k: round(v, 3) for k, v in sorted(e.items(), key=lambda kv: kv[1])}
                                         for i, e in sorted(self.events.items())}} if self.events else {})


def trace_args(trace_dir: str, *, wrap: bool = True) -> list[str]:
    """mrjob options that trace every task into *trace_dir*.

    With *wrap*, tasks run under task_trace as their interpreter; without, the
    job's own task start (hcollectives' fork server) installs the same tracer."""
    wrapper = ["--task-python-bin", f"{sys.executable} -m hcollectives.launch.task_trace"] if wrap else []
    return [*wrapper, "--cmdenv", f"{TRACE_ENV}={trace_dir}"]


def read_traces(trace_dir: str) -> list[dict]:
    out = []
    for path in glob.glob(os.path.join(trace_dir, "*.json")):
        try:
            with open(path) as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            continue  # a task killed while writing: its time shows up as an idle gap
    return out


def run_way(app: App, way: Way, *, inputs: list[str], initial: str, iterations: int,
            runner_args: list[str], local_nodes: int, stream: TextIO | None) -> WayResult:
    trace_dir = tempfile.mkdtemp(prefix="hcollectives-trace-")
    try:
        with mock.patch.dict(os.environ, dict(way.env)):
            return _run_way(app, way, trace_dir, inputs=inputs, initial=initial, iterations=iterations,
                            runner_args=runner_args, local_nodes=local_nodes, stream=stream)
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)


def _run_way(app: App, way: Way, trace_dir: str, *, inputs: list[str], initial: str, iterations: int,
             runner_args: list[str], local_nodes: int, stream: TextIO | None) -> WayResult:
    from ..driver.mrjob_launcher import use_task_fork_server

    runner = runner_args[runner_args.index("-r") + 1] if "-r" in runner_args else "inline"
    if way.spark:
        return _run_spark(way, inputs=inputs, initial=initial, iterations=iterations)
    fork_server = not way.vanilla and way.fork_server and use_task_fork_server(runner)
    args = [*runner_args, *trace_args(trace_dir, wrap=not fork_server)]
    t0 = time.time()
    if way.vanilla:
        module = load_example(app.vanilla_module)
        loop_data, _, _, times = module.iterate([*args, *inputs], np.load(initial), iterations,
                                                tolerance=0.0, stream=stream)
        # The vanilla driver runs its jobs back to back: iteration i spans the sum of the times before it.
        ends = t0 + np.cumsum(times)
        windows = [(i + 1, float(end - t), float(end)) for i, (t, end) in enumerate(zip(times, ends))]
        tail, by_iteration = "cleanup", False
        events = {}
    else:
        cls = getattr(load_example(way.module or app.collective_module), app.collective_class)
        job = cls(args=[*args, *([] if stream is not None else ["-q"]), "--initial", initial, "--max-iterations", str(iterations),
                        "--tolerance", "0", "--local-nodes", str(local_nodes), *way.options, *inputs])
        outcome = job.iterate()
        loop_data, times, windows = outcome.loop_data, [t.seconds for t in outcome.timings], outcome.windows()
        tail, by_iteration = "comm_reduction", True
        events = {t.iteration: dict(t.events) for t in outcome.timings}
    wall = time.time() - t0
    if "--resident" in way.options:
        parts = bd.resident_breakdown(read_traces(trace_dir), windows)
    else:
        parts = bd.breakdown(read_traces(trace_dir), windows, tail=tail, by_iteration=by_iteration)
    return WayResult(way, list(times), parts, np.asarray(loop_data), wall, events=events)


class SkippedWay(Exception):
    """This way cannot run here (e.g. no pyspark or Java); the reason goes in the report."""


def _run_spark(way: Way, *, inputs: list[str], initial: str, iterations: int) -> WayResult:
    from . import spark_bench

    reason = spark_bench.spark_unavailable()
    if reason:
        raise SkippedWay(reason)
    low = min(3, iterations - 1)
    if low < 1:
        raise SkippedWay("the spark way needs --iterations 2 or more (its time per iteration is a marginal)")
    t0 = time.time()
    out = spark_bench.kmeans_marginal(inputs, initial, low=low, high=iterations)
    marginal = out["marginal_per_iteration_s"]
    result = WayResult(Way(way.key, out["label"], spark=True), [marginal], {}, out["loop_data"], time.time() - t0)
    result.notes.append(f"seconds for {low} and {iterations} iterations: {out['seconds']}")
    return result


def compare(app_key: str, *, inputs: list[str], initial: str, iterations: int, ways: list[str],
            runner_args: list[str], local_nodes: int, stream: TextIO | None) -> dict[str, Any]:
    """Run *ways* of *app_key* one after the other; JSON-ready results with speedups vs vanilla."""
    app = APPS[app_key]
    results: dict[str, WayResult] = {}
    skipped: dict[str, dict[str, str]] = {}
    for key in ways:
        way = WAYS[key]
        if stream is not None:
            print(f"{app.name}: {way.label}, {iterations} iterations"
                  + ("" if way.vanilla else f", {local_nodes} simulated node(s)"), file=stream, flush=True)
        try:
            results[key] = run_way(app, way, inputs=inputs, initial=initial, iterations=iterations,
                                   runner_args=runner_args, local_nodes=local_nodes, stream=stream)
        except SkippedWay as exc:
            skipped[key] = {"label": way.label, "skipped": str(exc)}
            if stream is not None:
                print(f"{app.name}: skipped {way.label}: {exc}", file=stream, flush=True)
    out: dict[str, Any] = {key: r.summary() | ({"notes": r.notes} if r.notes else {}) for key, r in results.items()}
    out.update(skipped)
    if "spark" in results:
        for key, r in results.items():
            if key != "spark":
                out[key]["vs_spark_marginal"] = round(out[key]["median_from_iteration_3_s"]
                                                      / out["spark"]["median_from_iteration_3_s"], 3)
                scale = max(float(np.abs(results["spark"].loop_data).max()), 1.0)
                out[key]["max_rel_diff_vs_spark"] = float(np.abs(r.loop_data - results["spark"].loop_data).max()
                                                          / scale)
    if "vanilla" in results:
        base = results["vanilla"]
        for key, r in results.items():
            if key != "vanilla":
                out[key]["speedup_vs_vanilla"] = round(out["vanilla"]["steady_median_s"]
                                                       / out[key]["steady_median_s"], 3)
                scale = max(float(np.abs(base.loop_data).max()), 1.0)
                out[key]["max_rel_diff_vs_vanilla"] = float(np.abs(r.loop_data - base.loop_data).max() / scale)
    return out
