"""The durable checkpoint store (layer "storage"), built on fsspec.

A `Store` is a directory tree under one fsspec URL (``file:///abs/path``, a
plain local path, ``memory://name`` for tests, ``hdfs://host:port/path``).
Callers name files by '/'-separated paths relative to that root. Every write
is atomic (temp file + rename), every call is bounded by the store's timeout,
and typed helpers store arrays as .npy/.npz with pickling disabled, so reading
a checkpoint can never run code.

Layout under the root (built by the ``*_path`` helpers, which validate names)::

    run.json                                      run state (driver)
    loop/{iteration:06d}.npy                      loop data that is the INPUT of `iteration`;
                                                  kept across sessions so --resume continues
    sessions/{session}/iter-{iteration:06d}/
        tasks/{task}/{attempt}.npz                one task attempt's contribution (a Block)
        result.npz                                the reduced result (a Block)
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import posixpath
import queue
import re
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from contextlib import suppress
from typing import Any, TypeVar
from urllib.parse import urlparse

import fsspec
import numpy as np

from .algorithms.block import OFFSET_DTYPE, VALUE_DTYPE, Block, Key
from .errors import CollectiveTimeout, ConfigurationError, HCollectivesError, StoreError

T = TypeVar("T")
_Job = tuple[Future[Any], Callable[[], Any]]

_COMPONENT = re.compile(r"[A-Za-z0-9_.-]+")
_TEMP_NAME = re.compile(r"\..+\.tmp-[0-9a-f]{32}")
_LOOP_NAME = re.compile(r"([0-9]+)\.npy")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# np.savez takes these as its own parameters, so they cannot name members.
_RESERVED_MEMBERS = frozenset({"file", "allow_pickle"})


class StoreMissing(StoreError):
    """A read found no file: "not written yet", as opposed to "store broken"."""


class StoreTimeout(StoreError):
    """A filesystem call ran past the store's timeout."""


class _DaemonPool:
    """A fixed pool of daemon threads that run callables and hand out Futures.

    Every filesystem call runs here so we can stop *waiting* for it after the
    store's timeout: hdfs-native retries forever against a dead NameNode, so our
    own deadline is the only bound. A stuck call cannot be killed, only
    abandoned; `ThreadPoolExecutor` joins its (non-daemon) workers at exit,
    so one abandoned call would hang interpreter shutdown forever. Daemon
    threads don't. The pool is fixed-size so hung calls cannot pile up threads;
    once all workers are stuck, later calls queue and time out too.
    """

    def __init__(self, max_workers: int) -> None:
        self._max_workers = max_workers
        self._reset()

    def _reset(self) -> None:
        # Also run in a forked child: the parent's worker threads do not exist there.
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._started = 0

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((future, fn))
        with self._lock:
            if self._started < self._max_workers:
                self._started += 1
                threading.Thread(target=self._work, args=(self._queue,), daemon=True,
                                 name=f"hcollectives-store-{self._started}").start()
        return future

    @staticmethod
    def _work(jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            future, fn = jobs.get()
            if not future.set_running_or_notify_cancel():
                continue  # the caller gave up (timed out) before we started it
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting caller
                future.set_exception(exc)


POOL_THREADS = 4  # filesystem calls of one process at once
_POOL = _DaemonPool(max_workers=POOL_THREADS)
os.register_at_fork(after_in_child=_POOL._reset)


class Store:
    """Atomic, timeout-bounded file storage under one fsspec URL."""

    def __init__(self, url: str, *, timeout: float = 30.0) -> None:
        if not isinstance(url, str) or not url.strip():
            raise ConfigurationError(f"store url must be a non-empty string, got {url!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not math.isfinite(timeout) or timeout <= 0:
            raise ConfigurationError(f"store timeout must be a finite number > 0, got {timeout!r}")
        self.url = url.strip()
        self.timeout = float(timeout)
        if not _URL_SCHEME.match(self.url):  # a plain local path
            self.url = "file://" + os.path.abspath(self.url)
        protocol = self.url.split("://", 1)[0].lower()
        if protocol == "file" and not self.url[len("file://"):].startswith("/"):
            raise ConfigurationError(f"store url {self.url!r}: file:// needs an absolute path")
        self._fs, root = self._call("connect", "", lambda: _open_fs(self.url, protocol))
        self.root = root.rstrip("/")

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self._fs

    def __repr__(self) -> str:
        return f"Store({self.url!r}, timeout={self.timeout})"

    # -- plumbing -----------------------------------------------------------

    def call(self, op: str, relpath: str, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        """Run *fn* (calls on `fs`) bounded by the store's timeout (or *timeout*),
        its errors raised as StoreError naming *op* and *relpath*: for callers
        that need filesystem operations the typed helpers do not offer."""
        return self._call(op, relpath, fn, timeout=timeout)

    def _call(self, op: str, relpath: str, fn: Callable[[], T], *, missing: bool = False,
              timeout: float | None = None) -> T:
        """Run *fn* on the pool, wait at most `timeout`, translate its errors."""
        timeout = self.timeout if timeout is None else timeout
        future = _POOL.submit(fn)
        try:
            return future.result(timeout=timeout)
        except TimeoutError as exc:
            if future.done():  # fn itself raised TimeoutError: an I/O error, not ours
                raise StoreError(f"store {self.url}: {op} {relpath} failed: {exc}") from exc
            future.cancel()  # a queued call must not run (e.g. write) after we gave up
            raise StoreTimeout(
                f"store {self.url}: {op} {relpath} timed out after {timeout:g}s") from None
        except HCollectivesError:
            raise
        except FileNotFoundError as exc:
            cls = StoreMissing if missing else StoreError
            raise cls(f"store {self.url}: {op} {relpath}: no such file") from exc
        # Backends raise their own exception types (hdfs-native, s3fs, ...), so
        # anything from the filesystem becomes a StoreError; `from` keeps the cause.
        except Exception as exc:
            raise StoreError(f"store {self.url}: {op} {relpath} failed: {exc}") from exc

    def _full(self, relpath: str, *, allow_root: bool = False) -> str:
        if not isinstance(relpath, str):
            raise ConfigurationError(f"store path must be a str, got {relpath!r}")
        if relpath == "" and allow_root:
            return self.root or "/"
        if relpath.startswith(("/", "\\")) or _URL_SCHEME.match(relpath):
            raise ConfigurationError(f"store path {relpath!r} must be relative to the store root")
        parts = relpath.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise ConfigurationError(f"store path {relpath!r} has an empty, '.' or '..' component")
        return f"{self.root}/{relpath}"

    # -- bytes --------------------------------------------------------------

    def write_bytes(self, relpath: str, data: bytes) -> None:
        """Write *data* atomically: readers see the old file, or all of the new one."""
        full = self._full(relpath)
        parent, name = posixpath.split(full)
        # Same directory as the target so the rename never crosses filesystems.
        tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex}"
        fs = self._fs
        self._call("mkdir", posixpath.dirname(relpath), lambda: fs.makedirs(parent, exist_ok=True))

        def write() -> None:
            with fs.open(tmp, "wb") as f:
                f.write(data)

        try:
            self._call("write", relpath, write)
            # overwrite=True: hdfs-native's rename refuses an existing target without it.
            self._call("rename", relpath, lambda: fs.mv(tmp, full, overwrite=True))
        except StoreTimeout:
            # The fs is likely hung: clean up in the background rather than wait again.
            _POOL.submit(lambda: fs.rm(tmp))
            raise
        except StoreError:
            with suppress(StoreError):  # best effort (may be gone); listdir hides temps anyway
                self._call("cleanup", relpath, lambda: fs.rm(tmp))
            raise

    def read_bytes(self, relpath: str) -> bytes:
        """The file's bytes; StoreMissing if it does not exist (yet)."""
        full = self._full(relpath)
        return self._call("read", relpath, lambda: self._fs.cat_file(full), missing=True)

    def exists(self, relpath: str) -> bool:
        full = self._full(relpath, allow_root=True)
        return bool(self._call("exists", relpath, lambda: self._fs.exists(full)))

    def listdir(self, relpath: str = "") -> list[str]:
        """Sorted names in a directory, temp files hidden; a missing directory is empty."""
        full = self._full(relpath, allow_root=True)

        def ls() -> list[str]:
            try:
                entries = self._fs.ls(full, detail=False)
            except FileNotFoundError:
                return []
            return [posixpath.basename(str(e).rstrip("/")) for e in entries]

        names = self._call("listdir", relpath, ls)
        return sorted(n for n in names if n and not _TEMP_NAME.fullmatch(n))

    def remove_tree(self, relpath: str) -> None:
        """Remove a file or directory tree; a missing one is fine."""
        full = self._full(relpath)  # no allow_root: never wipe the whole store by accident

        def rm() -> None:
            with suppress(FileNotFoundError):
                self._fs.rm(full, recursive=True)

        self._call("remove", relpath, rm)

    def wait_for(self, relpath: str, timeout: float, *, poll: float = 0.05) -> None:
        """Wait until *relpath* exists, or raise CollectiveTimeout.

        This is the fallback path reading a remote FS, which cannot notify us,
        so polling is unavoidable; exponential backoff capped at 1 s keeps the
        load on the NameNode low during long waits.
        """
        if not (timeout >= 0 and poll > 0):
            raise ConfigurationError(f"wait_for needs timeout >= 0 and poll > 0, got {timeout}, {poll}")
        deadline = time.monotonic() + timeout
        delay = poll
        while not self.exists(relpath):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CollectiveTimeout(f"store {self.url}: {relpath} did not appear within {timeout}s")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 1.0)

    # -- typed helpers (never pickle) -------------------------------------------

    def save_block(self, relpath: str, block: Block) -> None:
        """Store *block* as an .npz: keys_int (int64), keys_str ('<U'), offsets, values."""
        ints = [k for k in block.keys if isinstance(k, int)]
        strs = [k for k in block.keys if isinstance(k, str)]
        # Loading rebuilds keys ints-first, which is Block's own canonical order.
        if any(s.endswith("\0") for s in strs):  # numpy unicode arrays drop trailing NULs
            raise ConfigurationError(f"{relpath}: a str key ends with NUL; it cannot be stored")
        try:
            keys_int = np.array(ints, dtype=np.int64)
        except OverflowError as exc:
            raise ConfigurationError(f"{relpath}: an int key does not fit in int64") from exc
        keys_str = np.array(strs, dtype=str) if strs else np.zeros(0, dtype="<U1")
        self.save_arrays(relpath, {"keys_int": keys_int, "keys_str": keys_str,
                                   "offsets": block.offsets, "values": block.values})

    def load_block(self, relpath: str) -> Block:
        """Load a `save_block` file; anything malformed is a StoreError naming the path."""
        arrays = self.load_arrays(relpath)
        try:
            keys_int, keys_str = arrays["keys_int"], arrays["keys_str"]
            offsets, values = arrays["offsets"], arrays["values"]
        except KeyError as exc:
            raise StoreError(f"store {self.url}: {relpath}: block file lacks member {exc}") from exc
        for name, arr, kind in (("keys_int", keys_int, "i"), ("keys_str", keys_str, "U"),
                                ("offsets", offsets, "i"), ("values", values, "f")):
            if arr.ndim != 1 or arr.dtype.kind != kind or (kind != "U" and arr.dtype.itemsize != 8):
                raise StoreError(f"store {self.url}: {relpath}: bad {name} {arr.dtype} {arr.shape}")
        keys: tuple[Key, ...] = (*(int(k) for k in keys_int), *(str(k) for k in keys_str))
        try:  # astype only fixes byte order; kind and size were checked above
            return Block(keys, offsets.astype(OFFSET_DTYPE), values.astype(VALUE_DTYPE))
        except (ValueError, HCollectivesError) as exc:
            raise StoreError(f"store {self.url}: {relpath}: invalid block: {exc}") from exc

    def save_array(self, relpath: str, arr: np.ndarray) -> None:
        arr = np.asarray(arr)
        _check_no_objects(relpath, arr)
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        self.write_bytes(relpath, buf.getvalue())

    def load_array(self, relpath: str) -> np.ndarray:
        return self._np_load(relpath, np.ndarray, ".npy")

    def save_arrays(self, relpath: str, mapping: Mapping[str, np.ndarray]) -> None:
        arrays = {}
        for name, arr in mapping.items():
            if not isinstance(name, str) or not name or name in _RESERVED_MEMBERS:
                raise ConfigurationError(f"{relpath}: invalid array name {name!r}")
            arrays[name] = np.asarray(arr)
            _check_no_objects(f"{relpath}[{name}]", arrays[name])
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # object arrays were refused above, so nothing is pickled
        self.write_bytes(relpath, buf.getvalue())

    def load_arrays(self, relpath: str) -> dict[str, np.ndarray]:
        loaded = self._np_load(relpath, np.lib.npyio.NpzFile, ".npz")
        try:
            with loaded:
                return {name: loaded[name] for name in loaded.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise StoreError(f"store {self.url}: {relpath}: malformed .npz: {exc}") from exc

    def save_json(self, relpath: str, obj: Any) -> None:
        try:
            text = json.dumps(obj, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{relpath}: not JSON-serialisable: {exc}") from exc
        self.write_bytes(relpath, text.encode("utf-8"))

    def load_json(self, relpath: str) -> Any:
        data = self.read_bytes(relpath)
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise StoreError(f"store {self.url}: {relpath}: malformed JSON: {exc}") from exc

    def _np_load(self, relpath: str, expected: type, kind: str) -> Any:
        data = self.read_bytes(relpath)
        try:
            loaded = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise StoreError(f"store {self.url}: {relpath}: unreadable array file: {exc}") from exc
        if not isinstance(loaded, expected):
            raise StoreError(f"store {self.url}: {relpath}: not a {kind} file")
        return loaded


def _open_fs(url: str, protocol: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and root path for *url* (runs on the pool: may do I/O)."""
    if protocol in ("hdfs", "viewfs"):
        # Imported here, not at module import: hdfs-native is an optional extra.
        try:
            from hdfs_native.fsspec import HdfsFileSystem
        except ImportError as exc:
            raise ConfigurationError(
                f"store url {url!r} needs hdfs-native: pip install 'hcollectives[hdfs]'"
                " (or pip install hdfs-native)") from exc
        parsed = urlparse(url)
        # Not in fsspec's instance cache: fsspec clears that cache in every forked
        # child (os.register_at_fork), and a child that drops the last reference to
        # a client frees its tokio runtime, which waits forever for runtime threads
        # that do not exist in the child. mrjob forks (pty.fork for `hadoop jar`, its
        # local runner's pool) from processes that use stores; a fork then hung.
        fs = HdfsFileSystem(host=parsed.hostname, port=parsed.port, skip_instance_cache=True)
        return fs, parsed.path or "/"
    try:
        return fsspec.core.url_to_fs(url)
    # ImportError: fsspec's message names the package to install; ValueError: unknown protocol.
    except (ImportError, ValueError) as exc:
        raise ConfigurationError(f"store url {url!r}: {exc}") from exc


def _check_no_objects(what: str, arr: np.ndarray) -> None:
    if arr.dtype.hasobject:
        raise ConfigurationError(f"{what}: object arrays cannot be stored (they would need pickle)")


# -- path layout -----------------------------------------------------------------


def _component(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _COMPONENT.fullmatch(value) or value in (".", ".."):
        raise ConfigurationError(f"{kind} {value!r} must match [A-Za-z0-9_.-]+ (and not be . or ..)")
    return value


def _iteration(iteration: int) -> int:
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise ConfigurationError(f"iteration must be an int >= 0, got {iteration!r}")
    return iteration


def contribution_path(session: str, iteration: int, task: str, attempt: str) -> str:
    return (f"sessions/{_component('session', session)}/iter-{_iteration(iteration):06d}"
            f"/tasks/{_component('task', task)}/{_component('attempt', attempt)}.npz")


def result_path(session: str, iteration: int) -> str:
    return f"sessions/{_component('session', session)}/iter-{_iteration(iteration):06d}/result.npz"


def loop_data_path(iteration: int) -> str:
    """The loop data that is the INPUT of *iteration* (kept across sessions for --resume)."""
    return f"loop/{_iteration(iteration):06d}.npy"


def run_state_path() -> str:
    return "run.json"


def latest_loop_iteration(store: Store) -> int | None:
    """The highest iteration with a loop data file, or None if there is none."""
    found = [int(m.group(1)) for n in store.listdir("loop") if (m := _LOOP_NAME.fullmatch(n))]
    return max(found, default=None)


def default_checkpoint_uri(tmp_dir: str) -> str:
    return f"file://{os.path.abspath(tmp_dir)}/checkpoints"


_ITER_DIR = re.compile(r"iter-([0-9]+)")


def prune(store: Store, session: str, *, keep_loop_from: int, keep_iterations_from: int) -> None:
    """Delete loop data of iterations < *keep_loop_from* and the session's
    per-iteration pieces and results of iterations < *keep_iterations_from*:
    a long run's store then holds one resumable iteration, not its history.

    Other sessions' directories (an earlier, interrupted run of a kept
    ``--checkpoint-uri``) are removed too: nothing reads them once this
    session has finished an iteration of its own.
    """
    for name in store.listdir("loop"):
        found = _LOOP_NAME.fullmatch(name)
        if found and int(found.group(1)) < keep_loop_from:
            _remove_obsolete(store, f"loop/{name}")
    for other in store.listdir("sessions"):
        if other != session and _COMPONENT.fullmatch(other):
            _remove_obsolete(store, f"sessions/{other}")
    base = f"sessions/{_component('session', session)}"
    for name in store.listdir(base):
        found = _ITER_DIR.fullmatch(name)
        if found and int(found.group(1)) < keep_iterations_from:
            _remove_obsolete(store, f"{base}/{name}")


def _remove_obsolete(store: Store, relpath: str) -> None:
    """Remove what no reader needs any more; a failure is left for the next prune.

    A daemon's background copy of a piece (services/node_session.py) can still be
    landing in an old iteration's directory while it is removed ("Directory not
    empty"): cleaning up must never fail the run."""
    try:
        store.remove_tree(relpath)
    except StoreError as exc:
        logging.getLogger(__name__).info("store %s: %s left for the next prune: %s", store.url, relpath, exc)
