"""docker/compose.yaml, the users' Hadoop cluster: syntax and consistency, no Docker needed.

No Docker engine runs where these tests run, so nothing here starts a
container. What can be checked is that the files agree with each other and
with the code: the services that docs/docker.md describes, one node daemon per
NodeManager in that NodeManager's network namespace, daemon command lines
that the real CLI accepts, the same secret path everywhere, the documented
job command accepted by the real job, and the paths the build needs.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from conftest import ROOT

import yaml  # noqa: E402 -- PyYAML is in the test extra; a missing one must fail, not skip

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCS = ROOT / "docs" / "docker.md"
SECRETS_DIR = "/run/secrets"  # where compose mounts a service's secrets
HONEST = ("No Docker engine runs on the machines where hcollectives is developed and tested: this compose "
          "file has been checked for syntax and consistency by tests/test_docker.py, but it has never been started.")


# -- reading the files ------------------------------------------------------------------

def load_compose(text: str | None = None) -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text() if text is None else text)  # safe_load resolves `<<` merges


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def secret_mounts(service: dict[str, Any]) -> dict[str, str]:
    """secret name -> the path compose mounts it at in this service."""
    mounts = {}
    for entry in service.get("secrets") or []:
        if isinstance(entry, str):
            mounts[entry] = f"{SECRETS_DIR}/{entry}"
        else:
            target = entry.get("target", entry["source"])
            mounts[entry["source"]] = target if target.startswith("/") else f"{SECRETS_DIR}/{target}"
    return mounts


def nodemanagers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if command(s)[:2] == ["yarn", "nodemanager"]}


def daemons(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if command(s)[:2] == ["hcollectives", "node"]}


def parse_daemon(service: dict[str, Any]):
    from hcollectives.cli import build_parser

    try:
        return build_parser().parse_args(command(service)[1:])  # without the leading `hcollectives`
    except SystemExit:
        pytest.fail(f"`hcollectives` rejects the daemon command {command(service)} (its error is above)")


def nodemanager_port(nm: dict[str, Any]) -> int:
    address = environment(nm).get("YARN-SITE.XML_yarn.nodemanager.address")
    assert address, "a NodeManager needs a fixed yarn.nodemanager.address (tasks' node id is NM_HOST:NM_PORT)"
    port = int(address.rsplit(":", 1)[1])
    assert port != 0, "an ephemeral NodeManager port cannot match the daemon's --node-id"
    return port


def docs_service_table(text: str) -> list[str]:
    """First column of the table under '## Services' (names in backticks)."""
    section = text.split("\n## Services", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\|\s*`([^`]+)`\s*\|", section, flags=re.M)


def docs_job_command(text: str) -> list[str]:
    """The documented `examples/kmeans.py -r hadoop` command, as argv."""
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if "examples/kmeans.py" in line and "-r hadoop" in line:
                return shlex.split(line)
    raise AssertionError("docs/docker.md shows no `examples/kmeans.py -r hadoop` command")


def option(argv: list[str], name: str) -> str:
    assert name in argv, f"the documented job command has no {name}"
    return argv[argv.index(name) + 1]


# -- the services -----------------------------------------------------------------------

def test_docs_service_table_names_exactly_the_compose_services(compose):
    documented = docs_service_table(DOCS.read_text())
    assert len(documented) == len(set(documented)), f"a service appears twice in the table: {documented}"
    in_compose = set(compose["services"])
    assert not set(documented) - in_compose, f"documented but not in compose.yaml: {set(documented) - in_compose}"
    assert not in_compose - set(documented), f"in compose.yaml but not documented: {in_compose - set(documented)}"


def test_docs_say_plainly_the_cluster_was_never_started():
    assert HONEST in DOCS.read_text()


def test_one_node_daemon_per_nodemanager_in_its_network_namespace(compose):
    nms, ds = nodemanagers(compose), daemons(compose)
    assert len(nms) >= 2, f"a collective needs >= 2 nodes; NodeManagers: {sorted(nms)}"
    owners = {}
    for name, service in ds.items():
        mode = service.get("network_mode", "")
        assert mode.startswith("service:"), f"{name}: network_mode must be service:<its NodeManager>, not {mode!r}"
        owners[name] = mode.removeprefix("service:")
        assert owners[name] in nms, f"{name} shares the network of {owners[name]!r}, which is no NodeManager"
    for nm in nms:
        mine = [d for d, owner in owners.items() if owner == nm]
        assert len(mine) == 1, f"NodeManager {nm} has {len(mine)} node daemons ({mine}); it needs exactly one"
        assert nm in (ds[mine[0]].get("depends_on") or []), f"{mine[0]} must start after {nm}"


def test_node_daemon_commands_parse_and_name_their_nodemanager(compose):
    nms, ds = nodemanagers(compose), daemons(compose)
    ports = set()
    for name, service in ds.items():
        nm_name = service["network_mode"].removeprefix("service:")
        nm = nms[nm_name]
        args = parse_daemon(service)
        assert args.subcommand == "node"
        assert args.advertise_host == nm_name, f"{name}: peers must dial it as {nm_name}, not {args.advertise_host}"
        # Tasks dial 127.0.0.1, peers dial the NodeManager's address: only 0.0.0.0 serves both.
        assert args.bind_host == "0.0.0.0", f"{name}: --bind-host {args.bind_host} misses tasks or peers"
        assert args.port, f"{name}: a service needs a fixed --port (tasks are told it with --node-service)"
        node_host, _, node_port = args.node_id.rpartition(":")
        assert node_host == nm.get("hostname", nm_name), f"{name}: --node-id {args.node_id} names another host"
        assert int(node_port) == nodemanager_port(nm), \
            f"{name}: --node-id port {node_port} is not {nm_name}'s port {nodemanager_port(nm)}"
        assert args.rendezvous is None and not args.exit_when_idle, f"{name} must run as a long-lived service"
        ports.add(args.port)
    assert len(ports) == 1, f"tasks find the daemon at one --node-service address on every node: ports {ports}"


def test_secret_is_mounted_where_daemons_tasks_and_driver_read_it(compose):
    (secret_name, secret), = compose["secrets"].items()
    secret_file = (DOCKER / secret["file"]).resolve()
    relative = secret_file.relative_to(ROOT).as_posix()
    assert secret_file.parent == DOCKER and secret_file.name in (DOCKER / ".gitignore").read_text().split(), \
        f"{relative} must be in docker/.gitignore: each user generates their own secret"
    assert f"> {relative}" in DOCS.read_text(), f"docs/docker.md must show the command that writes {relative}"

    paths = set()
    for name, service in daemons(compose).items():
        mounts = secret_mounts(service)
        assert secret_name in mounts, f"{name} does not mount the secret {secret_name}"
        assert str(parse_daemon(service).secret_file) == mounts[secret_name], \
            f"{name}: --secret-file is not where compose mounts {secret_name} ({mounts[secret_name]})"
        paths.add(mounts[secret_name])
    # Tasks (on the NodeManagers) and the driver (on the edge node) read it at the same path.
    for name in [*nodemanagers(compose), "edge"]:
        paths.add(secret_mounts(compose["services"][name]).get(secret_name, f"<{name}: not mounted>"))
    paths.add(option(docs_job_command(DOCS.read_text()), "--secret-file"))
    assert len(paths) == 1, f"the secret must be at one path on every node and in the docs: {sorted(paths)}"


def test_documented_job_command_is_accepted_by_the_job_and_fits_the_cluster(compose):
    from hcollectives.bench.examples import load_example

    argv = docs_job_command(DOCS.read_text())
    script = argv.index(next(a for a in argv if a.endswith("examples/kmeans.py")))
    try:
        job = load_example("kmeans").MRKMeans(args=argv[script + 1:])
    except (SystemExit, ValueError):  # mrjob's parser raises ValueError where argparse exits
        pytest.fail(f"examples/kmeans.py rejects the command in docs/docker.md: {shlex.join(argv)}")
    o = job.options
    assert o.runner == "hadoop"
    port = {parse_daemon(s).port for s in daemons(compose).values()}.pop()
    assert o.node_service == f"127.0.0.1:{port}", "tasks reach their node's daemon on loopback at its --port"
    assert o.coordinator_host in compose["services"] and o.coordinator_host != "127.0.0.1", \
        f"--coordinator-host {o.coordinator_host}: the daemons must reach the driver by a service name"
    assert secret_mounts(compose["services"][o.coordinator_host]), "the driver's host must mount the secret"
    venv = re.search(r"uv venv .* (/\S+)\s*$", (DOCKER / "Dockerfile").read_text(), flags=re.M)
    assert venv and o.python_bin == f"{venv.group(1)}/bin/python", \
        "tasks must run the image's interpreter, the one hcollectives is installed in"
    assert argv[0] == o.python_bin, "the driver runs with the same interpreter"
    store = urlsplit(o.checkpoint_uri)
    assert store.scheme == "hdfs" and store.hostname in compose["services"], \
        "the store must be reachable from every node"


# -- Hadoop configuration -------------------------------------------------------------

def test_yarn_and_mapreduce_settings(compose):
    services = compose["services"]
    for name, nm in nodemanagers(compose).items():
        env = environment(nm)
        assert env.get("MAPRED-SITE.XML_mapreduce.framework.name") == "yarn"
        assert "mapreduce_shuffle" in env.get("YARN-SITE.XML_yarn.nodemanager.aux-services", "").split(",")
        assert env.get("YARN-SITE.XML_yarn.nodemanager.container-executor.class", "").endswith(
            ".DefaultContainerExecutor"), f"{name}: see the LinuxContainerExecutor note in compose.yaml"
        assert "/share/hadoop/mapreduce/" in env.get("MAPRED-SITE.XML_mapreduce.application.classpath", "")
        nm_memory = int(env["YARN-SITE.XML_yarn.nodemanager.resource.memory-mb"])
        am = int(env["MAPRED-SITE.XML_yarn.app.mapreduce.am.resource.mb"])
        task = int(env["MAPRED-SITE.XML_mapreduce.map.memory.mb"])
        assert nm_memory >= 2 * am + task, f"{name}: {nm_memory} MB cannot hold two AMs and a map task"
        assert task <= int(env["YARN-SITE.XML_yarn.scheduler.maximum-allocation-mb"])
        assert nm.get("hostname", name) == name, f"{name}: NM_HOST must be the name peers resolve"
    for name, service in services.items():
        if name in daemons(compose):
            continue  # a node daemon reads no Hadoop configuration
        env = environment(service)
        fs = env.get("CORE-SITE.XML_fs.defaultFS")
        assert fs, f"{name}: no fs.defaultFS (every Hadoop service and the client need the configuration)"
        assert urlsplit(fs).hostname in services, f"{name}: fs.defaultFS {fs} names no service"
        assert env["HDFS-SITE.XML_dfs.namenode.rpc-address"] == urlsplit(fs).netloc
        for key in ("YARN-SITE.XML_yarn.resourcemanager.hostname", "MAPRED-SITE.XML_mapreduce.jobhistory.address"):
            assert env[key].split(":")[0] in services, f"{name}: {key}={env[key]} names no service"


def test_environment_values_are_strings_and_nothing_is_interpolated(compose):
    def strings(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node

    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            # Compose rejects YAML booleans in `environment`; quote them.
            assert isinstance(value, (str, int, float)) and not isinstance(value, bool), f"{name}: {key}={value!r}"
    for text in strings(compose):
        assert not re.search(r"(?<!\$)\$(?!\$)", text), f"compose would substitute the $ in {text!r}"


# -- build ------------------------------------------------------------------------------

def test_build_paths_exist_and_the_cluster_runs_one_hadoop_release(compose):
    services = compose["services"]
    built = {name: s for name, s in services.items() if "build" in s}
    assert set(nodemanagers(compose)) | set(daemons(compose)) | {"edge"} <= set(built), \
        "NodeManagers, node daemons and the edge node need the image with hcollectives"
    hadoop_images = {s["image"] for s in services.values() if "build" not in s}
    for name, service in built.items():
        build = service["build"]
        context = (DOCKER / (build if isinstance(build, str) else build.get("context", "."))).resolve()
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        assert (context / "pyproject.toml").is_file(), f"{name}: the context must be the repository (pip install)"
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        assert ignore.is_file(), f"{ignore} keeps the virtualenv and docker/secret.hex out of the build context"
        rules = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
        assert rules[0] == "*" and not any(r.startswith("!docker") for r in rules), \
            f"{ignore}: send nothing but an allowlist (never docker/secret.hex)"
        args = build.get("args", {}) if isinstance(build, dict) else {}
        assert {args.get("HADOOP_IMAGE")} == hadoop_images, \
            f"{name}: built on {args.get('HADOOP_IMAGE')}, but the other services run {hadoop_images}"
    assert len({s.get("image") for s in built.values()}) == 1, "the built services must share one image name"


def test_image_python_fits_requires_python():
    from packaging.specifiers import SpecifierSet

    found = re.search(r"^ARG PYTHON_VERSION=(\S+)$", (DOCKER / "Dockerfile").read_text(), flags=re.M)
    assert found, "docker/Dockerfile must pin its Python with ARG PYTHON_VERSION"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert found.group(1) in SpecifierSet(requires), f"Python {found.group(1)} is outside {requires}"


def test_references_between_services_exist(compose):
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or []
        for dep in depends if isinstance(depends, list) else list(depends):
            assert dep in services, f"{name} depends on {dep!r}, which is no service"
        mode = service.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.removeprefix("service:") in services, f"{name}: {mode} names no service"
            # A container in another's network namespace cannot have its own name or ports.
            assert not {"hostname", "ports", "networks"} & set(service), f"{name}: {mode} conflicts with its keys"
        for secret in secret_mounts(service):
            assert secret in (compose.get("secrets") or {}), f"{name} mounts an undeclared secret {secret!r}"
