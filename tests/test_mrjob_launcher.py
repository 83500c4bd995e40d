"""driver/mrjob_launcher.py (end-to-end runs through it: test_mrjob_job.py, test_hadoop.py)."""

import pytest


@pytest.mark.parametrize("runner, setting, expected", [
    ("local", "", True), ("local", "0", False), ("hadoop", "", False), ("hadoop", "1", True),
    ("inline", "", False), ("hadoop", "0", False),
])
def test_fork_server_is_default_on_the_local_runner_only(monkeypatch, runner, setting, expected):
    from hcollectives.driver.mrjob_launcher import use_task_fork_server

    monkeypatch.setenv("HCOLLECTIVES_ZYGOTE", setting)
    assert use_task_fork_server(runner) is expected
