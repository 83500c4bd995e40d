"""jobs/resident_task.py: one attempt's loop over iterations, its Hadoop reports and where a retry rejoins."""

from __future__ import annotations



from hcollectives import AllReduce, store as st
from hcollectives.jobs import resident_task
from hcollectives.protocol import messages as m
from hcollectives.services.task import IterationStopped, TaskEnv


def env(**kw) -> TaskEnv:
    base = dict(session="s", coordinator="127.0.0.1:1", secret=b"k" * 32, iteration=1, task="task_3",
                attempt="attempt_x_m_000003_0", num_tasks=4, node="n", rundir="/nonexistent", node_address=None,
                input_split="part-3", timeout=5.0)
    base.update(kw)
    return TaskEnv(**base)


class FakeClient:
    def __init__(self, env):
        self.env, self.sent = env, []

    def _send(self, message):
        self.sent.append(message)


class FakeTask:
    def __init__(self, env):
        self.env, self.collective = env, AllReduce("sum")
        self.client = FakeClient(env)
        self.acc = None


class FakeJob:
    _hc_loop_data = None


def test_loops_until_stopped_reporting_each_iteration_to_hadoop(capsys):
    task, seen = FakeTask(env()), []

    def body():
        if task.env.iteration == 4:
            raise IterationStopped("converged after iteration 3")
        seen.append((task.env.iteration, task.client.env.iteration))

    assert resident_task.run_resident(FakeJob(), task, body, environ={}) == 3
    assert seen == [(1, 1), (2, 2), (3, 3)]
    # The connection announced iteration 1; 2..4 are announced as the task reaches them.
    assert [s.iteration for s in task.client.sent if isinstance(s, m.TaskStarted)] == [2, 3, 4]
    err = capsys.readouterr().err.splitlines()
    assert err.count("reporter:counter:hcollectives,iterations,1") == 3
    assert "reporter:status:hcollectives: iteration 3 contributed" in err


def test_stops_after_the_last_iteration_without_asking():
    task, durable = FakeTask(env()), []
    body = lambda: durable.append(task.exits_after_contributing)  # noqa: E731
    assert resident_task.run_resident(FakeJob(), task, body, environ={resident_task.LAST_ENV: "3"}) == 3
    # Only the contribution the task exits after waits for its store copy (m.Contribute.durable).
    assert durable == [False, False, True]


def test_a_rejoining_attempt_skips_iterations_that_finished_without_it():
    from hcollectives.services.task import IterationFinished

    task, ran = FakeTask(env(attempt="attempt_x_m_000003_1")), []

    def body():
        if task.env.iteration < 4:  # the daemon: "iteration N already finished"
            raise IterationFinished(f"iteration {task.env.iteration} already finished")
        ran.append(task.env.iteration)

    assert resident_task.run_resident(FakeJob(), task, body, environ={resident_task.LAST_ENV: "5"}) == 2
    assert ran == [4, 5]
    # Once it has contributed, a finished iteration means another attempt counted: it ends.
    task, ran = FakeTask(env()), []

    def body_after():
        if task.env.iteration == 2:
            raise IterationFinished("iteration 2 already finished")
        ran.append(task.env.iteration)

    assert resident_task.run_resident(FakeJob(), task, body_after, environ={resident_task.LAST_ENV: "5"}) == 1
    assert ran == [1]


def test_a_retried_attempt_rejoins_after_the_last_finished_iteration(tmp_path):
    store = st.Store(f"file://{tmp_path}")
    environ = {resident_task.STORE_ENV: store.url}
    assert resident_task.rejoin_iteration(env(attempt="attempt_x_m_000003_1"), environ) == 1  # nothing finished yet
    store.save_json(st.run_state_path(), {"iteration": 6, "converged": False})
    assert resident_task.rejoin_iteration(env(attempt="attempt_x_m_000003_1"), environ) == 7
    assert resident_task.rejoin_iteration(env(attempt="attempt_x_m_000003_0"), environ) == 1  # first attempt
    assert resident_task.attempt_number("attempt_1795295192264_0024_m_000003_2") == 2
