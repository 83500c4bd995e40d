"""What the driver reads from the Hadoop client configuration.

On ``-r hadoop`` the default store must be somewhere every node can reach:
under the job's HDFS temp directory, as mrjob's own files are
(``hdfs:///user/<user>/tmp/mrjob/...``), here ``.../tmp/hcollectives/<session>``.
"""

from __future__ import annotations

import getpass
import os
import socket
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from ..errors import ConfigurationError


def _conf_dirs(env: Mapping[str, str]) -> list[str]:
    dirs = []
    if env.get("HADOOP_CONF_DIR"):
        dirs.append(env["HADOOP_CONF_DIR"])
    for home in ("HADOOP_HOME", "HADOOP_PREFIX", "HADOOP_INSTALL"):
        if env.get(home):
            dirs.append(os.path.join(env[home], "etc", "hadoop"))
    return dirs


def conf_value(file: str, names: tuple[str, ...], env: Mapping[str, str] = os.environ) -> str | None:
    """The first of *names* set in the first *file* (e.g. core-site.xml) that sets one."""
    for directory in _conf_dirs(env):
        path = os.path.join(directory, file)
        if not os.path.exists(path):
            continue
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as exc:
            raise ConfigurationError(f"cannot parse {path}: {exc}") from None
        for prop in root.iter("property"):
            if (prop.findtext("name") or "").strip() in names:
                return (prop.findtext("value") or "").strip() or None
    return None


def default_fs(env: Mapping[str, str] = os.environ) -> str | None:
    """fs.defaultFS from the first core-site.xml found (None if none names it)."""
    return conf_value("core-site.xml", ("fs.defaultFS", "fs.default.name"), env)


RM_WEB_PORT = 8088  # yarn.resourcemanager.webapp.address's default port


def resource_manager_web(env: Mapping[str, str] = os.environ) -> str | None:
    """host:port of the ResourceManager's web service (yarn-site.xml), None if not configured.
    Most clusters set only ``yarn.resourcemanager.hostname``; the address then defaults, as
    in Hadoop's yarn-default.xml, to that host and port 8088."""
    address = conf_value("yarn-site.xml", ("yarn.resourcemanager.webapp.address",), env)
    if address and "${" not in address:
        return address
    host = conf_value("yarn-site.xml", ("yarn.resourcemanager.hostname",), env)
    return f"{host}:{RM_WEB_PORT}" if host and "${" not in host else None


def temporary_store_base(env: Mapping[str, str] = os.environ, tmp_dir: str | None = None) -> str | None:
    """Base URL of the per-run store on a Hadoop cluster, or None if HDFS is not the default FS.

    *tmp_dir* is mrjob's --hadoop-tmp-dir if the user set one (absolute
    ``hdfs://`` URL, or a path relative to the user's HDFS home, as mrjob reads it).
    """
    fs = default_fs(env)
    if not fs or not fs.startswith(("hdfs://", "viewfs://")):
        return None
    fs = fs.rstrip("/")
    if tmp_dir and "://" in tmp_dir:
        return tmp_dir.rstrip("/") + "/hcollectives"
    user = env.get("HADOOP_USER_NAME") or getpass.getuser()
    if tmp_dir and tmp_dir.startswith("/"):
        return f"{fs}{tmp_dir.rstrip('/')}/hcollectives"
    return f"{fs}/user/{user}/{(tmp_dir or 'tmp').strip('/')}/hcollectives"


def _cluster_endpoints(env: Mapping[str, str]) -> list[tuple[str, int]]:
    """(host, port) of the ResourceManager and the NameNode, as the client configuration names them."""
    found = []
    rm = conf_value("yarn-site.xml", ("yarn.resourcemanager.address",), env)
    if not rm:
        host = conf_value("yarn-site.xml", ("yarn.resourcemanager.hostname",), env)
        rm = f"{host}:8032" if host else None
    fs = default_fs(env)
    if fs and "://" in fs:
        fs = fs.split("://", 1)[1].split("/", 1)[0]
        fs = fs if ":" in fs else f"{fs}:8020"
    for endpoint in (rm, fs):
        host, _, port = (endpoint or "").rpartition(":")
        if host and port.isdigit() and "${" not in host:
            found.append((host, int(port)))
    return found


def address_seen_by_cluster(env: Mapping[str, str] = os.environ) -> str | None:
    """This machine's address on the network that leads to the cluster (None if unknown).

    The driver's coordinator must be reachable from every NodeManager: the
    address tasks dial is the one this host uses to reach the ResourceManager
    (or the NameNode). A connected UDP socket tells it without sending
    anything; on a single-host cluster on loopback it is 127.0.0.1.
    """
    for host, port in _cluster_endpoints(env):
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect(sockaddr)
                return probe.getsockname()[0]
        except OSError:
            continue
    return None
