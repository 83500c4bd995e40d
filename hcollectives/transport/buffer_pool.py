"""Receive buffers that are reused across messages and iterations.

A buffer's first write costs page faults: on these machines freshly
allocated memory takes bytes at a third of the speed of memory already
touched. Bodies the daemon consumes at once (ring AllReduce chunks, folded
into the accumulator or copied into place) go back to this pool, and the next
frame of the same dtype and shape is received straight into one of them
(`FrameDecoder(allocate=...)`): after the first iteration a ring moves its
chunks into warm memory with no allocation at all.

Only the owner gives buffers back, and only ones it alone references; a
buffer that is kept (a contribution, a result) is simply never returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Bound on what idle buffers may hold: a few iterations' chunks of a 64 MiB
# ring; beyond it returned buffers are left to the garbage collector.
DEFAULT_MAX_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    taken: int
    reused: int
    idle_bytes: int


class BufferPool:
    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._free: dict[tuple[str, tuple[int, ...]], list[np.ndarray]] = {}
        self._idle_bytes = 0
        self._taken = self._reused = 0

    def take(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A writable C-contiguous array of *dtype* and *shape* (contents undefined)."""
        self._taken += 1
        free = self._free.get((dtype.str, shape))
        if free:
            arr = free.pop()
            self._idle_bytes -= arr.nbytes
            self._reused += 1
            return arr
        return np.empty(shape, dtype=dtype)

    def give(self, arr: np.ndarray) -> None:
        """Return *arr*, which nothing else references any more, for reuse."""
        # Views of something bigger are not ours to recycle; tiny arrays are
        # cheaper to allocate than to keep track of.
        if arr.base is not None or not arr.flags.c_contiguous or not arr.flags.writeable or arr.nbytes < 4096:
            return
        if self._idle_bytes + arr.nbytes > self.max_bytes:
            return
        self._free.setdefault((arr.dtype.str, arr.shape), []).append(arr)
        self._idle_bytes += arr.nbytes

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(self._taken, self._reused, self._idle_bytes)
