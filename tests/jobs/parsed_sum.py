"""A collective job with loop-invariant parsing (tests of the split cache).

Sums every parsed row (AllReduce). Each parse_input call appends a line to
$PARSE_LOG, so a test can count how often input was really parsed.
--bad-record N  parse_input fails on records whose first number is N
"""

import os

import numpy as np

from hcollectives import AllReduce, MRCollectiveJob


class MRParsedSum(MRCollectiveJob):
    COLLECTIVE = AllReduce("sum")

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg("--bad-record", type=float, default=None)

    def parse_input(self, line):
        with open(os.environ["PARSE_LOG"], "a") as log:
            log.write(f"{os.getpid()}\n")
        if not line.strip():
            return None  # blank lines are skipped
        row = np.array(line.split(), float)
        if self.options.bad_record is not None and row[0] == self.options.bad_record:
            raise ValueError("unparseable on purpose")
        return row

    def mapper_init(self):
        self.loop_data()

    def mapper(self, _, row):
        if row.flags.writeable:
            raise AssertionError("parsed rows must be read-only (they may be a shared cache)")
        yield 0, row

    def post_process(self, result):
        return result[0]


if __name__ == "__main__":
    MRParsedSum.run()
