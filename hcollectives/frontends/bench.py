"""`hcollectives bench`: side-by-side measurements, JSON out.

Every variant runs on the same generated data, from the same initial
centroids, for the same number of iterations (convergence is switched off
with ``--tolerance 0`` so every variant does the same work), one after the
other in one process, so their ratios are comparable on a noisy machine.

K-means per-iteration time on mrjob's local runner:
- ``vanilla``: plain mrjob, one MapReduce job per iteration (examples/kmeans_vanilla.py)
- ``hcollectives``: Map-AllReduce with speculative scheduling (examples/kmeans.py)
- ``hcollectives_no_speculative``: the same with ``--no-speculative``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, TextIO

import numpy as np

from . import datagen
from .examples import load_example


def _summary(per_iteration: list[float]) -> dict[str, Any]:
    steady = per_iteration[1:] or per_iteration  # the first iteration also pays the first job's start-up
    return {
        "per_iteration_s": [round(t, 4) for t in per_iteration],
        "mean_s": round(statistics.fmean(per_iteration), 4),
        "steady_mean_s": round(statistics.fmean(steady), 4),
        "steady_median_s": round(statistics.median(steady), 4),
    }


def kmeans_variants(data: datagen.Dataset, *, iterations: int, local_nodes: int, num_cores: int | None,
                    stream: TextIO | None) -> dict[str, Any]:
    """Run K-means vanilla / speculative / non-speculative on *data*; per-iteration times."""
    collective = load_example("kmeans")
    vanilla = load_example("kmeans_vanilla")
    runner = ["-r", "local"] + (["--num-cores", str(num_cores)] if num_cores else [])
    out: dict[str, Any] = {}

    def say(line: str) -> None:
        if stream is not None:
            print(line, file=stream, flush=True)

    say(f"K-means, vanilla mrjob, {iterations} iterations")
    t0 = time.perf_counter()
    centroids, _, _, times = vanilla.iterate([*runner, *data.inputs], np.load(data.initial),
                                             iterations, tolerance=0.0, stream=stream)
    out["vanilla"] = _summary(times) | {"wall_s": round(time.perf_counter() - t0, 3)}
    for name, extra in (("hcollectives", []), ("hcollectives_no_speculative", ["--no-speculative"])):
        say(f"K-means, {name.replace('_', ' ')}, {local_nodes} simulated node(s), {iterations} iterations")
        t0 = time.perf_counter()
        job = collective.MRKMeans(args=[*runner, "--initial", data.initial, "--max-iterations", str(iterations),
                                        "--tolerance", "0", "--local-nodes", str(local_nodes), *extra,
                                        *data.inputs])
        outcome = job.iterate()
        out[name] = _summary([t.seconds for t in outcome.timings]) | {"wall_s": round(time.perf_counter() - t0, 3)}
        out[name]["max_abs_diff_vs_vanilla"] = float(np.abs(outcome.loop_data - centroids).max())
    base = out["vanilla"]["steady_median_s"]
    out["speedup_steady_median"] = {k: round(base / out[k]["steady_median_s"], 3)
                                    for k in ("hcollectives", "hcollectives_no_speculative")}
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, default=20000)
    parser.add_argument("--dims", type=int, default=8)
    parser.add_argument("--clusters", type=int, default=8)
    parser.add_argument("--splits", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--local-nodes", default="1,2", help="comma-separated simulated node counts")
    parser.add_argument("--num-cores", type=int, default=None, help="mrjob local runner parallelism")
    parser.add_argument("--collectives", action="store_true",
                        help="also time AllReduce/AllGather of 1 KiB..64 MiB across 2 and 4 daemons on loopback")
    parser.add_argument("--skip-kmeans", action="store_true", help="only the collectives micro-benchmark")
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def quiet_mrjob() -> None:
    """mrjob warns on every runner that no mrjob.conf exists; in a benchmark or
    demo that is one noise line per iteration."""
    logging.getLogger("mrjob").setLevel(logging.ERROR)


def main(args: argparse.Namespace) -> int:
    quiet_mrjob()
    stream = None if args.quiet else sys.stderr
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": "hcollectives bench " + " ".join(sys.argv[2:]),
        "kmeans": {},
    }
    if args.collectives:
        from . import collective_bench

        if stream is not None:
            print("collectives: AllReduce and AllGather across 2 and 4 node daemons on loopback", file=stream)
        report["collectives"] = collective_bench.run()
    if args.skip_kmeans:
        del report["kmeans"]
    else:
        _kmeans_section(args, report, stream)
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


def _kmeans_section(args: argparse.Namespace, report: dict[str, Any], stream: TextIO | None) -> None:
    with tempfile.TemporaryDirectory(prefix="hcollectives-bench-") as tmp:
        data = datagen.kmeans(tmp, points=args.points, dims=args.dims, clusters=args.clusters,
                              splits=args.splits, seed=0)
        report["kmeans"]["data"] = {"points": args.points, "dims": args.dims, "clusters": args.clusters,
                                    "splits": args.splits, "iterations": args.iterations}
        for n in [int(x) for x in args.local_nodes.split(",") if x]:
            report["kmeans"][f"local_nodes_{n}"] = kmeans_variants(
                data, iterations=args.iterations, local_nodes=n, num_cores=args.num_cores, stream=stream)
