"""`TaskClient` (services/task.py): what a task does when its node's daemon is lost."""

from __future__ import annotations

import pytest

from hcollectives.errors import ConnectionLost
from hcollectives.services import task as task_module
from hcollectives.services.task import RECONNECTS, TaskClient, TaskEnv

ENV = TaskEnv("s", "127.0.0.1:1", bytes(32), 1, "t0", "t0_0", 1, "n0", "/nonexistent", "127.0.0.1:2", "x", 5.0)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(task_module.time, "sleep", lambda s: None)


def test_start_finds_a_successor_when_the_daemon_dies_under_it(monkeypatch):
    """Seen in the fault campaign: a daemon killed between being found and reading
    TaskStarted ("Connection reset by peer") failed the task and the run."""
    calls = []

    def once(self):
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionLost("connection to 127.0.0.1:2 lost: [Errno 104] Connection reset by peer")

    monkeypatch.setattr(TaskClient, "_start_once", once)
    TaskClient(ENV).start()
    assert len(calls) == 3


def test_start_gives_up_after_a_bounded_number_of_lost_daemons(monkeypatch):
    calls = []

    def never(self):
        calls.append(1)
        raise ConnectionLost("cannot connect")

    monkeypatch.setattr(TaskClient, "_start_once", never)
    with pytest.raises(ConnectionLost):
        TaskClient(ENV).start()
    assert len(calls) == RECONNECTS + 1
