"""The benchmark's task process: blocks the bench can check, and its request loop."""

import json
import os
import subprocess
import sys

import numpy as np

from hcollectives.bench.bench_task import bench_block


def test_bench_blocks_sum_and_gather_to_what_the_bench_checks():
    n, size = 3, 1024
    total = sum(bench_block("allreduce", i, n, size).values for i in range(n))
    assert np.all(total == n * (n + 1) / 2) and len(total) == size // 8
    rows = [bench_block("allgather", i, n, size) for i in range(n)]
    assert [b.keys for b in rows] == [(0,), (1,), (2,)] and all(np.all(b.values == i + 1) for i, b in enumerate(rows))


def test_a_failed_request_is_answered_not_fatal():
    env = dict(os.environ, HCOLLECTIVES_SECRET="ab" * 32)
    requests = [{"op": "nonsense"}, {"op": "round_trip", "session": "s", "coordinator": "127.0.0.1:1",
                                     "daemon": "127.0.0.1:1", "repeats": 1, "bytes": 1024}]
    out = subprocess.run([sys.executable, "-m", "hcollectives.bench.bench_task"], env=env, timeout=60,
                         input="".join(json.dumps(r) + "\n" for r in requests), capture_output=True, text=True)
    replies = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 0 and len(replies) == 2
    assert not replies[0]["ok"] and "KeyError" in replies[0]["error"]
    assert not replies[1]["ok"] and "ConnectionLost" in replies[1]["error"]
