"""hadoop/yarn_slots.py: does YARN have a container for every resident task? (fake ResourceManager)"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hcollectives import ConfigurationError
from hcollectives.hadoop.yarn_slots import (
    ContainerSize,
    check_resident_slots,
    container_sizes,
    free_in_cluster,
    free_per_node,
    map_slots,
)


def nodes(*free):
    return {"nodes": {"node": [{"id": f"n{k}:1", "state": "RUNNING", "availMemoryMB": mb,
                                "availableVirtualCores": vc} for k, (mb, vc) in enumerate(free)]}}


class FakeRM:
    def __init__(self, answers: dict[str, object]):
        self.answers, self.paths = answers, []
        rm = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                rm.paths.append(self.path)
                answer = rm.answers.get(self.path)
                if answer is None:
                    self.send_error(404)
                    return
                body = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
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


@pytest.fixture
def fake_rm():
    made = []

    def make(answers):
        made.append(FakeRM(answers))
        return made[-1]

    yield make
    for rm in made:
        rm.close()


def test_map_slots_places_the_application_master_first_and_counts_per_node():
    task, am = ContainerSize(1024, 1), ContainerSize(2048, 1)
    assert map_slots([(4096, 8), (4096, 8)], task, am) == 2 + 4
    assert map_slots([(4096, 2)], task, am) == 1  # vcores bound it
    assert map_slots([(1024, 8)], task, am) == 0  # not even the ApplicationMaster fits
    assert map_slots([(1500, 8), (1500, 8), (3000, 1)], task, am) == 2  # no container spans two nodes


def test_container_sizes_come_from_the_job_then_round_up_to_the_minimum_allocation(tmp_path):
    (tmp_path / "yarn-site.xml").write_text(
        "<configuration><property><name>yarn.scheduler.minimum-allocation-mb</name><value>512</value>"
        "</property></configuration>")
    task, am = container_sizes({"mapreduce.map.memory.mb": "700", "mapreduce.map.cpu.vcores": "2"},
                               {"HADOOP_CONF_DIR": str(tmp_path)})
    assert (task.memory_mb, task.vcores) == (1024, 2)
    assert (am.memory_mb, am.vcores) == (1536, 1)  # Hadoop's default
    with pytest.raises(ConfigurationError, match="mapreduce.map.memory.mb"):
        container_sizes({"mapreduce.map.memory.mb": "lots"}, {})


def test_answers_that_do_not_parse_are_none():
    assert free_per_node({"nodes": None}) is None
    assert free_in_cluster("<html/>") is None
    assert free_in_cluster({"clusterMetrics": {"availableMB": 5, "availableVirtualCores": 1}}) == [(5, 1)]


def test_too_few_slots_fails_naming_tasks_and_slots(fake_rm):
    # defaults: 1024 MB maps, a 1536 MB ApplicationMaster rounded up to 2048
    rm = fake_rm({"/ws/v1/cluster/nodes": nodes((4096, 4), (1024, 4))})
    with pytest.raises(ConfigurationError) as info:
        check_resident_slots(jobconf={}, min_tasks=4, env={}, rm_web=rm.address)
    message = str(info.value)
    assert "at least 4 map task(s)" in message and "room for 3" in message, message
    assert check_resident_slots(jobconf={}, min_tasks=3, env={}, rm_web=rm.address) == 3


def test_falls_back_to_cluster_metrics_and_to_nothing(fake_rm):
    rm = fake_rm({"/ws/v1/cluster/metrics": {"clusterMetrics": {"availableMB": 8192, "availableVirtualCores": 8}}})
    assert check_resident_slots(jobconf={}, min_tasks=2, env={}, rm_web=rm.address) == 6
    assert rm.paths == ["/ws/v1/cluster/nodes", "/ws/v1/cluster/metrics"]
    empty = fake_rm({})
    assert check_resident_slots(jobconf={}, min_tasks=99, env={}, rm_web=empty.address) is None
    assert check_resident_slots(jobconf={}, min_tasks=99, env={}) is None  # no RM configured: the start guard decides
