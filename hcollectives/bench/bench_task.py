"""A benchmark task in a process of its own, as a map task is.

`collective_bench` starts one of these per node and keeps it for the whole
measurement: each request (one JSON line on stdin) makes it do what a map
task does for one iteration, and it answers with one JSON line on stdout.
In threads of the bench's own process instead, the tasks shared the
coordinator's interpreter lock: a task thread reading its ContributeAck
held up the coordinator in the middle of its Seal broadcast (seen in traces:
1 ms between the Seals to two daemons), which a real run, whose tasks are
other processes, never sees. Starting the process is not timed (it is
started once, before the first iteration); what each request does is the
same `TaskClient` / `SyncChannel` code a map task runs.

Requests::

    {"op": "contribute", "env": [TaskEnv fields...], "kind": ..., "rank": i, "nodes": n, "bytes": S}
        -> {"ok": true}
    {"op": "round_trip", "session", "coordinator", "daemon", "repeats", "bytes"}
        -> {"ok": true, "times": [seconds, ...]}

Any failure is answered with {"ok": false, "error": "..."}: the bench raises it.
The secret comes from $HCOLLECTIVES_SECRET (hex), as a daemon's does.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

from ..algorithms.block import Block
from ..protocol import messages as m
from ..services.task import TaskClient, TaskEnv
from ..transport.sync_channel import SyncChannel


def bench_block(kind: str, rank: int, nodes: int, nbytes: int) -> Block:
    """Task *rank*'s contribution to an AllReduce or AllGather of *nbytes*
    (the size of the result): `collective_bench._check` knows the answer."""
    if kind == "allreduce":
        return Block.from_dict({0: np.full(nbytes // 8, float(rank + 1))})
    return Block.from_dict({rank: np.full(nbytes // 8 // nodes, float(rank + 1))})


def contribute(request: dict[str, Any], secret: bytes) -> dict[str, Any]:
    env = TaskEnv(*request["env"][:2], secret, *request["env"][2:])
    block = bench_block(request["kind"], request["rank"], request["nodes"], request["bytes"])
    with TaskClient(env) as client:
        client.start()
        client.contribute(block)
    return {"ok": True}


def round_trip(request: dict[str, Any], secret: bytes) -> dict[str, Any]:
    """Iterations 1..repeats+1 of a one-task session: Contribute -> ContributeAck,
    then GetLoopData -> PostProcessLease holding the result, timed from sending
    Contribute until the lease is in hand (the first iteration is not kept: it
    also opens the coordinator's records)."""
    session, address, repeats = request["session"], request["coordinator"], request["repeats"]
    block = Block.from_dict({0: np.ones(request["bytes"] // 8)})
    channel = SyncChannel.connect(request["daemon"], role="task", name="t0", secret=secret, timeout=30)
    times: list[float] = []
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
            if i > 1:
                times.append(elapsed)
    finally:
        channel.close()
    return {"ok": True, "times": times}


OPS = {"contribute": contribute, "round_trip": round_trip}


def main() -> int:
    secret = bytes.fromhex(os.environ["HCOLLECTIVES_SECRET"])
    for line in sys.stdin:
        try:
            request = json.loads(line)
            reply = OPS[request["op"]](request, secret)
        except Exception as exc:  # noqa: BLE001 -- reported to the bench, which raises it
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
