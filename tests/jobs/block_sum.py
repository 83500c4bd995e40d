"""A collective job with parse_input + mapper_block (tests of the block mapper and resident mode).

The loop data starts at zeros; each iteration adds the sum of every row (and
the row count), so after n iterations it is n * [sum of rows, count]: a row
counted twice or missed in any iteration shows. Each mapper_block call appends
"<iteration> <pid> <id(rows)> <writeable> <len(rows)>" to $BLOCK_LOG.
--bad-row K      mapper_block emits NaN from the split holding row K (first number K)
--die-at I:K     (resident tests) the first attempt of the task holding row K
                 kills itself with SIGKILL at iteration I, once ($BLOCK_LOG.died marks it)
$RSS_LOG (if set) gets "<iteration> <pid> <VmRSS kB>" per call.
--kill-daemon-at I:K  likewise, but kills its node's daemon ($BLOCK_LOG.daemon-killed marks it)
"""

import os
import signal

import numpy as np

from hcollectives import AllReduce, MRCollectiveJob


class MRBlockSum(MRCollectiveJob):
    COLLECTIVE = AllReduce("sum")

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg("--bad-row", type=float, default=None)
        self.add_passthru_arg("--die-at", default=None)
        self.add_passthru_arg("--kill-daemon-at", default=None)

    def parse_input(self, line):
        return np.array(line.split(), float) if line.strip() else None

    def mapper_block(self, rows):
        data = self.loop_data()
        iteration = self._hc_task.env.iteration  # (resident tasks: the iteration running now)
        with open(os.environ["BLOCK_LOG"], "a") as log:
            log.write(f"{iteration} {os.getpid()} {id(rows)} {int(rows.flags.writeable)} {len(rows)}\n")
        if os.environ.get("RSS_LOG"):  # the task's resident memory, per iteration
            with open("/proc/self/status") as status:
                rss = next(line.split()[1] for line in status if line.startswith("VmRSS:"))
            with open(os.environ["RSS_LOG"], "a") as log:
                log.write(f"{iteration} {os.getpid()} {rss}\n")
        if self.options.die_at:
            at, row = (float(v) for v in self.options.die_at.split(":"))
            marker = os.environ["BLOCK_LOG"] + ".died"
            if iteration == at and row in rows[:, 0] and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        if self.options.kill_daemon_at:
            from hcollectives.services.rendezvous import node_dir

            at, row = (float(v) for v in self.options.kill_daemon_at.split(":"))
            marker = os.environ["BLOCK_LOG"] + ".daemon-killed"
            if iteration == at and row in rows[:, 0] and not os.path.exists(marker):
                env = self._hc_task.env
                pid = int((node_dir(env.rundir, env.node) / "pid").read_text())
                open(marker, "w").write(str(pid))
                os.kill(pid, signal.SIGKILL)
        total = np.append(rows.sum(0), len(rows))
        if self.options.bad_row is not None and self.options.bad_row in rows[:, 0]:
            total[0] = np.nan
        yield 0, total + 0 * data[0]

    def post_process(self, result):
        return self.loop_data() + result[0]


if __name__ == "__main__":
    MRBlockSum.run()
