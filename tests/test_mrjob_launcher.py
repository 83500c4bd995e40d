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


def test_the_cause_is_never_a_java_stack_frame():
    from hcollectives.driver.mrjob_launcher import _error_message

    java = {"task_error": {"message": "java.lang.RuntimeException: PipeMapRed.waitOutputThreads(): subprocess "
                                      "failed with code 1\n\tat org.apache.hadoop.mapred.YarnChild.main"
                                      "(YarnChild.java:172)\n"}}
    text = _error_message(java)
    assert "java" not in text.lower() and "PipeMapRed" not in text
    assert text.startswith("the task's process exited with code 1") and "yarn logs" in text
    other = {"hadoop_error": {"message": "java.io.IOException: no space left\n\tat org.apache.X.y(X.java:1)\n"}}
    assert _error_message(other) == "java.io.IOException: no space left"  # what happened, never where
    python = {"task_error": {"message": 'Traceback (most recent call last):\n  File "job.py", line 1, in <module>\n'
                                        "    import numpy\nModuleNotFoundError: No module named 'numpy'\n"}}
    text = _error_message(python)
    assert text.startswith("ModuleNotFoundError: No module named 'numpy'") and "python_bin" in text
    assert _error_message(None) is None and _error_message({"task_error": {"message": ""}}) is None


def test_a_failed_job_never_shows_the_hadoop_jar_command_line():
    """mrjob quotes the whole `hadoop jar` command, -cmdenv values (the session secret) included."""
    from hcollectives.driver.mrjob_launcher import _without_command

    exc = RuntimeError("Step 1 of 1 failed: Command '['/opt/hadoop/bin/hadoop', 'jar', 'streaming.jar', "
                       "'-cmdenv', 'HCOLLECTIVES_SECRET=7807bf10', '-mapper',\n 'python job.py']' returned "
                       "non-zero exit status 256.")
    text = _without_command(exc)
    assert "7807bf10" not in text and "cmdenv" not in text
    assert text == "Step 1 of 1 failed: `hadoop jar ...` returned non-zero exit status 256."
