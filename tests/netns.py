"""Hosts on one machine: network namespaces joined by veth pairs to a bridge, made and removed
by the test itself (root only). Names and the /24 carry this process's id, so parallel runs don't
collide, and ``close`` deletes every namespace it made (with the veth ends inside them)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here (a skip reason), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"cfprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        return f"cannot create a network namespace: {detail.strip()}"
    _ip("netns", "delete", probe)
    return None


@dataclass
class Network:
    """A bridge in its own namespace and one namespace per host, on 10.<a>.<b>.0/24."""

    tag: str = field(default_factory=lambda: f"cf{os.getpid() % 100000}")
    hosts: dict[str, str] = field(default_factory=dict)  # host name -> IPv4 address
    namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        pid = os.getpid()
        self.subnet = f"10.{200 + pid % 50}.{pid // 50 % 250}"
        self.bridge_ns = self._add_namespace("br")
        _ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def _add_namespace(self, name: str) -> str:
        namespace = f"{self.tag}-{name}"
        _ip("netns", "add", namespace)
        self.namespaces.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")
        return namespace

    def add_host(self, name: str) -> str:
        """A namespace with one veth into the bridge; returns the namespace name."""
        index = len(self.hosts) + 1
        namespace = self._add_namespace(name)
        outer, inner = f"v{self.tag[-5:]}{index}b", f"v{self.tag[-5:]}{index}h"
        _ip("link", "add", outer, "netns", self.bridge_ns, "type", "veth", "peer", "name", inner,
            "netns", namespace)
        _ip("-n", self.bridge_ns, "link", "set", outer, "master", "br0")
        _ip("-n", self.bridge_ns, "link", "set", outer, "up")
        address = f"{self.subnet}.{index}"
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", inner)
        _ip("-n", namespace, "link", "set", inner, "up")
        self.hosts[name] = address
        return namespace

    def namespace(self, host: str) -> str:
        return f"{self.tag}-{host}"

    def prefix(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace(host)]

    def close(self) -> None:
        for namespace in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "delete", namespace], check=False, capture_output=True)
        self.namespaces.clear()

    def leftovers(self) -> list[str]:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
        return [line.split()[0] for line in listed.splitlines() if line.startswith(f"{self.tag}-")]
