"""Refused connections: counted, bounded in memory, logged at a bounded rate."""

import logging

from hcollectives.transport.rejections import KEEP, Rejections


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ten_thousand_refusals_give_a_few_lines_and_bounded_memory(caplog):
    clock = Clock()
    rejections = Rejections(logging.getLogger("test.rejections"), interval=60.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.rejections"):
        for n in range(10_000):
            clock.now = n * 0.01  # 100 a second for 100 s
            rejections.append(f"rejected connection {n}")
    assert len(rejections) == 10_000
    assert len(rejections.recent) == KEEP and list(rejections)[-1] == "rejected connection 9999"
    # One line at first, then one summary per minute (with the count it stands for).
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0] == "rejected connection 0"
    assert "and 5999 more" in lines[1] and "6001 in all" in lines[1]
