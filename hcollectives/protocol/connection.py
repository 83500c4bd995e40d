"""`Connection`: the sans-IO state of one end of a connection.

One entry point per direction, as in h11: feed received bytes with
`receive_data`, pull events with `next_event`, turn events into bytes with
`send`. Before any event flows, both ends authenticate each other:

    each end   -> Hello(role, name, nonce)          (sent at once, no waiting)
    each end   -> Auth(HMAC(secret, tag, peer nonce, own nonce, own role, own name))

The MAC covers the peer's fresh nonce (no replay) and a client/server tag (no
reflecting a server's own MAC back at it). Until the peer has proved it knows
the secret, frames are capped at `HANDSHAKE_MAX_FRAME_BYTES`, so an
unauthenticated stranger cannot make us allocate anything large.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets

from ..errors import AuthenticationError, ConnectionLost, LocalProtocolError, RemoteProtocolError
from . import fast_decode
from .frames import DEFAULT_MAX_FRAME_BYTES, Allocator, FrameDecoder
from .messages import Auth, Hello, Message, from_frame

# A Hello or Auth frame is ~100 bytes; 4 KiB is generous and still tiny.
HANDSHAKE_MAX_FRAME_BYTES = 4096
_MAC_DOMAIN = b"hcollectives-auth-v1"


class Sentinel(enum.Enum):
    NEED_DATA = "need data"
    CLOSED = "closed"


NEED_DATA = Sentinel.NEED_DATA
CLOSED = Sentinel.CLOSED


class State(enum.Enum):
    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"
    ERROR = "error"


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def _mac(secret: bytes, tag: bytes, verifier_nonce: bytes, prover_nonce: bytes, role: str, name: str) -> bytes:
    msg = b"|".join((_MAC_DOMAIN, tag, verifier_nonce, prover_nonce, role.encode(), name.encode()))
    return hmac.new(secret, msg, hashlib.sha256).digest()


class Connection:
    """One end of an hcollectives connection (client = the end that dialled)."""

    def __init__(self, *, role: str, name: str, secret: bytes, client: bool,
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, allocate: Allocator | None = None) -> None:
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise ValueError("secret must be at least 16 bytes")
        self.role, self.name, self.client = role, name, client
        self._secret = secret
        self._max_frame_bytes = max_frame_bytes
        self._allocate = allocate  # the owner's buffer pool, used once the peer is authenticated
        self._nonce = secrets.token_bytes(32)
        self._decoder = FrameDecoder(max_frame_bytes=HANDSHAKE_MAX_FRAME_BYTES)
        self._outgoing: list[bytes | memoryview] = list(Hello(role, name, self._nonce).to_frame())
        self._peer_hello: Hello | None = None
        self.state = State.HANDSHAKE

    # -- what the transport asks ---------------------------------------------------

    @property
    def peer_role(self) -> str | None:
        return self._peer_hello.role if self._peer_hello else None

    @property
    def peer_name(self) -> str | None:
        return self._peer_hello.name if self._peer_hello else None

    def data_to_send(self) -> list[bytes | memoryview]:
        """Handshake bytes the connection produced by itself; send these first.

        Also after a handshake error: our Auth may still be queued, and a peer
        with the wrong secret should see *our* Auth fail rather than a bare close."""
        out, self._outgoing = self._outgoing, []
        return out

    @property
    def has_outgoing(self) -> bool:
        return bool(self._outgoing)

    def writable(self) -> memoryview | None:
        """Where the transport may ``recv_into`` directly (a big array's body)."""
        return self._decoder.writable() if self.state is State.OPEN else None

    def advance(self, n: int) -> None:
        self._decoder.advance(n)

    # -- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        self._decoder.receive_data(data)

    def next_event(self) -> Message | Sentinel:
        """Next event from the peer, NEED_DATA, or CLOSED (clean end of stream)."""
        if self.state is State.ERROR:  # terminal: a replayed Auth must not revive it
            raise RemoteProtocolError("the connection already failed")
        try:
            while True:
                if self.state is State.OPEN:
                    # A whole small frame of the latency path, in one pass; anything
                    # else (and anything wrong) is decoded and judged below.
                    event = fast_decode.next_event(self._decoder)
                    if event is not None:
                        return event
                frame = self._decoder.next_frame()
                if frame is None:
                    if self._decoder.eof:
                        if self._decoder.mid_frame:
                            raise RemoteProtocolError("peer closed the connection in the middle of a frame")
                        if self.state is State.HANDSHAKE:
                            raise RemoteProtocolError("peer closed the connection during the handshake")
                        self.state = State.CLOSED
                        return CLOSED
                    return NEED_DATA
                event = from_frame(frame)
                if self.state is State.OPEN:
                    if isinstance(event, (Hello, Auth)):
                        raise RemoteProtocolError(f"{type(event).__name__} after the handshake")
                    return event
                self._handshake_step(event)
                if self.state is State.OPEN:
                    # Let the transport see the state change before any event
                    # that arrived in the same read is handed out.
                    return NEED_DATA
        except RemoteProtocolError:
            self.state = State.ERROR
            raise

    def _handshake_step(self, event: Message) -> None:
        if self._peer_hello is None:
            if not isinstance(event, Hello):
                raise RemoteProtocolError(f"expected Hello, got {type(event).__name__}")
            self._peer_hello = event
            tag = b"C" if self.client else b"S"
            mac = _mac(self._secret, tag, event.nonce, self._nonce, self.role, self.name)
            self._outgoing.extend(Auth(mac).to_frame())
            return
        if not isinstance(event, Auth):
            raise RemoteProtocolError(f"expected Auth, got {type(event).__name__}")
        hello = self._peer_hello
        tag = b"S" if self.client else b"C"
        expected = _mac(self._secret, tag, self._nonce, hello.nonce, hello.role, hello.name)
        if not hmac.compare_digest(expected, event.mac):
            raise AuthenticationError(
                f"peer {hello.role} {hello.name!r} failed authentication (wrong session secret?)")
        self.state = State.OPEN
        self._decoder.max_frame_bytes = self._max_frame_bytes
        self._decoder.allocate = self._allocate

    # -- sending -----------------------------------------------------------------------

    def send(self, event: Message) -> list[bytes | memoryview]:
        if self.state is State.CLOSED:
            raise ConnectionLost("the peer closed the connection")
        if self.state is not State.OPEN:
            raise LocalProtocolError(f"cannot send {type(event).__name__} in state {self.state.value}")
        if isinstance(event, (Hello, Auth)):
            raise LocalProtocolError("handshake messages are sent by the connection itself")
        return event.to_frame()
