"""`hcollectives demo` (= `make demo`): the main job, end to end, on this machine.

Generates K-means and MDS data, runs each application as plain mrjob (one
MapReduce job per iteration) and with hcollectives (Map-AllReduce for
K-means, Map-AllGather for MDS, speculative scheduling, cached loop-invariant
input) on mrjob's local runner, printing each iteration as it finishes. At
the end: per-iteration times, the speedup, the paper's breakdown (scheduling,
data load, compute, map overhead, communication + reduction, cleanup) and a
PNG chart of that breakdown per iteration for both ways.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import Any

from .app_bench import add_data_arguments, make_data, quiet_mrjob, runner_args
from .breakdown import PARTS, RESIDENT_PARTS
from .comparison import APPS, compare

PART_LABELS = {"scheduling": "scheduling", "data_load": "data load", "compute": "compute",
               "map_overhead": "map overhead", "comm_reduction": "comm + reduction", "cleanup": "cleanup"}
RESIDENT_LABELS = {"waiting": "waiting", "post_process": "post_process", "compute": "compute",
                   "task_reduction": "task-level reduction", "collective": "collective"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--apps", default="kmeans,mds", help="comma-separated: kmeans, mds")
    parser.add_argument("--iterations", type=int, default=5)
    add_data_arguments(parser)
    parser.add_argument("--local-nodes", type=int, default=1, help="simulated nodes for hcollectives")
    parser.add_argument("--chart", default="demo-breakdown.png", help="where to write the PNG chart")
    parser.add_argument("--json", help="also write the measurements as JSON")


def main(args: argparse.Namespace) -> int:
    quiet_mrjob()
    results: dict[str, Any] = {}
    for app in [a for a in args.apps.split(",") if a]:
        with tempfile.TemporaryDirectory(prefix="hcollectives-demo-") as tmp:
            data, described = make_data(app, tmp, args)
            print(f"\n== {APPS[app].name}: {described}, {args.iterations} iterations, mrjob local runner",
                  file=sys.stderr)
            results[app] = compare(app, inputs=data.inputs, initial=data.initial, iterations=args.iterations,
                                   ways=["vanilla", "hcollectives", "resident"], runner_args=runner_args("local"),
                                   local_nodes=args.local_nodes, stream=sys.stderr)
            results[app]["data"] = described
    print()
    print(render_tables(results))
    if args.chart:
        write_chart(results, args.chart)
        print(f"\nchart: {args.chart}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def render_tables(results: dict[str, Any]) -> str:
    """Markdown tables: per-iteration times and speedups, then the mean breakdown."""
    lines = []
    for app, r in results.items():
        van, hc = r["vanilla"], r["hcollectives"]
        lines += [f"### {APPS[app].name}", "",
                  "| iteration | plain mrjob (s) | hcollectives (s) | speedup |", "|---:|---:|---:|---:|"]
        for i, (a, b) in enumerate(zip(van["per_iteration_s"], hc["per_iteration_s"]), 1):
            lines.append(f"| {i} | {a:.2f} | {b:.2f} | {a / b:.1f}x |")
        lines.append(f"| median of 2.. | {van['steady_median_s']:.2f} | {hc['steady_median_s']:.2f} "
                     f"| **{hc['speedup_vs_vanilla']:.1f}x** |")
        same = "same result" if hc["max_rel_diff_vs_vanilla"] < 1e-9 else "RESULTS DIFFER"
        lines += ["", f"Breakdown, mean seconds per iteration (2..), {same} "
                      f"(max relative difference {hc['max_rel_diff_vs_vanilla']:.1e}):", "",
                  "| | " + " | ".join(PART_LABELS[p] for p in PARTS) + " | total |",
                  "|---|" + "---:|" * (len(PARTS) + 1)]
        for label, w in (("plain mrjob", van), ("hcollectives", hc)):
            parts = w["breakdown_mean_s"]
            lines.append(f"| {label} | " + " | ".join(f"{parts[p]:.2f}" for p in PARTS)
                         + f" | {sum(parts.values()):.2f} |")
        if "resident" in r and "breakdown_mean_s" in r["resident"]:
            res = r["resident"]
            parts = res["breakdown_mean_s"]
            lines += ["", f"hcollectives --resident (one job for the loop): median {res['steady_median_s']:.2f} s "
                          f"per iteration, **{res['speedup_vs_vanilla']:.1f}x** plain mrjob; where its time goes "
                          "(mean seconds per iteration, 2..):", "",
                      "| | " + " | ".join(RESIDENT_LABELS[p] for p in RESIDENT_PARTS) + " | total |",
                      "|---|" + "---:|" * (len(RESIDENT_PARTS) + 1),
                      "| resident | " + " | ".join(f"{parts[p]:.3f}" for p in RESIDENT_PARTS)
                      + f" | {sum(parts.values()):.3f} |"]
        lines.append("")
    return "\n".join(lines)


def write_chart(results: dict[str, Any], path: str) -> None:
    """Stacked bars per iteration, plain mrjob and hcollectives side by side, one panel per app."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    colors = dict(zip(PARTS, ("#9e9e9e", "#4e79a7", "#59a14f", "#f28e2b", "#e15759", "#b07aa1")))
    fig, axes = plt.subplots(1, len(results), figsize=(6.5 * len(results), 4.5), squeeze=False)
    for ax, (app, r) in zip(axes[0], results.items()):
        ways = (("vanilla", "mrjob"), ("hcollectives", "hc"))
        n = len(r["vanilla"]["per_iteration_s"])
        width = 0.38
        for offset, (key, short) in zip((-width / 2, width / 2), ways):
            per = r[key]["breakdown_per_iteration_s"]
            bottom = [0.0] * n
            for part in PARTS:
                values = [per[str(i + 1)][part] if str(i + 1) in per else 0.0 for i in range(n)]
                ax.bar([i + 1 + offset for i in range(n)], values, width, bottom=bottom, color=colors[part],
                       edgecolor="white", linewidth=0.5, label=PART_LABELS[part] if key == "vanilla" else None)
                bottom = [b + v for b, v in zip(bottom, values)]
            for i, total in enumerate(bottom):
                ax.text(i + 1 + offset, total, short, ha="center", va="bottom", fontsize=7)
        ax.set_title(f"{APPS[app].name}: {r['hcollectives']['speedup_vs_vanilla']:.1f}x faster per iteration "
                     "(median, iterations 2..)")
        ax.set_xlabel("iteration (left: plain mrjob, right: hcollectives)")
        ax.set_ylabel("seconds")
        ax.set_xticks(range(1, n + 1))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(PARTS), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    resident = {app: r["resident"] for app, r in results.items() if "breakdown_per_iteration_s" in r.get("resident", {})}
    if resident:
        write_resident_chart(resident, path.replace(".png", "-resident.png") if path.endswith(".png")
                             else path + "-resident.png")


def write_resident_chart(resident: dict[str, Any], path: str) -> None:
    """Stacked bars per iteration of the resident runs: waiting, post_process, compute,
    task-level reduction, collective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = dict(zip(RESIDENT_PARTS, ("#9e9e9e", "#b07aa1", "#59a14f", "#f28e2b", "#e15759")))
    fig, axes = plt.subplots(1, len(resident), figsize=(6.5 * len(resident), 4.5), squeeze=False)
    for ax, (app, r) in zip(axes[0], resident.items()):
        per = r["breakdown_per_iteration_s"]
        iterations = sorted(int(i) for i in per)[1:]  # the first also starts the job and parses the input
        bottom = [0.0] * len(iterations)
        for part in RESIDENT_PARTS:
            values = [per[str(i)][part] for i in iterations]
            ax.bar(iterations, values, 0.6, bottom=bottom, color=colors[part], edgecolor="white", linewidth=0.5,
                   label=RESIDENT_LABELS[part])
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.set_title(f"{APPS[app].name}, --resident: where an iteration goes")
        ax.set_xlabel("iteration (the first, with job start and parsing, left out)")
        ax.set_ylabel("seconds")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(RESIDENT_PARTS), frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
