"""A driver for tests/netns_hosts.py's namespaces: run it with `ip netns exec <hub>`.

What `collective_bench` does, over real links between simulated hosts: the
coordinator in this process (on the hub's control address), one node daemon
per node namespace (`ip netns exec <node> python -m
hcollectives.services.node_main`, listening on every address of its
namespace, advertising its data-network address), and each iteration's map
tasks as threads that enter their node's namespace (setns) and talk to their
daemon on that namespace's loopback, as a map task does on its host.
Each iteration's tasks compute from the loop data the daemons serve (the
post_process below, run under a lease or by the driver), so an iteration
that came out with other bits would change every later one.

    netns_driver.py --store DIR --out FILE.npy --iterations N --node NS=DATA_ADDRESS ... \\
        [--pause-before I ...]

Stdout, one line each: `PAUSE i` before iteration i's tasks start (for each
--pause-before; the test changes the network, then writes a line to stdin),
`DONE i` after each iteration, `NOTICES <JSON [[iteration, text], ...]>`
(the store fallbacks the daemons reported) at the end. The final loop data goes to
--out (np.save); exit 0, or 1 with one line on stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import trio

from hcollectives.algorithms.block import Block
from hcollectives.protocol.connection import new_secret
from hcollectives.services.coordinator import Coordinator, SessionConfig
from hcollectives.services.rendezvous import _read_line
from hcollectives.services.task import TaskClient, TaskEnv

TASKS_PER_NODE = 2
WAIT = 60.0  # any one wait of this driver: an iteration, a pause, a daemon's start or exit
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter_netns(name: str) -> None:
    """Move the calling thread (only) into network namespace *name*."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def task_block(x: np.ndarray, t: int) -> Block:
    return Block.from_dict({0: np.sin(x * (t + 1)) / 7 + t / 3, 1: np.cos(x + t) / 11})


def post_process(result: Block, previous: np.ndarray) -> tuple[np.ndarray, bool]:
    return (result.vector(0) + result.vector(1)) / (1 + np.abs(previous)), False


def start_daemons(nodes: list[tuple[str, str]], secret: bytes, rundir: Path) -> tuple[list, list[str]]:
    # HCOLLECTIVES_SAME_HOST=tcp: the namespaces share one filesystem, and a peer
    # on "the same host" would dial the Unix socket, past the links under test.
    env = dict(os.environ, HCOLLECTIVES_SECRET=secret.hex(), HCOLLECTIVES_SAME_HOST="tcp")
    procs, addresses = [], []
    for i, (ns, data_address) in enumerate(nodes):
        log = open(rundir.parent / f"daemon-n{i}.log", "wb")  # outside rundir: that must end empty
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "hcollectives.services.node_main",
                                 "--node-id", f"n{i}", "--rendezvous", str(rundir / "nodes" / f"n{i}"),
                                 "--exit-when-idle", "--bind-host", "0.0.0.0", "--advertise-host", data_address],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env)
        log.close()
        procs.append(proc)
        addresses.append(_read_line(proc, WAIT).split(" ", 1)[1].strip())
        proc.stdout.close()
    return procs, addresses


def run_task(ns: str, env: TaskEnv, errors: list[BaseException]) -> None:
    try:
        enter_netns(ns)  # this thread is the task on that host; it ends with the task
        with TaskClient(env) as client:
            client.start()
            x = client.loop_data(post_process)
            t = int(env.task.rsplit("_", 1)[1])
            if not client.contribute(task_block(x, t)):
                raise RuntimeError(f"{env.task}'s contribution was refused")
    except BaseException as exc:  # noqa: BLE001 -- reported by the driver
        errors.append(exc)


async def drive(a: argparse.Namespace, nodes: list[tuple[str, str]]) -> np.ndarray:
    secret, session = new_secret(), secrets.token_hex(8)
    x = np.linspace(0.1, 1.0, 64)
    config = SessionConfig(session, secret, "allreduce", "sum", 2, f"file://{a.store}", a.fallback_timeout, 1,
                           bind_host=a.hub, advertise_host=a.hub)
    coordinator = Coordinator(config, x)
    rundir = Path(a.store).parent / "run"
    rundir.mkdir(parents=True, exist_ok=True)
    procs, addresses = start_daemons(nodes, secret, rundir)
    num_tasks = TASKS_PER_NODE * len(nodes)
    try:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(coordinator.serve)
            for i in range(1, a.iterations + 1):
                if i in a.pause_before:
                    print(f"PAUSE {i}", flush=True)
                    with trio.fail_after(WAIT):
                        await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                coordinator.set_num_tasks(i, num_tasks)
                threads, errors = [], []
                for t in range(num_tasks):
                    n = t % len(nodes)
                    port = addresses[n].split(" ", 1)[0].rsplit(":", 1)[1]
                    env = TaskEnv(session, address, secret, i, f"task_{t}", f"task_{t}_0", num_tasks, f"n{n}",
                                  str(rundir), f"127.0.0.1:{port}", "netns", WAIT)
                    threads.append(threading.Thread(target=run_task, args=(nodes[n][0], env, errors), daemon=True))
                for thread in threads:
                    thread.start()
                result = await coordinator.wait_result(i, timeout=WAIT)
                new, _ = post_process(result, x)
                coordinator.set_loop_data(i + 1, new)
                for thread in threads:
                    await trio.to_thread.run_sync(thread.join, WAIT)
                if errors or any(thread.is_alive() for thread in threads):
                    raise RuntimeError(f"iteration {i}: a task failed: {errors[:1]!r}")
                print(f"DONE {i}", flush=True)
                coordinator.forget_before(i)
                x = new
            await coordinator.stop(a.iterations + 1, converged=True, reason="done")
            # A node's notice may come after its iteration's result (the driver's
            # copy comes from rank 0): the run's list, not each iteration's record.
            print(f"NOTICES {json.dumps(coordinator.notices)}", flush=True)
            nursery.cancel_scope.cancel()
    finally:
        for proc in procs:  # they exit once the coordinator is gone
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    return x


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--hub", required=True, help="the coordinator's address on the control network")
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--fallback-timeout", type=float, default=1.0)
    parser.add_argument("--node", action="append", required=True, help="NAMESPACE=DATA_ADDRESS")
    parser.add_argument("--pause-before", type=int, action="append", default=[])
    a = parser.parse_args()
    nodes = [tuple(spec.split("=", 1)) for spec in a.node]
    try:
        x = trio.run(drive, a, nodes)
    except Exception as exc:  # noqa: BLE001 -- one line for the test to show
        print(f"netns_driver: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    np.save(a.out, x)
    return 0


if __name__ == "__main__":
    sys.exit(main())
