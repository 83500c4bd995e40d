"""Power iteration with Map-AllGather: each task computes its rows of y = A x.

Input lines are ``i a_i0 a_i1 ... a_i(n-1)`` (row i of A). Every node receives
the whole y, normalises it once (post_process) and the next iteration's tasks
multiply by the new x. Converges to A's dominant eigenvector.

    python examples/power_iteration.py -r local --initial x0.npy \
        --max-iterations 50 --result x.npy matrix.txt
"""

import numpy as np

from hcollectives import AllGather, MRCollectiveJob


class MRPowerIteration(MRCollectiveJob):
    COLLECTIVE = AllGather()

    def mapper_init(self):
        self.x = self.loop_data()

    def mapper(self, _, line):
        row = np.array(line.split(), float)
        yield int(row[0]), [row[1:] @ self.x]

    def post_process(self, y):
        y = y[:, 0]
        return y / np.linalg.norm(y)

    def converged(self, previous, current):
        return np.abs(previous - current).max() < 1e-10


if __name__ == "__main__":
    MRPowerIteration.run()
