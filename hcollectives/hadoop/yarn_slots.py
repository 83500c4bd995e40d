"""Can YARN run every map task of a resident job at once? Asked before submitting.

A resident job's tasks wait for each other every iteration, so a task left
waiting for a container would stall the run forever. Before submitting, the
driver asks the ResourceManager's REST API for each running node's free
memory and vcores (``/ws/v1/cluster/nodes``; ``/ws/v1/cluster/metrics`` for
the whole cluster if that fails) and counts how many map containers fit,
after the ApplicationMaster's own container; container sizes come from the
job's configuration (``-D``/``--jobconf``), else the cluster's
mapred-site.xml, else Hadoop's defaults, rounded up to YARN's minimum
allocation as the scheduler does.

The task count is a lower bound here (one split per input file, globs and
directories expanded; a file larger than a block makes more): the driver's start guard (driver/resident.py) catches the rest.
No answer from the ResourceManager is not an error: the start guard still
bounds the wait.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ConfigurationError
from . import hadoop_conf

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class ContainerSize:
    memory_mb: int
    vcores: int


def _setting(jobconf: Mapping[str, str], name: str, file: str, default: int, env: Mapping[str, str]) -> int:
    value = jobconf.get(name) or hadoop_conf.conf_value(file, (name,), env)
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        raise ConfigurationError(f"{name}={value!r} is not a whole number") from None


def _round_up(memory_mb: int, env: Mapping[str, str]) -> int:
    minimum = _setting({}, "yarn.scheduler.minimum-allocation-mb", "yarn-site.xml", 1024, env)
    return max(minimum, math.ceil(memory_mb / minimum) * minimum) if minimum > 0 else memory_mb


def container_sizes(jobconf: Mapping[str, str], env: Mapping[str, str]) -> tuple[ContainerSize, ContainerSize]:
    """(map task container, ApplicationMaster container) as YARN will allocate them."""
    task = ContainerSize(_round_up(_setting(jobconf, "mapreduce.map.memory.mb", "mapred-site.xml", 1024, env), env),
                         _setting(jobconf, "mapreduce.map.cpu.vcores", "mapred-site.xml", 1, env))
    am = ContainerSize(_round_up(_setting(jobconf, "yarn.app.mapreduce.am.resource.mb", "mapred-site.xml", 1536, env),
                                 env),
                       _setting(jobconf, "yarn.app.mapreduce.am.resource.cpu-vcores", "mapred-site.xml", 1, env))
    return task, am


def free_per_node(nodes_answer: object) -> list[tuple[int, int]] | None:
    """[(free MB, free vcores)] of each RUNNING node in a ``/ws/v1/cluster/nodes`` answer."""
    try:
        nodes = nodes_answer["nodes"]["node"]  # type: ignore[index]
        return [(int(n["availMemoryMB"]), int(n["availableVirtualCores"])) for n in nodes
                if n.get("state", "RUNNING") == "RUNNING"]
    except (KeyError, TypeError, ValueError):
        return None


def free_in_cluster(metrics_answer: object) -> list[tuple[int, int]] | None:
    """The whole cluster's free (MB, vcores) as one "node" (``/ws/v1/cluster/metrics``)."""
    try:
        m = metrics_answer["clusterMetrics"]  # type: ignore[index]
        return [(int(m["availableMB"]), int(m["availableVirtualCores"]))]
    except (KeyError, TypeError, ValueError):
        return None


def map_slots(free: list[tuple[int, int]], task: ContainerSize, am: ContainerSize) -> int:
    """How many map containers fit at once, the ApplicationMaster's placed first where it fits best."""
    free = sorted(free, reverse=True)
    for k, (mb, vc) in enumerate(free):
        if mb >= am.memory_mb and vc >= am.vcores:
            free[k] = (mb - am.memory_mb, vc - am.vcores)
            break
    else:
        return 0
    return sum(min(mb // task.memory_mb, vc // max(task.vcores, 1)) for mb, vc in free)


def _get(url: str) -> object:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as reply:
        return json.loads(reply.read())


def check_resident_slots(*, jobconf: Mapping[str, str], min_tasks: int,
                         env: Mapping[str, str] | None = None, rm_web: str | None = None) -> int | None:
    """Raise ConfigurationError if YARN cannot run *min_tasks* map tasks at once now.

    Returns the free map slots found (None if the ResourceManager could not be asked)."""
    import os

    env = os.environ if env is None else env
    rm_web = rm_web or hadoop_conf.resource_manager_web(env)
    if not rm_web:
        log.info("resident mode: no yarn.resourcemanager.webapp.address; relying on the start guard")
        return None
    base = rm_web if "://" in rm_web else f"http://{rm_web}"
    free = None
    for path, parse in (("/ws/v1/cluster/nodes", free_per_node), ("/ws/v1/cluster/metrics", free_in_cluster)):
        try:
            free = parse(_get(base + path))
        except (OSError, ValueError, urllib.error.URLError) as exc:
            log.info("resident mode: %s%s: %s", base, path, exc)
        if free is not None:
            break
    if free is None:
        return None
    task, am = container_sizes(jobconf, env)
    slots = map_slots(free, task, am)
    if slots < min_tasks:
        raise ConfigurationError(
            f"--resident needs every map task running at once: this job has at least {min_tasks} map task(s) "
            f"({task.memory_mb} MB, {task.vcores} vcore(s) each, plus {am.memory_mb} MB for the "
            f"ApplicationMaster), but YARN has room for {slots} now ({len(free)} node(s), free "
            f"{sum(mb for mb, _ in free)} MB / {sum(vc for _, vc in free)} vcores). Use fewer or larger input "
            "splits, smaller containers (-D mapreduce.map.memory.mb=...), or run without --resident")
    return slots
