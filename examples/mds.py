"""SMACOF multidimensional scaling with Map-AllGather (unweighted Guttman transform).

Input lines are ``i d_i0 d_i1 ... d_i(N-1)``: row i of the N x N distance
matrix delta. The loop data is the configuration X (N x dims). Each map task
computes its rows of the Guttman transform

    X_new = (1/N) B(X) X,   B_ij = -delta_ij / d_ij(X)  (i != j, d_ij(X) != 0; else 0),
                            B_ii = -sum_{j != i} B_ij,

and emits ``(i, X_new[i])``; AllGather hands every node the whole X_new (rows
ordered by i), which is already the next iteration's X.

The stress sigma(X) = sum_{i<j} (delta_ij - d_ij(X))^2 needs delta, which
only the map tasks see, so it is not computed inside the loop; `stress()`
computes it afterwards. Convergence is judged on X instead: the run stops when
||X_new - X|| / ||X|| (Frobenius) drops below --tolerance (0 runs exactly
--max-iterations).

    python examples/mds.py -r local --initial mds-init.npy --max-iterations 30 \\
        --result x.npy distances-*.txt
"""

import numpy as np

from hcollectives import AllGather, ConfigurationError, MRCollectiveJob


def guttman_row(i, delta_i, x):
    """Row i of (1/N) B(X) X, from row i of delta and the whole X (numpy over one row)."""
    d = np.sqrt(((x - x[i]) ** 2).sum(1))  # d_ij(X) for every j; d_ii == 0 exactly
    b = np.zeros_like(d)
    nonzero = d != 0
    b[nonzero] = -delta_i[nonzero] / d[nonzero]
    b[i] = -b.sum()  # b[i] was 0 (d_ii == 0), so this is -sum_{j != i} b_ij
    return (b @ x) / len(x)


def guttman_rows(index, delta_rows, x):
    """guttman_row for several rows at once: rows `index` of (1/N) B(X) X."""
    d = np.sqrt(((x[None, :, :] - x[index][:, None, :]) ** 2).sum(-1))  # d_ij(X); d_ii == 0 exactly
    b = np.zeros_like(d)
    nonzero = d != 0
    b[nonzero] = -delta_rows[nonzero] / d[nonzero]
    b[np.arange(len(index)), index] = -b.sum(1)  # b_ii was 0 (d_ii == 0): -sum_{j != i} b_ij
    return (b @ x) / len(x)


def stress(delta, x):
    """Raw stress sigma(X) = sum_{i<j} (delta_ij - d_ij(X))^2 (sklearn's normalized_stress=False)."""
    delta, x = np.asarray(delta, float), np.asarray(x, float)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    return float(((delta - d) ** 2)[np.triu_indices(len(x), 1)].sum())


def load_delta(paths):
    """The distance matrix from ``i d_i0 ...`` files (rows placed by their index)."""
    rows = np.concatenate([np.loadtxt(p, ndmin=2) for p in paths])
    delta = np.empty((len(rows), rows.shape[1] - 1))
    delta[rows[:, 0].astype(int)] = rows[:, 1:]
    return delta


class MRMDS(MRCollectiveJob):
    COLLECTIVE = AllGather()

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg("--tolerance", type=float, default=1e-6,
                              help="converged when ||X_new - X|| / ||X|| (Frobenius) is below this")

    def mapper_init(self):
        self.x = self.loop_data()

    def parse_input(self, line):
        # Loop-invariant: each machine parses a split once; later iterations'
        # tasks get these rows from its cache (memory-mapped, read-only).
        return np.array(line.split(), float)

    def mapper_block(self, rows):  # rows: this split's parse_input rows, [i, delta_i0, ...] (read-only)
        if rows.shape[1] - 1 != len(self.x):
            raise ConfigurationError(f"rows have {rows.shape[1] - 1} distances but X has {len(self.x)} rows")
        index = rows[:, 0].astype(int)
        # Blocks of rows at a time: numpy over (rows x N x dims) instead of a
        # Python call per row, with the memory per block bounded.
        for start in range(0, len(rows), 256):
            i = index[start:start + 256]
            yield from zip(i.tolist(), guttman_rows(i, rows[start:start + 256, 1:], self.x))

    def post_process(self, x_new):
        # AllGather already ordered the rows by index: the gathered matrix is
        # the next X. A row that went missing would silently shift the rows
        # after it, so insist on the full shape.
        previous = self.loop_data()
        if x_new.shape != previous.shape:
            raise ConfigurationError(f"gathered X has shape {x_new.shape}, expected {previous.shape}: "
                             "is every row 0..N-1 in the input exactly once?")
        return x_new

    def converged(self, previous, current):
        return np.linalg.norm(current - previous) < self.options.tolerance * np.linalg.norm(previous)


if __name__ == "__main__":
    MRMDS.run()
