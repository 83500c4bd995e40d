"""NativeHDFSFilesystem: mrjob's Filesystem interface over a Store, no ``hadoop fs`` JVMs.

The "NameNodes" here are local directories (one per authority) behind real
Stores; the same class runs against the mini-cluster's HDFS in test_hadoop.py.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import threading

import pytest
from mrjob.fs.composite import CompositeFilesystem

from hcollectives.hadoop import mrjob_hdfs
from hcollectives.hadoop.mrjob_hdfs import (
    CachedVersionHadoopFilesystem,
    NativeHDFSFilesystem,
    NativeHDFSUnavailable,
    add_filesystems,
    default_authority,
)
from hcollectives.driver.mrjob_launcher import collective_runner_class
from hcollectives.errors import StoreError
from hcollectives.store import Store


@pytest.fixture
def namenodes(tmp_path):
    """authority -> local directory standing in for that HDFS's root."""
    roots = {}

    def connect(authority: str) -> Store:
        root = tmp_path / "hdfs" / authority.replace(":", "_")
        root.mkdir(parents=True, exist_ok=True)
        roots[authority] = root
        return Store(f"file://{root}", timeout=5.0)

    return roots, connect


@pytest.fixture
def fs(namenodes):
    return NativeHDFSFilesystem("nn:9000", connect=namenodes[1])


def local_file(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_handles_hdfs_uris_only(namenodes):
    with_default = NativeHDFSFilesystem("nn:9000", connect=namenodes[1])
    without = NativeHDFSFilesystem(None, connect=namenodes[1])
    assert with_default.can_handle_path("hdfs://other:8020/x")
    assert with_default.can_handle_path("hdfs:///user/me/x")
    assert not without.can_handle_path("hdfs:///user/me/x")  # no fs.defaultFS to resolve it
    assert without.can_handle_path("hdfs://other:8020/x")
    for path in ("s3://bucket/x", "/tmp/x", "file:///tmp/x", "relative/x"):
        assert not with_default.can_handle_path(path)


def test_put_ls_cat_round_trip(fs, namenodes, tmp_path):
    src = local_file(tmp_path, "job.py", b"print('hi')\n")
    fs.mkdir("hdfs:///user/me/tmp/run/files")
    fs.put(src, "hdfs:///user/me/tmp/run/files/job.py")
    fs.put(src, "hdfs:///user/me/tmp/run/files/wd/nested.py")  # put creates parent dirs
    # listed recursively, files only, with the caller's own scheme and authority
    assert list(fs.ls("hdfs:///user/me/tmp/run")) == [
        "hdfs:///user/me/tmp/run/files/job.py", "hdfs:///user/me/tmp/run/files/wd/nested.py"]
    assert list(fs.ls("hdfs://nn:9000/user/me/tmp/run/files/job.py")) == [
        "hdfs://nn:9000/user/me/tmp/run/files/job.py"]
    assert b"".join(fs.cat("hdfs:///user/me/tmp/run/files/job.py")) == b"print('hi')\n"
    # hdfs:///... went to the default NameNode's directory
    assert (namenodes[0]["nn:9000"] / "user/me/tmp/run/files/job.py").read_bytes() == b"print('hi')\n"


def test_a_private_file_stays_private(fs, namenodes, tmp_path):
    """The session secret (a 0600 file) must not become readable by others on HDFS."""
    secret = local_file(tmp_path, "hcollectives-session-secret-x", b"c0ffee\n")
    os.chmod(secret, 0o600)
    public = local_file(tmp_path, "job.py", b"print('hi')\n")
    os.chmod(public, 0o644)
    fs.put(secret, "hdfs:///user/me/tmp/run/files/secret")
    fs.put(public, "hdfs:///user/me/tmp/run/files/job.py")
    root = namenodes[0]["nn:9000"] / "user/me/tmp/run/files"
    assert (root / "secret").read_bytes() == b"c0ffee\n"
    assert stat.S_IMODE((root / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "job.py").stat().st_mode) & 0o044  # others' files as before


def test_hadoop_fs_puts_a_private_file_with_a_private_umask(tmp_path, monkeypatch):
    monkeypatch.setattr(CachedVersionHadoopFilesystem, "_versions", {})
    hadoop_bin, log = fake_hadoop(tmp_path)
    secret = local_file(tmp_path, "secret", b"c0ffee\n")
    os.chmod(secret, 0o600)
    public = local_file(tmp_path, "job.py", b"x")
    os.chmod(public, 0o644)
    hadoop = CachedVersionHadoopFilesystem(hadoop_bin)
    hadoop.put(secret, "hdfs:///u/secret")
    hadoop.put(public, "hdfs:///u/job.py")
    calls = log.read_text().splitlines()
    assert f"fs -D fs.permissions.umask-mode=077 -put {secret} hdfs:///u/secret" in calls
    assert f"fs -put {public} hdfs:///u/job.py" in calls


def test_authorities_are_separate_namenodes(fs, namenodes, tmp_path):
    src = local_file(tmp_path, "a", b"a")
    fs.put(src, "hdfs://nn:9000/x/a")
    fs.put(src, "hdfs://other:8020/y/a")
    assert fs.exists("hdfs://other:8020/y/a") and not fs.exists("hdfs://other:8020/x/a")
    assert sorted(namenodes[0]) == ["nn:9000", "other:8020"]


def test_globs_exists_du_rm(fs, tmp_path):
    for name, size in (("part-00000", 3), ("part-00001", 5), ("_SUCCESS", 0)):
        fs.put(local_file(tmp_path, name, b"x" * size), f"hdfs:///out/{name}")
    assert fs.exists("hdfs:///out/part-*")
    assert not fs.exists("hdfs:///out/part-9*")
    assert not fs.exists("hdfs:///nowhere")
    assert fs.du("hdfs:///out/part-*") == 8
    assert fs.du("hdfs:///out") == 8
    assert list(fs.ls("hdfs:///out/part-*")) == ["hdfs:///out/part-00000", "hdfs:///out/part-00001"]
    fs.rm("hdfs:///out/part-*")
    assert list(fs.ls("hdfs:///out")) == ["hdfs:///out/_SUCCESS"]
    fs.rm("hdfs:///out")
    assert not fs.exists("hdfs:///out")
    fs.rm("hdfs:///out")  # removing what is not there is fine, as with hadoop fs -rm -f


def test_cat_decompresses_like_mrjob(fs, tmp_path):
    data = b"".join(b"line %d\n" % i for i in range(5000))
    fs.put(local_file(tmp_path, "in.gz", gzip.compress(data)), "hdfs:///in/part.gz")
    fs.put(local_file(tmp_path, "in.txt", data), "hdfs:///in/plain.txt")
    assert b"".join(fs.cat("hdfs:///in/part.gz")) == data
    # several files: b"" between them, as mrjob's Filesystem.cat promises
    chunks = list(fs.cat("hdfs:///in/*"))
    assert b"" in chunks and b"".join(chunks) == data * 2
    assert fs.md5sum("hdfs:///in/plain.txt") == hashlib.md5(data).hexdigest()


def test_touchz(fs, tmp_path):
    fs.touchz("hdfs:///marks/empty")
    fs.touchz("hdfs:///marks/empty")  # an empty file may be touched again
    assert fs.du("hdfs:///marks/empty") == 0
    fs.put(local_file(tmp_path, "f", b"data"), "hdfs:///marks/full")
    with pytest.raises(OSError, match="already exists"):
        fs.touchz("hdfs:///marks/full")


def test_put_refuses_a_directory_target(fs, tmp_path):
    with pytest.raises(ValueError, match="may not be a directory"):
        fs.put(local_file(tmp_path, "f", b""), "hdfs:///dir/")


def test_missing_files(fs):
    # like `hadoop fs -ls` on a missing path: nothing listed, nothing catted
    assert list(fs.ls("hdfs:///no/such/file")) == []
    assert list(fs.cat("hdfs:///no/such/file")) == []
    with pytest.raises(StoreError, match="hdfs:///no/such/file"):
        list(fs._cat_file("hdfs:///no/such/file"))


class _FallbackFS:
    """Stands in for mrjob's HadoopFilesystem: records what was handed over."""

    def __init__(self):
        self.calls = []

    def can_handle_path(self, path):
        return path.startswith("hdfs://")

    def exists(self, path):
        self.calls.append(("exists", path))
        return True

    def ls(self, path):
        self.calls.append(("ls", path))
        return iter([path + "/from-hadoop-fs"])


def test_unreachable_namenode_hands_over_to_hadoop_fs(tmp_path):
    def connect(authority):
        raise mrjob_hdfs.ConfigurationError("no route to NameNode")

    composite = CompositeFilesystem()
    composite.add_fs("hdfs_native", NativeHDFSFilesystem("nn:9000", connect=connect),
                     disable_if=mrjob_hdfs._disable_on)
    fallback = _FallbackFS()
    composite.add_fs("hadoop", fallback)
    # ls returns a generator, yet the failure shows in time to fall back
    assert list(composite.ls("hdfs:///in")) == ["hdfs:///in/from-hadoop-fs"]
    assert composite.exists("hdfs:///in")
    assert fallback.calls == [("ls", "hdfs:///in"), ("exists", "hdfs:///in")]
    assert "hdfs_native" in composite._disabled  # later calls go straight to hadoop fs


def test_hung_namenode_probe_is_bounded(monkeypatch, tmp_path):
    """hdfs-native retries forever against a dead NameNode; the probe gives up."""
    monkeypatch.setattr(mrjob_hdfs, "PROBE_TIMEOUT", 0.3)
    release = threading.Event()

    class Hung:
        def exists(self, path):
            release.wait(10)
            return True

    def connect(authority):
        store = Store(f"file://{tmp_path}", timeout=5.0)
        store._fs = Hung()
        return store

    fs = NativeHDFSFilesystem("nn:9000", connect=connect)
    try:
        with pytest.raises(NativeHDFSUnavailable, match=r"hdfs://nn:9000: .*probe.*timed out after 0.3s"):
            fs.exists("hdfs:///x")
    finally:
        release.set()


def test_operation_errors_are_not_fallbacks(fs, tmp_path):
    """A failed operation on a reachable NameNode is that operation's error, not a hand-over."""
    fs.put(local_file(tmp_path, "f", b"x"), "hdfs:///file")
    with pytest.raises(Exception) as info:
        fs.put(local_file(tmp_path, "g", b"y"), "hdfs:///file/child")  # a file is not a directory
    assert not mrjob_hdfs._disable_on(info.value)


def test_default_authority_from_core_site(tmp_path):
    (tmp_path / "core-site.xml").write_text(
        "<configuration><property><name>fs.defaultFS</name><value>hdfs://127.0.0.1:19000</value>"
        "</property></configuration>")
    assert default_authority({"HADOOP_CONF_DIR": str(tmp_path)}) == "127.0.0.1:19000"
    (tmp_path / "core-site.xml").write_text(
        "<configuration><property><name>fs.defaultFS</name><value>file:///</value>"
        "</property></configuration>")
    assert default_authority({"HADOOP_CONF_DIR": str(tmp_path)}) is None
    assert default_authority({}) is None


def fake_hadoop(tmp_path):
    """A `hadoop` that answers `version` and counts how often it was started."""
    log = tmp_path / "calls"
    script = tmp_path / "hadoop"
    script.write_text(f'#!/bin/sh\necho "$@" >> {log}\necho "Hadoop 3.5.0"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)], log


def test_hadoop_version_is_asked_once_per_process(tmp_path, monkeypatch):
    monkeypatch.setattr(CachedVersionHadoopFilesystem, "_versions", {})
    hadoop_bin, log = fake_hadoop(tmp_path)
    for _ in range(3):  # one filesystem per runner, i.e. per iteration
        assert CachedVersionHadoopFilesystem(hadoop_bin).get_hadoop_version() == "3.5.0"
    assert log.read_text().splitlines() == ["version"]


def test_collective_hadoop_runner_uses_native_hdfs_first(tmp_path, monkeypatch):
    monkeypatch.setattr(CachedVersionHadoopFilesystem, "_versions", {})
    hadoop_bin, log = fake_hadoop(tmp_path)
    runner_class = collective_runner_class("hadoop")
    monkeypatch.delenv("HCOLLECTIVES_NATIVE_HDFS", raising=False)
    runner = runner_class(hadoop_bin=hadoop_bin, conf_paths=[])
    assert runner.fs._fs_names == ["hdfs_native", "hadoop", "local"]
    assert runner.get_hadoop_version() == "3.5.0"
    assert runner_class(hadoop_bin=hadoop_bin, conf_paths=[]).get_hadoop_version() == "3.5.0"
    assert log.read_text().splitlines() == ["version"]
    monkeypatch.setenv("HCOLLECTIVES_NATIVE_HDFS", "0")
    assert runner_class(hadoop_bin=hadoop_bin, conf_paths=[]).fs._fs_names == ["hadoop", "local"]


def test_add_filesystems_without_hdfs_native(monkeypatch):
    monkeypatch.setattr(mrjob_hdfs, "native_hdfs_enabled", lambda env=os.environ: False)
    composite = CompositeFilesystem()
    add_filesystems(composite, ["hadoop"])
    assert composite._fs_names == ["hadoop", "local"]


def test_count_input_files_expands_globs_and_directories(tmp_path, monkeypatch):
    """The resident slot check counts map tasks from this: a glob of 4 files is 4 tasks, not 1."""
    for k in range(4):
        local_file(tmp_path, f"points-{k}.csv", b"1,2\n")
    (tmp_path / "more").mkdir()
    local_file(tmp_path / "more", "a.txt", b"x\n")
    local_file(tmp_path / "more", "b.txt", b"y\n")
    hadoop = tmp_path / "hadoop"
    hadoop.write_text("#!/bin/sh\necho 'ls: no NameNode here' >&2\nexit 1\n")
    hadoop.chmod(0o755)
    monkeypatch.setenv("HCOLLECTIVES_NATIVE_HDFS", "0")
    count = mrjob_hdfs.count_input_files
    assert count([str(tmp_path / "points-*.csv")], [str(hadoop)]) == 4
    assert count([str(tmp_path / "points-*.csv"), str(tmp_path / "more")], [str(hadoop)]) == 6
    # What cannot be listed (no match, an HDFS that does not answer) counts once: a lower bound.
    assert count([str(tmp_path / "none-*.csv"), "hdfs://nowhere:1/x/*"], [str(hadoop)]) == 2
