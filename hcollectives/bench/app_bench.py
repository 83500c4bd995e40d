"""`hcollectives bench`: side-by-side measurements, JSON out.

Applications (K-means, MDS): plain mrjob (one MapReduce job per iteration,
examples/*_vanilla.py) against hcollectives (examples/kmeans.py, mds.py),
same data, same initial loop data, same iterations (convergence off), one
after the other in this process, on mrjob's local runner with 1..4 simulated
nodes or on the Hadoop mini-cluster (`--runner hadoop`), with the paper's
per-iteration breakdown (see breakdown.py).

Collectives (`--collectives`): AllReduce / AllGather of 1 KiB..64 MiB across
2 and 4 node daemons on loopback, the loopback bandwidth, and Open MPI
through mpi4py (same process counts and sizes), in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sys
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any, TextIO

from ..errors import ConfigurationError
from . import datagen
from .comparison import compare

# Which hcollectives variants each application is measured in, besides plain mrjob.
APP_WAYS = {
    "kmeans": ["vanilla", "hcollectives", "no_speculative", "no_fork_server", "records", "resident", "spark"],
    "mds": ["vanilla", "hcollectives", "no_speculative", "no_input_cache", "no_fork_server", "resident"],
}
# On a cluster the fork server is opt-in and mrjob's HDFS calls are the other lever.
HADOOP_WAYS = {
    "kmeans": ["vanilla", "hcollectives", "no_speculative", "hadoop_fs_client", "fork_server", "resident"],
    "mds": ["vanilla", "hcollectives", "no_speculative", "no_input_cache", "hadoop_fs_client", "fork_server",
            "resident"],
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--apps", default="kmeans,mds", help="comma-separated: kmeans, mds (default both)")
    parser.add_argument("--runner", choices=["local", "hadoop"], default="local",
                        help="mrjob runner; hadoop needs a cluster (make minicluster; . .minicluster/env.sh)")
    parser.add_argument("--local-nodes", default="1,2,4", help="comma-separated simulated node counts (local runner)")
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--ways", help="comma-separated subset of the ways to run (default: all for the runner: "
                        f"local {','.join(APP_WAYS['mds'])}; hadoop {','.join(HADOOP_WAYS['mds'])})")
    add_data_arguments(parser)
    parser.add_argument("--num-cores", type=int, default=None, help="mrjob local runner parallelism")
    parser.add_argument("--collectives", action="store_true",
                        help="also time AllReduce/AllGather across 2 and 4 daemons, loopback and Open MPI")
    parser.add_argument("--skip-apps", action="store_true", help="only the collectives micro-benchmark")
    parser.add_argument("--out", help="write the JSON here too")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The generated inputs' sizes (read by make_data), shared with `hcollectives demo`."""
    parser.add_argument("--points", type=int, default=20000, help="K-means points")
    parser.add_argument("--dims", type=int, default=8, help="K-means dimensions")
    parser.add_argument("--clusters", type=int, default=8, help="K-means clusters")
    parser.add_argument("--mds-n", type=int, default=1000, help="MDS points (the distance matrix is N x N)")
    parser.add_argument("--splits", type=int, default=4, help="input files = map tasks per iteration")


def quiet_mrjob() -> None:
    """mrjob warns on every runner that no mrjob.conf exists; in a benchmark or
    demo that is one noise line per iteration."""
    logging.getLogger("mrjob").setLevel(logging.ERROR)


def runner_args(runner: str, num_cores: int | None = None) -> list[str]:
    if runner == "hadoop":
        # Both ways run exactly as a user would: a bare -r hadoop with the
        # cluster's mrjob.conf (hadoop_bin, streaming jar, python_bin, ...).
        from mrjob.conf import find_mrjob_conf

        if not find_mrjob_conf():
            raise ConfigurationError("--runner hadoop runs jobs with a bare -r hadoop and the cluster's mrjob.conf, "
                                     "and mrjob finds none ($MRJOB_CONF, ~/.mrjob.conf, /etc/mrjob.conf): start the "
                                     "mini-cluster (make minicluster) and source .minicluster/env.sh")
        return ["-r", "hadoop"]
    return ["-r", "local"] + (["--num-cores", str(num_cores)] if num_cores else [])


def make_data(app: str, directory: str, args: argparse.Namespace) -> tuple[datagen.Dataset, dict[str, Any]]:
    if app == "kmeans":
        data = datagen.kmeans(directory, points=args.points, dims=args.dims, clusters=args.clusters,
                              splits=args.splits, seed=0)
        return data, {"points": args.points, "dims": args.dims, "clusters": args.clusters, "splits": args.splits}
    data = datagen.mds(directory, n=args.mds_n, splits=args.splits, seed=0)
    return data, {"n": args.mds_n, "dims": 3, "splits": args.splits}


def main(args: argparse.Namespace) -> int:
    quiet_mrjob()
    stream = None if args.quiet else sys.stderr
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "command": "hcollectives bench " + " ".join(sys.argv[2:]),
    }
    try:
        if args.collectives:
            report["collectives"] = _collectives_section(stream)
        if not args.skip_apps:
            for app in [a for a in args.apps.split(",") if a]:
                if app not in APP_WAYS:
                    raise ConfigurationError(f"--apps: unknown application {app!r} (kmeans, mds)")
                report[app] = _app_section(app, args, stream)
    except ConfigurationError as exc:
        print(f"hcollectives bench: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


def ways_for(app: str, runner: str, chosen: str | None) -> list[str]:
    """The ways to measure *app* in: all that apply to *runner*, or the *chosen* ones among them."""
    available = (HADOOP_WAYS if runner == "hadoop" else APP_WAYS)[app]
    if not chosen:
        return available
    wanted = [w for w in chosen.split(",") if w]
    unknown = [w for w in wanted if w not in available]
    if unknown or not wanted:
        raise ConfigurationError(f"--ways: {', '.join(unknown) or 'none given'}; {app} on the {runner} runner "
                                 f"has {', '.join(available)}")
    return wanted


def _app_section(app: str, args: argparse.Namespace, stream: TextIO | None) -> dict[str, Any]:
    extra = runner_args(args.runner, args.num_cores)
    ways = ways_for(app, args.runner, args.ways)
    with tempfile.TemporaryDirectory(prefix="hcollectives-bench-") as tmp:
        data, described = make_data(app, tmp, args)
        section: dict[str, Any] = {"data": described | {"iterations": args.iterations}, "runner": args.runner,
                                   "runner_args": extra}
        if args.runner == "hadoop":
            with inputs_on_hdfs(data.inputs, stream) as inputs:
                section["hadoop"] = compare(app, inputs=inputs, initial=data.initial, iterations=args.iterations,
                                            ways=ways, runner_args=extra, local_nodes=1, stream=stream)
            return section
        for n in [int(x) for x in args.local_nodes.split(",") if x]:
            section[f"local_nodes_{n}"] = compare(app, inputs=data.inputs, initial=data.initial,
                                                  iterations=args.iterations, ways=ways,
                                                  runner_args=extra, local_nodes=n, stream=stream)
    return section


@contextlib.contextmanager
def inputs_on_hdfs(inputs: list[str], stream: TextIO | None) -> Iterator[list[str]]:
    """The input files uploaded once to the cluster's HDFS (removed afterwards), as
    inputs live on a real cluster; otherwise mrjob would upload them for every
    iteration's job, in both ways."""
    from ..hadoop.mrjob_hdfs import NativeHDFSFilesystem, default_authority

    authority = default_authority()
    if authority is None:
        raise ConfigurationError("--runner hadoop: no hdfs:// fs.defaultFS in $HADOOP_CONF_DIR/core-site.xml")
    fs = NativeHDFSFilesystem(authority)
    base = f"hdfs://{authority}/tmp/hcollectives-bench-{uuid.uuid4().hex[:8]}"
    if stream is not None:
        print(f"uploading {len(inputs)} input files to {base}", file=stream, flush=True)
    try:
        for path in inputs:
            fs.put(path, f"{base}/{os.path.basename(path)}")
        yield [f"{base}/*"]  # one input path: mrjob checks each path before every job
    finally:
        fs.rm(base)


def _collectives_section(stream: TextIO | None) -> dict[str, Any]:
    from . import collective_bench
    from . import mpi_bench

    if stream is not None:
        print("collectives: AllReduce and AllGather across 2 and 4 node daemons on loopback", file=stream)
    out = collective_bench.run()
    reason = mpi_bench.mpi_available()
    if reason:
        out["mpi"] = {"skipped": reason}
    else:
        if stream is not None:
            print("collectives: the same with Open MPI (mpi4py, --mca btl tcp,self)", file=stream)
        sizes = sorted({row["bytes"] for row in out["collectives"]})
        out["mpi"] = [mpi_bench.run_mpi_bench(n, sizes, 5, 600) for n in (2, 4)]
        out["side_by_side"] = collective_bench.side_by_side(out["collectives"], out["mpi"])
    if stream is not None:
        print("collectives: a task's 1 KiB contribution and the result back, one node", file=stream)
    out["task_round_trip"] = collective_bench.round_trip()
    if stream is not None:
        if "side_by_side" in out:
            print(collective_bench.format_table(out["side_by_side"]), file=stream)
        rt = out["task_round_trip"]
        print(f"task round trip, 1 KiB, one node: median {rt['median_s'] * 1e3:.3f} ms, "
              f"min {rt['min_s'] * 1e3:.3f} ms; loopback {out['loopback_gib_per_s']:.2f} GiB/s", file=stream)
    return out
