"""The per-iteration breakdown: parts add up to the iteration, and land where the time went."""

import pytest

from hcollectives.bench.breakdown import PARTS, breakdown, iteration_breakdown, mean_parts, task_intervals


def map_task(process, body, ready, records, end, exit, reading=0.0, iteration=1, parse=None):
    rec = dict(kind="map", process=process, body=body, ready=ready, records=records, end=end, exit=exit,
               reading=reading, iteration=iteration)
    if parse:
        rec["parse"] = parse
    return rec


def test_one_task_alone_is_split_by_its_phases():
    task = map_task(1.0, 2.0, 2.5, 4.5, 5.0, 5.5, reading=0.5)
    parts = iteration_breakdown([task], 0.0, 7.0, tail="cleanup")
    assert parts == pytest.approx({"scheduling": 1.0, "map_overhead": 1.5, "data_load": 1.0, "compute": 1.5,
                                   "comm_reduction": 0.5, "cleanup": 1.5})
    assert sum(parts.values()) == pytest.approx(7.0)


def test_parse_before_the_body_is_data_load_not_overhead():
    task = map_task(0.0, 2.0, 2.0, 3.0, 3.0, 3.0, parse=[1.0, 1.8])
    parts = iteration_breakdown([task], 0.0, 3.0, tail="comm_reduction")
    assert parts["data_load"] == pytest.approx(0.8) and parts["map_overhead"] == pytest.approx(1.2)


def test_concurrent_tasks_share_each_instant():
    a = map_task(0.0, 1.0, 1.0, 3.0, 3.0, 3.0)  # 1 s start-up, 2 s compute
    b = map_task(0.0, 2.0, 2.0, 3.0, 3.0, 3.0)  # 2 s start-up, 1 s compute
    parts = iteration_breakdown([a, b], 0.0, 3.0, tail="cleanup")
    assert parts["map_overhead"] == pytest.approx(1.5) and parts["compute"] == pytest.approx(1.5)
    assert sum(parts.values()) == pytest.approx(3.0)


def test_gaps_are_scheduling_before_maps_end_and_reduction_after():
    m1 = map_task(1.0, 1.0, 1.0, 2.0, 2.0, 2.0)
    m2 = map_task(3.0, 3.0, 3.0, 4.0, 4.0, 4.0)  # a second wave after an idle second
    reducer = dict(kind="reduce", process=5.0, exit=6.0)  # after a 1 s sort
    parts = iteration_breakdown([m1, m2, reducer], 0.0, 8.0, tail="cleanup")
    assert parts["scheduling"] == pytest.approx(2.0)  # before m1, between waves
    assert parts["comm_reduction"] == pytest.approx(2.0)  # the sort gap and the reducer
    assert parts["cleanup"] == pytest.approx(2.0)


def test_time_outside_the_window_is_not_counted():
    # A speculative task started during the previous iteration, waiting for its loop data.
    task = map_task(-5.0, -4.0, 0.5, 1.0, 1.2, 1.3)
    parts = iteration_breakdown([task], 0.0, 2.0, tail="comm_reduction")
    assert parts["data_load"] == pytest.approx(0.5)  # only the wait inside the window
    assert parts["map_overhead"] == pytest.approx(0.1)
    assert parts["comm_reduction"] == pytest.approx(0.2 + 0.7)
    assert sum(parts.values()) == pytest.approx(2.0)


def test_breakdown_selects_tasks_by_iteration_or_by_window():
    t1 = map_task(0.0, 0.5, 0.5, 1.0, 1.0, 1.0, iteration=1)
    t2 = map_task(0.2, 0.5, 1.5, 2.0, 2.0, 2.0, iteration=2)  # speculative: started in window 1
    windows = [(1, 0.0, 1.0), (2, 1.0, 2.0)]
    by_iter = breakdown([t1, t2], windows, tail="comm_reduction", by_iteration=True)
    assert by_iter[1]["map_overhead"] == pytest.approx(0.5)  # t2's start-up is hidden, not i=1's
    assert by_iter[2]["map_overhead"] == 0 and by_iter[2]["data_load"] == pytest.approx(0.5)
    by_window = breakdown([t1, t2], windows, tail="cleanup", by_iteration=False)
    assert by_iter[1]["data_load"] == 0 and by_window[1]["data_load"] == pytest.approx(0.25)  # t2 waits too
    for parts in (*by_iter.values(), *by_window.values()):
        assert set(parts) == set(PARTS) and sum(parts.values()) == pytest.approx(1.0)


def test_task_without_timestamps_counts_as_idle_and_mean_skips_the_first_iteration():
    assert task_intervals({"kind": "map", "process": 1.0}) == []
    per = {1: dict.fromkeys(PARTS, 10.0), 2: dict.fromkeys(PARTS, 1.0), 3: dict.fromkeys(PARTS, 3.0)}
    assert mean_parts(per) == dict.fromkeys(PARTS, 2.0)
    assert mean_parts({1: dict.fromkeys(PARTS, 10.0)}) == dict.fromkeys(PARTS, 10.0)
