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


def _yarn_site(tmp_path, **props) -> dict:
    conf = tmp_path / "conf"
    conf.mkdir(exist_ok=True)
    body = "".join(f"<property><name>{k}</name><value>{v}</value></property>" for k, v in props.items())
    (conf / "yarn-site.xml").write_text(f"<configuration>{body}</configuration>")
    return {"HADOOP_CONF_DIR": str(conf)}


def test_the_coordinator_is_advertised_on_the_address_towards_the_resource_manager(tmp_path):
    from hcollectives.hadoop.hadoop_conf import address_seen_by_cluster

    env = _yarn_site(tmp_path, **{"yarn.resourcemanager.address": "127.0.0.1:18032"})
    assert address_seen_by_cluster(env) == "127.0.0.1"  # a one-host cluster on loopback
    env = _yarn_site(tmp_path, **{"yarn.resourcemanager.hostname": "localhost"})
    assert address_seen_by_cluster(env) in ("127.0.0.1", "::1")
    env = _yarn_site(tmp_path, **{"yarn.resourcemanager.address": "no-such-host.invalid:8032"})
    assert address_seen_by_cluster(env) is None
    assert address_seen_by_cluster({}) is None


def test_coordinator_host_defaults(tmp_path, monkeypatch):
    """127.0.0.1 off a cluster; on -r hadoop the address the cluster reaches this machine by."""
    from types import SimpleNamespace

    from hcollectives.driver.options import loop_options_from_args

    options = SimpleNamespace(resume=False, checkpoint_uri="file:///tmp/x", speculative=True, max_iterations=2,
                              local_nodes=1, fanout=2, fallback_timeout=1.0, iteration_timeout=10.0,
                              coordinator_host=None, node_service=None, secret_file=None)
    collective = SimpleNamespace(name="allreduce", op="sum", allow_nonfinite=False)
    assert loop_options_from_args(options, collective, runner="local").coordinator_host == "127.0.0.1"
    for key, value in _yarn_site(tmp_path, **{"yarn.resourcemanager.address": "127.0.0.1:18032"}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("hcollectives.hadoop.hadoop_conf.address_seen_by_cluster", lambda env=None: "10.1.2.3")
    assert loop_options_from_args(options, collective, runner="hadoop").coordinator_host == "10.1.2.3"
    options.coordinator_host = "edge.example"
    assert loop_options_from_args(options, collective, runner="hadoop").coordinator_host == "edge.example"


def test_the_resource_managers_web_address_defaults_from_its_hostname(tmp_path):
    """Clusters usually set only yarn.resourcemanager.hostname (docker/image/conf does): the
    web address is then that host's port 8088, as Hadoop's own default says."""
    from hcollectives.hadoop.hadoop_conf import resource_manager_web

    def site(*props):
        (tmp_path / "yarn-site.xml").write_text("<configuration>" + "".join(
            f"<property><name>{n}</name><value>{v}</value></property>" for n, v in props) + "</configuration>")
        return resource_manager_web({"HADOOP_CONF_DIR": str(tmp_path)})

    assert site(("yarn.resourcemanager.hostname", "rm")) == "rm:8088"
    assert site(("yarn.resourcemanager.hostname", "rm"), ("yarn.resourcemanager.webapp.address", "rm:9999")) == "rm:9999"
    assert site(("yarn.resourcemanager.webapp.address", "${yarn.resourcemanager.hostname}:8088"),
                ("yarn.resourcemanager.hostname", "rm")) == "rm:8088"
    assert site() is None
