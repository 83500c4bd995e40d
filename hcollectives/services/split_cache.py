"""Loop-invariant input, parsed once per machine and reused by later iterations.

An iterative job reads the same input splits in every iteration; parsing text
into numbers is often most of a map task's own time (Twister4Azure's point).
The first task to parse a split on a machine writes the parsed rows as one
``.npy`` file; later tasks for the same split memory-map it (shared, through
the page cache, by every task on the machine) instead of parsing again.

An entry's file name is a digest of (split identity, parser identity, input
content digest), so it is content-addressed: a changed input file, or a
different parser, simply names another entry, and a reader never sees a
half-written one (written to a temporary name, then renamed). Tasks still
read their input (Hadoop streams the split to the task either way) but only
hash it, which costs a fraction of parsing it.

The directory lives under the session's run directory on each machine and is
removed with it when the session ends.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

DIRECTORY_NAME = "split-cache"
_READ_CHUNK = 1 << 20


def read_all(stream) -> tuple[bytes, str]:
    """All of *stream* (binary) and its content digest (BLAKE2b-128 of the bytes and their length)."""
    digest = hashlib.blake2b(digest_size=16)
    chunks = []
    size = 0
    while chunk := stream.read(_READ_CHUNK):
        digest.update(chunk)
        chunks.append(chunk)
        size += len(chunk)
    digest.update(size.to_bytes(8, "little"))
    return b"".join(chunks), digest.hexdigest()


class SplitCache:
    """Parsed splits of one session on one machine, in *directory*."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def _path(self, split: str, parser: str, content: str) -> Path:
        name = hashlib.sha256("\0".join((split, parser, content)).encode()).hexdigest()[:40]
        return self.directory / f"{name}.npy"

    def load(self, split: str, parser: str, content: str) -> np.ndarray | None:
        """The cached rows (read-only, memory-mapped), or None if this split was not parsed here."""
        path = self._path(split, parser, content)
        try:
            rows = np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable entry (disk trouble): parse again, the caller overwrites it
        return rows

    def save(self, split: str, parser: str, content: str, rows: np.ndarray) -> None:
        """Publish *rows* atomically; concurrent writers of the same entry write equal bytes."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(split, parser, content)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(rows), allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise


def remove_split_cache(rundir: str | os.PathLike) -> None:
    """Remove a session's cache on this machine (when the session is over); missing is fine."""
    import shutil

    shutil.rmtree(Path(rundir) / DIRECTORY_NAME, ignore_errors=True)
