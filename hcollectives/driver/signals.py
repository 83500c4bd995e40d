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


async def watch(on_signal: Callable[[str], None], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Raise RunInterrupted on the first of SIGNALS (run in the driver's nursery);
    *on_signal(name)* first, so the driver knows why it is being cancelled."""
    with trio.open_signal_receiver(*SIGNALS) as received:
        task_status.started()
        async for signum in received:
            on_signal(signal.Signals(signum).name)
            # A second signal while we clean up is ignored by trio's receiver
            # (it is closed once we leave this block), and the process's
            # handlers are restored: a third ^C still ends it the hard way.
            raise RunInterrupted(int(signum))


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
