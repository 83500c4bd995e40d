"""The collectives micro-benchmark runs real daemons and checks its own answers."""

import pytest

from hcollectives.bench import collective_bench


@pytest.mark.parametrize("kind", ["allreduce", "allgather"])
def test_small_collective_bench_runs_and_is_correct(kind):
    # 1 MiB is above RING_MIN_BYTES: the AllReduce runs as a ring, the rest as a tree
    sizes = (1024, 1 << 16, 1 << 20)
    out = collective_bench.run(kinds=(kind,), nodes=(2, 3), sizes=sizes, repeats=1)
    rows = out["collectives"]
    assert [(r["nodes"], r["bytes"]) for r in rows] == [(n, s) for n in (2, 3) for s in sizes]
    assert all(0 < r["min_s"] <= r["median_s"] < 30 for r in rows)
    assert out["loopback_gib_per_s"] > 0


def test_loopback_bandwidth_is_measured():
    assert collective_bench.loopback_bandwidth(8 << 20) > 1e6  # more than 1 MB/s, surely
