"""hadoop/task_logs.py: the failed task's own Python exception from its container's stderr."""

from __future__ import annotations

import sys
import time

import pytest

from hcollectives.hadoop import task_logs
from hcollectives.hadoop.task_logs import failed_task_error, python_error

APP = "application_1796190202040_0004"

BOOM = '''log4j:WARN No appenders could be found
Traceback (most recent call last):
  File "/nm/appcache/application_1/container_1/boom.py", line 10, in <module>
    Boom.run()
  File "/work/main/hcollectives/jobs/map_task.py", line 65, in run_task
    body()
  File "/nm/appcache/application_1/container_1/boom.py", line 7, in mapper
    raise RuntimeError("boom " + line[:20])
RuntimeError: boom 0.9099470482841947
'''

# What the streaming jar writes to the *ApplicationMaster's* and its own logs: no Python in it.
JAVA = '''Error: java.lang.RuntimeException: PipeMapRed.waitOutputThreads(): subprocess failed with code 1
\tat org.apache.hadoop.streaming.PipeMapRed.waitOutputThreads(PipeMapRed.java:326)
\tat org.apache.hadoop.mapred.YarnChild.main(YarnChild.java:172)
'''


def write_container(root, app, container, text):
    d = root / "userlogs" / app / container
    d.mkdir(parents=True)
    (d / "stderr").write_text(text)


def test_the_exception_line_and_the_innermost_frame():
    assert python_error(BOOM) == ("RuntimeError: boom 0.9099470482841947", "boom.py, line 7, in mapper")
    assert python_error(JAVA) is None
    assert python_error("") is None


def test_a_chained_exception_gives_the_last_one():
    chained = BOOM + "\nDuring handling of the above exception, another exception occurred:\n\n" + \
        BOOM.replace("RuntimeError: boom", "KeyError: 'k'")
    assert python_error(chained)[0] == "KeyError: 'k' 0.9099470482841947"


def test_failed_attempts_are_found_in_the_node_managers_log_dirs(tmp_path, monkeypatch):
    monkeypatch.delenv("HADOOP_LOG_DIR", raising=False)
    monkeypatch.delenv("YARN_LOG_DIR", raising=False)
    monkeypatch.delenv("HADOOP_CONF_DIR", raising=False)
    nm0, nm1 = tmp_path / "nm-0", tmp_path / "nm-1"
    write_container(nm0, APP, "container_1796190202040_0004_01_000001", JAVA)  # the ApplicationMaster
    write_container(nm0, APP, "container_1796190202040_0004_01_000002", BOOM)
    write_container(nm1, APP, "container_1796190202040_0004_01_000003", BOOM)
    write_container(nm1, APP, "container_1796190202040_0004_01_000004", "just some output\n")
    write_container(nm1, "application_1796190202040_0003", "container_1796190202040_0003_01_000002",
                    BOOM.replace("boom", "other job"))
    error = failed_task_error(APP, log_dirs=[str(nm0), str(nm1)])
    assert error.exception == "RuntimeError: boom 0.9099470482841947" and error.attempts == 2
    text = error.describe()
    assert "boom.py, line 7, in mapper" in text and "YarnChild" not in text and "hint" not in text
    assert failed_task_error("application_1796190202040_0099", log_dirs=[str(nm0), str(nm1)]) is None


def test_yarn_site_log_dirs_are_read_too(tmp_path, monkeypatch):
    logs = tmp_path / "nm-logs"
    (logs / APP / "container_1796190202040_0004_01_000002").mkdir(parents=True)
    (logs / APP / "container_1796190202040_0004_01_000002" / "stderr").write_text(BOOM)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "yarn-site.xml").write_text(f"<configuration><property><name>yarn.nodemanager.log-dirs</name>"
                                        f"<value>file://{logs},/nowhere</value></property></configuration>")
    monkeypatch.setenv("HADOOP_CONF_DIR", str(conf))
    monkeypatch.delenv("HADOOP_LOG_DIR", raising=False)
    monkeypatch.delenv("YARN_LOG_DIR", raising=False)
    assert failed_task_error(APP).exception.startswith("RuntimeError: boom")


@pytest.mark.parametrize("module, advised", [("numpy", True), ("hcollectives.jobs", True), ("mrjob", True),
                                              ("my_private_helpers", False)])
def test_a_python_without_hcollectives_gets_one_line_of_advice(module, advised):
    error = task_logs.TaskError(f"ModuleNotFoundError: No module named '{module}'", "job.py, line 1, in <module>",
                                "container_x_000002", 4)
    text = error.describe()
    assert text.startswith(f"ModuleNotFoundError: No module named '{module}'")
    assert ("python_bin" in text and "every node" in text) is advised


def test_with_log_aggregation_yarn_logs_is_asked(tmp_path, monkeypatch):
    """No container logs on this machine: the same through `yarn logs` (a fake hadoop here)."""
    monkeypatch.delenv("HADOOP_LOG_DIR", raising=False)
    monkeypatch.delenv("YARN_LOG_DIR", raising=False)
    monkeypatch.delenv("HADOOP_CONF_DIR", raising=False)
    listing = tmp_path / "yarn-logs.txt"
    listing.write_text("Container: container_1796190202040_0004_01_000001 on nm1:45454\n" + JAVA +
                       "Container: container_1796190202040_0004_01_000002 on nm2:45454\nLogType:stderr\n" + BOOM)
    calls = tmp_path / "calls"
    hadoop = tmp_path / "hadoop"
    hadoop.write_text(f'#!/bin/sh\necho "$@" > {calls}\ncat {listing}\n')
    hadoop.chmod(0o755)
    error = failed_task_error(APP, log_dirs=[str(tmp_path / "none")], hadoop_bin=[str(hadoop)])
    assert error.exception.startswith("RuntimeError: boom") and error.container.endswith("_000002")
    assert calls.read_text().split() == ["org.apache.hadoop.yarn.client.cli.LogsCLI", "-applicationId", APP,
                                         "-log_files", "stderr"]


def test_an_unusable_yarn_logs_is_no_error(tmp_path, monkeypatch):
    monkeypatch.delenv("HADOOP_LOG_DIR", raising=False)
    monkeypatch.delenv("YARN_LOG_DIR", raising=False)
    monkeypatch.delenv("HADOOP_CONF_DIR", raising=False)
    assert failed_task_error(APP, hadoop_bin=[str(tmp_path / "no-hadoop")]) is None
    assert failed_task_error(APP, hadoop_bin=[sys.executable, "-c", "print('no logs')"]) is None


def test_yarn_logs_waits_for_the_log_aggregation_to_end(tmp_path, monkeypatch):
    """Right after a failed application ends its logs are not uploaded yet: ask the
    ResourceManager until its logAggregationStatus is over, then `yarn logs`."""
    from hcollectives.hadoop import task_logs

    statuses = iter(["NOT_START", "RUNNING", "RUNNING", "SUCCEEDED"])
    asked = []

    def fake_ask(url):
        asked.append(url)
        return {"app": {"id": APP, "logAggregationStatus": next(statuses)}}

    monkeypatch.setattr(task_logs.yarn_watch, "ask", fake_ask)
    assert task_logs.wait_for_log_aggregation(APP, "rm:8088", poll=0.01) == "SUCCEEDED"
    assert asked == [f"http://rm:8088/ws/v1/cluster/apps/{APP}"] * 4


def test_the_log_aggregation_wait_is_bounded(monkeypatch):
    from hcollectives.hadoop import task_logs

    monkeypatch.setattr(task_logs.yarn_watch, "ask", lambda url: {"app": {"logAggregationStatus": "RUNNING"}})
    t0 = time.monotonic()
    assert task_logs.wait_for_log_aggregation(APP, "rm:8088", timeout=0.3, poll=0.05) == "RUNNING"
    assert time.monotonic() - t0 < 2
    monkeypatch.setattr(task_logs.yarn_watch, "ask", lambda url: None)  # no ResourceManager: no wait
    assert task_logs.wait_for_log_aggregation(APP, "rm:8088", timeout=30) is None


def test_yarn_logs_is_asked_again_while_it_has_no_exception_yet(tmp_path, monkeypatch):
    """The ResourceManager can say the upload is over a moment before `yarn logs` shows
    every node's file: a second look (bounded by AGGREGATION_WAIT) finds the exception."""
    from hcollectives.hadoop import task_logs

    monkeypatch.delenv("HADOOP_LOG_DIR", raising=False)
    monkeypatch.delenv("YARN_LOG_DIR", raising=False)
    monkeypatch.delenv("HADOOP_CONF_DIR", raising=False)
    monkeypatch.setattr(task_logs, "RETRY_PAUSE", 0.01)
    monkeypatch.setattr(task_logs.yarn_watch, "ask", lambda url: {"app": {"logAggregationStatus": "SUCCEEDED"}})
    listing = tmp_path / "yarn-logs.txt"
    listing.write_text("Container: container_1796190202040_0004_01_000002 on nm2:45454\nLogType:stderr\n" + BOOM)
    calls = tmp_path / "calls"
    hadoop = tmp_path / "hadoop"  # nothing the first time, the task's stderr the second
    hadoop.write_text(f'#!/bin/sh\necho x >> {calls}\n[ $(wc -l < {calls}) -ge 2 ] && cat {listing}\nexit 0\n')
    hadoop.chmod(0o755)
    error = failed_task_error(APP, log_dirs=[str(tmp_path / "none")], hadoop_bin=[str(hadoop)], rm_web="rm:8088")
    assert error is not None and error.exception.startswith("RuntimeError: boom")
    assert len(calls.read_text().split()) == 2
    monkeypatch.setattr(task_logs.yarn_watch, "ask", lambda url: {"app": {"logAggregationStatus": "DISABLED"}})
    calls.write_text("")  # no log aggregation on this cluster: one look, no waiting
    t0 = time.monotonic()
    assert failed_task_error(APP, hadoop_bin=[str(hadoop)], rm_web="rm:8088") is None
    assert len(calls.read_text().split()) == 1 and time.monotonic() - t0 < 2
    monkeypatch.setattr(task_logs.yarn_watch, "ask", lambda url: {"app": {"logAggregationStatus": "SUCCEEDED"}})
    monkeypatch.setattr(task_logs, "AGGREGATION_WAIT", 0.2)  # never there: bounded, then None
    t0 = time.monotonic()
    assert failed_task_error(APP, hadoop_bin=[sys.executable, "-c", "pass"], rm_web="rm:8088") is None
    assert time.monotonic() - t0 < 5
