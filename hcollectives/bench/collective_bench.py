"""Micro-benchmark of the collectives themselves: node daemons on loopback.

N real daemon processes (as in a run), a coordinator in this process, and
one task per node that hands its block to its daemon. The time measured is
the collective proper, as MPI's Allreduce/Allgather would be measured: from
the moment the iteration is sealed (every contribution is inside a daemon)
until every node holds the result (each reports `HasResult`). Checkpoints are
off here, so the store's background writes do not compete for the CPU.

Sizes are the size of the result: an AllReduce of S bytes reduces one S-byte
vector per node; an AllGather of S bytes gathers N rows of S/N bytes.

Each task runs in a process of its own, as a map task does (`bench_task.py`:
one per node, started before the first iteration and kept); ``tasks="thread"``
runs them as threads of this process instead, as this bench did before
issue 13's second round, where they competed with the coordinator for this
process's interpreter lock inside the timed window.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np
import trio

from ..algorithms.block import Block
from ..protocol.connection import new_secret
from ..services.coordinator import Coordinator, SessionConfig
from ..services.rendezvous import _read_line
from ..services.task import TaskClient, TaskEnv
from . import bench_task
from .bench_task import bench_block

DEFAULT_SIZES = (1 << 10, 1 << 14, 1 << 18, 1 << 20, 8 << 20, 64 << 20)


def _start_daemons(n: int, secret: bytes, tmp: str) -> tuple[list[subprocess.Popen], list[str]]:
    procs, addresses = [], []
    env = dict(os.environ, HCOLLECTIVES_SECRET=secret.hex())
    for i in range(n):
        proc = subprocess.Popen([sys.executable, "-m", "hcollectives.services.node_main", "--node-id", f"n{i}",
                                 "--rendezvous", os.path.join(tmp, f"n{i}"), "--exit-when-idle"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=open(os.path.join(tmp, f"n{i}.log"), "wb"), env=env)
        procs.append(proc)
        addresses.append(_read_line(proc, 30.0).split(" ", 1)[1].strip())
        proc.stdout.close()
    return procs, addresses


class _TaskProcesses:
    """One `bench_task` process per node, asked in JSON lines (see there)."""

    def __init__(self, n: int, secret: bytes) -> None:
        self._n, self._secret = n, secret
        self._procs: list[trio.Process] = []
        self._pending: list[bytes] = []

    async def __aenter__(self) -> "_TaskProcesses":
        env = dict(os.environ, HCOLLECTIVES_SECRET=self._secret.hex())
        for _ in range(self._n):
            self._procs.append(await trio.lowlevel.open_process(
                [sys.executable, "-m", "hcollectives.bench.bench_task"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, env=env))
            self._pending.append(b"")
        return self

    async def __aexit__(self, *exc: object) -> None:
        for proc in self._procs:
            with trio.CancelScope(shield=True):
                await proc.stdin.aclose()  # end of requests: it exits
                with trio.move_on_after(10):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    async def ask(self, i: int, request: dict[str, Any]) -> None:
        await self._procs[i].stdin.send_all(json.dumps(request).encode() + b"\n")

    async def answer(self, i: int, timeout: float) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while b"\n" not in self._pending[i]:
                data = await self._procs[i].stdout.receive_some(65536)
                if not data:
                    raise RuntimeError(f"bench task {i} exited (code {await self._procs[i].wait()})")
                self._pending[i] += data
        line, _, self._pending[i] = self._pending[i].partition(b"\n")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"bench task {i} failed: {reply.get('error')}")
        return reply


def _contribute(env: TaskEnv, block: Block, errors: list[BaseException]) -> None:
    try:
        with TaskClient(env) as client:
            client.start()
            client.contribute(block)
    except BaseException as exc:  # noqa: BLE001 -- reported by the caller
        errors.append(exc)


async def _measure(kind: str, n: int, sizes: tuple[int, ...], repeats: int, tmp: str,
                   tasks: str = "process") -> list[dict[str, Any]]:
    secret, session = new_secret(), secrets.token_hex(8)
    config = SessionConfig(session, secret, kind, "sum" if kind == "allreduce" else "none", 2, "", 30.0, 1)
    coordinator = Coordinator(config, np.zeros(1))
    procs, addresses = _start_daemons(n, secret, tmp)
    rows: list[dict[str, Any]] = []
    try:
        async with _TaskProcesses(n if tasks == "process" else 0, secret) as workers, \
                trio.open_nursery() as nursery:
            address = await nursery.start(coordinator.serve)
            iteration = 0
            for size in sizes:
                times = []
                for _ in range(repeats + 1):  # the first round also opens the peer connections
                    iteration += 1
                    coordinator.set_num_tasks(iteration, n)
                    threads, errors = [], []
                    for i in range(n):
                        fields = [session, address, iteration, f"t{i}", f"t{i}_0", n, f"n{i}",
                                  tmp, addresses[i], "bench", 600.0]
                        if tasks == "process":
                            await workers.ask(i, {"op": "contribute", "env": fields, "kind": kind, "rank": i,
                                                  "nodes": n, "bytes": size})
                        else:
                            env = TaskEnv(*fields[:2], secret, *fields[2:])
                            threads.append(threading.Thread(target=_contribute, daemon=True,
                                                            args=(env, bench_block(kind, i, n, size), errors)))
                    for t in threads:
                        t.start()
                    rec = coordinator.record(iteration)
                    await coordinator.wait_all_have_result(iteration, timeout=120)
                    # Outside the timed part: the driver's copy of the result
                    # (rank 0 sends it after reporting HasResult).
                    await coordinator.wait_result(iteration, timeout=120)
                    for t in threads:
                        await trio.to_thread.run_sync(t.join, 30)
                    if tasks == "process":
                        for i in range(n):
                            try:
                                await workers.answer(i, 30)
                            except RuntimeError as exc:
                                errors.append(exc)
                    if errors:
                        raise RuntimeError(f"{kind} of {size} bytes: a task failed: {errors[0]!r}")
                    times.append(rec.times["all_nodes_have_result"] - rec.times["sealed"])
                    _check(kind, n, size, rec.result)
                    rec.result = None  # keep memory flat across sizes
                steady = times[1:]
                rows.append({"kind": kind, "nodes": n, "bytes": size, "median_s": statistics.median(steady),
                             "min_s": min(steady), "gib_per_s": size / statistics.median(steady) / 2**30})
            nursery.cancel_scope.cancel()
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=10)  # they exit once the coordinator is gone
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return rows


def _check(kind: str, n: int, size: int, result: Block | None) -> None:
    """The benchmark is also a test: a wrong answer is a failure, not a figure."""
    if kind == "allreduce":
        ok = result is not None and np.all(result.values == n * (n + 1) / 2) and len(result.values) == size // 8
    else:
        ok = result is not None and len(result) == n and all(
            np.all(result.vector(i) == i + 1) for i in range(n))
    if not ok:
        raise RuntimeError(f"{kind} of {size} bytes over {n} nodes gave a wrong result")


async def _round_trip(repeats: int, tmp: str, nbytes: int = 1024, tasks: str = "process") -> dict[str, Any]:
    """A task's contribution to its daemon and the result back, one node.

    The task (a process of its own, or with ``tasks="thread"`` a thread of
    this one, with a blocking channel, as a map task has) sends its block
    (Contribute -> ContributeAck: the daemon claims it with the coordinator,
    which seals the iteration), then asks for the next iteration's loop data
    and gets the result in a PostProcessLease. Timed by the task: from
    sending Contribute until the lease (holding the result) is in hand
    (`bench_task.round_trip`).
    """
    secret, session = new_secret(), secrets.token_hex(8)
    coordinator = Coordinator(SessionConfig(session, secret, "allreduce", "sum", 2, "", 30.0, 1), np.zeros(1))
    procs, addresses = _start_daemons(1, secret, tmp)
    try:
        async with _TaskProcesses(1 if tasks == "process" else 0, secret) as workers, \
                trio.open_nursery() as nursery:
            address = await nursery.start(coordinator.serve)
            for i in range(1, repeats + 3):
                coordinator.set_num_tasks(i, 1)
            request = {"op": "round_trip", "session": session, "coordinator": address, "daemon": addresses[0],
                       "repeats": repeats, "bytes": nbytes}
            if tasks == "process":
                await workers.ask(0, request)
                times = (await workers.answer(0, 60 + repeats))["times"]
            else:
                times = (await trio.to_thread.run_sync(bench_task.round_trip, request, secret))["times"]
            nursery.cancel_scope.cancel()
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"bytes": nbytes, "nodes": 1, "median_s": statistics.median(times), "min_s": min(times),
            "repeats": len(times), "tasks": tasks}


def round_trip(repeats: int = 20, tasks: str = "process") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hcollectives-cbench-") as tmp:
        return trio.run(_round_trip, repeats, tmp, 1024, tasks)


def side_by_side(ours: list[dict[str, Any]], mpi: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (kind, nodes, bytes): our median, Open MPI's, and the ratio."""
    theirs = {(r["kind"], r["nodes"], r["bytes"]): r for report in mpi for r in report.get("rows", ())}
    rows = []
    for r in ours:
        ref = theirs.get((r["kind"], r["nodes"], r["bytes"]))
        rows.append({"kind": r["kind"], "nodes": r["nodes"], "bytes": r["bytes"], "median_s": r["median_s"],
                     "mpi_median_s": ref["median_s"] if ref else None,
                     "ratio": r["median_s"] / ref["median_s"] if ref else None})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    def size(b: int) -> str:
        return f"{b >> 20} MiB" if b >= 1 << 20 else f"{b >> 10} KiB"

    lines = ["| collective | nodes | size | hcollectives | Open MPI | ratio |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        mpi = f"{r['mpi_median_s'] * 1e3:.3g} ms" if r["mpi_median_s"] is not None else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        lines.append(f"| {'AllReduce' if r['kind'] == 'allreduce' else 'AllGather'} | {r['nodes']} | {size(r['bytes'])} "
                     f"| {r['median_s'] * 1e3:.3g} ms | {mpi} | {ratio} |")
    return "\n".join(lines)


def loopback_bandwidth(nbytes: int = 256 << 20) -> float:
    """Bytes/s one blocking TCP stream moves on loopback, into a preallocated buffer."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    sender = subprocess.Popen([sys.executable, "-c", (
        "import socket,sys; s=socket.create_connection(('127.0.0.1',%d)); b=bytes(1<<22)\n"
        "n=%d\nwhile n>0:\n    k=min(n,len(b)); s.sendall(memoryview(b)[:k]); n-=k\ns.close()") % (port, nbytes)])
    conn, _ = server.accept()
    buf = bytearray(nbytes)
    view, got = memoryview(buf), 0
    t0 = time.perf_counter()
    while got < nbytes:
        n = conn.recv_into(view[got:], nbytes - got)
        if not n:
            break
        got += n
    elapsed = time.perf_counter() - t0
    conn.close()
    server.close()
    sender.wait(timeout=30)
    return got / elapsed


def run(kinds=("allreduce", "allgather"), nodes=(2, 4), sizes=DEFAULT_SIZES, repeats: int = 5,
        tasks: str = "process") -> dict[str, Any]:
    """Every (kind, nodes, size); *tasks*: "process" (as map tasks are) or "thread"."""
    if tasks not in ("process", "thread"):
        raise ValueError(f"tasks must be 'process' or 'thread', not {tasks!r}")
    rows = []
    for kind in kinds:
        for n in nodes:
            with tempfile.TemporaryDirectory(prefix="hcollectives-cbench-") as tmp:
                rows.extend(trio.run(_measure, kind, n, tuple(sizes), repeats, tmp, tasks))
    return {"loopback_gib_per_s": loopback_bandwidth() / 2**30, "collectives": rows, "tasks": tasks}
