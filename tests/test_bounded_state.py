"""Bounded state over long runs (issue 12): the coordinator, the daemons and the
store keep a constant amount per run, not one entry per iteration.

In-process daemons and coordinator over loopback (the harness of test_node.py)
run many small iterations the way the driver does; an end-to-end run on
mrjob's local runner checks the driver and a kept --checkpoint-uri.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from hcollectives import store as st
from hcollectives.algorithms.block import Block

sys.path.insert(0, os.path.dirname(__file__))
from test_node import CountingPostProcess, cluster, full_task, join_all, run, wait_until  # noqa: E402

ITERATIONS = 40


def store_files(root: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


async def _many_iterations(collective: str, root: str) -> dict:
    uri = f"file://{root}"
    store = st.Store(uri)
    sizes: dict[str, list[int]] = {"coordinator": [], "daemon": [], "store": []}
    op = "sum" if collective == "allreduce" else "none"
    async with cluster(2, collective=collective, op=op, checkpoint_uri=uri,
                       initial=np.zeros((2, 3))) as c:
        pp = CountingPostProcess()
        data = c.coordinator.record(1).loop_data
        for i in range(1, ITERATIONS + 1):
            c.coordinator.set_num_tasks(i, 4)
            threads = [c.spawn(full_task, c.env(t % 2, f"task_{t}", iteration=i, num_tasks=4),
                               lambda d, t=t, i=i: Block.from_dict({t: np.full(3, float(i + t))}),
                               pp.for_node(c.nodes[t % 2]))
                       for t in range(4)]
            result = await c.coordinator.wait_result(i)
            await join_all(threads)
            # What the driver does once iteration i's result is in (driver/loop.py).
            data = pp.compute(result, data)
            c.coordinator.set_loop_data(i + 1, data)
            store.save_array(st.loop_data_path(i + 1), data)
            st.prune(store, c.session, keep_loop_from=i + 1, keep_iterations_from=i - 1)
            c.coordinator.forget_before(i)
            for node in range(2):
                await wait_until(lambda: c.node_result(node, i) is not None, what=f"n{node} result {i}")
            sizes["coordinator"].append(len(c.coordinator.iterations))
            sizes["daemon"].append(max(len(c.node_session(n).iterations) for n in range(2)))
            sizes["store"].append(len(store_files(root)))
        await c.coordinator.stop(ITERATIONS + 1, converged=True, reason="done")
    return sizes


@pytest.mark.parametrize("collective", ["allreduce", "allgather"])
def test_coordinator_daemons_and_store_stay_bounded(tmp_path, collective):
    sizes = run(_many_iterations, collective, str(tmp_path), timeout=120)
    # After warm-up (the first two iterations have less history to keep) every
    # count is flat: nothing grows with the iteration number.
    # Bounds: the coordinator keeps the finished and the next iteration; a daemon
    # at most the last three (a stalled one may still read two back); the store
    # one loop-data file plus two iterations of 4 pieces and a result.
    limits = {"coordinator": 2, "daemon": 4, "store": 1 + 2 * (4 + 1)}
    for what, series in sizes.items():
        steady = series[3:]
        assert max(steady) - min(steady) <= 1, (what, series)
        assert max(series) <= limits[what], (what, series)


@pytest.mark.e2e
def test_kept_checkpoint_uri_holds_one_resumable_iteration(kmeans_data, tmp_path, no_orphan_daemons):
    from conftest import kmeans_reference
    from hcollectives.bench import datagen
    from hcollectives.bench.examples import load_example

    module = load_example("kmeans")
    ckpt = tmp_path / "ckpt"

    def job(*extra):
        return module.MRKMeans(args=["-r", "local", "-q", "--initial", kmeans_data.initial, "--tolerance", "0",
                                     "--local-nodes", "2", "--checkpoint-uri", f"file://{ckpt}", *extra,
                                     *kmeans_data.inputs])

    out = job("--max-iterations", "8").iterate()
    assert out.iterations == 8
    # One resumable iteration: the input of the next one and the run state.
    assert store_files(str(ckpt)) == ["loop/000009.npy", "run.json"]
    resumed = job("--max-iterations", "10", "--resume").iterate()
    expected = kmeans_reference(datagen.load_points(kmeans_data.inputs), np.load(kmeans_data.initial), 10)
    assert resumed.iterations == 10
    np.testing.assert_allclose(resumed.loop_data, expected, rtol=0, atol=1e-9)
    assert store_files(str(ckpt)) == ["loop/000011.npy", "run.json"]
