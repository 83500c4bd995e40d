"""Micro-benchmark of the collectives themselves: node daemons on loopback.

N real daemon processes (as in a run), a coordinator in this process, and
one task per node that hands its block to its daemon. The time measured is
the collective proper, as MPI's Allreduce/Allgather would be measured: from
the moment the iteration is sealed (every contribution is inside a daemon)
until every node holds the result (each reports `HasResult`). Checkpoints are
off here, so the store's background writes do not compete for the CPU.

Sizes are the size of the result: an AllReduce of S bytes reduces one S-byte
vector per node; an AllGather of S bytes gathers N rows of S/N bytes.
"""

from __future__ import annotations

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


def _contribute(env: TaskEnv, block: Block, errors: list[BaseException]) -> None:
    try:
        with TaskClient(env) as client:
            client.start()
            client.contribute(block)
    except BaseException as exc:  # noqa: BLE001 -- reported by the caller
        errors.append(exc)


async def _measure(kind: str, n: int, sizes: tuple[int, ...], repeats: int, tmp: str) -> list[dict[str, Any]]:
    secret, session = new_secret(), secrets.token_hex(8)
    config = SessionConfig(session, secret, kind, "sum" if kind == "allreduce" else "none", 2, "", 30.0, 1)
    coordinator = Coordinator(config, np.zeros(1))
    procs, addresses = _start_daemons(n, secret, tmp)
    rows: list[dict[str, Any]] = []
    try:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(coordinator.serve)
            iteration = 0
            for size in sizes:
                times = []
                for _ in range(repeats + 1):  # the first round also opens the peer connections
                    iteration += 1
                    coordinator.set_num_tasks(iteration, n)
                    threads, errors = [], []
                    for i in range(n):
                        if kind == "allreduce":
                            block = Block.from_dict({0: np.full(size // 8, float(i + 1))})
                        else:
                            block = Block.from_dict({i: np.full(size // 8 // n, float(i + 1))})
                        env = TaskEnv(session, address, secret, iteration, f"t{i}", f"t{i}_0", n, f"n{i}",
                                      tmp, addresses[i], "bench", 600.0)
                        threads.append(threading.Thread(target=_contribute, args=(env, block, errors), daemon=True))
                    for t in threads:
                        t.start()
                    rec = coordinator.record(iteration)
                    await coordinator.wait_all_have_result(iteration, timeout=120)
                    # Outside the timed part: the driver's copy of the result
                    # (rank 0 sends it after reporting HasResult).
                    await coordinator.wait_result(iteration, timeout=120)
                    for t in threads:
                        await trio.to_thread.run_sync(t.join, 30)
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


async def _round_trip(repeats: int, tmp: str, nbytes: int = 1024) -> dict[str, Any]:
    """A task's contribution to its daemon and the result back, one node.

    The task (a thread with a blocking channel, as a map task has) sends its
    block (Contribute -> ContributeAck: the daemon claims it with the
    coordinator, which seals the iteration), then asks for the next
    iteration's loop data and gets the result in a PostProcessLease. Timed:
    from sending Contribute until the lease (holding the result) is in hand.
    """
    secret, session = new_secret(), secrets.token_hex(8)
    coordinator = Coordinator(SessionConfig(session, secret, "allreduce", "sum", 2, "", 30.0, 1), np.zeros(1))
    procs, addresses = _start_daemons(1, secret, tmp)
    times: list[float] = []
    try:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(coordinator.serve)
            for i in range(1, repeats + 3):
                coordinator.set_num_tasks(i, 1)

            def task() -> None:
                from ..protocol import messages as m
                from ..transport.sync_channel import SyncChannel

                block = Block.from_dict({0: np.ones(nbytes // 8)})
                channel = SyncChannel.connect(addresses[0], role="task", name="t0", secret=secret, timeout=30)
                try:
                    channel.send(m.TaskStarted(session, 1, "t0", "t0_0", 1, "n0", address), timeout=30)
                    channel.send(m.GetLoopData(session, 1), timeout=30)
                    channel.receive(timeout=30)  # iteration 1's loop data, from the coordinator
                    for i in range(1, repeats + 2):
                        t0 = time.perf_counter()
                        channel.send(m.Contribute(session, i, "t0", "t0_0", block), timeout=30)
                        ack = channel.receive(timeout=30)
                        channel.send(m.GetLoopData(session, i + 1), timeout=30)
                        lease = channel.receive(timeout=30)
                        elapsed = time.perf_counter() - t0
                        if not (isinstance(ack, m.ContributeAck) and ack.accepted
                                and isinstance(lease, m.PostProcessLease) and lease.result == block):
                            raise RuntimeError(f"round trip {i}: got {ack!r:.100} and {lease!r:.100}")
                        channel.send(m.LoopData(session, i + 1, np.zeros(1), False), timeout=30)
                        if i > 1:  # the first also opens the coordinator's records
                            times.append(elapsed)
                finally:
                    channel.close()

            await trio.to_thread.run_sync(task)
            nursery.cancel_scope.cancel()
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"bytes": nbytes, "nodes": 1, "median_s": statistics.median(times), "min_s": min(times),
            "repeats": len(times)}


def round_trip(repeats: int = 20) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hcollectives-cbench-") as tmp:
        return trio.run(_round_trip, repeats, tmp)


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


def run(kinds=("allreduce", "allgather"), nodes=(2, 4), sizes=DEFAULT_SIZES, repeats: int = 5) -> dict[str, Any]:
    rows = []
    for kind in kinds:
        for n in nodes:
            with tempfile.TemporaryDirectory(prefix="hcollectives-cbench-") as tmp:
                rows.extend(trio.run(_measure, kind, n, tuple(sizes), repeats, tmp))
    return {"loopback_gib_per_s": loopback_bandwidth() / 2**30, "collectives": rows}
