"""K-means with Map-AllReduce, one mapper call per input record (the "unchanged
mapper" story: an existing MRJob's mapper, as it was). key = cluster id,
value = [sum of points, count]. examples/kmeans.py is the same job vectorised
with parse_input + mapper_block.

    python examples/kmeans_records.py -r local --initial init.npy --max-iterations 20 \
        --result centroids.npy points.txt
"""

import numpy as np

from hcollectives import AllReduce, MRCollectiveJob


class MRKMeans(MRCollectiveJob):
    COLLECTIVE = AllReduce("sum")

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg("--tolerance", type=float, default=1e-6,
                              help="converged when no centroid moves more than this")

    def mapper_init(self):
        self.centroids = self.loop_data()

    def mapper(self, _, line):
        x = np.array(line.split(), float)
        c = int(((self.centroids - x) ** 2).sum(1).argmin())
        yield c, np.append(x, 1.0)

    def post_process(self, result):
        # A cluster that lost every point keeps its previous centroid (the
        # usual Lloyd convention), so the shape of the loop data never changes.
        previous = self.loop_data()  # inside post_process: this iteration's input
        new = previous.copy()
        for c, v in result.items():
            new[c] = v[:-1] / v[-1]
        return new

    def converged(self, previous, current):
        return np.abs(previous - current).max() < self.options.tolerance


if __name__ == "__main__":
    MRKMeans.run()
