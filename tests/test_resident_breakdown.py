"""bench/breakdown.py's resident breakdown: where a resident iteration's time goes."""

import pytest

from hcollectives.bench.breakdown import RESIDENT_PARTS, mean_parts, resident_breakdown


def phase(i, start, loop_data, mapped, contributed, post=0.0, reduce=0.0):
    return {"i": i, "start": start, "loop_data": loop_data, "post_process_s": post, "mapped": mapped,
            "contributed": contributed, "reduce_s": reduce}


def test_two_tasks_one_iteration():
    # Window of iteration 2: previous result at 10.0, this result at 12.0.
    # Task a holds the post_process lease (10.0-10.2), computes 10.2-11.2 (0.2 s of it reducing),
    # contributes by 11.3; task b waits for a's post_process, computes 10.2-10.7, contributes by 10.8.
    a = phase(2, 9.9, 10.2, 11.2, 11.3, post=0.2, reduce=0.2)
    b = phase(2, 9.8, 10.2, 10.7, 10.8, reduce=0.1)
    later = phase(3, 11.3, 12.1, 12.5, 12.6)  # a's next iteration: waits for iteration 2's collective
    parts = resident_breakdown([{"resident": [a, later]}, {"resident": [b]}], [(2, 10.0, 12.0)])[2]
    assert set(parts) == set(RESIDENT_PARTS)
    assert sum(parts.values()) == pytest.approx(2.0)
    # 10.0-10.2: a post-processes alone (b's waiting is idle time): all post_process.
    assert parts["post_process"] == pytest.approx(0.2)
    # 10.2-10.7 shared by both computing (b: 0.1 of 0.5 s reducing, a: 0.2 of 1.0 s), 10.7-10.8 a
    # beside b's claim, 10.8-11.2 a alone.
    assert parts["task_reduction"] == pytest.approx(0.25 * 0.2 + 0.25 * 0.2 + 0.05 * 0.2 + 0.4 * 0.2)
    # 11.3-12.0: every task has contributed; the rest is the collective (plus both claims).
    assert parts["collective"] == pytest.approx(0.7 + 0.05 + 0.1)
    assert parts["waiting"] == pytest.approx(0.0)
    assert mean_parts({1: parts, 2: parts}) == pytest.approx(parts)


def test_idle_time_before_the_last_contribution_is_waiting():
    slow = phase(1, 0.0, 0.0, 3.0, 3.0)
    parts = resident_breakdown([{"resident": [slow]}], [(1, -1.0, 4.0)])[1]
    assert parts["waiting"] == pytest.approx(1.0) and parts["compute"] == pytest.approx(3.0)
    assert parts["collective"] == pytest.approx(1.0)
