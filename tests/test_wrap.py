"""Streaming task side: line parsing, post-processing, result files."""

import sys

import numpy as np
import pytest

from hcollectives.algorithms.block import Block
from hcollectives.errors import BadMapperOutput, HCollectivesError
from hcollectives.jobs.collectives import AllGather, AllReduce
from hcollectives.jobs.wrap import StreamingPostProcess, parse_line, write_result


def test_parse_line_int_and_str_keys():
    key, vec = parse_line(b"3\t1.5 2 -4e-3\n")
    assert key == 3 and vec.tolist() == [1.5, 2.0, -0.004]
    key, vec = parse_line(b"word\t7\r\n")
    assert key == "word" and vec.tolist() == [7.0]


@pytest.mark.parametrize("line, match", [
    (b"3 1 2\n", "no TAB"),
    (b"\t1 2\n", "empty key"),
    (b"3\t1 abc 2\n", "'abc' is not a number"),
])
def test_parse_line_rejects(line, match):
    with pytest.raises(BadMapperOutput, match=match):
        parse_line(line)


def test_builtin_post_process_allreduce_stacks_rows_by_key():
    post = StreamingPostProcess(AllReduce("sum"))
    block = Block.from_dict({2: [5.0, 6.0], 0: [1.0, 2.0], 1: [3.0, 4.0]})
    np.testing.assert_array_equal(post(block, np.zeros(1)), [[1, 2], [3, 4], [5, 6]])


def test_builtin_post_process_allgather_is_the_matrix():
    post = StreamingPostProcess(AllGather())
    block = Block.from_dict({1: [3.0], 0: [1.0]})
    np.testing.assert_array_equal(post(block, np.zeros(1)), [[1.0], [3.0]])


def test_tolerance_convergence():
    post = StreamingPostProcess(AllGather(), tolerance=0.1)
    assert post.converged(np.zeros(3), np.full(3, 0.05))
    assert not post.converged(np.zeros(3), np.full(3, 0.2))
    assert not post.converged(np.zeros(3), np.zeros(4))  # shape changed: not converged
    assert not StreamingPostProcess(AllGather()).converged(np.zeros(3), np.zeros(3))  # no tolerance: never


def test_command_post_process_gets_result_and_previous(tmp_path):
    script = tmp_path / "pp.py"
    script.write_text(
        "import os, numpy as np\n"
        "r = np.load(os.environ['HCOLLECTIVES_RESULT'])\n"
        "p = np.load(os.environ['HCOLLECTIVES_LOOP_DATA'])\n"
        "np.save(os.environ['HCOLLECTIVES_OUTPUT'], np.array([r['0'].sum(), r['7'].sum(), p.sum()]))\n")
    post = StreamingPostProcess(AllReduce("sum"), command=f"{sys.executable} {script}")
    out = post(Block.from_dict({0: [1.0, 2.0], 7: [10.0]}), np.array([100.0, 1.0]))
    np.testing.assert_array_equal(out, [3.0, 10.0, 101.0])


def test_command_post_process_failure_is_reported(tmp_path):
    post = StreamingPostProcess(AllGather(), command=f"{sys.executable} -c 'import sys; sys.exit(3)'")
    with pytest.raises(HCollectivesError, match="exited 3"):
        post(Block.from_dict({0: [1.0]}), np.zeros(1))
    post = StreamingPostProcess(AllGather(), command=f"{sys.executable} -c 'pass'")
    with pytest.raises(HCollectivesError, match="HCOLLECTIVES_OUTPUT"):
        post(Block.from_dict({0: [1.0]}), np.zeros(1))


def test_write_result_formats(tmp_path):
    block = Block.from_dict({0: [1.0, 2.0], 1: [3.0, 4.0]})
    write_result(str(tmp_path / "r.npz"), AllReduce("sum"), block)
    with np.load(tmp_path / "r.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["0", "1"] and z["1"].tolist() == [3.0, 4.0]
    write_result(str(tmp_path / "g.npy"), AllGather(), block)
    np.testing.assert_array_equal(np.load(tmp_path / "g.npy"), [[1, 2], [3, 4]])


def test_streaming_commands_see_the_wrappers_python_first(monkeypatch):
    """A task's PATH under YARN has no `python` and a bare `python3`: a mapper's
    `python3` must be the Python running the wrapper (mrjob's python_bin)."""
    import os
    import sys

    from hcollectives.jobs.wrap import command_environ

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = command_environ()
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert env["PATH"].endswith("/usr/bin:/bin") and env["HCOLLECTIVES_PYTHON"] == sys.executable
    monkeypatch.setenv("PATH", f"/opt/x:{os.path.dirname(sys.executable)}")
    assert command_environ()["PATH"] == f"/opt/x:{os.path.dirname(sys.executable)}"  # already there: unchanged
