"""yarn_watch: reading the ApplicationMaster's map states through a (fake) ResourceManager proxy."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hcollectives.hadoop import hadoop_conf, yarn_watch
from hcollectives.hadoop.yarn_watch import (
    MapLaunchWatcher,
    all_maps_launched,
    application_tag,
    application_with_tag,
)

APP = "application_1795295192264_0024"


def jobs(total: int, running: int, completed: int, pending: int = 0) -> dict:
    return {"jobs": {"job": [{"id": "job_1795295192264_0024", "state": "RUNNING", "mapsTotal": total,
                              "mapsRunning": running, "mapsCompleted": completed, "mapsPending": pending}]}}


TAG = application_tag("0123456789ABCDEF", 3)
APPS = {"apps": {"app": [{"id": APP, "state": "RUNNING", "applicationTags": TAG}]}}


def test_an_iterations_application_is_found_by_its_tag():
    assert TAG == "hcollectives-0123456789abcdef-3"  # YARN lower-cases tags
    assert application_with_tag(APPS) == APP
    assert application_with_tag({"apps": None}) is None  # not submitted yet
    assert application_with_tag({"apps": {"app": APPS["apps"]["app"] * 2}}) is None
    assert application_with_tag("<html/>") is None


@pytest.mark.parametrize("answer, launched", [
    (jobs(4, 4, 0), True),
    (jobs(4, 1, 3), True),  # some already done
    (jobs(4, 0, 0), False),  # tasks still NEW: neither pending nor running, not yet launched
    (jobs(4, 2, 0, pending=2), False),
    (jobs(0, 0, 0), False),
    ({"jobs": {"job": []}}, False),
    ({"jobs": {"job": [jobs(4, 4, 0)["jobs"]["job"][0]] * 2}}, False),  # which job? do not guess
    ({"jobs": None}, False),
    ({"jobs": {"job": [{"mapsTotal": "x", "mapsRunning": 1, "mapsCompleted": 0}]}}, False),
    ("<html>Moved</html>", False),
])
def test_all_maps_launched(answer, launched):
    assert all_maps_launched(answer) is launched


class FakeResourceManager:
    """Serves the RM's application list and /proxy/<app>/ws/v1/mapreduce/jobs, each
    from a list of answers (the last one repeats)."""

    def __init__(self, answers: list, apps: list | None = None):
        self.answers, self.apps, self.paths = list(answers), list(apps or [APPS]), []
        self.allow_kill = True
        outer = self

        def next_of(answers: list):
            return answers.pop(0) if len(answers) > 1 else answers[0]

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.paths.append(self.path)
                answer = next_of(outer.apps if self.path.startswith("/ws/v1/cluster/apps") else outer.answers)
                body = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.paths.append(f"PUT {self.path} {body.decode()}")
                reply = json.dumps({"state": "KILLED"}).encode()
                self.send_response(200 if outer.allow_kill else 403)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_watcher_reports_once_when_every_map_has_its_container():
    rm = FakeResourceManager(["<html>Moved</html>", jobs(4, 0, 0), jobs(4, 2, 0, pending=2), jobs(4, 4, 0)],
                             apps=[{"apps": None}, APPS])
    calls = []
    try:
        watcher = MapLaunchWatcher(rm.address, TAG, lambda: calls.append("launched"), poll=0.01)
        watcher.start()
        watcher.join(timeout=10)
        assert not watcher.is_alive() and watcher.launched and watcher.application == APP
        assert calls == ["launched"]
        assert rm.paths == [f"/ws/v1/cluster/apps?applicationTags={TAG}"] * 2 + \
            [f"/proxy/{APP}/ws/v1/mapreduce/jobs"] * 4
    finally:
        rm.close()


def test_the_watcher_gives_up_quietly_on_an_unreachable_or_odd_service():
    rm = FakeResourceManager(["<html>login required</html>"])
    calls = []
    try:
        watcher = MapLaunchWatcher(rm.address, TAG, lambda: calls.append("launched"), poll=0.01, max_failures=5)
        watcher.start()
        watcher.join(timeout=10)
        assert not watcher.is_alive() and not watcher.launched and calls == []
        assert len(rm.paths) == 1 + 5  # found the application, then 5 unreadable answers
    finally:
        rm.close()
    # nothing listening at all: refused connections count as failures too
    watcher = MapLaunchWatcher(rm.address, TAG, lambda: calls.append("launched"), poll=0.01, max_failures=3)
    watcher.start()
    watcher.join(timeout=30)
    assert not watcher.is_alive() and calls == []


def test_stop_ends_the_watcher():
    rm = FakeResourceManager([jobs(4, 0, 0)])
    try:
        watcher = MapLaunchWatcher(rm.address, TAG, lambda: None, poll=0.01)
        watcher.start()
        watcher.stop()
        watcher.join(timeout=10)
        assert not watcher.is_alive() and not watcher.launched
    finally:
        rm.close()


def test_resource_manager_web_address_from_yarn_site(tmp_path):
    (tmp_path / "yarn-site.xml").write_text(
        "<configuration><property><name>yarn.resourcemanager.webapp.address</name>"
        "<value>127.0.0.1:18088</value></property></configuration>")
    assert hadoop_conf.resource_manager_web({"HADOOP_CONF_DIR": str(tmp_path)}) == "127.0.0.1:18088"
    assert hadoop_conf.resource_manager_web({}) is None
    assert yarn_watch.POLL_SECONDS * yarn_watch.MAX_FAILURES >= 30  # AM start-up fits in the failure budget


def test_a_failed_runs_application_is_killed_by_its_tag():
    rm = FakeResourceManager([jobs(4, 4, 0)])
    try:
        assert yarn_watch.kill_application(rm.address, TAG) == APP
        assert rm.paths == [f"/ws/v1/cluster/apps?applicationTags={TAG}",
                            f'PUT /ws/v1/cluster/apps/{APP}/state {{"state": "KILLED"}}']
    finally:
        rm.close()


def test_nothing_is_killed_without_an_application_or_permission():
    rm = FakeResourceManager([jobs(4, 4, 0)], apps=[{"apps": None}])
    try:
        assert yarn_watch.kill_application(rm.address, TAG) is None  # not submitted: nothing to kill
        assert not [p for p in rm.paths if p.startswith("PUT")]
    finally:
        rm.close()
    rm = FakeResourceManager([jobs(4, 4, 0)])
    rm.allow_kill = False  # a secured web UI refuses anonymous kills: the job then ends by itself
    try:
        assert yarn_watch.kill_application(rm.address, TAG) is None
    finally:
        rm.close()
