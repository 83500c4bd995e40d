"""Frame encoding and incremental decoding: bytes in, frames out. No I/O.

A frame on the wire::

    prelude   "!2sBBII"  magic b"HC", version, flags (0), header length, buffer count
    lengths   "!Q" per buffer
    header    msgpack map {"t": type, "f": {fields}, "b": [[dtype, shape], ...]}
    buffers   raw array bytes, in order

The header carries only dtype and shape of each buffer (as dask does); the
bytes themselves are never interpreted by a deserialiser, so nothing that
arrives can run code. Dtypes come from an allowlist; object dtypes can never
be named. Buffers are received into arrays allocated once the header is known,
and the decoder exposes the unfilled part (`writable`) so a transport can
``recv_into`` it directly instead of copying through an intermediate buffer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from ..errors import LocalProtocolError, RemoteProtocolError

MAGIC = b"HC"
VERSION = 1
PRELUDE = struct.Struct("!2sBBII")
LENGTH = struct.Struct("!Q")

# Little-endian, fixed-size numeric types only: what collectives move. No "O",
# no structured or string dtypes, so a header can never ask us to build objects.
DTYPE_ALLOWLIST = frozenset({"<f8", "<f4", "<i8", "<i4", "<u8", "<u4", "|u1", "|i1", "|b1"})
_DTYPES = {name: np.dtype(name) for name in DTYPE_ALLOWLIST}  # built once, not per buffer received

# A header is a few fields plus, for AllGather pieces, the list of row keys;
# 16 MiB leaves room for ~1M keys and still bounds what garbage can make us hold.
MAX_HEADER_BYTES = 16 * 1024 * 1024
# What one header may decode into. Bytes alone do not bound it: a 16 MiB header
# of empty arrays (one byte each) decodes to 16M lists, 1.3 GB of Python objects.
# The largest real header is an AllGather piece's row keys (one list, one int
# or str per row), so: at most 2^21 items in all lists together (~80 MB of int
# objects at worst, what 2M row keys legitimately cost) and 2^16 lists and maps
# (a Seal's piece list has one 3-list per task). Counted as msgpack builds
# them (`_HeaderBudget`), so decoding stops as soon as a budget is spent.
MAX_HEADER_ITEMS = 1 << 21
MAX_HEADER_CONTAINERS = 1 << 16
# Every object in msgpack takes at least one byte, so a header of at most this
# many bytes decodes into at most this many items and containers together: it
# cannot spend either budget, and is decoded without the counting hooks (two
# Python calls per list or map, a third of a small message's decoding time).
SMALL_HEADER_BYTES = min(MAX_HEADER_ITEMS, MAX_HEADER_CONTAINERS)
# Messages carry at most a handful of arrays; a large count means garbage.
MAX_BUFFERS = 16
# Default frame cap: larger than any collective payload we benchmark (64 MiB),
# small enough that a corrupt length cannot make us allocate the machine away.
DEFAULT_MAX_FRAME_BYTES = 1 << 30
MAX_NDIM = 8
# No real dimension comes near this; it keeps numpy from being asked for shapes
# whose element count overflows (possible when another dimension is 0).
MAX_DIM = 1 << 40


# (dtype, shape) -> a writable C-contiguous array of exactly that dtype and shape.
Allocator = Callable[[np.dtype, tuple[int, ...]], np.ndarray]


@dataclass(frozen=True, slots=True)
class Frame:
    type: str
    fields: dict[str, Any]
    buffers: tuple[np.ndarray, ...]


def _reject_ext(code: int, data: bytes) -> Any:
    raise RemoteProtocolError(f"msgpack extension type {code} is not allowed in a header")


def _describe(array: np.ndarray) -> list[Any]:
    dtype = array.dtype.str
    if dtype not in DTYPE_ALLOWLIST:
        raise LocalProtocolError(f"dtype {array.dtype} is not allowed on the wire")
    return [dtype, list(array.shape)]


def encode_frame(type_: str, fields: dict[str, Any], buffers: tuple[np.ndarray, ...] = ()) -> list[bytes | memoryview]:
    """Encode one frame as a list of chunks (the big buffers are not copied)."""
    # np.require keeps 0-d arrays 0-d (ascontiguousarray would make them 1-D).
    arrays = [b if type(b) is np.ndarray and b.flags.c_contiguous else np.require(b, requirements="C")
              for b in buffers]
    if len(arrays) > MAX_BUFFERS:
        raise LocalProtocolError(f"{len(arrays)} buffers in one frame; the limit is {MAX_BUFFERS}")
    try:
        header = msgpack.packb({"t": type_, "f": fields, "b": [_describe(a) for a in arrays]},
                               use_bin_type=True, unicode_errors="strict")
    except (OverflowError, UnicodeEncodeError, TypeError, ValueError) as exc:
        raise LocalProtocolError(f"cannot encode {type_} header: {exc}") from None
    if len(header) > MAX_HEADER_BYTES:
        raise LocalProtocolError(f"header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    chunks: list[bytes | memoryview] = [
        PRELUDE.pack(MAGIC, VERSION, 0, len(header), len(arrays))
        + b"".join(LENGTH.pack(a.nbytes) for a in arrays)
        + header
    ]
    chunks.extend(memoryview(a).cast("B") for a in arrays if a.nbytes)
    return chunks


def frame_size(chunks: list[bytes | memoryview]) -> int:
    return sum(len(c) for c in chunks)


_PLAIN = frozenset({type(None), bool, int, float, str, bytes})
_MAX_DEPTH = 16


class _HeaderBudget:
    """msgpack hooks that count what a header decodes into and stop it early."""

    __slots__ = ("items", "containers")

    def __init__(self) -> None:
        self.items = self.containers = 0

    def _spend(self, items: int) -> None:
        self.items += items
        self.containers += 1
        if self.items > MAX_HEADER_ITEMS or self.containers > MAX_HEADER_CONTAINERS:
            raise RemoteProtocolError(f"header decodes into more than {MAX_HEADER_ITEMS} items or "
                                      f"{MAX_HEADER_CONTAINERS} lists and maps")

    def list(self, value: list) -> list:
        self._spend(len(value))
        return value

    def map(self, pairs: list) -> dict:
        self._spend(len(pairs))
        return dict(pairs)


def _check_plain(obj: Any, depth: int = 0) -> None:
    """Headers hold plain data only. msgpack decodes its Timestamp extension
    itself (ext_hook never sees it), so types are checked after decoding.

    This runs on every frame of the latency path: exact type tests, and only
    the containers are visited (recursion bounded by _MAX_DEPTH). Map keys
    need no test: ``strict_map_key`` already limits them to str and bytes."""
    kind = type(obj)
    if kind is dict:
        items = obj.values()
    elif kind is list:
        items = obj
    elif kind in _PLAIN:
        return
    else:
        raise RemoteProtocolError(f"header holds a {kind.__name__}; only plain data is allowed")
    if depth >= _MAX_DEPTH:
        raise RemoteProtocolError("header nested too deeply")
    for value in items:
        if type(value) not in _PLAIN:
            _check_plain(value, depth + 1)


class FrameDecoder:
    """Incremental frame decoder with size limits; one per connection direction."""

    def __init__(self, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 allocate: Allocator | None = None) -> None:
        if max_frame_bytes < PRELUDE.size:
            raise ValueError("max_frame_bytes is too small to hold a prelude")
        self.max_frame_bytes = max_frame_bytes
        # Where validated buffers are received: np.empty by default, or the
        # owner's pool (`transport.buffer_pool`), so a body lands in memory
        # that was already touched instead of fresh pages (a third of the speed).
        self.allocate = allocate
        self._buf = bytearray()
        self._eof = False
        self._reset()

    def _reset(self) -> None:
        self._lengths: list[int] | None = None
        self._header_len = 0
        self._nbuffers = 0
        self._header: dict[str, Any] | None = None
        self._arrays: list[np.ndarray] = []
        self._bytes_views: list[memoryview] = []
        self._index = 0  # buffer being filled
        self._filled = 0  # bytes filled in that buffer

    # -- feeding ---------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes; ``b""`` means the peer closed its side."""
        if self._eof and data:
            raise RemoteProtocolError("data received after end of stream")
        if not data:
            self._eof = True
            return
        self._buf += data

    def writable(self) -> memoryview | None:
        """The unfilled part of the buffer being received, when it can be filled
        directly (no bytes are waiting in the internal byte buffer)."""
        if self._header is None or self._buf or self._index >= len(self._arrays):
            return None
        return self._bytes_views[self._index][self._filled :]

    def advance(self, n: int) -> None:
        """Record that *n* bytes were written into the view `writable` returned."""
        view = self.writable()
        if view is None or n < 0 or n > len(view):
            raise LocalProtocolError("advance() without a matching writable() view")
        self._filled += n
        self._skip_full_buffers()

    def between_frames(self) -> bytearray | None:
        """The bytes received and not yet decoded, when no frame is begun (for
        `fast_decode`, which may take a whole small frame from their front with
        `consume`); None in the middle of a frame."""
        return self._buf if self._lengths is None else None

    def consume(self, n: int) -> None:
        """Drop the first *n* bytes of `between_frames` (a frame decoded elsewhere)."""
        if self._lengths is not None or not 0 <= n <= len(self._buf):
            raise LocalProtocolError("consume() in the middle of a frame or past the received bytes")
        del self._buf[:n]

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def mid_frame(self) -> bool:
        return bool(self._buf) or self._lengths is not None

    # -- decoding --------------------------------------------------------------

    def next_frame(self) -> Frame | None:
        """Return the next whole frame, or None when more bytes are needed."""
        if self._lengths is None and not self._parse_prelude():
            return None
        if self._header is None and not self._parse_header():
            return None
        self._fill_from_buffer()
        if self._index < len(self._arrays):
            return None
        header = self._header
        frame = Frame(header["t"], header["f"], tuple(self._arrays))
        self._reset()
        return frame

    def _parse_prelude(self) -> bool:
        if len(self._buf) < PRELUDE.size:
            return False
        magic, version, flags, header_len, nbuffers = PRELUDE.unpack_from(self._buf)
        if magic != MAGIC:
            raise RemoteProtocolError(f"bad magic {bytes(magic)!r}: not an hcollectives peer")
        if version != VERSION or flags != 0:
            raise RemoteProtocolError(f"unsupported protocol version {version} (flags {flags})")
        if header_len > MAX_HEADER_BYTES or header_len == 0:
            raise RemoteProtocolError(f"header length {header_len} outside 1..{MAX_HEADER_BYTES}")
        if nbuffers > MAX_BUFFERS:
            raise RemoteProtocolError(f"{nbuffers} buffers in one frame; the limit is {MAX_BUFFERS}")
        need = PRELUDE.size + LENGTH.size * nbuffers
        if len(self._buf) < need:
            return False
        lengths = [LENGTH.unpack_from(self._buf, PRELUDE.size + LENGTH.size * i)[0] for i in range(nbuffers)]
        total = need + header_len + sum(lengths)
        if total > self.max_frame_bytes:
            raise RemoteProtocolError(f"frame of {total} bytes exceeds the limit of {self.max_frame_bytes}")
        del self._buf[:need]
        self._lengths, self._header_len, self._nbuffers = lengths, header_len, nbuffers
        return True

    def _parse_header(self) -> bool:
        if len(self._buf) < self._header_len:
            return False
        raw = bytes(self._buf[: self._header_len])
        del self._buf[: self._header_len]
        try:
            if self._header_len <= SMALL_HEADER_BYTES:
                header = msgpack.unpackb(
                    raw, raw=False, strict_map_key=True, ext_hook=_reject_ext,
                    max_str_len=MAX_HEADER_BYTES, max_bin_len=MAX_HEADER_BYTES,
                    max_array_len=MAX_HEADER_ITEMS, max_map_len=4096,
                )
            else:
                budget = _HeaderBudget()
                header = msgpack.unpackb(
                    raw, raw=False, strict_map_key=True, ext_hook=_reject_ext,
                    max_str_len=MAX_HEADER_BYTES, max_bin_len=MAX_HEADER_BYTES,
                    max_array_len=MAX_HEADER_ITEMS, max_map_len=4096,
                    list_hook=budget.list, object_pairs_hook=budget.map,
                )
        except RemoteProtocolError:
            raise
        except Exception as exc:  # msgpack raises several unrelated types
            raise RemoteProtocolError(f"undecodable header: {exc}") from None
        _check_plain(header)
        if not isinstance(header, dict) or set(header) != {"t", "f", "b"}:
            raise RemoteProtocolError("header must be a map with keys t, f, b")
        if not isinstance(header["t"], str) or not isinstance(header["f"], dict):
            raise RemoteProtocolError("header type must be a str and fields a map")
        descriptors = header["b"]
        if not isinstance(descriptors, list) or len(descriptors) != self._nbuffers:
            raise RemoteProtocolError("buffer descriptors do not match the prelude's buffer count")
        if self.allocate is None:
            self._arrays = [self._allocate(d, n) for d, n in zip(descriptors, self._lengths)]
        else:
            self._arrays = [self._from_pool(*self._validate(d, n)) for d, n in zip(descriptors, self._lengths)]
        # (C-contiguous, as the allocators guarantee: a cast is the cheapest byte view)
        self._bytes_views = [memoryview(a).cast("B") if a.nbytes else memoryview(b"") for a in self._arrays]
        self._header = header
        self._skip_full_buffers()
        return True

    @staticmethod
    def _validate(descriptor: Any, nbytes: int) -> tuple[np.dtype, tuple[int, ...]]:
        if not (isinstance(descriptor, list) and len(descriptor) == 2):
            raise RemoteProtocolError("buffer descriptor must be [dtype, shape]")
        dtype, shape = descriptor
        if not isinstance(dtype, str) or dtype not in DTYPE_ALLOWLIST:
            raise RemoteProtocolError(f"dtype {dtype!r:.40} is not in the allowlist")
        # Each dimension is bounded on its own: with a 0 elsewhere the byte count
        # is 0 whatever the others say, and numpy refuses absurd shapes by raising.
        if (not isinstance(shape, list) or len(shape) > MAX_NDIM
                or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= MAX_DIM
                           for s in shape)):
            raise RemoteProtocolError(f"bad shape {shape!r:.80}")
        dt = _DTYPES[dtype]
        count = 1
        for s in shape:
            count *= s
        if count * dt.itemsize != nbytes:
            raise RemoteProtocolError(f"buffer of {nbytes} bytes does not hold shape {shape} of {dtype}")
        return dt, tuple(shape)

    @staticmethod
    def _allocate(descriptor: Any, nbytes: int) -> np.ndarray:
        dt, shape = FrameDecoder._validate(descriptor, nbytes)
        try:
            return np.empty(shape, dtype=dt)
        except (ValueError, MemoryError) as exc:
            raise RemoteProtocolError(f"cannot allocate shape {list(shape)} of {dt.str}: {exc}") from None

    def _from_pool(self, dt: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        try:
            arr = self.allocate(dt, shape)
        except (ValueError, MemoryError) as exc:
            raise RemoteProtocolError(f"cannot allocate shape {list(shape)} of {dt.str}: {exc}") from None
        # The pool is ours, but a wrong buffer here would be written past or
        # read as another type: check it as if it came from outside.
        if arr.dtype != dt or arr.shape != shape or not arr.flags.c_contiguous or not arr.flags.writeable:
            raise LocalProtocolError(f"allocator returned {arr.dtype} {arr.shape} for {dt.str} {list(shape)}")
        return arr

    def _fill_from_buffer(self) -> None:
        while self._buf and self._index < len(self._arrays):
            view = self._bytes_views[self._index]
            n = min(len(view) - self._filled, len(self._buf))
            view[self._filled : self._filled + n] = self._buf[:n]
            del self._buf[:n]
            self._filled += n
            self._skip_full_buffers()

    def _skip_full_buffers(self) -> None:
        while self._index < len(self._arrays) and self._filled >= len(self._bytes_views[self._index]):
            self._index += 1
            self._filled = 0
