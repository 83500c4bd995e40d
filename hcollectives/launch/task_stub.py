"""A map task's interpreter that hands the task to this machine's fork server.

mrjob runs ``<task_python_bin> SCRIPT --step-num=0 --mapper ...`` for every
task; with ``--task-python-bin "python -m hcollectives.launch.task_stub"``
this stub (standard library only: ~0.05 s) finds or starts the zygote for
(session, script) -- `hcollectives.launch.zygote`, a process that has
already imported numpy, mrjob and the script's own imports -- and sends it
one request: argv, cwd, the whole environment, this process's start time and,
by SCM_RIGHTS, its fds 0, 1, 2. The zygote forks a child that runs the script
on those fds; the stub waits for its exit status and exits with it, so mrjob
or Hadoop sees exactly what running the script directly would show.

Where:      <rundir>/zygotes/<digest>.sock (mode 0700 directory), .lock, .log
            rundir = $HCOLLECTIVES_RUNDIR, else rendezvous.default_rundir(session)
Request:    4-byte big-endian length, then JSON {v, argv, cwd, env, process_start};
            fds 0, 1, 2 ride on the first byte
Replies:    JSON lines: {"pid": N} once the child exists, then {"exit_code": N}
            or {"signal": N}

Killing the stub (SIGTERM, SIGINT, SIGKILL) closes its connection; the
zygote then SIGKILLs the child's process group. A task never fails because of
the fork server: if the zygote cannot be started or reached, or breaks before
the child exists, the script runs in this process instead (one line on
stderr). ``HCOLLECTIVES_ZYGOTE=0`` always runs it in-process.

Deliberately light: imported by every task, before anything is warm. No
numpy, no mrjob, no other hcollectives module on the fast path.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time

from .task_trace import process_start  # stdlib only, like this module

ZYGOTE_ENV = "HCOLLECTIVES_ZYGOTE"  # "0": run in-process
IDLE_ENV = "HCOLLECTIVES_ZYGOTE_IDLE_TIMEOUT"  # seconds; the zygote's --idle-timeout
PROCESS_START_ENV = "HCOLLECTIVES_PROCESS_START"
START_TIMEOUT = 30.0  # a cold start plus numpy + mrjob + the script's imports, on a loaded 2-core machine
LOCK_TIMEOUT = START_TIMEOUT + 10.0
MAX_REQUEST = 1 << 20  # the zygote refuses larger requests
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path (108) minus the NUL
_HEADER = struct.Struct("!I")
_PROG = "hcollectives task_stub"


class Unavailable(Exception):
    """The fork server cannot serve this task (before any child exists): run in-process."""

    retry = False  # True: the zygote went away between connect and fork; a fresh one may serve


class Vanished(Unavailable):
    retry = True


# -- where the zygote lives ---------------------------------------------------------------------

def _safe(name: str) -> str:
    # rendezvous._safe without `re` (not imported by a bare interpreter)
    return "".join(c if c.isalnum() and c.isascii() or c in "_.@-" else "_" for c in name)


def rundir_of(env) -> tuple[str, bool] | None:
    """(rundir, made by the driver?) for this task, or None outside an hcollectives run.

    Mirrors `TaskEnv.from_environ` and `rendezvous.default_rundir` (kept in
    step by tests/test_zygote.py)."""
    rundir = env.get("HCOLLECTIVES_RUNDIR")
    if rundir:
        return rundir, True
    session = env.get("HCOLLECTIVES_SESSION")
    if not session:
        return None
    base = env.get("HCOLLECTIVES_NODE_TMP") or "/tmp"
    return os.path.join(base, f"hcollectives-{os.getuid()}", _safe(session)), False


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def split_pythonpath(env, cwd: str, task_dirs: list[str]) -> tuple[list[str], list[str]]:
    """$PYTHONPATH as (stable entries, task-local entries), absolute.

    Task-local entries live in the task's own directories (mrjob's
    bootstrapped mrjob.zip, --py-files, the working directory itself): they
    differ per task and disappear with it, so the zygote must not import from
    them (it would keep modules whose files are gone)."""
    stable, local = [], []
    raw = env.get("PYTHONPATH")
    for entry in raw.split(os.pathsep) if raw else ():
        absolute = os.path.normpath(os.path.join(cwd, entry)) if entry else cwd
        real = os.path.realpath(absolute)
        if not os.path.isabs(entry) or any(_inside(real, d) or _inside(absolute, d) for d in task_dirs):
            local.append(absolute)
        else:
            stable.append(absolute)
    return stable, local


def _interpreter_flags() -> list[str]:
    flags = []
    for flag, option in (("dont_write_bytecode", "-B"), ("no_user_site", "-s"), ("no_site", "-S"),
                         ("ignore_environment", "-E"), ("safe_path", "-P")):
        if getattr(sys.flags, flag, 0):
            flags.append(option)
    if sys.flags.optimize:
        flags.append("-" + "O" * sys.flags.optimize)
    return flags


def zygote_key(script_bytes: bytes, stable_path: list[str]) -> str:
    """One zygote per (script content, interpreter, flags, stable import path); the rundir is per session."""
    h = hashlib.sha256()
    for part in (sys.executable, " ".join(_interpreter_flags()), os.pathsep.join(stable_path)):
        h.update(part.encode("utf-8", "surrogateescape") + b"\0")
    h.update(script_bytes)
    return h.hexdigest()[:24]


def _address(path: str, keep: list[int]) -> str:
    """*path*, or an equivalent short enough for sun_path (via an O_PATH fd on its directory)."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return path
    fd = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    keep.append(fd)
    return f"/proc/self/fd/{fd}/{os.path.basename(path)}"


def _connect(path: str, timeout: float = 10.0) -> socket.socket | None:
    """A connection to the zygote at *path*, or None if nothing listens there."""
    keep: list[int] = []
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(_address(path, keep))
        s.settimeout(None)
        return s
    except (FileNotFoundError, ConnectionRefusedError, socket.timeout):
        s.close()
        return None
    except BaseException:
        s.close()
        raise
    finally:
        for fd in keep:
            os.close(fd)


def _prepare_dir(rundir: str, made_by_driver: bool) -> str:
    if made_by_driver and not os.path.isdir(rundir):
        # The driver removed it: this run is over; do not resurrect it.
        raise Unavailable(f"the run directory {rundir} is gone")
    directory = os.path.join(rundir, "zygotes")
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.stat(directory)
    if st.st_uid != os.getuid():
        raise Unavailable(f"{directory} belongs to uid {st.st_uid}")
    if st.st_mode & 0o077:
        os.chmod(directory, 0o700)
    return directory


class _flock:
    """An exclusive fcntl.flock on *path*, waited for at most *timeout* seconds (SIGALRM, no polling)."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path, self.timeout = path, timeout

    def __enter__(self) -> "_flock":
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if _try_flock(self.fd):
            return self

        def expired(signum, frame):
            raise TimeoutError

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except TimeoutError:
            os.close(self.fd)
            raise Unavailable(f"waited {self.timeout:g}s for {self.path}") from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def find_or_start(script: str, env, cwd: str) -> socket.socket:
    """A connection to this machine's zygote for *script*, starting it if needed."""
    found = rundir_of(env)
    if found is None:
        raise Unavailable("no $HCOLLECTIVES_SESSION or $HCOLLECTIVES_RUNDIR: not an hcollectives task")
    try:
        with open(script, "rb") as f:
            script_bytes = f.read()
    except OSError as exc:
        raise Unavailable(f"cannot read {script}: {exc}") from None
    script_dir = os.path.dirname(os.path.realpath(script))
    stable, local = split_pythonpath(env, cwd, [os.path.realpath(cwd), cwd, script_dir])
    directory = _prepare_dir(*found)
    base = os.path.join(directory, zygote_key(script_bytes, stable))
    sock_path = base + ".sock"
    conn = _connect(sock_path)
    if conn is not None:
        return conn
    with _flock(base + ".lock", LOCK_TIMEOUT):
        conn = _connect(sock_path)  # started while we waited for the lock
        if conn is not None:
            return conn
        if os.path.exists(base + ".disabled"):
            raise Unavailable(f"the fork server for this script is disabled: see {base}.log")
        _start(script, sock_path, base + ".log", env, cwd, stable, local + [script_dir])
        conn = _connect(sock_path)
        if conn is None:
            raise Unavailable(f"the zygote at {sock_path} reported ready but does not accept connections")
        return conn


def _start(script: str, sock_path: str, log_path: str, env, cwd: str, stable: list[str],
           task_path: list[str]) -> None:
    import subprocess  # cold path only

    try:
        os.unlink(sock_path)  # stale: nothing accepted on it
    except FileNotFoundError:
        pass
    # Nothing task-specific: each child gets its task's environment anyway, and
    # without $HCOLLECTIVES_SESSION the driver's end-of-run sweep of session
    # processes does not wait for the zygote (it leaves when the rundir goes).
    zenv = {k: v for k, v in env.items() if not k.startswith(("HCOLLECTIVES_", "mapreduce_"))}
    if stable:
        zenv["PYTHONPATH"] = os.pathsep.join(stable)
    else:
        zenv.pop("PYTHONPATH", None)
    command = [sys.executable, *_interpreter_flags(), "-m", "hcollectives.launch.zygote",
               "--socket", sock_path, "--script", os.path.abspath(script),
               "--idle-timeout", env.get(IDLE_ENV) or "60"]
    for entry in task_path:
        command += ["--task-path", entry]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                                cwd=os.path.dirname(sock_path), env=zenv, start_new_session=True,
                                close_fds=True)
    try:
        line = _read_line(proc.stdout.fileno(), START_TIMEOUT)
    finally:
        proc.stdout.close()
    if not line.startswith(b"READY"):
        try:
            proc.kill()
        except OSError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        raise Unavailable(f"the zygote did not start ({'timed out' if line is None else 'exit %s' % proc.poll()}); "
                          f"see {log_path}")
    # Not waited for: it is detached and outlives this task (its parent is gone soon).


def _read_line(fd: int, timeout: float) -> bytes | None:
    import select

    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf


# -- one request ----------------------------------------------------------------------------

def encode_request(argv: list[str], cwd: str, env, started: float) -> bytes:
    body = json.dumps({"v": 1, "argv": argv, "cwd": cwd, "env": dict(env), "process_start": started},
                      ensure_ascii=True, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


class _Lines:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def next(self) -> dict | None:
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionError:
                chunk = b""
            if not chunk:
                return None
            self.buf += chunk
            if len(self.buf) > 65536:
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            reply = json.loads(line)
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None


class Broken(Exception):
    """The zygote went away after the child existed: the task's outcome is unknown."""


def serve(conn: socket.socket, argv: list[str]) -> tuple[str, int]:
    """Send the request on *conn*; ("exit", code) or ("signal", number) of the child."""
    message = encode_request(argv, os.getcwd(), os.environ, process_start())
    if len(message) > MAX_REQUEST:
        raise Unavailable(f"request of {len(message)} bytes exceeds {MAX_REQUEST} (environment too large)")
    try:
        socket.send_fds(conn, [message[:_HEADER.size]], [0, 1, 2])
        conn.sendall(message[_HEADER.size:])
    except OSError as exc:
        raise Unavailable(f"sending the request failed: {exc}") from None
    lines = _Lines(conn)
    first = lines.next()
    if first is None or not isinstance(first.get("pid"), int):
        # No child exists (the zygote forks only after a whole request, and
        # says so before the child may run): safe to try again.
        raise Vanished("the zygote closed the connection before starting the task")
    reply = lines.next()
    if reply is None:
        # The child died with the zygote (PR_SET_PDEATHSIG); anything it started is in its group.
        try:
            os.killpg(first["pid"], signal.SIGKILL)
        except OSError:
            pass
        raise Broken(f"lost the fork server while task process {first['pid']} was running")
    if isinstance(reply.get("exit_code"), int):
        return "exit", reply["exit_code"]
    if isinstance(reply.get("signal"), int):
        return "signal", reply["signal"]
    raise Broken(f"unexpected reply from the fork server: {reply!r}")


def _die_like(signum: int) -> None:
    """Exit as a process killed by *signum* would (what mrjob/Hadoop would have seen)."""
    if signum in (signal.SIGTERM, signal.SIGKILL, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE,
                  signal.SIGALRM, signal.SIGUSR1, signal.SIGUSR2):
        sys.stdout.flush()
        sys.stderr.flush()
        if signum != signal.SIGKILL:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
    os._exit(128 + signum)  # a core-dumping or odd signal: don't dump the stub's core


def run_in_process(argv: list[str]) -> None:
    """Run the script here, as `python SCRIPT ARGS...` would."""
    import runpy

    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.realpath(argv[0]))
    if os.environ.get("HCOLLECTIVES_TRACE_DIR"):
        from hcollectives.launch import task_trace  # stdlib only

        task_trace.install()
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:  # the traceback `python SCRIPT` would print, without ours on top
        import traceback

        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != argv[0]:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb)
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        sys.exit("usage: python -m hcollectives.launch.task_stub SCRIPT [ARGS...]")
    if os.environ.get(ZYGOTE_ENV, "1") == "0":
        return run_in_process(argv)
    # Killed while waiting (Hadoop or mrjob ending the task): die at once, so
    # the kernel closes the connection and the zygote kills the child.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    reason = None
    for attempt in range(2):  # a zygote exiting idle as we connect: start a fresh one
        try:
            conn = find_or_start(argv[0], os.environ, os.getcwd())
            try:
                kind, value = serve(conn, argv)
            finally:
                conn.close()
        except Unavailable as exc:
            reason = str(exc)
            if exc.retry:
                continue
            break
        except Broken as exc:
            print(f"{_PROG}: error: {exc}; the task's outcome is unknown", file=sys.stderr)
            sys.exit(70)
        except OSError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            break
        if kind == "signal":
            _die_like(value)
        sys.exit(value)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(f"{_PROG}: fork server unavailable ({reason}); running the task in-process", file=sys.stderr)
    run_in_process(argv)


if __name__ == "__main__":
    main()
