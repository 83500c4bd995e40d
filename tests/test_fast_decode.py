"""Tests for `hcollectives.protocol.fast_decode`: the small-message fast path.

Its one promise: for any bytes, it either returns exactly the event the
generic path (FrameDecoder + from_frame) would have returned, consuming
exactly that frame, or returns None and leaves the decoder untouched, so that
the generic path decodes (or rejects, with its own error) as before. It never
raises. The fuzz tests below check that against the generic path itself.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hcollectives.algorithms.block import Block
from hcollectives.errors import RemoteProtocolError
from hcollectives.protocol import fast_decode
from hcollectives.protocol import messages as m
from hcollectives.protocol.connection import NEED_DATA, Connection
from hcollectives.protocol.frames import LENGTH, MAGIC, PRELUDE, VERSION, FrameDecoder
from test_messages import assert_messages_equal, to_bytes
from test_messages import example as messages_example

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=300,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

INT_BLOCK = Block.from_dict({-5: [1.0, 2.0], 0: [], 7: [3.5], 2**62: [4.0, 5.0, 6.0]})
STR_BLOCK = Block.from_dict({"b": [1.0], "a": [2.0, -0.0]})
FAST = sorted(fast_decode.FAST_TYPES.values(), key=lambda c: c.TYPE)
OTHERS = sorted(set(m.REGISTRY.values()) - set(FAST) - {m.Hello, m.Auth}, key=lambda c: c.TYPE)


def example(cls: type[m.Message], **overrides) -> m.Message:
    """test_messages' example, with int keys in its blocks (str keys take the generic path)."""
    blocks = {name: INT_BLOCK for name, kind in cls.SPEC.items() if kind == "block"}
    return messages_example(cls, **{**blocks, **overrides})


def generic(data: bytes) -> m.Message | None:
    decoder = FrameDecoder()
    decoder.receive_data(data)
    frame = decoder.next_frame()
    return None if frame is None else m.from_frame(frame)


def fast(data: bytes) -> tuple[m.Message | None, bytes]:
    """(event or None, the bytes left in the decoder)."""
    decoder = FrameDecoder()
    decoder.receive_data(data)
    event = fast_decode.next_event(decoder)
    return event, bytes(decoder.between_frames())


def assert_same(a: m.Message, b: m.Message) -> None:
    assert_messages_equal(a, b)
    for name, kind in b.SPEC.items():  # and arrays like the generic path's: their own, writable memory
        value = getattr(b, name)
        arrays = [value] if kind == "array" else [value.offsets, value.values] if kind == "block" else []
        for x in arrays:
            assert x.flags.c_contiguous and x.flags.writeable and x.base is None, name
        if kind == "block":
            Block(value.keys, value.offsets, value.values)  # a valid block


@pytest.mark.parametrize("cls", FAST, ids=lambda c: c.TYPE)
def test_every_fast_type_decodes_on_the_fast_path_as_the_generic_path_does(cls) -> None:
    msg = example(cls)
    data = to_bytes(msg)
    event, left = fast(data + b"rest")
    assert event is not None and left == b"rest"
    assert_same(msg, event)
    assert_same(generic(data), event)
    # and constructing it again (every check of the constructor) accepts it
    type(event)(**{n: getattr(event, n) for n in event.SPEC})


@pytest.mark.parametrize("cls", OTHERS, ids=lambda c: c.TYPE)
def test_other_types_are_left_to_the_generic_path(cls) -> None:
    data = to_bytes(example(cls))
    assert fast(data) == (None, data)


def test_str_keys_large_frames_and_partial_frames_are_left_to_the_generic_path() -> None:
    for data in (to_bytes(m.Result("s", 1, STR_BLOCK)),
                 to_bytes(m.Result("s", 1, Block.from_dict({0: np.ones(20000)}))),  # > MAX_FAST_FRAME
                 to_bytes(m.HasResult("s", "n", 1))[:-1]):
        assert fast(data) == (None, data)


def test_empty_and_boundary_blocks_decode() -> None:
    for block in (Block.empty(), Block.from_dict({0: []}), Block.from_dict({1: [1.0], 2: [], 3: [np.nan, -0.0]}),
                  Block.from_dict({-(2**63): [1.0], 2**64 - 1: [2.0]})):
        event, _ = fast(to_bytes(m.DoublingStep("s", 1, 0, 0, block)))
        assert event is not None and event.block.keys == block.keys
        assert event.block.values.tobytes() == block.values.tobytes()  # the bits (nan != nan)
        assert np.array_equal(event.block.offsets, block.offsets)


def test_a_decoder_in_the_middle_of_a_frame_is_left_alone() -> None:
    data = to_bytes(m.Result("s", 1, STR_BLOCK))
    decoder = FrameDecoder()
    decoder.receive_data(data[:40])
    assert decoder.next_frame() is None  # the prelude is taken: a frame is begun
    assert decoder.between_frames() is None and fast_decode.next_event(decoder) is None
    with pytest.raises(Exception):
        decoder.consume(1)


def test_connection_decodes_mixed_fast_and_generic_frames_in_order() -> None:
    secret = b"k" * 32
    a = Connection(role="node", name="a", secret=secret, client=True)
    b = Connection(role="peer", name="b", secret=secret, client=False)
    for _ in range(3):  # the handshake
        for src, dst in ((a, b), (b, a)):
            for chunk in src.data_to_send():
                dst.receive_data(bytes(chunk))
            while dst.next_event() is not NEED_DATA:
                pass
    msgs = [m.Seal("s", 1, ["n0"], ["x:1"], [["t", "t_0", "n0"]], ""), m.Result("s", 1, STR_BLOCK),
            m.DoublingStep("s", 1, 0, 0, INT_BLOCK), m.NodeError("s", "n", "boom"), m.HasResult("s", "n0", 1)]
    data = b"".join(b"".join(bytes(c) for c in a.send(x)) for x in msgs)
    for cut in (len(data), 7, 100, 333):  # all at once, and in pieces
        got = []
        for i in range(0, len(data), cut):
            b.receive_data(data[i : i + cut])
            while (event := b.next_event()) is not NEED_DATA:
                got.append(event)
        assert len(got) == len(msgs)
        for x, y in zip(msgs, got):
            assert_same(x, y)


# -- fuzzing: the fast path agrees with the generic path on any input -------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=6),
                    st.binary(max_size=8), st.just("node-1"), st.just(0), st.just(1), st.just("<f8"),
                    st.just("<i8"))
anything = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                     st.dictionaries(st.text(max_size=3), c, max_size=3)),
                        max_leaves=10)

# Values that pass some field checks and not others (idents, iterations, keys and buffer indexes).
plausible = st.one_of(st.sampled_from(["n0", "t_0", "", "a b", "x" * 201]), st.integers(-2, 3),
                      st.just(10**9 + 1), st.booleans(), st.lists(st.sampled_from(["n0", "n1", 5]), max_size=3),
                      st.lists(st.one_of(st.lists(st.integers(-1, 3), max_size=3), st.integers(0, 3)),
                               min_size=2, max_size=2))


def split(data: bytes) -> tuple[dict, list[int], bytes]:
    _, _, header_len, n = PRELUDE.unpack_from(data)[1:]
    pos = PRELUDE.size + LENGTH.size * n
    lengths = [LENGTH.unpack_from(data, PRELUDE.size + LENGTH.size * i)[0] for i in range(n)]
    return msgpack.unpackb(data[pos : pos + header_len], raw=False), lengths, data[pos + header_len :]


def join(header: object, lengths: list[int], body: bytes) -> bytes:
    hb = msgpack.packb(header, use_bin_type=True)
    return PRELUDE.pack(MAGIC, VERSION, 0, len(hb), len(lengths)) + b"".join(LENGTH.pack(x) for x in lengths) + hb + body


@st.composite
def peer_bytes(draw) -> bytes:
    cls = draw(st.sampled_from(FAST + OTHERS[:3]))
    overrides = {}
    blocks = [n for n, k in cls.SPEC.items() if k == "block"]
    if blocks and draw(st.booleans()):
        overrides[blocks[0]] = draw(st.sampled_from([STR_BLOCK, Block.empty(), Block.from_dict({3: [1.0]})]))
    header, lengths, body = split(to_bytes(example(cls, **overrides)))
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        where = draw(st.sampled_from(["field", "drop", "extra", "type", "desc", "lengths", "header"]))
        fields = header.get("f") if isinstance(header, dict) and isinstance(header.get("f"), dict) else None
        if where == "field" and fields:
            fields[draw(st.sampled_from(sorted(fields, key=repr)))] = draw(st.one_of(anything, plausible))
        elif where == "drop" and fields:
            del fields[draw(st.sampled_from(sorted(fields, key=repr)))]
        elif where == "extra" and fields is not None:
            fields[draw(st.text(max_size=4))] = draw(anything)
        elif where == "type" and isinstance(header, dict):
            header["t"] = draw(st.one_of(st.sampled_from(sorted(m.REGISTRY)), anything))
        elif where == "desc" and isinstance(header, dict):
            header["b"] = draw(st.one_of(anything, st.lists(st.lists(anything, min_size=2, max_size=2), max_size=3)))
        elif where == "lengths":
            lengths = draw(st.lists(st.integers(0, 64), max_size=3))
            body = draw(st.binary(min_size=sum(lengths), max_size=sum(lengths)))
        elif where == "header":
            header = draw(anything)
    data = join(header, lengths, body)
    if draw(st.integers(0, 2)) == 0:  # flip or cut bytes anywhere
        pos = draw(st.integers(0, len(data) - 1))
        if draw(st.booleans()):
            data = data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))]) + data[pos + 1 :]
        else:
            data = data[:pos]
    return data


@DETERMINISTIC
@given(data=peer_bytes())
def test_fuzz_fast_path_agrees_with_the_generic_path(data: bytes) -> None:
    stream = data + b"tail"  # bytes after the frame (the tail may also complete a cut one)
    event, left = fast(stream)  # never raises
    try:
        expected = generic(stream)
    except RemoteProtocolError:
        expected = None
        assert event is None, "the fast path accepted what the generic path rejects"
    if event is None:
        assert left == stream  # untouched: the generic path will see every byte
    else:
        assert expected is not None and stream.endswith(left)
        assert_same(expected, event)


@DETERMINISTIC
@given(data=st.binary(max_size=300))
def test_fuzz_random_bytes_never_raise_and_never_disagree(data: bytes) -> None:
    event, left = fast(data)
    if event is not None:
        assert_same(generic(data[: len(data) - len(left)]), event)
    else:
        assert left == data


def test_valid_ident_cache_is_bounded_and_exact() -> None:
    m._VALID_IDENTS.clear()
    for i in range(m._MAX_VALID_IDENTS + 10):
        assert m._check("ident", f"id{i}")
    assert len(m._VALID_IDENTS) <= m._MAX_VALID_IDENTS
    assert not m._check("ident", "has space") and "has space" not in m._VALID_IDENTS

    class Sneaky(str):  # only exact strs are cached; a subclass is checked every time
        pass

    m._VALID_IDENTS.clear()
    assert m._check("ident", Sneaky("ok")) and not m._VALID_IDENTS
    assert not m._check("ident", Sneaky("not ok"))
