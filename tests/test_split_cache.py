"""The per-machine cache of parsed input splits."""

import io
import threading

import numpy as np
import pytest

from hcollectives.services.split_cache import SplitCache, read_all


def test_read_all_returns_bytes_and_a_digest_of_exactly_them():
    data = b"1 2 3\n" * 100_000
    got, digest = read_all(io.BytesIO(data))
    assert got == data
    assert read_all(io.BytesIO(data))[1] == digest
    assert read_all(io.BytesIO(data[:-1] + b"4"))[1] != digest  # one byte changed
    assert read_all(io.BytesIO(data + b"\n"))[1] != digest
    assert read_all(io.BytesIO(b""))[0] == b""


def test_entries_are_keyed_by_split_parser_and_content(tmp_path):
    cache = SplitCache(tmp_path / "c")
    rows = np.arange(12.0).reshape(4, 3)
    assert cache.load("f:0+10", "p", "d1") is None
    cache.save("f:0+10", "p", "d1", rows)
    hit = cache.load("f:0+10", "p", "d1")
    np.testing.assert_array_equal(hit, rows)
    assert isinstance(hit, np.memmap) and not hit.flags.writeable  # shared, read-only
    for key in (("f:10+10", "p", "d1"), ("f:0+10", "q", "d1"), ("f:0+10", "p", "d2")):
        assert cache.load(*key) is None, key


def test_a_damaged_entry_is_a_miss_not_an_error(tmp_path):
    cache = SplitCache(tmp_path)
    cache.save("s", "p", "d", np.ones((2, 2)))
    (entry,) = tmp_path.glob("*.npy")
    entry.write_bytes(b"garbage")
    assert cache.load("s", "p", "d") is None
    cache.save("s", "p", "d", np.ones((2, 2)))  # the next parse repairs it
    assert cache.load("s", "p", "d") is not None


def test_concurrent_writers_leave_one_complete_entry_and_no_temp_files(tmp_path):
    cache = SplitCache(tmp_path)
    rows = np.random.default_rng(0).random((2000, 50))
    errors = []

    def write():
        try:
            for _ in range(5):
                cache.save("s", "p", "d", rows)
                got = cache.load("s", "p", "d")
                assert got is not None and got.shape == rows.shape
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    np.testing.assert_array_equal(cache.load("s", "p", "d"), rows)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_rows_must_be_numbers(tmp_path):
    with pytest.raises(ValueError):
        SplitCache(tmp_path).save("s", "p", "d", np.array([object()]))
