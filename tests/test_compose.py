"""docker-compose.yml: the services it promises, flags the installed Flower accepts, and the same
command lines as ``clipfed.deploy.cluster`` builds (which the network-namespace test runs)."""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from clipfed.deploy.cluster import superexec_command, superlink_command, supernode_command
from clipfed.engines.launch import _bin

ROOT = Path(__file__).resolve().parents[1]
FLOWER_VERSION = "1.41.0"


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


@cache
def accepted_flags(binary: str) -> frozenset[str]:
    out = subprocess.run([_bin(binary), "--help"], capture_output=True, text=True, timeout=120, check=False)
    return frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", out.stdout + out.stderr))


def binary_of(service: dict[str, Any]) -> str:
    """The entrypoint of the service's image: flwr/<x> images run flower-<x>; ours runs SuperExec."""
    image = service["image"]
    return {"flwr/superlink": "flower-superlink", "flwr/supernode": "flower-supernode"}.get(
        image.split(":")[0], "flower-superexec")


def node_config(command: list[str]) -> dict[str, str]:
    text = command[command.index("--node-config") + 1]
    return dict(pair.split("=", 1) for pair in text.split())


def test_services_are_a_superlink_serverapp_superexec_and_nodes_with_their_superexecs(
        services: dict[str, dict[str, Any]]) -> None:
    nodes = sorted(n for n in services if n.startswith("supernode-"))
    assert {"superlink", "superexec-serverapp"} <= set(services) and len(nodes) >= 3
    assert services["superlink"]["image"] == f"flwr/superlink:{FLOWER_VERSION}"
    for node in nodes:
        assert services[node]["image"] == f"flwr/supernode:{FLOWER_VERSION}"
        assert f"superexec-clientapp-{node.removeprefix('supernode-')}" in services
    roles = [node_config(services[n]["command"])["role"].strip('"') for n in nodes]
    assert roles.count("malicious") >= 1 and roles.count("benign") >= 2
    partitions = sorted(int(node_config(services[n]["command"])["partition-id"]) for n in nodes)
    assert partitions == list(range(len(nodes)))
    assert f"FROM flwr/superexec:{FLOWER_VERSION}" in (ROOT / "Dockerfile").read_text()
    for name, service in services.items():
        if name.startswith("superexec-"):
            assert service["image"] == "clipfed-app:latest" and service["build"] == "."
            assert any(v.endswith(":/data:ro") for v in service["volumes"])


def test_every_flag_is_accepted_by_the_installed_flower(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        binary = binary_of(service)
        flags = {token for token in service["command"] if token.startswith("--")}
        unknown = flags - accepted_flags(binary)
        assert not unknown, f"{name}: {binary} does not accept {sorted(unknown)}"


def test_compose_commands_are_the_ones_the_namespace_test_runs(services: dict[str, dict[str, Any]]) -> None:
    """Same builder, same arguments but addresses (service names instead of namespace IPs)."""
    assert services["superlink"]["command"] == superlink_command(
        port=9091, isolation="process", database="/state/state.db")[1:]
    assert services["superexec-serverapp"]["command"] == superexec_command("superlink:9091")[1:]
    for name, service in services.items():
        if name.startswith("supernode-"):
            config = {k: v.strip('"') for k, v in node_config(service["command"]).items()}
            typed = {k: int(v) if v.isdigit() else v for k, v in config.items()}
            assert service["command"] == supernode_command(
                "superlink:9091", typed, isolation="process", host="0.0.0.0")[1:]
            index = name.removeprefix("supernode-")
            assert services[f"superexec-clientapp-{index}"]["command"] == superexec_command(f"{name}:9094")[1:]
