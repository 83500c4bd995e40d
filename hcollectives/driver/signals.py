"""A clean stop of the driver on SIGTERM, SIGINT and SIGHUP.

Python's defaults are wrong for a driver: SIGTERM and SIGHUP end the process
at once, skipping every clean-up (tasks, daemons and fork servers live on,
temp dirs stay), and SIGINT raises KeyboardInterrupt wherever the main
thread happens to be. Inside the driver's trio loop `watch` turns each of
them into `RunInterrupted`, which unwinds the loop through the normal
failure path; `IterativeDriver.run` then ends the session's processes
without a grace period and removes the temp dirs.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

import trio

from ..errors import RunInterrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def can_watch() -> bool:
    """Signal handlers can only be installed from the main thread (a driver run
    from another thread, e.g. in a test, keeps the process's own handling)."""
    return threading.current_thread() is threading.main_thread()


_watching = False


def _default_handlers_in_child() -> None:
    """A process forked while we watch (mrjob's local-runner pool workers) must not
    inherit our handlers: they only wake the driver's trio loop, so SIGTERM
    (multiprocessing's Pool.terminate, our own clean-up) would never end it."""
    if _watching:
        signal.set_wakeup_fd(-1)
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


os.register_at_fork(after_in_child=_default_handlers_in_child)


async def watch(on_signal: Callable[[str], None], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Raise RunInterrupted on the first of SIGNALS (run in the driver's nursery);
    *on_signal(name)* first, so the driver knows why it is being cancelled."""
    global _watching
    with trio.open_signal_receiver(*SIGNALS) as received:
        _watching = True
        try:
            task_status.started()
            async for signum in received:
                on_signal(signal.Signals(signum).name)
                raise RunInterrupted(int(signum))
        finally:
            _watching = False


class deferred:
    """Hold SIGTERM, SIGINT and SIGHUP while the driver cleans up, then restore them
    (a signal that came meanwhile is dropped: the clean-up is already the stop)."""

    def __enter__(self) -> "deferred":
        self._saved = {s: signal.signal(s, signal.SIG_IGN) for s in SIGNALS} if can_watch() else {}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._saved.items():
            signal.signal(s, handler)


def end_processes(processes, grace: float = 2.0) -> None:
    """SIGTERM *processes* (multiprocessing children), then SIGKILL what is left after *grace*."""
    for proc in processes:
        proc.terminate()
    for proc in processes:
        proc.join(grace)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


def end_fork_servers(directory: str) -> None:
    """SIGKILL this run's fork servers: processes whose command line names a socket
    in *directory* (their tasks die with them: PR_SET_PDEATHSIG)."""
    from pathlib import Path

    marker = f"--socket\0{directory}/".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in proc.joinpath("cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue
