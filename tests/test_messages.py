"""Tests for `hcollectives.protocol.messages`: events, validation, from_frame.

Every message type must round-trip through bytes exactly; constructors must
refuse what the protocol does not allow (LocalProtocolError); and whatever a
peer puts in a frame, `from_frame` must either build a valid event or raise
`RemoteProtocolError` -- never leak LocalProtocolError, TypeError, ValueError.
"""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hcollectives.algorithms.block import OFFSET_DTYPE, VALUE_DTYPE, Block
from hcollectives.errors import LocalProtocolError, RemoteProtocolError
from hcollectives.protocol import messages as m
from hcollectives.protocol.frames import DTYPE_ALLOWLIST, Frame, FrameDecoder

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, max_examples=100,
                         suppress_health_check=[HealthCheck.too_slow])

INT_BLOCK = Block.from_dict({-5: [1.0, 2.0], 0: [], 7: [3.5], 2**62: [4.0, 5.0, 6.0]})
STR_BLOCK = Block.from_dict({"b": [1.0], "a": [2.0, -0.0], "é ünï": [np.inf], "": [7.0]})
MIXED_BLOCK = Block.from_dict({"x": [1.0, 2.0], 3: [3.0, 4.0], -1: [5.0, 6.0], "a": [7.0, 8.0]})
UNIFORM_BLOCK = Block.from_matrix(tuple(range(50)), np.arange(500, dtype=float).reshape(50, 10))

# One example value per field kind, good enough for every message type.
EXAMPLE = {
    "ident": "sess-1_a.b:c@d",
    "iteration": 3,
    "int": -7,
    "float": 2.5,
    "bool": True,
    "text": "a message with spaces, ünïcode and\nnewlines",
    "nonce": bytes(range(32)),
    "mac": bytes(range(32, 64)),
    "idents": ["node-0", "node-1"],
    "addresses": ["127.0.0.1:5000", "[::1]:6000"],
    "pieces": [["task-0", "attempt-0", "node-0"], ["task-1", "attempt-2", "node-1"]],
    "array": np.arange(12, dtype="<f8").reshape(3, 4),
    "block": MIXED_BLOCK,
}


def example(cls: type[m.Message], **overrides) -> m.Message:
    values = {name: EXAMPLE[kind] for name, kind in cls.SPEC.items()}
    values.update(overrides)
    return cls(**values)


def to_bytes(msg: m.Message) -> bytes:
    return b"".join(bytes(c) for c in msg.to_frame())


def wire_frame(msg: m.Message) -> Frame:
    decoder = FrameDecoder()
    decoder.receive_data(to_bytes(msg))
    frame = decoder.next_frame()
    assert frame is not None and decoder.next_frame() is None
    return frame


def round_trip(msg: m.Message) -> m.Message:
    return m.from_frame(wire_frame(msg))


def assert_messages_equal(a: m.Message, b: m.Message) -> None:
    assert type(a) is type(b)
    for name, kind in a.SPEC.items():
        x, y = getattr(a, name), getattr(b, name)
        if kind == "array":
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), name
        elif kind == "block":
            assert isinstance(y, Block) and x == y and x.keys == y.keys, name
            assert [type(k) for k in x.keys] == [type(k) for k in y.keys]
        else:
            assert type(x) is type(y) and x == y, name


ALL_TYPES = sorted(m.REGISTRY.values(), key=lambda c: c.TYPE)


# -- the registry -------------------------------------------------------------------


def test_registry_is_consistent() -> None:
    assert len(m.REGISTRY) >= 20
    for type_name, cls in m.REGISTRY.items():
        assert cls.TYPE == type_name
        assert list(cls.SPEC) == [f.name for f in dataclasses.fields(cls)]
        assert set(cls.SPEC.values()) <= set(EXAMPLE)


def test_messages_are_frozen() -> None:
    msg = example(m.Stop)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.iteration = 4  # type: ignore[misc]


# -- round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.TYPE)
def test_every_message_type_round_trips(cls: type[m.Message]) -> None:
    msg = example(cls)
    assert_messages_equal(round_trip(msg), msg)


BLOCK_TYPES = [c for c in ALL_TYPES if "block" in c.SPEC.values()]


@pytest.mark.parametrize("block", [INT_BLOCK, STR_BLOCK, MIXED_BLOCK, UNIFORM_BLOCK, Block.empty(),
                                   Block.from_dict({"only": []})],
                         ids=["int", "str", "mixed", "uniform", "empty", "empty-vector"])
@pytest.mark.parametrize("cls", BLOCK_TYPES, ids=lambda c: c.TYPE)
def test_block_messages_round_trip_with_any_keys(cls: type[m.Message], block: Block) -> None:
    (field,) = [n for n, k in cls.SPEC.items() if k == "block"]
    msg = example(cls, **{field: block})
    assert_messages_equal(round_trip(msg), msg)


def test_extreme_int_keys_round_trip() -> None:
    block = Block.from_dict({-(2**63): [1.0], 2**63 - 1: [2.0], 2**64 - 1: [3.0]})
    msg = example(m.Result, block=block)
    assert round_trip(msg).block.keys == block.keys


@pytest.mark.parametrize("dtype", sorted(DTYPE_ALLOWLIST))
@pytest.mark.parametrize("shape", [(0,), (5,), (2, 3), (1, 1, 2)])
def test_array_fields_round_trip_with_every_dtype(dtype: str, shape: tuple[int, ...]) -> None:
    arr = (np.arange(int(np.prod(shape))) % 2 == 1 if dtype == "|b1"
           else np.arange(int(np.prod(shape)))).astype(dtype).reshape(shape)
    msg = m.PostProcessLease("s", 1, arr, MIXED_BLOCK)
    got = round_trip(msg)
    assert_messages_equal(got, msg)


def test_non_contiguous_array_fields_round_trip() -> None:
    arr = np.arange(30, dtype="<i8").reshape(5, 6)[::2, 1::2]
    msg = m.LoopData("s", 0, arr, False)
    assert_messages_equal(round_trip(msg), msg)


def test_int_and_float_boundaries_round_trip() -> None:
    msg = m.SessionInfo("s", "allreduce", "sum", 2**62, "", -0.5, m.MAX_ITERATION, False, -(2**62))
    assert_messages_equal(round_trip(msg), msg)
    msg = example(m.SessionInfo, fallback_timeout=30)  # an int is a valid float field and stays an int
    assert_messages_equal(round_trip(msg), msg)


def test_long_text_and_many_idents_round_trip() -> None:
    msg = m.TaskFailed("s", 0, "t", "a", "é" * m.MAX_TEXT)
    assert_messages_equal(round_trip(msg), msg)
    names = [f"node-{i}" for i in range(2000)]
    msg = m.Seal("s", 9, names, [f"h{i}:1" for i in range(2000)], [[f"t{i}", "a", n] for i, n in enumerate(names)])
    assert_messages_equal(round_trip(msg), msg)


def test_received_block_is_a_valid_block_with_own_memory() -> None:
    msg = example(m.Contribute, block=UNIFORM_BLOCK)
    got = round_trip(msg).block
    assert got.offsets.dtype == OFFSET_DTYPE and got.values.dtype == VALUE_DTYPE
    assert got.uniform_width() == 10
    assert not np.shares_memory(got.values, UNIFORM_BLOCK.values)


# -- constructor validation ---------------------------------------------------------------

BAD = {
    "ident": ["", "a b", "a/b", "a\nb", "abc\n", "é", "x" * 201, "a|b", 5, None, b"abc"],
    "iteration": [-1, m.MAX_ITERATION + 1, True, False, 1.0, "1", None],
    "int": [True, 2**62 + 1, -(2**62) - 1, 1.5, "1", None],
    "float": ["1.0", None, True, [1.0]],
    "bool": [0, 1, "true", None],
    "text": ["x" * (m.MAX_TEXT + 1), b"bytes", 5, None],
    "nonce": [bytes(31), bytes(33), b"", "x" * 32, bytearray(32), None],
    "mac": [bytes(31), bytes(33), "x" * 32, None],
    "idents": [("a", "b"), ["ok", "not ok"], ["ok", 5], "abc", None],
    "addresses": [("h:1",), ["x" * 301], [5], None],
    "pieces": [[["t", "a"]], [["t", "a", "n", "x"]], [("t", "a", "n")], [["t", "a", "bad node"]], "x", None],
    "array": [np.array([object()], dtype=object), np.array([None, 1]), [1.0, 2.0], 1.0, None],
    "block": [{"a": [1.0]}, None, (("a",), np.zeros(2, "<i8"), np.zeros(0))],
}


def _bad_cases() -> list:
    cases = []
    for cls in ALL_TYPES:
        for name, kind in cls.SPEC.items():
            for i, value in enumerate(BAD[kind]):
                cases.append(pytest.param(cls, name, value, id=f"{cls.TYPE}.{name}-{i}"))
    return cases


@pytest.mark.parametrize("cls, name, value", _bad_cases())
def test_constructor_rejects_bad_values(cls: type[m.Message], name: str, value: object) -> None:
    with pytest.raises(LocalProtocolError, match=name):
        example(cls, **{name: value})


@pytest.mark.parametrize("array", [np.array(["abc"]), np.array([1.0], dtype=">f8"), np.array([1j])])
def test_arrays_the_wire_cannot_carry_are_refused_before_sending(array: np.ndarray) -> None:
    with pytest.raises(LocalProtocolError):
        m.LoopData("s", 0, array, False).to_frame()


@pytest.mark.parametrize("build", [
    lambda: example(m.Result, block=Block.from_dict({2**64: [1.0]})),
    lambda: example(m.Result, block=Block.from_dict({-(2**63) - 1: [1.0]})),
    lambda: example(m.Result, block=Block.from_dict({"\ud800": [1.0]})),
    lambda: example(m.TaskFailed, message="bad \udcff surrogate"),
    lambda: example(m.SessionInfo, fallback_timeout=2**70),
    lambda: example(m.Seal, addresses=["\ud800:1"]),
], ids=["key-2**64", "key-below-int64", "surrogate-key", "surrogate-text", "huge-float-int", "surrogate-address"])
def test_unencodable_values_are_local_protocol_errors(build) -> None:
    with pytest.raises(LocalProtocolError):
        build().to_frame()


# -- from_frame: what a peer can get wrong ------------------------------------------------


def frame_of(msg: m.Message) -> Frame:
    """The frame *msg* would arrive as (without going through bytes)."""
    return wire_frame(msg)


def with_fields(frame: Frame, **changes) -> Frame:
    fields = dict(frame.fields)
    for k, v in changes.items():
        if v is DELETE:
            del fields[k]
        else:
            fields[k] = v
    return Frame(frame.type, fields, frame.buffers)


DELETE = object()


def remote_error(frame: Frame) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        m.from_frame(frame)
    assert not isinstance(info.value, LocalProtocolError)
    return info.value


@pytest.mark.parametrize("type_", ["nope", "", "Hello", "HELLO", "hello ", "__class__", "message"])
def test_unknown_types_are_rejected(type_: str) -> None:
    frame = frame_of(example(m.Hello))
    remote_error(Frame(type_, frame.fields, frame.buffers))


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.TYPE)
def test_missing_and_extra_fields_are_rejected(cls: type[m.Message]) -> None:
    frame = frame_of(example(cls))
    for name in cls.SPEC:
        remote_error(with_fields(frame, **{name: DELETE}))
    remote_error(with_fields(frame, extra=1))
    remote_error(Frame(frame.type, {k.encode(): v for k, v in frame.fields.items()}, frame.buffers))


def test_array_buffer_references_must_be_valid() -> None:
    frame = frame_of(m.LoopData("s", 1, np.arange(3, dtype="<f8"), True))
    assert frame.fields["data"] == 0
    for ref in (1, -1, 2**70, True, False, 0.0, "0", None, [0]):
        remote_error(with_fields(frame, data=ref))
    # an extra buffer nobody refers to
    remote_error(Frame(frame.type, frame.fields, frame.buffers + (np.zeros(1, "<f8"),)))
    # no buffer at all
    remote_error(Frame(frame.type, frame.fields, ()))


def test_a_buffer_cannot_be_used_twice() -> None:
    lease = frame_of(m.PostProcessLease("s", 1, np.arange(3, dtype="<f8"), INT_BLOCK))
    # previous -> 0, result -> [keys, 1] (offsets 1, values 2)
    assert lease.fields["previous"] == 0 and lease.fields["result"][1] == 1
    remote_error(with_fields(lease, previous=1))  # offsets used as previous and as offsets
    remote_error(with_fields(lease, previous=2))
    remote_error(with_fields(lease, result=[list(INT_BLOCK.keys), 0]))  # overlaps previous
    remote_error(with_fields(lease, result=[list(INT_BLOCK.keys), 2]))  # values index out of range


@pytest.mark.parametrize("descriptor", [
    None, 1, "x", [], [[]], [["a"]], [["a"], 0, 1], [("a",), 0], {"keys": ["a"], "index": 0},
    [None, 0], ["a", 0], [["a"], None], [["a"], True], [["a"], -1], [["a"], 5], [["a"], 1.0],
])
def test_malformed_block_descriptors_are_rejected(descriptor: object) -> None:
    frame = frame_of(example(m.Result, block=Block.from_dict({"a": [1.0]})))
    remote_error(with_fields(frame, block=descriptor))


@pytest.mark.parametrize("offsets, values", [
    (np.array([0, 1], "<i4"), np.array([1.0], "<f8")),
    (np.array([0, 1], "<u8"), np.array([1.0], "<f8")),
    (np.array([0.0, 1.0], "<f8"), np.array([1.0], "<f8")),
    (np.array([0, 1], "<i8"), np.array([1.0], "<f4")),
    (np.array([0, 1], "<i8"), np.array([1], "<i8")),
    (np.array([0, 1], "<i8"), np.array([True], "|b1")),
])
def test_block_buffers_of_the_wrong_dtype_are_rejected(offsets: np.ndarray, values: np.ndarray) -> None:
    frame = frame_of(example(m.Result, block=Block.from_dict({"a": [1.0]})))
    remote_error(Frame(frame.type, frame.fields, (offsets, values)))


@pytest.mark.parametrize("keys, offsets, values", [
    (["b", "a"], [0, 1, 2], [1.0, 2.0]),  # not canonical order
    (["a", "a"], [0, 1, 2], [1.0, 2.0]),  # duplicate
    (["a", 1], [0, 1, 2], [1.0, 2.0]),  # str before int
    ([True], [0, 1], [1.0]),  # bool key
    ([1.5], [0, 1], [1.0]),  # float key
    ([None], [0, 1], [1.0]),  # None key
    ([b"a"], [0, 1], [1.0]),  # bytes key
    ([[1]], [0, 1], [1.0]),  # unhashable key
    ([{"a": 1}], [0, 1], [1.0]),
    (["a"], [0, 1, 1], [1.0]),  # too many offsets
    (["a", "b"], [0, 1], [1.0]),  # too few offsets
    (["a"], [1, 1], [1.0]),  # does not start at 0
    (["a"], [0, 2], [1.0]),  # does not end at len(values)
    (["a", "b"], [0, 2, 1], [1.0]),  # decreasing
    (["a", "b"], [0, -1, 1], [1.0]),
    ([], [], []),  # no offsets at all
])
def test_invalid_blocks_from_the_wire_are_remote_errors(keys: list, offsets: list, values: list) -> None:
    frame = frame_of(example(m.Piece, block=Block.from_dict({"a": [1.0]})))
    bad = Frame(frame.type, {**frame.fields, "block": [keys, 0]},
                (np.array(offsets, dtype="<i8"), np.array(values, dtype="<f8")))
    remote_error(bad)


def test_block_buffers_with_wrong_shape_are_remote_errors() -> None:
    frame = frame_of(example(m.Result, block=Block.from_dict({"a": [1.0, 2.0]})))
    remote_error(Frame(frame.type, frame.fields, (np.array([[0, 2]], "<i8"), np.array([1.0, 2.0]))))
    remote_error(Frame(frame.type, frame.fields, (np.array([0, 2], "<i8"), np.array([[1.0, 2.0]]))))


def _bad_field_cases() -> list:
    cases = []
    for cls in ALL_TYPES:
        for name, kind in cls.SPEC.items():
            if kind in ("array", "block"):
                continue  # buffer references, covered above
            for i, value in enumerate(BAD[kind]):
                if isinstance(value, (tuple, bytearray)):
                    continue  # msgpack never produces these
                cases.append(pytest.param(cls, name, value, id=f"{cls.TYPE}.{name}-{i}"))
    return cases


@pytest.mark.parametrize("cls, name, value", _bad_field_cases())
def test_bad_field_values_from_the_wire_are_remote_errors(cls: type[m.Message], name: str, value: object) -> None:
    err = remote_error(with_fields(frame_of(example(cls)), **{name: value}))
    assert cls.TYPE in str(err)


def test_bad_values_arrive_through_bytes_as_remote_errors() -> None:
    # Through the real decoder, not a hand-made Frame.
    from hcollectives.protocol.frames import LENGTH, MAGIC, PRELUDE, VERSION

    hb = msgpack.packb({"t": "stop", "f": {"session": "s p a c e", "iteration": -1, "converged": 1, "reason": "r"},
                        "b": []}, use_bin_type=True)
    decoder = FrameDecoder()
    decoder.receive_data(PRELUDE.pack(MAGIC, VERSION, 0, len(hb), 0) + hb)
    with pytest.raises(RemoteProtocolError):
        m.from_frame(decoder.next_frame())
    assert LENGTH.size == 8


# -- fuzzing from_frame ----------------------------------------------------------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.text(max_size=6),
                    st.binary(max_size=40), st.just(bytes(32)), st.just("node-1"), st.just(0))
anything = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4),
                                                     st.dictionaries(st.text(max_size=3), c, max_size=3)),
                        max_leaves=10)
wire_arrays = st.sampled_from([np.zeros(0, "<f8"), np.array([0, 1], "<i8"), np.array([0, 2], "<i8"),
                               np.array([1.0, 2.0], "<f8"), np.array([1, 2], "<i4"), np.zeros((2, 2), "|u1")])


@st.composite
def peer_frames(draw) -> Frame:
    cls = draw(st.sampled_from(ALL_TYPES))
    good = frame_of(example(cls))
    fields = dict(good.fields)
    for name in draw(st.lists(st.sampled_from(sorted(cls.SPEC)), max_size=3, unique=True)):
        choice = draw(st.integers(0, 2))
        if choice == 0:
            fields[name] = draw(anything)
        elif choice == 1:
            fields[name] = draw(st.one_of(st.integers(-1, 4), st.lists(anything, min_size=2, max_size=2)))
        else:
            del fields[name]
    buffers = good.buffers if draw(st.booleans()) else tuple(draw(st.lists(wire_arrays, max_size=4)))
    return Frame(cls.TYPE, fields, buffers)


@DETERMINISTIC
@given(frame=peer_frames())
def test_fuzz_from_frame_builds_a_valid_event_or_raises_remote_error(frame: Frame) -> None:
    try:
        msg = m.from_frame(frame)
    except RemoteProtocolError as exc:
        assert not isinstance(exc, LocalProtocolError)
        return
    # whatever was accepted must be something we could have built and sent ourselves
    assert type(msg).TYPE == frame.type
    rebuilt = type(msg)(**{n: getattr(msg, n) for n in msg.SPEC})
    assert_messages_equal(round_trip(rebuilt), msg)
