import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MAPPERS = ROOT / "mappers"
JOBS = Path(__file__).resolve().parent / "jobs"


@pytest.fixture(scope="session")
def kmeans_data(tmp_path_factory):
    """Small K-means input: 4 split files and initial centroids."""
    from hcollectives.bench import datagen

    out = tmp_path_factory.mktemp("kmeans-data")
    return datagen.kmeans(str(out), points=1200, dims=3, clusters=4, splits=4, seed=1)


def kmeans_reference(points: np.ndarray, initial: np.ndarray, iterations: int) -> np.ndarray:
    """Lloyd's algorithm; an empty cluster keeps its centroid (as the examples do)."""
    c = np.array(initial, float)
    for _ in range(iterations):
        labels = ((points[:, None, :] - c[None]) ** 2).sum(2).argmin(1)
        new = c.copy()
        for k in range(len(c)):
            members = points[labels == k]
            if len(members):
                new[k] = members.sum(0) / len(members)
        c = new
    return c


def daemon_processes(marker: bytes = b"") -> list[int]:
    """PIDs of live node daemons on this machine (with *marker* in their environment)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
            env = (proc / "environ").read_bytes().split(b"\0") if marker else []
        except OSError:
            continue
        if b"hcollectives.services.node_main" in cmd and state != "Z" and (not marker or marker in env):
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def no_orphan_daemons(monkeypatch):
    """Fail a test that leaves a node daemon behind.

    Only daemons of this test count: a marker in the environment is inherited
    by the local runner's tasks and the daemons they start, so another test
    run on the same machine (a CI check, say) is never mistaken for ours.
    """
    import time
    import uuid

    value = uuid.uuid4().hex
    monkeypatch.setenv("HCOLLECTIVES_TEST_MARKER", value)
    marker = f"HCOLLECTIVES_TEST_MARKER={value}".encode()
    yield
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = set(daemon_processes(marker))
        if not left:
            return
        time.sleep(0.1)
    logs = []
    for pid in left:
        try:  # the daemon's log may already be deleted; its open descriptor still reads
            logs.append(Path(f"/proc/{pid}/fd/2").read_text(errors="replace")[-2000:])
        except OSError:
            pass
        os.kill(pid, 9)
    pytest.fail(f"node daemon(s) {sorted(left)} outlived the run; their logs:\n" + "\n---\n".join(logs))


sys.path.insert(0, str(EXAMPLES))
sys.path.insert(0, str(Path(__file__).resolve().parent))


# A job whose every map task raises (line 8): what a user sees when tasks fail on a cluster.
BOOM_JOB = """\
from hcollectives import MRCollectiveJob, AllReduce


class Boom(MRCollectiveJob):
    COLLECTIVE = AllReduce("sum")

    def mapper(self, _, line):
        raise RuntimeError("boom from the user's mapper on " + line.split()[0])


if __name__ == "__main__":
    Boom.run()
"""
