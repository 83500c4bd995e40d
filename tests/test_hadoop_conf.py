"""The default store on -r hadoop follows the client configuration's fs.defaultFS."""

import getpass

import pytest

from hcollectives import ConfigurationError
from hcollectives.hadoop.hadoop_conf import default_fs, temporary_store_base


def write_core_site(directory, default):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "core-site.xml").write_text(
        "<?xml version='1.0'?><configuration>"
        "<property><name>hadoop.tmp.dir</name><value>/x</value></property>"
        f"<property><name>fs.defaultFS</name><value>{default}</value></property>"
        "</configuration>")


def test_hdfs_default_fs_gives_a_store_under_the_users_hdfs_tmp(tmp_path):
    write_core_site(tmp_path / "conf", "hdfs://nn.example:8020")
    env = {"HADOOP_CONF_DIR": str(tmp_path / "conf")}
    assert default_fs(env) == "hdfs://nn.example:8020"
    assert temporary_store_base(env) == f"hdfs://nn.example:8020/user/{getpass.getuser()}/tmp/hcollectives"
    env["HADOOP_USER_NAME"] = "alice"
    assert temporary_store_base(env) == "hdfs://nn.example:8020/user/alice/tmp/hcollectives"


@pytest.mark.parametrize("tmp_dir, expected", [
    ("hdfs://other:9000/scratch", "hdfs://other:9000/scratch/hcollectives"),
    ("/scratch/mrjob", "hdfs://nn:8020/scratch/mrjob/hcollectives"),
    ("tmp/mrjob", "hdfs://nn:8020/user/bob/tmp/mrjob/hcollectives"),
])
def test_mrjob_hadoop_tmp_dir_is_followed(tmp_path, tmp_dir, expected):
    write_core_site(tmp_path, "hdfs://nn:8020/")
    env = {"HADOOP_CONF_DIR": str(tmp_path), "HADOOP_USER_NAME": "bob"}
    assert temporary_store_base(env, tmp_dir=tmp_dir) == expected


def test_no_hdfs_means_no_cluster_store(tmp_path):
    assert temporary_store_base({}) is None
    write_core_site(tmp_path / "etc" / "hadoop", "file:///")
    assert temporary_store_base({"HADOOP_HOME": str(tmp_path)}) is None


def test_broken_core_site_is_named(tmp_path):
    (tmp_path / "core-site.xml").write_text("<configuration><property>")
    with pytest.raises(ConfigurationError, match="core-site.xml"):
        default_fs({"HADOOP_CONF_DIR": str(tmp_path)})
