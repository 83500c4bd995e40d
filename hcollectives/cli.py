"""The `hcollectives` command: wrap, run, node, demo, bench, datagen."""

from __future__ import annotations

import argparse
import sys

from .errors import HCollectivesError


def build_parser() -> argparse.ArgumentParser:
    from .services import node_main
    from .jobs import wrap as wrap_module

    parser = argparse.ArgumentParser(prog="hcollectives",
                                     description="MPI-style collectives for Hadoop streaming and mrjob jobs.")
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    wrap = sub.add_parser("wrap", help="run a streaming mapper as a collective map task",
                          description="Run inside a Hadoop-streaming map task: hcollectives wrap "
                                      "(--allreduce OP | --allgather) -- CMD ARGS...")
    wrap_module.add_collective_arguments(wrap)
    wrap.add_argument("mapper_command", nargs=argparse.REMAINDER, help="-- then the mapper command")

    run = sub.add_parser("run", help="drive the iterations of a streaming mapper",
                         description="Iterate a streaming mapper with a collective on an mrjob runner. "
                                     "Options for mrjob itself go after a final `--`, e.g. "
                                     "`hcollectives run ... points.txt -- --num-cores 2`.")
    add_run_arguments(run)

    node = sub.add_parser("node", help="run a node daemon (as a per-node service)")
    node_main.add_arguments(node)

    demo = sub.add_parser("demo", help="the main job: K-means with and without hcollectives")
    from .bench import demo as demo_module
    demo_module.add_arguments(demo)

    bench = sub.add_parser("bench", help="benchmarks, JSON out")
    from .bench import app_bench as bench_module
    bench_module.add_arguments(bench)

    datagen = sub.add_parser("datagen", help="generate reproducible inputs")
    from .bench import datagen as datagen_module
    datagen_module.add_arguments(datagen)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    # Defined here, not in jobs/streaming.py: every streaming task builds this
    # parser (for `wrap`), and streaming.py imports mrjob, which tasks do not need.
    from .driver.options import add_loop_arguments
    from .jobs.wrap import add_collective_arguments

    parser.add_argument("-r", "--runner", default="local", help="mrjob runner: local, hadoop, inline (default local)")
    parser.add_argument("--mapper", required=True, metavar="CMD", help="the streaming mapper command")
    add_collective_arguments(parser)
    add_loop_arguments(parser)
    parser.add_argument("--python-bin", help="python that runs `hcollectives wrap` in tasks (default: mrjob's "
                        "python_bin, from the cluster's mrjob.conf or mrjob's --python-bin after --)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    parser.add_argument("inputs", nargs="+", metavar="INPUT")


# Each command's module is imported only when it runs: `wrap` starts in every
# streaming map task and must not pay for mrjob or trio.
_COMMANDS = {
    "wrap": ("hcollectives.jobs.wrap", "wrap_main"),
    "run": ("hcollectives.jobs.streaming", "run_main"),
    "node": ("hcollectives.services.node_main", "run"),
    "demo": ("hcollectives.bench.demo", "main"),
    "bench": ("hcollectives.bench.app_bench", "main"),
    "datagen": ("hcollectives.bench.datagen", "main"),
}


def main(argv: list[str] | None = None) -> int:
    import importlib

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    extra: list[str] = []
    if argv[:1] == ["run"] and "--" in argv:
        # `hcollectives run ... INPUT... -- MRJOB OPTIONS`: mrjob's own options go
        # after "--", so one taking a value (--num-cores 2) is never read as an input.
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if args.subcommand == "wrap":
        command = args.mapper_command
        args.command = command[1:] if command[:1] == ["--"] else command
    module_name, function = _COMMANDS[args.subcommand]
    module = importlib.import_module(module_name)
    entry = getattr(module, function)
    try:
        return entry(args, extra) if args.subcommand == "run" else entry(args)
    except HCollectivesError as exc:
        print(f"hcollectives {args.subcommand}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)  # 128 + signal after RunInterrupted
