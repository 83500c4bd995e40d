"""Loop-invariant input: a split's parsed rows, parsed once per machine.

For jobs that define ``parse_input`` (an MRCollectiveJob, typed here as the MRJob it is): each machine parses a split once and
later iterations' tasks memory-map the parsed rows (read-only) from the
machine's split cache (services/split_cache.py) instead of parsing again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
import numpy as np
from mrjob.job import MRJob

from ..errors import BadInputRecord
from ..services.task import TaskEnv


def parsed_input(job: MRJob, env: TaskEnv, read: Callable) -> np.ndarray:
    """This task's input split as rows of numbers (one per kept line), from the cache if it can.

    The split is identified by Hadoop's (file, start, length); its content
    digest is checked too, so a changed file is parsed again.
    """
    from ..launch import task_trace

    started = time.time()
    rows = _load_or_parse(job, env, read)
    task_trace.note("parse", [started, time.time()])
    return rows


def _load_or_parse(job: MRJob, env: TaskEnv, read: Callable) -> np.ndarray:
    from ..services.split_cache import DIRECTORY_NAME, SplitCache, read_all

    if not env.input_cache or env.input_split == "stdin" or job.options.args:
        return _parse_lines(job, env, job._read_input(), read)
    data, content = read_all(job.stdin)
    cache = SplitCache(os.path.join(env.rundir, DIRECTORY_NAME))
    parser = _parser_identity(job)
    rows = cache.load(env.input_split, parser, content)
    if rows is None:
        lines = data.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()  # the newline that ends the last line
        rows = _parse_lines(job, env, lines, read)
        cache.save(env.input_split, parser, content, rows)
    return rows


def _parse_lines(job: MRJob, env: TaskEnv, lines: Iterable[bytes], read: Callable) -> np.ndarray:
    rows: list[np.ndarray] = []
    # Rows of every length seen: the count, and the first record that had it. A
    # length clash is judged against the split's majority once all rows are in:
    # judged against the first record, one short first row blamed every other.
    lengths: dict[int, list] = {}
    for number, line in enumerate(lines, 1):
        _, value = read(line.rstrip(b"\r\n"))
        try:
            parsed = job.parse_input(value)
            if parsed is None:
                continue
            row = np.asarray(parsed, dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 -- the user's parser failed on this record: say where
            raise BadInputRecord(f"{env.describe()}: parse_input failed on input record {number} "
                                 f"({value!r:.120}): {type(exc).__name__}: {exc}") from None
        if row.ndim != 1:
            raise BadInputRecord(f"{env.describe()}: parse_input returned shape {row.shape} for input record "
                                 f"{number} ({value!r:.120}); expected one row of numbers")
        seen = lengths.setdefault(len(row), [0, number, f"{value!r:.120}"])
        seen[0] += 1
        rows.append(row)
    if len(lengths) > 1:
        majority = max(lengths, key=lambda n: (lengths[n][0], -lengths[n][1]))
        odd = min((n for n in lengths if n != majority), key=lambda n: lengths[n][1])
        _, number, shown = lengths[odd]
        raise BadInputRecord(f"{env.describe()}: parse_input returned {odd} numbers for input record {number} "
                             f"({shown}); expected {majority} numbers like {lengths[majority][0]} of the "
                             f"split's {len(rows)} records")
    out = np.stack(rows) if rows else np.empty((0, 0))
    out.setflags(write=False)  # as read-only as the cached copy later iterations get
    return out


def _parser_identity(job: MRJob) -> str:
    """Names the parsing code, so a changed parser never reads another's cache entries."""
    import hashlib
    import inspect

    cls = type(job)
    try:
        source = inspect.getsource(cls.parse_input)
    except (OSError, TypeError):
        source = ""
    return f"{cls.__module__}.{cls.__qualname__}:{hashlib.sha256(source.encode()).hexdigest()[:16]}"
