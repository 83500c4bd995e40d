"""Tests for hcollectives.store: atomic, timeout-bounded, pickle-free storage."""

from __future__ import annotations

import io
import json
import pickle
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress

import numpy as np
import pytest

import hcollectives.store as store_mod
from hcollectives.algorithms.block import Block
from hcollectives.errors import CollectiveTimeout, ConfigurationError, StoreError
from hcollectives.store import (
    Store,
    StoreMissing,
    StoreTimeout,
    contribution_path,
    default_checkpoint_uri,
    latest_loop_iteration,
    loop_data_path,
    result_path,
    run_state_path,
)


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path) -> Iterator[Store]:
    if request.param == "file":
        yield Store(f"file://{tmp_path}/ckpt", timeout=5.0)
    else:
        s = Store(f"memory://hc-test-{uuid.uuid4().hex}", timeout=5.0)
        yield s
        with suppress(FileNotFoundError):  # memory:// is process-global; don't leak
            s.fs.rm(s.root, recursive=True)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event that blocked fake fs calls wait on; set at teardown to free pool workers."""
    event = threading.Event()
    yield event
    event.set()


def raw_names(store: Store, relpath: str) -> list[str]:
    """Directory listing straight from fsspec, temp files included."""
    full = f"{store.root}/{relpath}" if relpath else store.root
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in store.fs.ls(full, detail=False))
    except FileNotFoundError:
        return []


# -- blocks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "mapping",
    [
        {0: [1.0, 2.0], 5: [3.0], -7: []},
        {"a": [1.0], "b": [2.0, 3.0], "ünïcode-key": [4.0]},
        {3: [1.0], 1: [2.0], "x": [3.0, 4.0], "": [5.0]},
        {2**62: [1.0], -(2**63): [2.0]},
    ],
    ids=["int", "str", "mixed", "int64-extremes"],
)
def test_block_round_trip(store: Store, mapping) -> None:
    block = Block.from_dict({k: np.array(v) for k, v in mapping.items()})
    store.save_block("b/block.npz", block)
    loaded = store.load_block("b/block.npz")
    assert loaded == block
    assert loaded.keys == block.keys
    assert [type(k) for k in loaded.keys] == [type(k) for k in block.keys]  # int/str, not numpy scalars


def test_empty_block_round_trip(store: Store) -> None:
    store.save_block("empty.npz", Block.empty())
    loaded = store.load_block("empty.npz")
    assert loaded == Block.empty()
    assert len(loaded) == 0 and loaded.values.shape == (0,)


def test_large_block_round_trip_is_bit_exact(store: Store) -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal(300_000)
    values[:5] = [np.nan, np.inf, -np.inf, -0.0, 1e308]
    block = Block.from_matrix(tuple(range(1000)), values.reshape(1000, 300))
    store.save_block("big.npz", block)
    loaded = store.load_block("big.npz")
    assert loaded.same_layout(block)
    assert loaded.values.view(np.int64).tobytes() == block.values.view(np.int64).tobytes()


def test_mixed_keys_round_trip_in_canonical_order(store: Store) -> None:
    # Block itself refuses non-canonical order, so what the store rebuilds
    # (ints first, then strs) always lines up with the offsets.
    with pytest.raises(ValueError, match="canonical"):
        Block(("s", 1), np.array([0, 1, 2], np.int64), np.array([1.0, 2.0]))
    block = Block.from_dict({"s": [2.0], 1: [1.0]})
    store.save_block("x.npz", block)
    assert store.load_block("x.npz") == block


def test_save_block_rejects_key_beyond_int64(store: Store) -> None:
    with pytest.raises(ConfigurationError, match="int64"):
        store.save_block("x.npz", Block.from_dict({2**64: np.ones(1)}))


# -- arrays and json -----------------------------------------------------------------


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([True, False]),
        np.array(7, dtype=np.int64),
        np.zeros((0, 3)),
        np.array(["a", "bc"]),
    ],
)
def test_array_round_trip(store: Store, arr: np.ndarray) -> None:
    store.save_array("loop/a.npy", arr)
    loaded = store.load_array("loop/a.npy")
    assert loaded.dtype == arr.dtype and loaded.shape == arr.shape
    np.testing.assert_array_equal(loaded, arr)


def test_save_array_rejects_object_dtype(store: Store) -> None:
    with pytest.raises(ConfigurationError, match="object"):
        store.save_array("o.npy", np.array([{}, 1], dtype=object))
    assert not store.exists("o.npy")


def test_arrays_round_trip(store: Store) -> None:
    mapping = {"w": np.eye(3), "ids": np.arange(5), "empty": np.zeros(0, np.int32)}
    store.save_arrays("m.npz", mapping)
    loaded = store.load_arrays("m.npz")
    assert sorted(loaded) == sorted(mapping)
    for name, arr in mapping.items():
        assert loaded[name].dtype == arr.dtype
        np.testing.assert_array_equal(loaded[name], arr)


@pytest.mark.parametrize("name", ["file", "allow_pickle", ""])
def test_save_arrays_rejects_reserved_names(store: Store, name: str) -> None:
    with pytest.raises(ConfigurationError):
        store.save_arrays("m.npz", {name: np.zeros(1)})


def test_save_arrays_rejects_object_member(store: Store) -> None:
    with pytest.raises(ConfigurationError, match="object"):
        store.save_arrays("m.npz", {"ok": np.zeros(1), "bad": np.array([None])})
    assert not store.exists("m.npz")


def test_json_round_trip(store: Store) -> None:
    obj = {"iteration": 3, "session": "s1", "done": [0, 1, 2], "nested": {"x": None, "y": 1.5}}
    store.save_json(run_state_path(), obj)
    assert store.load_json(run_state_path()) == obj


def test_json_errors(store: Store) -> None:
    with pytest.raises(ConfigurationError):
        store.save_json("x.json", {"a": object()})
    with pytest.raises(ConfigurationError):
        store.save_json("x.json", {"a": float("nan")})  # not valid JSON for other readers
    store.write_bytes("bad.json", b"{not json")
    with pytest.raises(StoreError, match="bad.json"):
        store.load_json("bad.json")


# -- bytes, atomicity --------------------------------------------------------------------


def test_write_read_overwrite_exists_listdir_remove(store: Store) -> None:
    assert not store.exists("d/f.bin")
    store.write_bytes("d/f.bin", b"one")
    store.write_bytes("d/f.bin", b"two")  # overwrite an existing file
    store.write_bytes("d/sub/g.bin", b"")
    assert store.read_bytes("d/f.bin") == b"two"
    assert store.read_bytes("d/sub/g.bin") == b""
    assert store.exists("d/f.bin") and store.exists("d")
    assert store.listdir("d") == ["f.bin", "sub"]
    assert store.listdir() == ["d"]
    assert raw_names(store, "d") == ["f.bin", "sub"]  # no temp file left behind
    store.remove_tree("d/sub")
    assert store.listdir("d") == ["f.bin"]
    store.remove_tree("d")
    assert not store.exists("d/f.bin")
    store.remove_tree("d")  # missing is fine


def test_listdir_missing_dir_and_hidden_temps(store: Store) -> None:
    assert store.listdir("nope") == []
    store.write_bytes("d/real.npz", b"x")
    store.fs.pipe_file(f"{store.root}/d/.real.npz.tmp-{uuid.uuid4().hex}", b"partial")
    assert store.listdir("d") == ["real.npz"]


def test_failed_rename_leaves_no_file_and_cleans_temp(store: Store, monkeypatch) -> None:
    store.write_bytes("d/keep", b"k")

    def broken_mv(*args, **kwargs):
        raise OSError("rename exploded")

    monkeypatch.setattr(store.fs, "mv", broken_mv)
    with pytest.raises(StoreError, match="rename d/f.bin") as info:
        store.write_bytes("d/f.bin", b"payload")
    assert store.url in str(info.value)
    assert isinstance(info.value.__cause__, OSError)
    assert not store.exists("d/f.bin")
    assert raw_names(store, "d") == ["keep"]  # temp file removed


def test_failed_write_keeps_old_content_and_cleans_temp(store: Store, monkeypatch) -> None:
    store.write_bytes("d/f.bin", b"old")
    real_open = store.fs.open

    class HalfWriter(io.BytesIO):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def write(self, data):
            self.inner.write(data[: len(data) // 2])
            self.inner.close()
            raise OSError("disk full")

        def __exit__(self, *exc):
            return False

    def flaky_open(path, mode="rb", **kwargs):
        f = real_open(path, mode, **kwargs)
        return HalfWriter(f) if "w" in mode else f

    monkeypatch.setattr(store.fs, "open", flaky_open)
    with pytest.raises(StoreError, match="write d/f.bin"):
        store.write_bytes("d/f.bin", b"new content")
    monkeypatch.undo()
    assert store.read_bytes("d/f.bin") == b"old"
    assert raw_names(store, "d") == ["f.bin"]


def test_final_name_only_appears_complete(store: Store, monkeypatch) -> None:
    """At rename time the data is fully written, and the final name still holds the old content."""
    store.write_bytes("f.bin", b"old")
    real_mv = store.fs.mv
    seen: list[tuple[bytes, bytes]] = []

    def spying_mv(src, dst, **kwargs):
        seen.append((store.fs.cat_file(src), store.fs.cat_file(dst)))
        return real_mv(src, dst, **kwargs)

    monkeypatch.setattr(store.fs, "mv", spying_mv)
    payload = bytes(range(256)) * 1000
    store.write_bytes("f.bin", payload)
    assert seen == [(payload, b"old")]
    assert store.read_bytes("f.bin") == payload


def test_overwrite_passes_overwrite_to_rename(store: Store, monkeypatch) -> None:
    """hdfs-native's rename refuses an existing target unless overwrite=True."""
    real_mv = store.fs.mv

    def hdfs_like_mv(src, dst, **kwargs):
        if store.fs.exists(dst) and not kwargs.get("overwrite", False):
            raise FileExistsError(dst)
        return real_mv(src, dst, **kwargs)

    monkeypatch.setattr(store.fs, "mv", hdfs_like_mv)
    store.write_bytes("f.bin", b"1")
    store.write_bytes("f.bin", b"2")
    assert store.read_bytes("f.bin") == b"2"


def test_concurrent_reader_never_sees_partial_content(store: Store) -> None:
    payloads = [b"a" * 200_000, b"b" * 400_000]
    store.write_bytes("hot.bin", payloads[0])
    stop = threading.Event()
    bad: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            data = store.read_bytes("hot.bin")
            if data not in payloads:
                bad.append(len(data))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(60):
            store.write_bytes("hot.bin", payloads[i % 2])
    finally:
        stop.set()
        t.join()
    assert bad == []
    assert raw_names(store, "") == ["hot.bin"]


# -- path validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "relpath", ["/abs", "a/../b", "..", "a//b", "a/", "./a", "hdfs://nn/x", "\\x", 5, None]
)
def test_bad_relative_paths(store: Store, relpath) -> None:
    for call in (store.read_bytes, store.exists, store.listdir, store.remove_tree,
                 lambda p: store.write_bytes(p, b"x")):
        with pytest.raises(ConfigurationError):
            call(relpath)


def test_root_is_only_listable(store: Store) -> None:
    assert store.listdir("") == []
    for call in (store.read_bytes, store.remove_tree, lambda p: store.write_bytes(p, b"x")):
        with pytest.raises(ConfigurationError):
            call("")


@pytest.mark.parametrize(
    "kwargs",
    [{"url": ""}, {"url": "   "}, {"url": None}, {"url": "memory://x", "timeout": 0},
     {"url": "memory://x", "timeout": -1}, {"url": "memory://x", "timeout": float("nan")},
     {"url": "memory://x", "timeout": float("inf")}, {"url": "memory://x", "timeout": True},
     {"url": "file://relative/path"}, {"url": "nosuchproto://x"}],
)
def test_bad_store_arguments(kwargs) -> None:
    with pytest.raises(ConfigurationError):
        Store(**kwargs)


def test_timeout_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        Store("memory://x", 5.0)  # type: ignore[misc]


def test_hdfs_without_hdfs_native_names_the_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "hdfs_native", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "hdfs_native.fsspec", None)
    with pytest.raises(ConfigurationError, match="hdfs-native"):
        Store("hdfs://namenode:8020/ckpt")


def test_plain_local_path_is_file_url(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store("rel/ckpt")
    assert store.url == f"file://{tmp_path}/rel/ckpt"
    store.write_bytes("x/y.bin", b"hi")
    assert (tmp_path / "rel" / "ckpt" / "x" / "y.bin").read_bytes() == b"hi"
    assert Store(str(tmp_path / "abs")).url == f"file://{tmp_path}/abs"


def test_path_layout_helpers() -> None:
    assert contribution_path("s-1", 7, "task_00003", "attempt.0") == (
        "sessions/s-1/iter-000007/tasks/task_00003/attempt.0.npz")
    assert result_path("s1", 1234567) == "sessions/s1/iter-1234567/result.npz"
    assert loop_data_path(0) == "loop/000000.npy"
    assert run_state_path() == "run.json"
    assert default_checkpoint_uri("/tmp/job") == "file:///tmp/job/checkpoints"
    assert default_checkpoint_uri("/tmp/job/") == "file:///tmp/job/checkpoints"


@pytest.mark.parametrize(
    "args",
    [("a/b", 0, "t", "a"), ("..", 0, "t", "a"), ("s", 0, ".", "a"), ("s", 0, "t", "a b"),
     ("", 0, "t", "a"), ("s", -1, "t", "a"), ("s", True, "t", "a"), ("s", 1.0, "t", "a"),
     (3, 0, "t", "a")],
)
def test_path_layout_validation(args) -> None:
    with pytest.raises(ConfigurationError):
        contribution_path(*args)


def test_loop_and_result_validation() -> None:
    for bad in (-1, "3", None):
        with pytest.raises(ConfigurationError):
            loop_data_path(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        result_path("../x", 0)


def test_latest_loop_iteration(store: Store) -> None:
    assert latest_loop_iteration(store) is None
    for i in (0, 2, 10):
        store.save_array(loop_data_path(i), np.full(3, float(i)))
    store.write_bytes("loop/notes.txt", b"ignored")
    store.fs.pipe_file(f"{store.root}/loop/.000099.npy.tmp-{uuid.uuid4().hex}", b"partial")
    assert latest_loop_iteration(store) == 10
    np.testing.assert_array_equal(store.load_array(loop_data_path(10)), np.full(3, 10.0))


# -- missing and malformed files ---------------------------------------------------------------


def test_missing_file_is_store_missing(store: Store) -> None:
    for call in (store.read_bytes, store.load_block, store.load_array, store.load_arrays,
                 store.load_json):
        with pytest.raises(StoreMissing, match="nope/x"):
            call("nope/x")
    assert issubclass(StoreMissing, StoreError)


_tripped: list[str] = []


def _trip() -> str:
    _tripped.append("unpickled!")
    return "canary"


class Canary:
    def __reduce__(self):
        return (_trip, ())


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=True, **arrays)
    return buf.getvalue()


GOOD = {"keys_int": np.array([1, 2]), "keys_str": np.array(["a"]),
        "offsets": np.array([0, 1, 2, 2]), "values": np.array([1.0, 2.0])}


@pytest.mark.parametrize(
    "members",
    [
        {**GOOD, "keys_str": np.array([Canary()], dtype=object)},
        {**GOOD, "values": np.array([Canary(), Canary()], dtype=object)},
        {k: v for k, v in GOOD.items() if k != "offsets"},
        {**GOOD, "values": np.array([1, 2])},
        {**GOOD, "values": np.array([1.0, 2.0], dtype=np.float32)},
        {**GOOD, "keys_int": np.array([1.0, 2.0])},
        {**GOOD, "keys_str": np.array([b"a"])},
        {**GOOD, "offsets": np.array([0, 2, 1, 2])},
        {**GOOD, "offsets": np.array([0, 1, 2])},
        {**GOOD, "keys_str": np.array(["1"]), "keys_int": np.array([1, 1])},
        {**GOOD, "values": np.ones((2, 1))},
    ],
    ids=["object-keys", "object-values", "no-offsets", "int-values", "f4-values", "float-keys",
         "bytes-keys", "decreasing-offsets", "short-offsets", "duplicate-keys", "2d-values"],
)
def test_malformed_block_is_store_error_and_never_unpickles(store: Store, members) -> None:
    store.write_bytes("bad.npz", _npz(**members))
    with pytest.raises(StoreError, match="bad.npz"):
        store.load_block("bad.npz")
    assert _tripped == []


def test_good_hand_built_block_loads(store: Store) -> None:
    store.write_bytes("good.npz", _npz(**GOOD))  # control for the malformed cases above
    assert store.load_block("good.npz").keys == (1, 2, "a")


@pytest.mark.parametrize(
    "data",
    [b"garbage", b"", pickle.dumps(Canary()), pickle.dumps(np.array([Canary()], dtype=object))],
    ids=["garbage", "empty", "pickle", "pickled-array"],
)
def test_unreadable_array_files_are_store_errors(store: Store, data: bytes) -> None:
    store.write_bytes("x", data)
    for call in (store.load_array, store.load_arrays, store.load_block):
        with pytest.raises(StoreError, match="x"):
            call("x")
    assert _tripped == []


def test_object_npy_is_refused(store: Store) -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([Canary()], dtype=object), allow_pickle=True)
    store.write_bytes("o.npy", buf.getvalue())
    with pytest.raises(StoreError, match="o.npy"):
        store.load_array("o.npy")
    assert _tripped == []


def test_npy_vs_npz_mismatch(store: Store) -> None:
    store.save_array("a.npy", np.zeros(3))
    store.save_arrays("m.npz", {"a": np.zeros(3)})
    with pytest.raises(StoreError, match="not a .npz"):
        store.load_block("a.npy")
    with pytest.raises(StoreError, match="not a .npy"):
        store.load_array("m.npz")


# -- timeouts -----------------------------------------------------------------------------------


def test_hung_fs_call_times_out(store: Store, release: threading.Event, monkeypatch) -> None:
    store.write_bytes("f.bin", b"x")
    fast = Store(store.url, timeout=0.2)

    def hung(*args, **kwargs):
        release.wait(10)
        return b"late"

    monkeypatch.setattr(fast.fs, "cat_file", hung)
    start = time.monotonic()
    with pytest.raises(StoreTimeout) as info:
        fast.read_bytes("f.bin")
    elapsed = time.monotonic() - start
    assert 0.15 <= elapsed < 1.5
    assert str(info.value) == f"store {fast.url}: read f.bin timed out after 0.2s"
    assert isinstance(info.value, StoreError)


def test_hung_rename_times_out(store: Store, release: threading.Event, monkeypatch) -> None:
    fast = Store(store.url, timeout=0.2)
    monkeypatch.setattr(fast.fs, "mv", lambda *a, **k: release.wait(10))
    start = time.monotonic()
    with pytest.raises(StoreTimeout, match="rename d/f.bin timed out"):
        fast.write_bytes("d/f.bin", b"x")
    assert time.monotonic() - start < 1.5
    assert not store.exists("d/f.bin")


def test_timeout_error_from_fs_is_not_our_timeout(store: Store, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise TimeoutError("backend socket timeout")

    monkeypatch.setattr(store.fs, "exists", refuse)
    with pytest.raises(StoreError, match="backend socket timeout") as info:
        store.exists("x")
    assert not isinstance(info.value, StoreTimeout)


def test_call_queued_behind_hung_workers_never_runs_after_timeout(
        store: Store, release: threading.Event, monkeypatch) -> None:
    fast = Store(store.url, timeout=0.2)
    started = threading.Semaphore(0)

    def hung(*args, **kwargs):
        started.release()
        release.wait(10)
        return False

    monkeypatch.setattr(fast.fs, "exists", hung)
    workers = store_mod._POOL._max_workers
    def occupy_a_worker():  # whether this caller times out first or sees the release is a race: either is fine
        try:
            fast.exists("x")
        except StoreTimeout:
            pass

    callers = [threading.Thread(target=occupy_a_worker) for _ in range(workers)]
    for t in callers:
        t.start()
    assert all(started.acquire(timeout=2) for _ in range(workers))  # every worker is now stuck
    ran: list[str] = []
    monkeypatch.setattr(fast.fs, "cat_file", lambda *a, **k: ran.append("late read") or b"")
    with pytest.raises(StoreTimeout):
        fast.read_bytes("y")
    release.set()
    for t in callers:
        t.join()
    time.sleep(0.3)  # freed workers would pick the read up within milliseconds if it were live
    assert ran == []


def test_wait_for_backs_off_to_one_second(store: Store, monkeypatch) -> None:
    class FakeTime:
        now = 0.0
        sleeps: list[float] = []

        def monotonic(self) -> float:
            return self.now

        def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)
            self.now += seconds

    fake = FakeTime()
    monkeypatch.setattr(store_mod, "time", fake)
    with pytest.raises(CollectiveTimeout):
        store.wait_for("never", timeout=10.0, poll=0.05)
    assert fake.sleeps[:6] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8, 1.0])
    assert max(fake.sleeps) == 1.0
    assert sum(fake.sleeps) == pytest.approx(10.0)  # last sleep is cut to the deadline


def test_wait_for_sees_a_later_write(store: Store) -> None:
    timer = threading.Timer(0.2, store.write_bytes, args=("late/file", b"x"))
    timer.start()
    try:
        start = time.monotonic()
        store.wait_for("late/file", timeout=5.0, poll=0.01)
        assert 0.15 <= time.monotonic() - start < 2.0
    finally:
        timer.join()
    store.wait_for("late/file", timeout=0)  # already there: returns even with no time left


def test_wait_for_times_out(store: Store) -> None:
    start = time.monotonic()
    with pytest.raises(CollectiveTimeout, match="never/file"):
        store.wait_for("never/file", timeout=0.3, poll=0.01)
    assert 0.3 <= time.monotonic() - start < 1.5
    with pytest.raises(ConfigurationError):
        store.wait_for("x", timeout=-1)
    with pytest.raises(ConfigurationError):
        store.wait_for("x", timeout=1, poll=0)


def test_json_file_is_plain_json_on_disk(tmp_path) -> None:
    store = Store(f"file://{tmp_path}")
    store.save_json("run.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": [1, 2]}


FORK_AFTER_HDFS_STORE = """
import gc, os, sys, threading, time
from hcollectives import store as store_mod

store = store_mod.Store("hdfs://127.0.0.1:1/run")  # hdfs-native connects lazily: no NameNode needed
del store
# Every pool worker runs a new job, so none still holds the store's last call.
barrier = threading.Barrier(store_mod._POOL._max_workers)
for job in [store_mod._POOL.submit(barrier.wait) for _ in range(barrier.parties)]:
    job.result(timeout=10)
gc.collect()
pid = os.fork()  # as mrjob does (pty.fork for `hadoop jar`, its local runner's pool)
if pid == 0:
    os._exit(0)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    if os.waitpid(pid, os.WNOHANG)[0]:
        sys.exit(0)
    time.sleep(0.05)
os.kill(pid, 9)
sys.exit("the forked child hung")
"""


def test_a_fork_after_an_hdfs_store_is_dropped_does_not_hang():
    """A dropped hdfs:// store's client must not live on in fsspec's instance cache:
    fsspec clears that cache in the forked child, and freeing an hdfs-native client
    there waits forever for its runtime's threads (which only the parent has)."""
    pytest.importorskip("hdfs_native")
    import subprocess

    done = subprocess.run([sys.executable, "-c", FORK_AFTER_HDFS_STORE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_prune_leaves_what_it_cannot_remove_for_the_next_prune(tmp_path, monkeypatch):
    """A daemon's background copy landing in an old iteration's directory while it is
    removed ("Directory not empty") must not fail the run; the next prune removes it."""
    s = Store(f"file://{tmp_path}")
    block = Block.from_dict({0: np.array([1.0])})
    for i in (1, 2, 3):
        s.save_block(store_mod.contribution_path("sess", i, "t0", "a0"), block)
    remove_tree = Store.remove_tree

    def busy(self, relpath):
        if relpath.endswith("iter-000001"):
            raise StoreError(f"store {self.url}: remove {relpath} failed: [Errno 39] Directory not empty")
        remove_tree(self, relpath)

    monkeypatch.setattr(Store, "remove_tree", busy)
    store_mod.prune(s, "sess", keep_loop_from=4, keep_iterations_from=3)
    left = sorted(p.name for p in (tmp_path / "sessions" / "sess").iterdir())
    assert left == ["iter-000001", "iter-000003"]  # iteration 2 went; 1 is left for later
    monkeypatch.setattr(Store, "remove_tree", remove_tree)
    store_mod.prune(s, "sess", keep_loop_from=4, keep_iterations_from=3)
    assert sorted(p.name for p in (tmp_path / "sessions" / "sess").iterdir()) == ["iter-000003"]
