"""K-means as plain mrjob, one MapReduce job per iteration: the baseline.

Written the way a competent mrjob user writes it today: the centroids travel
to every task as a file (Hadoop's distributed cache), a combiner sums points
per cluster inside each map task, a reducer sums the partial sums, and the
driver reads the job's output, computes the new centroids and starts the next
job. The mapper does exactly the arithmetic of examples/kmeans.py, so comparing
the two measures the runtime, not the code.

    python examples/kmeans_vanilla.py -r local --initial init.npy \
        --max-iterations 20 --result centroids.npy points.txt
"""

import os
import sys
import tempfile
import time

import numpy as np
from mrjob.job import MRJob
from mrjob.protocol import JSONProtocol


class MRKMeansStep(MRJob):
    INTERNAL_PROTOCOL = JSONProtocol
    OUTPUT_PROTOCOL = JSONProtocol

    def configure_args(self):
        super().configure_args()
        self.add_file_arg("--centroids", help=".npy file with this iteration's centroids")

    def mapper_init(self):
        self.centroids = np.load(self.options.centroids, allow_pickle=False)

    def mapper(self, _, line):
        x = np.array(line.split(), float)
        c = int(((self.centroids - x) ** 2).sum(1).argmin())
        yield c, np.append(x, 1.0).tolist()

    def combiner(self, c, values):
        yield c, np.sum([np.asarray(v) for v in values], axis=0).tolist()

    def reducer(self, c, values):
        yield c, np.sum([np.asarray(v) for v in values], axis=0).tolist()


def iterate(args, initial, max_iterations, tolerance=1e-6, stream=sys.stderr):
    """Run up to *max_iterations* jobs; returns (centroids, iterations, converged, seconds per iteration)."""
    centroids = np.asarray(initial, float)
    times = []
    with tempfile.TemporaryDirectory(prefix="kmeans-vanilla-") as tmp:
        for i in range(1, max_iterations + 1):
            t0 = time.perf_counter()
            path = os.path.join(tmp, f"centroids-{i}.npy")
            np.save(path, centroids, allow_pickle=False)
            job = MRKMeansStep(args=[*args, "--centroids", path])
            new = centroids.copy()  # an empty cluster keeps its centroid, as in examples/kmeans.py
            with job.make_runner() as runner:
                runner.run()
                for c, v in job.parse_output(runner.cat_output()):
                    v = np.asarray(v)
                    new[c] = v[:-1] / v[-1]
            times.append(time.perf_counter() - t0)
            converged = np.abs(centroids - new).max() < tolerance
            centroids = new
            if stream is not None:
                print(f"iteration {i:4d}  {times[-1]:8.3f} s  {'converged' if converged else ''}".rstrip(),
                      file=stream, flush=True)
            if converged:
                return centroids, i, True, times
    return centroids, max_iterations, False, times


def main(argv):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--initial", required=True)
    parser.add_argument("--max-iterations", type=int, default=10)
    parser.add_argument("--result")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    known, rest = parser.parse_known_args(argv)
    centroids, iterations, converged, times = iterate(rest, np.load(known.initial), known.max_iterations,
                                                      known.tolerance)
    if known.result:
        np.save(known.result, centroids, allow_pickle=False)
    print(f"{iterations} iteration(s), {'converged' if converged else 'did not converge'}; "
          f"mean {np.mean(times):.3f} s per iteration", file=sys.stderr)


if __name__ == "__main__":
    if any(a in sys.argv for a in ("--mapper", "--combiner", "--reducer", "--step-num")):
        MRKMeansStep.run()  # a task of one iteration's job
    else:
        main(sys.argv[1:])
