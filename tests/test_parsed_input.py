"""jobs/parsed_input.py: a split parsed once per machine, and again when its content changes."""

import numpy as np
import pytest


def test_cached_split_is_parsed_again_when_its_content_changes(tmp_path):
    import io
    from types import SimpleNamespace

    from mrjob.protocol import RawValueProtocol

    from hcollectives.jobs.parsed_input import parsed_input
    from hcollectives.services.task import TaskEnv

    calls = []

    class Job:
        options = SimpleNamespace(args=[])

        def parse_input(self, line):
            calls.append(line)
            return [float(v) for v in line.split()]

    env = TaskEnv(session="s", coordinator="x:1", secret=b"k" * 16, iteration=1, task="t", attempt="a",
                  num_tasks=1, node="n", rundir=str(tmp_path), node_address=None, input_split="f:0+12",
                  timeout=10.0)
    read = RawValueProtocol().read
    job = Job()
    for content, parsed in ((b"1 2\n3 4\n", 2), (b"1 2\n3 4\n", 0), (b"1 2\n3 5\n", 2)):
        job.stdin = io.BytesIO(content)
        before = len(calls)
        rows = parsed_input(job, env, read)
        assert len(calls) - before == parsed
        np.testing.assert_array_equal(rows, np.loadtxt(io.BytesIO(content), ndmin=2))


def test_a_short_row_is_named_against_the_splits_majority():
    """The first record being the odd one out used to blame every other record."""
    from types import SimpleNamespace

    from hcollectives.errors import BadInputRecord
    from hcollectives.jobs.parsed_input import _parse_lines

    job = SimpleNamespace(parse_input=lambda value: [float(x) for x in value.split()])
    env = SimpleNamespace(describe=lambda: "task t (split s)")
    lines = [b"1 2", b"1 2 3", b"4 5 6", b"7 8 9", b"1 1 1"]
    with pytest.raises(BadInputRecord) as info:
        _parse_lines(job, env, lines, lambda line: (None, line.decode()))
    message = str(info.value)
    assert "input record 1 ('1 2')" in message and "expected 3 numbers like 4 of the split's 5 records" in message
