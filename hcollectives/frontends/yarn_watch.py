"""When has YARN given every map task of a job its container? (for speculative scheduling)

Speculative scheduling submits iteration i+1 once none of iteration i's map
tasks can still be waiting for a slot. Tasks saying "started" to the
coordinator proves that, but late: between a task's container being launched
and its Python process connecting lie a JVM start, the streaming set-up and
the Python start (5-8 s on the mini-cluster). The MapReduce ApplicationMaster
knows earlier: a map task is RUNNING once its container is launched. This
module asks it, through the ResourceManager's web proxy
(``http://RM/proxy/<application>/ws/v1/mapreduce/jobs``), and says so once
every map is running or done.

It only ever makes the next submission earlier, never less safe, and any
failure (no web address configured, a secured web UI, an HA setup, an odd
answer) just leaves the driver waiting for the tasks themselves.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

log = logging.getLogger(__name__)

_SUBMITTED = re.compile(r"Submitted application (application_\d+_\d+)")
POLL_SECONDS = 0.25
REQUEST_TIMEOUT = 5.0
# Give up (and leave it to the tasks) after this many failed or unreadable
# answers once the ApplicationMaster should be up.
MAX_FAILURES = 240


def submitted_application(message: str) -> str | None:
    """The application id in the Hadoop job client's "Submitted application ..." log line."""
    match = _SUBMITTED.search(message or "")
    return match.group(1) if match else None


def all_maps_launched(answer: object) -> bool:
    """Whether a ``ws/v1/mapreduce/jobs`` answer shows every map task RUNNING or done.

    A map task is RUNNING once its container has been launched; before its
    ApplicationMaster schedules it, it is NEW (counted neither pending nor
    running), so "nothing pending" alone would be true too early.
    """
    try:
        jobs = answer["jobs"]["job"]  # type: ignore[index]
        if len(jobs) != 1:
            return False
        job = jobs[0]
        total, running, done = int(job["mapsTotal"]), int(job["mapsRunning"]), int(job["mapsCompleted"])
    except (KeyError, TypeError, ValueError, IndexError):
        return False
    return total > 0 and running + done >= total


class MapLaunchWatcher(threading.Thread):
    """Polls one application's map tasks; calls *on_all_launched* once, from this thread."""

    def __init__(self, rm_web: str, application: str, on_all_launched: Callable[[], None], *,
                 poll: float = POLL_SECONDS, max_failures: int = MAX_FAILURES) -> None:
        super().__init__(daemon=True, name=f"hcollectives-yarn-watch-{application}")
        self.url = f"http://{rm_web}/proxy/{application}/ws/v1/mapreduce/jobs"
        self.on_all_launched = on_all_launched
        self.poll, self.max_failures = poll, max_failures
        self.launched = False
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        failures = 0
        while not self._halt.is_set() and failures < self.max_failures:
            answer = self._ask()
            if answer is None:
                failures += 1  # e.g. the proxy's "Moved" page while the ApplicationMaster starts
            elif all_maps_launched(answer):
                self.launched = True
                self.on_all_launched()
                return
            self._halt.wait(self.poll)
        if failures >= self.max_failures:
            log.debug("gave up watching %s", self.url)

    def _ask(self) -> object | None:
        request = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as reply:  # noqa: S310 -- http only
                return json.loads(reply.read(1 << 20))
        except (OSError, ValueError, urllib.error.URLError):
            return None
