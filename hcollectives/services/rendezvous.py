"""Finding this node's daemon, or starting it: the first task on a node wins.

Tasks of one node meet in a node-local directory (``rundir/nodes/<node>/``):
under a file lock, the first task finds no live daemon there, starts one
detached (its own session, so it outlives the task), and reads the daemon's
address from its stdout; later tasks read the address file. A daemon started
this way exits on its own when its sessions end (see `node.py`).

Node identity: on YARN every NodeManager of a mini-cluster shares one host, so
``NM_HOST:NM_PORT`` names the node when set; ``--local-nodes N`` simulates N
nodes by task partition; otherwise the host name.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import CollectiveTimeout, HCollectivesError, SessionAborted

LOCAL_NODES_ENV = "HCOLLECTIVES_LOCAL_NODES"
STRAY_UNIX_DIR = "unix-dir"  # names a daemon's socket dir kept outside its rendezvous dir
START_TIMEOUT = 30.0  # a cold Python start plus imports, on a loaded 2-core machine


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name)


def node_identity(env: Mapping[str, str] = os.environ) -> str:
    if env.get("NM_HOST") and env.get("NM_PORT"):
        return _safe(env["NM_HOST"]) + ":" + _safe(env["NM_PORT"])
    local_nodes = int(env.get(LOCAL_NODES_ENV) or 0)
    if local_nodes > 1:
        partition = int(env.get("mapreduce_task_partition") or 0)
        return f"local-{partition % local_nodes}"
    return _safe(socket.gethostname()) or "localhost"


def default_rundir(session: str) -> str:
    """Where a node's tasks meet when the driver gave no directory (cluster runs).

    Not `tempfile.gettempdir()`: YARN points $TMPDIR into each application's
    (or container's) own directory, and tasks of different iterations -- each
    its own YARN application -- must find the same daemon on a node.
    """
    base = os.environ.get("HCOLLECTIVES_NODE_TMP") or "/tmp"
    return os.path.join(base, f"hcollectives-{os.getuid()}", _safe(session))


def node_dir(rundir: str, node: str) -> Path:
    return Path(rundir) / "nodes" / _safe(node)


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """A daemon killed -9 stays a zombie until the task that started it is gone,
    and os.kill(pid, 0) succeeds on a zombie: its address would be dialled
    (connection refused) instead of a new daemon started."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True  # gone between the two looks
    except OSError:
        return False  # no /proc (not Linux): trust os.kill
    return stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X")


def daemon_command(node: str, rendezvous_dir: Path, env: Mapping[str, str] = os.environ) -> list[str]:
    command = [sys.executable, "-m", "hcollectives.services.node_main", "--node-id", node,
               "--rendezvous", str(rendezvous_dir), "--exit-when-idle"]
    if env.get("NM_HOST"):
        # On YARN the other nodes' daemons dial this one from their hosts: listen on
        # every interface (every connection still proves the session secret) and
        # advertise the NodeManager's host name, which the cluster already resolves.
        command += ["--bind-host", "0.0.0.0", "--advertise-host", env["NM_HOST"]]
    return command


def find_or_start_daemon(*, rundir: str, node: str, secret: bytes, timeout: float = START_TIMEOUT,
                         rundir_must_exist: bool = False) -> str:
    """Return the address of this node's daemon, starting it if there is none.

    With *rundir_must_exist* (local runs, where the driver owns the directory),
    a missing directory means the driver has finished and cleaned up: a
    straggler task must not resurrect it and start a daemon for a dead run.
    """
    if rundir_must_exist and not os.path.isdir(rundir):
        raise SessionAborted(f"the run directory {rundir} is gone: this run has already ended")
    directory = node_dir(rundir, node)
    directory.mkdir(parents=True, exist_ok=True)
    address_file, pid_file = directory / "address", directory / "pid"
    try:
        with FileLock(str(directory / "lock"), timeout=timeout):
            if address_file.exists() and _alive(pid_file):
                return address_file.read_text().strip()
            return _start(node, directory, secret, timeout)
    except Timeout:
        raise CollectiveTimeout(f"waited {timeout:g}s for the node daemon lock in {directory}") from None


def remove_stray_unix_dir(directory: Path) -> None:
    """Remove the Unix-socket directory a (dead) daemon of *directory* kept in the
    system's temp dir (node.py: when the rendezvous path is too long for one)."""
    note = directory / STRAY_UNIX_DIR
    try:
        path = Path(note.read_text().strip())
    except OSError:
        return
    if path.name.startswith("hcx-"):
        shutil.rmtree(path, ignore_errors=True)
    note.unlink(missing_ok=True)


def _start(node: str, directory: Path, secret: bytes, timeout: float) -> str:
    remove_stray_unix_dir(directory)  # a predecessor's, killed before it could
    log_path = directory / "daemon.log"
    env = dict(os.environ, HCOLLECTIVES_SECRET=secret.hex())  # never on the command line (ps shows it)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            daemon_command(node, directory), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=log, env=env, start_new_session=True, close_fds=True)
    try:
        line = _read_line(proc, timeout)
    finally:
        proc.stdout.close()
    if not line.startswith("ADDRESS "):
        proc.kill()
        tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise HCollectivesError(f"node daemon for {node} did not start (exit {proc.poll()}); log {log_path}:\n{tail}")
    return line.split(" ", 1)[1].strip()


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                proc.kill()
                raise CollectiveTimeout(f"node daemon did not report its address within {timeout:g}s")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    return buf.decode(errors="replace").split("\n", 1)[0]
