"""On real Hadoop: YARN (2 NodeManagers) + HDFS from the project's mini-cluster.

Starts the cluster once for the module (`make minicluster`; the first start
downloads Hadoop 3.5.0 from Maven Central) and stops it at the end. Under CI
(CI=true) a missing Java or Maven is a failure, never a skip.

What runs on ``-r hadoop`` (each compared with the same job on ``-r local``
or with the collective run, and with a numpy reference):

- MDS (Map-AllGather, parse_input cached per machine) with the default store,
  which lives on HDFS under the user's tmp dir and is removed after the run;
- plain-mrjob MDS (one job per iteration, combiner + reducer);
- the streaming front end: K-means (`--allreduce sum` + a post-process command)
  and MDS (`--allgather`), the mapper scripts shipped to the tasks with
  mrjob's ``--dirs``;
- K-means with checkpoints on an explicit ``hdfs://`` store and iteration 1's
  result lost over TCP to every non-root node (read back from HDFS);
- plain-mrjob K-means;
- what a task-started node daemon does on YARN (outlives its container,
  serves the next iteration), that a collective run starts no ``hadoop fs``
  Java client, and ``hcollectives bench --runner hadoop`` itself.

Each ``-r hadoop`` iteration costs 10-40 s on a 2-core machine (a YARN
application; plain mrjob also its ``hadoop fs`` client JVMs), so every run is 2 iterations
of small data and inputs are uploaded to HDFS once (mrjob would upload local
inputs again for every iteration's job). Jobs run as the README tells users
to: a bare ``-r hadoop`` with the cluster's mrjob.conf (``make minicluster``
writes it: hadoop_bin, streaming jar, python_bin = this venv's python, log
dirs), no mrjob options of the test's own.

Nothing here imports hdfs-native (HDFS is read with the cluster's own
``hadoop fs``, in child processes): its runtime threads in this process would
make later fork()s unsafe (mrjob's local runner forks its worker pool).
"""

import getpass
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import BOOM_JOB, MAPPERS, ROOT, kmeans_reference
from hcollectives.bench import datagen
from hcollectives.bench.examples import load_example
from test_mds import assert_rel_close, smacof_reference

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

ITERATIONS = 2  # per run: each -r hadoop iteration is a YARN application
SPLITS = 4  # input files, so 4 map tasks per iteration
# Where task-started daemons of a cluster run meet on this host (rendezvous.default_rundir).
NODE_TMP = Path("/tmp") / f"hcollectives-{os.getuid()}"


def _need_tools() -> None:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        message = f"the Hadoop tests need {', '.join(missing)} on PATH"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def cluster_env():
    _need_tools()
    start = subprocess.run(["make", "minicluster"], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert start.returncode == 0, f"make minicluster failed:\n{start.stdout[-3000:]}\n{start.stderr[-3000:]}"
    try:
        dump = subprocess.run(["bash", "-c", ". .minicluster/env.sh && env -0"], cwd=ROOT,
                              capture_output=True, timeout=60, check=True).stdout
        env = dict(item.split("=", 1) for item in dump.decode().split("\0") if "=" in item)
        yield env
    finally:
        subprocess.run(["make", "minicluster-stop"], cwd=ROOT, capture_output=True, timeout=300)


# -- helpers --------------------------------------------------------------------------------------


# A run is 2 iterations: 1-2 minutes here. A hung one fails in minutes rather than
# holding the module for the 10-minute Hadoop task timeout and its retries:
# collective runs bound each iteration (the driver then aborts the session, and
# waiting tasks exit naming where they waited); every run is bounded as a whole.
ITERATION_TIMEOUT = ["--iteration-timeout", "180"]
RUN_TIMEOUT = 600


def run(cmd, env, *, cwd=None, timeout=RUN_TIMEOUT):
    """The command's CompletedProcess; on timeout one with returncode None and the output so far."""
    cmd = [str(c) for c in cmd]
    started = time.time()
    try:
        done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out, err = (x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr))
        done = subprocess.CompletedProcess(cmd, None, out, err + f"\n[test: killed after {timeout} s]")
    done.started = started
    return done


def hadoop_fs(env, *args, timeout=120):
    """`hadoop fs ARGS` with the cluster's own client, in a child process."""
    return run(["hadoop", "fs", *args], env, timeout=timeout)


def hdfs_entries(listing: str) -> list[str]:
    """Paths in `hadoop fs -ls` output (files and directories; not the "Found N items" line)."""
    return [line.split()[-1] for line in listing.splitlines() if line[:1] in ("-", "d")]


def mrjob_hadoop_args(env) -> list[str]:
    """What a user types: everything else comes from the cluster's mrjob.conf ($MRJOB_CONF)."""
    assert env.get("MRJOB_CONF") and os.path.exists(env["MRJOB_CONF"]), "make minicluster writes the mrjob.conf"
    return ["-r", "hadoop"]


# 2 GiB map containers on 4 GiB NodeManagers: at most two maps fit on one, so
# four maps always use both NodeManagers, i.e. two nodes and two daemons.
TWO_NODES = ["--jobconf", "mapreduce.map.memory.mb=2048"]


def default_store_base(env) -> str:
    """Where -r hadoop keeps a run's store when --checkpoint-uri is not given (hadoop_conf.temporary_store_base)."""
    user = env.get("HADOOP_USER_NAME") or getpass.getuser()
    return f"{env['MINICLUSTER_FS_DEFAULT']}/user/{user}/tmp/hcollectives"


def assert_no_session_in_default_store(env) -> None:
    base = default_store_base(env)
    listing = hadoop_fs(env, "-ls", base)
    assert listing.returncode == 0, f"{base} should exist on HDFS: {listing.stderr[-2000:]}"
    assert hdfs_entries(listing.stdout) == [], f"session store(s) left in {base}:\n{listing.stdout}"


def stderr_tail(done) -> str:
    """The end of a run's stderr; for a failed run also what its tasks and daemons wrote on the cluster."""
    text = done.stderr[-5000:]
    if done.returncode != 0:
        text += "\n" + cluster_logs_since(done.started)
    return text


def cluster_logs_since(started: float, limit: int = 12000) -> str:
    """Ends of the task containers' stderr and of the node daemons' logs written since *started*.

    The mini-cluster's container logs are deleted when it stops (after this
    module), so a failure message must carry them."""
    parts = []
    containers = sorted((ROOT / ".minicluster" / "logs").glob("nm-*/userlogs/application_*/container_*/stderr"))
    daemons = sorted(NODE_TMP.glob("*/nodes/*/daemon.log"))
    for path in containers + daemons:
        try:
            if path.stat().st_mtime < started:
                continue
            lines = [line for line in path.read_text(errors="replace").splitlines()
                     if line.strip() and not line.startswith("log4j:")]
        except OSError:
            continue
        if lines:
            parts.append(f"--- {path}\n" + "\n".join(lines[-15:]))
    text = "\n".join(parts)[-limit:] or "(none)"
    return f"[cluster logs since the run started]\n{text}"


@dataclass
class DaemonSeen:
    container: str  # CONTAINER_ID of the task that started it (inherited environment)
    outlived_container: bool = False  # seen alive with no other process of that container left
    later_apps: set[str] = field(default_factory=set)  # session tasks of other YARN applications seen meanwhile


def process_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def processes_by_container() -> dict[str, list[tuple[int, str | None]]]:
    """CONTAINER_ID -> [(pid, HCOLLECTIVES_SESSION or None)] for every process of a YARN container."""
    out: dict[str, list[tuple[int, str | None]]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        environ = process_environ(int(entry.name))
        if environ.get("CONTAINER_ID"):
            out.setdefault(environ["CONTAINER_ID"], []).append(
                (int(entry.name), environ.get("HCOLLECTIVES_SESSION")))
    return out


def application_of(container: str) -> str:
    """container_<cluster>_<app>_<attempt>_<n> -> <cluster>_<app>."""
    parts = container.split("_")
    return "_".join(parts[-4:-2])


class ClusterRunWatcher(threading.Thread):
    """Watches one cluster run from the outside, while it runs.

    On this host (both NodeManagers are here): the run's session directory
    under /tmp/hcollectives-<uid>/ (new since the watcher started, with node
    directories named after YARN NodeManagers) and whether it ever held a
    ``split-cache``. With *hdfs_base*: lists ``<hdfs_base>/<session>`` now and
    then (a `hadoop fs` JVM each time) until it holds every task's
    contribution to one iteration, to see the default store at work on HDFS.
    """

    def __init__(self, env, hdfs_base: str | None = None, poll: float = 0.5, hdfs_every: float = 10.0):
        super().__init__(daemon=True)
        self.env, self.hdfs_base, self.poll, self.hdfs_every = env, hdfs_base, poll, hdfs_every
        self.before = set(self._dirs())
        self.sessions: set[str] = set()
        self.split_cache_seen: set[str] = set()
        self.hdfs_files: list[str] = []
        self.hdfs_done = False
        # Daemon lifetime: node dir -> every pid its pid file named; pid -> DaemonSeen.
        self.daemon_pids: dict[str, set[int]] = {}
        self.daemons: dict[int, DaemonSeen] = {}
        self._halt = threading.Event()

    @staticmethod
    def _dirs() -> list[str]:
        try:
            return [p.name for p in NODE_TMP.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return []

    def _look(self) -> None:
        for name in set(self._dirs()) - self.before:
            session = NODE_TMP / name
            try:  # daemons remove what they can of it when the session ends
                if any(n.name.startswith("localhost_") for n in (session / "nodes").iterdir()):
                    self.sessions.add(name)  # NM_HOST=localhost, NM_PORT=...: a YARN task's node
            except OSError:
                pass
            if (session / "split-cache").is_dir():
                self.split_cache_seen.add(name)
        if self.sessions:
            self._look_at_daemons()

    def _look_at_daemons(self) -> None:
        """Which YARN container started each node's daemon, whether that container's
        own processes are gone while the daemon lives on, and whether tasks of a
        later YARN application (a later iteration) of the session ran meanwhile."""
        containers = processes_by_container()
        for session in self.sessions:
            for node in (NODE_TMP / session / "nodes").glob("localhost_*"):
                try:
                    pid = int((node / "pid").read_text())
                except (OSError, ValueError):
                    continue
                self.daemon_pids.setdefault(node.name, set()).add(pid)
                environ = process_environ(pid)
                if not environ.get("CONTAINER_ID"):
                    continue  # exited (or not ours)
                seen = self.daemons.setdefault(pid, DaemonSeen(environ["CONTAINER_ID"]))
                others = [p for p in containers.get(seen.container, ()) if p[0] != pid]
                seen.outlived_container |= not others
                app = application_of(seen.container)
                seen.later_apps |= {application_of(c) for c, procs in containers.items()
                                    if application_of(c) != app and any(s == session for _, s in procs)}

    def _list_hdfs(self) -> None:
        (session,) = self.sessions
        listing = hadoop_fs(self.env, "-ls", "-R", f"{self.hdfs_base}/{session}")
        if listing.returncode == 0:
            self.hdfs_files = hdfs_entries(listing.stdout)
            tasks: dict[str, set[str]] = {}  # iteration -> tasks with a checkpointed contribution
            for path in self.hdfs_files:
                if "/tasks/" in path and path.endswith(".npz"):
                    iteration = path.split("/iter-")[1].split("/")[0]
                    tasks.setdefault(iteration, set()).add(path.split("/tasks/")[1].split("/")[0])
            self.hdfs_done = any(len(t) == SPLITS for t in tasks.values())

    def run(self) -> None:
        last_hdfs = 0.0
        while not self._halt.wait(self.poll):
            self._look()
            if (self.hdfs_base and not self.hdfs_done and len(self.sessions) == 1
                    and time.monotonic() - last_hdfs >= self.hdfs_every):
                last_hdfs = time.monotonic()
                self._list_hdfs()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=180)
        self._look()


def wait_for_split_cache_removal(session: str, timeout: float = 30.0) -> bool:
    """Task-started daemons remove the session's directory on their node (split cache,
    their logs and lock) when the session ends, just after the driver exits."""
    deadline = time.monotonic() + timeout
    while (NODE_TMP / session).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


# -- data: generated once, uploaded to HDFS once ---------------------------------------------------


@pytest.fixture(scope="module")
def data(cluster_env, tmp_path_factory):
    stage = tmp_path_factory.mktemp("hdfs-inputs")
    kmeans = datagen.kmeans(str(stage / "kmeans"), points=600, dims=3, clusters=3, splits=SPLITS, seed=2)
    mds = datagen.mds(str(stage / "mds"), n=120, dims=3, splits=SPLITS, seed=3)
    target = f"/hc-test-inputs-{uuid.uuid4().hex[:8]}"
    put = hadoop_fs(cluster_env, "-put", stage, target)  # one client JVM for both data sets
    assert put.returncode == 0, put.stderr[-2000:]
    fs = cluster_env["MINICLUSTER_FS_DEFAULT"]
    # One glob per data set: mrjob checks each input path with a `hadoop fs -ls` of its own.
    delta = load_example("mds").load_delta(mds.inputs)
    mds = SimpleNamespace(inputs=mds.inputs, initial=mds.initial, hdfs=f"{fs}{target}/mds/distances-*.txt",
                          expected=smacof_reference(delta, np.load(mds.initial), ITERATIONS))
    points = datagen.load_points(kmeans.inputs)
    kmeans = SimpleNamespace(inputs=kmeans.inputs, initial=kmeans.initial, points=points,
                             hdfs=f"{fs}{target}/kmeans/points-*.txt",
                             expected=kmeans_reference(points, np.load(kmeans.initial), ITERATIONS))
    return SimpleNamespace(kmeans=kmeans, mds=mds)


# -- MDS: collective (default HDFS store), plain mrjob, streaming ----------------------------------


def logging_hadoop_bin(env, directory: Path) -> tuple[list[str], Path]:
    """--hadoop-bin for a `hadoop` that notes each command it is started for, then runs the real one."""
    log, script = directory / "hadoop-calls", directory / "hadoop"
    real = os.path.join(env["HADOOP_HOME"], "bin", "hadoop")
    script.write_text(f'#!/bin/sh\necho "$1 $2" >> {shlex.quote(str(log))}\nexec {shlex.quote(real)} "$@"\n')
    script.chmod(0o755)
    return ["--hadoop-bin", str(script)], log


@pytest.fixture(scope="module")
def mds_on_yarn(cluster_env, data, tmp_path_factory):
    """examples/mds.py on -r hadoop without --checkpoint-uri, watched from outside while it runs."""
    here = tmp_path_factory.mktemp("mds-yarn")
    result = here / "x.npy"
    hadoop_bin, calls = logging_hadoop_bin(cluster_env, here)
    watcher = ClusterRunWatcher(cluster_env, hdfs_base=default_store_base(cluster_env))
    watcher.start()
    try:
        done = run([sys.executable, ROOT / "examples" / "mds.py", *mrjob_hadoop_args(cluster_env), *hadoop_bin,
                    *TWO_NODES, *ITERATION_TIMEOUT, "--initial", data.mds.initial, "--max-iterations", ITERATIONS,
                    "--tolerance", "0", "--result", result, data.mds.hdfs], cluster_env)
    finally:
        watcher.stop()
    return SimpleNamespace(done=done, result=result, watcher=watcher,
                           hadoop_calls=calls.read_text().splitlines() if calls.exists() else [])


def test_mds_on_yarn_with_the_default_hdfs_store(cluster_env, data, mds_on_yarn, no_orphan_daemons):
    done, watcher = mds_on_yarn.done, mds_on_yarn.watcher
    assert done.returncode == 0, stderr_tail(done)
    assert f"{ITERATIONS} iteration(s), did not converge" in done.stderr, stderr_tail(done)
    x = np.load(mds_on_yarn.result)
    assert_rel_close(x, data.mds.expected)
    # The same job on -r local (two simulated nodes) gives the same X.
    local = load_example("mds").MRMDS(args=[
        "-r", "local", "-q", "--initial", data.mds.initial, "--max-iterations", str(ITERATIONS),
        "--tolerance", "0", "--local-nodes", "2", *data.mds.inputs]).iterate()
    assert local.iterations == ITERATIONS and not local.converged
    assert_rel_close(x, local.loop_data)

    # One session on this host, with a daemon for each of the two NodeManagers.
    assert len(watcher.sessions) == 1, (watcher.sessions, stderr_tail(done))
    (session,) = watcher.sessions
    nodes = sorted(watcher.daemon_pids)  # seen while it ran: the daemons remove their dirs at the end
    assert len(nodes) == 2 and all(n.startswith("localhost_") for n in nodes), nodes
    # While it ran, the default store was on HDFS, under the user's tmp dir, and
    # held every task's contribution to an iteration ...
    assert watcher.hdfs_done, (f"never saw {SPLITS} contributions of one iteration in "
                               f"{default_store_base(cluster_env)}/{session}: {watcher.hdfs_files}")
    # ... and it is gone now: the base directory is there, without any session in it.
    assert_no_session_in_default_store(cluster_env)
    # The tasks parsed their splits once per machine into a split cache, which the
    # daemons removed when the session ended.
    assert session in watcher.split_cache_seen, "the parsed-split cache was never used on the cluster"
    assert wait_for_split_cache_removal(session), f"{NODE_TMP / session} outlived the run: " \
        f"{sorted(str(p) for p in (NODE_TMP / session).rglob('*'))}"
    new_dirs = set(watcher._dirs()) - watcher.before  # this run's, and any other that started meanwhile
    assert not [d for d in new_dirs if (NODE_TMP / d / "split-cache").exists()], new_dirs


def test_task_started_daemons_outlive_their_containers_and_serve_later_iterations(mds_on_yarn):
    """Under the DefaultContainerExecutor a daemon started by a map task survives
    that task's container, and the same daemon (one pid per NodeManager, never
    restarted) serves the next iteration's YARN application."""
    done, watcher = mds_on_yarn.done, mds_on_yarn.watcher
    assert done.returncode == 0, stderr_tail(done)
    assert len(watcher.daemon_pids) == 2, watcher.daemon_pids
    for node, pids in watcher.daemon_pids.items():
        assert len(pids) == 1, f"{node}: the daemon was replaced during the run: {pids}"
        seen = watcher.daemons.get(next(iter(pids)))
        assert seen is not None, f"{node}: never saw its daemon alive"
        assert seen.outlived_container, f"{node}: daemon from {seen.container} never seen without its container"
        assert seen.later_apps, f"{node}: no task of a later iteration ran while the daemon from {seen.container} lived"


def test_collective_runs_start_no_hadoop_fs_client(cluster_env, mds_on_yarn):
    """mrjob's HDFS operations (input check, mkdir, uploads, cleanup) went through
    hdfs-native in the driver: the only Java clients were `hadoop version`, once
    for the run, and `hadoop jar`, once per iteration (mrjob_hdfs.py)."""
    assert mds_on_yarn.done.returncode == 0, stderr_tail(mds_on_yarn.done)
    commands = [line.split()[0] for line in mds_on_yarn.hadoop_calls]
    assert sorted(commands) == ["jar"] * ITERATIONS + ["version"], mds_on_yarn.hadoop_calls


def run_vanilla_on_yarn(env, script: str, dataset, result: Path) -> np.ndarray:
    """A plain-mrjob example for ITERATIONS iterations on -r hadoop; its final loop data."""
    done = run([sys.executable, ROOT / "examples" / script, "--initial", dataset.initial,
                "--max-iterations", ITERATIONS, "--tolerance", "0", "--result", result,
                *mrjob_hadoop_args(env), dataset.hdfs], env)
    assert done.returncode == 0, stderr_tail(done)
    assert f"{ITERATIONS} iteration(s), did not converge" in done.stderr, stderr_tail(done)
    return np.load(result)


def test_vanilla_mds_on_yarn_matches_the_collective_run(cluster_env, data, mds_on_yarn, tmp_path):
    x = run_vanilla_on_yarn(cluster_env, "mds_vanilla.py", data.mds, tmp_path / "x.npy")
    assert_rel_close(x, data.mds.expected)
    assert mds_on_yarn.done.returncode == 0, "the collective MDS run on YARN failed (see its own test)"
    assert_rel_close(x, np.load(mds_on_yarn.result))


def streaming(runner_args, mapper_args, result, inputs, env, *, mrjob_args=(), cwd=ROOT):
    """`hcollectives run` (the streaming front end) in a child process."""
    return run([sys.executable, "-m", "hcollectives", "run", *runner_args, *mapper_args,
                "--max-iterations", ITERATIONS, *ITERATION_TIMEOUT, "--result", result, *inputs, "--", *mrjob_args],
               env, cwd=cwd)


def streaming_on_yarn(cluster_env, mapper_args, result, hdfs_input):
    # A bare `hcollectives run -r hadoop`: `hcollectives wrap` runs under the
    # cluster's python_bin (mrjob.conf), and so does the mappers' `python3`. The
    # mapper commands name mappers/*.py relative to the working directory: in
    # the tasks that is the container's, where mrjob's --dirs unpacks mappers/;
    # the driver (which runs --post-process too) runs in ROOT.
    return streaming(mrjob_hadoop_args(cluster_env), mapper_args, result, [hdfs_input], cluster_env,
                     mrjob_args=["--dirs", MAPPERS])


def streaming_on_local(mapper_args, result, inputs):
    mapper_args = [a.replace("mappers/", f"{MAPPERS}/") for a in mapper_args]  # absolute: tasks run elsewhere
    return streaming(["-r", "local", "-q", "--local-nodes", "2"], mapper_args, result, inputs, None)


def test_streaming_kmeans_on_yarn_matches_local(cluster_env, data, tmp_path, no_orphan_daemons):
    mapper = "python3 mappers/kmeans_mapper.py"  # as a user writes it (no path to a particular python)
    args = ["--mapper", mapper, "--allreduce", "sum", "--post-process", f"{mapper} --post-process",
            "--initial", data.kmeans.initial]
    done = streaming_on_yarn(cluster_env, args, tmp_path / "yarn.npz", data.kmeans.hdfs)
    assert done.returncode == 0, stderr_tail(done)
    assert f"{ITERATIONS} iteration(s), did not converge" in done.stderr, stderr_tail(done)
    assert_no_session_in_default_store(cluster_env)
    local = streaming_on_local(args, tmp_path / "local.npz", data.kmeans.inputs)
    assert local.returncode == 0, stderr_tail(local)
    # --result is the last AllReduce result: per cluster, [sum of its points..., count],
    # the clusters taken from the centroids after ITERATIONS - 1 iterations.
    pts = data.kmeans.points
    before_last = kmeans_reference(pts, np.load(data.kmeans.initial), ITERATIONS - 1)
    labels = ((pts[:, None, :] - before_last[None]) ** 2).sum(2).argmin(1)
    with np.load(tmp_path / "yarn.npz") as yarn, np.load(tmp_path / "local.npz") as loc:
        keys = sorted(yarn.files, key=int)
        assert keys == sorted(loc.files, key=int) == [str(k) for k in sorted(set(labels.tolist()))]
        for key in keys:
            members = pts[labels == int(key)]
            np.testing.assert_allclose(yarn[key][:-1], members.sum(0), rtol=1e-12, atol=1e-9)
            assert yarn[key][-1] == len(members)
            np.testing.assert_allclose(yarn[key], loc[key], rtol=1e-9, atol=0)


# -- K-means: collective (explicit HDFS store, a lost broadcast), plain mrjob ----------------------


@pytest.fixture(scope="module")
def kmeans_on_yarn(cluster_env, data, tmp_path_factory):
    store = f"{cluster_env['MINICLUSTER_FS_DEFAULT']}/hc-test-{uuid.uuid4().hex[:8]}"
    result = tmp_path_factory.mktemp("kmeans-yarn") / "centroids.npy"
    # Every non-root node loses iteration 1's result over TCP and must read it from HDFS
    # to give iteration 2's tasks their loop data (a lost last result may never be
    # needed: the run can end before the fallback timer fires).
    # --no-speculative: only then is every iteration sure to use both NodeManagers
    # (one MR application master + 2 GiB maps leave 3 map slots for 4 maps, so all
    # of them fill); with the next iteration's master on the same NodeManager, a
    # whole iteration can run on the other one, and then nobody has a result to lose.
    done = run([sys.executable, ROOT / "examples" / "kmeans.py", *mrjob_hadoop_args(cluster_env), *TWO_NODES,
                "--no-speculative",
                # The tree's broadcast Result is what is lost: small AllReduces run the tree
                # only when asked (recursive doubling has no broadcast; algorithms/plan.py).
                "--cmdenv", "HCOLLECTIVES_FAULTS=drop:result:*:1", "--cmdenv", "HCOLLECTIVES_ALLREDUCE_SMALL=tree",
                "--checkpoint-uri", store,
                "--fallback-timeout", "2", *ITERATION_TIMEOUT, "--initial", data.kmeans.initial,
                "--max-iterations", ITERATIONS,
                "--tolerance", "0", "--result", result, data.kmeans.hdfs], cluster_env)
    return SimpleNamespace(done=done, result=result, store=store)


def test_kmeans_on_yarn_with_hdfs_checkpoints_and_a_lost_broadcast(cluster_env, data, kmeans_on_yarn):
    done, store = kmeans_on_yarn.done, kmeans_on_yarn.store
    assert done.returncode == 0, stderr_tail(done)
    np.testing.assert_allclose(np.load(kmeans_on_yarn.result), data.kmeans.expected, rtol=0, atol=1e-9)
    # Two NodeManagers on one host are two nodes, so there is a child to lose the result ...
    assert "1 store fallback(s):" in done.stderr and "read it from the store" in done.stderr, stderr_tail(done)
    # ... and what the store keeps afterwards is bounded: one resumable iteration (the next
    # loop data and run.json), no contribution of the finished run (each was checkpointed
    # there while it ran: the fallback above read iteration 1's result back from HDFS).
    listing = hadoop_fs(cluster_env, "-ls", "-R", store)
    assert listing.returncode == 0, listing.stderr[-2000:]
    files = [line.split()[-1] for line in listing.stdout.splitlines() if line.startswith("-")]
    assert not [f for f in files if "/tasks/" in f], "\n".join(files)
    assert [f for f in files if f.endswith(f"/loop/{ITERATIONS + 1:06d}.npy")] and \
        [f for f in files if f.endswith("/run.json")], "\n".join(files)
    assert len([f for f in files if "/loop/" in f]) == 1, "\n".join(files)


def test_vanilla_kmeans_on_yarn_matches_the_collective_run(cluster_env, data, kmeans_on_yarn, tmp_path):
    centroids = run_vanilla_on_yarn(cluster_env, "kmeans_vanilla.py", data.kmeans, tmp_path / "centroids.npy")
    np.testing.assert_allclose(centroids, data.kmeans.expected, rtol=0, atol=1e-9)
    assert kmeans_on_yarn.done.returncode == 0, "the collective K-means run on YARN failed (see its own test)"
    assert_rel_close(centroids, np.load(kmeans_on_yarn.result))


# -- what a user sees when things go wrong; a mapper in another language ---------------------------


def test_a_failing_task_shows_its_own_exception_and_the_run_costs_one_job(cluster_env, data, tmp_path):
    """mrjob alone shows a Java stack frame here; the run shows the task's Python
    exception, within 3 minutes, and kills iteration 2's speculatively submitted job."""
    job = tmp_path / "boom.py"
    job.write_text(BOOM_JOB)
    t0 = time.monotonic()
    done = run([sys.executable, job, *mrjob_hadoop_args(cluster_env), "--initial", data.kmeans.initial,
                "--max-iterations", "3", data.kmeans.hdfs], cluster_env, cwd=tmp_path, timeout=400)
    elapsed = time.monotonic() - t0
    assert done.returncode == 1, stderr_tail(done)
    error = done.stderr[done.stderr.rindex("hcollectives: error:"):]
    assert "RuntimeError: boom from the user's mapper on" in error and "boom.py, line 8, in mapper" in error, error
    assert "YarnChild" not in error and "HCOLLECTIVES_SECRET" not in error, error
    assert elapsed < 180, f"took {elapsed:.0f} s"
    submitted = {line.split()[-1] for line in done.stderr.splitlines() if "Submitted application" in line}
    killed = {line.split()[2] for line in done.stderr.splitlines() if line.startswith("hcollectives: killed ")}
    # Iteration 2 went in speculatively once iteration 1's maps had containers; the
    # failed run killed it rather than waiting for its own tasks to fail.
    assert len(submitted) <= 2 and submitted - killed and (len(submitted) == 1 or len(killed) == 1), done.stderr[-3000:]


def test_an_awk_mapper_runs_with_a_bare_hcollectives_run(cluster_env, data, tmp_path, no_orphan_daemons):
    """Any language: awk emits key<TAB>numbers; AllReduce sums columns 1-2 and counts rows."""
    result = tmp_path / "sums.npz"
    done = run([sys.executable, "-m", "hcollectives", "run", *mrjob_hadoop_args(cluster_env),
                "--mapper", "awk '{print \"0\\t\" $1 \" \" $2 \" 1\"}'", "--allreduce", "sum",
                "--max-iterations", "1", *ITERATION_TIMEOUT, "--result", result, data.kmeans.hdfs], cluster_env)
    assert done.returncode == 0, stderr_tail(done)
    with np.load(result) as sums:
        np.testing.assert_allclose(sums["0"], [*data.kmeans.points[:, :2].sum(0), len(data.kmeans.points)],
                                   rtol=1e-12)


# -- streaming MDS (last: lowest priority for the time budget) -----------------------------------------


def test_streaming_mds_on_yarn_matches_local(cluster_env, data, tmp_path, no_orphan_daemons):
    args = ["--mapper", "python3 mappers/mds_bc_mapper.py", "--allgather", "--initial", data.mds.initial]
    done = streaming_on_yarn(cluster_env, args, tmp_path / "yarn.npy", data.mds.hdfs)
    assert done.returncode == 0, stderr_tail(done)
    assert f"{ITERATIONS} iteration(s), did not converge" in done.stderr, stderr_tail(done)
    assert_no_session_in_default_store(cluster_env)
    local = streaming_on_local(args, tmp_path / "local.npy", data.mds.inputs)
    assert local.returncode == 0, stderr_tail(local)
    x = np.load(tmp_path / "yarn.npy")  # the last AllGather result: X after ITERATIONS Guttman transforms
    assert_rel_close(x, data.mds.expected)
    assert_rel_close(x, np.load(tmp_path / "local.npy"))


# -- the benchmark on YARN --------------------------------------------------------------------------------


def test_bench_on_yarn_runs_both_ways_with_the_breakdown(cluster_env, tmp_path):
    """`hcollectives bench --runner hadoop` (small: 2 iterations, two ways): the same
    centroids both ways, a breakdown that adds up, and speculative scheduling
    driven by YARN's own word that iteration 1's maps all had containers."""
    out = tmp_path / "bench.json"
    done = run([sys.executable, "-m", "hcollectives", "bench", "--runner", "hadoop", "--apps", "kmeans",
                "--ways", "vanilla,hcollectives", "--iterations", ITERATIONS, "--points", "600", "--dims", "3",
                "--clusters", "3", "--splits", SPLITS, "--out", out], cluster_env)
    assert done.returncode == 0, stderr_tail(done)
    report = json.loads(out.read_text())["kmeans"]
    assert report["runner"] == "hadoop" and report["runner_args"] == ["-r", "hadoop"]  # the cluster's mrjob.conf
    hc, vanilla = report["hadoop"]["hcollectives"], report["hadoop"]["vanilla"]
    assert hc["max_rel_diff_vs_vanilla"] < 1e-9
    assert hc["speedup_vs_vanilla"] > 0
    for way in (hc, vanilla):
        assert len(way["per_iteration_s"]) == ITERATIONS
        for i, seconds in enumerate(way["per_iteration_s"], 1):
            parts = way["breakdown_per_iteration_s"][str(i)]
            assert sum(parts.values()) == pytest.approx(seconds, abs=5e-3)
            assert parts["map_overhead"] > 0 and parts["scheduling"] > 0, parts  # traced tasks were read
    first, second = hc["events_per_iteration_s"]["1"], hc["events_per_iteration_s"]["2"]
    assert "all_tasks_scheduled" in first, first  # the ApplicationMaster answered through the RM proxy
    # Iteration 2 went in as soon as the first of the two signals came, not later.
    trigger = min(first["all_tasks_scheduled"], first["all_tasks_started"])
    assert trigger <= second["submitted"] <= trigger + 2.0, (first, second)
