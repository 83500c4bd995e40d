"""docker/compose.yaml, the users' Hadoop cluster: consistency checks, and a real start.

The checks at the top need no Docker: the files agree with each other and with the
code (services that docs/docker.md describes, one node daemon per NodeManager in its
network namespace, daemon command lines the real CLI accepts, one secret path
everywhere, Hadoop and mrjob configuration that names real services and paths).

`test_cluster_runs_the_documented_kmeans` (marked `docker`) builds the images
(docker/build.sh, reusing what exists), starts the cluster with docker-compose under
a project name of its own, waits (bounded) for HDFS and YARN, runs the K-means
walkthrough of docs/docker.md on the edge node exactly as written there, and checks
the result against numpy. Whatever happens, it removes the cluster's containers,
network and volumes and its temporary files. Without Docker it skips, unless CI=true:
then it fails, since .ci/run starts the engine (docker/engine.sh).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np
import pytest

from conftest import BOOM_JOB, ROOT, kmeans_reference

import yaml  # noqa: E402 -- PyYAML is in the test extra; a missing one must fail, not skip

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
CONF = DOCKER / "image" / "conf"
MRJOB_CONF = DOCKER / "image" / "mrjob.conf"
DOCS = ROOT / "docs" / "docker.md"
README = ROOT / "README.md"
SECRETS_DIR = "/run/secrets"  # where compose mounts a service's secrets
IMAGE = "hcollectives-hadoop:local"
SECRET_DEFAULT = "${HCOLLECTIVES_SECRET_FILE:-./secret.hex}"  # the one substitution compose.yaml makes
# Marks the docs' code block that this test runs on the edge node, line for line.
WALKTHROUGH_MARK = "<!-- tests/test_docker.py runs this block on the edge node -->"
EDGE_WORKDIR = "/home/hadoop/kmeans"  # where the walkthrough works (its first line goes there)


# -- reading the files ------------------------------------------------------------------

def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # safe_load resolves `<<` merges


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


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


def cli_parser():
    """The `hcollectives` command's parser, found through pyproject's entry point (so the
    check follows the CLI module wherever the package layout puts it)."""
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["hcollectives"]
    module = importlib.import_module(target.split(":")[0])
    return module.build_parser()


def parse_daemon(service: dict[str, Any]):
    try:
        return cli_parser().parse_args(command(service)[1:])  # without the leading `hcollectives`
    except SystemExit:
        pytest.fail(f"`hcollectives` rejects the daemon command {command(service)} (its error is above)")


def hadoop_conf(name: str) -> dict[str, str]:
    """name -> value of docker/image/conf/<name>-site.xml (or <name>.xml)."""
    path = CONF / (f"{name}.xml" if (CONF / f"{name}.xml").exists() else f"{name}-site.xml")
    root = ET.parse(path).getroot()
    return {p.findtext("name"): p.findtext("value") for p in root.iter("property")}


def docs_service_table(text: str) -> list[str]:
    """First column of the table under '## Services' (names in backticks)."""
    section = text.split("\n## Services", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\|\s*`([^`]+)`\s*\|", section, flags=re.M)


def docs_walkthrough(text: str = "") -> list[str]:
    """The shell lines of the docs' edge-node walkthrough (continuations joined)."""
    text = text or DOCS.read_text()
    assert WALKTHROUGH_MARK in text, f"docs/docker.md lost its marker {WALKTHROUGH_MARK!r}"
    block = re.match(r"\s*```sh\n(.*?)```", text.split(WALKTHROUGH_MARK, 1)[1], flags=re.S)
    assert block, "the walkthrough marker must stand right before a ```sh block"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def docs_job_commands() -> list[list[str]]:
    """The walkthrough's `examples/kmeans.py -r hadoop` commands, as argv: bare, then with node services."""
    found = [shlex.split(line) for line in docs_walkthrough() if "examples/kmeans.py" in line and "-r hadoop" in line]
    assert len(found) == 2, "the docs' walkthrough runs examples/kmeans.py twice: bare, then with node services"
    return found


def option(argv: list[str], name: str) -> str:
    assert name in argv, f"the documented job command has no {name}"
    return argv[argv.index(name) + 1]


def load_kmeans_job():
    """examples/kmeans.py's job class, loaded from the file (as the edge node runs it)."""
    spec = importlib.util.spec_from_file_location("docker_kmeans_example", ROOT / "examples" / "kmeans.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MRKMeans


# -- the services -----------------------------------------------------------------------

def test_docs_service_table_names_exactly_the_compose_services(compose):
    documented = docs_service_table(DOCS.read_text())
    assert len(documented) == len(set(documented)), f"a service appears twice in the table: {documented}"
    in_compose = set(compose["services"])
    assert not set(documented) - in_compose, f"documented but not in compose.yaml: {set(documented) - in_compose}"
    assert not in_compose - set(documented), f"in compose.yaml but not documented: {in_compose - set(documented)}"


def test_docs_no_longer_say_the_cluster_was_never_started():
    for path in (DOCS, README, COMPOSE, DOCKERFILE):
        text = " ".join(path.read_text().split())
        assert not re.search(r"never (been )?started", text, flags=re.I), \
            f"{path.relative_to(ROOT)} still says the cluster was never started; tests/test_docker.py starts it"


def test_every_service_runs_the_one_image_built_by_build_sh(compose):
    build_sh = (DOCKER / "build.sh").read_text()
    assert f"IMAGE={IMAGE}\n" in build_sh
    for name, service in compose["services"].items():
        assert service.get("image") == IMAGE, f"{name} runs {service.get('image')}, not {IMAGE}"
        # docker/build.sh is the one way to build it (base image and jars come first).
        assert "build" not in service, f"{name}: compose cannot build the image (docker/build.sh does)"


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
    address = hadoop_conf("yarn")["yarn.nodemanager.address"]
    nm_port = int(address.rsplit(":", 1)[1])
    assert nm_port != 0, "an ephemeral NodeManager port cannot match the daemons' --node-id"
    ports = set()
    for name, service in ds.items():
        nm_name = service["network_mode"].removeprefix("service:")
        args = parse_daemon(service)
        assert args.subcommand == "node"
        assert args.advertise_host == nm_name, f"{name}: peers must dial it as {nm_name}, not {args.advertise_host}"
        # Tasks dial 127.0.0.1, peers dial the NodeManager's address: only 0.0.0.0 serves both.
        assert args.bind_host == "0.0.0.0", f"{name}: --bind-host {args.bind_host} misses tasks or peers"
        assert args.port, f"{name}: a service needs a fixed --port (tasks are told it with --node-service)"
        node_host, _, node_port = args.node_id.rpartition(":")
        assert node_host == nms[nm_name].get("hostname", nm_name), f"{name}: --node-id {args.node_id} names another host"
        assert int(node_port) == nm_port, f"{name}: --node-id port {node_port} is not the NodeManagers' {nm_port}"
        assert args.rendezvous is None and not args.exit_when_idle, f"{name} must run as a long-lived service"
        ports.add(args.port)
    assert len(ports) == 1, f"tasks find the daemon at one --node-service address on every node: ports {ports}"


def test_secret_is_mounted_where_daemons_tasks_and_driver_read_it(compose):
    (secret_name, secret), = compose["secrets"].items()
    assert secret["file"] == SECRET_DEFAULT, "the secret file: ./secret.hex unless HCOLLECTIVES_SECRET_FILE says"
    secret_file = (DOCKER / "secret.hex").resolve()
    assert "secret.hex" in (DOCKER / ".gitignore").read_text().split(), \
        "docker/secret.hex must be in docker/.gitignore: each user generates their own secret"
    assert "docker/secret.hex" in DOCS.read_text(), "docs/docker.md must say where the secret is"
    script = (DOCKER / "compose.sh").read_text()
    assert '$DOCKER_DIR/secret.hex' in script and '> "$SECRET"' in script, \
        "docker/compose.sh up must write the secret where compose.yaml looks by default"
    assert secret_file.parent == DOCKER

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
    paths.add(option(docs_job_commands()[1], "--secret-file"))
    assert len(paths) == 1, f"the secret must be at one path on every node and in the docs: {sorted(paths)}"


def _parse_job(argv: list[str]):
    script = argv.index(next(a for a in argv if a.endswith("examples/kmeans.py")))
    assert argv[:script] == ["python3"], "the driver runs with the edge node's `python3` (the image's virtualenv)"
    assert argv[script] == "/src/examples/kmeans.py" and "COPY examples /src/examples/" in DOCKERFILE.read_text()
    try:
        return load_kmeans_job()(args=argv[script + 1:]).options
    except (SystemExit, ValueError):  # mrjob's parser raises ValueError where argparse exits
        pytest.fail(f"examples/kmeans.py rejects the command in docs/docker.md: {shlex.join(argv)}")


def test_documented_job_commands_are_accepted_by_the_job_and_fit_the_cluster(compose):
    bare, with_services = docs_job_commands()
    o = _parse_job(bare)
    assert o.runner == "hadoop"
    # A bare -r hadoop: mrjob's settings come from the image's mrjob.conf, as on any configured
    # cluster, and hcollectives finds the coordinator's address and the daemons itself.
    for flag in ("--hadoop-bin", "--hadoop-streaming-jar", "--python-bin", "--coordinator-host", "--node-service",
                 "--secret-file"):
        assert flag not in bare, f"{flag} on the bare command line: a user's cluster would not need it"
    assert o.max_iterations == 3 and o.result, "the walkthrough is what the test runs: 3 iterations, a --result"
    o = _parse_job(with_services)
    port = {parse_daemon(s).port for s in daemons(compose).values()}.pop()
    assert o.node_service == f"127.0.0.1:{port}", "tasks reach their node's daemon on loopback at its --port"
    assert secret_mounts(compose["services"]["edge"]), "the driver's host must mount the secret"
    assert o.secret_file == "/run/secrets/hcollectives_secret"


def test_no_host_port_is_published(compose):
    # The host's ports stay free (the mini-cluster's fixed loopback ports among them):
    # users work from the edge node, on the cluster's own network.
    for name, service in compose["services"].items():
        assert not service.get("ports"), f"{name} publishes {service['ports']}"
        assert service.get("network_mode") in (None, *[f"service:{n}" for n in compose["services"]]), \
            f"{name}: network_mode {service.get('network_mode')} would share the host's network"
    assert set(compose["networks"]) == {"cluster"}


def test_only_the_secret_file_is_substituted():
    # compose substitutes every $ it sees; the one intended is HCOLLECTIVES_SECRET_FILE.
    text = COMPOSE.read_text().replace(SECRET_DEFAULT, "")
    assert not re.search(r"\$(?!\$)", text), "compose.yaml would substitute a $ other than the secret file's"


def test_references_between_services_exist(compose):
    services = compose["services"]
    for name, service in services.items():
        for dep in service.get("depends_on") or []:
            assert dep in services, f"{name} depends on {dep!r}, which is no service"
        mode = service.get("network_mode", "")
        if mode.startswith("service:"):
            assert mode.removeprefix("service:") in services, f"{name}: {mode} names no service"
            # A container in another's network namespace cannot have its own name, ports or networks.
            assert not {"hostname", "ports", "networks"} & set(service), f"{name}: {mode} conflicts with its keys"
        else:
            assert service.get("hostname") == name, f"{name}: the configuration names hosts by service name"
        for secret in secret_mounts(service):
            assert secret in (compose.get("secrets") or {}), f"{name} mounts an undeclared secret {secret!r}"


# -- Hadoop and mrjob configuration -----------------------------------------------------

def test_hadoop_configuration_parses_and_names_the_services(compose):
    services = compose["services"]
    for path in CONF.glob("*.xml"):
        ET.parse(path)  # e.g. "--" inside an XML comment stops every daemon at start-up
    core, hdfs, yarn, mapred = (hadoop_conf(n) for n in ("core", "hdfs", "yarn", "mapred"))
    fs = urlsplit(core["fs.defaultFS"])
    assert fs.scheme == "hdfs" and fs.hostname in services
    assert command(services[fs.hostname]) == ["hdfs", "namenode"]
    assert hdfs["dfs.namenode.rpc-address"] == fs.netloc
    assert command(services[yarn["yarn.resourcemanager.hostname"]]) == ["yarn", "resourcemanager"]
    assert command(services[mapred["mapreduce.jobhistory.address"].split(":")[0]]) == ["mapred", "historyserver"]
    assert mapred["mapreduce.framework.name"] == "yarn"
    assert "mapreduce_shuffle" in yarn["yarn.nodemanager.aux-services"].split(",")
    assert yarn["yarn.nodemanager.container-executor.class"].endswith(".DefaultContainerExecutor"), \
        "see the LinuxContainerExecutor note in compose.yaml"
    nm_memory = int(yarn["yarn.nodemanager.resource.memory-mb"])
    am, task = int(mapred["yarn.app.mapreduce.am.resource.mb"]), int(mapred["mapreduce.map.memory.mb"])
    assert nm_memory >= 2 * am + task, f"{nm_memory} MB cannot hold two AMs and a map task (speculation)"
    assert task <= int(yarn["yarn.scheduler.maximum-allocation-mb"])
    assert mapred["mapreduce.jvm.add-opens-as-default"] == "true", "Java 17 AMs and tasks need the opens"
    assert "/opt/hadoop/lib/*" in yarn["yarn.application.classpath"].split(",")
    # HDFS lives in the named volumes mounted at /var/lib/hadoop.
    for key in ("dfs.namenode.name.dir", "dfs.datanode.data.dir"):
        assert hdfs[key].startswith("file:///var/lib/hadoop/"), key
    for name in ("namenode", "datanode"):
        assert f"{name}:/var/lib/hadoop" in services[name]["volumes"]
    capacity = hadoop_conf("capacity-scheduler")
    assert float(capacity["yarn.scheduler.capacity.maximum-am-resource-percent"]) >= 0.5, \
        "two ApplicationMasters at once (speculative scheduling)"


def test_mrjob_conf_points_into_the_image():
    conf = yaml.safe_load(MRJOB_CONF.read_text())["runners"]["hadoop"]
    dockerfile = DOCKERFILE.read_text()
    venv = re.search(r"python3 -m venv (\S+)", dockerfile)
    assert venv and conf["python_bin"] == f"{venv.group(1)}/bin/python", \
        "tasks must run the interpreter hcollectives is installed in"
    assert conf["hadoop_bin"] == "/opt/hadoop/bin/hadoop" and "COPY docker/image/bin/hadoop /opt/hadoop/bin/hadoop" in dockerfile
    assert f"/opt/hadoop/lib/hadoop-streaming-*.jar {conf['hadoop_streaming_jar']}" in dockerfile
    assert "COPY docker/image/mrjob.conf /etc/mrjob.conf" in dockerfile and "MRJOB_CONF=/etc/mrjob.conf" in dockerfile


# -- the real thing -------------------------------------------------------------------------

def _docker_binaries() -> tuple[str, str]:
    """(docker, docker-compose), or skip -- fail under CI=true, where .ci/run starts the engine."""
    # Debian's client, the engine's own release: a newer one may come first on PATH.
    docker = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
    compose_bin = shutil.which("docker-compose")
    problem = None
    if not docker or not compose_bin:
        problem = "docker and docker-compose are not installed (make docker-engine installs and starts them)"
    elif subprocess.run([docker, "version"], capture_output=True, timeout=30).returncode != 0:
        problem = "no Docker engine answers (make docker-engine starts one)"
    else:
        missing = [tool for tool in ("debootstrap", "mvn", "java") if shutil.which(tool) is None]
        if missing:
            problem = f"docker/build.sh needs {', '.join(missing)}"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {problem}")
        pytest.skip(problem)
    return docker, compose_bin


# Run on the edge node: live DataNodes and safe mode from the NameNode's JMX servlet, RUNNING
# NodeManagers from the ResourceManager's REST API (addresses from docker/image/conf).
CLUSTER_STATE = """
import json, urllib.request
def get(url):
    with urllib.request.urlopen(url, timeout=10) as reply:
        return json.load(reply)
nn = get("http://namenode:9870/jmx?qry=Hadoop:service=NameNode,name=NameNodeInfo")["beans"][0]
nodes = (get("http://resourcemanager:8088/ws/v1/cluster/nodes")["nodes"] or {}).get("node", [])
print(json.dumps({"datanodes": len(json.loads(nn["LiveNodes"])), "safemode": nn["Safemode"],
                  "nodemanagers": sorted(n["nodeHostName"] for n in nodes if n["state"] == "RUNNING")}))
"""


class Cluster:
    """One docker-compose project of docker/compose.yaml, started by this test."""

    def __init__(self, docker: str, compose_bin: str, workdir: Path) -> None:
        self.docker, self.compose_bin, self.workdir = docker, compose_bin, workdir
        self.project = f"hctest{os.getpid()}"  # never a user's running cluster (hcollectives)
        secret = workdir / "secret.hex"
        secret.write_text(os.urandom(32).hex() + "\n")
        secret.chmod(0o644)  # read in the containers by their `hadoop` user
        self.env = {**os.environ, "HCOLLECTIVES_SECRET_FILE": str(secret)}
        self.script_env = {**self.env, "COMPOSE_PROJECT_NAME": self.project}  # for docker/compose.sh
        self.times: dict[str, float] = {}

    def compose(self, *args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([self.compose_bin, "-f", str(COMPOSE), "-p", self.project, *args],
                              env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"docker-compose {shlex.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def edge(self, script: str, *, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        """Run a bash script on the edge node, as its user, in its home directory."""
        return self.compose("exec", "-T", "edge", "bash", "-e", "-c", script, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service, timeout=60).stdout.strip()
        assert cid, f"no container for {service}"
        return cid

    def stopped_services(self) -> set[str]:
        running = set(self.compose("ps", "--services", "--filter", "status=running", timeout=60).stdout.split())
        return set(load_compose()["services"]) - running

    def state(self, ready: Callable[[dict[str, Any]], bool]) -> tuple[bool, str]:
        """Ask the NameNode and the ResourceManager over HTTP, from the edge node, how far they
        are (a Python one-liner: a Hadoop CLI call costs a JVM start, seconds on a busy host)."""
        done = self.compose("exec", "-T", "edge", "python", "-c", CLUSTER_STATE, timeout=60, check=False)
        if done.returncode != 0:
            return False, done.stdout + done.stderr
        return ready(json.loads(done.stdout)), done.stdout

    def logs(self, *services: str, tail: int = 60) -> str:
        return self.compose("logs", "--no-color", f"--tail={tail}", *services, timeout=60, check=False).stdout

    def wait_for(self, what: str, probe: Callable[[], tuple[bool, str]], timeout: float) -> None:
        """Poll *probe* until it says ready; fail at once if a container has exited."""
        deadline = time.monotonic() + timeout
        detail = ""
        while time.monotonic() < deadline:
            stopped = self.stopped_services()
            if stopped:
                raise AssertionError(f"waiting for {what}: {sorted(stopped)} exited:\n{self.logs(*sorted(stopped))}")
            try:
                ready, detail = probe()
            except subprocess.TimeoutExpired as exc:
                ready, detail = False, f"probe timed out: {exc}"
            if ready:
                return
            time.sleep(2)
        raise AssertionError(f"{what} not ready after {timeout:.0f} s; last answer: {detail[-2000:]}")

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        found = []
        for kind in (["ps", "-aq"], ["network", "ls", "-q"], ["volume", "ls", "-q"]):
            out = subprocess.run([self.docker, *kind, "--filter", label],
                                 capture_output=True, text=True, timeout=60).stdout.split()
            found += [f"{kind[0]} {x}" for x in out]
        return found


def _timed(times: dict[str, float], what: str, argv: list[str], timeout: float,
           env: dict[str, str] | None = None) -> None:
    t0 = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    times[what] = time.monotonic() - t0
    assert done.returncode == 0, f"{shlex.join(argv)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


@pytest.fixture(scope="module")
def cluster():
    docker, compose_bin = _docker_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="hcollectives-docker-test-"))
    workdir.chmod(0o755)  # compose bind-mounts the secret from here
    c = Cluster(docker, compose_bin, workdir)
    try:
        # Each step is skipped by build.sh when its result exists and is up to date.
        build = str(DOCKER / "build.sh")
        _timed(c.times, "base image", [build, "base"], timeout=900)
        _timed(c.times, "Hadoop jars", [build, "jars"], timeout=900)
        _timed(c.times, "cluster image", [build, "image"], timeout=900)

        # `make compose-up`'s script: the images are there now, so it starts the cluster and
        # waits for HDFS out of safe mode and two RUNNING NodeManagers.
        _timed(c.times, "cluster start", [str(DOCKER / "compose.sh"), "up"], timeout=900, env=c.script_env)
        # Every NodeManager of compose.yaml registered, not only two.
        nms = sorted(nodemanagers(load_compose()))
        c.wait_for("YARN", lambda: c.state(lambda s: s["nodemanagers"] == nms), timeout=300)
        assert c.state(lambda s: s["datanodes"] >= 1 and not s["safemode"])[0], "compose.sh up returned before HDFS"
        yield c
    finally:
        try:
            subprocess.run([str(DOCKER / "compose.sh"), "down"], env=c.script_env, timeout=300)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        left = c.leftovers()
        assert not left, f"docker-compose down -v left {left} behind"


@pytest.mark.docker
@pytest.mark.timeout(1500)
def test_cluster_runs_the_documented_kmeans(cluster, capsys):
    version = cluster.edge("python --version", timeout=60).stdout.strip()
    from packaging.specifiers import SpecifierSet

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert version.split()[1] in SpecifierSet(requires), f"the image's {version} is outside {requires}"

    walkthrough = docs_walkthrough()
    assert walkthrough[0] == f"mkdir -p {EDGE_WORKDIR} && cd {EDGE_WORKDIR}"
    t0 = time.monotonic()
    try:
        run = cluster.edge("\n".join(walkthrough), timeout=900, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the walkthrough did not finish in 900 s:\n{cluster.logs('hcnode1', 'hcnode2')}")
    cluster.times["walkthrough (data + job)"] = time.monotonic() - t0
    output = run.stdout + run.stderr
    assert run.returncode == 0, (f"the docs' walkthrough failed on the edge node:\n{output[-6000:]}\n"
                                 f"{cluster.logs('hcnode1', 'hcnode2', 'nodemanager1', 'nodemanager2')}")
    iterations = re.findall(r"^iteration\s+(\d+)\s+([\d.]+) s", output, flags=re.M)
    cluster.times.update({f"iteration {i} ({n})": float(s) for n, (i, s) in enumerate(iterations, 1)})

    # The data and the results, back from the edge node: the reference uses the very points.
    local = cluster.workdir / "edge"
    subprocess.run([cluster.docker, "cp", f"{cluster.container('edge')}:{EDGE_WORKDIR}", str(local)],
                   check=True, timeout=120, capture_output=True)
    points = np.vstack([np.loadtxt(p, ndmin=2) for p in sorted((local / "data").glob("points-*.txt"))])
    for job in docs_job_commands():  # bare, then with the node services
        initial = np.load(local / option(job, "--initial"))
        result = np.load(local / option(job, "--result"))
        expected = kmeans_reference(points, initial, int(option(job, "--max-iterations")))
        np.testing.assert_allclose(result, expected, rtol=1e-9, atol=1e-12)
    # The awk mapper (streaming, bare -r hadoop): column sums and the count.
    with np.load(local / "sums.npz") as sums:
        np.testing.assert_allclose(sums["0"], [*points[:, :2].sum(0), len(points)], rtol=1e-12)

    # Both NodeManagers' node daemon services took part in the third job, reached over the
    # network from the edge node's coordinator, at the edge's own address on the cluster's
    # network (found by the driver itself; the session ends with the driver's connection).
    edge_ip = cluster.edge("hostname -i", timeout=60).stdout.split()[0]
    for daemon in daemons(load_compose()):
        assert f"coordinator connection ended: {edge_ip}:" in cluster.logs(daemon, tail=200), \
            f"{daemon} never joined the run from {edge_ip}:\n{cluster.logs(daemon)}"

    with capsys.disabled():  # shown in every run's output: what a first build and a run cost
        print("\ndocker cluster times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in cluster.times.items()))


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_a_failing_task_shows_its_own_exception_on_the_edge(cluster):
    """The task logs are on the NodeManagers, not on the edge: the driver waits for YARN's log
    aggregation and reads the task's Python exception through `yarn logs`, within 3 minutes,
    never a Java line (PipeMapRed's 'subprocess failed' is all mrjob finds there)."""
    t0 = time.monotonic()
    run = cluster.edge(f"mkdir -p boom && cd boom && cat > boom.py <<'JOB'\n{BOOM_JOB}JOB\n"
                       "printf '1 2\\n3 4\\n' > in.txt\n"
                       "python3 -c 'import numpy; numpy.save(\"init.npy\", numpy.zeros(2))'\n"
                       "python3 boom.py -r hadoop --initial init.npy --max-iterations 2 in.txt",
                       timeout=400, check=False)
    elapsed = time.monotonic() - t0
    assert run.returncode != 0, f"a job whose tasks raise succeeded:\n{run.stdout[-3000:]}"
    output = run.stdout + run.stderr
    error = output[output.rindex("hcollectives: error:"):]
    assert "RuntimeError: boom from the user's mapper on" in error and "boom.py, line 8, in mapper" in error, error
    assert "java" not in error.lower(), error
    assert elapsed < 180, f"the failed run took {elapsed:.0f} s"
