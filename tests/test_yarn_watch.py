"""yarn_watch: reading the ApplicationMaster's map states through a (fake) ResourceManager proxy."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hcollectives.frontends import hadoop_conf, yarn_watch
from hcollectives.frontends.yarn_watch import MapLaunchWatcher, all_maps_launched, submitted_application

APP = "application_1795295192264_0024"


def jobs(total: int, running: int, completed: int, pending: int = 0) -> dict:
    return {"jobs": {"job": [{"id": "job_1795295192264_0024", "state": "RUNNING", "mapsTotal": total,
                              "mapsRunning": running, "mapsCompleted": completed, "mapsPending": pending}]}}


def test_the_application_id_comes_from_the_job_clients_log_line():
    line = "Submitted application application_1795295192264_0024"
    assert submitted_application(line) == APP
    assert submitted_application("Running job: job_1795295192264_0024") is None
    assert submitted_application("") is None


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
    """Serves /proxy/<app>/ws/v1/mapreduce/jobs from a list of answers (the last one repeats)."""

    def __init__(self, answers: list):
        self.answers, self.paths = list(answers), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.paths.append(self.path)
                answer = outer.answers.pop(0) if len(outer.answers) > 1 else outer.answers[0]
                body = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_watcher_reports_once_when_every_map_has_its_container():
    rm = FakeResourceManager(["<html>Moved</html>", jobs(4, 0, 0), jobs(4, 2, 0, pending=2), jobs(4, 4, 0)])
    calls = []
    try:
        watcher = MapLaunchWatcher(rm.address, APP, lambda: calls.append("launched"), poll=0.01)
        watcher.start()
        watcher.join(timeout=10)
        assert not watcher.is_alive() and watcher.launched
        assert calls == ["launched"]
        assert len(rm.paths) == 4 and set(rm.paths) == {f"/proxy/{APP}/ws/v1/mapreduce/jobs"}
    finally:
        rm.close()


def test_the_watcher_gives_up_quietly_on_an_unreachable_or_odd_service():
    rm = FakeResourceManager(["<html>login required</html>"])
    calls = []
    try:
        watcher = MapLaunchWatcher(rm.address, APP, lambda: calls.append("launched"), poll=0.01, max_failures=5)
        watcher.start()
        watcher.join(timeout=10)
        assert not watcher.is_alive() and not watcher.launched and calls == []
        assert len(rm.paths) == 5
    finally:
        rm.close()
    # nothing listening at all: refused connections count as failures too
    watcher = MapLaunchWatcher(rm.address, APP, lambda: calls.append("launched"), poll=0.01, max_failures=3)
    watcher.start()
    watcher.join(timeout=30)
    assert not watcher.is_alive() and calls == []


def test_stop_ends_the_watcher():
    rm = FakeResourceManager([jobs(4, 0, 0)])
    try:
        watcher = MapLaunchWatcher(rm.address, APP, lambda: None, poll=0.01)
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
