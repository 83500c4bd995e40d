"""SMACOF MDS as plain mrjob, one MapReduce job per iteration: the baseline.

Written the way a competent mrjob user writes it today: the configuration X
travels to every task as a file (Hadoop's distributed cache), the mapper
computes its rows of the Guttman transform X_new = (1/N) B(X) X and emits
``(i, X_new[i])``, and the driver reads the job's output, assembles X_new by
row index and starts the next job. The job is map-only: every row is final
when the mapper emits it, so a shuffle and reducer would only add work. The
mapper does exactly the arithmetic of examples/mds.py, so comparing the two
measures the runtime, not the code.

    python examples/mds_vanilla.py -r local --initial mds-init.npy \\
        --max-iterations 30 --result x.npy distances-*.txt
"""

import os
import sys
import tempfile
import time

import numpy as np
from mrjob.job import MRJob
from mrjob.protocol import JSONProtocol


def guttman_row(i, delta_i, x):
    """Row i of (1/N) B(X) X, from row i of delta and the whole X (numpy over one row)."""
    d = np.sqrt(((x - x[i]) ** 2).sum(1))  # d_ij(X) for every j; d_ii == 0 exactly
    b = np.zeros_like(d)
    nonzero = d != 0
    b[nonzero] = -delta_i[nonzero] / d[nonzero]
    b[i] = -b.sum()  # b[i] was 0 (d_ii == 0), so this is -sum_{j != i} b_ij
    return (b @ x) / len(x)


class MRMDSStep(MRJob):
    OUTPUT_PROTOCOL = JSONProtocol

    def configure_args(self):
        super().configure_args()
        self.add_file_arg("--x", help=".npy file with this iteration's configuration X")

    def mapper_init(self):
        self.x = np.load(self.options.x, allow_pickle=False)

    def mapper(self, _, line):
        row = np.array(line.split(), float)
        i = int(row[0])
        if len(row) - 1 != len(self.x):
            raise ValueError(f"row {i} has {len(row) - 1} distances but X has {len(self.x)} rows")
        yield i, guttman_row(i, row[1:], self.x).tolist()


def iterate(args, initial, max_iterations, tolerance=1e-6, stream=sys.stderr):
    """Run up to *max_iterations* jobs; returns (X, iterations, converged, seconds per iteration).

    Converged, as in examples/mds.py: ||X_new - X|| / ||X|| (Frobenius) < *tolerance*."""
    x = np.asarray(initial, float)
    times = []
    with tempfile.TemporaryDirectory(prefix="mds-vanilla-") as tmp:
        for i in range(1, max_iterations + 1):
            t0 = time.perf_counter()
            path = os.path.join(tmp, f"x-{i}.npy")
            np.save(path, x, allow_pickle=False)
            job = MRMDSStep(args=[*args, "--x", path])
            new = np.full_like(x, np.nan)
            seen = np.zeros(len(x), bool)
            with job.make_runner() as runner:
                runner.run()
                for row, v in job.parse_output(runner.cat_output()):
                    new[row] = v
                    seen[row] = True
            if not seen.all():
                raise RuntimeError(f"iteration {i}: no output for row(s) {np.flatnonzero(~seen)[:10].tolist()}")
            times.append(time.perf_counter() - t0)
            converged = bool(np.linalg.norm(new - x) < tolerance * np.linalg.norm(x))
            x = new
            if stream is not None:
                print(f"iteration {i:4d}  {times[-1]:8.3f} s  {'converged' if converged else ''}".rstrip(),
                      file=stream, flush=True)
            if converged:
                return x, i, True, times
    return x, max_iterations, False, times


def main(argv):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--initial", required=True)
    parser.add_argument("--max-iterations", type=int, default=10)
    parser.add_argument("--result")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    known, rest = parser.parse_known_args(argv)
    x, iterations, converged, times = iterate(rest, np.load(known.initial), known.max_iterations, known.tolerance)
    if known.result:
        np.save(known.result, x, allow_pickle=False)
    print(f"{iterations} iteration(s), {'converged' if converged else 'did not converge'}; "
          f"mean {np.mean(times):.3f} s per iteration", file=sys.stderr)


if __name__ == "__main__":
    if any(a in sys.argv for a in ("--mapper", "--combiner", "--reducer", "--step-num")):
        MRMDSStep.run()  # a task of one iteration's job
    else:
        main(sys.argv[1:])
