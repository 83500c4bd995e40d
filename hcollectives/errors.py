"""One error hierarchy for the whole library.

Everything hcollectives raises on purpose derives from `HCollectivesError`, so
a caller can catch the library's failures without catching its own bugs.
"""

from __future__ import annotations


class HCollectivesError(Exception):
    """Root of every error hcollectives raises on purpose."""


class ConfigurationError(HCollectivesError, ValueError):
    """An option or argument is invalid; raised before any I/O is done."""


class ProtocolError(HCollectivesError):
    """Bytes on a connection do not follow the wire protocol."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow (our bug or our caller's)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow (garbage, oversize, bad type)."""


class AuthenticationError(RemoteProtocolError):
    """The peer failed the HMAC handshake: it does not know the session secret."""


class CollectiveTimeout(HCollectivesError, TimeoutError):
    """A wait ran past its deadline."""


class ConnectionLost(HCollectivesError, ConnectionError):
    """A peer closed the connection or could not be reached."""


class BadMapperOutput(HCollectivesError, ValueError):
    """A mapper emitted a record the collective cannot accept.

    The message names the task and the offending record, because this is the
    error a user sees when their own mapper is wrong.
    """


class BadInputRecord(BadMapperOutput):
    """An input record that the job's parse_input could not turn into one row of numbers.

    A subclass of BadMapperOutput on purpose: deterministic, so a retry would
    fail the same way and the whole run is stopped at once."""


class ShapeMismatch(BadMapperOutput):
    """Values for one key have different lengths (across records or tasks)."""


class CommandFailed(HCollectivesError):
    """A streaming mapper or post-process command could not be run at all (not
    found, not executable). Deterministic, like BadMapperOutput: the run stops at
    once instead of Hadoop retrying every task into the same failure."""


class StoreError(HCollectivesError, OSError):
    """The durable store (file://, hdfs://, ...) failed or timed out."""


class SessionAborted(HCollectivesError):
    """The session was aborted (a task failed, the driver stopped); carries the first cause."""


class JobFailed(HCollectivesError):
    """An iteration's job failed; the message carries the first task failure."""


class RunInterrupted(HCollectivesError):
    """The driver got SIGTERM, SIGINT or SIGHUP; everything of the run was stopped.
    Front ends exit with `exit_code` (128 + the signal's number, as a shell would)."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}; stopped the run's tasks and daemons")
