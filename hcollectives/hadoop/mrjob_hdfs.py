"""HDFS for mrjob's Hadoop runner without a JVM per call.

mrjob's `HadoopFilesystem` runs ``hadoop fs ...`` for every operation: before
each job it checks the inputs (``-ls``), creates its temp dir (``-mkdir``),
uploads the job's files (``-put``), and removes the dir afterwards (``-rm``).
Each call starts a Java client -- 1-3 s here -- and an iterative run submits a
job per iteration, so these calls sit on every iteration's critical path.

`NativeHDFSFilesystem` does the same operations through hdfs-native (the
library the store already uses) inside the driver process, each bounded by a
`Store` timeout. The runner tries it first for ``hdfs://`` paths and keeps
mrjob's own `HadoopFilesystem` behind it: if the NameNode cannot be reached
natively (e.g. a Kerberos setup hdfs-native cannot do), the native filesystem
is disabled for the run and ``hadoop fs`` takes over. ``hadoop version`` is
asked once per process instead of once per job. ``HCOLLECTIVES_NATIVE_HDFS=0``
turns all of this off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import posixpath
import subprocess
from collections.abc import Callable, Iterator
from contextlib import suppress
from urllib.parse import urlparse

from mrjob.cat import decompress
from mrjob.fs.base import Filesystem
from mrjob.fs.hadoop import HadoopFilesystem

from ..errors import ConfigurationError, StoreError
from ..store import Store
from . import hadoop_conf

# Bound on one call; uploads get extra time for their size at this rate.
CALL_TIMEOUT = 60.0
MIN_UPLOAD_RATE = 10 * 1024 * 1024  # bytes per second
PROBE_TIMEOUT = 10.0
_CHUNK = 1 << 20
_GLOB_CHARS = frozenset("*?[")


class NativeHDFSUnavailable(OSError):
    """The NameNode could not be reached natively; mrjob's ``hadoop fs`` should take over."""


class NativeHDFSFilesystem(Filesystem):
    """mrjob's Filesystem interface for ``hdfs://`` URIs, through a `Store` per NameNode.

    *connect* turns a URI's authority (``host:port``, or the default file
    system's for ``hdfs:///path``) into a Store whose root is that HDFS's
    ``/``; tests pass Stores over local directories instead.
    """

    def __init__(self, default_authority: str | None, connect: Callable[[str], Store] | None = None) -> None:
        self._default = default_authority
        self._connect = connect or _connect_hdfs
        self._stores: dict[str, Store] = {}

    # -- which paths, and where they live -------------------------------------------

    def can_handle_path(self, path: str) -> bool:
        parsed = urlparse(path)
        return parsed.scheme == "hdfs" and bool(parsed.netloc or self._default)

    def _resolve(self, uri: str) -> tuple[Store, str, str]:
        """(store, path inside it, the URI prefix to give back listed paths)."""
        parsed = urlparse(uri)
        if parsed.scheme != "hdfs":
            raise ConfigurationError(f"not an hdfs:// URI: {uri!r}")
        authority = parsed.netloc or self._default
        if not authority:
            raise ConfigurationError(f"{uri!r} names no NameNode and no fs.defaultFS is configured")
        store = self._stores.get(authority)
        if store is None:
            try:
                store = self._connect(authority)
                # hdfs-native connects lazily: ask the NameNode something now, so an
                # unreachable or unsupported (e.g. Kerberos) setup hands over to
                # ``hadoop fs`` instead of failing the operation.
                store.call("probe", "/", lambda: store.fs.exists(store.root or "/"), timeout=PROBE_TIMEOUT)
            except (StoreError, ConfigurationError) as exc:
                raise NativeHDFSUnavailable(f"hdfs://{authority}: {exc}") from exc
            self._stores[authority] = store
        path = posixpath.normpath(parsed.path or "/")
        return store, store.root + ("" if path == "/" else path), f"hdfs://{parsed.netloc}"

    def _matches(self, uri: str) -> tuple[Store, list[str], str]:
        """Paths (inside the store) that *uri* names; globs expanded as ``hadoop fs`` does."""
        store, full, prefix = self._resolve(uri)
        if not _GLOB_CHARS.intersection(full):
            found = store.call("exists", uri, lambda: store.fs.exists(full))
            return store, [full] if found else [], prefix
        return store, sorted(store.call("glob", uri, lambda: store.fs.glob(full))), prefix

    @staticmethod
    def _uri(store: Store, prefix: str, full: str) -> str:
        return prefix + (full[len(store.root):] or "/")

    # -- mrjob's Filesystem interface --------------------------------------------------------

    # ls and cat return generators; they reach the NameNode before returning one, so
    # an unreachable NameNode shows while mrjob's CompositeFilesystem can still fall back.

    def ls(self, path_glob: str) -> Iterator[str]:
        """Every file under the matches (recursive), directories left out, like ``-ls -R``."""
        store, matches, prefix = self._matches(path_glob)

        def files() -> Iterator[str]:
            for full in matches:
                found = store.call("ls", path_glob, lambda full=full: store.fs.find(full, withdirs=False))
                for name in sorted(found):
                    yield self._uri(store, prefix, name)

        return files()

    def cat(self, path_glob: str) -> Iterator[bytes]:
        self._resolve(path_glob)
        return super().cat(path_glob)

    def _cat_file(self, path: str) -> Iterator[bytes]:
        yield from decompress(self._read_chunks(path), path)

    def _read_chunks(self, path: str) -> Iterator[bytes]:
        store, full, _ = self._resolve(path)
        handle = store.call("open", path, lambda: store.fs.open(full, "rb"))
        try:
            while chunk := store.call("read", path, lambda: handle.read(_CHUNK)):
                yield chunk
        finally:
            with suppress(Exception):  # closing a read handle; nothing to lose
                handle.close()

    def du(self, path_glob: str) -> int:
        store, matches, _ = self._matches(path_glob)
        return sum(store.call("du", path_glob, lambda full=full: store.fs.du(full, total=True))
                   for full in matches)

    def exists(self, path_glob: str) -> bool:
        return bool(self._matches(path_glob)[1])

    def mkdir(self, path: str) -> None:
        store, full, _ = self._resolve(path)
        store.call("mkdir", path, lambda: store.fs.makedirs(full, exist_ok=True))

    def put(self, src: str, path: str) -> None:
        if path.endswith("/"):
            raise ValueError("put() destination may not be a directory")  # as mrjob's own filesystems
        store, full, _ = self._resolve(path)
        budget = CALL_TIMEOUT + os.path.getsize(src) / MIN_UPLOAD_RATE
        _make_parent(store, full, path)
        mode = private_mode(src)
        if mode is None:
            store.call("put", path, lambda: store.fs.put_file(src, full), timeout=budget)
        else:
            store.call("put", path, lambda: _put_private(store.fs, src, full, mode), timeout=budget)

    def rm(self, path_glob: str) -> None:
        store, matches, _ = self._matches(path_glob)
        for full in matches:
            store.call("rm", path_glob, lambda full=full: store.fs.rm(full, recursive=True))

    def touchz(self, path: str) -> None:
        store, full, _ = self._resolve(path)
        if store.call("exists", path, lambda: store.fs.exists(full)):
            if store.call("size", path, lambda: store.fs.size(full)):
                raise OSError(f"Non-empty file {path!r} already exists!")
            return
        _make_parent(store, full, path)
        store.call("touchz", path, lambda: store.fs.touch(full))

    def md5sum(self, path: str) -> str:
        digest = hashlib.md5()
        for chunk in self._read_chunks(path):
            digest.update(chunk)
        return digest.hexdigest()


def private_mode(src: str) -> int | None:
    """The permission bits of a local file only its owner may read (the session
    secret, a 0600 file), which its HDFS copy must keep; None for any other file."""
    mode = os.stat(src).st_mode & 0o777
    return mode if mode & 0o077 == 0 else None


def _put_private(fs, src: str, full: str, mode: int) -> None:
    """Copy *src* to HDFS created with *mode* (hdfs-native), never readable by others
    even for a moment; on a local store (tests) the same through chmod."""
    with open(src, "rb") as f:
        data = f.read()
    client = getattr(fs, "client", None)
    if client is None:
        fs.pipe_file(full, data)
        os.chmod(full, mode)
        return
    from hdfs_native import WriteOptions

    options = WriteOptions()
    options.overwrite, options.permission = True, mode
    with client.create(full, write_options=options) as out:
        out.write(data)


def _make_parent(store: Store, full: str, path: str) -> None:
    """HDFS creates a new file's missing parent directories (``hadoop fs -put``, ``-touchz``)."""
    parent = posixpath.dirname(full)
    store.call("mkdir", path, lambda: store.fs.makedirs(parent, exist_ok=True))


def _connect_hdfs(authority: str) -> Store:
    return Store(f"hdfs://{authority}/", timeout=CALL_TIMEOUT)


def _disable_on(exc: Exception) -> bool:
    """A failure that means "use ``hadoop fs`` instead" rather than "this operation failed"."""
    return isinstance(exc, NativeHDFSUnavailable)


def native_hdfs_enabled(env: dict[str, str] | os._Environ = os.environ) -> bool:
    if env.get("HCOLLECTIVES_NATIVE_HDFS", "") == "0":
        return False
    return importlib.util.find_spec("hdfs_native") is not None  # the optional 'hdfs' extra


def default_authority(env: dict[str, str] | os._Environ = os.environ) -> str | None:
    """host:port of fs.defaultFS when it is an hdfs:// file system (what ``hdfs:///path`` means)."""
    fs = hadoop_conf.default_fs(env)
    if not fs:
        return None
    parsed = urlparse(fs)
    return parsed.netloc or None if parsed.scheme == "hdfs" else None


class CachedVersionHadoopFilesystem(HadoopFilesystem):
    """mrjob's ``hadoop fs`` client, asking ``hadoop version`` once per process, not per job."""

    _versions: dict[tuple[str, ...], str] = {}

    def put(self, src: str, path: str) -> None:
        if private_mode(src) is None:
            return super().put(src, path)
        if path.endswith("/"):
            raise ValueError("put() destination may not be a directory")
        # The client's umask decides a new file's permissions: 077 creates it 0600.
        self.invoke_hadoop(["fs", "-D", "fs.permissions.umask-mode=077", "-put", src, path])

    def get_hadoop_version(self) -> str:
        key = tuple(self.get_hadoop_bin())
        if key not in self._versions:
            self._versions[key] = super().get_hadoop_version()
        return self._versions[key]


def add_filesystems(composite, hadoop_bin: list[str] | None, env=os.environ) -> None:
    """Fill an empty mrjob CompositeFilesystem the way HadoopJobRunner.fs does, with
    the native HDFS client first (when enabled) and ``hadoop version`` cached."""
    from mrjob.fs.local import LocalFilesystem

    if native_hdfs_enabled(env):
        composite.add_fs("hdfs_native", NativeHDFSFilesystem(default_authority(env)), disable_if=_disable_on)
    composite.add_fs("hadoop", CachedVersionHadoopFilesystem(hadoop_bin))
    composite.add_fs("local", LocalFilesystem())


def count_input_files(paths: list[str], hadoop_bin: list[str] | None, env=os.environ) -> int:
    """How many files the job's input *paths* name, globs and directories expanded as mrjob
    does (one map task each at least; a file larger than a block makes more). A path that
    cannot be listed counts as one: this is a lower bound for a check, not the job's input."""
    from mrjob.fs.composite import CompositeFilesystem

    fs = CompositeFilesystem()
    add_filesystems(fs, hadoop_bin, env)
    total = 0
    for path in paths:
        try:
            total += max(1, sum(1 for _ in fs.ls(path)))
        except (OSError, ValueError, subprocess.SubprocessError, StoreError, ConfigurationError) as exc:
            logging.getLogger(__name__).info("counting input files: %s: %s", path, exc)
            total += 1
    return total
