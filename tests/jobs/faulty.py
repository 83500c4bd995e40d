"""A collective job that emits one bad record on purpose (tests of error reporting).

--fault nan     value [nan, 1.0] on the 3rd record of task partition 1
--fault text    value "oops" on that record
--fault length  value of length 3 where key 0 always has length 2
--fault hang    task partition 1 sleeps (for --iteration-timeout tests)
--fault post    post_process raises (in the driver and in the node's lease holder)
--fault none    a correct job: every record emits (0, [x, 1])
"""

import os
import time

from hcollectives import AllReduce, MRCollectiveJob


class MRFaulty(MRCollectiveJob):
    COLLECTIVE = AllReduce("sum")

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg("--fault", default="none", choices=["none", "nan", "text", "length", "hang", "post"])

    def mapper_init(self):
        self.loop_data()
        self.n = 0
        self.bad_task = os.environ.get("mapreduce_task_partition") == "1"

    def mapper(self, _, line):
        self.n += 1
        x = float(line.split()[0])
        if self.bad_task and self.options.fault == "hang":
            time.sleep(600)
        if self.bad_task and self.n == 3 and self.options.fault in ("nan", "text", "length"):
            yield 0, {"nan": [float("nan"), 1.0], "text": "oops", "length": [x, 1.0, 2.0]}[self.options.fault]
        else:
            yield 0, [x, 1.0]


    def post_process(self, result):
        if self.options.fault == "post":
            raise ValueError("post_process failed on purpose")
        return super().post_process(result)


if __name__ == "__main__":
    MRFaulty.run()
