"""When has YARN given every map task of a job its container? (for speculative scheduling)

Speculative scheduling submits iteration i+1 once none of iteration i's map
tasks can still be waiting for a slot. Tasks saying "started" to the
coordinator proves that, but late: between a task's container being launched
and its Python process connecting lie a JVM start, the streaming set-up and
the Python start (5-8 s on the mini-cluster). The MapReduce ApplicationMaster
knows earlier: a map task is RUNNING once its container is launched. This
module finds the iteration's application by the tag the driver gave its job
(``mapreduce.job.tags``), asks the ApplicationMaster through the
ResourceManager's web proxy (``http://RM/proxy/<application>/ws/v1/mapreduce/jobs``),
and says so once every map is running or done.

It only ever makes the next submission earlier, never less safe, and any
failure (no web address configured, a secured web UI, an HA setup, an odd
answer) just leaves the driver waiting for the tasks themselves.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
REQUEST_TIMEOUT = 5.0
# Give up (and leave it to the tasks) after this many failed or unreadable
# answers once the ApplicationMaster should be up.
MAX_FAILURES = 240


def application_tag(session: str, iteration: int) -> str:
    """The YARN application tag that names one iteration's job (YARN lower-cases tags)."""
    return f"hcollectives-{session}-{iteration}".lower()


def application_with_tag(answer: object) -> str | None:
    """The application id in a ``ws/v1/cluster/apps?applicationTags=...`` answer (None if not exactly one)."""
    try:
        apps = answer["apps"]["app"]  # type: ignore[index]
        return str(apps[0]["id"]) if len(apps) == 1 else None
    except (KeyError, TypeError, IndexError):  # {"apps": null} until it is submitted
        return None


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
    """Finds the application tagged *tag*, then polls its map tasks; calls
    *on_all_launched* once, from this thread."""

    def __init__(self, rm_web: str, tag: str, on_all_launched: Callable[[], None], *,
                 poll: float = POLL_SECONDS, max_failures: int = MAX_FAILURES) -> None:
        super().__init__(daemon=True, name=f"hcollectives-yarn-watch-{tag}")
        self.rm_web, self.tag = rm_web, tag
        self.on_all_launched = on_all_launched
        self.poll, self.max_failures = poll, max_failures
        self.application: str | None = None
        self.launched = False
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        failures = 0
        apps_url = f"http://{self.rm_web}/ws/v1/cluster/apps?applicationTags={self.tag}"
        while not self._halt.is_set() and failures < self.max_failures:
            if self.application is None:
                self.application = application_with_tag(ask(apps_url))
                failures += self.application is None  # not submitted yet, or no answer
            else:
                answer = ask(f"http://{self.rm_web}/proxy/{self.application}/ws/v1/mapreduce/jobs")
                if all_maps_launched(answer):
                    self.launched = True
                    self.on_all_launched()
                    return
                failures += answer is None  # e.g. the proxy's "Moved" page while the ApplicationMaster starts
            self._halt.wait(self.poll)
        if failures >= self.max_failures:
            log.debug("gave up watching YARN application tagged %s", self.tag)


def ask(url: str) -> object | None:
    """A ResourceManager REST answer (JSON, at most 1 MiB), or None if there is none."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as reply:  # noqa: S310 -- http only
            return json.loads(reply.read(1 << 20))
    except (OSError, ValueError, urllib.error.URLError):
        return None


def kill_application(rm_web: str, tag: str, *, timeout: float = REQUEST_TIMEOUT) -> str | None:
    """Kill the unfinished YARN application tagged *tag* through the ResourceManager's
    REST API; the killed application's id, or None if there was none to kill or
    the web service refused (a secured UI: then the job ends by itself)."""
    apps_url = f"http://{rm_web}/ws/v1/cluster/apps?applicationTags={tag}"
    application = application_with_tag(ask(apps_url))
    if application is None:
        return None
    request = urllib.request.Request(f"http://{rm_web}/ws/v1/cluster/apps/{application}/state",
                                     data=json.dumps({"state": "KILLED"}).encode(), method="PUT",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310 -- http only
            reply.read(1 << 16)
    except (OSError, urllib.error.URLError) as exc:
        log.info("could not kill YARN application %s (tag %s): %s", application, tag, exc)
        return None
    return application
