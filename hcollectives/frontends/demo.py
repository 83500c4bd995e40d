"""`hcollectives demo` (= `make demo`): the main job, end to end, on this machine.

Generates K-means data, runs the same K-means as plain mrjob (one job per
iteration) and with hcollectives (Map-AllReduce, speculative scheduling) on
mrjob's local runner, showing each iteration as it finishes, then a table of
per-iteration times and the speedup.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from . import datagen
from .bench import kmeans_variants, quiet_mrjob


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=int, default=20000)
    parser.add_argument("--dims", type=int, default=8)
    parser.add_argument("--clusters", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--local-nodes", type=int, default=2)


def main(args: argparse.Namespace) -> int:
    quiet_mrjob()
    with tempfile.TemporaryDirectory(prefix="hcollectives-demo-") as tmp:
        data = datagen.kmeans(tmp, points=args.points, dims=args.dims, clusters=args.clusters, splits=4, seed=0)
        print(f"K-means: {args.points} points x {args.dims} dims, {args.clusters} clusters, "
              f"{args.iterations} iterations, mrjob local runner, {args.local_nodes} simulated node(s)",
              file=sys.stderr)
        result = kmeans_variants(data, iterations=args.iterations, local_nodes=args.local_nodes,
                                 num_cores=None, stream=sys.stderr)
    rows = [("plain mrjob (one job per iteration)", "vanilla"),
            ("hcollectives, speculative", "hcollectives"),
            ("hcollectives, --no-speculative", "hcollectives_no_speculative")]
    base = result["vanilla"]["steady_median_s"]
    print()
    print(f"{'K-means':38} {'s/iteration (median)':>21} {'speedup':>8}  {'same centroids':>14}")
    for label, key in rows:
        r = result[key]
        same = "-" if key == "vanilla" else ("yes" if r["max_abs_diff_vs_vanilla"] < 1e-9 else "NO")
        print(f"{label:38} {r['steady_median_s']:>21.3f} {base / r['steady_median_s']:>7.2f}x  {same:>14}")
    return 0
