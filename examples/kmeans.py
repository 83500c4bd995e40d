"""K-means with Map-AllReduce, vectorised: key = cluster id, value = [sum of points, count].

`parse_input` turns each line into a row once per machine (later iterations
reuse the parsed split), and `mapper_block` assigns the whole split at once
with numpy instead of one Python call per point. The same job with a
per-record mapper: examples/kmeans_records.py.

    python examples/kmeans.py -r local --initial init.npy --max-iterations 20 \\
        --result centroids.npy points.txt            # add --resident: one job for the whole loop
"""

import numpy as np

from hcollectives import AllReduce, MRCollectiveJob


class MRKMeans(MRCollectiveJob):
    COLLECTIVE = AllReduce("sum")

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg("--tolerance", type=float, default=1e-6,
                              help="converged when no centroid moves more than this")

    def parse_input(self, line):
        return np.array(line.split(), float)

    def mapper_init(self):
        self.centroids = self.loop_data()  # --initial, or the last post_process result

    def mapper_block(self, rows):  # rows: the split, one point per row (read-only)
        c = self.centroids
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is the same for every
        # centroid, so the argmin only needs the last two terms (one matrix product).
        labels = (rows @ (-2.0 * c.T) + (c * c).sum(1)).argmin(1)
        # Per-cluster sums, one bincount per dimension: sequential sums in row
        # order (the same bits as adding record by record), 4x faster than np.add.at.
        sums = np.empty((len(c), rows.shape[1] + 1))
        for d in range(rows.shape[1]):
            sums[:, d] = np.bincount(labels, weights=rows[:, d], minlength=len(c))
        sums[:, -1] = np.bincount(labels, minlength=len(c))
        for k in np.flatnonzero(sums[:, -1]):
            yield int(k), sums[k]

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
