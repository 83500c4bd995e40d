#!/usr/bin/env python3
"""SMACOF MDS (the B(X) X step) as a plain Hadoop-streaming mapper, for Map-AllGather.

Input lines are ``i d_i0 d_i1 ... d_i(N-1)`` (row i of the distance matrix
delta); X (N x dims) comes from the .npy named by $HCOLLECTIVES_LOOP_DATA.
Output: ``i<TAB>x_new_i...``, row i of the Guttman transform
X_new = (1/N) B(X) X. The built-in AllGather post-process (the gathered
matrix, rows ordered by i) is already the next X, so no --post-process:

    hcollectives run --mapper "python mappers/mds_bc_mapper.py" --allgather \\
        --initial mds-init.npy --max-iterations 30 --result x.npy distances-*.txt

(``--tolerance T`` there stops on the max absolute change of X.)
"""

import os
import sys

import numpy as np


def guttman_row(i, delta_i, x):
    """Row i of (1/N) B(X) X, from row i of delta and the whole X (numpy over one row)."""
    d = np.sqrt(((x - x[i]) ** 2).sum(1))  # d_ij(X) for every j; d_ii == 0 exactly
    b = np.zeros_like(d)
    nonzero = d != 0
    b[nonzero] = -delta_i[nonzero] / d[nonzero]
    b[i] = -b.sum()  # b[i] was 0 (d_ii == 0), so this is -sum_{j != i} b_ij
    return (b @ x) / len(x)


def map_rows(stdin, stdout, x):
    for line in stdin:
        if not line.strip():
            continue
        row = np.array(line.split(), float)
        i = int(row[0])
        if len(row) - 1 != len(x):
            sys.exit(f"mds_bc_mapper: row {i} has {len(row) - 1} distances but X has {len(x)} rows")
        stdout.write(f"{i}\t{' '.join(map(repr, guttman_row(i, row[1:], x).tolist()))}\n")


if __name__ == "__main__":
    map_rows(sys.stdin, sys.stdout, np.load(os.environ["HCOLLECTIVES_LOOP_DATA"], allow_pickle=False))
