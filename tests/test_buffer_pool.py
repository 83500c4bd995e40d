"""The daemon's pool of receive buffers."""

from __future__ import annotations

import numpy as np

from hcollectives.protocol.frames import FrameDecoder, encode_frame
from hcollectives.transport.buffer_pool import BufferPool


def test_a_returned_buffer_receives_the_next_frame_of_its_shape() -> None:
    pool = BufferPool()
    decoder = FrameDecoder(allocate=pool.take)
    data = np.arange(1024, dtype="<f8")
    for chunk in encode_frame("t", {}, (data,)):
        decoder.receive_data(bytes(chunk))
    first = decoder.next_frame().buffers[0]
    np.testing.assert_array_equal(first, data)
    pool.give(first)
    for chunk in encode_frame("t", {}, (data * 2,)):
        decoder.receive_data(bytes(chunk))
    second = decoder.next_frame().buffers[0]
    assert second is first  # the same memory, refilled
    np.testing.assert_array_equal(second, data * 2)
    assert pool.statistics().reused == 1


def test_views_tiny_arrays_and_overflow_are_not_kept() -> None:
    pool = BufferPool(max_bytes=12288)
    big = np.empty(1024)
    pool.give(big[:512])  # a view
    pool.give(np.empty(8))  # tiny
    pool.give(big)
    pool.give(np.empty(1024))  # over the budget
    assert pool.statistics().idle_bytes == 8192
    assert pool.take(np.dtype("<f8"), (1024,)) is big
    assert pool.take(np.dtype("<f8"), (1024,)) is not big
