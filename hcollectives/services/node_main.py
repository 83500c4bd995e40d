"""Process entry point of a node daemon (``hcollectives node`` and task-started daemons).

Kept apart from the CLI so a task-started daemon imports only what it runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ..errors import ConfigurationError
from .faults import ENV_VAR as FAULTS_ENV, Faults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--node-id", required=True, help="this node's id (tasks derive the same id)")
    parser.add_argument("--rendezvous", type=Path, help="directory where tasks of this node look for the daemon")
    parser.add_argument("--bind-host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--advertise-host", default=None, help="address peers dial (default: --bind-host)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: any free port)")
    parser.add_argument("--secret-file", type=Path,
                        help="file holding the hex secret (default: $HCOLLECTIVES_SECRET)")
    parser.add_argument("--exit-when-idle", action="store_true",
                        help="exit once no session is left (task-started daemons)")
    parser.add_argument("--idle-timeout", type=float, default=120.0,
                        help="with --exit-when-idle: seconds to wait for a first session")


def read_secret(secret_file: Path | None) -> bytes:
    """The node secret from *secret_file*, else from $HCOLLECTIVES_SECRET (hex, >= 16 bytes)."""
    where = f"secret file {secret_file}" if secret_file else "$HCOLLECTIVES_SECRET"
    try:
        raw = secret_file.read_text().strip() if secret_file else os.environ.get("HCOLLECTIVES_SECRET", "")
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {where}: {exc.strerror or exc}") from None
    try:
        secret = bytes.fromhex(raw)
    except ValueError:
        raise ConfigurationError(f"the {where} does not hold a hex secret") from None
    if len(secret) < 16:
        raise ConfigurationError(f"no usable node secret in the {where}: it needs >= 16 bytes, hex "
                                 "(pass --secret-file or set $HCOLLECTIVES_SECRET)")
    return secret


def run(args: argparse.Namespace) -> int:
    import trio  # here, not at import: `hcollectives wrap` builds this parser in every map task

    from .node import NodeDaemon
    from .node_session import Timeouts

    secret = read_secret(args.secret_file)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s node {args.node_id} %(levelname)s %(message)s")
    daemon = NodeDaemon(node=args.node_id, secret=secret, bind_host=args.bind_host,
                        advertise_host=args.advertise_host, port=args.port,
                        timeouts=Timeouts(idle_exit=args.idle_timeout),
                        exit_when_idle=args.exit_when_idle,
                        faults=Faults.parse(os.environ.get(FAULTS_ENV)),
                        unix_dir=str(args.rendezvous) if args.rendezvous is not None else None)

    async def main() -> None:
        if args.rendezvous is not None:
            args.rendezvous.mkdir(parents=True, exist_ok=True)  # the Unix socket's directory goes in it
        async with trio.open_nursery() as nursery:
            address = await nursery.start(daemon.run)
            _announce(args.rendezvous, address)

    try:
        trio.run(main)
    finally:
        _withdraw(args.rendezvous)
        if args.exit_when_idle and args.rendezvous is not None:
            if daemon.driver_lost and os.environ.get("HCOLLECTIVES_KEEP_TMP") != "1":
                _remove_orphaned_run(args.rendezvous)
            _remove_session_files(args.rendezvous.parent.parent, args.rendezvous)
    return 0


def _remove_orphaned_run(rendezvous: Path) -> None:
    """The driver was killed (-9) and cannot clean up: remove what it would have.

    Our node's directory (log included) always; and when the run directory is
    the driver's own temp dir (local runners: $HCOLLECTIVES_RUNDIR), that whole
    temp dir -- the store, mrjob's files, the fork servers' sockets (removing
    those ends the fork servers). Other daemons of the run may do the same:
    removal tolerates a race.
    """
    import shutil

    rundir = rendezvous.parent.parent
    from .rendezvous import remove_stray_unix_dir

    for node in (rundir / "nodes").glob("*"):
        if node != rendezvous:
            remove_stray_unix_dir(node)  # of killed predecessors (ours goes as we exit)
    shutil.rmtree(rendezvous, ignore_errors=True)
    driver_rundir = os.environ.get("HCOLLECTIVES_RUNDIR")
    tmp = rundir.parent
    if driver_rundir and Path(driver_rundir) == rundir and tmp.name.startswith("hcollectives-"):
        shutil.rmtree(tmp, ignore_errors=True)


def _announce(rendezvous: Path | None, address: str) -> None:
    if rendezvous is not None:
        rendezvous.mkdir(parents=True, exist_ok=True)
        for name, text in (("pid", str(os.getpid())), ("address", address)):
            tmp = rendezvous / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(rendezvous / name)
    print(f"ADDRESS {address}", flush=True)
    # The starter reads one line and goes away; never write to that pipe again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _withdraw(rendezvous: Path | None) -> None:
    """Remove our address so no task dials a dead daemon (unless a newer one owns it)."""
    if rendezvous is None:
        return
    try:
        if (rendezvous / "pid").read_text().strip() == str(os.getpid()):
            (rendezvous / "address").unlink(missing_ok=True)
            (rendezvous / "pid").unlink(missing_ok=True)
    except OSError:
        pass


def _remove_session_files(rundir: Path, own: Path) -> None:
    """A task-started daemon's session is over: remove what it left on this machine.

    The parsed-split cache, then this daemon's own directory (its log and the
    lock tasks took to start it; kept with HCOLLECTIVES_KEEP_TMP=1, for whoever
    debugs the run), then whatever directories that leaves empty: on a
    cluster node nothing of the session stays behind.
    """
    import shutil

    from .split_cache import remove_split_cache

    remove_split_cache(rundir)
    # A pid file still there is a newer daemon's (ours was withdrawn): its directory stays.
    if not os.environ.get("HCOLLECTIVES_KEEP_TMP") and not (own / "pid").exists():
        shutil.rmtree(own, ignore_errors=True)
    nodes = rundir / "nodes"
    for directory in [*(nodes.iterdir() if nodes.is_dir() else ()), nodes, rundir]:
        try:
            directory.rmdir()
        except OSError:
            pass  # not empty (another daemon's files, logs) or already gone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hcollectives node", description="Run a node daemon.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
