"""Simulated hosts as Linux network namespaces (tests/test_faults.py's TCP cut).

One hub namespace holds two bridges: the control network (10.77.0.0/24; the
coordinator at 10.77.0.1, in the hub) and the data network (10.78.0.0/24,
daemon to daemon). Each node namespace has a veth pair into each bridge,
`ctl` (10.77.0.11+i) and `dat` (10.78.0.11+i), and loopback for its own
tasks. Every link is created from inside the test's namespaces (`ip -n`):
the host's interfaces, routes and firewall are never touched. `Network` is a
context manager: on exit (also after a failure) every process still in one
of its namespaces is killed and every namespace deleted, which removes the
veth pairs and bridges with them.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
from dataclasses import dataclass, field

CONTROL, DATA = "10.77.0", "10.78.0"
HUB_ADDRESS = f"{CONTROL}.1"


class NamespacesUnavailable(Exception):
    """This machine (or this user) cannot make network namespaces."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, ["ip", *args], done.stdout, done.stderr)


@dataclass
class Network:
    nodes: int
    prefix: str = field(default_factory=lambda: f"hcx{os.getpid() % 100000}{secrets.token_hex(2)}")
    made: list[str] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"{self.prefix}h"

    def node_ns(self, i: int) -> str:
        return f"{self.prefix}n{i}"

    @staticmethod
    def data_address(i: int) -> str:
        return f"{DATA}.{11 + i}"

    def __enter__(self) -> "Network":
        try:
            self._add(self.hub)
        except (OSError, subprocess.SubprocessError) as exc:
            self.close()  # a namespace made before the failing step goes too
            raise NamespacesUnavailable(f"cannot make a network namespace: {getattr(exc, 'stderr', '') or exc}") from exc
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add(self, name: str) -> None:
        _ip("netns", "add", name)
        self.made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        hub = self.hub
        for bridge, address in (("br0", f"{HUB_ADDRESS}/24"), ("br1", None)):
            _ip("-n", hub, "link", "add", bridge, "type", "bridge")
            if address:
                _ip("-n", hub, "addr", "add", address, "dev", bridge)
            _ip("-n", hub, "link", "set", bridge, "up")
        for i in range(self.nodes):
            ns = self.node_ns(i)
            self._add(ns)
            for end, bridge, net, name in ((f"c{i}", "br0", CONTROL, "ctl"), (f"d{i}", "br1", DATA, "dat")):
                _ip("-n", hub, "link", "add", end, "type", "veth", "peer", "name", name, "netns", ns)
                _ip("-n", hub, "link", "set", end, "master", bridge, "up")
                _ip("-n", ns, "addr", "add", f"{net}.{11 + i}/24", "dev", name)
                _ip("-n", ns, "link", "set", name, "up")

    def set_data_link(self, i: int, up: bool) -> None:
        """Cut (or restore) node *i*'s data link, from inside its own namespace."""
        _ip("-n", self.node_ns(i), "link", "set", "dat", "up" if up else "down")

    def exec_prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", name]

    def pids(self) -> list[int]:
        found = []
        for name in self.made:
            done = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=20)
            found += [int(p) for p in done.stdout.split()]
        return found

    def close(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
        self.made.clear()


def namespaces_left(prefix: str) -> list[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20)
    return [line.split()[0] for line in done.stdout.splitlines() if line.startswith(prefix)]
