"""The collectives micro-benchmark runs real daemons and checks its own answers."""

import pytest

from hcollectives.bench import collective_bench


@pytest.mark.parametrize("kind", ["allreduce", "allgather"])
def test_small_collective_bench_runs_and_is_correct(kind):
    # 1 MiB is above RING_MIN_BYTES: the AllReduce runs as a ring, the rest by recursive doubling
    sizes = (1024, 1 << 16, 1 << 20)
    out = collective_bench.run(kinds=(kind,), nodes=(2, 3), sizes=sizes, repeats=1)
    rows = out["collectives"]
    assert [(r["nodes"], r["bytes"]) for r in rows] == [(n, s) for n in (2, 3) for s in sizes]
    assert all(0 < r["min_s"] <= r["median_s"] < 30 for r in rows)
    assert out["loopback_gib_per_s"] > 0


def test_tasks_as_threads_still_run_and_are_checked():
    out = collective_bench.run(kinds=("allgather",), nodes=(2,), sizes=(1024,), repeats=1, tasks="thread")
    assert out["tasks"] == "thread" and len(out["collectives"]) == 1
    assert collective_bench.round_trip(repeats=2, tasks="thread")["repeats"] == 2
    with pytest.raises(ValueError):
        collective_bench.run(tasks="fibres")


def test_loopback_bandwidth_is_measured():
    assert collective_bench.loopback_bandwidth(8 << 20) > 1e6  # more than 1 MB/s, surely


def test_task_round_trip_checks_the_result_and_times_each_repeat():
    out = collective_bench.round_trip(repeats=3)
    assert out["tasks"] == "process" and out["repeats"] == 3 and 0 < out["min_s"] <= out["median_s"] < 30


def test_side_by_side_pairs_rows_with_open_mpi_and_gives_the_ratio():
    ours = [{"kind": "allreduce", "nodes": 2, "bytes": 1 << 20, "median_s": 0.004},
            {"kind": "allgather", "nodes": 4, "bytes": 1024, "median_s": 0.002}]
    mpi = [{"rows": [{"kind": "allreduce", "nodes": 2, "bytes": 1 << 20, "median_s": 0.002}]}]
    rows = collective_bench.side_by_side(ours, mpi)
    assert rows[0]["ratio"] == pytest.approx(2.0) and rows[1]["ratio"] is None
    table = collective_bench.format_table(rows)
    assert "| AllReduce | 2 | 1 MiB | 4 ms | 2 ms | 2.00x |" in table
    assert "| AllGather | 4 | 1 KiB | 2 ms | - | - |" in table
