"""Protocol events: one frozen dataclass per message, validated on construction.

Each field's kind is declared as data (`SPEC`); the same checks run when we
build a message to send and when one arrives, so a peer cannot hand us a value
our own code would have refused to build. Arrays travel as raw buffers, blocks
as their keys (in the header) plus offsets and values (two buffers).

Who sends what (T = task, D = node daemon, C = coordinator in the driver):

- handshake, any pair: Hello, Auth (see `connection.py`)
- T->D TaskStarted, GetLoopData, Contribute, TaskFailed, LoopData (publishing
  a post-processed result); D->T LoopData, PostProcessLease, ContributeAck, Stop
- D->C NodeJoin, TaskStarted, Claim, TaskFailed, Result (rank 0 only), GetLoopData,
  HasResult, Notice, NodeError; C->D SessionInfo, Members, ClaimResult, Seal, LoopData, Stop
- D->D Partial (up the tree), Result (down the tree), DoublingStep (recursive-doubling
  AllReduce), RingChunk (ring AllReduce), Piece (AllGather)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ..algorithms.block import OFFSET_DTYPE, VALUE_DTYPE, Block
from ..errors import LocalProtocolError, RemoteProtocolError
from .frames import Frame, encode_frame

_IDENT = re.compile(r"[A-Za-z0-9_.:@-]{1,200}\Z")
MAX_TEXT = 64 * 1024  # error messages carry a record excerpt, not a file
MAX_ITERATION = 1_000_000_000


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Idents already seen valid: a run repeats a handful (session, node, task and
# attempt names) on every message, and the regex is the dearest check of a small
# one. Only exact strs are looked up (a str subclass could compare equal to a
# valid ident without being one); cleared when full, so it stays bounded.
_VALID_IDENTS: set[str] = set()
_MAX_VALID_IDENTS = 4096


def _check_ident(value: Any) -> bool:
    if type(value) is str and value in _VALID_IDENTS:
        return True
    if not (isinstance(value, str) and _IDENT.match(value)):
        return False
    if type(value) is str:
        if len(_VALID_IDENTS) >= _MAX_VALID_IDENTS:
            _VALID_IDENTS.clear()
        _VALID_IDENTS.add(value)
    return True


def _check(kind: str, value: Any) -> bool:
    if kind == "ident":
        return _check_ident(value)
    if kind == "iteration":
        return _is_int(value) and 0 <= value <= MAX_ITERATION
    if kind == "int":
        return _is_int(value) and -(2**62) <= value <= 2**62
    if kind == "float":
        return isinstance(value, float) or _is_int(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "text":
        return isinstance(value, str) and len(value) <= MAX_TEXT
    if kind == "nonce":
        return isinstance(value, bytes) and len(value) == 32
    if kind == "mac":
        return isinstance(value, bytes) and len(value) == 32
    if kind == "idents":
        return isinstance(value, list) and all(_check_ident(v) for v in value)
    if kind == "addresses":
        return isinstance(value, list) and all(isinstance(v, str) and len(v) <= 300 for v in value)
    if kind == "pieces":  # [[task, attempt, node], ...]
        return isinstance(value, list) and all(
            isinstance(p, list) and len(p) == 3 and all(_check_ident(x) for x in p) for p in value)
    if kind == "array":
        return isinstance(value, np.ndarray) and value.dtype.kind != "O"
    if kind == "block":
        return isinstance(value, Block)
    raise AssertionError(f"unknown field kind {kind}")


class Message:
    """Base of all events. Subclasses are frozen slotted dataclasses with a SPEC."""

    __slots__ = ()
    TYPE: ClassVar[str]
    SPEC: ClassVar[dict[str, str]]

    def __post_init__(self) -> None:
        for name, kind in self.SPEC.items():
            value = getattr(self, name)
            if not _check(kind, value):
                raise LocalProtocolError(f"{type(self).__name__}.{name}: {value!r:.100} is not a valid {kind}")

    def to_frame(self) -> list[bytes | memoryview]:
        header: dict[str, Any] = {}
        buffers: list[np.ndarray] = []
        for name, kind in self.SPEC.items():
            value = getattr(self, name)
            if kind == "array":
                header[name] = len(buffers)
                buffers.append(value)
            elif kind == "block":
                header[name] = [list(value.keys), len(buffers)]
                buffers.extend((value.offsets, value.values))
            else:
                header[name] = value
        return encode_frame(self.TYPE, header, tuple(buffers))


REGISTRY: dict[str, type[Message]] = {}


def message(type_name: str, **spec: str):
    """Class decorator: make a frozen slotted dataclass and register it."""

    def wrap(cls: type) -> type[Message]:
        cls = dataclass(frozen=True, slots=True)(cls)
        names = [f.name for f in fields(cls)]
        if names != list(spec):
            raise AssertionError(f"{cls.__name__}: SPEC order {list(spec)} != fields {names}")
        cls.TYPE = type_name
        cls.SPEC = spec
        REGISTRY[type_name] = cls
        return cls

    return wrap


def from_frame(frame: Frame) -> Message:
    """Build and validate the event a frame carries; garbage -> RemoteProtocolError."""
    cls = REGISTRY.get(frame.type)
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {frame.type!r:.60}")
    if set(frame.fields) != set(cls.SPEC):
        raise RemoteProtocolError(f"{frame.type}: fields {sorted(frame.fields)} != {sorted(cls.SPEC)}")
    used: set[int] = set()

    def buffer(index: Any) -> np.ndarray:
        if not _is_int(index) or not 0 <= index < len(frame.buffers) or index in used:
            raise RemoteProtocolError(f"{frame.type}: bad buffer reference {index!r}")
        used.add(index)
        return frame.buffers[index]

    kwargs: dict[str, Any] = {}
    try:
        for name, kind in cls.SPEC.items():
            raw = frame.fields[name]
            if kind == "array":
                kwargs[name] = buffer(raw)
            elif kind == "block":
                if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], list)):
                    raise RemoteProtocolError(f"{frame.type}.{name}: bad block descriptor")
                offsets = buffer(raw[1])
                values = buffer(raw[1] + 1) if _is_int(raw[1]) else None
                if offsets.dtype != OFFSET_DTYPE or values is None or values.dtype != VALUE_DTYPE:
                    raise RemoteProtocolError(f"{frame.type}.{name}: block buffers must be int64 offsets and float64 values")
                kwargs[name] = Block(tuple(raw[0]), offsets, values)
            else:
                kwargs[name] = raw
        if used != set(range(len(frame.buffers))):
            raise RemoteProtocolError(f"{frame.type}: unreferenced buffers")
        return cls(**kwargs)
    except RemoteProtocolError:
        raise
    except (LocalProtocolError, ValueError, TypeError, Exception) as exc:
        # A peer's bad value is the peer's protocol error, not ours.
        raise RemoteProtocolError(f"invalid {frame.type} from peer: {exc}") from None


# -- handshake -------------------------------------------------------------------


@message("hello", role="ident", name="ident", nonce="nonce")
class Hello(Message):
    role: str
    name: str
    nonce: bytes


@message("auth", mac="mac")
class Auth(Message):
    mac: bytes


# -- task <-> node daemon ------------------------------------------------------------


@message("task_started", session="ident", iteration="iteration", task="ident", attempt="ident",
         num_tasks="int", node="ident", coordinator="text")
class TaskStarted(Message):
    session: str
    iteration: int
    task: str
    attempt: str
    num_tasks: int  # -1 when the task cannot tell (the driver knows it then)
    node: str
    coordinator: str  # host:port of the session's coordinator, for the daemon to join


@message("get_loop_data", session="ident", iteration="iteration")
class GetLoopData(Message):
    session: str
    iteration: int


@message("loop_data", session="ident", iteration="iteration", data="array", converged="bool")
class LoopData(Message):
    """The loop data that is the input of `iteration`; `converged` says that
    iteration-1 converged, so `iteration` must not run."""

    session: str
    iteration: int
    data: np.ndarray
    converged: bool


@message("post_process_lease", session="ident", iteration="iteration", previous="array", result="block")
class PostProcessLease(Message):
    """You compute the loop data of `iteration` from `result` (of iteration-1)
    and `previous` (the loop data of iteration-1), then send LoopData back."""

    session: str
    iteration: int
    previous: np.ndarray
    result: Block


@message("contribute", session="ident", iteration="iteration", task="ident", attempt="ident", block="block",
         durable="bool")
class Contribute(Message):
    """A task's block. With *durable*, the daemon acks only once the block is in the
    store: the task exits after its ack, and if the daemon is lost then, the store
    holds the only copy. A resident task between iterations stays alive (and a
    lost daemon restarts the run from the last finished iteration), so it asks
    for the claim only and the store write runs beside the collective."""

    session: str
    iteration: int
    task: str
    attempt: str
    block: Block
    durable: bool = True


@message("contribute_ack", session="ident", iteration="iteration", task="ident", attempt="ident", accepted="bool")
class ContributeAck(Message):
    session: str
    iteration: int
    task: str
    attempt: str
    accepted: bool


@message("task_failed", session="ident", iteration="iteration", task="ident", attempt="ident", message="text")
class TaskFailed(Message):
    session: str
    iteration: int
    task: str
    attempt: str
    message: str


@message("stop", session="ident", iteration="iteration", converged="bool", reason="text", finished="bool")
class Stop(Message):
    """No work for `iteration`: the loop converged before it, or the session ended,
    or (*finished*) the iteration is over already and later ones go on: a late
    attempt of it has nothing to add, a rejoining resident task goes on to the next."""

    session: str
    iteration: int
    converged: bool
    reason: str
    finished: bool = False


# -- node daemon <-> coordinator --------------------------------------------------------


@message("node_join", session="ident", node="ident", address="text")
class NodeJoin(Message):
    session: str
    node: str
    address: str  # host:port where peers reach this daemon


@message("session_info", session="ident", collective="ident", op="ident", fanout="int",
         checkpoint_uri="text", fallback_timeout="float", first_iteration="iteration",
         allow_nonfinite="bool", sealed_through="int")
class SessionInfo(Message):
    session: str
    collective: str  # "allreduce" | "allgather"
    op: str  # reduction op, "none" for allgather
    fanout: int
    checkpoint_uri: str
    fallback_timeout: float
    first_iteration: int
    allow_nonfinite: bool
    # Highest iteration sealed before this node joined (first_iteration-1 if
    # none): the node was not a member of those collectives, so it asks the
    # coordinator for the loop data that follows them.
    sealed_through: int


@message("claim", session="ident", iteration="iteration", task="ident", attempt="ident", node="ident",
         layout="text")
class Claim(Message):
    session: str
    iteration: int
    task: str
    attempt: str
    node: str
    # AllReduce: digest of the block's keys and offsets when it is big enough
    # for the ring (`ring_allreduce.ring_layout`), else "".
    layout: str = ""


@message("claim_result", session="ident", iteration="iteration", task="ident", attempt="ident", accepted="bool")
class ClaimResult(Message):
    session: str
    iteration: int
    task: str
    attempt: str
    accepted: bool


@message("seal", session="ident", iteration="iteration", members="idents", addresses="addresses", pieces="pieces",
         layout="text")
class Seal(Message):
    """Iteration's map phase is complete: `pieces` ([task, attempt, node]) is the
    exact set of contributions that count; `members` (with `addresses`) take part
    in the collective. `layout` is the common layout digest of every piece when
    all of them share one and every member holds at least one (the AllReduce
    then runs as a ring), else "" (tree)."""

    session: str
    iteration: int
    members: list
    addresses: list
    pieces: list
    layout: str = ""


@message("members", session="ident", members="idents", addresses="addresses")
class Members(Message):
    """Current membership, sent on every join so AllGather pieces can be pushed early."""

    session: str
    members: list
    addresses: list


@message("has_result", session="ident", node="ident", iteration="iteration")
class HasResult(Message):
    """A node holds the iteration's result: the collective is complete there.
    The coordinator's timing event "all_nodes_have_result" needs every member's."""

    session: str
    node: str
    iteration: int


@message("notice", session="ident", node="ident", iteration="iteration", message="text")
class Notice(Message):
    """Something the user should know but that is not a failure (a store fallback)."""

    session: str
    node: str
    iteration: int
    message: str


@message("node_error", session="ident", node="ident", message="text")
class NodeError(Message):
    session: str
    node: str
    message: str


# -- node daemon <-> node daemon -------------------------------------------------------


@message("partial", session="ident", iteration="iteration", rank="int", block="block")
class Partial(Message):
    session: str
    iteration: int
    rank: int
    block: Block


@message("result", session="ident", iteration="iteration", block="block")
class Result(Message):
    session: str
    iteration: int
    block: Block


@message("ring_chunk", session="ident", iteration="iteration", rank="int", step="int", data="array")
class RingChunk(Message):
    """One step of a ring AllReduce (`algorithms.ring_allreduce`): sent by `rank`
    to its right neighbour."""

    session: str
    iteration: int
    rank: int
    step: int
    data: np.ndarray


@message("doubling_step", session="ident", iteration="iteration", rank="int", step="int", block="block")
class DoublingStep(Message):
    """One step of a recursive-doubling AllReduce (`algorithms.doubling_allreduce`):
    `rank`'s accumulator (or local block, or the result) for `step`."""

    session: str
    iteration: int
    rank: int
    step: int
    block: Block


@message("piece", session="ident", iteration="iteration", task="ident", attempt="ident", block="block")
class Piece(Message):
    session: str
    iteration: int
    task: str
    attempt: str
    block: Block
