"""A fast path from bytes to events for the small messages of the latency path.

The generic path (`FrameDecoder.next_frame`, then `messages.from_frame`) is
written for every frame a peer can send: any header size, any number of
buffers, bodies received straight into arrays. On a small message it spends
most of its time on that generality: a `Frame` object, a plain-data walk of
the header, a descriptor check written for any shape, buffer references
looked up through closures, a `Block` built and checked a second time by its
constructor, then a message checked a third time by its own.

`next_event` decodes a whole small frame that is already in the decoder's
bytes in one pass, with the same checks in a flat sequence, and builds the
event without running those checks again. It never decides that something
is wrong: whatever it does not accept in full (an unknown or rare type, a
str key, an odd shape, a field that fails a check, a frame not yet whole
while the stream has ended) it leaves untouched for the generic path, which
decodes it and names what is wrong as before. So a peer sees the same
errors; tests check that for any bytes both paths agree
(`tests/test_fast_decode.py`). Same wire format, nothing unpickled, nothing
from the header used before it was checked.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from ..algorithms.block import OFFSET_DTYPE, VALUE_DTYPE, Block
from . import messages as m
from .frames import (
    _DTYPES,
    DTYPE_ALLOWLIST,
    LENGTH,
    MAGIC,
    MAX_DIM,
    MAX_HEADER_BYTES,
    MAX_HEADER_ITEMS,
    MAX_NDIM,
    PRELUDE,
    VERSION,
    FrameDecoder,
    _reject_ext,
)

# Frames up to this size (prelude, header and bodies) take the fast path: the
# latency path's messages (plan.INLINE_SEND_MAX_BYTES is 64 KiB of payload too).
MAX_FAST_FRAME = 64 * 1024 + 4096
MAX_FAST_HEADER = 16 * 1024
MAX_FAST_BUFFERS = 4

# The messages of the latency path (task <-> daemon <-> coordinator, daemon <-> daemon).
FAST_TYPES: dict[str, type[m.Message]] = {cls.TYPE: cls for cls in (
    m.TaskStarted, m.GetLoopData, m.LoopData, m.PostProcessLease, m.Contribute, m.ContributeAck, m.Stop,
    m.Claim, m.ClaimResult, m.Seal, m.HasResult, m.Members, m.Partial, m.Result, m.DoublingStep, m.Piece,
    m.RingChunk,
)}
_SPECS = {name: (cls, tuple(cls.SPEC.items()), frozenset(cls.SPEC)) for name, cls in FAST_TYPES.items()}
_HEADER_KEYS = frozenset(("t", "f", "b"))
_I8 = OFFSET_DTYPE.str
_F8 = VALUE_DTYPE.str
_new = object.__new__
_set = object.__setattr__


def next_event(decoder: FrameDecoder) -> m.Message | None:
    """The next event, if the decoder's bytes begin with a whole small frame
    this path accepts in full (the frame is then consumed); else None, and the
    decoder is left exactly as it was."""
    buf = decoder.between_frames()
    if buf is None or len(buf) < PRELUDE.size:
        return None
    magic, version, flags, header_len, nbuffers = PRELUDE.unpack_from(buf)
    if (magic != MAGIC or version != VERSION or flags != 0 or not 0 < header_len <= MAX_FAST_HEADER
            or nbuffers > MAX_FAST_BUFFERS):
        return None
    pos = PRELUDE.size + LENGTH.size * nbuffers
    if len(buf) < pos:
        return None
    lengths = [LENGTH.unpack_from(buf, PRELUDE.size + LENGTH.size * i)[0] for i in range(nbuffers)]
    total = pos + header_len + sum(lengths)
    if total > MAX_FAST_FRAME or total > decoder.max_frame_bytes or len(buf) < total:
        return None
    try:
        event = _decode(buf, pos, header_len, lengths)
    except Exception:  # noqa: BLE001 -- anything odd is the generic path's to decode and report
        return None
    if event is not None:
        decoder.consume(total)
    return event


def _decode(buf: bytearray, pos: int, header_len: int, lengths: list[int]) -> m.Message | None:
    # The same msgpack options as FrameDecoder._parse_header for a small header.
    header = msgpack.unpackb(
        buf[pos : pos + header_len], raw=False, strict_map_key=True, ext_hook=_reject_ext,
        max_str_len=MAX_HEADER_BYTES, max_bin_len=MAX_HEADER_BYTES,
        max_array_len=MAX_HEADER_ITEMS, max_map_len=4096,
    )
    if type(header) is not dict or header.keys() != _HEADER_KEYS:
        return None
    spec = _SPECS.get(header["t"]) if type(header["t"]) is str else None
    fields, descriptors = header["f"], header["b"]
    if (spec is None or type(fields) is not dict or type(descriptors) is not list
            or len(descriptors) != len(lengths)):
        return None
    cls, items, names = spec
    if fields.keys() != names:
        return None
    pos += header_len
    arrays = []
    for descriptor, nbytes in zip(descriptors, lengths):
        array = _array(buf, pos, descriptor, nbytes)
        if array is None:
            return None
        arrays.append(array)
        pos += nbytes
    used = [False] * len(arrays)
    event = _new(cls)
    for name, kind in items:
        value = fields[name]
        if kind == "block":
            value = _block(value, arrays, used)
            if value is None:
                return None
        elif kind == "array":
            if type(value) is not int or not 0 <= value < len(arrays) or used[value]:
                return None
            used[value] = True
            value = arrays[value]
        elif not m._check(kind, value):
            return None
        _set(event, name, value)
    if not all(used):
        return None
    return event


def _array(buf: bytearray, pos: int, descriptor: Any, nbytes: int) -> np.ndarray | None:
    """The checks of FrameDecoder._validate; the body copied out of *buf*."""
    if type(descriptor) is not list or len(descriptor) != 2:
        return None
    dtype, shape = descriptor
    if type(dtype) is not str or dtype not in DTYPE_ALLOWLIST or type(shape) is not list or len(shape) > MAX_NDIM:
        return None
    count = 1
    for s in shape:
        if type(s) is not int or not 0 <= s <= MAX_DIM:
            return None
        count *= s
    dt = _DTYPES[dtype]
    if count * dt.itemsize != nbytes:
        return None
    if not nbytes:
        return np.empty(tuple(shape), dtype=dt)
    # A copy that owns its memory (C-contiguous, writable), as the generic path's arrays.
    return np.frombuffer(buf, dtype=dt, count=count, offset=pos).reshape(shape).copy()


def _block(raw: Any, arrays: list[np.ndarray], used: list[bool]) -> Block | None:
    """The checks of `from_frame` for a block field and of `Block.__post_init__`,
    for blocks whose keys are all ints (str keys take the generic path)."""
    if type(raw) is not list or len(raw) != 2 or type(raw[0]) is not list:
        return None
    keys, index = raw
    if type(index) is not int or not 0 <= index < len(arrays) - 1 or used[index] or used[index + 1]:
        return None
    offsets, values = arrays[index], arrays[index + 1]
    if offsets.dtype.str != _I8 or values.dtype.str != _F8 or offsets.ndim != 1 or values.ndim != 1:
        return None
    if len(offsets) != len(keys) + 1:
        return None
    for k in keys:
        if type(k) is not int:
            return None
    if any(a >= b for a, b in zip(keys, keys[1:])):
        return None
    bounds = offsets.tolist()
    if bounds[0] != 0 or bounds[-1] != len(values) or any(a > b for a, b in zip(bounds, bounds[1:])):
        return None
    used[index] = used[index + 1] = True
    block = _new(Block)
    _set(block, "keys", tuple(keys))
    _set(block, "offsets", offsets)
    _set(block, "values", values)
    return block
