"""A cheap job whose loop data and collective result are both 1 MiB (soak tests).

Input lines are row indices 0..1023; the loop data is 1024 x 128 float64.
Each record emits its row of the loop data, halved plus one (so it moves
every iteration and converges towards 2 without ever reaching --tolerance 0).
--gather uses Map-AllGather (the result is the whole matrix), otherwise
Map-AllReduce sum (each key comes from exactly one record).
"""

import sys

import numpy as np

from hcollectives import AllGather, AllReduce, MRCollectiveJob


class MRSoak(MRCollectiveJob):
    COLLECTIVE = AllGather() if "--gather" in sys.argv else AllReduce("sum")

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg("--gather", action="store_true")

    def mapper_init(self):
        self.x = self.loop_data()

    def mapper(self, _, line):
        i = int(line)
        yield i, self.x[i] * 0.5 + 1.0

    def post_process(self, result):
        if isinstance(result, dict):
            return np.array([result[k] for k in sorted(result)])
        return np.asarray(result)

    def converged(self, previous, current):
        return False


if __name__ == "__main__":
    MRSoak.run()
