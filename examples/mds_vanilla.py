"""SMACOF MDS as plain mrjob, one MapReduce job per iteration: the baseline.

Written the way a competent mrjob user writes it today: the configuration X
travels to every task as a file (Hadoop's distributed cache); the mapper
computes its rows of the Guttman transform X_new = (1/N) B(X) X and emits
each one under the single key ``"X"`` as ``[[i, X_new[i]]]`` (a list of
``[row index, row]`` pairs); a combiner concatenates a map task's lists into
one record, so the shuffle carries one record per map task; the reducer
concatenates those, checks that every row 0..N-1 arrived exactly once
(failing the job with the missing / duplicated row indices otherwise) and
emits the whole X_new as one record; the driver reads that record and starts
the next job with it. The combiner's output has the type of its input, so
Hadoop may run it any number of times, or not at all. The mapper does exactly
the arithmetic of examples/mds.py, so comparing the two measures the runtime,
not the code. Everything crosses the shuffle as JSON (Python floats
round-trip exactly), never pickle.

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

KEY = "X"  # every row goes to one reducer, which assembles the whole X_new


def guttman_row(i, delta_i, x):
    """Row i of (1/N) B(X) X, from row i of delta and the whole X (numpy over one row)."""
    d = np.sqrt(((x - x[i]) ** 2).sum(1))  # d_ij(X) for every j; d_ii == 0 exactly
    b = np.zeros_like(d)
    nonzero = d != 0
    b[nonzero] = -delta_i[nonzero] / d[nonzero]
    b[i] = -b.sum()  # b[i] was 0 (d_ii == 0), so this is -sum_{j != i} b_ij
    return (b @ x) / len(x)


def _indices(rows, limit=20):
    rows = [int(r) for r in rows]
    shown = ", ".join(map(str, rows[:limit]))
    return f"[{shown}{f', ... ({len(rows)} in all)' if len(rows) > limit else ''}]"


def assemble(pairs, n):
    """X_new from ``[i, row]`` pairs; ValueError unless every row 0..n-1 is there exactly once."""
    index = np.fromiter((p[0] for p in pairs), int, len(pairs))
    inside = (index >= 0) & (index < n)
    counts = np.bincount(index[inside], minlength=n)
    problems = []
    if (counts == 0).any():
        problems.append(f"missing row(s) {_indices(np.flatnonzero(counts == 0))}")
    if (counts > 1).any():
        problems.append(f"duplicated row(s) {_indices(np.flatnonzero(counts > 1))}")
    if not inside.all():
        problems.append(f"row index(es) outside 0..{n - 1}: {_indices(sorted(set(index[~inside].tolist())))}")
    if problems:
        raise ValueError(f"X_new is not {n} rows: {'; '.join(problems)} "
                         "(is every row 0..N-1 in the input exactly once?)")
    x_new = np.empty((n, len(pairs[0][1])))
    x_new[index] = [p[1] for p in pairs]
    return x_new


class MRMDSStep(MRJob):
    INTERNAL_PROTOCOL = JSONProtocol
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
        yield KEY, [[i, guttman_row(i, row[1:], self.x).tolist()]]

    def combiner(self, key, lists):
        yield key, [pair for pairs in lists for pair in pairs]

    def reducer_init(self):
        self.n = len(np.load(self.options.x, allow_pickle=False))

    def reducer(self, key, lists):
        pairs, records = [], 0
        for part in lists:
            pairs.extend(part)
            records += 1
        # One record per map task when the combiner ran: > 1 means rows of
        # several tasks were combined here.
        self.increment_counter("mds_vanilla", "reducer input records", records)
        yield key, assemble(pairs, self.n).tolist()


def iterate(args, initial, max_iterations, tolerance=1e-6, stream=sys.stderr):
    """Run up to *max_iterations* jobs; returns (X, iterations, converged, seconds per iteration).

    Converged, as in examples/mds.py: ||X_new - X|| / ||X|| (Frobenius) < *tolerance*.
    A job that fails (a row missing from the input, say) raises mrjob's
    StepFailedException; the task's error is in mrjob's log ("Probable cause of failure")."""
    x = np.asarray(initial, float)
    times = []
    with tempfile.TemporaryDirectory(prefix="mds-vanilla-") as tmp:
        for i in range(1, max_iterations + 1):
            t0 = time.perf_counter()
            path = os.path.join(tmp, f"x-{i}.npy")
            np.save(path, x, allow_pickle=False)
            job = MRMDSStep(args=[*args, "--x", path])
            with job.make_runner() as runner:
                runner.run()
                records = list(job.parse_output(runner.cat_output()))
            if len(records) != 1 or records[0][0] != KEY:
                raise RuntimeError(f"iteration {i}: expected one output record {KEY!r} (the whole X_new), "
                                   f"got {len(records)}{' (is the input empty?)' if not records else ''}")
            new = np.asarray(records[0][1], float)
            if new.shape != x.shape:
                raise RuntimeError(f"iteration {i}: X_new has shape {new.shape}, expected {x.shape}")
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
