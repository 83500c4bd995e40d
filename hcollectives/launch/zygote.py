"""The fork server: one warm process per (session, script) on a machine forks every map task.

A map task's start-up is mostly imports (numpy, mrjob.job with its
distutils/yaml/urllib, hcollectives, the job script's own): 0.5-1 s against
~0.05 s of work per task in an MDS iteration. Like PySpark's daemon.py, this
process imports all that once and forks a child per task; the child re-runs
the script as ``__main__`` with the task's argv, cwd, environment and stdio,
reusing the modules already imported. `hcollectives.launch.task_stub` is
the client (what mrjob runs as the task's interpreter) and describes the
protocol.

    python -m hcollectives.launch.zygote --socket PATH --script SCRIPT
        [--idle-timeout 60] [--warm-timeout 10] [--task-path DIR ...]

Started by the first stub that finds none (under a file lock), detached, with
the stub's environment minus $HCOLLECTIVES_* and $mapreduce_* (nothing
task-specific; the driver's sweep of session processes does not wait for it)
and minus task-local $PYTHONPATH entries (mrjob's bootstrapped mrjob.zip in
the task's directory, which is removed with the task).

Single-threaded when it forks: one `selectors` loop over the listening
socket, each connection and a pidfd per child (no SIGCHLD handler, no
threads). numpy's OpenBLAS worker threads are native; OpenBLAS shuts its pool
down before fork (pthread_atfork) and starts it again in the child on first
use (checked by tests/test_zygote.py: 500x500 matmul in a child).

Lifetime: exits when idle for --idle-timeout seconds, or (within ~1 s) when
its socket file is removed or replaced -- the driver removing the run
directory ends the run. A stub whose connection closes before its child exits
(the task was killed) gets the child's process group SIGKILLed; a child also
dies with the zygote (PR_SET_PDEATHSIG).

Nothing from the socket is unpickled: requests are JSON with a size cap and a
checked shape; a bad request closes that connection and is logged (stderr is
``<digest>.log``), never ends the zygote. The socket lives in a 0700
directory, and a peer of another uid (SO_PEERCRED) is refused.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import importlib.util
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback

# The request format is the stub's: one definition of it, on the light side.
from .task_stub import _HEADER, MAX_REQUEST, PROCESS_START_ENV, _inside
from .task_trace import TRACE_ENV

MAX_CONNECTIONS = 256
REQUEST_TIMEOUT = 10.0  # a stub sends its request at once; a silent peer is dropped
SCRIPT_IMPORT_TIMEOUT = 10.0  # a script that does work at its top level (unguarded by __main__)
CHECK_INTERVAL = 1.0  # how often the socket file's presence is checked
SCRIPT_MODULE = "__hcollectives_zygote_script__"
_PEERCRED = struct.Struct("3i")
_FDS = 3

# What a map task imports after its script's top level (lazily): warm them too.
WARM_MODULES = (
    "numpy",
    "mrjob.job",
    "mrjob.protocol",
    "mrjob.util",
    "hcollectives.jobs.mrjob_job",
    "hcollectives.jobs.map_task",
    "hcollectives.launch.task_trace",
    "hcollectives.services.task",
    "hcollectives.services.split_cache",
    "hcollectives.transport.sync_channel",
    "encodings.idna",  # resolving a host name (the daemon's address)
    "mmap",  # the split cache
)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} zygote[{os.getpid()}] {message}", file=sys.stderr, flush=True)


class BadRequest(Exception):
    pass


# -- requests --------------------------------------------------------------------------------

def parse_request(body: bytes) -> dict:
    """The request's fields, checked; BadRequest if anything is off."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    if not isinstance(request, dict) or request.get("v") != 1:
        raise BadRequest("not a version-1 request object")
    argv, cwd, env, start = (request.get(k) for k in ("argv", "cwd", "env", "process_start"))
    if not (isinstance(argv, list) and argv and len(argv) <= 65536 and all(isinstance(a, str) for a in argv)):
        raise BadRequest("argv must be a non-empty list of strings")
    if not (isinstance(cwd, str) and os.path.isabs(cwd)):
        raise BadRequest("cwd must be an absolute path")
    if not (isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) and k and "=" not in k
                                          and "\0" not in k + v for k, v in env.items())):
        raise BadRequest("env must map names to strings")
    if not (isinstance(start, (int, float)) and not isinstance(start, bool)):
        raise BadRequest("process_start must be a number")
    if any("\0" in a for a in argv) or "\0" in cwd:
        raise BadRequest("NUL in argv or cwd")
    return {"argv": argv, "cwd": cwd, "env": env, "process_start": float(start)}


class Connection:
    """One stub: reading its request, then waiting for its child."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.key = sock.fileno()  # sock.fileno() is -1 once closed
        self.buf = bytearray()
        self.fds: list[int] = []
        self.deadline = time.monotonic() + REQUEST_TIMEOUT
        self.child: Child | None = None

    def read(self) -> dict | None:
        """Read what arrived; the request once complete, else None. BadRequest/EOFError on trouble."""
        while True:
            try:
                data, fds, flags, _ = socket.recv_fds(self.sock, 65536, _FDS, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return None
            except ConnectionError as exc:
                raise EOFError(str(exc)) from None
            self.fds.extend(fds)
            if flags & socket.MSG_CTRUNC or len(self.fds) > _FDS:
                raise BadRequest("too many file descriptors")
            if not data:
                raise EOFError("closed before a whole request")
            self.buf += data
            if len(self.buf) >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self.buf)
                if size > MAX_REQUEST:
                    raise BadRequest(f"request of {size} bytes exceeds {MAX_REQUEST}")
                if len(self.buf) > _HEADER.size + size:
                    raise BadRequest("data after the request")
                if len(self.buf) == _HEADER.size + size:
                    if len(self.fds) != _FDS:
                        raise BadRequest(f"{len(self.fds)} file descriptors, expected {_FDS}")
                    return parse_request(bytes(self.buf[_HEADER.size:]))

    def reply(self, message: dict) -> bool:
        data = json.dumps(message).encode() + b"\n"
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(5.0)  # a few bytes into an empty buffer: never blocks in practice
            self.sock.sendall(data)
            return True
        except OSError:
            return False
        finally:
            self.sock.setblocking(False)

    def close_fds(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


class Child:
    def __init__(self, pid: int, pidfd: int, conn: Connection) -> None:
        self.pid, self.pidfd, self.conn = pid, pidfd, conn
        self.killed = False  # also once reaped: its pid (and group) may belong to someone else then

    def kill(self) -> None:
        if not self.killed:
            self.killed = True
            for target in (lambda: os.killpg(self.pid, signal.SIGKILL),
                           lambda: signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)):
                try:
                    target()
                except OSError:
                    pass


# -- the server ------------------------------------------------------------------------------

class Zygote:
    def __init__(self, socket_path: str, script: str, idle_timeout: float) -> None:
        self.socket_path = socket_path
        self.script = script
        self.idle_timeout = idle_timeout
        self.pid = os.getpid()
        self.base_path = list(sys.path)
        self.sel = selectors.DefaultSelector()
        self.listener: socket.socket | None = None
        self.inode: tuple[int, int] | None = None
        self.conns: dict[int, Connection] = {}  # by socket fd
        self.children: dict[int, Child] = {}  # by pidfd
        self.last_activity = time.monotonic()
        self.served = 0

    # listening -------------------------------------------------------------------------

    def listen(self) -> None:
        directory, name = os.path.split(self.socket_path)
        os.chdir(directory)  # relative names: no sun_path length limit; never a task's directory
        temp = f".{name}.{os.getpid()}.tmp"
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(temp)
        os.chmod(temp, 0o600)
        listener.listen(64)
        os.rename(temp, name)  # appears only once it accepts connections
        st = os.stat(name)
        self.inode = (st.st_dev, st.st_ino)
        listener.setblocking(False)
        self.listener = listener
        self.sel.register(listener, selectors.EVENT_READ, ("listen", None))

    def _socket_is_ours(self) -> bool:
        try:
            st = os.stat(self.socket_path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.inode

    def stop_listening(self) -> None:
        if self.listener is None:
            return
        if self._socket_is_ours():
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        self.sel.unregister(self.listener)
        self.listener.close()
        self.listener = None

    # the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while True:
                busy = bool(self.conns or self.children)
                if self.listener is None and not busy:
                    return
                now = time.monotonic()
                if self.listener is not None:
                    if not self._socket_is_ours():
                        log(f"socket file removed or replaced (run over) after {self.served} tasks: no new tasks")
                        self.stop_listening()
                        continue
                    if not busy and now - self.last_activity >= self.idle_timeout:
                        log(f"idle for {self.idle_timeout:g}s after {self.served} tasks: exiting")
                        self.stop_listening()
                        return
                timeout = CHECK_INTERVAL
                if not busy:
                    timeout = min(timeout, max(0.0, self.last_activity + self.idle_timeout - now))
                for conn in self.conns.values():
                    if conn.child is None:
                        timeout = min(timeout, max(0.0, conn.deadline - now))
                for key, _ in self.sel.select(timeout):
                    kind, obj = key.data
                    try:
                        if kind == "listen":
                            self._accept()
                        elif kind == "conn":
                            self._on_conn(obj)
                        else:
                            self._on_exit(obj)
                    except Exception:  # never let one task's trouble end the server
                        log("unexpected error:\n" + traceback.format_exc())
                now = time.monotonic()
                for conn in [c for c in self.conns.values() if c.child is None and c.deadline < now]:
                    log("dropped a connection that sent no whole request in time")
                    self._drop(conn)
                self.last_activity = now if (self.conns or self.children) else self.last_activity
        finally:
            self.stop_listening()
            for child in list(self.children.values()):
                child.kill()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. EMFILE: keep serving the others
                log(f"accept failed: {exc}")
                return
            uid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))[1]
            if uid != os.getuid() or len(self.conns) >= MAX_CONNECTIONS:
                log(f"refused a connection (uid {uid}, {len(self.conns)} open)")
                sock.close()
                continue
            sock.setblocking(False)
            conn = Connection(sock)
            self.conns[conn.key] = conn
            self.sel.register(sock, selectors.EVENT_READ, ("conn", conn))
            self.last_activity = time.monotonic()

    def _on_conn(self, conn: Connection) -> None:
        if conn.sock.fileno() < 0:
            return  # closed earlier in this round of events
        if conn.child is not None:
            # The stub sends nothing after its request: this is its end (killed task).
            try:
                data = conn.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if data:
                return  # ignore chatter; only EOF matters
            log(f"task {conn.child.pid}: its stub went away; killing its process group")
            conn.child.kill()
            self._drop(conn)
            return
        try:
            request = conn.read()
        except (BadRequest, EOFError) as exc:
            log(f"dropped a connection: {exc}")
            self._drop(conn)
            return
        if request is not None:
            self._fork(conn, request)

    def _drop(self, conn: Connection) -> None:
        conn.close_fds()
        self.conns.pop(conn.key, None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _fork(self, conn: Connection, request: dict) -> None:
        go_read, go_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        try:
            pid = os.fork()
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            os.close(go_read)
            os.close(go_write)
            log(f"fork failed: {exc}")
            self._drop(conn)  # the stub sees no pid and runs the task itself
            return
        if pid == 0:
            try:
                os.close(go_write)
                self._child(conn, request, go_read)  # never returns
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(go_read)
        conn.close_fds()
        try:
            os.setpgid(pid, pid)  # also done by the child: whichever runs first
        except OSError:
            pass
        pidfd = os.pidfd_open(pid)
        child = Child(pid, pidfd, conn)
        conn.child = child
        self.children[pidfd] = child
        self.sel.register(pidfd, selectors.EVENT_READ, ("child", child))
        self.served += 1
        if conn.reply({"pid": pid}):
            os.write(go_write, b"G")  # the stub knows the child exists: let it run
        else:
            child.kill()  # the stub is gone already: the child never runs the script
        os.close(go_write)

    def _on_exit(self, child: Child) -> None:
        _, status = os.waitpid(child.pid, 0)
        child.killed = True
        self.sel.unregister(child.pidfd)
        os.close(child.pidfd)
        del self.children[child.pidfd]
        conn = child.conn
        if conn.sock.fileno() >= 0:
            if os.WIFSIGNALED(status):
                conn.reply({"signal": os.WTERMSIG(status)})
            else:
                conn.reply({"exit_code": os.waitstatus_to_exitcode(status)})
            self._drop(conn)
        self.last_activity = time.monotonic()

    # the child -----------------------------------------------------------------------------

    def _child(self, conn: Connection, request: dict, go_read: int) -> None:
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as in any Python process
        os.setpgid(0, 0)  # the zygote kills the whole group when the task is killed
        _die_with_parent(self.pid)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        # Drop everything of the server's; then take over the task's stdio.
        fds = conn.fds
        conn.fds = []
        self.sel.close()
        if self.listener is not None:
            self.listener.close()
        for other in self.conns.values():  # other stubs' sockets and stdio are not this task's
            other.close_fds()
            other.sock.close()
        for other in self.children.values():
            os.close(other.pidfd)
        if os.read(go_read, 1) != b"G":  # the zygote died or gave up on this task
            os._exit(1)
        os.close(go_read)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        _fresh_stdio(request["env"])
        env = dict(request["env"])
        # The task's start is its stub's (tracing); the pid says whose (subprocesses inherit both).
        env[PROCESS_START_ENV] = repr(request["process_start"])
        env[PROCESS_START_ENV + "_PID"] = str(os.getpid())
        os.environ.clear()
        os.environ.update(env)
        argv = request["argv"]
        try:
            os.chdir(request["cwd"])
        except OSError as exc:
            print(f"hcollectives zygote: cannot enter the task's directory {request['cwd']}: {exc}", file=sys.stderr)
            _exit(1)
        sys.argv = list(argv)
        sys.path[:] = _task_sys_path(argv[0], request["cwd"], env, self.base_path)
        importlib.invalidate_caches()
        _reseed()
        _exit(_run_script(argv[0], env))


def _run_script(script: str, env: dict) -> int:
    """Run *script* as __main__, as `python SCRIPT` would; its exit status."""
    try:
        if env.get(TRACE_ENV):
            from hcollectives.launch import task_trace

            task_trace.install()
        runpy.run_path(script, run_name="__main__")
        return 0
    except SystemExit as exc:
        return _exit_code(exc.code)
    except KeyboardInterrupt as exc:
        print_script_exception(exc, script)
        _flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        return 130
    except BaseException as exc:
        print_script_exception(exc, script)
        return 1


def print_script_exception(exc: BaseException, script: str) -> None:
    """The traceback `python SCRIPT` would print: from the script's frame on, without ours and runpy's.

    (No frame of the script -- a syntax error -- prints the bare exception, as python does.)"""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def _exit_code(code: object) -> int:
    """The status `sys.exit(code)` gives a Python process (a non-int is printed, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return int(code) & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _flush() -> bool:
    ok = True
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            ok = False
    return ok


def _exit(code: int) -> None:
    """Finish like the interpreter does (threads, atexit, flush), then leave without the zygote's teardown."""
    try:
        threading._shutdown()  # wait for non-daemon threads, as at interpreter exit
    except Exception:
        pass
    try:
        atexit._run_exitfuncs()
    except Exception:
        pass
    try:
        sys.stdout.flush()
    except Exception:
        code = code or 120  # what CPython exits with when flushing stdout fails
    try:
        sys.stderr.flush()
    except Exception:
        pass
    os._exit(code)


_libc = None  # loaded while warming up


def _die_with_parent(parent: int) -> None:
    """SIGKILL this child if the zygote dies (no task outlives its fork server)."""
    try:
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != parent:  # it died before the prctl
        os._exit(1)


def _fresh_stdio(env: dict) -> None:
    """New sys.std* objects over the task's fds 0, 1, 2 (as at interpreter start-up)."""
    import io

    unbuffered = bool(env.get("PYTHONUNBUFFERED"))

    def make(fd: int, mode: str, like, line_buffering: bool):
        raw = io.FileIO(fd, mode, closefd=False)
        if mode == "rb":
            buffered = io.BufferedReader(raw)
        else:
            buffered = io.BufferedWriter(raw)
        return io.TextIOWrapper(buffered, encoding=like.encoding, errors=like.errors,
                                line_buffering=line_buffering, write_through=unbuffered and mode == "wb")

    sys.stdin = sys.__stdin__ = make(0, "rb", sys.__stdin__ or sys.stdin, False)
    sys.stdout = sys.__stdout__ = make(1, "wb", sys.__stdout__ or sys.stdout, os.isatty(1))
    sys.stderr = sys.__stderr__ = make(2, "wb", sys.__stderr__ or sys.stderr, True)


def _task_sys_path(script: str, cwd: str, env: dict, base: list[str]) -> list[str]:
    """sys.path as `python SCRIPT` in *cwd* with *env* would have it (the base from the zygote)."""
    path = [os.path.dirname(os.path.realpath(os.path.join(cwd, script)))]
    if env.get("PYTHONPATH"):
        for entry in env["PYTHONPATH"].split(os.pathsep):
            path.append(os.path.normpath(os.path.join(cwd, entry)) if entry else cwd)
    return path + [p for p in base if p not in path]


def _reseed() -> None:
    """A fresh process seeds its random generators from the OS; a forked one would repeat the zygote's.

    (`random` reseeds itself after fork; numpy's global RandomState does not.)"""
    mtrand = sys.modules.get("numpy.random.mtrand")
    if mtrand is not None:
        try:
            mtrand.seed()
        except Exception:
            pass


# -- start-up ----------------------------------------------------------------------------------

def warm(script: str, task_path: list[str], timeout: float = SCRIPT_IMPORT_TIMEOUT) -> None:
    """Import what a task will: numpy, mrjob, hcollectives' task side, and the script's own imports.

    The script is imported under a name that is not __main__ (its
    ``Job.run()`` does not fire). Modules loaded from *task_path* (a task's
    own directories, which vanish with it) are forgotten again."""
    started = time.monotonic()
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception as exc:
            log(f"could not import {name}: {exc!r}")
    global _libc
    try:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)  # for PR_SET_PDEATHSIG in each child
    except Exception as exc:
        log(f"no prctl: a task will outlive a killed zygote ({exc!r})")

    before = set(sys.modules)
    saved_path, saved_argv = list(sys.path), sys.argv
    script_dir = os.path.dirname(os.path.realpath(script))
    sys.path[:0] = [script_dir] + [p for p in task_path if p != script_dir]
    sys.argv = [script]

    def too_slow(signum, frame):
        raise _WarmTimeout(f"its top level ran for more than {timeout:g}s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        spec = importlib.util.spec_from_file_location(SCRIPT_MODULE, script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[SCRIPT_MODULE] = module
        spec.loader.exec_module(module)
    except BaseException as exc:  # SystemExit too: a script that does things at import
        log(f"could not import the script {script} (its own imports stay cold): {exc!r}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sys.path[:], sys.argv = saved_path, saved_argv
        local = [script_dir] + [os.path.realpath(p) for p in task_path] + list(task_path)
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if name == SCRIPT_MODULE or (name not in before and file and any(_inside(os.path.realpath(file), d) for d in local)):
                del sys.modules[name]
        importlib.invalidate_caches()
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else -1
    log(f"warm in {time.monotonic() - started:.2f}s: {len(sys.modules)} modules, "
        f"{threading.active_count()} Python thread(s), {threads} native thread(s)")
    if threading.active_count() != 1:
        raise Unsafe(f"{threading.active_count() - 1} Python thread(s) started while warming up "
                     f"({', '.join(t.name for t in threading.enumerate())}): forking is unsafe")


class _WarmTimeout(BaseException):
    pass


class Unsafe(Exception):
    """This zygote must not fork (its stubs run their tasks in-process)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hcollectives.launch.zygote", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", required=True, help="where to listen (its directory must exist, mode 0700)")
    parser.add_argument("--script", required=True, help="the job script whose imports to warm")
    parser.add_argument("--idle-timeout", type=float, default=60.0, help="exit after this long without tasks")
    parser.add_argument("--warm-timeout", type=float, default=SCRIPT_IMPORT_TIMEOUT,
                        help="stop importing the script after this long (its top level does work)")
    parser.add_argument("--task-path", action="append", default=[],
                        help="a directory of the starting task's own (import path entries not to keep)")
    args = parser.parse_args(argv)
    if sys.path and sys.path[0] in (os.getcwd(), ""):
        del sys.path[0]  # -m put our cwd first; tasks get their own
    # fd 1 is the starting stub's pipe, for READY only: nothing the warm-up prints goes there.
    ready = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    try:
        warm(args.script, args.task_path, args.warm_timeout)
    except Unsafe as exc:
        # Mark it, so later stubs run in-process at once instead of trying again.
        log(f"not serving: {exc}")
        with open(args.socket.removesuffix(".sock") + ".disabled", "w") as f:
            f.write(f"{exc}\n")
        return 3
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # not the stubs' terminal's Ctrl-C
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    zygote = Zygote(os.path.abspath(args.socket), args.script, args.idle_timeout)
    zygote.listen()
    log(f"listening on {args.socket} for {args.script}")
    os.write(ready, b"READY %d\n" % os.getpid())  # tell the starting stub, then let go of its pipe
    os.close(ready)
    zygote.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
