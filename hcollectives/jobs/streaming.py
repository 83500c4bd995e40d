"""Streaming front end, driver side: ``hcollectives run`` iterates a streaming
mapper (wrapped by ``hcollectives wrap``, see wrap.py) on any mrjob runner."""

from __future__ import annotations

import argparse
import shlex
import sys

import numpy as np
from mrjob.job import MRJob
from mrjob.step import MRStep

from ..errors import HCollectivesError
from ..driver.mrjob_launcher import PYTHON_BIN, MRJobLauncher, collective_runner_class
from ..driver.options import check_output_path, load_initial, loop_options_from_args
from .wrap import StreamingPostProcess, collective_from_args, write_result


class StreamingCollectiveJob(MRJob):
    """A one-step, map-only mrjob job whose mapper is `hcollectives wrap -- CMD`."""

    def configure_args(self) -> None:
        super().configure_args()
        self.arg_parser.add_argument("--hc-mapper-command", dest="hc_mapper_command")

    def steps(self) -> list[MRStep]:
        return [MRStep(mapper_cmd=self.options.hc_mapper_command)]

    def _runner_class(self):
        return collective_runner_class(self.options.runner or "local")


def wrap_command(args: argparse.Namespace, python_bin: str) -> str:
    parts = [python_bin, "-m", "hcollectives", "wrap"]
    parts += ["--allgather"] if args.allgather else ["--allreduce", args.allreduce]
    if args.post_process:
        parts += ["--post-process", args.post_process]
    if args.tolerance is not None:
        parts += ["--tolerance", repr(args.tolerance)]
    if args.allow_nonfinite:
        parts.append("--allow-nonfinite")
    return shlex.join(parts + ["--"] + shlex.split(args.mapper))


def run_main(args: argparse.Namespace, mrjob_args: list[str]) -> int:
    from ..driver.loop import IterativeDriver

    collective = collective_from_args(args)
    post = StreamingPostProcess(collective, args.post_process, args.tolerance)
    runner = args.runner or "local"
    # By default the runner puts mrjob's own python_bin in place of PYTHON_BIN
    # (the cluster's mrjob.conf, or mrjob's --python-bin after `--`); the inline
    # runner runs commands without one.
    python_bin = args.python_bin or (sys.executable if runner == "inline" else PYTHON_BIN)
    job = StreamingCollectiveJob(args=["-r", runner, "--hc-mapper-command", wrap_command(args, python_bin),
                                       *(["-q"] if args.quiet else []), *mrjob_args, *args.inputs])
    options = loop_options_from_args(args, collective, runner=runner, progress=not args.quiet,
                                     hadoop_tmp_dir=getattr(job.options, "hadoop_tmp_dir", None))
    initial = load_initial(args.initial) if args.initial else np.zeros((0,))
    driver = IterativeDriver(options, MRJobLauncher(job), post_process=post, converged=post.converged,
                             initial=initial)
    try:
        check_output_path(args.result)  # before iteration 1, not after the last
        outcome = driver.run()
    except HCollectivesError as exc:
        print(f"hcollectives: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)  # 128 + signal after RunInterrupted
    if args.result and outcome.result is not None:
        write_result(args.result, collective, outcome.result)
    if not args.quiet:
        print(outcome.summary(args.result), file=sys.stderr)
    return 0
