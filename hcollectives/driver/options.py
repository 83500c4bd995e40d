"""Loop options shared by MRCollectiveJob scripts and `hcollectives run`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import ConfigurationError

if TYPE_CHECKING:  # the driver pulls in trio
    from .loop import LoopOptions


class CollectiveSpec(Protocol):
    """What the driver needs of a collective (jobs/collectives.py's AllReduce/AllGather)."""

    name: str
    op: str
    allow_nonfinite: bool


def add_loop_arguments(group: Any) -> None:
    """Options shared by MRCollectiveJob scripts and `hcollectives run`."""
    group.add_argument("--initial", help="loop data of the first iteration (.npy)")
    group.add_argument("--max-iterations", type=int, default=10, help="iterations at most (default 10)")
    group.add_argument("--result", help="write the final loop data here")
    group.add_argument("--no-speculative", dest="speculative", action="store_false",
                       help="submit iteration i+1 only after iteration i is done")
    group.add_argument("--local-nodes", type=int, default=1,
                       help="simulate N nodes, each with its own daemon (local runner)")
    group.add_argument("--fanout", type=int, default=2, help="children per node in the AllReduce tree")
    group.add_argument("--checkpoint-uri", help="durable store (fsspec URL); default: the job's temp dir")
    group.add_argument("--resume", action="store_true", help="continue from the last iteration in --checkpoint-uri")
    group.add_argument("--fallback-timeout", type=float, default=10.0,
                       help="seconds to wait for a piece over TCP before reading it from the store")
    group.add_argument("--iteration-timeout", type=float, default=3600.0,
                       help="fail the run if one iteration takes longer than this many seconds")
    group.add_argument("--coordinator-host", default=None,
                       help="address tasks' daemons use to reach the driver (default: on -r hadoop, this "
                            "machine's address towards the ResourceManager; else 127.0.0.1)")
    group.add_argument("--no-input-cache", dest="input_cache", action="store_false",
                       help="parse every split in every iteration (jobs with parse_input), "
                            "instead of reusing each machine's parsed copy")
    group.add_argument("--node-service", metavar="HOST:PORT",
                       help="tasks use the `hcollectives node` service at this address on their own host "
                            "instead of starting a daemon (clusters whose container executor kills what a "
                            "task leaves behind); needs --secret-file")
    group.add_argument("--secret-file", metavar="PATH",
                       help="hex secret shared with the node services; the file must exist at this path "
                            "on every node (tasks read it there: it never travels in the job's configuration)")


def loop_options_from_args(o: Any, collective: CollectiveSpec, *, runner: str,
                           hadoop_tmp_dir: str | None = None, **extra: Any) -> "LoopOptions":
    """LoopOptions for a run on mrjob's *runner* (local/inline runs share the driver's temp dir)."""
    from .loop import LoopOptions
    from ..hadoop.hadoop_conf import address_seen_by_cluster, temporary_store_base

    if o.resume and not o.checkpoint_uri:
        raise ConfigurationError("--resume needs --checkpoint-uri (the default store is deleted after each run)")
    if runner == "hadoop" and not o.checkpoint_uri:
        extra["temporary_store"] = temporary_store_base(tmp_dir=hadoop_tmp_dir)
    extra["share_rundir"] = runner in ("local", "inline")
    if runner == "inline":
        # mrjob's inline runner runs a job inside this process (changing its
        # working directory and sys.std*): two jobs at once, as speculation
        # would run them, trample each other.
        extra["speculative"] = False
    extra.setdefault("speculative", o.speculative)
    coordinator_host = o.coordinator_host
    if coordinator_host is None:
        # Tasks on other hosts must reach the driver: on a cluster, by the address
        # this machine uses towards the ResourceManager (127.0.0.1 on a one-host cluster).
        coordinator_host = (address_seen_by_cluster() if runner == "hadoop" else None) or "127.0.0.1"
    return LoopOptions(collective=collective.name, op=collective.op, max_iterations=o.max_iterations, local_nodes=o.local_nodes, fanout=o.fanout,
                       checkpoint_uri=o.checkpoint_uri, resume=o.resume, fallback_timeout=o.fallback_timeout,
                       iteration_timeout=o.iteration_timeout,
                       allow_nonfinite=collective.allow_nonfinite, coordinator_host=coordinator_host,
                       node_service=o.node_service, secret_file=o.secret_file,
                       input_cache=getattr(o, "input_cache", True), **extra)


def load_initial(path: str | None) -> np.ndarray:
    if not path:
        raise ConfigurationError("--initial is required: the loop data of the first iteration (.npy)")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read --initial {path}: {exc}") from None


def check_output_path(path: str | None, option: str = "--result") -> None:
    """Fail before iteration 1, not after the last, if *path* cannot be written:
    its directory must exist and be writable, and the path must not be a directory."""
    if not path:
        return
    import os

    from ..errors import ConfigurationError

    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise ConfigurationError(f"{option} {path} is a directory; give a file name")
    if not os.path.isdir(directory):
        raise ConfigurationError(f"{option} {path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigurationError(f"{option} {path}: directory {directory} is not writable")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigurationError(f"{option} {path} exists and is not writable")
