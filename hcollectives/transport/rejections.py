"""Refused connections, counted and logged at a bounded rate.

Anyone who can reach a daemon's or the coordinator's port can make it refuse
connections (wrong secret, garbage, silence): 10k of them used to mean 10k
WARNING lines on the driver's terminal and an unbounded list in memory.
`Rejections` keeps a count, the last few messages, and logs one line at
first and then at most one summary line per `interval`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator

KEEP = 20  # the most recent messages kept for whoever debugs (and for tests)
INTERVAL = 60.0  # seconds between summary lines while refusals keep coming


class Rejections:
    def __init__(self, logger: logging.Logger, *, interval: float = INTERVAL, clock=time.monotonic) -> None:
        self.count = 0
        self.recent: deque[str] = deque(maxlen=KEEP)
        self._log, self._interval, self._clock = logger, interval, clock
        self._last_logged: float | None = None
        self._unlogged = 0

    def append(self, message: str) -> None:
        self.count += 1
        self.recent.append(message)
        now = self._clock()
        if self._last_logged is not None and now - self._last_logged < self._interval:
            self._unlogged += 1
            return
        if self._unlogged:
            self._log.warning("%s (and %d more refused connection(s) in the last %.0f s; %d in all)",
                              message, self._unlogged, now - self._last_logged, self.count)
        else:
            self._log.warning("%s", message)
        self._last_logged, self._unlogged = now, 0

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[str]:
        return iter(self.recent)
