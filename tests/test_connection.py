"""Tests for `hcollectives.protocol.connection`: the sans-IO handshake and event flow.

Two `Connection` objects are wired together by moving bytes between them by
hand, so every interleaving (all at once, byte by byte, an event glued to the
Auth frame) is reproducible without sockets.
"""

from __future__ import annotations

import numpy as np
import pytest

from hcollectives.algorithms.block import Block
from hcollectives.errors import ConnectionLost, AuthenticationError, LocalProtocolError, ProtocolError, RemoteProtocolError
from hcollectives.protocol import messages as m
from hcollectives.protocol.connection import (
    CLOSED,
    HANDSHAKE_MAX_FRAME_BYTES,
    NEED_DATA,
    Connection,
    State,
    new_secret,
)
from hcollectives.protocol.frames import LENGTH, MAGIC, PRELUDE, VERSION, FrameDecoder

SECRET = bytes(range(100, 132))
OTHER_SECRET = bytes(range(32))


def client(secret: bytes = SECRET, **kw) -> Connection:
    return Connection(role="task", name="task-0", secret=secret, client=True, **kw)


def server(secret: bytes = SECRET, **kw) -> Connection:
    return Connection(role="node", name="node-1", secret=secret, client=False, **kw)


def out(conn: Connection) -> bytes:
    return b"".join(bytes(c) for c in conn.data_to_send())


def frame_bytes(msg: m.Message) -> bytes:
    return b"".join(bytes(c) for c in msg.to_frame())


def drain(conn: Connection) -> list:
    """Every event *conn* can produce from what it has received (CLOSED included)."""
    events: list = []
    state = conn.state
    for _ in range(10_000):
        event = conn.next_event()
        if event is NEED_DATA:
            if conn.state is state:
                return events
            state = conn.state  # the handshake finished; events may follow
            continue
        events.append(event)
        if event is CLOSED:
            return events
    raise AssertionError("next_event does not settle")


def feed(conn: Connection, data: bytes, chunk: int | None = None) -> list:
    events: list = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        conn.receive_data(data[i : i + step])
        events += drain(conn)
    return events


def pump(a: Connection, b: Connection, chunk: int | None = None) -> tuple[list, list]:
    """Move bytes both ways until neither side has anything to say."""
    got_a: list = []
    got_b: list = []
    for _ in range(100):
        to_b, to_a = out(a), out(b)
        if not to_a and not to_b:
            return got_a, got_b
        got_b += feed(b, to_b, chunk)
        got_a += feed(a, to_a, chunk)
    raise AssertionError("handshake does not terminate")


def open_pair(**kw) -> tuple[Connection, Connection]:
    c, s = client(**kw), server(**kw)
    assert pump(c, s) == ([], [])
    assert c.state is State.OPEN and s.state is State.OPEN
    return c, s


def stop(i: int = 0) -> m.Stop:
    return m.Stop("sess", i, False, f"reason {i}")


def assert_same(a: m.Message, b: m.Message) -> None:
    assert type(a) is type(b)
    for name, kind in a.SPEC.items():
        x, y = getattr(a, name), getattr(b, name)
        if kind == "array":
            assert np.array_equal(x, y) and x.dtype == y.dtype
        else:
            assert x == y, name


# -- construction ------------------------------------------------------------------------


@pytest.mark.parametrize("secret", [b"", b"short", bytes(15), "a-str-secret-that-is-long-enough", None])
def test_secret_must_be_at_least_16_bytes(secret: object) -> None:
    with pytest.raises(ValueError):
        Connection(role="task", name="t", secret=secret, client=True)  # type: ignore[arg-type]


def test_new_secret_is_random_and_long_enough() -> None:
    a, b = new_secret(), new_secret()
    assert len(a) >= 16 and a != b


def test_bad_role_or_name_is_refused_locally() -> None:
    with pytest.raises(LocalProtocolError):
        Connection(role="bad role", name="t", secret=SECRET, client=True)
    with pytest.raises(LocalProtocolError):
        Connection(role="task", name="", secret=SECRET, client=True)


def test_hello_is_ready_to_send_at_once() -> None:
    c = client()
    assert c.state is State.HANDSHAKE and c.has_outgoing
    data = out(c)
    assert data.startswith(MAGIC) and not c.has_outgoing
    s = server()
    s.receive_data(data)
    assert s.next_event() is NEED_DATA
    assert s.peer_role == "task" and s.peer_name == "task-0"


# -- handshake ----------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1, 3, 50])
def test_same_secret_authenticates(chunk: int | None) -> None:
    c, s = client(), server()
    assert c.peer_role is None and s.peer_name is None
    assert pump(c, s, chunk) == ([], [])
    assert c.state is State.OPEN and s.state is State.OPEN
    assert (c.peer_role, c.peer_name) == ("node", "node-1")
    assert (s.peer_role, s.peer_name) == ("task", "task-0")
    assert not c.has_outgoing and not s.has_outgoing


def test_nonces_are_fresh_per_connection() -> None:
    a, b = client(), client()
    assert out(a) != out(b)


def test_events_flow_both_ways_after_the_handshake() -> None:
    c, s = open_pair()
    big = Block.from_matrix(tuple(range(100)), np.random.default_rng(0).standard_normal((100, 50)))
    to_server = [stop(1), m.Contribute("sess", 2, "task-0", "a0", big), stop(3)]
    data = b"".join(b"".join(bytes(x) for x in c.send(e)) for e in to_server)
    for chunk in (None, 1, 1000):
        s2 = s if chunk is None else None
        if s2 is None:
            c, s2 = open_pair()
        got = feed(s2, data, chunk)
        assert len(got) == 3
        for a, b in zip(got, to_server):
            if isinstance(a, m.Contribute):
                assert a.block == big
            else:
                assert_same(a, b)
    reply = m.ContributeAck("sess", 2, "task-0", "a0", True)
    (got,) = feed(c, b"".join(bytes(x) for x in s.send(reply)))
    assert_same(got, reply)


def test_event_in_the_same_read_as_auth_is_not_lost() -> None:
    c, s = client(), server()
    s.receive_data(out(c))  # client's Hello
    assert drain(s) == []
    server_hello_and_auth = out(s)  # Hello, then Auth (s has read the client's Hello)
    c.receive_data(server_hello_and_auth)
    assert drain(c) == []
    assert c.state is State.OPEN  # the client verified the server first
    # The client's Auth and its first event leave in one write and arrive in one read.
    glued = out(c) + b"".join(bytes(x) for x in c.send(stop(7))) + b"".join(bytes(x) for x in c.send(stop(8)))
    s.receive_data(glued)
    s.receive_data(b"")  # and the client closes right after
    assert s.next_event() is NEED_DATA  # state change first
    assert s.state is State.OPEN
    first, second = s.next_event(), s.next_event()
    assert_same(first, stop(7))
    assert_same(second, stop(8))
    assert s.next_event() is CLOSED


def test_writable_only_after_authentication() -> None:
    c, s = client(), server()
    s.receive_data(out(c))
    drain(s)
    assert s.writable() is None
    pump(c, s)
    arr = np.zeros(10_000, "<f8")
    data = b"".join(bytes(x) for x in c.send(m.LoopData("sess", 1, arr, False)))
    s.receive_data(data[:200])
    assert s.next_event() is NEED_DATA
    view = s.writable()
    assert view is not None and 0 < len(view) <= arr.nbytes
    n = len(view)
    view[:] = data[len(data) - n :]
    s.advance(n)
    event = s.next_event()
    assert isinstance(event, m.LoopData) and event.data.shape == (10_000,)


# -- authentication failures -----------------------------------------------------------------


def test_wrong_secret_fails_on_both_sides() -> None:
    c, s = client(), server(OTHER_SECRET)
    s.receive_data(out(c))
    c.receive_data(out(s))
    assert drain(s) == [] and drain(c) == []
    c_auth, s_auth = out(c), out(s)
    assert c_auth and s_auth
    s.receive_data(c_auth)
    with pytest.raises(AuthenticationError, match="node|task"):
        s.next_event()
    assert s.state is State.ERROR
    c.receive_data(s_auth)
    with pytest.raises(AuthenticationError):
        c.next_event()
    assert c.state is State.ERROR
    for conn in (c, s):
        with pytest.raises(LocalProtocolError):
            conn.send(stop())


def test_wrong_secret_via_pump_raises_authentication_error() -> None:
    c, s = client(), server(OTHER_SECRET)
    with pytest.raises(AuthenticationError) as info:
        pump(c, s)
    assert isinstance(info.value, RemoteProtocolError)
    assert State.ERROR in (c.state, s.state)
    assert State.OPEN not in (c.state, s.state)


def test_two_clients_or_two_servers_never_authenticate_each_other() -> None:
    # The MAC's client/server tag: a client's proof is not a server's proof.
    for a, b in ((client(), client()), (server(), server())):
        with pytest.raises(AuthenticationError):
            pump(a, b)


def test_reflecting_the_servers_own_hello_and_auth_fails() -> None:
    s = server()
    s_hello = out(s)
    s.receive_data(s_hello)  # attacker echoes the server's Hello (its nonce) back
    assert drain(s) == []
    s_auth = out(s)
    assert s_auth  # the server proved itself for that nonce...
    s.receive_data(s_auth)  # ...and the attacker reflects the proof
    with pytest.raises(AuthenticationError):
        s.next_event()
    assert s.state is State.ERROR


def test_reflecting_across_two_server_connections_fails() -> None:
    s1, s2 = server(), server()
    h1, h2 = out(s1), out(s2)
    s1.receive_data(h2)  # attacker introduces s2's Hello to s1 and vice versa
    s2.receive_data(h1)
    drain(s1)
    drain(s2)
    a1 = out(s1)  # s1's proof over (s2's nonce, s1's nonce, s1's identity)
    s2.receive_data(a1)  # exactly what s2 expects, except for the client/server tag
    with pytest.raises(AuthenticationError):
        s2.next_event()


def test_reflecting_the_clients_own_messages_fails() -> None:
    c = client()
    c.receive_data(out(c))
    drain(c)
    c.receive_data(out(c))
    with pytest.raises(AuthenticationError):
        c.next_event()


def test_replaying_a_recorded_auth_with_a_new_nonce_fails() -> None:
    c, s = client(), server()
    recorded = out(c)  # client Hello
    s.receive_data(recorded)
    drain(s)
    c.receive_data(out(s))
    drain(c)
    auth = out(c)  # client Auth
    recorded += auth
    s.receive_data(auth)
    drain(s)
    assert s.state is State.OPEN and c.state is State.OPEN
    # An eavesdropper replays the whole client side to a fresh server connection.
    s_new = server()
    s_new.receive_data(recorded)
    with pytest.raises(AuthenticationError):
        drain(s_new)
    assert s_new.state is State.ERROR


@pytest.mark.parametrize("claim", [("coordinator", "task-0"), ("task", "task-1")], ids=["role", "name"])
def test_mac_binds_the_claimed_role_and_name(claim: tuple[str, str]) -> None:
    c, s = client(), server()
    genuine = out(c)
    decoder = FrameDecoder()
    decoder.receive_data(genuine)
    hello = m.from_frame(decoder.next_frame())
    assert isinstance(hello, m.Hello) and hello.role == "task"
    # a man in the middle keeps the nonce but claims another identity
    forged = frame_bytes(m.Hello(*claim, hello.nonce))
    assert forged != genuine
    s.receive_data(forged)
    drain(s)
    c.receive_data(out(s))
    drain(c)
    s.receive_data(out(c))
    with pytest.raises(AuthenticationError):
        s.next_event()


# -- protocol violations ------------------------------------------------------------------------


@pytest.mark.parametrize("first", [stop(), m.Auth(bytes(32)), m.LoopData("s", 0, np.zeros(3), False)],
                         ids=["stop", "auth-before-hello", "loop-data"])
def test_non_hello_first_frame_is_a_protocol_error(first: m.Message) -> None:
    s = server()
    s.receive_data(frame_bytes(first))
    with pytest.raises(RemoteProtocolError) as info:
        s.next_event()
    assert not isinstance(info.value, AuthenticationError)
    assert s.state is State.ERROR


@pytest.mark.parametrize("second", [stop(), m.Hello("task", "x", bytes(32))], ids=["stop", "second-hello"])
def test_non_auth_second_frame_is_a_protocol_error(second: m.Message) -> None:
    c, s = client(), server()
    s.receive_data(out(c) + frame_bytes(second))
    with pytest.raises(RemoteProtocolError):
        drain(s)
    assert s.state is State.ERROR


def test_garbage_before_auth_is_a_protocol_error() -> None:
    s = server()
    s.receive_data(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        s.next_event()
    assert s.state is State.ERROR


def test_frames_over_the_handshake_limit_are_rejected_before_auth() -> None:
    big = m.LoopData("s", 0, np.zeros(HANDSHAKE_MAX_FRAME_BYTES // 8 + 1, "<f8"), False)
    data = frame_bytes(big)
    assert len(data) > HANDSHAKE_MAX_FRAME_BYTES
    s = server(max_frame_bytes=1 << 30)
    s.receive_data(data[:64])  # the prelude alone is enough to refuse it
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        s.next_event()
    # ...while after authentication the same frame is fine
    c, s = open_pair()
    (got,) = feed(s, b"".join(bytes(x) for x in c.send(big)))
    assert_same(got, big)


def test_huge_claimed_frame_before_auth_is_rejected_from_the_prelude() -> None:
    s = server()
    s.receive_data(PRELUDE.pack(MAGIC, VERSION, 0, 20, 1) + LENGTH.pack(2**40))
    with pytest.raises(RemoteProtocolError):
        s.next_event()


def test_post_auth_frame_limit_is_the_configured_one() -> None:
    c, s = open_pair(max_frame_bytes=1 << 16)
    ok = m.LoopData("s", 0, np.zeros(1000, "<f8"), False)
    assert len(feed(s, b"".join(bytes(x) for x in c.send(ok)))) == 1
    too_big = m.LoopData("s", 0, np.zeros(10_000, "<f8"), False)
    with pytest.raises(RemoteProtocolError):
        feed(s, b"".join(bytes(x) for x in c.send(too_big)))


@pytest.mark.parametrize("late", [m.Hello("task", "task-0", bytes(32)), m.Auth(bytes(32))], ids=["hello", "auth"])
def test_handshake_messages_after_the_handshake_are_protocol_errors(late: m.Message) -> None:
    c, s = open_pair()
    s.receive_data(frame_bytes(late))
    with pytest.raises(RemoteProtocolError, match="after the handshake"):
        s.next_event()
    assert s.state is State.ERROR


def test_replaying_the_peers_auth_after_the_handshake_is_an_error() -> None:
    c, s = client(), server()
    s.receive_data(out(c))
    drain(s)
    c.receive_data(out(s))
    drain(c)
    c_auth = out(c)
    s.receive_data(c_auth)
    drain(s)
    assert s.state is State.OPEN
    s.receive_data(c_auth)
    with pytest.raises(RemoteProtocolError):
        s.next_event()


def test_error_state_is_terminal() -> None:
    c, s = client(), server()
    s.receive_data(out(c))
    drain(s)
    c.receive_data(out(s))
    drain(c)
    c_auth = out(c)
    s.receive_data(c_auth)
    drain(s)
    s.receive_data(frame_bytes(m.Hello("task", "task-0", bytes(32))))  # a protocol error...
    with pytest.raises(RemoteProtocolError):
        s.next_event()
    assert s.state is State.ERROR
    s.receive_data(c_auth + frame_bytes(stop(1)))  # ...then the peer replays its Auth and carries on
    try:
        drain(s)
    except ProtocolError:
        pass
    assert s.state is State.ERROR


def test_send_before_open_is_a_local_error() -> None:
    c = client()
    with pytest.raises(LocalProtocolError):
        c.send(stop())
    s = server()
    s.receive_data(out(c))
    drain(s)  # mid-handshake
    with pytest.raises(LocalProtocolError):
        s.send(stop())


@pytest.mark.parametrize("msg", [m.Hello("task", "x", bytes(32)), m.Auth(bytes(32))])
def test_handshake_messages_cannot_be_sent_by_hand(msg: m.Message) -> None:
    c, _ = open_pair()
    with pytest.raises(LocalProtocolError):
        c.send(msg)


def test_send_after_the_peer_closed_is_connection_lost() -> None:
    # The peer went away: that is a lost connection, not a bug of ours.
    c, s = open_pair()
    s.receive_data(b"")
    assert s.next_event() is CLOSED
    assert s.state is State.CLOSED
    with pytest.raises(ConnectionLost):
        s.send(stop())


# -- end of stream ---------------------------------------------------------------------------------


def test_clean_eof_after_events_gives_the_events_then_closed() -> None:
    c, s = open_pair()
    s.receive_data(b"".join(bytes(x) for x in c.send(stop(1))))
    s.receive_data(b"")
    first = s.next_event()
    assert_same(first, stop(1))
    assert s.next_event() is CLOSED
    assert s.next_event() is CLOSED  # and it stays closed
    assert s.state is State.CLOSED


@pytest.mark.parametrize("cut", [1, PRELUDE.size, 40, -1])
def test_eof_mid_frame_is_a_protocol_error(cut: int) -> None:
    c, s = open_pair()
    data = b"".join(bytes(x) for x in c.send(m.LoopData("s", 0, np.arange(100.0), False)))
    s.receive_data(data[:cut])
    assert s.next_event() is NEED_DATA
    s.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="middle of a frame"):
        s.next_event()
    assert s.state is State.ERROR


def test_eof_mid_frame_through_the_recv_into_path_is_a_protocol_error() -> None:
    c, s = open_pair()
    data = b"".join(bytes(x) for x in c.send(m.LoopData("s", 0, np.arange(1000.0), False)))
    s.receive_data(data[: len(data) - 8000])
    assert s.next_event() is NEED_DATA
    view = s.writable()
    assert view is not None
    view[:100] = bytes(100)
    s.advance(100)
    s.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        s.next_event()


@pytest.mark.parametrize("stage", ["nothing", "hello", "partial-hello", "hello-no-auth"])
def test_eof_during_the_handshake_is_a_protocol_error(stage: str) -> None:
    c, s = client(), server()
    hello = out(c)
    if stage == "hello":
        s.receive_data(hello)
    elif stage == "partial-hello":
        s.receive_data(hello[:10])
    elif stage == "hello-no-auth":
        s.receive_data(hello)
        assert drain(s) == []
    s.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        drain(s)
    assert s.state is State.ERROR


def test_data_after_eof_is_rejected() -> None:
    c, s = open_pair()
    s.receive_data(b"")
    with pytest.raises(RemoteProtocolError):
        s.receive_data(b"late bytes")
